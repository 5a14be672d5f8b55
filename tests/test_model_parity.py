"""sdar_core's network against transformers' own Qwen3 / Qwen3-MoE, the reference for weights and numerics.

Each test writes a tiny random transformers model with its `save_pretrained`, loads the folder with
`sdar_core.load_pretrained`, and compares logits to float32 rounding (relative error ||a-b|| / ||b||).
Block-causal attention is checked against transformers called with a 4-D mask built by hand with loops;
transformers' masking_utils returns a 4-D `attention_mask` as is ("already prepared, or custom"), its eager
attention adds it to the scores (so it must be an additive float mask) and its sdpa attention passes it to
torch's SDPA (a boolean mask, True = attend, works).
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from sdar_core import load_pretrained
from sdar_core.kv_cache import KVCache

from helpers import hand_block_causal, rel_err

TOL = 1e-5
SHAPES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    max_position_embeddings=256,
)


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights large enough that logits are far from uniform, every parameter touched: norms near 1 but not 1,
    and the MoE router (transformers 5 may leave it at zeros) random, so that routing is not a tie."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.8, 1.2, generator=g))
            elif "embed" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("mlp.gate.weight"):  # the router: spread its logits so top-k is decisive
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
    return model.eval()


def hf_dense(tie: bool, seed: int = 0, attn: str = "sdpa") -> Qwen3ForCausalLM:
    config = Qwen3Config(**SHAPES, tie_word_embeddings=tie, attn_implementation=attn)
    torch.manual_seed(seed)
    return randomize_(Qwen3ForCausalLM(config), seed)


def hf_moe(norm_topk_prob: bool, mlp_only_layers: list[int], decoder_sparse_step: int, seed: int = 0):
    config = Qwen3MoeConfig(
        **SHAPES,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=norm_topk_prob,
        mlp_only_layers=mlp_only_layers,
        decoder_sparse_step=decoder_sparse_step,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return randomize_(Qwen3MoeForCausalLM(config), seed)


def roundtrip(hf_model, folder):
    """Save with transformers, load with sdar_core (float32 on CPU)."""
    hf_model.save_pretrained(folder)
    model, _ = load_pretrained(folder, device="cpu", dtype=torch.float32, with_tokenizer=False)
    return model


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, SHAPES["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed)
    )


# --- autoregressive parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_dense_qwen3_logits_equal_transformers_to_float32_rounding(tmp_path, tie):
    hf = hf_dense(tie)
    model = roundtrip(hf, tmp_path)
    assert model.config.model_type == "qwen3" and model.config.block_size == 1
    assert model.config.tie_word_embeddings is tie
    if tie:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = random_ids(2, 13)
    with torch.no_grad():
        ours, ref = model(ids), hf(ids).logits
    assert ours.shape == ref.shape == (2, 13, SHAPES["vocab_size"])
    assert rel_err(ours, ref) < TOL


@pytest.mark.parametrize(
    "norm_topk_prob, mlp_only_layers, decoder_sparse_step",
    [(True, [], 1), (False, [], 1), (True, [1], 1), (False, [], 2)],
    ids=["normtopk", "no-normtopk", "mlp-only-layer-1", "sparse-step-2"],
)
def test_moe_qwen3_logits_equal_transformers_to_float32_rounding(
    tmp_path, norm_topk_prob, mlp_only_layers, decoder_sparse_step
):
    hf = hf_moe(norm_topk_prob, mlp_only_layers, decoder_sparse_step)
    model = roundtrip(hf, tmp_path)
    config = model.config
    assert config.is_moe and config.norm_topk_prob is norm_topk_prob
    sparse = [config.layer_is_sparse(i) for i in range(config.num_hidden_layers)]
    # transformers' own choice of block per layer is the independent reference for layer_is_sparse
    hf_sparse = [type(layer.mlp).__name__ == "Qwen3MoeSparseMoeBlock" for layer in hf.model.layers]
    assert sparse == hf_sparse and any(sparse)
    ids = random_ids(2, 13)
    with torch.no_grad():
        ours, ref = model(ids), hf(ids).logits
    assert rel_err(ours, ref) < TOL


def test_moe_routing_is_nontrivial_so_parity_covers_expert_choice(tmp_path):
    """Guard for the MoE parity test: tokens go to different experts (a zero router would tie them all)."""
    hf = hf_moe(True, [], 1)
    x = torch.randn(32, SHAPES["hidden_size"], generator=torch.Generator().manual_seed(0))
    _, _, chosen = hf.model.layers[0].mlp.gate(x)
    assert len(chosen.unique()) >= 4


# --- block-causal attention ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_pair(tmp_path_factory):
    """(transformers model with eager attention, the same model with sdpa, sdar_core's load of it)."""
    folder = tmp_path_factory.mktemp("dense")
    hf_sdpa = hf_dense(tie=False, seed=3, attn="sdpa")
    model = roundtrip(hf_sdpa, folder)
    hf_eager = Qwen3ForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    ).eval()
    return hf_eager, hf_sdpa, model


@pytest.mark.parametrize("block_size", [1, 2, 4, 8])
@pytest.mark.parametrize("length", [8, 11, 13])
def test_block_causal_logits_equal_transformers_with_hand_built_4d_mask(dense_pair, block_size, length):
    hf_eager, hf_sdpa, model = dense_pair
    ids = random_ids(2, length, seed=length)
    allowed = hand_block_causal(length, block_size)[None, None].expand(2, 1, length, length)  # [B, 1, Q, K]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    model.config.block_size = block_size
    try:
        with torch.no_grad():
            ours = model(ids)
            ref_eager = hf_eager(ids, attention_mask=additive).logits
            ref_sdpa = hf_sdpa(ids, attention_mask=allowed).logits
            plain_causal = hf_sdpa(ids).logits
    finally:
        model.config.block_size = 1
    assert rel_err(ours, ref_eager) < TOL
    assert rel_err(ours, ref_sdpa) < TOL
    # The mask matters: with blocks larger than one token, block-causal is not causal.
    if block_size > 1:
        assert rel_err(ours, plain_causal) > 1e-2
    else:
        assert rel_err(ours, plain_causal) < TOL


def test_block_size_argument_overrides_config_block_size(dense_pair):
    hf_eager, _, model = dense_pair
    ids = random_ids(1, 11, seed=5)
    allowed = hand_block_causal(11, 4)[None, None]
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        assert rel_err(model(ids, block_size=4), hf_eager(ids, attention_mask=additive).logits) < TOL


# --- KV cache ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block_size, chunks", [(4, [4, 4, 4, 4]), (4, [8, 4, 4]), (2, [2, 6, 4, 4]), (1, [1, 1, 1, 5, 1])]
)
def test_cached_chunk_logits_equal_full_forward_on_those_positions(dense_pair, block_size, chunks):
    """Whole blocks fed one chunk at a time through the KV cache give the full forward's logits."""
    _, _, model = dense_pair
    length = sum(chunks)
    ids = random_ids(2, length, seed=7)
    model.config.block_size = block_size
    try:
        with torch.no_grad():
            full = model(ids)
            cache = KVCache.allocate(
                model.config,
                2,
                length + 4,
                dtype=torch.float32,
                devices=[torch.device("cpu")] * model.config.num_hidden_layers,
            )
            start = 0
            for n in chunks:
                chunk_logits = model(ids[:, start : start + n], cache=cache.chunk(start, n))
                assert rel_err(chunk_logits, full[:, start : start + n]) < TOL, (start, n)
                cache.commit(n)
                start += n
    finally:
        model.config.block_size = 1
    assert cache.length == length


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_the_inference_embedding_read_is_the_embedding_modules():
    """SDARForCausalLM.embed's indexing read (inference on CUDA) gives the rows nn.Embedding gives, for a block of
    ids with repeats, and training (a gradient wanted) still goes through the module."""
    from helpers import random_model, tiny_config

    model = random_model(tiny_config("sdar", block_size=4)).cuda().to(torch.bfloat16)
    ids = torch.tensor([[5, 9, 5, 0], [1, 2, 3, 4]], device="cuda")
    with torch.no_grad():
        assert torch.equal(model.embed(ids), model.model.embed_tokens(ids))
    out = model.embed(ids)
    assert out.requires_grad and out.grad_fn.name() == "EmbeddingBackward0"
