"""Model configuration: one dataclass, read from a Hugging Face `config.json`.

Three families share the Qwen3 transformer:
- "sdar": dense SDAR (block-diffusion, `block_size` > 1, a `mask_token_id`);
- "qwen3": a plain autoregressive Qwen3 (block_size 1, next-token prediction);
- "qwen3_moe" / "sdar_moe": the sparse mixture-of-experts layout of Qwen3-30B-A3B / SDAR-30B-A3B.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SDAR_TYPES = ("sdar", "sdar_moe")
AR_TYPES = ("qwen3", "qwen3_moe")
MOE_TYPES = ("qwen3_moe", "sdar_moe")
KNOWN_MODEL_TYPES = SDAR_TYPES + AR_TYPES


# The shapes of the public Qwen3 / SDAR checkpoints (vocabulary 151,936; 0.6B and 1.7B tie their embeddings),
# for benchmarks and throughput runs on random weights.
# fmt: off
PUBLIC_SHAPES = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
    "30b-a3b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32,
                    num_key_value_heads=4, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
                    num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True),
}
# fmt: on


class ConfigError(ValueError):
    """A config.json that cannot describe a model we know how to build."""


# Sane bounds, far above every public Qwen3 / SDAR shape (Qwen3-235B: 94 layers, hidden 4096, 128 experts; vocab
# 151,936) and far below what exhausts a machine: a typo or a hostile config is refused by name before anything is
# computed from it. field: (smallest, largest).
INT_BOUNDS = {
    "vocab_size": (1, 1 << 22),
    "hidden_size": (1, 1 << 16),
    "intermediate_size": (0, 1 << 18),  # 0 only where every layer is sparse (checked below)
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "head_dim": (2, 1024),
    "max_position_embeddings": (1, 1 << 24),
    "block_size": (1, 4096),
    "num_experts": (0, 4096),
    "num_experts_per_tok": (0, 4096),
    "moe_intermediate_size": (0, 1 << 18),
    "decoder_sparse_step": (1, 1024),
}
# The largest public checkpoints hold about 1e12 parameters; a config that implies more is refused before the
# device's memory is even asked.
MAX_PARAMETERS = 2_000_000_000_000
# Experts over all sparse layers (Qwen3-235B-A22B: 94 x 128 = 12,032). Each is three modules to build, about a
# millisecond apiece even on the meta device, so the count bounds the time spent before any weight is checked.
MAX_EXPERT_MLPS = 1 << 14
# A config.json is a few kilobytes; a larger one is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20
BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "norm_topk_prob")
TOKEN_ID_FIELDS = ("mask_token_id", "bos_token_id", "pad_token_id")  # and eos_token_id: an id or a list


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sparse_layer_count(num_layers: int, step: int, mlp_only_layers) -> int:
    """How many of `num_layers` layers are sparse under Qwen3-MoE's rule (layer i is sparse when (i+1) % step == 0
    and i is not in mlp_only_layers), in closed form: no loop over the layers."""
    dense_listed = {i for i in mlp_only_layers if _is_int(i) and 0 <= i < num_layers and (i + 1) % step == 0}
    return num_layers // step - len(dense_listed)


def _check_ints(config: ModelConfig) -> None:
    for name, (low, high) in INT_BOUNDS.items():
        value = getattr(config, name)
        if not _is_int(value):
            raise ConfigError(f"config field {name!r} must be an integer, got {value!r}")
        if value < low:
            raise ConfigError(f"config field {name!r} must be >= {low}, got {value}")
        if value > high:
            raise ConfigError(f"config field {name!r} is {value:,}; at most {high:,} is supported")
    if config.head_dim % 2:
        raise ConfigError(f"config field 'head_dim' must be even (RoPE rotates pairs), got {config.head_dim}")
    if config.num_attention_heads % config.num_key_value_heads:
        raise ConfigError(
            f"num_attention_heads ({config.num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({config.num_key_value_heads})"
        )


def _check_numbers_and_types(config: ModelConfig) -> None:
    sizes = config.trained_block_sizes
    if sizes is not None and (
        not isinstance(sizes, list) or not sizes or not all(_is_int(b) and b >= 1 for b in sizes)
    ):
        raise ConfigError(
            f"config field 'trained_block_sizes' must be a non-empty list of integers >= 1, got {sizes!r}"
        )
    if not _is_finite_number(config.rope_theta) or config.rope_theta <= 1:
        raise ConfigError(f"config field 'rope_theta' must be a finite number > 1, got {config.rope_theta!r}")
    if not _is_finite_number(config.rms_norm_eps) or not 0 < config.rms_norm_eps < 1:
        raise ConfigError(
            f"config field 'rms_norm_eps' must be a number in (0, 1), got {config.rms_norm_eps!r}"
        )
    for name in BOOL_FIELDS:
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"config field {name!r} must be true or false, got {getattr(config, name)!r}")
    if config.torch_dtype is not None and not isinstance(config.torch_dtype, str):
        raise ConfigError(
            f"config field 'torch_dtype' must be a string such as 'bfloat16', got {config.torch_dtype!r}"
        )
    if not isinstance(config.mlp_only_layers, list) or not all(_is_int(i) for i in config.mlp_only_layers):
        raise ConfigError(
            f"config field 'mlp_only_layers' must be a list of layer indices, got {config.mlp_only_layers!r}"
        )
    eos = config.eos_token_id
    for name, value in [(n, getattr(config, n)) for n in TOKEN_ID_FIELDS] + [("eos_token_id", eos)]:
        if not (
            value is None
            or _is_int(value)
            or name == "eos_token_id"
            and isinstance(value, list)
            and all(_is_int(i) for i in value)
        ):
            raise ConfigError(f"config field {name!r} must be a token id (an integer), got {value!r}")
    # The mask and padding ids are fed to the model (padding fills a batch's short rows and AR decoding's tail);
    # bos and eos are only compared with, and a shrunk vocabulary may leave them outside it.
    for name in ("mask_token_id", "pad_token_id"):
        value = getattr(config, name)
        if value is not None and not 0 <= value < config.vocab_size:
            raise ConfigError(
                f"config field {name!r} must be a token id in [0, {config.vocab_size}) "
                f"(vocab_size), got {value}"
            )


def _check_layout(config: ModelConfig) -> None:
    if config.is_moe and (
        config.num_experts < 1 or not 1 <= config.num_experts_per_tok <= config.num_experts
    ):
        raise ConfigError(
            f"MoE config needs 1 <= num_experts_per_tok ({config.num_experts_per_tok}) <= "
            f"num_experts ({config.num_experts})"
        )
    n_sparse = config.num_sparse_layers()
    if n_sparse < config.num_hidden_layers and config.intermediate_size < 1:
        raise ConfigError(
            f"config field 'intermediate_size' must be >= 1 (the model has "
            f"{config.num_hidden_layers - n_sparse} dense MLP layers), got {config.intermediate_size}"
        )
    if n_sparse and config.moe_intermediate_size < 1:
        raise ConfigError(
            f"config field 'moe_intermediate_size' must be >= 1, got {config.moe_intermediate_size}"
        )
    if n_sparse * config.num_experts > MAX_EXPERT_MLPS:
        raise ConfigError(
            f"config fields 'num_experts' ({config.num_experts}) x sparse layers ({n_sparse} of "
            f"num_hidden_layers {config.num_hidden_layers}) make {n_sparse * config.num_experts:,} "
            f"experts; at most {MAX_EXPERT_MLPS:,} are supported"
        )
    n = config.num_parameters()
    if n > MAX_PARAMETERS:
        raise ConfigError(
            f"the config implies {n:.3g} parameters (num_hidden_layers {config.num_hidden_layers}, hidden_size "
            f"{config.hidden_size}, intermediate_size {config.intermediate_size}, num_experts {config.num_experts}, "
            f"vocab_size {config.vocab_size}); at most {MAX_PARAMETERS:.0e} are supported"
        )


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
    # The block sizes an SDAR model was trained with (config.json "trained_block_sizes"); None when it does not say.
    # block_size stays the default that public loaders read; `trained_blocks` is the one rule that reads both.
    trained_block_sizes: list[int] | None = None
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
        _check_model_type(self.model_type)
        # An SDAR config may lack mask_token_id: load_pretrained fills it from the tokenizer's mask token.
        _check_ints(self)
        _check_numbers_and_types(self)
        _check_layout(self)

    @property
    def trained_blocks(self) -> list[int]:
        """The block sizes this SDAR model was trained at: config.json's trained_block_sizes, else its block_size
        (a checkpoint that does not list them was trained at its default). Decoding at another size is allowed,
        with a warning (generate, the CLI) or a note (the studio). Empty for an AR model."""
        if not self.is_sdar:
            return []
        return sorted(self.trained_block_sizes or [self.block_size])

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
        return (
            list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]
        )

    def num_sparse_layers(self) -> int:
        return (
            sparse_layer_count(self.num_hidden_layers, self.decoder_sparse_step, self.mlp_only_layers)
            if self.is_moe
            else 0
        )

    def num_parameters(self) -> int:
        """Parameter count computed from the shapes (no model needed, no loop over the layers)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (self.num_attention_heads * 2 + self.num_key_value_heads * 2) + 2 * d + 2 * h
        if self.attention_bias:  # q, k, v and o projections each carry a bias
            attn += d * (self.num_attention_heads + 2 * self.num_key_value_heads) + h
        sparse = self.num_sparse_layers()
        moe_mlp = self.num_experts * 3 * h * self.moe_intermediate_size + h * self.num_experts
        mlp = sparse * moe_mlp + (self.num_hidden_layers - sparse) * 3 * h * self.intermediate_size
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embeddings + h + self.num_hidden_layers * attn + mlp

    # --- config.json ---------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"config.json must hold a JSON object, got {type(raw).__name__}")
        raw = _normalised(raw)
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in raw.items() if k in names}
        extra = {k: v for k, v in raw.items() if k not in names}
        if known.get("mlp_only_layers") is None:
            known["mlp_only_layers"] = []
        if known.get("num_experts") is None:
            known["num_experts"] = 0
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config.json at {path}")
        try:
            size = path.stat().st_size
            if size > MAX_CONFIG_BYTES:
                raise ConfigError(
                    f"{path} holds {size:,} bytes; a config.json is at most {MAX_CONFIG_BYTES:,}"
                )
            raw = json.loads(path.read_bytes().decode("utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not UTF-8 text ({e})") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError, an over-long integer, absurd nesting
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        out = {**extra, **d}
        if self.trained_block_sizes is None:
            out.pop("trained_block_sizes")
        if not self.is_moe:
            for k in (
                "num_experts",
                "num_experts_per_tok",
                "moe_intermediate_size",
                "norm_topk_prob",
                "decoder_sparse_step",
                "mlp_only_layers",
            ):
                out.pop(k, None)
        return out


def _normalised(raw: dict) -> dict:
    """`raw` with the defaults and alternative spellings of the public configs filled in (transformers 4 and 5),
    the required fields checked and unsupported features refused; values are checked by ModelConfig itself."""
    raw = dict(raw)
    if "model_type" not in raw:
        raise ConfigError("config.json has no 'model_type' field")
    model_type = raw["model_type"]
    _check_model_type(model_type)  # first: the other checks name the model type
    if model_type in AR_TYPES:
        raw.setdefault("block_size", 1)
    if "num_experts" not in raw and "num_local_experts" in raw:  # transformers 5's name
        raw["num_experts"] = raw["num_local_experts"]
    hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
    if "head_dim" not in raw:  # None when it cannot be derived: ModelConfig then names the field at fault
        raw["head_dim"] = hidden // heads if _is_int(hidden) and _is_int(heads) and heads >= 1 else None
    if "num_key_value_heads" not in raw and "num_attention_heads" in raw:
        raw["num_key_value_heads"] = heads
    _check_required(raw)
    raw.setdefault("intermediate_size", 0)
    # transformers 5 writes RoPE settings as rope_parameters {"rope_theta", "rope_type"}.
    rope = raw.get("rope_parameters") or {}
    _check_unsupported(raw, rope)
    if "rope_theta" not in raw and "rope_theta" in rope:
        raw["rope_theta"] = rope["rope_theta"]
    if "dtype" in raw and "torch_dtype" not in raw:
        raw["torch_dtype"] = raw["dtype"]
    return raw


def _check_model_type(model_type) -> None:
    if not isinstance(model_type, str) or model_type not in KNOWN_MODEL_TYPES:
        raise ConfigError(f"unknown model_type {model_type!r}; supported: {', '.join(KNOWN_MODEL_TYPES)}")


def _check_required(raw: dict) -> None:
    model_type = raw["model_type"]
    is_moe = model_type in MOE_TYPES or bool(raw.get("num_experts", 0))
    required = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"]
    required += ["moe_intermediate_size", "num_experts", "num_experts_per_tok"] if is_moe else []
    n_layers, step = raw.get("num_hidden_layers"), raw.get("decoder_sparse_step")
    n_layers = n_layers if _is_int(n_layers) and n_layers > 0 else 0  # bad values are named by ModelConfig
    step = step if _is_int(step) and step >= 1 else 1
    mlp_only = raw.get("mlp_only_layers")
    mlp_only = mlp_only if isinstance(mlp_only, list) else []
    if not is_moe or sparse_layer_count(n_layers, step, mlp_only) < n_layers:  # a dense MLP layer needs it
        required.append("intermediate_size")
    for name in required:
        if name not in raw:
            raise ConfigError(f"config.json (model_type {model_type!r}) is missing the field {name!r}")


def _check_unsupported(raw: dict, rope) -> None:
    if not isinstance(rope, dict):
        raise ConfigError(f"config field 'rope_parameters' must be an object, got {rope!r}")
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"rope_parameters {rope!r}: only the default RoPE is supported")
    if raw.get("use_sliding_window"):
        raise ConfigError("use_sliding_window is true: sliding-window attention is not supported")
    if raw.get("rope_scaling"):
        raise ConfigError(f"rope_scaling {raw['rope_scaling']!r} is not supported (only plain RoPE)")
