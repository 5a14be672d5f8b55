"""Attention backends against the textbook reference, and the block-causal mask against a loop-built one.

`eager_attention` is softmax(q k^T / sqrt(D) + mask) v written out in float32; every backend that
runs on the device must agree with it on random inputs with grouped-query heads.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sdar_core import attention as attention_module
from sdar_core.attention import (
    AttentionInputs,
    attend,
    attention,
    block_causal_attention,
    block_causal_mask,
    block_causal_runs,
    chunk_mask,
    eager_attention,
    flex_block_mask,
)
from sdar_core.kernels import Kernels

from helpers import interpreter_reason, random_model, rel_err, run_interpreted, tiny_config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The backends that run here: flex_attention and flash-attn (when installed) on CUDA only.
BACKENDS = ["sdpa", "eager"] + (
    ["flex"] + (["flash"] if attention_module._flash_attn_func is not None else [])
    if DEVICE == "cuda"
    else []
)
B, H, H_KV, D = 2, 4, 2, 16


def qkv(q_len: int, k_len: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, q_len, D, generator=g)
    k = torch.randn(B, H_KV, k_len, D, generator=g)
    v = torch.randn(B, H_KV, k_len, D, generator=g)
    return (t.to(DEVICE, dtype) for t in (q, k, v))


def hand_mask(
    q_index: list[int], k_len: int, block_size: int, k_start: list[int] | None = None
) -> torch.Tensor:
    """[B, 1, Q, K] with loops: key j visible to query i iff j // bs <= i // bs and j >= k_start[b];
    a padding query (i < k_start[b]) also sees itself, so that its softmax has a key."""
    starts = k_start if k_start is not None else [0] * B
    out = torch.zeros(len(starts), 1, len(q_index), k_len, dtype=torch.bool)
    for b, start in enumerate(starts):
        for qi, i in enumerate(q_index):
            for j in range(k_len):
                visible = j // block_size <= i // block_size and j >= start
                out[b, 0, qi, j] = visible or (k_start is not None and j == i)
    return out


def textbook(q, k, v, allowed: torch.Tensor | None) -> torch.Tensor:
    """An independent reference for `eager_attention` itself: loops over heads, explicit exp / sum."""
    out = torch.empty_like(q, dtype=torch.float64)
    groups = q.shape[1] // k.shape[1]
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            s = q[b, h].double() @ k[b, h // groups].double().T / math.sqrt(q.shape[-1])  # [Q, K]
            if allowed is not None:
                s = s.masked_fill(~allowed[b, 0], float("-inf"))
            p = (s - s.max(-1, keepdim=True).values).exp()
            out[b, h] = (p / p.sum(-1, keepdim=True)) @ v[b, h // groups].double()
    return out


# --- the mask ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("length", [8, 13])
def test_block_causal_mask_equals_loop_built_mask(block_size, length):
    mask = block_causal_mask(torch.arange(length), length, block_size)
    assert mask.dtype == torch.bool and mask.shape == (1, 1, length, length)
    assert torch.equal(mask[0], hand_mask(list(range(length)), length, block_size)[0])


@pytest.mark.parametrize("block_size", [1, 4])
def test_block_causal_mask_for_a_chunk_at_the_end_of_the_cache_uses_key_space_indices(block_size):
    q_index = list(range(8, 14))  # a chunk written at cache positions 8..13
    mask = block_causal_mask(torch.tensor(q_index), 14, block_size)
    assert torch.equal(mask[0], hand_mask(q_index, 14, block_size)[0])


def test_block_causal_mask_hides_left_padding_and_lets_padding_queries_see_themselves():
    k_start = [0, 5]
    mask = block_causal_mask(torch.arange(12), 12, 4, k_start=torch.tensor(k_start))
    assert torch.equal(mask, hand_mask(list(range(12)), 12, 4, k_start))
    assert not mask[1, 0, 5:, :5].any()  # no real token of row 1 sees its padding
    assert mask.any(-1).all()  # every query sees at least one key


@pytest.mark.parametrize(
    "start,q_len,k_len,block_size",
    [
        (0, 8, 8, 4),
        (0, 4, 4, 4),
        (4, 4, 8, 4),
        (4, 8, 12, 4),
        (6, 2, 8, 4),
        (0, 5, 5, 1),
        (3, 1, 4, 1),
        (8, 4, 16, 4),
        (2, 3, 5, 8),
    ],
)
def test_chunk_mask_is_the_loop_built_mask_or_none_only_when_nothing_is_hidden(
    start, q_len, k_len, block_size
):
    """Whatever chunk_mask returns (a mask, no mask, or causal) allows exactly the loop-built key set."""
    q_index = list(range(start, start + q_len))
    expected = hand_mask(q_index, k_len, block_size)[0, 0]  # [Q, K]
    mask, is_causal = chunk_mask(start, q_len, k_len, block_size)
    if mask is not None:
        assert not is_causal and torch.equal(mask[0, 0], expected)
    elif is_causal:  # bottom-right aligned causal, as attention() applies it
        assert torch.equal(torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len), expected)
    else:
        assert expected.all()


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_chunk_mask_returns_no_mask_exactly_for_a_whole_block_or_a_whole_causal_sequence(block_size):
    """The fast forms are part of the contract: (None, False) for a block-aligned chunk of at most one block that
    ends the keys, (None, True) for a whole sequence with block size 1, a tensor otherwise (all from 0..12)."""
    for start in range(12):
        for q_len in range(1, 12 - start + 1):
            for k_len in range(start + q_len, 13):
                ends_keys = k_len == start + q_len
                whole_block = ends_keys and start % block_size == 0 and q_len <= block_size
                causal = ends_keys and not whole_block and block_size == 1 and start == 0
                mask, is_causal = chunk_mask(start, q_len, k_len, block_size)
                assert (mask is None, is_causal) == (whole_block or causal, causal), (start, q_len, k_len)
                if mask is not None:
                    assert torch.equal(
                        mask[0], hand_mask(list(range(start, start + q_len)), k_len, block_size)[0]
                    )


def test_chunk_mask_with_padding_is_always_a_tensor():
    k_start = torch.tensor([0, 4])
    mask, is_causal = chunk_mask(4, 4, 8, 4, k_start=k_start)
    assert not is_causal
    assert torch.equal(mask, hand_mask([4, 5, 6, 7], 8, 4, [0, 4]))


# --- the prefill's block-causal attention without a mask ---------------------------------------------------


@pytest.mark.parametrize(("length", "block_size"), [(12, 4), (13, 4), (9, 2), (7, 16), (33, 8), (5, 1)])
def test_block_causal_attention_is_the_textbook_under_the_loop_built_mask(length, block_size):
    """The causal pass and each block's later keys, merged by their log-sum-exps, are softmax under the block-causal
    mask: whole and partial last blocks, a chunk shorter than a block, blocks of one (causal alone)."""
    q, k, v = qkv(length, length, seed=length + block_size)
    expected = textbook(q, k, v, hand_mask(list(range(length)), length, block_size))
    assert rel_err(block_causal_attention(q, k, v, block_size), expected) < 1e-5


# (length, block size): several whole blocks to a tile (4, 8, 16), a tile of one block (32, 64), partial last blocks,
# a block length that divides no power of two (3: one block to a tile, 13 of 16 rows idle), a chunk shorter than a
# block, blocks of one (no later key: the causal pass alone), several tiles.
IN_BLOCK_CASES = [(12, 4), (13, 4), (37, 8), (7, 16), (70, 32), (140, 64), (40, 3), (5, 1), (50, 16)]

IN_BLOCK_INTERPRETED = """
import json, torch
from sdar_core.attention import causal_with_lse
from sdar_core.in_block import in_block_merge
from test_attention import IN_BLOCK_CASES, hand_mask, in_block_inputs, textbook
errors = []
for length, block_size in IN_BLOCK_CASES:
    q, k, v = in_block_inputs(length, seed=length + block_size)
    causal, lse = causal_with_lse(q, k, v)
    out = in_block_merge(q, k, v, causal, lse, block_size)
    assert out.transpose(1, 2).is_contiguous(), out.stride()  # laid out [B, T, H, D]: o_proj's input is a view
    expected = textbook(q, k, v, hand_mask(list(range(length)), length, block_size))
    errors.append(float((out.double() - expected).norm() / expected.norm()))
print(json.dumps(errors))
"""


def in_block_inputs(length: int, seed: int, device: str = "cpu", dtype=torch.float32):
    """q [B, H, T, D] as the model hands it over (a transposed view of [B, T, H, D]), k, v [B, H_kv, T, D]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, length, H, D, generator=g).transpose(1, 2)
    k, v = (torch.randn(B, H_KV, length, D, generator=g) for _ in range(2))
    return (t.to(device, dtype) for t in (q, k, v))


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_in_block_kernel_under_the_interpreter_is_the_textbook_under_the_loop_built_mask():
    """in_block.py's kernel on CPU tensors (Triton's interpreter), given the causal pass and its log-sum-exps: the
    block-causal attention of every case of IN_BLOCK_CASES, grouped-query heads read without a repeat."""
    errors = json.loads(run_interpreted(IN_BLOCK_INTERPRETED))
    assert len(errors) == len(IN_BLOCK_CASES) and max(errors) < 1e-5, errors


def test_the_in_block_tiles_hold_whole_blocks():
    from sdar_core.in_block import tile_rows

    assert [tile_rows(L) for L in (2, 4, 8, 16, 32, 64)] == [(16, 16)] * 4 + [(32, 32), (64, 64)]
    assert tile_rows(3) == (3, 16) and tile_rows(24) == (24, 32)


def test_the_in_block_kernel_switch_changes_nothing_where_the_kernel_cannot_run():
    """On the CPU (no kernel), Kernels(in_block_kernel=True), the default, is the torch ops' form."""
    assert Kernels().in_block_kernel is True
    q, k, v = in_block_inputs(13, seed=1)
    expected = textbook(q, k, v, hand_mask(list(range(13)), 13, 4))
    assert rel_err(block_causal_attention(q, k, v, 4, kernel=True), expected) < 1e-5


def test_a_cuda_prefill_chunk_of_whole_blocks_from_key_0_builds_no_mask():
    """Only a chunk from key 0 that ends the keys, unpadded, longer than a block with blocks longer than one, on
    CUDA, takes the mask-free form; the rest keep chunk_mask's (no CUDA needed: nothing is allocated for it)."""
    assert AttentionInputs.chunk(0, 12, 12, 4, device="cuda") == AttentionInputs(blocks=4)
    for args, kw in [
        ((0, 12, 12, 4), dict(device="cpu")),
        ((4, 8, 12, 4), dict(device="cpu")),
        ((0, 4, 4, 4), dict(device="cpu")),
        ((0, 12, 12, 1), dict(device="cpu")),
    ]:
        inputs = AttentionInputs.chunk(*args, **kw)
        assert inputs.blocks == 0
    assert (
        AttentionInputs.chunk(0, 4, 4, 4, device="cuda") == AttentionInputs()
    )  # one block: every key visible
    assert AttentionInputs.chunk(0, 12, 12, 1, device="cuda") == AttentionInputs(is_causal=True)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_attend_with_a_block_length_alone_equals_the_masked_attention(backend):
    """Where the flash kernel cannot run (here: the CPU, float32), `attend` builds the mask from the block length."""
    q, k, v = qkv(10, 10, seed=3)
    assert not block_causal_runs(q, k, v) or DEVICE == "cuda"
    got = attend(q, k, v, AttentionInputs(blocks=4), Kernels(attention_backend=backend))
    assert rel_err(got, textbook(q, k, v, hand_mask(list(range(10)), 10, 4))) < 1e-5


# --- the backends --------------------------------------------------------------------------------------


def test_eager_attention_equals_per_head_textbook_computation():
    q, k, v = qkv(7, 7)
    allowed = hand_mask(list(range(7)), 7, 2).to(DEVICE)
    assert rel_err(eager_attention(q, k, v, allowed), textbook(q, k, v, allowed)) < 1e-6
    assert rel_err(eager_attention(q, k, v, None), textbook(q, k, v, None)) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_size", [1, 4])
def test_backend_agrees_with_textbook_under_block_causal_mask(backend, block_size):
    q, k, v = qkv(11, 11, seed=block_size)
    mask = block_causal_mask(torch.arange(11, device=DEVICE), 11, block_size)
    out = attention(q, k, v, mask, backend=backend)
    assert out.shape == (B, H, 11, D)
    assert rel_err(out, textbook(q, k, v, hand_mask(list(range(11)), 11, block_size).to(DEVICE))) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_agrees_with_textbook_without_mask(backend):
    q, k, v = qkv(5, 9)  # a block attending to every cached key and itself
    out = attention(q, k, v, None, backend=backend)
    assert rel_err(out, textbook(q, k, v, None)) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q_len, k_len", [(9, 9), (3, 9)], ids=["prefill", "chunk-after-cache"])
def test_backend_is_causal_equals_bottom_right_causal_mask(backend, q_len, k_len):
    """is_causal: query i of a chunk at the end of the keys sees keys <= k_len - q_len + i."""
    q, k, v = qkv(q_len, k_len, seed=2)
    q_index = list(range(k_len - q_len, k_len))
    out = attention(q, k, v, None, is_causal=True, backend=backend)
    assert rel_err(out, textbook(q, k, v, hand_mask(q_index, k_len, 1))) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_agrees_with_textbook_with_left_padding(backend):
    q, k, v = qkv(12, 12, seed=3)
    mask = block_causal_mask(
        torch.arange(12, device=DEVICE), 12, 4, k_start=torch.tensor([0, 5], device=DEVICE)
    )
    out = attention(q, k, v, mask, backend=backend)
    assert rel_err(out, textbook(q, k, v, hand_mask(list(range(12)), 12, 4, [0, 5]).to(DEVICE))) < 1e-5
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_agrees_with_textbook_in_bfloat16_to_bfloat16_rounding(backend):
    q, k, v = qkv(11, 11, seed=4, dtype=torch.bfloat16)
    mask = block_causal_mask(torch.arange(11, device=DEVICE), 11, 4)
    out = attention(q, k, v, mask, backend=backend)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, textbook(q, k, v, hand_mask(list(range(11)), 11, 4).to(DEVICE))) < 2e-2


def test_eager_backend_is_eager_attention_itself():
    q, k, v = qkv(6, 9, seed=5)
    mask = block_causal_mask(torch.arange(3, 9, device=DEVICE), 9, 2)
    assert torch.equal(attention(q, k, v, mask, backend="eager"), eager_attention(q, k, v, mask))


def test_additive_mask_equals_boolean_mask():
    q, k, v = qkv(7, 7, seed=6)
    allowed = hand_mask(list(range(7)), 7, 2).to(DEVICE)
    additive = torch.zeros(allowed.shape, device=DEVICE).masked_fill(~allowed, float("-inf"))
    assert rel_err(eager_attention(q, k, v, additive), textbook(q, k, v, allowed)) < 1e-6


def test_grouped_heads_when_a_length_equals_a_head_count():
    """q_len == H_kv and k_len == H: the grouping must be read from the head dimension, not from a length."""
    q, k, v = qkv(H_KV, H, seed=7)
    for backend in BACKENDS:
        assert rel_err(attention(q, k, v, None, backend=backend), textbook(q, k, v, None)) < 1e-5


@pytest.mark.parametrize(
    "backend", ["flex", "sdpa"]
)  # a BlockMask goes to flex_attention whatever the backend
def test_flex_attention_with_a_block_mask_agrees_with_textbook(backend):
    q, k, v = qkv(8, 8, seed=8)
    block_mask = flex_block_mask(lambda b, h, qi, ki: ki // 4 <= qi // 4, B, 8, 8, DEVICE)
    assert block_mask.shape == (B, 1, 8, 8)
    out = attention(q, k, v, block_mask, backend=backend)
    assert rel_err(out, textbook(q, k, v, hand_mask(list(range(8)), 8, 4).to(DEVICE))) < 1e-5


# --- the whole model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type, block_size", [("sdar", 4), ("qwen3", 1), ("sdar_moe", 2)])
def test_whole_model_eager_backend_equals_sdpa_backend(model_type, block_size):
    model = random_model(tiny_config(model_type, block_size=block_size))
    ids = torch.randint(0, 95, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(ids, kernels=Kernels(attention_backend="eager"))
        sdpa = model(ids, kernels=Kernels(attention_backend="sdpa"))
    assert rel_err(sdpa, eager) < 1e-5


def test_flex_reads_the_grouping_from_the_head_dimension_when_lengths_equal_head_counts():
    """q_len == H_kv and k_len == H on the flex path (a BlockMask): enable_gqa must come from the head counts."""
    q, k, v = qkv(H_KV, H, seed=9)
    block_mask = flex_block_mask(lambda b, h, qi, ki: ki >= 0, B, H_KV, H, DEVICE)
    assert rel_err(attention(q, k, v, block_mask, backend="flex"), textbook(q, k, v, None)) < 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("q_len", [5, 13, 200])
def test_cuda_a_prefill_of_any_length_runs_no_cudnn_kernel(q_len):
    """cuDNN's SDPA builds a plan per new sequence length on its first call (up to a second): a prefill of each new
    prompt length would pay it. The masked prefill attention runs on the other kernels, as exact as before."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(q_len)
    q = torch.randn(1, 16, q_len, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, q_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = block_causal_mask(torch.arange(q_len, device="cuda"), q_len, 4)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = attention(q, k, v, mask)
        torch.cuda.synchronize()
    names = [e.name.lower() for e in prof.events() if e.device_type.name == "CUDA"]
    assert names and not [n for n in names if "cudnn" in n], names
    assert rel_err(out.float().cpu(), eager_attention(q, k, v, mask).float().cpu()) < 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("length", "block_size"), [(1000, 16), (517, 4), (64, 16)])
def test_cuda_block_causal_attention_takes_flash_and_matches_the_masked_attention(length, block_size):
    """SDAR-1.7B's heads in bf16: the mask-free form runs flash's causal kernel (no memory-efficient kernel, no
    mask) and is within bf16 rounding of float32 softmax under the mask."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(length)
    q = torch.randn(1, 16, length, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    assert block_causal_runs(q, k, v)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = attend(q, k, v, AttentionInputs.chunk(0, length, length, block_size, device="cuda"))
        torch.cuda.synchronize()
    names = [e.name.lower() for e in prof.events() if e.device_type.name == "CUDA"]
    assert [n for n in names if "flash" in n] and not [n for n in names if "fmha" in n or "efficient" in n], (
        names
    )
    mask = block_causal_mask(torch.arange(length, device="cuda"), length, block_size)
    reference = eager_attention(q.float(), k.float(), v.float(), mask)
    assert rel_err(out.float(), reference) < 1e-2
    masked = attention(q, k, v, mask)  # the memory-efficient kernel under the mask, as before
    assert rel_err(out.float(), reference) <= 1.5 * rel_err(masked.float(), reference) + 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("length", "block_size"), [(1000, 16), (517, 4), (300, 32), (600, 64), (100, 3)])
def test_cuda_the_in_block_kernel_is_the_torch_form_within_bf16_rounding(length, block_size):
    """SDAR-1.7B's heads in bf16: Kernels.in_block_kernel's form (flash's causal pass, then in_block.py's one kernel)
    within bf16 rounding of float32 softmax under the mask, as close as the torch ops' form, with the in-block
    kernel launched once, no float32 copy of q, k or v and no repeat of k and v."""
    from torch.profiler import ProfilerActivity, profile

    from sdar_core.in_block import in_block_runs

    torch.manual_seed(length)
    q = torch.randn(1, length, 16, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(1, 8, length, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    assert in_block_runs(q, k, v, block_size)
    block_causal_attention(q, k, v, block_size, kernel=True)  # compile outside the profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = block_causal_attention(q, k, v, block_size, kernel=True)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    assert len([n for n in names if "_in_block_kernel" in n]) == 1, names
    # k and v reach flash and the kernel with their 8 heads as they are: no repeat over the 16 query heads
    assert not [n for n in names if "index" in n.lower() or "elementwise" in n.lower()], names
    assert out.transpose(1, 2).is_contiguous()
    mask = block_causal_mask(torch.arange(length, device="cuda"), length, block_size)
    reference = eager_attention(q.float(), k.float(), v.float(), mask)
    torch_form = block_causal_attention(q, k, v, block_size)
    assert rel_err(out.float(), reference) < 1e-2
    assert rel_err(out.float(), reference) <= 1.5 * rel_err(torch_form.float(), reference) + 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_an_sdar_forward_with_the_in_block_kernel_equals_the_eager_backend():
    """A bf16 SDAR model (heads of 16) whose every layer takes the in-block kernel: its logits are the eager
    backend's (the mask built, float32 softmax) within bf16 rounding."""
    calls = []
    original = attention_module.in_block_merge
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(attention_module, "in_block_merge", lambda *a: calls.append(a[-1]) or original(*a))
    try:
        model = random_model(tiny_config("sdar", block_size=4, layers=2)).to("cuda", torch.bfloat16)
        ids = torch.randint(0, 95, (2, 13), generator=torch.Generator().manual_seed(0)).cuda()
        with torch.no_grad():
            eager = model(ids, kernels=Kernels(attention_backend="eager"))
            fused = model(ids, kernels=Kernels(in_block_kernel=True))
    finally:
        monkeypatch.undo()
    assert calls == [4, 4]
    assert rel_err(fused.float(), eager.float()) < 2e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sdar_forward_of_several_blocks_takes_the_mask_free_form_and_equals_the_eager_backend(
    monkeypatch,
):
    """A bf16 SDAR model's whole-prompt forward on CUDA: every layer takes block_causal_attention, and the logits
    are the eager backend's (the mask built, float32 softmax) within bf16 rounding."""
    calls = []
    original = attention_module.block_causal_attention
    monkeypatch.setattr(
        attention_module, "block_causal_attention", lambda *a: calls.append(a[3]) or original(*a)
    )
    config = tiny_config("sdar", block_size=4, layers=2)
    model = random_model(config).to("cuda", torch.bfloat16)
    ids = torch.randint(0, 95, (2, 13), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        eager = model(ids, kernels=Kernels(attention_backend="eager"))
        assert calls == []
        sdpa = model(ids)
    assert calls == [4, 4]
    assert rel_err(sdpa.float(), eager.float()) < 2e-2
