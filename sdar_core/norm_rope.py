"""q/k RMSNorm + RoPE in one kernel: Qwen3's per-head norm and rotary embedding of the decode forward.

Eager, a head's queries or keys take an RMSNorm and then RoPE as rotate-half (cat, neg, two products, a sum): six
kernels each for q and for k, every one of them a launch of ~1.5-2.5 us on a few kilobytes at decode time. On CUDA
with Triton this runs as one kernel per tensor: each program normalises one (row, position, head) vector of D in
float32, rounds it to the input dtype as the eager RMSNorm does, rotates it with cos/sin and rounds once more.

`norm_rope_to_cache` is the keys' variant for a forward with a KV cache: the same program writes the rotated key,
and copies the value, straight into the cache buffers at the chunk's cache indices, so the two cache-write copies of
`CacheSlot.write` are not launched; `norm_rope_qk_to_cache` does the queries' heads and the keys' in one launch (a
forward with a cache then runs one kernel between the qkv projection and attention). Elsewhere (CPU) the eager
modules run.
"""

from __future__ import annotations

import torch

from . import pdl
from .fused import kernels_run
from .ops import kernel_op

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the eager path
    import triton
    import triton.language as tl
except ImportError:
    triton = None


def norm_rope_available(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The kernel serves inference only; training (a gradient wanted) takes the eager norm and RoPE."""
    return x.shape[-1] % 2 == 0 and kernels_run(x, weight)


def _launch(cos, sin, queries=None, keys=None) -> None:
    """One program per (row, position, head) over the heads of `queries` then those of `keys`:
    queries (x [B, Q, H, D], weight, eps, out [B, H, Q, D] contiguous): RoPE(RMSNorm(x)) to out;
    keys (k, v [B, Q, H_kv, D], weight, eps, k_cache, v_cache [B, H_kv, T, D], index [Q]): RoPE(RMSNorm(k)) to
    k_cache and v to v_cache at cache positions `index`."""
    x, w_q, eps_q, out = queries if queries is not None else (None,) * 4
    k, v, w_k, eps_k, k_cache, v_cache, index = keys if keys is not None else (None,) * 7
    first = x if x is not None else k
    B, Q, _, D = first.shape
    n_hq, n_hk = (x.shape[2] if x is not None else 0), (k.shape[2] if k is not None else 0)
    if x is None:  # unused arguments of the absent part: any tensor, strides 0
        x, w_q, eps_q, out = k, w_k, eps_k, k_cache
    if k is None:
        k, v, w_k, eps_k, k_cache, v_cache, index = x, x, w_q, eps_q, out, out, x
    out_strides = (n_hq * Q * D, Q * D, D) if queries is not None else (0, 0, 0)
    chained = pdl.on(first)
    _norm_rope_kernel[(B * Q * (n_hq + n_hk),)](
        x,
        w_q,
        out,
        k,
        w_k,
        k_cache,
        index,
        v,
        v_cache,
        cos,
        sin,
        *x.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        cos.stride(0),
        cos.stride(2),
        sin.stride(0),
        sin.stride(2),
        *out_strides,
        *k_cache.stride()[:3],
        Q,
        n_hq,
        n_hk,
        eps_q,
        eps_k,
        D=D,
        BLOCK=triton.next_power_of_2(D),
        PDL=chained,
        num_warps=1,
        **pdl.options(chained),
    )


@kernel_op("sdar::norm_rope", mutates_args=())
def norm_rope(
    x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """x [B, Q, H, D] (last dim contiguous), weight [D], cos/sin [B, 1, Q, D] -> [B, H, Q, D] contiguous."""
    B, Q, H, D = x.shape
    out = torch.empty(B, H, Q, D, dtype=x.dtype, device=x.device)
    _launch(cos, sin, queries=(x, weight, eps, out))
    return out


@norm_rope.register_fake
def _(x, weight, eps, cos, sin):
    B, Q, H, D = x.shape
    return x.new_empty(B, H, Q, D)


def to_cache_available(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
) -> bool:
    """The cache-writing variant needs both buffers laid out alike with a unit last stride, on k's device."""
    return (
        v.stride(-1) == 1
        and k_cache.stride() == v_cache.stride()
        and k_cache.stride(-1) == 1
        and k_cache.device == k.device
        and k_cache.dtype == k.dtype
    )


@kernel_op("sdar::norm_rope_to_cache", mutates_args=("k_cache", "v_cache"))
def norm_rope_to_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    index: torch.Tensor,
) -> None:
    """k_cache[:, :, index] = RoPE(RMSNorm(k)) and v_cache[:, :, index] = v, transposed to the cache's
    [B, H_kv, T, D]; k, v [B, Q, H_kv, D] (last dims contiguous), index [Q] long."""
    _launch(cos, sin, keys=(k, v, weight, eps, k_cache, v_cache, index))


@norm_rope_to_cache.register_fake
def _(k, v, weight, eps, cos, sin, k_cache, v_cache, index):
    return None


@kernel_op("sdar::norm_rope_qk_to_cache", mutates_args=("k_cache", "v_cache"))
def norm_rope_qk_to_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    q_eps: float,
    k_eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    index: torch.Tensor,
) -> torch.Tensor:
    """`norm_rope` of q and `norm_rope_to_cache` of k and v in one launch: q [B, Q, H, D] -> [B, H, Q, D]; k, v
    [B, Q, H_kv, D] into the caches at `index`."""
    B, Q, H, D = q.shape
    out = torch.empty(B, H, Q, D, dtype=q.dtype, device=q.device)
    _launch(
        cos, sin, queries=(q, q_weight, q_eps, out), keys=(k, v, k_weight, k_eps, k_cache, v_cache, index)
    )
    return out


@norm_rope_qk_to_cache.register_fake
def _(q, k, v, q_weight, k_weight, q_eps, k_eps, cos, sin, k_cache, v_cache, index):
    B, Q, H, D = q.shape
    return q.new_empty(B, H, Q, D)


if triton is not None:

    @triton.jit
    def _rotate(X, W, COS, SIN, OUT, IDX, V, VOUT, b, q, h, sx_b, sx_q, sx_h, sc_b, sc_q, ss_b, ss_q, so_b, so_h,
                so_t, sv_b, sv_q, sv_h, eps, D: tl.constexpr, BLOCK: tl.constexpr, INDEXED: tl.constexpr,
                COPY_V: tl.constexpr):  # fmt: skip
        """RoPE(RMSNorm(x)) of the (b, q, h) vector of D into OUT (at cache position IDX[q] when INDEXED), and the
        value vector copied beside it when COPY_V. sx_*, sv_*: (b, position, head) strides of X, V; so_*: (b, head,
        position) of OUT; sc_*, ss_*: (b, position) of COS, SIN. (Scalars, not tuples: Triton before 3.3 passes no
        tuples to a jit function.)"""
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
        if INDEXED:
            pos = tl.load(IDX + q).to(tl.int64)
        else:
            pos = q.to(tl.int64)
        dst = b.to(tl.int64) * so_b + h * so_h + pos * so_t + d
        tl.store(OUT + dst, out.to(dtype), mask=live)
        if COPY_V:
            tl.store(
                VOUT + dst, tl.load(V + b * sv_b + q * sv_q + h * sv_h + d, mask=live, other=0.0), mask=live
            )

    @triton.jit
    def rope_rows(X, W, COS, SIN, x_row, c_row, live, eps, D: tl.constexpr):
        """`_rotate`'s math for R rows at once (D a power of two): RoPE(RMSNorm(x)) of the vectors of X at offsets
        x_row [R] (those not `live` read as zeros), each rotated by the cos / sin rows at offsets c_row [R]; the norm
        rounded to X's dtype as `_rotate` rounds it, the rotation returned in float32 [R, D] for the caller to round.
        (decode_attention's split kernel forms its queries and the chunk's keys with it: Kernels.rope_in_attention.)"""
        d = tl.arange(0, D)
        partner = (d + D // 2) % D  # rotate-half: out[d] = n[d] cos[d] + sign(d) n[partner] sin[d]
        x = tl.load(X + x_row[:, None] + d[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        xp = tl.load(X + x_row[:, None] + partner[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        rstd = (1.0 / tl.sqrt(tl.sum(x * x, 1) / D + eps))[:, None]
        dtype = X.dtype.element_ty
        n = (x * rstd * tl.load(W + d).to(tl.float32)[None, :]).to(dtype).to(tl.float32)
        n_p = (xp * rstd * tl.load(W + partner).to(tl.float32)[None, :]).to(dtype).to(tl.float32)
        cos = tl.load(COS + c_row[:, None] + d[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        sin = tl.load(SIN + c_row[:, None] + d[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        return n * cos + tl.where((d < D // 2)[None, :], -n_p, n_p) * sin

    @triton.jit
    def _norm_rope_kernel(XQ, WQ, OUTQ, XK, WK, KC, IDX, V, VC, COS, SIN, sq_b, sq_q, sq_h, sk_b, sk_q, sk_h,
                          sv_b, sv_q, sv_h, sc_b, sc_q, ss_b, ss_q, soq_b, soq_h, soq_t, skc_b, skc_h, skc_t, n_q,
                          n_hq, n_hk, eps_q, eps_k, D: tl.constexpr, BLOCK: tl.constexpr,
                          PDL: tl.constexpr):  # fmt: skip
        """One program per (row, position, head), the heads running over the n_hq query heads then the n_hk key
        heads: a query head to OUTQ, a key head into the cache KC at IDX with its value copied into VC."""
        pdl.wait_and_release(PDL)
        row = tl.program_id(0)
        heads = n_hq + n_hk
        h, q, b = row % heads, (row // heads) % n_q, row // (heads * n_q)
        if h < n_hq:
            _rotate(XQ, WQ, COS, SIN, OUTQ, IDX, XQ, OUTQ, b, q, h, sq_b, sq_q, sq_h, sc_b, sc_q, ss_b, ss_q, soq_b,
                    soq_h, soq_t, 0, 0, 0, eps_q, D, BLOCK, False, False)  # fmt: skip
        else:
            _rotate(XK, WK, COS, SIN, KC, IDX, V, VC, b, q, h - n_hq, sk_b, sk_q, sk_h, sc_b, sc_q, ss_b, ss_q,
                    skc_b, skc_h, skc_t, sv_b, sv_q, sv_h, eps_k, D, BLOCK, True, True)  # fmt: skip
