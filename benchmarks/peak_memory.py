"""The peak resident memory of this process, sampled on a thread: what the benchmarks print."""

from __future__ import annotations

import threading
import time

import psutil


class PeakMemory:
    """Samples a process's resident memory every ``interval`` seconds, keeping the peak (also a ``with`` block).

    The process is this one, or the one of ``pid``.

    ``children_peak`` is the largest resident memory any child process
    (a worker) had at a sample. ``cpu_seconds``: the CPU time the sampling
    itself has taken (listing the children scans every process), which a
    benchmark that times this process's CPU takes off.
    """

    def __init__(self, interval: float = 0.1, pid: int | None = None) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.children_peak = 0
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, self.process.memory_info().rss)
            for child in self.process.children():
                try:
                    self.children_peak = max(self.children_peak, child.memory_info().rss)
                except psutil.NoSuchProcess:  # ended between the listing and the reading
                    pass
            self.cpu_seconds = time.thread_time()

    def now(self) -> int:
        return self.process.memory_info().rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakMemory:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
