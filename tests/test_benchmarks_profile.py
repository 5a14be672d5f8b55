"""benchmarks/profile_forward.py's bookkeeping, on the CPU: the time some kernel covers (what its idle time is
measured against), what each kernel adds to a forward's end, and the class each of our Triton kernels is counted
in."""

from __future__ import annotations

import random
import re
from pathlib import Path

from benchmarks.profile_forward import added_us, covered_us, kernel_class

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


def test_what_each_kernel_adds_to_the_forward_is_named_by_its_place_in_the_layer():
    """Two layers of the fused `ar` forward as PDL runs them (each kernel starts 1 us before the one before it ends),
    with a 3 us gap before the second layer's gate_up and one kernel that ends before the one before it; by hand:
    each kernel adds its own duration less the 1 us overlap (the first kernel all of it, gate_up of layer 2 its
    duration plus the gap, the early finisher nothing)."""
    layer = [
        ("_add_norm_kernel", 3.0),
        ("_skinny_kernel", 10.0),  # qkv
        ("_norm_rope_kernel", 3.0),
        ("_split_kernel", 4.0),
        ("_merge_kernel", 3.0),
        ("_skinny_kernel", 7.0),  # o_proj
        ("_add_norm_kernel", 4.0),
        ("_skinny_kernel", 20.0),  # gate_up
        ("_skinny_kernel", 13.0),  # down
    ]
    kernels = layer + layer + [("_add_norm_kernel", 3.0), ("_skinny_kernel", 200.0)]
    replay, end = [], 100.0
    for i, (name, duration) in enumerate(kernels):
        start = end - 1.0 + (3.0 if i == len(layer) + 7 else 0.0)
        replay.append((name, start, start + duration))
        end = start + duration
    # the second layer's merge ends inside its split kernel: it adds nothing and the next kernel follows the split
    name, start, _ = replay[len(layer) + 4]
    replay[len(layer) + 4] = (name, start - 2.0, start + 0.5)
    got = added_us([replay, [(n, a + 1000, b + 1000) for n, a, b in replay]], layers=2)
    first, span = replay[0][1], max(b for _, _, b in replay) - replay[0][1]
    assert (
        abs(sum(got[k] * (2 if k not in ("lm_head", "_add_norm_kernel") else 1) for k in got) - span) < 1e-9
    )
    assert got["qkv"] == 9.0 and got["down"] == 12.0 and got["_split_kernel"] == 3.0
    assert got["gate_up"] == (19.0 + 22.0) / 2  # the gap counts for the kernel after it
    assert got["_merge_kernel"] == (2.0 + 0.0) / 2
    # layer 2's o_proj still starts 1 us before where the merge would have ended, 1 us after the split's end: it
    # adds its 7 us and that 1 us
    assert got["o_proj"] == (6.0 + 8.0) / 2
    assert got["_add_norm_kernel#1/2"] == (3.0 + 2.0) / 2 and got["_add_norm_kernel#2/2"] == 3.0
    assert got["_add_norm_kernel"] == 2.0 and got["lm_head"] == 199.0 and first == 99.0
