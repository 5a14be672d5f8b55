"""benchmarks/profile_forward.py's bookkeeping, on the CPU: the time some kernel covers (what its idle time is
measured against) and the class each of our Triton kernels is counted in."""

from __future__ import annotations

import random
import re
from pathlib import Path

from benchmarks.profile_forward import covered_us, kernel_class

ROOT = Path(__file__).resolve().parents[1]


def covered_by_hand(intervals, horizon: int) -> int:
    """Unit steps of [0, horizon) inside at least one [start, end): the union's length for integer ends."""
    return sum(any(start <= t < end for start, end in intervals) for t in range(horizon))


def test_covered_time_is_the_union_of_the_intervals():
    rng = random.Random(0)
    for _ in range(300):
        intervals = []
        for _ in range(rng.randint(0, 12)):
            start = rng.randrange(0, 100)  # empty, nested, touching and overlapping intervals
            intervals.append((start, start + rng.randint(0, 30)))
        assert covered_us(intervals) == covered_by_hand(intervals, 140), intervals
    # kernels launched with PDL overlap: over a 21.5 us span they sum to 15 us, cover 13.5 us and leave 8 us idle
    # (the span minus their sum would say 6.5)
    overlapping = [(0.0, 5.0), (4.0, 9.0), (8.5, 12.0), (20.0, 21.5)]
    assert sum(end - start for start, end in overlapping) == 15.0
    assert 21.5 - covered_us(overlapping) == 8.0


def test_every_triton_kernel_we_launch_is_counted_in_a_class():
    launched = []
    for path in sorted((ROOT / "sdar_core").glob("*.py")):
        source = path.read_text()
        for name in re.findall(r"@triton\.jit\n\s*def (\w+)\(", source):
            if re.search(rf"\b{name}\[", source):  # launched on a grid, not a helper called from a kernel
                launched.append(name)
    assert len(launched) >= 10, launched
    unclassified = [name for name in launched if kernel_class(name) == "other"]
    assert not unclassified, f"profile_forward.CLASSES counts these as 'other': {unclassified}"
    assert kernel_class("_skinny_kernel") == "matmul" and kernel_class("_norm_rope_kernel") == "fused"
