"""Progress bars for long scans and searches: a ``tqdm`` bar on stderr, drawn only on a terminal
(so logs, pipes and CI stay clean), that the scan loops can also call as ``progress(done, total)``.
"""

from __future__ import annotations

import sys
from typing import Optional, TextIO


class Progress:
    """Progress of ``total`` items, ``initial`` of them already done (e.g. resumed from a
    database; tqdm leaves them out of the rate). ``enabled=None`` means: draw only if
    ``stream`` is a TTY. Use as a context manager, or call :meth:`close` at the end."""

    def __init__(self, total: int, *, desc: str = "", unit: str = "arch", initial: int = 0,
                 stream: Optional[TextIO] = None, enabled: Optional[bool] = None, min_interval: float = 0.1):
        from tqdm import tqdm

        stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._bar = tqdm(total=int(total), desc=desc or None, unit=unit, initial=int(initial), file=stream,
                         disable=not enabled, mininterval=min_interval, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items as done (nothing is drawn when the bar is disabled)."""
        self._bar.update(n)

    def __call__(self, done: int, total: Optional[int] = None) -> None:
        """Callback form: ``progress(done, total)``."""
        if total is not None and int(total) != self._bar.total:
            self._bar.total = int(total)
        self._bar.update(int(done) - self._bar.n)

    def close(self) -> None:
        """Finish the bar (tqdm's close: the last state is drawn once more when enabled)."""
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
