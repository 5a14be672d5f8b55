"""Training objectives on packed batches: next-token prediction (Eq. 3) and SDAR's block diffusion NELBO (Eq. 7).

A packed row holds several samples (segments) back to back; position ids restart at 0 in each segment, and block
boundaries fall at positions that are multiples of `block_size` counted from each segment's start, exactly where the
decoder puts them when that segment is the whole sequence (absolute positions from the sequence start, as in
sdar_core/decoding.py).
Attention never crosses segments ("sequence-aware block-wise attention mask", paper App. C.1).

SDAR conversion training (paper §3.1, Fig. 1): the noisy sequence x_t and the clean x_0 are concatenated into one
input [x_t ; x_0] of length 2T with duplicated position ids, under the mask

    noisy query (block b) -> noisy keys of block b (bidirectional) + clean keys of blocks < b
    clean query (block b) -> clean keys of blocks <= b (block-causal)
    nothing else, and nothing across segments,

so one forward pass computes log p(x_0^b | x_t^b, x^{<b}) for every block b at once. Masked tokens are predicted at
their own position (no next-token shift).

The mask is described once, as a flex_attention `mask_mod`; `dense_mask` evaluates it into a boolean [B, 1, Q, K]
tensor for SDPA (CPU), create_block_mask (compiled on CUDA) turns it into a BlockMask for flex_attention, which then
skips the fully masked tiles (about half of the [x_t ; x_0] square, and most of it for short blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from sdar_core import attention as _attention
from sdar_core.attention import AttentionInputs


@dataclass
class PackedBatch:
    """A batch of packed rows. Every tensor is [B, T].

    segment_ids: which sample of the row a token belongs to (0, 1, ... left to right; padding is a segment of its own).
    positions: RoPE position ids, restarting at 0 at each segment start.
    loss_mask: tokens that are trained. SDAR: the tokens that may be masked (never prompt or padding tokens).
        AR: the tokens that are next-token targets.
    """

    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    positions: torch.Tensor
    loss_mask: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The fields in their declared order (what the constructor takes)."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def map(self, fn) -> PackedBatch:
        """The same kind of batch with `fn` applied to every tensor (a device move, a row slice, a cat...)."""
        return type(self)(*(fn(t) for t in self.tensors()))

    def to(self, device) -> PackedBatch:
        return self.map(lambda t: t.to(device, non_blocking=True))


@dataclass
class Noise:
    """The forward process of Eq. (4) for one batch: t: [B, T] noise level of each token's segment;
    masked: [B, T] bool, the tokens replaced by the mask token (a subset of loss_mask)."""

    t: torch.Tensor
    masked: torch.Tensor


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    n_targets: torch.Tensor  # scalar: tokens the loss is normalised by
    n_masked: torch.Tensor  # scalar: masked tokens (SDAR) / predicted tokens (AR)


# ---------------------------------------------------------------------------------------------------------------
# Blocks and masks


def block_ids(segment_ids: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, T] an id per (segment, block), increasing left to right: a new block starts at every position that is a
    multiple of block_size and at every segment start. Two tokens are in the same block iff their ids are equal."""
    starts = positions % block_size == 0
    starts[:, 1:] |= segment_ids[:, 1:] != segment_ids[:, :-1]
    return starts.long().cumsum(-1)


def sdar_mask_mod(segment_ids: torch.Tensor, blocks: torch.Tensor) -> Callable:
    """mask_mod(b, h, q, kv) -> bool for the [x_t ; x_0] input of length 2T (indices < T noisy, >= T clean)."""
    T = segment_ids.shape[1]

    def mask_mod(b, h, q_idx, kv_idx):
        q_clean, kv_clean = q_idx >= T, kv_idx >= T
        q, kv = q_idx - T * q_clean, kv_idx - T * kv_clean  # index inside the row
        same_segment = segment_ids[b, q] == segment_ids[b, kv]
        qb, kb = blocks[b, q], blocks[b, kv]
        noisy_own_block = ~q_clean & ~kv_clean & (qb == kb)
        noisy_sees_clean_past = ~q_clean & kv_clean & (kb < qb)
        clean_block_causal = q_clean & kv_clean & (kb <= qb)
        return same_segment & (noisy_own_block | noisy_sees_clean_past | clean_block_causal)

    return mask_mod


def document_causal_mask_mod(segment_ids: torch.Tensor) -> Callable:
    """mask_mod for next-token prediction on packed rows: causal inside each segment."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (segment_ids[b, q_idx] == segment_ids[b, kv_idx]) & (kv_idx <= q_idx)

    return mask_mod


def dense_mask(mask_mod: Callable, batch: int, q_len: int, k_len: int, device) -> torch.Tensor:
    """Evaluate a mask_mod on every (b, q, kv): boolean [B, 1, Q, K], for SDPA."""
    b = torch.arange(batch, device=device)[:, None, None]
    q = torch.arange(q_len, device=device)[None, :, None]
    kv = torch.arange(k_len, device=device)[None, None, :]
    return mask_mod(b, None, q, kv)[:, None]


def _sdar_block_mask(segment_ids: torch.Tensor, blocks: torch.Tensor):
    B, T = segment_ids.shape
    return _attention.flex_block_mask(sdar_mask_mod(segment_ids, blocks), B, 2 * T, 2 * T, segment_ids.device)


def _document_causal_block_mask(segment_ids: torch.Tensor):
    B, T = segment_ids.shape
    return _attention.flex_block_mask(document_causal_mask_mod(segment_ids), B, T, T, segment_ids.device)


_compiled: dict = {}


def _block_mask_builder(fn: Callable, device) -> Callable:
    """fn itself on CPU; compiled on CUDA, where the uncompiled create_block_mask would materialise the dense
    [B, Q, K] mask. The mask_mod is built inside the compiled function, so its tensors are graph inputs and a new
    batch does not recompile."""
    if _attention.create_block_mask is None:  # torch < 2.5: only the dense mask
        raise RuntimeError("flex_attention needs torch >= 2.5; use attention='sdpa'")
    if torch.device(device).type != "cuda":
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def sdar_mask(segment_ids: torch.Tensor, blocks: torch.Tensor, attention: str):
    """The [x_t ; x_0] mask for `attention` "flex" (a BlockMask) or "sdpa" (dense boolean [B, 1, 2T, 2T])."""
    if attention == "flex":
        return _block_mask_builder(_sdar_block_mask, segment_ids.device)(segment_ids, blocks)
    B, T = segment_ids.shape
    return dense_mask(sdar_mask_mod(segment_ids, blocks), B, 2 * T, 2 * T, segment_ids.device)


def document_causal_mask(segment_ids: torch.Tensor, attention: str):
    """Causal attention inside each packed sample: a BlockMask ("flex") or a dense [B, 1, T, T] mask ("sdpa")."""
    if attention == "flex":
        return _block_mask_builder(_document_causal_block_mask, segment_ids.device)(segment_ids)
    B, T = segment_ids.shape
    return dense_mask(document_causal_mask_mod(segment_ids), B, T, T, segment_ids.device)


# ---------------------------------------------------------------------------------------------------------------
# SDAR: block diffusion NELBO


def sample_noise(
    batch: PackedBatch,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
) -> Noise:
    """t ~ U(eps, 1] per packed sample (segment), then each trainable token is masked with probability t (Eq. 4
    with the linear schedule alpha_t = 1 - t). Every segment with a trainable token gets at least one masked token
    (otherwise it would contribute nothing and t -> eps would waste the sample). Prompt and padding tokens
    (loss_mask False) are never masked. t: optional [B, n_segments] noise levels to use instead of sampling.

    A segment's t is independent of the other segments' (one draw per packed sample, not per row): packing more
    samples into a row then also averages over more noise levels."""
    seg, eligible = batch.segment_ids, batch.loss_mask
    B, T = seg.shape
    device = seg.device
    n_seg = int(seg.max()) + 1
    if t is None:
        t_seg = eps + (1 - eps) * (1 - torch.rand(B, n_seg, generator=generator, device=device))  # (eps, 1]
    else:
        t_seg = t.to(device=device, dtype=torch.float32).expand(B, n_seg)
    t_tok = t_seg.gather(1, seg)  # [B, T]
    u = torch.rand(B, T, generator=generator, device=device)
    masked = eligible & (u < t_tok)
    # Guarantee: in a segment with eligible tokens but none masked, mask its eligible token of largest key.
    key = torch.where(eligible, torch.rand(B, T, generator=generator, device=device), -1.0)
    seg_max = torch.full((B, n_seg), -2.0, device=device).scatter_reduce(1, seg, key, "amax")
    # (float, not bool: CUDA's scatter_reduce has no bool kernel)
    seg_has_masked = torch.zeros(B, n_seg, device=device).scatter_reduce(1, seg, masked.float(), "amax") > 0
    forced = eligible & (key == seg_max.gather(1, seg)) & ~seg_has_masked.gather(1, seg)
    return Noise(t=t_tok, masked=masked | forced)


def sdar_inputs(batch: PackedBatch, noise: Noise, mask_token_id: int):
    """input_ids [B, 2T] = [x_t ; x_0] and positions [B, 2T] (the clean copy reuses the noisy half's ids)."""
    x_t = torch.where(noise.masked, torch.full_like(batch.input_ids, mask_token_id), batch.input_ids)
    return torch.cat([x_t, batch.input_ids], 1), torch.cat([batch.positions, batch.positions], 1)


def sdar_loss(
    model, batch: PackedBatch, noise: Noise, *, block_size: int, mask_token_id: int, attention: str = "sdpa"
) -> LossOutput:
    """Eq. (7) on a packed batch: sum over masked tokens of -log p(x_0 | x_t^b, x^{<b}) / t, divided by the number
    of trainable tokens (loss_mask), all in one forward pass over [x_t ; x_0]. The 1/t weight makes this an unbiased
    estimate of the per-token NELBO bound; logits are read at the masked position itself."""
    B, T = batch.input_ids.shape
    ids, positions = sdar_inputs(batch, noise, mask_token_id)
    mask = sdar_mask(batch.segment_ids, block_ids(batch.segment_ids, batch.positions, block_size), attention)
    logits = model(
        ids, positions, attn=AttentionInputs.of(mask), logits_to=T
    )  # [B, T, V]: the noisy half only
    ce = F.cross_entropy(logits.flatten(0, 1).float(), batch.input_ids.flatten(), reduction="none")  # [B*T]
    weight = (noise.masked / noise.t).flatten()  # 0 where not masked; no data-dependent shapes, no host sync
    n_targets = batch.loss_mask.sum()
    loss = (ce * weight).sum() / n_targets.clamp(min=1)
    return LossOutput(loss=loss, n_targets=n_targets, n_masked=noise.masked.sum())


# ---------------------------------------------------------------------------------------------------------------
# AR: next-token prediction


def ar_loss(model, batch: PackedBatch, *, attention: str = "sdpa") -> LossOutput:
    """Eq. (3) on a packed batch: position i predicts token i+1 of the same segment when that token is trainable
    (loss_mask), causal attention inside each segment; mean over the predicted tokens."""
    B, T = batch.input_ids.shape
    mask = document_causal_mask(batch.segment_ids, attention)
    attn = AttentionInputs.of(mask)
    logits = model(batch.input_ids, batch.positions, attn=attn, logits_to=T - 1)  # [B, T-1, V]
    target = batch.input_ids[:, 1:]
    valid = batch.loss_mask[:, 1:] & (batch.segment_ids[:, 1:] == batch.segment_ids[:, :-1])  # [B, T-1]
    ce = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="none")
    n = valid.sum()
    loss = (ce * valid.flatten()).sum() / n.clamp(min=1)
    return LossOutput(loss=loss, n_targets=n, n_masked=n)
