"""Timing and peak-memory helpers shared by the benchmarks.

Timings run in the benchmark's own process (median of repeats after a warm-up). Peak memory is the steady-state peak
of one run, measured in a fresh child process per configuration: one warm-up run (one-time costs such as BLAS
workspaces and thread pools are not the method's), then the resident-set high-water mark is reset
(``/proc/self/clear_refs``), a second run is made, and its peak (``VmHWM``) minus the resident size before it is
reported. The child runs with glibc's mmap threshold fixed at 64 KiB, so every freed tensor goes back to the OS and
memory kept from the warm-up cannot hide the second run's allocations (this slows allocation, which is why timings
stay in the parent). Linux only; ``ru_maxrss`` would not do, as Linux carries the parent's high-water mark across
fork and exec.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable


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


def _status_kilobytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def peak_memory(run: Callable[[], object]) -> float:
    """Peak MB above the resident size before one call of ``run`` (call it in a :func:`memory_child`)."""
    run()  # warm-up
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the high-water mark to the current resident size
    before = _status_kilobytes("VmRSS")
    run()
    return (_status_kilobytes("VmHWM") - before) / 1024


def memory_child(key: str) -> float:
    """Run ``python <this script> --memory-for key`` in a fresh process; it prints the peak MB as its last line."""
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    output = subprocess.run([sys.executable, sys.argv[0], "--memory-for", key], check=True, capture_output=True,
                            text=True, env=environment)
    return json.loads(output.stdout.strip().splitlines()[-1])


def measure_interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Like :func:`measure` for several methods at once, timed round-robin (one call of each per round), so that
    load changes on a shared machine hit every method alike; returns ``{name: stats}``."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(values), "min_s": min(values), "repeats": repeats}
            for name, values in times.items()}
