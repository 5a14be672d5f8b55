"""Model configuration: one dataclass, read from a Hugging Face `config.json`.

Three families share the Qwen3 transformer:
- "sdar": dense SDAR (block-diffusion, `block_size` > 1, a `mask_token_id`);
- "qwen3": a plain autoregressive Qwen3 (block_size 1, next-token prediction);
- "qwen3_moe" / "sdar_moe": the sparse mixture-of-experts layout of Qwen3-30B-A3B / SDAR-30B-A3B.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SDAR_TYPES = ("sdar", "sdar_moe")
AR_TYPES = ("qwen3", "qwen3_moe")
MOE_TYPES = ("qwen3_moe", "sdar_moe")
KNOWN_MODEL_TYPES = SDAR_TYPES + AR_TYPES


# The shapes of the public Qwen3 / SDAR checkpoints (vocabulary 151,936; 0.6B and 1.7B tie their embeddings),
# for benchmarks and throughput runs on random weights.
PUBLIC_SHAPES = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
}


class ConfigError(ValueError):
    """A config.json that cannot describe a model we know how to build."""


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    block_size: int = 1  # 1: plain causal attention (an AR model)
    mask_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    # Mixture of experts (num_experts == 0 means dense everywhere).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    # Keys of config.json we do not model, kept so that save_pretrained writes them back.
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.model_type not in KNOWN_MODEL_TYPES:
            raise ConfigError(
                f"unknown model_type {self.model_type!r}; supported: {', '.join(KNOWN_MODEL_TYPES)}"
            )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"config field {name!r} must be an integer, got {value!r}")
            if value < 1:
                raise ConfigError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        # An SDAR config may lack mask_token_id: load_pretrained fills it from the tokenizer's mask token.
        if self.is_moe and (self.num_experts < 1 or not 1 <= self.num_experts_per_tok <= self.num_experts):
            raise ConfigError(
                f"MoE config needs 1 <= num_experts_per_tok ({self.num_experts_per_tok}) <= "
                f"num_experts ({self.num_experts})"
            )

    @property
    def is_sdar(self) -> bool:
        """A block-diffusion model: masked positions are predicted at the same position."""
        return self.model_type in SDAR_TYPES

    @property
    def is_moe(self) -> bool:
        return self.model_type in MOE_TYPES or self.num_experts > 0

    def layer_is_sparse(self, layer: int) -> bool:
        """Whether decoder layer `layer` uses the MoE block (Qwen3-MoE's rule)."""
        return (
            self.is_moe
            and layer not in self.mlp_only_layers
            and (layer + 1) % max(self.decoder_sparse_step, 1) == 0
        )

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    def num_parameters(self) -> int:
        """Parameter count computed from the shapes (no model needed)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (self.num_attention_heads * 2 + self.num_key_value_heads * 2) + 2 * d + 2 * h
        if self.attention_bias:  # q, k, v and o projections each carry a bias
            attn += d * (self.num_attention_heads + 2 * self.num_key_value_heads) + h
        total = self.vocab_size * h * (1 if self.tie_word_embeddings else 2) + h
        for layer in range(self.num_hidden_layers):
            if self.layer_is_sparse(layer):
                mlp = self.num_experts * 3 * h * self.moe_intermediate_size + h * self.num_experts
            else:
                mlp = 3 * h * self.intermediate_size
            total += attn + mlp
        return total

    # --- config.json ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        raw = dict(raw)
        if "model_type" not in raw:
            raise ConfigError("config.json has no 'model_type' field")
        model_type = raw["model_type"]
        if model_type not in KNOWN_MODEL_TYPES:
            raise ConfigError(
                f"unknown model_type {model_type!r}; supported: {', '.join(KNOWN_MODEL_TYPES)}"
            )
        if model_type in AR_TYPES:
            raw.setdefault("block_size", 1)
        if "num_experts" not in raw and "num_local_experts" in raw:  # transformers 5's name
            raw["num_experts"] = raw["num_local_experts"]
        if "head_dim" not in raw and "hidden_size" in raw and "num_attention_heads" in raw:
            raw["head_dim"] = raw["hidden_size"] // raw["num_attention_heads"]
        if "num_key_value_heads" not in raw and "num_attention_heads" in raw:
            raw["num_key_value_heads"] = raw["num_attention_heads"]
        is_moe = model_type in MOE_TYPES or raw.get("num_experts", 0)
        required = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"]
        required += ["moe_intermediate_size", "num_experts", "num_experts_per_tok"] if is_moe else []
        n_layers, step = raw.get("num_hidden_layers"), raw.get("decoder_sparse_step")
        n_layers = n_layers if isinstance(n_layers, int) else 0  # a wrong type is reported by __post_init__
        step = step if isinstance(step, int) and step >= 1 else 1
        mlp_only = raw.get("mlp_only_layers") or []
        has_dense_layer = any(i in mlp_only or (i + 1) % step for i in range(n_layers))
        if not is_moe or has_dense_layer:  # a dense MLP layer (layer_is_sparse's rule) needs intermediate_size
            required.append("intermediate_size")
        for name in required:
            if name not in raw:
                raise ConfigError(f"config.json (model_type {model_type!r}) is missing the field {name!r}")
        raw.setdefault("intermediate_size", 0)
        # transformers 5 writes RoPE settings as rope_parameters {"rope_theta", "rope_type"}.
        rope = raw.get("rope_parameters") or {}
        if "rope_theta" not in raw and "rope_theta" in rope:
            raw["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"rope_parameters {rope!r}: only the default RoPE is supported")
        if "dtype" in raw and "torch_dtype" not in raw:
            raw["torch_dtype"] = raw["dtype"]
        if raw.get("use_sliding_window"):
            raise ConfigError("use_sliding_window is true: sliding-window attention is not supported")
        if raw.get("rope_scaling"):
            raise ConfigError(f"rope_scaling {raw['rope_scaling']!r} is not supported (only plain RoPE)")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in raw.items() if k in names}
        extra = {k: v for k, v in raw.items() if k not in names}
        if known.get("mlp_only_layers") is None:
            known["mlp_only_layers"] = []
        if known.get("num_experts") is None:
            known["num_experts"] = 0
        try:
            return cls(**known, extra=extra)
        except TypeError as e:  # a field of the wrong type, e.g. a string where an int belongs
            raise ConfigError(f"config.json has a field of the wrong type: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config.json at {path}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        out = {**extra, **d}
        if not self.is_moe:
            for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
                      "decoder_sparse_step", "mlp_only_layers"):
                out.pop(k, None)
        return out
