"""SIGTERM and SIGINT while training: finish the step, write a checkpoint, stop with a non-zero exit.

Cluster schedulers send SIGTERM some seconds before they kill a job; Ctrl-C sends SIGINT. Either now
costs at most the step in progress: the loop sees the request after the step, checkpoints, and raises
`Interrupted` (exit 128 + the signal). A second Ctrl-C stops at once, as usual. Handlers are installed
only while training, and only in the main thread (where Python delivers signals).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name
