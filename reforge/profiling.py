"""Where a run's time goes: the milliseconds of each kernel of a compiled module, measured in place.

Kernels are timed inside whole runs (the Relax VM's instrument hook around each call; for OpenCL, each
launch followed by a ``finish``), so every kernel finds the caches as a real run leaves them. What
is not in a kernel (the VM's dispatch and allocations, and the hook itself: ~1-5 µs a call) shows as
the run's time minus the kernels'.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from .report_format import table


@dataclass
class KernelTime:
    name: str
    calls: int  # per run
    ms: float  # per run: the median over the profiled runs


@dataclass
class Profile:
    kernels: list[KernelTime]  # slowest first
    run_ms: float  # a whole profiled run, the median
    runs: int

    @property
    def kernel_ms(self) -> float:
        return sum(k.ms for k in self.kernels)

    def format(self, note: str = "") -> str:
        rows = [[k.name, str(k.calls), f"{k.ms:.3f}", f"{100 * k.ms / self.run_ms:.1f}"] for k in self.kernels]
        rows += [["all kernels", str(sum(k.calls for k in self.kernels)), f"{self.kernel_ms:.3f}",
                  f"{100 * self.kernel_ms / self.run_ms:.1f}"],
                 ["outside kernels", "", f"{self.run_ms - self.kernel_ms:.3f}",
                  f"{100 * (1 - self.kernel_ms / self.run_ms):.1f}"],
                 ["run", "", f"{self.run_ms:.3f}", "100.0"]]
        head = f"profile: median of {self.runs} runs, ms per run{note}"
        return head + "\n" + table(["kernel", "calls", "ms", "%"], rows)


def summarize(runs: list[dict[str, list[float]]], run_ms: list[float]) -> Profile:
    """A profile from each run's kernel times (name -> seconds of each call) and its total in ms."""
    names = runs[0].keys()
    kernels = [KernelTime(n, len(runs[0][n]), 1e3 * statistics.median(sum(r[n]) for r in runs)) for n in names]
    return Profile(sorted(kernels, key=lambda k: -k.ms), statistics.median(run_ms), len(runs))


def profile_calls(run: Callable[[Callable[[str, bool], None]], None], repeat: int, warmup: int = 3) -> Profile:
    """Profile ``repeat`` runs after ``warmup``: ``run(mark)`` runs the module once, calling
    ``mark(kernel, True)`` as each kernel starts and ``mark(kernel, False)`` once it has finished."""
    for _ in range(warmup):
        run(lambda _name, _start: None)
    runs, run_ms = [], []
    for _ in range(repeat):
        calls: dict[str, list[float]] = defaultdict(list)
        started: dict[str, float] = {}

        def mark(name: str, start: bool) -> None:
            now = time.perf_counter()
            if start:
                started[name] = now
            else:
                calls[name].append(now - started[name])

        begin = time.perf_counter()
        run(mark)
        run_ms.append((time.perf_counter() - begin) * 1e3)
        runs.append(calls)
    return summarize(runs, run_ms)
