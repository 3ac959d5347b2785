"""Timing and peak-memory helpers shared by the benchmarks.

Timings run in the benchmark's own process with the normal allocator. Peak memory is measured in a child process
started with glibc's mmap threshold fixed at 64 KiB, so every large tensor goes back to the OS when freed and the
resident-set high-water mark of one method does not leak into the next (that setting slows large allocations, which
is why it is kept out of the timed process).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psutil

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def memory_child(args: list[str]) -> dict[str, float]:
    """Run ``python <this script> *args`` with the fixed mmap threshold; it prints one JSON dict of peak MB."""
    env = dict(os.environ, **{MMAP_ENV: "65536"})
    output = subprocess.run([sys.executable, sys.argv[0], *args], env=env, check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 0.2 ms by a background thread (MB)."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.0002)

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)
        self._stop.set()
        self._thread.join()

    @property
    def megabytes(self) -> float:
        return (self.peak - self.baseline) / 2**20


def measure(run: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median and min wall time (s) over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def peak_memory(run: Callable[[], object], warmup: bool = True) -> float:
    """Peak MB above the entry level during one call of ``run`` (call it in a :func:`memory_child`)."""
    if warmup:  # warm caches and lazy initialisation
        run()
    with PeakMemory() as memory:
        run()
    return memory.megabytes
