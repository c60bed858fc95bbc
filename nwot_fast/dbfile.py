"""The SQLite file under a scan database (:mod:`nwot_fast.store`): whose it is (its header),
whether it is whole (``PRAGMA quick_check``), whether this process may write it, the -wal, -shm
and -journal files beside it, a new database put in place whole (never half-made), sqlite3's
errors mapped to the package's error kinds, and the statements retried where SQLite refuses a
lock without waiting. Nothing here knows the ``scores`` table."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from typing import Callable, List, TypeVar

from .errors import ResourceError

__all__ = [
    "APPLICATION_ID", "SCHEMA_VERSION", "ScanDatabaseError", "check_integrity", "check_owner", "create_database",
    "quote_identifier", "remove_with_sidecars", "retried_while_busy", "sidecars", "sqlite_errors", "uri_path", "writable",
]


_T = TypeVar("_T")

#: ``PRAGMA application_id`` of a scan database: "NWOT" in ASCII.
APPLICATION_ID = 0x4E574F54
#: ``PRAGMA user_version`` of a scan database: the layout of its ``scores`` table (:data:`nwot_fast.store._SCHEMA`)
#: and of the keys in it. 2: every ``config_hash`` is of an identity that names the dtype (in
#: layout 1 float32 ones did not, so the same configuration has another key there).
SCHEMA_VERSION = 2


class ScanDatabaseError(ResourceError):
    """The scan database cannot be written right now (locked by another process, read-only,
    disk full): a resource problem, not a mistake in the input. Results already committed
    are kept."""


def sqlite_errors(path: str, action: str, timeout: float):
    """Turn sqlite3 errors into the package's error kinds, naming the file."""

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except sqlite3.OperationalError as e:
            msg = str(e).lower()
            if _busy(e):
                raise ScanDatabaseError(
                    f"scan database {path!r} is locked by another process or connection "
                    f"(waited {timeout:g} s) while {action}; wait for it to finish, raise --db-timeout, "
                    "or use another --db path"
                ) from e
            if "readonly" in msg or "read-only" in msg:
                raise ScanDatabaseError(
                    f"scan database {path!r} is read-only (file, directory or file system) while {action}; "
                    "choose a writable --db path"
                ) from e
            if "unable to open" in msg:
                parent = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(parent):
                    raise FileNotFoundError(
                        f"cannot create scan database {path!r}: directory {parent!r} does not exist"
                    ) from e
                if os.path.isdir(path):
                    raise ValueError(f"scan database path {path!r} is a directory; give a file path") from e
                raise ScanDatabaseError(
                    f"cannot open scan database {path!r} for writing (read-only location or no permission) "
                    f"while {action}; choose a writable --db path"
                ) from e
            if "disk" in msg or "full" in msg:
                raise ScanDatabaseError(f"scan database {path!r}: {e} while {action}; free disk space") from e
            raise ScanDatabaseError(f"scan database {path!r}: {e} while {action}") from e
        except sqlite3.DatabaseError as e:
            raise ValueError(
                f"{path!r} is not a usable nwot_fast scan database ({e}); give a new path or a database "
                "written by 'nwot-fast scan'"
            ) from e

    return ctx()


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds a lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    msg = str(error).lower()
    return "locked" in msg or "busy" in msg


def retried_while_busy(run: Callable[[], _T], timeout: float) -> _T:
    """``run()``, run again after a short pause while SQLite answers that the database is locked,
    until ``timeout`` seconds have passed (then its error is raised). For the statements SQLite
    refuses at once instead of waiting in its busy handler: those that upgrade the read lock
    they hold to a write lock (``PRAGMA journal_mode=WAL`` on a rollback-journal file), where
    two connections waiting for each other would deadlock. A refused statement has given its
    read lock back, so the other connection can finish while this one pauses."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            return run()
        except sqlite3.OperationalError as e:
            left = deadline - time.monotonic()
            if not _busy(e) or left <= 0:
                raise
        time.sleep(min(pause, left))
        pause = min(2 * pause, 0.05)


def check_owner(conn: sqlite3.Connection, path: str, *, allow_new: bool) -> bool:
    """Whether the file is a new, empty one (``allow_new``: it may become a scan database);
    a scan database of this layout returns False; anything else is a ValueError that names
    what the file holds. Reads only the header and the schema."""
    # One read transaction: the header and the schema from one snapshot. Read statement by
    # statement, a scan creating the file in another process could commit in between (header 0,
    # then its table), and the file would look like another program's.
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        app = int(conn.execute("PRAGMA application_id").fetchone()[0])
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        objects = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
    finally:
        if own:
            conn.execute("COMMIT")
    if app == APPLICATION_ID:
        if version != SCHEMA_VERSION:
            # No migration code before 1.0: the keys of another layout are not this version's.
            which = "an older" if version < SCHEMA_VERSION else "a newer"
            raise ValueError(
                f"{path!r} is a scan database written by {which} nwot_fast (user_version {version}; this version "
                f"reads and writes user_version {SCHEMA_VERSION}, whose configuration keys differ); it is left "
                "unchanged and nothing was read from it: scan again into a new --db path, or read it with the "
                "nwot_fast version that wrote it"
            )
        return False
    if app == 0 and version == 0 and not objects:
        if allow_new:
            return True
        raise ValueError(f"{path!r} is an empty SQLite file, not a scan database written by 'nwot-fast scan'")
    held = "; ".join(
        f"{kind}s: {', '.join(n for k, n in objects if k == kind)}" for kind in sorted({k for k, _ in objects})
    )
    header = ", ".join(f"{name} {value:#x}" if name == "application_id" else f"{name} {value}"
                       for name, value in (("application_id", app), ("user_version", version)) if value)
    found = "; ".join(part for part in (held, header) if part)
    hint = ""
    if app == 0 and version == 0 and [n for _, n in objects if not n.startswith("scores_by")] == ["scores"]:
        hint = ("; if it is a scan database of an nwot_fast before the header existed, this version does not "
                "read it (its configuration keys differ): scan again into a new --db path")
    raise ValueError(
        f"{path!r} is another program's SQLite database ({found}); it was not written by 'nwot-fast scan' "
        f"and is left unchanged; use a new --db path{hint}"
    )


def check_integrity(conn: sqlite3.Connection, path: str) -> None:
    """``PRAGMA quick_check`` (the b-trees, pages and records; linear in the file's size):
    a damaged database is refused before anything is read from or written into it."""
    rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    if rows != ["ok"]:
        problems = [line.strip() for r in rows for line in r.splitlines() if line.strip() and "***" not in line]
        problems = problems or rows
        raise ValueError(
            f"scan database {path!r} is damaged (PRAGMA quick_check: {problems[0]}"
            + (f"; {len(problems) - 1} more problem(s)" if len(problems) > 1 else "")
            + "); nothing was read from it or written to it; 'sqlite3 FILE .recover' copies out what can still "
            "be read; scan into a new --db path"
        )


def quote_identifier(name: str) -> str:
    """An SQL identifier, quoted (PRAGMA arguments cannot be bound as parameters)."""
    return '"' + name.replace('"', '""') + '"'


def writable(path: str) -> bool:
    """Whether this process may write ``path`` and create files beside it (SQLite's -wal and
    -shm), as the kernel decides (root may write a 0444 file; nobody may on a read-only mount)."""
    effective = os.access in os.supports_effective_ids
    directory = os.path.dirname(os.path.abspath(path))
    return (os.access(path, os.W_OK, effective_ids=effective)
            and os.access(directory, os.W_OK | os.X_OK, effective_ids=effective))


def sidecars(path: str) -> List[str]:
    """The -wal, -shm and -journal files beside the database ``path`` that exist."""
    return [path + s for s in ("-wal", "-shm", "-journal") if os.path.lexists(path + s)]


def create_database(path: str, build: Callable[[sqlite3.Connection], None], timeout: float) -> None:
    """Put a new scan database at ``path``, made by ``build(conn)`` (the tables and the header),
    unless another process (or anything else) puts a file there first: then that file stays,
    and the caller opens it as any existing file.

    The database is made whole under a private name beside the path and linked into place
    (a link never replaces an existing name), so that the path never shows a half-made file.
    A failure (a full disk) removes only the private file, which no other process can have
    opened. Made in place instead, two scans started at once both took the new file for their
    own, and the one that failed removed it, still empty, under the other's feet (which then
    failed with a disk I/O error)."""
    directory = os.path.dirname(os.path.abspath(path))
    private = os.path.join(directory, f".nwot-fast-new-{secrets.token_hex(8)}.sqlite")
    try:
        with sqlite_errors(path, "creating it", timeout):
            conn = sqlite3.connect(private, timeout=timeout, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                build(conn)
                conn.execute("COMMIT")
                # The WAL flag in the header; closing removes the (empty) -wal and the -shm.
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
        try:
            os.link(private, path)
        except FileExistsError:
            pass  # another process was first: its database is opened
        except OSError:
            # A file system without hard links (FAT, some network shares): a rename, which
            # replaces a file that appeared since, so only while none has. (Two scans started
            # within that instant could still both rename; the earlier one's file would be
            # replaced under it.)
            try:
                if not os.path.lexists(path):
                    os.rename(private, path)
            except OSError as e:
                raise ScanDatabaseError(f"cannot create scan database {path!r}: {e.strerror or e}; "
                                        "choose a writable --db path") from e
    finally:
        remove_with_sidecars(private)


def remove_with_sidecars(path: str) -> None:
    """Remove the database file ``path`` and its -wal, -shm and -journal, those that exist. Only
    for a file no other process can have opened (a private name this process made): a file
    another process has open would be lost to it, its commits failing or landing in a removed
    file."""
    for leftover in [path] + sidecars(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)


def uri_path(path: str) -> str:
    """``path`` made absolute and percent-encoded, for a ``file:`` URI (``?mode=ro``, ``immutable=1``)."""
    from urllib.parse import quote

    return quote(os.path.abspath(path))
