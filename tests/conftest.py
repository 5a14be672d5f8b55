"""Shared fixtures: tiny random models in the real checkpoint format, built by the tests themselves."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from sdar_core.config import ModelConfig
from sdar_core.loading import load_pretrained
from sdar_core.model import SDARForCausalLM

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent


def tiny_config(model_type: str = "sdar", *, block_size: int = 4, vocab_size: int = 96, layers: int = 2,
                mask_token_id: int | None = None, **overrides) -> ModelConfig:
    """A shrunk Qwen3/SDAR config: 2 layers, GQA 4/2 heads of 16, vocab 96 (the last id is the mask)."""
    fields = dict(
        model_type=model_type, vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rope_theta=10000.0, max_position_embeddings=512, block_size=1 if model_type.startswith("qwen3") else block_size,
        mask_token_id=(vocab_size - 1 if mask_token_id is None else mask_token_id) if model_type.startswith("sdar") else None,
        eos_token_id=1,
    )
    if "moe" in model_type:
        fields.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)
    fields.update(overrides)
    return ModelConfig(**fields)


def random_model(config: ModelConfig, seed: int = 0, std: float = 0.5, proj_std: float = 0.2) -> SDARForCausalLM:
    """A model with random weights large enough that logits are far from uniform (clear argmax) and
    that its greedy outputs vary from position to position (confidences spread over (0, 1))."""
    torch.manual_seed(seed)
    model = SDARForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, std if "embed" in name or "lm_head" in name else proj_std)
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def hand_block_causal(length: int, block_size: int) -> torch.Tensor:
    """[length, length]: query i sees key j iff j's block <= i's block (built with loops, independent of sdar_core)."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            allowed[i, j] = (j // block_size) <= (i // block_size)
    return allowed


def free_port() -> int:
    """A free local TCP port for a test server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_of(message: dict) -> str:
    """The text parts of a Gradio chatbot message (messages format)."""
    return "".join(part["text"] for part in message["content"] if part.get("type") == "text")


@pytest.fixture(scope="session")
def embedded_models():
    """The shipped sdar-tiny and ar-tiny, loaded once on CPU in float32: {name: (model, tokenizer)}."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    return {name: load_pretrained(REPO / "assets" / "models" / name, device="cpu", dtype=torch.float32)
            for name in ("sdar-tiny", "ar-tiny")}
