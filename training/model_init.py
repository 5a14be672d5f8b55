"""The model and tokenizer a recipe starts from: a fresh Qwen3-shaped model, or a checkpoint converted to the mode.

SDAR conversion (paper §3, stage ii) changes no weight: the config becomes model_type "sdar" with the recipe's
block_size and the tokenizer's mask token (`<|MASK|>`, added -- and the embeddings grown -- when missing).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from sdar_core.config import ModelConfig
from sdar_core.loading import load_pretrained, load_tokenizer
from sdar_core.model import SDARForCausalLM
from sdar_core.prompting import STOP_TOKENS

from .byte_tokenizer import byte_tokenizer
from .recipe import BUILTIN_PREFIX, Recipe, RecipeError

VOCAB_MULTIPLE = (
    64  # embedding rows are padded to a multiple of this (faster matmuls; unused ids never appear)
)


def load_recipe_tokenizer(recipe: Recipe):
    """The recipe's tokenizer: `tokenizer` (a folder or builtin:bytes), else the init_from checkpoint's."""
    name = recipe.tokenizer or recipe.init_from
    if name == f"{BUILTIN_PREFIX}bytes":
        return byte_tokenizer()
    if name.startswith(BUILTIN_PREFIX):
        raise RecipeError(f"unknown built-in tokenizer {name!r}; the only one is builtin:bytes")
    return load_tokenizer(Path(name))


def ensure_mask_token(tokenizer, mask_token: str) -> int:
    """The id of the tokenizer's mask token; `mask_token` is added as a special token and declared the tokenizer's
    mask token when the tokenizer has none."""
    if tokenizer.mask_token is None or tokenizer.mask_token != mask_token:
        if mask_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [mask_token]})
        tokenizer.mask_token = mask_token
    return tokenizer.convert_tokens_to_ids(mask_token)


def _round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple


def _eos_ids(tokenizer) -> list[int]:
    ids = []
    for tok in (*STOP_TOKENS, tokenizer.eos_token):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok else None
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


def scratch_config(recipe: Recipe, tokenizer) -> ModelConfig:
    spec = recipe.model
    vocab = spec.vocab_size or _round_up(len(tokenizer), VOCAB_MULTIPLE)
    if vocab < len(tokenizer):
        raise RecipeError(f"model.vocab_size {vocab} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    eos = _eos_ids(tokenizer)
    return ModelConfig(
        model_type="sdar" if recipe.is_sdar else "qwen3",
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        rms_norm_eps=spec.rms_norm_eps,
        rope_theta=spec.rope_theta,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        block_size=recipe.block_size if recipe.is_sdar else 1,
        bos_token_id=None,
        eos_token_id=eos if len(eos) > 1 else (eos[0] if eos else None),
        pad_token_id=tokenizer.pad_token_id,
    )


def init_weights(model: SDARForCausalLM, std: float, generator: torch.Generator | None = None) -> None:
    """Normal(0, std) for matrices, with the residual output projections scaled by 1/sqrt(2 * layers) (GPT-2).
    `generator` (on the model's device) draws the values; torch's global one when None."""
    residual_std = std / math.sqrt(2 * model.config.num_hidden_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(
                    0.0,
                    residual_std
                    if name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj"))
                    else std,
                    generator=generator,
                )


def resize_vocab(model: SDARForCausalLM, new_size: int) -> None:
    """Grow the embeddings (and an untied lm_head) to new_size rows; new rows are the mean of the old ones."""
    old = model.config.vocab_size
    if new_size <= old:
        return
    emb = model.model.embed_tokens.weight.data
    new_emb = torch.cat([emb, emb.mean(0, keepdim=True).expand(new_size - old, -1)])
    model.model.embed_tokens = nn.Embedding(new_size, emb.shape[1], device=emb.device, dtype=emb.dtype)
    model.model.embed_tokens.weight.data.copy_(new_emb)
    if model.config.tie_word_embeddings:
        model.lm_head = nn.Linear(emb.shape[1], new_size, bias=False, device=emb.device, dtype=emb.dtype)
        model.lm_head.weight = model.model.embed_tokens.weight
    else:
        head = model.lm_head.weight.data
        model.lm_head = nn.Linear(emb.shape[1], new_size, bias=False, device=emb.device, dtype=emb.dtype)
        model.lm_head.weight.data.copy_(
            torch.cat([head, head.mean(0, keepdim=True).expand(new_size - old, -1)])
        )
    model.config.vocab_size = new_size


def init_model(recipe: Recipe, tokenizer, mask_token_id: int | None) -> SDARForCausalLM:
    """A float32 CPU model configured for the recipe's mode (sdar: block_size, mask_token_id; ar: block_size 1)."""
    if recipe.model is not None:
        torch.manual_seed(recipe.seed)
        model = SDARForCausalLM(scratch_config(recipe, tokenizer))
        init_weights(model, recipe.model.init_std)
    else:
        model, _ = load_pretrained(recipe.init_from, device="cpu", dtype=torch.float32, with_tokenizer=False)
        model.train()
        if len(tokenizer) > model.config.vocab_size:
            resize_vocab(model, _round_up(len(tokenizer), VOCAB_MULTIPLE))
    config = model.config
    moe = config.is_moe
    if recipe.is_sdar:
        config.model_type = "sdar_moe" if moe else "sdar"
        config.block_size = recipe.block_size
        config.trained_block_sizes = recipe.trained_block_sizes
        config.mask_token_id = mask_token_id
        config.extra.pop("auto_map", None)
    else:
        config.model_type = "qwen3_moe" if moe else "qwen3"
        config.block_size = 1
        config.trained_block_sizes = None
    return model


def enable_gradient_checkpointing(model: SDARForCausalLM) -> None:
    """Recompute each decoder layer in the backward pass instead of storing its activations."""
    for layer in model.model.layers:
        layer.forward = functools.partial(_checkpointed, layer.forward)


def _checkpointed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices and embeddings, none on norms and biases."""
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
