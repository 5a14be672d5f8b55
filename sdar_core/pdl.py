"""Programmatic dependent launch (PDL, Hopper and later) for our Triton kernels: on by default where it runs,
SDAR_PDL=0 switches it off.

Inside a CUDA graph a kernel still starts only after the one before it has finished: the SMs idle while the last
wave drains, the next grid launches and its first loads come back (~1-2 us per kernel boundary at decode time,
where a forward is ~350 kernels of a few us each). A kernel launched with PDL may be scheduled as soon as every
program of the kernel before it has signalled (`gdc_launch_dependents`); it must then wait (`gdc_wait`: the
previous grid has completed and its writes are visible) before it reads anything a previous kernel wrote and
before it writes anything at all (a freed buffer it writes may still be read by the kernel before). What it may do
before the wait is read what no kernel writes: the skinny GEMM loads its first weight tile there (gemm.py).

Every kernel of ours calls `wait_and_release(PDL)` first (the GEMM: release, prefetch, wait), so a chain of them
overlaps each launch with the previous kernel's tail; a kernel of torch or cuBLAS between them is launched without
PDL and waits as before. The waits are transitive: a kernel that waits for its predecessor also waits for
everything that one waited for.
"""

from __future__ import annotations

import dataclasses
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
try:  # a Triton whose CUDA launcher takes launch_pdl (3.4 and later)
    from triton.backends.nvidia.compiler import CUDAOptions

    SUPPORTED = "launch_pdl" in {f.name for f in dataclasses.fields(CUDAOptions)}
except Exception:  # no Triton, no CUDA backend, or another layout of its options
    SUPPORTED = False

ENV = "SDAR_PDL"
REQUESTED = os.environ.get(ENV, "1") != "0"  # read once: the launch path stays a dictionary lookup
_capable: dict[int, bool] = {}


def on(x: torch.Tensor) -> bool:
    """Whether kernels on x's device launch with PDL: requested, supported by this Triton, a Hopper or newer GPU."""
    if not (REQUESTED and SUPPORTED and x.is_cuda):
        return False
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if index not in _capable:
        _capable[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _capable[index]


def options(flag: bool) -> dict:
    """The launch keyword of a kernel launched with PDL (`flag` from `on`)."""
    return {"launch_pdl": True} if flag else {}


if triton is not None:

    @triton.jit
    def wait_and_release(PDL: tl.constexpr):
        """A PDL kernel's first act: wait for the previous grid, then let the next one launch."""
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
