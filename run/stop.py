"""A stop request from SIGINT (Ctrl-C) or SIGTERM, checked by the loop once per iteration.

The first signal only sets the flag, so the loop finishes its iteration, writes a final checkpoint
and flushes the logs. A second Ctrl-C interrupts at once (KeyboardInterrupt), for a stuck run.
"""

from __future__ import annotations

import signal
from types import FrameType

# Conventional exit statuses: a terminated run ends cleanly (0); an interrupted one reports 128 + SIGINT.
EXIT_STATUS = {signal.SIGTERM: 0, signal.SIGINT: 130}


class StopFlag:
    """`requested` turns true on SIGINT or SIGTERM once installed (a context manager)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Stop as if `signum` had arrived (another data-parallel rank received a signal)."""
        self.signum = signum

    def exit_status(self) -> int:
        return EXIT_STATUS.get(self.signum, 0) if self.signum is not None else 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopFlag:
        for signum in EXIT_STATUS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
