"""q/k RMSNorm + RoPE in one kernel: Qwen3's per-head norm and rotary embedding of the decode forward.

Eager, a head's queries or keys take an RMSNorm and then RoPE as rotate-half (cat, neg, two products, a sum): six
kernels each for q and for k, every one of them a launch of ~1.5-2.5 us on a few kilobytes at decode time. On CUDA
with Triton this runs as one kernel per tensor: each program normalises one (row, position, head) vector of D in
float32, rounds it to the input dtype as the eager RMSNorm does, rotates it with cos/sin and rounds once more.
Elsewhere (CPU) the eager modules run.
"""
from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the eager path
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record an op on these tensors (training): the kernel has no backward."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def norm_rope_available(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The kernel serves inference only; training (a gradient wanted) takes the eager norm and RoPE."""
    d = x.shape[-1]
    return (triton is not None and x.is_cuda and d % 2 == 0 and x.stride(-1) == 1
            and not needs_grad(x, weight))


@torch.library.custom_op("sdar::norm_rope", mutates_args=())
def norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, Q, H, D] (last dim contiguous), weight [D], cos/sin [B, 1, Q, D] -> [B, H, Q, D] contiguous."""
    B, Q, H, D = x.shape
    out = torch.empty(B, H, Q, D, dtype=x.dtype, device=x.device)
    _norm_rope_kernel[(B * Q * H,)](
        x, weight, cos, sin, out, x.stride(0), x.stride(1), x.stride(2), cos.stride(0), cos.stride(2),
        sin.stride(0), sin.stride(2), Q, H, eps, D=D, BLOCK=triton.next_power_of_2(D), num_warps=1)
    return out


@norm_rope.register_fake
def _(x, weight, eps, cos, sin):
    B, Q, H, D = x.shape
    return x.new_empty(B, H, Q, D)


if triton is not None:

    @triton.jit
    def _norm_rope_kernel(X, W, COS, SIN, OUT, sx_b, sx_q, sx_h, sc_b, sc_q, ss_b, ss_q, n_q, n_h, eps,
                          D: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)  # flat (b, q, h)
        h, q, b = row % n_h, (row // n_h) % n_q, row // (n_h * n_q)
        d = tl.arange(0, BLOCK)
        live = d < D
        partner = (d + D // 2) % D  # rotate-half: out[d] = n[d] cos[d] + sign(d) n[partner] sin[d]
        base = X + b * sx_b + q * sx_q + h * sx_h
        x = tl.load(base + d, mask=live, other=0.0).to(tl.float32)
        xp = tl.load(base + partner, mask=live, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / D + eps)
        dtype = OUT.dtype.element_ty
        n = (x * rstd * tl.load(W + d, mask=live, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
        n_p = (xp * rstd * tl.load(W + partner, mask=live, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
        cos = tl.load(COS + b * sc_b + q * sc_q + d, mask=live, other=0.0).to(tl.float32)
        sin = tl.load(SIN + b * ss_b + q * ss_q + d, mask=live, other=0.0).to(tl.float32)
        out = n * cos + tl.where(d < D // 2, -n_p, n_p) * sin
        tl.store(OUT + ((b * n_h + h) * n_q + q) * D + d, out.to(dtype), mask=live)
