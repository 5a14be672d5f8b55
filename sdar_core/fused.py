"""Fused elementwise kernels of the decode forward: residual add + RMSNorm, and SiLU(gate) * up.

At decode time a layer's elementwise work is a few kilobytes per kernel, so each costs its launch (~1.5-2.5 us
even inside a CUDA graph) and not its bytes (benchmarks/NOTES.md, "The graphed forward by kernel class"). Eager,
a layer adds the attention output to the residual stream and normalises the sum (2 kernels), does the same with the
MLP's output (2 more), and multiplies SiLU(gate) by up (2). On CUDA with Triton each pair is one kernel:

- `add_rms_norm`: s = x + delta rounded to the input dtype (the new residual stream, as the eager add rounds it),
  then RMSNorm(s) in float32 with one rounding at the end (as `F.rms_norm` does): one program per row.
- `silu_mul`: SiLU(g) rounded as the eager SiLU rounds, times u, rounded once: one program per row and column tile.

Both serve inference only (no backward): with a gradient wanted, or on the CPU, the eager ops run. The caller's
`Kernels` (kernels.py) switches each fusion on or off: the `fuse` argument below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import pdl
from .ops import kernel_op

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the eager ops
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record an op on these tensors (training): the kernels have no backward."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def kernels_run(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether a fused inference kernel runs on `x`: CUDA, Triton, no gradient wanted, a unit last stride."""
    return triton is not None and x.is_cuda and x.stride(-1) == 1 and not needs_grad(x, *params)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, norm, fuse: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, norm(s)) with s = x + delta (s = x when delta is None): the residual stream and its normalised form.
    `norm` is an RMSNorm module (weight, eps); `fuse`: one kernel where it runs."""
    if delta is None:
        return x, norm(x)
    if (
        fuse
        and kernels_run(x, delta, norm.weight)
        and delta.stride(-1) == 1
        and norm.weight.device == x.device
    ):  # (else the module call, which big-model dispatch hooks)
        return _add_rms_norm(x, delta, norm.weight, norm.eps)
    x = x + delta
    return x, norm(x)


def silu_mul(gate_up: torch.Tensor, fuse: bool = True) -> torch.Tensor:
    """SiLU(g) * u of gate_up = [g; u] on the last dim: [..., 2I] -> [..., I]; `fuse`: one kernel where it runs."""
    if fuse and kernels_run(gate_up):
        return _silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@kernel_op("sdar::add_rms_norm", mutates_args=())
def _add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    h = x.shape[-1]
    x2, d2 = x.reshape(-1, h), delta.reshape(-1, h)  # [rows, h]
    total, out = (torch.empty(x2.shape, dtype=x.dtype, device=x.device) for _ in range(2))
    block = triton.next_power_of_2(h)
    chained = pdl.on(x)
    _add_norm_kernel[(x2.shape[0],)](
        x2,
        d2,
        weight,
        total,
        out,
        x2.stride(0),
        d2.stride(0),
        h,
        eps,
        BLOCK=block,
        PDL=chained,
        num_warps=min(16, max(1, block // 256)),
        **pdl.options(chained),
    )
    return total.view(x.shape), out.view(x.shape)


@_add_rms_norm.register_fake
def _(x, delta, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)


SILU_COLUMNS = 1024  # output columns per program


@kernel_op("sdar::silu_mul", mutates_args=())
def _silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    n = gate_up.shape[-1] // 2
    gu = gate_up.reshape(-1, 2 * n)  # [rows, 2I]
    out = torch.empty(gu.shape[0], n, dtype=gate_up.dtype, device=gate_up.device)
    chained = pdl.on(gate_up)
    _silu_mul_kernel[(gu.shape[0], triton.cdiv(n, SILU_COLUMNS))](
        gu, out, gu.stride(0), n, BLOCK=SILU_COLUMNS, PDL=chained, num_warps=4, **pdl.options(chained)
    )
    return out.view(*gate_up.shape[:-1], n)


@_silu_mul.register_fake
def _(gate_up):
    return gate_up.new_empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2)


if triton is not None:

    @triton.jit
    def silu_mul_tile(g, u, dtype: tl.constexpr):
        """SiLU(g) * u of float32 g and u in `dtype`, rounded as the eager ops round it: the SiLU to `dtype` first
        (F.silu's output), then the product. silu_mul's kernel and gemm's SwiGLU fold both form it here."""
        act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
        return (act * u).to(dtype)

    @triton.jit
    def _add_norm_kernel(X, DELTA, W, SUM, OUT, sx, sd, n, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
        pdl.wait_and_release(PDL)
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        live = cols < n
        dtype = OUT.dtype.element_ty
        s = (
            tl.load(X + row * sx + cols, mask=live, other=0.0).to(tl.float32)
            + tl.load(DELTA + row * sd + cols, mask=live, other=0.0).to(tl.float32)
        ).to(dtype)
        tl.store(SUM + row * n + cols, s, mask=live)
        s = s.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(s * s, 0) / n + eps)
        w = tl.load(W + cols, mask=live, other=0.0).to(tl.float32)
        tl.store(OUT + row * n + cols, (s * rstd * w).to(dtype), mask=live)

    @triton.jit
    def _silu_mul_kernel(GU, OUT, s_row, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
        pdl.wait_and_release(PDL)
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        live = cols < n
        dtype = OUT.dtype.element_ty
        g = tl.load(GU + row * s_row + cols, mask=live, other=0.0).to(tl.float32)
        u = tl.load(GU + row * s_row + n + cols, mask=live, other=0.0).to(tl.float32)
        tl.store(OUT + row * n + cols, silu_mul_tile(g, u, dtype), mask=live)
