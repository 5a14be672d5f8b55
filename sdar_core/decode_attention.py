"""Decode attention: a short chunk of queries against the whole preallocated KV cache (paper §3.2, Appendix B.2).

The static-shape decode forward (runner modes "static" and "graph") runs Q queries at cache indices `q_index`
(Q = 1 for AR, L for the block in flight, 2L for the fused chunk "finished block + block in flight") against
the full buffers k_cache, v_cache [B, H_kv, T, D]. Query i of row b sees key j when

    j // L <= i // L  (block-causal)   and   (j >= pad[b]  or  j == i)  (left padding; a padding query sees itself)

which is `attention.block_causal_mask` with k_start = pad. The mask is computed from these indices, never stored.

On CUDA this is a split-K ("flash-decoding") Triton kernel. One program takes one (row, KV head, split): the
G = H / H_kv query heads that share the KV head and all Q queries are the G*Q rows of one tile (up to 128 rows;
longer chunks take several tiles), so each key and value is read once per KV head and never copied
(grouped-query attention). The end of the last query's block, `kv_end`, is read on the device and each of the S
splits covers 1/S of [0, kv_end): the grid depends only on the buffer's shape (one CUDA graph serves every filled
length) and no program reads a slot past kv_end. A second kernel merges the splits' partial softmaxes (their
log-sum-exps); with `fold` (Kernels.merge_fold) the split kernel merges them itself, as the skinny GEMM sums its
split-K partials (gemm.py): each split stores its partial and counts itself in on an atomic counter of its tile, and
the last to arrive merges the tile's S partials in split order (the result does not depend on who arrives last) and
resets the counter, one kernel fewer a layer (one split: its output is the answer). Elsewhere (CPU, or chunks
longer than MAX_QUERIES, such as a prefill) `attention.decode_attention` runs the same math through SDPA over the
filled slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import pdl
from .fused import needs_grad
from .gemm import COUNTERS, counters
from .ops import kernel_op

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the SDPA path
    import triton
    import triton.language as tl
except ImportError:
    triton = None

TILE_ROWS = 128  # at most this many of the G * Q (query head, query) rows per program
MAX_QUERIES = 256  # longer chunks (a prefill, never graphed) take the SDPA path


@dataclass
class CacheQueries:
    """Where a chunk's queries sit in the cache buffer: all the kernel needs to build the block-causal mask.

    The runner builds it once per forward (`attention.AttentionInputs.cache_queries`), like any mask.
    """

    q_index: torch.Tensor  # [Q] long, ascending: cache indices of the chunk's queries (on the cache's device)
    block_size: int  # L: block boundaries at multiples of L (1 = plain causal)
    pad: torch.Tensor  # [B] long: first valid key of each row (left padding; zeros when unpadded)

    def kv_end(self, k_len: int) -> torch.Tensor:
        """End of the last query's block, clipped to the buffer: the keys any query may see lie before it."""
        L = self.block_size
        return ((self.q_index[-1] // L + 1) * L).clamp_max(k_len)


@dataclass(frozen=True)
class SplitConfig:
    """Launch parameters of the split-K kernel (benchmarks/decode_attention.py measured the defaults)."""

    block_n: int = 64  # keys per inner step
    waves: int = 2  # aim for this many programs per multiprocessor
    max_splits: int = 64
    num_warps: int = 4
    num_stages: int = 3  # one more key tile in flight: 5-14% faster at 8k slots, within 0.5 us below


DEFAULT_SPLIT = SplitConfig()
KEY_ROWS = 16  # the chunk's keys a split program forms at a time (Kernels.rope_in_attention)


@dataclass
class Rope:
    """What the split kernel needs to form the chunk's queries and keys itself (Kernels.rope_in_attention): the
    keys and values [B, Q, H_kv, D] as the q/k/v projection wrote them, the q and k RMSNorms' weights [D] and eps,
    and the chunk's cos and sin [B, 1, Q, D] (model.rope_cos_sin). The queries come raw, [B, Q, H, D]."""

    k: torch.Tensor
    v: torch.Tensor
    q_weight: torch.Tensor
    k_weight: torch.Tensor
    q_eps: float
    k_eps: float
    cos: torch.Tensor
    sin: torch.Tensor


def split_k_available(device: torch.device) -> bool:
    """Whether the split-K kernel runs on this device (CUDA with Triton); elsewhere decode attention is SDPA."""
    return triton is not None and torch.device(device).type == "cuda"


def split_k_runs(q: torch.Tensor) -> bool:
    """Whether the kernel takes these queries [B, H, Q, D]: its device, at most MAX_QUERIES, D a power of 2 >= 16."""
    Q, D = q.shape[-2:]
    return split_k_available(q.device) and Q <= MAX_QUERIES and D >= 16 and D & (D - 1) == 0


def split_k_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    where: CacheQueries,
    config: SplitConfig | None = None,
    fold: bool = False,
) -> torch.Tensor:
    """The kernel (where `split_k_runs`): q [B, H, Q, D] against the whole buffers k_cache, v_cache [B, H_kv, T, D]
    -> [B, H, Q, D] (laid out as [B, Q, H, D]). config None: DEFAULT_SPLIT through the registered op, so that
    torch.compile(fullgraph=True) takes the kernel whole; a SplitConfig is launched directly (the benchmarks sweep
    them). `fold`: the splits merged by the last of each tile to finish, no merge kernel (Kernels.merge_fold)."""
    if config is None:
        return _split_k_op(q, k_cache, v_cache, where.q_index, where.pad, where.block_size, fold)
    return _split_k(q, k_cache, v_cache, where, config, fold)


def num_splits(batch: int, kv_heads: int, k_len: int, config: SplitConfig, device: torch.device) -> int:
    """Splits per (row, KV head): enough programs for `waves` per multiprocessor, at least one key step each
    (on CPU tensors, which only Triton's interpreter runs the kernel on, as if there were 4 multiprocessors)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    want = -(-config.waves * sms // (batch * kv_heads))
    return max(1, min(want, config.max_splits, -(-k_len // config.block_n)))


def _split_k(
    q,
    k_cache,
    v_cache,
    where: CacheQueries,
    config: SplitConfig,
    fold: bool = False,
    rope: Rope | None = None,
) -> torch.Tensor:
    """The launch: q [B, H, Q, D] (any strides; with `rope`, the raw queries [B, Q, H, D] viewed so), k_cache,
    v_cache [B, H_kv, T, D] -> [B, H, Q, D] laid out [B, Q, H, D]. With `rope` the kernel forms the queries and
    writes the chunk's keys and values into the caches itself (Rope)."""
    B, H, Q, D = q.shape
    H_kv, T = k_cache.shape[1], k_cache.shape[2]
    G = H // H_kv
    if q.stride(-1) != 1:
        q = q.contiguous()
    k_cache, v_cache = _unit_last_stride(k_cache), _unit_last_stride(v_cache)
    S = num_splits(B, H_kv, T, config, q.device)
    rows = max(16, min(TILE_ROWS, triton.next_power_of_2(G * Q)))  # tl.dot needs at least 16 rows
    grid = (S, B * H_kv, triton.cdiv(G * Q, rows))
    out = _heads_last(B, H, Q, D, q)
    # The fold counts each tile's splits on the device's split-K counters (None while a graph is captured before
    # they exist: then the merge kernel runs); one split needs neither partials nor counter.
    count = counters(q.device) if fold and S > 1 and grid[1] * grid[2] <= COUNTERS else None
    fold = fold and (S == 1 or count is not None)
    parts = (B, H, Q, S) if not fold or S > 1 else (1, 1, 1, 1)  # one split folded writes no partial
    part_out = torch.empty(*parts, D, dtype=torch.float32, device=q.device)  # each split's normalised output
    part_lse = torch.empty(*parts, dtype=torch.float32, device=q.device)  # and its log2-sum-exp2
    chained = pdl.on(q)
    _split_kernel[grid](
        q,
        k_cache,
        v_cache,
        where.q_index,
        where.pad,
        part_out,
        part_lse,
        out,
        count if count is not None else part_lse,
        *(
            (rope.k, rope.v, rope.q_weight, rope.k_weight, rope.cos, rope.sin)
            + (rope.k.stride(0), rope.k.stride(1), rope.k.stride(2), rope.v.stride(0), rope.v.stride(1))
            + (rope.v.stride(2), rope.cos.stride(0), rope.cos.stride(2), rope.q_eps, rope.k_eps)
            if rope is not None
            else (q,) * 6 + (0,) * 8 + (0.0, 0.0)
        ),
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        Q,
        H_kv,
        T,
        where.block_size,
        math.log2(math.e) / math.sqrt(D),
        G=G,
        D=D,
        ROWS=rows,
        BLOCK_N=config.block_n,
        S=S,
        FOLD=fold,
        ROPE=rope is not None,
        KEY_ROWS=KEY_ROWS,
        PDL=chained,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **pdl.options(chained),
    )
    if fold:
        return out
    _merge_kernel[(B * H * Q,)](
        part_out,
        part_lse,
        out,
        Q,
        H,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        S=S,
        S_POW2=triton.next_power_of_2(S),
        D=D,
        PDL=chained,
        num_warps=4,
        **pdl.options(chained),
    )
    return out


def rope_runs(q: torch.Tensor, rope: Rope, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether `split_k_rope_attention` takes raw queries q [B, Q, H, D] with `rope`: the split kernel runs
    (split_k_runs), the raw tensors, caches and cos / sin have unit last strides and one dtype, the norms' weights are
    contiguous [D] of that dtype, cos and sin share their strides, and no gradient is wanted (fused.needs_grad: under
    no_grad the weights' requires_grad does not count)."""
    D = q.shape[-1]
    tensors = (q, rope.k, rope.v, k_cache, v_cache, rope.cos, rope.sin)
    return (
        split_k_runs(q.transpose(1, 2))
        and all(t.stride(-1) == 1 and t.dtype == q.dtype and t.device == q.device for t in tensors)
        and all(
            w.shape == (D,) and w.is_contiguous() and w.dtype == q.dtype
            for w in (rope.q_weight, rope.k_weight)
        )
        and rope.cos.stride() == rope.sin.stride()
        and not needs_grad(*tensors, rope.q_weight, rope.k_weight)
    )


def split_k_rope_attention(
    q: torch.Tensor,
    rope: Rope,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    where: CacheQueries,
    fold: bool = False,
) -> torch.Tensor:
    """Where `rope_runs`: the split-K attention of the raw queries q [B, Q, H, D], which the kernel normalises
    and rotates itself, after writing the chunk's keys (normalised, rotated) and values into k_cache and v_cache at
    where.q_index, as norm_rope_qk_to_cache does; -> [B, H, Q, D] laid out [B, Q, H, D]. No norm + RoPE kernel before
    it (Kernels.rope_in_attention)."""
    return _split_k_rope_op(
        q,
        rope.k,
        rope.v,
        rope.q_weight,
        rope.k_weight,
        float(rope.q_eps),
        float(rope.k_eps),
        rope.cos,
        rope.sin,
        k_cache,
        v_cache,
        where.q_index,
        where.pad,
        where.block_size,
        fold,
    )


@kernel_op("sdar::split_k_rope_attention", mutates_args=("k_cache", "v_cache"))
def _split_k_rope_op(
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
    q_index: torch.Tensor,
    pad: torch.Tensor,
    block_size: int,
    fold: bool,
) -> torch.Tensor:
    rope = Rope(k, v, q_weight, k_weight, q_eps, k_eps, cos, sin)
    where = CacheQueries(q_index, block_size, pad)
    return _split_k(q.transpose(1, 2), k_cache, v_cache, where, DEFAULT_SPLIT, fold, rope)


@_split_k_rope_op.register_fake
def _(q, k, v, q_weight, k_weight, q_eps, k_eps, cos, sin, k_cache, v_cache, q_index, pad, block_size, fold):
    B, Q, H, D = q.shape
    return _heads_last(B, H, Q, D, q)


@kernel_op("sdar::split_k_attention", mutates_args=())
def _split_k_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    q_index: torch.Tensor,
    pad: torch.Tensor,
    block_size: int,
    fold: bool,
) -> torch.Tensor:
    return _split_k(q, k_cache, v_cache, CacheQueries(q_index, block_size, pad), DEFAULT_SPLIT, fold)


@_split_k_op.register_fake
def _(q, k_cache, v_cache, q_index, pad, block_size, fold):
    return _heads_last(*q.shape, q)


def _heads_last(B: int, H: int, Q: int, D: int, like: torch.Tensor) -> torch.Tensor:
    """An output [B, H, Q, D] laid out as [B, Q, H, D]: the o_proj's input [B, Q, H * D] is then a view of it, not
    a copy (for Q > 1 that copy was one more kernel a layer: 28 kernels and 68 us of a 16-row forward on an H200)."""
    return torch.empty(B, Q, H, D, dtype=like.dtype, device=like.device).transpose(1, 2)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


if triton is not None:
    from .norm_rope import rope_rows

    @triton.jit
    def _split_kernel(
        Q_ptr,
        K_ptr,
        V_ptr,
        QIDX,
        PAD,
        PART_OUT,
        PART_LSE,
        OUT,  # [B, H, Q, D] (FOLD: written here)
        COUNT,  # [tiles] int32, zero between launches (FOLD with S > 1)
        KR,  # ROPE: the chunk's keys and values [B, Q, H_kv, D] as the q/k/v projection wrote them
        VR,
        WQ,  # ROPE: the q and k RMSNorms' weights [D]
        WK,
        COS,  # ROPE: [B, Q, D] rows of cos and sin (strides sc_b, sc_q)
        SIN,
        skr_b,
        skr_q,
        skr_h,
        svr_b,
        svr_q,
        svr_h,
        sc_b,
        sc_q,
        eps_q,
        eps_k,
        sq_b,
        sq_h,
        sq_q,
        sk_b,
        sk_h,
        sk_t,
        sv_b,
        sv_h,
        sv_t,
        so_b,
        so_h,
        so_q,
        n_q,
        n_kv,
        T,
        block_size,
        scale_log2,
        G: tl.constexpr,
        D: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_N: tl.constexpr,
        S: tl.constexpr,
        FOLD: tl.constexpr,  # the last split of each tile to finish merges the S partials (no merge kernel)
        ROPE: tl.constexpr,  # Q_ptr holds the raw queries: RMSNorm + RoPE here, and the chunk's keys into the cache
        KEY_ROWS: tl.constexpr,
        PDL: tl.constexpr,
    ):
        pdl.wait_and_release(PDL)
        split, bh = tl.program_id(0), tl.program_id(1)
        b, hk = bh // n_kv, bh % n_kv
        r = tl.program_id(2) * ROWS + tl.arange(0, ROWS)  # row r = query head hk*G + r // n_q, query r % n_q
        g, qi = r // n_q, r % n_q
        live = r < G * n_q
        d = tl.arange(0, D)
        q_row = b * sq_b + (hk * G + g) * sq_h + qi * sq_q
        if ROPE:  # as norm_rope_qk_to_cache forms them (norm_rope.rope_rows), rounded to the dtype
            q = rope_rows(Q_ptr, WQ, COS, SIN, q_row, b * sc_b + qi * sc_q, live, eps_q, D)
            q = q.to(Q_ptr.dtype.element_ty)
        else:
            q = tl.load(Q_ptr + q_row[:, None] + d[None, :], mask=live[:, None], other=0.0)  # [ROWS, D]
        i = tl.load(QIDX + qi, mask=live, other=0)  # [ROWS] each row's query index in the cache
        row_end = tl.where(live, tl.minimum((i // block_size + 1) * block_size, T), 0)  # block-causal end
        last = tl.load(QIDX + n_q - 1)  # q_index ascends: the last query's block ends last
        kv_end = tl.minimum((last // block_size + 1) * block_size, T)
        pad = tl.load(PAD + b)
        steps = tl.cdiv(tl.cdiv(kv_end, BLOCK_N), S)  # key steps per split
        lo = split * steps * BLOCK_N
        hi = tl.minimum(lo + steps * BLOCK_N, kv_end)
        m = tl.full([ROWS], float("-inf"), tl.float32)  # running max (log2 units)
        l = tl.zeros([ROWS], tl.float32)  # running sum of exp2
        acc = tl.zeros([ROWS, D], tl.float32)
        k_base, v_base = K_ptr + b * sk_b + hk * sk_h, V_ptr + b * sv_b + hk * sv_h
        if ROPE:  # the chunk's keys (normalised, rotated) and values this split reads: into the cache first
            for c0 in range(0, n_q, KEY_ROWS):
                c = c0 + tl.arange(0, KEY_ROWS)
                pos = tl.load(QIDX + c, mask=c < n_q, other=0)
                mine = (c < n_q) & (pos >= lo) & (pos < hi)
                kr = rope_rows(
                    KR, WK, COS, SIN, b * skr_b + c * skr_q + hk * skr_h, b * sc_b + c * sc_q, mine, eps_k, D
                )
                tl.store(
                    k_base + pos[:, None] * sk_t + d[None, :],
                    kr.to(K_ptr.dtype.element_ty),
                    mask=mine[:, None],
                )
                vr = tl.load(
                    VR + (b * svr_b + c * svr_q + hk * svr_h)[:, None] + d[None, :], mask=mine[:, None]
                )
                tl.store(v_base + pos[:, None] * sv_t + d[None, :], vr, mask=mine[:, None])
            tl.debug_barrier()  # the block's writes seen by all its threads' loads below
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            k = tl.load(k_base + n[:, None] * sk_t + d[None, :], mask=(n < hi)[:, None], other=0.0)  # [N, D]
            s = tl.dot(q, tl.trans(k)) * scale_log2  # [ROWS, N]
            seen = (n[None, :] < row_end[:, None]) & ((n[None, :] >= pad) | (n[None, :] == i[:, None]))
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing seen yet stays at zero
            p = tl.exp2(s - m_ref[:, None])
            alpha = tl.exp2(m - m_ref)
            v = tl.load(v_base + n[:, None] * sv_t + d[None, :], mask=(n < hi)[:, None], other=0.0)  # [N, D]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            l = l * alpha + tl.sum(p, 1)
            m = m_new
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        out_ptrs = OUT + b * so_b + (hk * G + g)[:, None] * so_h + qi[:, None] * so_q + d[None, :]
        if FOLD and S == 1:  # the one split's softmax is the whole one
            tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=live[:, None])
        else:
            base = (b * n_kv * G + hk * G + g) * n_q + qi  # [B, H, Q] flat index of each row
            tl.store(PART_LSE + base * S + split, tl.where(l > 0, m + tl.log2(l), float("-inf")), mask=live)
            tl.store(PART_OUT + (base * S + split)[:, None] * D + d[None, :], out, mask=live[:, None])
            if FOLD:
                tile = bh * tl.num_programs(2) + tl.program_id(2)
                arrived = tl.atomic_add(
                    COUNT + tile, 1, sem="acq_rel"
                )  # releases the partial, acquires the others'
                if arrived == S - 1:
                    merged = _merged_rows(PART_OUT, PART_LSE, base, live, d, S, ROWS, D)
                    tl.store(out_ptrs, merged.to(OUT.dtype.element_ty), mask=live[:, None])
                    tl.atomic_xchg(COUNT + tile, 0)

    @triton.jit
    def _merged_rows(PART_OUT, PART_LSE, base, live, d, S: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr):
        """The tile's rows `base` [ROWS] merged over their S partial softmaxes, in split order: each partial
        weighted by 2^(its log2-sum-exp2 - the rows' largest), their sum over the weights' (an empty split weighs
        0). Loads bypass L1 (.cg): the other splits' partials were written by other programs. Both loops are unrolled
        (static_range), so that the S loads of each are independent instructions in flight together: as a loop each
        iteration waited for its own L2 round trip, 2S of them in the last arriver's tail (benchmarks/NOTES.md,
        "The goals' H200 run of 2026-12-07")."""
        top = tl.full([ROWS], float("-inf"), tl.float32)
        for s in tl.static_range(S):
            lse = tl.load(PART_LSE + base * S + s, mask=live, other=float("-inf"), cache_modifier=".cg")
            top = tl.maximum(top, lse)
        top = tl.where(top == float("-inf"), 0.0, top)  # a row past the tile's end
        acc = tl.zeros([ROWS, D], tl.float32)
        total = tl.zeros([ROWS], tl.float32)
        for s in tl.static_range(S):
            w = tl.exp2(
                tl.load(PART_LSE + base * S + s, mask=live, other=float("-inf"), cache_modifier=".cg") - top
            )
            part = tl.load(
                PART_OUT + (base * S + s)[:, None] * D + d[None, :],
                mask=live[:, None],
                other=0.0,
                cache_modifier=".cg",
            )
            acc += w[:, None] * part
            total += w
        return acc / tl.where(total > 0, total, 1.0)[:, None]

    @triton.jit
    def _merge_kernel(
        PART_OUT,
        PART_LSE,
        OUT,
        n_q,
        n_heads,
        so_b,
        so_h,
        so_q,
        S: tl.constexpr,
        S_POW2: tl.constexpr,
        D: tl.constexpr,
        PDL: tl.constexpr,
    ):
        pdl.wait_and_release(PDL)
        row = tl.program_id(0)  # flat (b, h, query)
        qi, h, b = row % n_q, (row // n_q) % n_heads, row // (n_q * n_heads)
        s, d = tl.arange(0, S_POW2), tl.arange(0, D)
        lse = tl.load(PART_LSE + row * S + s, mask=s < S, other=float("-inf"))  # [S]
        w = tl.exp2(lse - tl.max(lse, 0))  # an empty split weighs 0
        parts = tl.load(PART_OUT + (row * S + s)[:, None] * D + d[None, :], mask=(s < S)[:, None], other=0.0)
        out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
        tl.store(OUT + b * so_b + h * so_h + qi * so_q + d, out.to(OUT.dtype.element_ty))
