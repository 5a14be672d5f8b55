"""Block-causal attention: the masks and the backends that compute it.

SDAR's attention (paper §2.3, §3.2): inside a block of `block_size` tokens every token sees every other;
across blocks attention is strictly causal. `block_size` 1 is plain causal attention. Block boundaries
fall at key/query *indices* that are multiples of the block size (absolute positions, as in training).

A forward builds one `AttentionInputs` (which keys each query sees, said one way) and every layer hands it to
`attend`, the one dispatch:
- a dense mask, or none: `attention` with the backend of the caller's Kernels (kernels.py): "sdpa", torch's
  scaled_dot_product_attention (default, CPU and GPU); "flash", flash-attn when installed, for calls where no
  mask is needed (all keys visible, or causal); "eager", a plain softmax(QK^T)V reference, used by the tests;
- a flex_attention BlockMask: flex_attention (CUDA; what training uses for the [x_t ; x_0] mask);
- the chunk's cache indices (`CacheQueries`, static-shape decode forwards): `decode_attention`, the split-K kernel
  of decode_attention.py where it runs, SDPA over the filled slice elsewhere;
- a block length alone (`blocks`: a CUDA prefill of whole blocks from key 0, no padding): `block_causal_attention`,
  flash attention's causal pass and each block's later keys merged by their log-sum-exps, where no mask is built.

Why the last: SDPA's flash kernel takes no mask, so a block-causal mask sent the prompt's attention to the
memory-efficient kernel, which reads the [Q, K] mask and skips nothing above the diagonal. An SDAR prefill of an
8k prompt took 2.3x the AR model's causal one on an H100 (167 against 71 ms; benchmarks/NOTES.md, "The prefill: one
graph for short prompts, and the block-causal attention without a mask"). Block-causal is causal plus, for each
query, the keys after it in its own block: the flash kernel's causal pass returns its output and each row's
log-sum-exp, the few in-block keys (block_size - 1 at most per query) are a batched [block, block] product, and the
two softmaxes combine exactly by their log-sum-exps. With Kernels.in_block_kernel the in-block keys and the merge are
one Triton kernel (in_block.py) instead of ~10 torch ops over float32 copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .decode_attention import CacheQueries, split_k_attention, split_k_runs
from .fused import needs_grad
from .in_block import in_block_merge, in_block_runs
from .kernels import DEFAULT_KERNELS, Kernels

try:  # optional: flash-attn only helps on CUDA and is never required
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # ImportError, or a build that does not match the installed torch
    _flash_attn_func = None

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except Exception:  # very old torch
    BlockMask, create_block_mask, flex_attention = None, None, None

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # SDPA on CUDA without its cuDNN backend: cuDNN builds an execution plan for every new sequence length, on the
    # first call of that length (0.1-1 s on an H100), and a prefill has the prompt's length: the first request of
    # each prompt length paid it (benchmarks/NOTES.md, "The first request of a prompt length"). Flash and the
    # memory-efficient kernel need no plan.
    SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
except ImportError:  # torch without the backend selector: SDPA picks as it likes
    SDPBackend, sdpa_kernel, SDPA_BACKENDS = None, None, None


def block_causal_mask(
    q_index: torch.Tensor, k_len: int, block_size: int, k_start: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask [B, 1, Q, K]: True where query i may attend to key j.

    q_index: [Q] or [B, Q] key-space indices of the queries (a chunk at the end of a cache has
    indices start .. start+Q-1). Key j is visible when block(j) <= block(q), block(i) = i // block_size.
    k_start: [B] first valid key of each row (left padding); keys before it are hidden. A query that
    would see no key at all (a padding query) is allowed to see itself so that softmax stays finite.
    """
    if q_index.dim() == 1:
        q_index = q_index[None]
    k_index = torch.arange(k_len, device=q_index.device)
    allowed = (k_index[None, None, :] // block_size) <= (q_index[:, :, None] // block_size)  # [B, Q, K]
    if k_start is not None:
        valid = k_index[None, :] >= k_start[:, None]  # [B, K]
        allowed = allowed & valid[:, None, :]
        allowed = allowed | (k_index[None, None, :] == q_index[:, :, None])
    return allowed[:, None]


def chunk_mask(
    start: int, q_len: int, k_len: int, block_size: int, k_start: torch.Tensor | None = None, device=None
) -> tuple[torch.Tensor | None, bool]:
    """The attention mask of a chunk of `q_len` queries at key indices start.. against keys [0, k_len): every
    forward (whole sequence, prompt prefill, block in flight, static-shape buffer) gets its mask here.

    Returns (mask, is_causal): (None, False) when every query sees every key (whole blocks, the chunk ending
    the keys, no padding: no mask at all is fastest), (None, True) for plain causal attention over a whole
    sequence (block size 1), else the boolean mask of `block_causal_mask`.
    """
    ends_keys = k_start is None and k_len == start + q_len
    if ends_keys and start % block_size == 0 and q_len <= block_size:
        return None, False
    if ends_keys and block_size == 1 and start == 0:
        return None, True
    q_index = torch.arange(start, start + q_len, device=device)
    return block_causal_mask(q_index, k_len, block_size, k_start=k_start), False


def attention(
    q: torch.Tensor,  # [B, H, Q, D]
    k: torch.Tensor,  # [B, H_kv, K, D]
    v: torch.Tensor,  # [B, H_kv, K, D]
    mask: torch.Tensor | BlockMask | None,
    *,
    is_causal: bool = False,
    backend: str = "sdpa",
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v with grouped-query heads; returns [B, H, Q, D].

    mask: None (every query sees every key, or causal when `is_causal`), a boolean tensor broadcastable
    to [B, H, Q, K] (True = visible) or an additive one (0 / -inf), or a flex_attention BlockMask.
    """
    if backend == "flex" or (BlockMask is not None and isinstance(mask, BlockMask)):
        if flex_attention is None:
            raise RuntimeError("flex_attention needs torch >= 2.5")
        return flex_attention(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
    if backend == "flash" and _flash_attn_func is not None and mask is None and q.is_cuda:
        # flash-attn wants [B, T, H, D]; causal alignment is bottom-right, as ours for a cache chunk.
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=is_causal)
        return out.transpose(1, 2)
    if backend == "eager":
        return eager_attention(q, k, v, mask, is_causal=is_causal)
    gqa = q.shape[1] != k.shape[1]
    q_len, k_len = q.shape[-2], k.shape[-2]
    if is_causal and mask is None and q_len != k_len:
        # SDPA's is_causal is top-left aligned; a chunk at the end of a cache needs bottom-right (as eager, flash).
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
    if gqa and mask is not None and q.is_cuda:
        # With an explicit mask only the math kernel takes enable_gqa; repeating the (short) decode
        # keys/values lets the memory-efficient kernel run instead.
        groups = q.shape[1] // k.shape[1]
        k, v, gqa = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), False
    causal = is_causal and mask is None
    if q.is_cuda and sdpa_kernel is not None:
        with sdpa_kernel(SDPA_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)


def block_causal_runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `block_causal_attention` takes its causal pass from SDPA's flash kernel: CUDA, bf16/fp16, a head
    dimension the kernel takes (a multiple of 8, at most 256), flash enabled in torch, no gradient wanted (the
    kernel's log-sum-exp has no backward)."""
    return (
        q.is_cuda
        and q.dtype in (torch.bfloat16, torch.float16)
        and k.dtype == q.dtype == v.dtype
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention")
        and torch.backends.cuda.flash_sdp_enabled()
        and torch.cuda.get_device_capability(q.device) >= (8, 0)
        and not needs_grad(q, k, v)
    )


def causal_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of q [B, H, T, D] over k, v [B, H_kv, T, D] and each query's log-sum-exp of its scaled scores
    [B, H, T] float32: SDPA's flash kernel where `block_causal_runs` (it reads grouped heads as they are), float32
    math elsewhere."""
    if block_causal_runs(q, k, v):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True)[:2]
        return out, lse
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # block_causal_attention's torch form hands over k and v repeated already
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    T = q.shape[-2]
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    lse = scores.logsumexp(-1)
    return ((scores - lse[..., None]).exp() @ v.float()).to(q.dtype), lse


def block_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, kernel: bool = False
) -> torch.Tensor:
    """Block-causal attention of a whole chunk from key 0 (query i sees key j iff j // block_size <=
    i // block_size), q [B, H, T, D] over k, v [B, H_kv, T, D], without a mask: the causal pass (causal_with_lse)
    merged with each query's later keys of its own block by their log-sum-exps. [B, H, T, D] in q's dtype.
    `kernel` (Kernels.in_block_kernel): the later keys and the merge in one Triton kernel (in_block.py) where it
    runs; the torch ops below elsewhere."""
    B, H, T, D = q.shape
    if kernel and in_block_runs(q, k, v, block_size):  # no repeat of k and v: both kernels read grouped heads
        causal, lse = causal_with_lse(q, k, v)
        return in_block_merge(q, k, v, causal, lse, block_size)
    groups = H // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    causal, lse = causal_with_lse(q, k, v)
    # Each query's keys after it in its block: the chunk padded to whole blocks, one [L, L] product per block.
    L = block_size
    nb = -(-T // L)
    pad = nb * L - T

    def blocked(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t.float(), (0, 0, 0, pad)).view(B, H, nb, L, D)

    scores = blocked(q) @ blocked(k).transpose(-1, -2) / math.sqrt(D)  # [B, H, nb, L, L]
    i = torch.arange(L, device=q.device)
    later = (i[None, :] > i[:, None]) & ((torch.arange(nb, device=q.device)[:, None] * L + i) < T)[:, None, :]
    scores = scores.masked_fill(~later, float("-inf"))
    lse_in = scores.logsumexp(-1)  # -inf where a query has no later key (its block's last)
    p = (
        scores - lse_in[..., None].clamp_min(-1e30)
    ).exp()  # 0 at every hidden key, rows without keys included
    inside = (p @ blocked(v)).view(B, H, nb * L, D)[:, :, :T]
    lse_in = lse_in.view(B, H, nb * L)[:, :, :T]
    total = torch.logaddexp(lse, lse_in)  # lse is finite: every query sees itself
    out = causal.float() * (lse - total).exp()[..., None] + inside * (lse_in - total).exp()[..., None]
    return out.to(q.dtype)


def eager_attention(q, k, v, mask, *, is_causal: bool = False) -> torch.Tensor:
    """The textbook computation, in float32: the reference every other backend is tested against."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, H, Q, K]
    if is_causal and mask is None:
        Q, K = scores.shape[-2:]
        mask = torch.ones(Q, K, dtype=torch.bool, device=q.device).tril(K - Q)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:  # an additive mask (0 / -inf)
        scores = scores + mask.float()
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


def flex_block_mask(mask_mod, batch: int | None, q_len: int, k_len: int, device) -> BlockMask:
    """Compile a flex_attention BlockMask from a mask_mod(b, h, q_idx, kv_idx) -> bool."""
    if create_block_mask is None:
        raise RuntimeError("flex_attention needs torch >= 2.5")
    return create_block_mask(mask_mod, B=batch, H=None, Q_LEN=q_len, KV_LEN=k_len, device=device)


@dataclass(frozen=True)
class AttentionInputs:
    """What attention receives in one forward, built once (by the runner, the model or the training loss) and
    passed to every layer: which keys each query sees, given by exactly one of the fields (none: every key)."""

    mask: torch.Tensor | None = None  # [B, 1, Q, K] boolean (True = visible) or additive (0 / -inf)
    is_causal: bool = False  # with no mask: plain causal attention, bottom-right aligned
    block_mask: BlockMask | None = None  # flex_attention's compiled mask (training on CUDA)
    cache_queries: CacheQueries | None = (
        None  # static shapes: the split-K kernel builds the mask from the indices
    )
    # A chunk of whole blocks' queries over keys [0, Q) with no padding, block-causal with blocks of this length, on
    # CUDA: `block_causal_attention`, no mask built (0: not such a chunk).
    blocks: int = 0

    @classmethod
    def chunk(
        cls,
        start: int,
        q_len: int,
        k_len: int,
        block_size: int,
        k_start: torch.Tensor | None = None,
        device=None,
    ) -> AttentionInputs:
        """Block-causal attention of a chunk of q_len queries at key indices start.. against keys [0, k_len)."""
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda and k_start is None and start == 0 and k_len == q_len and 1 < block_size < q_len:
            return cls(blocks=block_size)
        mask, is_causal = chunk_mask(start, q_len, k_len, block_size, k_start=k_start, device=device)
        return cls(mask=mask, is_causal=is_causal)

    @classmethod
    def of(cls, mask: torch.Tensor | BlockMask) -> AttentionInputs:
        """A training loss's mask: a dense tensor for SDPA, or a BlockMask for flex_attention."""
        if isinstance(mask, torch.Tensor):
            return cls(mask=mask)
        return cls(block_mask=mask)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inputs: AttentionInputs,
    kernels: Kernels = DEFAULT_KERNELS,
):
    """q [B, H, Q, D], k, v [B, H_kv, K, D] (the whole cache buffers for cache_queries) -> [B, H, Q, D], through
    `kernels`' attention switches: attention_backend for a dense mask; merge_fold for the split-K decode attention;
    mask_free_prefill (a chunk of `blocks` through block_causal_attention where it runs) and in_block_kernel (its
    in-block half in one kernel)."""
    backend = kernels.attention_backend
    if inputs.cache_queries is not None:
        return decode_attention(q, k, v, inputs.cache_queries, kernels.merge_fold)
    if inputs.block_mask is not None:
        return attention(q, k, v, inputs.block_mask)
    if inputs.blocks:
        if kernels.mask_free_prefill and backend != "eager" and block_causal_runs(q, k, v):
            return block_causal_attention(q, k, v, inputs.blocks, kernels.in_block_kernel)
        mask = block_causal_mask(torch.arange(q.shape[-2], device=q.device), k.shape[-2], inputs.blocks)
        return attention(q, k, v, mask, backend=backend)
    return attention(q, k, v, inputs.mask, is_causal=inputs.is_causal, backend=backend)


def decode_attention(q, k_cache, v_cache, where: CacheQueries, fold: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v under the block-causal rule of `where` (decode_attention.py); [B, H, Q, D] in q's
    dtype. q: [B, H, Q, D]; k_cache, v_cache: [B, H_kv, T, D] (the whole buffers; only [0, kv_end) is read).
    `fold` (Kernels.merge_fold): the split-K kernel merges its splits itself."""
    H, H_kv = q.shape[1], k_cache.shape[1]
    if H % H_kv:
        raise ValueError(f"{H} query heads do not split into groups over {H_kv} KV heads")
    if split_k_runs(q):
        return split_k_attention(q, k_cache, v_cache, where, fold=fold)
    return reference_decode_attention(q, k_cache, v_cache, where)


def reference_decode_attention(q, k_cache, v_cache, where: CacheQueries) -> torch.Tensor:
    """The same math through SDPA over the filled slice (reads kv_end on the host: not for CUDA graphs)."""
    kv_end = int(where.kv_end(k_cache.shape[2]))
    mask = block_causal_mask(where.q_index, kv_end, where.block_size, k_start=where.pad)  # [B, 1, Q, kv_end]
    return attention(q, k_cache[:, :, :kv_end], v_cache[:, :, :kv_end], mask)
