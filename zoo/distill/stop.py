"""A clean stop: SIGTERM or Ctrl-C sets a flag, the loop saves a checkpoint and ends with 143 or 130."""

from __future__ import annotations

import signal
import threading
from typing import Any

# The shell's convention for a process ended by a signal: 128 + the signal number.
EXIT_STATUS = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and stops. A second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def exit_status(signal_name: str | None) -> int:
    """143 for SIGTERM, 130 for Ctrl-C and any other stop (a KeyboardInterrupt raised in Python)."""
    return EXIT_STATUS.get(signal_name or "SIGINT", EXIT_STATUS["SIGINT"])
