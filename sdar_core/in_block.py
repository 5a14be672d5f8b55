"""The in-block half of the mask-free block-causal prefill, and its merge with the causal half, in one kernel.

`attention.block_causal_attention` computes a chunk of whole blocks from key 0 as flash attention's causal pass
(its output and each row's log-sum-exp) plus, for each query, the keys after it in its own block, merged by the two
softmaxes' log-sum-exps. Written with torch ops, that second half costs ~0.9 ms a layer at an 8k prompt on an H100
(float32 copies of q, k and v, k and v repeated over the query heads, [L, L] products, three elementwise passes):
the SDAR prefill of 8k tokens took 96 ms against the AR model's 71 (benchmarks/NOTES.md, "The prefill").

Here one Triton program takes R consecutive rows of one (sequence, query head): several whole blocks when the block
length divides the tile, one block otherwise. It loads the rows' queries, the keys and values of their KV head (no
repeat: head h reads KV head h // groups), forms the [R, R] scores in float32, keeps each query's later keys of its
own block, and merges: with m and l the in-block row maximum and sum of exp(s - m), and acc = exp(s - m) v,

    out = causal * exp(lse - total) + acc * exp(m - total),   total = logaddexp(lse, m + log l)

(the in-block softmax's 1 / l cancels against its weight l exp(m - total)). A row whose block has no later key
(its block's last) keeps the causal output. The probabilities meet v in v's dtype, as flash's do.
"""

from __future__ import annotations

import math

import torch

from .decode_attention import _heads_last
from .fused import kernels_run
from .ops import kernel_op

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the torch ops of attention.py
    import triton
    import triton.language as tl
except ImportError:
    triton = None

MIN_TILE = 16  # tl.dot's smallest side


def tile_rows(block_size: int) -> tuple[int, int]:
    """(rows a program takes, its tile's side): whole blocks filling a tile of at least MIN_TILE rows where the block
    length divides a power of two (every trained SDAR block length), else one block in the next power of two."""
    side = max(MIN_TILE, 1 << (block_size - 1).bit_length())
    return (side if side % block_size == 0 else block_size), side


def in_block_runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int) -> bool:
    """Whether the kernel takes this chunk: CUDA and Triton, bf16 or fp16 (the flash pass's dtypes; float32 would go
    through TF32 products), no gradient wanted, unit last strides, a head dimension of a power of two from 16 to 256,
    blocks of at most 128 tokens."""
    D = q.shape[-1]
    return (
        kernels_run(q, k, v)
        and q.dtype in (torch.bfloat16, torch.float16)
        and k.stride(-1) == 1
        and v.stride(-1) == 1
        and D in (16, 32, 64, 128, 256)
        and 1 < block_size <= 128
    )


@kernel_op("sdar::in_block_merge", mutates_args=())
def in_block_merge(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: torch.Tensor,
    lse: torch.Tensor,
    block_size: int,
) -> torch.Tensor:
    """q [B, H, T, D], k, v [B, H_kv, T, D] (unrepeated), causal [B, H, T, D] and lse [B, H, T] (float32) of the causal
    pass over the same keys -> block-causal attention [B, H, T, D] in q's dtype, laid out [B, T, H, D] (o_proj's
    input is a view of it)."""
    B, H, T, D = q.shape
    groups = H // k.shape[1]
    out = _heads_last(B, H, T, D, q)
    rows, side = tile_rows(block_size)
    _in_block_kernel[(B * H, triton.cdiv(T, rows))](
        q,
        k,
        v,
        causal,
        lse,
        out,
        T,
        H,
        groups,
        1.0 / math.sqrt(D),
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *causal.stride()[:3],
        *lse.stride(),
        *out.stride()[:3],
        L=block_size,
        R=rows,
        SIDE=side,
        D=D,
        num_warps=4 if side <= 32 else 8,  # a tile of 64 or 128 rows: five [side, D] tiles live at once
    )
    return out


@in_block_merge.register_fake
def _(q, k, v, causal, lse, block_size):
    return _heads_last(*q.shape, q)


if triton is not None:

    @triton.jit
    def _in_block_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        c_ptr,
        lse_ptr,
        o_ptr,
        T,
        H,
        G,
        scale,
        sq_b,
        sq_h,
        sq_t,
        sk_b,
        sk_h,
        sk_t,
        sv_b,
        sv_h,
        sv_t,
        sc_b,
        sc_h,
        sc_t,
        sl_b,
        sl_h,
        sl_t,
        so_b,
        so_h,
        so_t,
        L: tl.constexpr,
        R: tl.constexpr,
        SIDE: tl.constexpr,
        D: tl.constexpr,
    ):
        bh = tl.program_id(0)
        b = bh // H
        h = bh % H
        kv = h // G
        i = tl.arange(0, SIDE)
        d = tl.arange(0, D)
        row = tl.program_id(1) * R + i
        valid = (i < R) & (row < T)
        rows2 = row[:, None]
        m2 = valid[:, None]
        q = tl.load(q_ptr + b * sq_b + h * sq_h + rows2 * sq_t + d[None, :], mask=m2, other=0.0)
        k = tl.load(k_ptr + b * sk_b + kv * sk_h + rows2 * sk_t + d[None, :], mask=m2, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale  # [SIDE, SIDE] float32
        # query i sees key j here iff j comes after i in i's own block (the causal pass saw j <= i)
        later = ((row[None, :] // L) == (row[:, None] // L)) & (row[None, :] > row[:, None]) & valid[None, :]
        s = tl.where(later, s, float("-inf"))
        m = tl.max(s, 1)
        seen = m > float("-inf")
        m = tl.where(seen, m, 0.0)
        p = tl.exp(s - m[:, None])  # 0 at every hidden key
        v = tl.load(v_ptr + b * sv_b + kv * sv_h + rows2 * sv_t + d[None, :], mask=m2, other=0.0)
        acc = tl.dot(p.to(v.dtype), v)  # [SIDE, D] float32: the in-block softmax times its sum
        lse_in = tl.where(seen, m + tl.log(tl.sum(p, 1)), float("-inf"))
        lse = tl.load(lse_ptr + b * sl_b + h * sl_h + row * sl_t, mask=valid, other=0.0)
        top = tl.maximum(lse, lse_in)  # lse is finite: every query sees itself
        total = top + tl.log(tl.exp(lse - top) + tl.exp(lse_in - top))
        c = tl.load(c_ptr + b * sc_b + h * sc_h + rows2 * sc_t + d[None, :], mask=m2, other=0.0)
        out = c.to(tl.float32) * tl.exp(lse - total)[:, None] + acc * tl.exp(m - total)[:, None]
        tl.store(
            o_ptr + b * so_b + h * so_h + rows2 * so_t + d[None, :], out.to(o_ptr.dtype.element_ty), mask=m2
        )
