"""A small progress bar for long scans: architectures done / total, rate and ETA.

It writes to stderr, and only when stderr is a terminal (so logs, pipes and CI stay clean),
redrawing at most ``min_interval`` seconds apart. No third-party dependency.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Optional, TextIO


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour); ``?`` when unknown."""
    if seconds is None or not seconds == seconds or seconds == float("inf") or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of ``total`` items, ``initial`` of them already done (e.g. resumed from a database).

    The rate and ETA count only the items done since this bar started, so resuming a scan
    does not inflate the rate. ``enabled=None`` means: draw only if ``stream`` is a TTY.
    Use as a context manager, or call :meth:`close` at the end.
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        unit: str = "arch",
        initial: int = 0,
        stream: Optional[TextIO] = None,
        enabled: Optional[bool] = None,
        min_interval: float = 0.1,
    ):
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.done = int(initial)
        self._initial = int(initial)
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.min_interval = min_interval
        self._start = time.monotonic()
        self._last_draw = -float("inf")
        self._drawn = False
        self._drawn_state = None
        self._closed = False

    # -- bookkeeping -------------------------------------------------------------------------

    def rate(self) -> float:
        """Items per second since the bar started (0 when nothing new is done yet)."""
        elapsed = time.monotonic() - self._start
        new = self.done - self._initial
        return new / elapsed if elapsed > 0 and new > 0 else 0.0

    def eta(self) -> float:
        r = self.rate()
        return (self.total - self.done) / r if r > 0 else float("nan")

    def update(self, n: int = 1) -> None:
        self.done += n
        self._maybe_draw()

    def __call__(self, done: int, total: Optional[int] = None) -> None:
        """Callback form: ``progress(done, total)``."""
        if total is not None:
            self.total = int(total)
        self.done = int(done)
        self._maybe_draw()

    # -- drawing -----------------------------------------------------------------------------

    def render(self, width: Optional[int] = None) -> str:
        """The one-line text of the bar (without carriage return)."""
        if width is None:
            width = shutil.get_terminal_size((80, 20)).columns
        total = max(self.total, 0)
        frac = self.done / total if total else 1.0
        rate = self.rate()
        rate_text = f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s"
        head = f"{self.desc} " if self.desc else ""
        tail = f" {self.done}/{total} {100 * frac:5.1f}% | {rate_text} | ETA {format_duration(self.eta())}"
        bar_width = width - len(head) - len(tail) - 3
        if bar_width >= 10:
            filled = int(bar_width * min(max(frac, 0.0), 1.0))
            bar = "[" + "#" * filled + "." * (bar_width - filled) + "]"
            return head + bar + tail
        return (head + tail.lstrip())[: max(width - 1, 1)]

    def _maybe_draw(self, force: bool = False) -> None:
        if not self.enabled or self._closed:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval and self.done < self.total:
            return
        if (self.done, self.total) == self._drawn_state and self.done >= self.total:
            return  # the final state is already on screen
        self._last_draw = now
        self._drawn_state = (self.done, self.total)
        self.stream.write("\r" + self.render() + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._closed:
            return
        if self.enabled:
            self._maybe_draw(force=True)
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()
        self._closed = True

    def __enter__(self) -> "Progress":
        self._maybe_draw(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()
