"""The SDAR training objective (paper §2.3 Eq. 7, §3.1) against independent computations: a mask built with explicit
loops from the paper's three-part definition, and a loss computed block by block with plain forward passes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdar_core.attention import BlockMask
from training.objective import (
    PackedBatch,
    ar_loss,
    block_ids,
    dense_mask,
    document_causal_mask,
    document_causal_mask_mod,
    sample_noise,
    sdar_loss,
    sdar_mask,
    sdar_mask_mod,
)

from helpers import random_model, tiny_config

MASK_ID = 95  # tiny_config: the last id of the vocabulary


def packed(lengths_per_row: list[list[int]], T: int, seed: int = 0, prompt: int = 0) -> PackedBatch:
    """Rows packed with samples of the given lengths (the rest of a row is one padding segment); the first `prompt`
    tokens of every sample are not trainable (an SFT prompt), padding is not trainable."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths_per_row)
    ids = torch.randint(0, MASK_ID, (B, T), generator=g)
    seg = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    loss = torch.zeros(B, T, dtype=torch.bool)
    for b, lengths in enumerate(lengths_per_row):
        start = 0
        for s, n in enumerate(lengths + ([T - sum(lengths)] if sum(lengths) < T else [])):
            seg[b, start : start + n] = s
            pos[b, start : start + n] = torch.arange(n)
            if s < len(lengths):
                loss[b, start + prompt : start + n] = True
            start += n
    return PackedBatch(ids, seg, pos, loss)


def hand_mask(seg: torch.Tensor, pos: torch.Tensor, block_size: int) -> torch.Tensor:
    """The paper's mask over [x_t ; x_0] for one row, written out with loops: a noisy token sees its own noisy block
    and the clean copies of earlier blocks; a clean token sees clean tokens of its own and earlier blocks; nothing
    crosses samples."""
    T = len(seg)
    out = torch.zeros(2 * T, 2 * T, dtype=torch.bool)
    for i in range(2 * T):
        for j in range(2 * T):
            qi, kj = i % T, j % T
            if seg[qi] != seg[kj]:
                continue
            bq, bk = int(pos[qi]) // block_size, int(pos[kj]) // block_size
            q_noisy, k_noisy = i < T, j < T
            if q_noisy and k_noisy:
                out[i, j] = bq == bk
            elif q_noisy and not k_noisy:
                out[i, j] = bk < bq
            elif not q_noisy and not k_noisy:
                out[i, j] = bk <= bq
    return out


@pytest.mark.parametrize("block_size", [2, 4])
def test_sdar_mask_equals_hand_built_three_part_mask(block_size):
    batch = packed([[5, 7], [9]], T=12)  # row 0: two samples; row 1: one sample + 3 padding tokens
    mod = sdar_mask_mod(batch.segment_ids, block_ids(batch.segment_ids, batch.positions, block_size))
    got = dense_mask(mod, 2, 24, 24, "cpu")
    assert got.shape == (2, 1, 24, 24)
    for b in range(2):
        want = hand_mask(batch.segment_ids[b], batch.positions[b], block_size)
        assert torch.equal(got[b, 0], want), f"row {b}"


def test_block_ids_restart_at_each_sample_start():
    batch = packed([[5, 7]], T=12)
    # blocks of 4 counted from each sample's start: [0..3] [4] | [0..3] [4..6]
    assert block_ids(batch.segment_ids, batch.positions, 4).tolist() == [[1, 1, 1, 1, 2, 3, 3, 3, 3, 4, 4, 4]]


def brute_force_sdar_loss(model, batch: PackedBatch, noise, block_size: int) -> torch.Tensor:
    """Eq. (7) block by block: for each sample and each of its blocks, run the model on the clean prefix plus that
    noisy block alone (its own block-causal mask) and sum the 1/t-weighted cross-entropies at masked positions."""
    total = torch.zeros(())
    B, T = batch.input_ids.shape
    for b in range(B):
        for s in batch.segment_ids[b].unique().tolist():
            idx = (batch.segment_ids[b] == s).nonzero().flatten()
            x0 = batch.input_ids[b, idx]
            masked, t = noise.masked[b, idx], noise.t[b, idx]
            xt = torch.where(masked, torch.full_like(x0, MASK_ID), x0)
            for start in range(0, len(idx), block_size):
                end = min(start + block_size, len(idx))
                if not masked[start:end].any():
                    continue
                inp = torch.cat([x0[:start], xt[start:end]])[None]
                logits = model(inp)[0, start:end]  # predicted at the same position
                ce = F.cross_entropy(logits.float(), x0[start:end], reduction="none")
                total = total + (ce / t[start:end])[masked[start:end]].sum()
    return total / batch.loss_mask.sum()


@pytest.mark.parametrize("block_size,prompt", [(4, 0), (2, 3)])
def test_sdar_loss_equals_block_by_block_brute_force(block_size, prompt):
    model = random_model(tiny_config("sdar", block_size=block_size))
    batch = packed([[6, 10], [16]], T=16, prompt=prompt)
    noise = sample_noise(batch, 1e-3, torch.Generator().manual_seed(1))
    assert noise.masked.any()
    with torch.no_grad():
        got = sdar_loss(model, batch, noise, block_size=block_size, mask_token_id=MASK_ID).loss
        want = brute_force_sdar_loss(model, batch, noise, block_size)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_t_near_zero_still_masks_one_token_per_sample():
    batch = packed([[5, 7], [9]], T=12, prompt=2)
    for seed in range(5):
        noise = sample_noise(batch, 1e-3, torch.Generator().manual_seed(seed), t=torch.tensor(1e-9))
        for b in range(2):
            for s in batch.segment_ids[b].unique().tolist():
                in_seg = batch.segment_ids[b] == s
                expected = 1 if batch.loss_mask[b, in_seg].any() else 0  # padding has nothing to mask
                assert int(noise.masked[b, in_seg].sum()) == expected


def test_sampled_t_lies_in_eps_one_and_is_shared_by_a_sample():
    batch = packed([[5, 7], [12]], T=12)
    noise = sample_noise(batch, 0.25, torch.Generator().manual_seed(0))
    assert ((noise.t > 0.25) & (noise.t <= 1)).all()
    for b in range(2):
        for s in batch.segment_ids[b].unique().tolist():
            assert noise.t[b, batch.segment_ids[b] == s].unique().numel() == 1


def test_prompt_and_padding_tokens_are_never_masked():
    batch = packed([[6, 5], [9]], T=12, prompt=3)
    for seed in range(20):
        noise = sample_noise(batch, 1e-3, torch.Generator().manual_seed(seed))
        assert not (noise.masked & ~batch.loss_mask).any()
    full = sample_noise(batch, 1e-3, torch.Generator().manual_seed(0), t=torch.tensor(1.0))
    assert torch.equal(full.masked, batch.loss_mask)  # at t = 1 every trainable token, and only those


@pytest.mark.parametrize("mode", ["sdar", "ar"])
def test_no_attention_crosses_packed_samples(mode):
    """Perturbing sample 0 (not trained here) leaves the loss, which only sample 1 carries, unchanged."""
    model = random_model(tiny_config("sdar" if mode == "sdar" else "qwen3", block_size=4))
    batch = packed([[7, 9]], T=16)
    batch.loss_mask[batch.segment_ids == 0] = False
    noise = sample_noise(batch, 1e-3, torch.Generator().manual_seed(0))

    def loss_of(ids):
        b = PackedBatch(ids, batch.segment_ids, batch.positions, batch.loss_mask)
        with torch.no_grad():
            if mode == "sdar":
                return sdar_loss(model, b, noise, block_size=4, mask_token_id=MASK_ID).loss
            return ar_loss(model, b).loss

    base = loss_of(batch.input_ids)
    other = batch.input_ids.clone()
    other[batch.segment_ids == 0] = torch.randint(
        0, MASK_ID, (7,), generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(loss_of(other), base, rtol=1e-5, atol=1e-6)
    changed = batch.input_ids.clone()
    changed[0, 10] = (changed[0, 10] + 1) % MASK_ID  # a token of sample 1 does matter
    assert not torch.allclose(loss_of(changed), base)


def test_ar_loss_equals_mean_over_samples_run_alone():
    model = random_model(tiny_config("qwen3"))
    batch = packed([[6, 10], [16]], T=16)
    total, count = torch.zeros(()), 0
    with torch.no_grad():
        for b in range(2):
            for s in batch.segment_ids[b].unique().tolist():
                x = batch.input_ids[b, batch.segment_ids[b] == s]
                logits = model(x[None])[0]
                total = total + F.cross_entropy(logits[:-1].float(), x[1:], reduction="sum")
                count += len(x) - 1
        got = ar_loss(model, batch).loss
    torch.testing.assert_close(got, total / count, rtol=1e-4, atol=1e-5)


def test_document_causal_mask_is_causal_inside_samples_only():
    batch = packed([[3, 2]], T=5)
    got = dense_mask(document_causal_mask_mod(batch.segment_ids), 1, 5, 5, "cpu")[0, 0].int().tolist()
    assert got == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_gives_the_same_loss_as_the_dense_mask():
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = random_model(tiny_config("sdar", block_size=4)).requires_grad_(False)  # flex has no CPU backward
    batch = packed([[5, 11], [16]], T=16)
    noise = sample_noise(batch, 1e-3, torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = sdar_loss(model, batch, noise, block_size=4, mask_token_id=MASK_ID, attention="sdpa").loss
        flex = sdar_loss(model, batch, noise, block_size=4, mask_token_id=MASK_ID, attention="flex").loss
        ar_dense = ar_loss(model, batch, attention="sdpa").loss
        ar_flex = ar_loss(model, batch, attention="flex").loss
    torch.testing.assert_close(flex, dense, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ar_flex, ar_dense, rtol=1e-4, atol=1e-5)


def test_packed_batch_tensors_map_and_to_keep_the_field_order():
    batch = packed([[3, 4]], T=8)
    assert batch.tensors() == (batch.input_ids, batch.segment_ids, batch.positions, batch.loss_mask)
    half = batch.map(lambda t: t[:, :4])
    assert type(half) is PackedBatch and all(
        torch.equal(h, t[:, :4]) for h, t in zip(half.tensors(), batch.tensors())
    )
    moved = batch.to("cpu")
    assert type(moved) is PackedBatch and all(
        torch.equal(m, t) for m, t in zip(moved.tensors(), batch.tensors())
    )


def test_mask_kinds_follow_the_attention_argument():
    pytest.importorskip("torch.nn.attention.flex_attention")
    batch = packed([[5, 3], [8]], T=8)
    blocks = block_ids(batch.segment_ids, batch.positions, 4)
    dense = sdar_mask(batch.segment_ids, blocks, "sdpa")
    assert dense.dtype == torch.bool and dense.shape == (2, 1, 16, 16)
    assert torch.equal(dense[1, 0], hand_mask(batch.segment_ids[1], batch.positions[1], 4))
    causal = document_causal_mask(batch.segment_ids, "sdpa")
    assert causal.dtype == torch.bool and causal.shape == (2, 1, 8, 8)
    for flex in (
        sdar_mask(batch.segment_ids, blocks, "flex"),
        document_causal_mask(batch.segment_ids, "flex"),
    ):
        assert isinstance(flex, BlockMask) and flex.shape[0] == 2  # one mask per row, not one broadcast
    assert sdar_mask(batch.segment_ids, blocks, "flex").shape[-2:] == (16, 16)


def test_default_eps_samples_t_over_the_whole_interval():
    batch = packed([[1] * 16] * 4, T=16)  # 64 samples of one token: 64 draws of t
    t = sample_noise(batch, generator=torch.Generator().manual_seed(0)).t
    assert ((t > 1e-3) & (t <= 1)).all() and (t < 0.5).any() and (t > 0.5).any()


def test_noise_comes_from_the_generator_only_and_differs_between_rows():
    batch = packed([[32]] * 4, T=32)  # four rows with the same layout
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        draws.append(sample_noise(batch, 1e-3, torch.Generator().manual_seed(3)))
    assert torch.equal(draws[0].t, draws[1].t) and torch.equal(draws[0].masked, draws[1].masked)
    half = sample_noise(batch, 1e-3, torch.Generator().manual_seed(3), t=torch.tensor(0.5))
    assert len({tuple(row) for row in half.masked.tolist()}) == 4  # each row draws its own tokens
    forced = sample_noise(batch, 1e-3, torch.Generator().manual_seed(3), t=torch.tensor(1e-9)).masked
    assert len({tuple(row.nonzero().flatten().tolist()) for row in forced}) > 1  # drawn per row


@pytest.mark.parametrize("t", [0.05, 0.3])
def test_noise_equals_the_rule_replayed_in_python(t):
    """Eq. 4 with a given t, replayed from the same generator (draw order: u [B, T], then the keys [B, T]): a token
    is masked when eligible and u < t; a segment with eligible tokens but none masked gets its eligible token of
    largest key."""
    batch = packed([[3, 2, 4, 3], [5, 7]], T=12, prompt=1)
    noise = sample_noise(batch, 1e-3, torch.Generator().manual_seed(9), t=torch.tensor(t))
    g = torch.Generator().manual_seed(9)
    u, key = torch.rand(2, 12, generator=g).tolist(), torch.rand(2, 12, generator=g).tolist()
    eligible, seg = batch.loss_mask.tolist(), batch.segment_ids.tolist()
    want = [[eligible[b][i] and u[b][i] < t for i in range(12)] for b in range(2)]
    for b in range(2):
        for s in set(seg[b]):
            idx = [i for i in range(12) if seg[b][i] == s and eligible[b][i]]
            if idx and not any(want[b][i] for i in idx):
                want[b][max(idx, key=lambda i: key[b][i])] = True
    assert noise.masked.tolist() == want
    assert sample_noise(batch, t=torch.tensor(0.5, dtype=torch.float64)).t.dtype == torch.float32


def test_losses_and_counts_with_a_single_target():
    """One trainable token: the loss is that token's cross-entropy (/ t for SDAR), not divided by a floor of 2."""
    model = random_model(tiny_config("sdar", block_size=4))
    batch = packed([[4]], T=4, prompt=3)  # only position 3 is trainable
    noise = sample_noise(batch, 1e-3, torch.Generator().manual_seed(0), t=torch.tensor(0.5))
    assert noise.masked.tolist() == [[False, False, False, True]]
    with torch.no_grad():
        out = sdar_loss(model, batch, noise, block_size=4, mask_token_id=MASK_ID)
        want = brute_force_sdar_loss(model, batch, noise, 4)
        ar_model = random_model(tiny_config("qwen3"))
        ar = ar_loss(ar_model, batch)
        ar_logits = ar_model(batch.input_ids)[0, 2]
    torch.testing.assert_close(out.loss, want, rtol=1e-4, atol=1e-5)
    assert int(out.n_targets) == 1 and int(out.n_masked) == 1
    torch.testing.assert_close(
        ar.loss, F.cross_entropy(ar_logits.float(), batch.input_ids[0, 3]), rtol=1e-4, atol=1e-5
    )
    assert int(ar.n_targets) == int(ar.n_masked) == 1
