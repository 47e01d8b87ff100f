"""A one-line progress counter on standard error for runs of many forward passes."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

#: With ``progress=None`` a run shows progress when it has at least this many forward passes.
LONG_RUN = 256


class Progress:
    """Counts forward passes and redraws ``label: done/total passes (rate)`` in place.

    ``enabled=None`` shows it for long runs (``total >= LONG_RUN``) on an interactive terminal;
    ``True`` always, ``False`` never.
    """

    def __init__(
        self, label: str, total: int, enabled: bool | None, stream: TextIO | None = None
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = total >= LONG_RUN and bool(getattr(self.stream, "isatty", bool)())
        self.enabled = enabled
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.perf_counter()

    def advance(self, passes: int) -> None:
        self.done += passes
        if self.enabled:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.stream.write(
                f"\r{self.label}: {self.done}/{self.total} forward passes "
                f"({self.done / elapsed:.0f}/s)"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
