"""How much memory training itself takes: the process's resident memory sampled every few milliseconds
while the steps run. The process-lifetime peak (`ru_maxrss`) also counts loading the model and writing
the final artifacts, which hides what sharding saves during training."""

from __future__ import annotations

import os
import threading
from types import TracebackType


def current_rss_mb() -> float | None:
    """This process's resident memory now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """`with PeakRSS() as peak: ...` then `peak.mb`: the highest resident memory seen in the block
    (None where /proc is not available)."""

    def __init__(self, every_s: float = 0.01) -> None:
        self.every_s = every_s
        self.mb: float | None = current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="tunesmith-rss")

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            now = current_rss_mb()
            if now is not None and (self.mb is None or now > self.mb):
                self.mb = now

    def __enter__(self) -> PeakRSS:
        if self.mb is not None:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        now = current_rss_mb()
        if now is not None and (self.mb is None or now > self.mb):
            self.mb = now
