"""What a command owns in its process: its standard streams and its signals.

* :func:`guarded_streams`: a write to stdout or stderr that fails (a closed descriptor, a
  full device, an encoding that cannot show a character of a path) raises
  :class:`StreamError`, an :class:`~nwot_fast.paths.OutputError`: exit 3, as for a full disk.
* :func:`stop_on_signals`: the first SIGINT raises KeyboardInterrupt, the first SIGTERM
  :class:`~nwot_fast.errors.Terminated`; every later one is ignored, so the clean-up (a
  rollback, closing the database, stopping a Ray instance, the interpreter's exit) runs to its
  end and leaves nothing behind.
* :func:`deferred_signals`: a block that must not be cut in two (starting or stopping Ray)
  receives SIGINT / SIGTERM only when it has ended.

Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from typing import Dict, List, Optional

from .errors import Terminated
from .paths import OutputError

__all__ = ["StreamError", "guarded_streams", "stop_on_signals", "deferred_signals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StreamError(OutputError):
    """Standard output or standard error cannot be written: closed, full, or unable to encode
    the text (exit 3, like a full disk)."""


class _GuardedStream:
    """A text stream whose failing writes raise :class:`StreamError` naming the stream. A
    closed pipe stays a BrokenPipeError (the reader went away: not an error of ours)."""

    def __init__(self, stream, name: str):
        self._stream = stream
        self._name = name

    def _closed(self) -> StreamError:
        return StreamError(errno.EBADF, f"cannot write to {self._name}: it is closed")

    def _failed(self, e: Exception) -> StreamError:
        if isinstance(e, UnicodeEncodeError):
            encoding = getattr(self._stream, "encoding", None) or e.encoding
            return StreamError(errno.EILSEQ, f"cannot write to {self._name}: its encoding {encoding} cannot show "
                                             f"{e.object[e.start:e.end]!r}; set PYTHONIOENCODING=utf-8 (or a "
                                             "UTF-8 locale), or use --json")
        if isinstance(e, OSError):
            return StreamError(e.errno, f"cannot write to {self._name}: {e.strerror or e}")
        return StreamError(errno.EBADF, f"cannot write to {self._name}: {e}")  # ValueError: closed file

    def write(self, text: str) -> int:
        if self._stream is None:
            raise self._closed()
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:
            raise self._failed(e) from None

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:
            raise self._failed(e) from None

    def isatty(self) -> bool:
        try:
            return self._stream is not None and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name):
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)


def stream_is_closed(stream) -> bool:
    """Whether ``stream`` (a ``sys.stdout``-like object) has no open descriptor behind it."""
    if stream is None:
        return True
    try:
        os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError) as e:
        # A stream without a descriptor (a test's capture) is open; a descriptor that is gone is not.
        return isinstance(e, OSError) and e.errno == errno.EBADF
    return False


@contextlib.contextmanager
def guarded_streams():
    """Within the block ``sys.stdout`` and ``sys.stderr`` raise :class:`StreamError` when a
    write fails; the streams are put back after."""
    saved = sys.stdout, sys.stderr
    sys.stdout = _GuardedStream(saved[0], "standard output")
    sys.stderr = _GuardedStream(saved[1], "standard error")
    try:
        yield
    finally:
        if isinstance(sys.stdout, _GuardedStream):
            sys.stdout = saved[0]
        if isinstance(sys.stderr, _GuardedStream):
            sys.stderr = saved[1]


def _current_handlers() -> Optional[Dict[int, object]]:
    """The Python-level handlers of SIGINT and SIGTERM, or None where they cannot be replaced
    and put back: outside the main thread, or where one was installed by native code (which
    Python could not restore)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handlers = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    return None if any(h is None for h in handlers.values()) else handlers


def _restore(previous: Dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def stop_on_signals(*, keep_ignoring: bool = False):
    """The first SIGINT raises KeyboardInterrupt and the first SIGTERM :class:`Terminated`;
    both signals are ignored from then on, so the clean-up runs to its end. After the block the
    previous handlers come back, unless a signal arrived and ``keep_ignoring`` (the command
    line's own process: a second Ctrl-C during the interpreter's exit must not print a
    traceback from an exit handler)."""
    previous = _current_handlers()
    if previous is None:
        yield
        return
    fired: List[int] = []

    def handler(signum, frame):
        fired.append(signum)
        for sig in _SIGNALS:  # from now on the clean-up runs to its end
            signal.signal(sig, signal.SIG_IGN)
        if signum == signal.SIGTERM:
            raise Terminated()
        raise KeyboardInterrupt

    for sig in _SIGNALS:
        if previous[sig] is not signal.SIG_IGN:  # ignored by the parent (a background job): stays so
            signal.signal(sig, handler)
    try:
        yield
    finally:
        if not (fired and keep_ignoring):
            _restore(previous)


@contextlib.contextmanager
def deferred_signals():
    """SIGINT and SIGTERM that arrive within the block are delivered when it ends (the first
    one, to the handlers in place before it), so that the block is never cut in two. Later
    signals within the block are dropped."""
    previous = _current_handlers()
    if previous is None:
        yield
        return
    pending: List[int] = []
    for sig in _SIGNALS:
        if previous[sig] is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        _restore(previous)
        if pending:
            signal.raise_signal(pending[0])
