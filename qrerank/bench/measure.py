"""Timing and peak-memory measurement shared by the benchmarks."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakMemory:
    """Peak memory above the level at entry: device memory on CUDA; on CPU resident host memory, read from
    the kernel's high-water mark (Linux, reset at entry), else sampled every 2 ms by a thread. The mark
    costs nothing while the measured code runs; the sampler wakes 500 times a second beside its threads
    (about 7% of a 2-core embed request's time)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        # Hand memory freed by the previous run back to the OS first; otherwise this run would
        # reuse it without raising the resident size, and its peak would read as zero.
        if hasattr(_LIBC, "malloc_trim"):
            _LIBC.malloc_trim(0)
        self._thread: threading.Thread | None = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM starts again from the current resident size
        except OSError:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._base = rss_bytes()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes() - self._base)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._thread is None:
            self.peak = max(0, memory_status("VmHWM") - self._base)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes() - self._base)


def memory_status(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(wall seconds, result) of fn(), the device's queued work included on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


@dataclass
class Run:
    """Latencies of one system over the same requests, with the outputs it gave."""

    name: str
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # the process's CPU time (all threads) per request
    outputs: list[Any] = field(default_factory=list)
    peak_memory: int = 0

    def timed(self, fn: Callable[[], Any], device: torch.device) -> None:
        cpu = time.process_time()
        seconds, out = timed(fn, device)
        self.cpu_seconds.append(time.process_time() - cpu)
        self.latencies.append(seconds)
        self.outputs.append(out)

    def summary(self, items: int, tokens: int) -> dict[str, float]:
        total = sum(self.latencies)
        return {
            "items_per_s": items / total,
            "tokens_per_s": tokens / total,
            "p50_ms": 1e3 * float(np.percentile(self.latencies, 50)),
            "p95_ms": 1e3 * float(np.percentile(self.latencies, 95)),
            "peak_memory_mb": self.peak_memory / 2**20,
            "total_s": total,
            # CPU seconds spent: on a shared machine, less sensitive than wall time to the other processes
            "cpu_s": sum(self.cpu_seconds),
        }
