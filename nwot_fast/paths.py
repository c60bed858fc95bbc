"""Every path the package reads or writes, resolved by one set of rules.

* Inputs (:func:`check_input_file`): an existing regular file, or a directory where one is
  allowed. A missing file, a broken symbolic link, a link loop or a special file (FIFO,
  device, socket: reading those could block or never end) is an error naming the file.
* Outputs (:func:`check_output_file`, :func:`check_output_prefix`): a known ending, an existing
  directory, not a directory, special file or link loop itself, and a place that takes a real
  write of :data:`PROBE_BYTES` (an empty file can be created on a full disk), all before any
  work.
* Writes (:func:`atomic_write`): to a temporary file beside the target, renamed into place, so
  nothing is ever half-written. A symbolic link is written through: its target gets the new
  content and the link stays.
* No output may be the same file as an input, the database (or its ``-wal`` / ``-shm`` /
  ``-journal``) or another output, by the same name, another spelling or a link
  (:func:`check_distinct`).

Every path is text that encodes as UTF-8: the database and the score files store paths as
text, so a name that is not valid UTF-8 is refused up front instead of after the work.
Torch-free and NumPy-free: the command line uses it before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from typing import Iterable, List, Optional, Sequence, Tuple

from .errors import OutputError

__all__ = ["OutputError", "PROBE_BYTES", "BYTES_PER_SCORE_ROW", "check_utf8", "as_path", "check_input_file",
           "check_output_file", "check_output_prefix", "check_distinct", "atomic_write", "write_target"]

#: Bytes the output probe reserves in the output's directory before any work (and gives back):
#: creating an empty file succeeds on a full disk, reserving this much does not. Callers that
#: know their output's size ask for that much instead (a score file: :data:`BYTES_PER_SCORE_ROW`
#: per architecture).
PROBE_BYTES = 64 * 1024
#: An upper bound of one row of a score file (CSV about 130 bytes, a JSON record about 230).
BYTES_PER_SCORE_ROW = 256

#: Entries of a data directory compared with the outputs (a batch directory holds a dozen).
_MAX_DIR_ENTRIES = 1000


def check_utf8(path: str) -> str:
    """``path`` when it encodes as UTF-8, else a ValueError that shows its bytes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"path {path.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; rename it or use "
                         "a link with a UTF-8 name") from None
    return path


def as_path(path, what: str) -> str:
    """``path`` (str, bytes or os.PathLike) as a non-empty UTF-8 str; a TypeError / ValueError
    naming ``what`` otherwise."""
    try:
        text = os.fspath(path)
    except TypeError:
        raise TypeError(f"{what} path must be a str or os.PathLike, got {type(path).__name__}") from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise ValueError(f"{what} path is empty")
    try:
        return check_utf8(text)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _loop_message(path: str) -> str:
    """``path: symbolic link loop (a -> b -> a)``, or a loop in one of its directories."""
    chain, seen, current = [path], {os.path.abspath(path)}, path
    while len(chain) < 10:
        try:
            target = os.readlink(current)
        except OSError:
            break
        current = os.path.join(os.path.dirname(current), target)
        chain.append(target)
        key = os.path.abspath(current)
        if key in seen:
            break
        seen.add(key)
    if len(chain) == 1:
        return f"{path}: a symbolic link loop in one of its directories"
    return f"{path}: symbolic link loop ({' -> '.join(chain)})"


def _stat(path: str, what: str) -> Optional[os.stat_result]:
    """``os.stat(path)``, None when nothing is there; a link loop is a ValueError naming it and
    ``what`` was expected there."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{_loop_message(path)}; expected {what}") from None
        raise


def check_input_file(path, what: str, *, allow_dir: bool = False) -> str:
    """``path`` as a str when it names an existing regular file (or a directory when
    ``allow_dir``); a broken symbolic link, a link loop, a missing file or a special file is an
    error naming the file and ``what`` was expected."""
    path = as_path(path, what)
    try:
        st = _stat(path, what)
    except NotADirectoryError:
        raise FileNotFoundError(f"{path}: a part of the path is not a directory; expected {what}") from None
    if st is None:
        if os.path.islink(path):
            raise FileNotFoundError(f"{path}: broken symbolic link (to {os.readlink(path)!r}); expected {what}")
        raise FileNotFoundError(f"{path}: no such file or directory; expected {what}")
    if stat.S_ISREG(st.st_mode) or (allow_dir and stat.S_ISDIR(st.st_mode)):
        return path
    raise ValueError(f"{path}: is {_file_kind(st.st_mode)}, not a regular file; expected {what}")


def write_target(path) -> str:
    """The file a write to ``path`` lands in: through every symbolic link, so that writing to a
    link replaces its target's content and the link stays a link."""
    return os.path.realpath(os.fspath(path))


def _probe(directory: str, size: int) -> None:
    """Reserve ``size`` bytes in a temporary file in ``directory`` and remove it (OSError if the
    place cannot take them). posix_fallocate asks the file system for the blocks without
    writing them; where it is not supported, zeros are written and synced."""
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".nwot-fast-probe-")
    try:
        if size > 0:
            try:
                os.posix_fallocate(fd, 0, size)
            except (AttributeError, OSError) as e:
                if isinstance(e, OSError) and e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                block = bytes(min(size, 1 << 16))
                for start in range(0, size, len(block)):
                    os.write(fd, block[: size - start])
                os.fsync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def check_output_file(path, what: str, extensions=None, *, probe_bytes: int = PROBE_BYTES) -> str:
    """Check before any work that ``path`` can be written: a known ending (``extensions``, lower
    case, with the dot), an existing directory, not a directory, special file or link loop
    itself, and a place that takes a real write of ``probe_bytes``. A wrong name is a
    ValueError / FileNotFoundError (bad input), a place that cannot be written an
    :class:`OutputError` (resource). Returns the lower-case ending."""
    path = as_path(path, what)
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise ValueError(f"{what} {path!r} names a directory; give a file name")
    ext = os.path.splitext(path)[1].lower()
    if extensions is not None and ext not in extensions:
        raise ValueError(f"{what} {path!r} must end in {', '.join(extensions)}")
    try:
        st = _stat(path, f"a place to write the {what}")
    except NotADirectoryError:
        raise FileNotFoundError(f"cannot write {what} {path!r}: a part of the path is not a directory") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path!r} is {_file_kind(st.st_mode)}; give a file name")
    parent = os.path.dirname(write_target(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {what} {path!r}: directory {parent!r} does not exist")
    try:  # a real write: os.access says yes to root on a read-only file system, and to anyone on a full one
        _probe(parent, probe_bytes)
    except OSError as e:
        raise OutputError(e.errno, f"cannot write {what} {path!r}: directory {parent!r} is not writable "
                          f"({e.strerror}: a test write of {max(probe_bytes, 1024) // 1024} KiB failed)") from None
    return ext


def check_output_prefix(prefix, what: str, endings: Sequence[str]) -> Tuple[str, ...]:
    """``PREFIX + ending`` for each ending, each checked by :func:`check_output_file`. A prefix
    that names a directory (``DIR/``) is refused: it would write hidden files ``DIR/.md``."""
    prefix = as_path(prefix, what)
    if os.path.basename(prefix) in ("", ".", ".."):
        raise ValueError(f"{what} prefix {prefix!r} names a directory, not a file prefix (it would write hidden "
                         f"files such as {os.path.join(prefix, '')}{endings[0]}); give one like "
                         f"{os.path.join(prefix, 'search_table')}")
    paths = tuple(prefix + e for e in endings)
    for p in paths:
        check_output_file(p, what)
    return paths


def _identity(path: str) -> Tuple[str, Optional[Tuple[int, int]]]:
    """(real path, (device, inode) or None when nothing is there): two names of one file share
    one of them, whatever links or spellings lead there."""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:  # missing, a loop, not a directory: named by the checks that read or write it
        return real, None
    return real, (st.st_dev, st.st_ino)


def _named(label_paths: Iterable[Tuple[str, object]]) -> List[Tuple[str, str]]:
    out = []
    for label, value in label_paths:
        if isinstance(value, (str, bytes, os.PathLike)):
            text = os.fspath(value)
            text = os.fsdecode(text) if isinstance(text, bytes) else text
            if text:
                out.append((label, text))
    return out


def check_distinct(outputs: Iterable[Tuple[str, object]], inputs: Iterable[Tuple[str, object]] = (),
                   databases: Iterable[Tuple[str, object]] = ()) -> None:
    """Refuse, before any work, an output that is the same file as an input, a database (or its
    ``-wal``, ``-shm``, ``-journal``), a file in an input directory, or another output. Each
    argument is ``(label, path)`` pairs; ``label`` is what the user typed (``--out``) or the
    argument's name. Values that are not paths (None, a loaded table) are skipped."""
    known: List[Tuple[str, str, str, Optional[Tuple[int, int]]]] = []
    for label, path in _named(inputs):
        known.append((label, path, *_identity(path)))
        if os.path.isdir(path):
            with contextlib.suppress(OSError), os.scandir(path) as entries:
                for k, entry in enumerate(entries):
                    if k >= _MAX_DIR_ENTRIES:
                        break
                    known.append((f"a file of {label}", entry.path, *_identity(entry.path)))
    for label, path in _named(databases):
        known.append((label, path, *_identity(path)))
        for suffix, part in (("-wal", "write-ahead log"), ("-shm", "shared-memory index"), ("-journal", "journal")):
            known.append((f"the {part} of {label}", path + suffix, *_identity(path + suffix)))
    for label, path in _named(outputs):
        real, key = _identity(path)
        for other_label, other, other_real, other_key in known:
            if real == other_real or (key is not None and key == other_key):
                raise ValueError(f"{label} {path!r} is the same file as {other_label} {other!r}; writing it would "
                                 "destroy that file: choose another name")
        known.append((label, path, real, key))


@contextlib.contextmanager
def atomic_write(path, what: str = "output file", *, mode: str = "w", **open_kwargs):
    """Open a temporary file beside ``path``'s target (:func:`write_target`) for writing; on
    success it replaces the target in one rename, on any error it is removed, so nothing is
    left half-written. OS errors (disk full, read-only place) become :class:`OutputError`
    naming ``path``."""
    path = as_path(path, what)
    target = write_target(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix="." + os.path.basename(target) + ".",
                                   suffix=".tmp")
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        tmp = None
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(e.errno, f"cannot write {what} {path!r}: {e.strerror or e}; nothing was written") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
