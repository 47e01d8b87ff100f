"""Side-by-side timing shared by the benchmarks.

Contenders run interleaved, round by round, in an order that rotates every round, so that drifts
of the machine (and of the allocator's state) hit them alike; the report gives medians and the
ratio of each to a baseline contender.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def side_by_side(
    runs: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per contender, after ``warmup`` warm-up calls each."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: Mapping[str, float], baseline: str) -> None:
    """Print one line per contender: median milliseconds and the ratio to ``baseline``."""
    print(title)
    base = medians[baseline]
    for name, median in medians.items():
        print(f"{name:<44} {median * 1e3:8.1f} ms   {median / base:5.2f}x {baseline}")
