"""A training recipe: one typed dataclass, read from YAML plus `key=value` overrides, checked before any work.

    python -m training.train training/recipes/tiny-cpu-smoke.yaml max_steps=50 model.num_hidden_layers=4

Unknown keys, a wrong mode, a missing data file or an impossible combination raise RecipeError with the offending
value and what would be valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from sdar_core.prompting import MASK_TOKEN

MODES = ("ar", "sdar-cpt", "sdar-sft")
ATTENTIONS = ("auto", "flex", "sdpa")
MIXED_PRECISIONS = ("auto", "bf16", "no")
DATA_FORMATS = ("auto", "text", "chat")
BUILTIN_TEXT = "builtin:tiny-text"  # training/recipes/tiny-corpus.txt
BUILTIN_PREFIX = "builtin:"


class RecipeError(ValueError):
    """A recipe that cannot run, with the reason in words."""


@dataclass
class ModelSpec:
    """The shape of a model trained from scratch (Qwen3 layout). vocab_size defaults to the tokenizer's size."""

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    vocab_size: int | None = None
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02


@dataclass
class Recipe:
    mode: str  # "ar" (next-token prediction) | "sdar-cpt" | "sdar-sft" (block diffusion, Eq. 7)
    output_dir: str
    data: list[str]  # training files: .txt, .jsonl {"text"} / {"messages"}, .json (alpaca or messages list)
    # --- model ---
    init_from: str | None = None  # a checkpoint folder (HF format); else `model` builds one from scratch
    model: ModelSpec | None = None
    tokenizer: str | None = None  # folder, or "builtin:bytes"; default: the init_from checkpoint's tokenizer
    block_size: int = (
        4  # SDAR block length L' (sdar modes); the output config's block_size (what loaders default to)
    )
    block_sizes: list[int] | None = (
        None  # sdar modes: each micro-batch trains with one of these, drawn from the seed
    )
    mask_token: str = MASK_TOKEN  # added to the tokenizer (and the embeddings resized) when missing
    eps: float = 1e-3  # t ~ U(eps, 1]
    # --- data ---
    data_weights: list[float] | None = None  # one per `data` file: the share of training rows drawn from it
    data_format: str = "auto"  # "text" | "chat" | "auto" (from the file's records)
    response_only: bool = True  # chat data: train on assistant tokens only (prompts are never masked in SFT)
    eval_data: list[str] = field(
        default_factory=list
    )  # held-out files; none: `eval_fraction` of the training rows
    eval_fraction: float = 0.02
    seq_len: int = 512  # packed row length T (SDAR forwards 2T tokens)
    max_docs: int | None = None  # cap on documents read per file (quick runs)
    # --- optimisation ---
    micro_batch_size: int = 8  # rows per device per forward
    grad_accum: int = 1
    max_steps: int = 1000  # optimizer steps
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    # --- systems ---
    mixed_precision: str = "auto"  # "bf16" (autocast, fp32 master weights) on CUDA when auto; "no" on CPU
    attention: str = "auto"  # "flex" (CUDA, needs compile) | "sdpa" (dense boolean mask) | auto
    compile: bool = True  # torch.compile the model on CUDA (ignored on CPU)
    gradient_checkpointing: bool = False
    fsdp: bool = False  # shard parameters/gradients/optimizer over the GPUs (FSDP2 via accelerate)
    # --- bookkeeping ---
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 500  # training checkpoints (for resume) every N steps, and at the end / time budget
    keep_checkpoints: int = 2
    max_minutes: float | None = None  # stop cleanly (checkpoint) after this wall time; resume=true continues
    fit_minutes: float | None = (
        None  # shrink max_steps (timed over steps 10-30) so the run ends in this wall time
    )
    data_cache: str | None = (
        None  # folder for tokenized rows (default output_dir/data-cache); share it across runs
    )
    resume: bool = False  # continue from the latest checkpoint in output_dir
    save_dtype: str = "bfloat16"  # dtype of the final HF checkpoint: "bfloat16" | "float32"
    max_shard_mb: float = 4096.0  # final checkpoint shard size

    # ------------------------------------------------------------------------------------------------------------

    @property
    def is_sdar(self) -> bool:
        return self.mode.startswith("sdar")

    @property
    def trained_block_sizes(self) -> list[int]:
        """The block sizes the training samples from (sdar modes): `block_sizes`, or just `block_size`."""
        return sorted(set(self.block_sizes)) if self.block_sizes else [self.block_size]

    def validate(self) -> Recipe:
        """Check everything that can be checked without loading a model; returns self."""
        if self.mode not in MODES:
            raise RecipeError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        for name, allowed in (
            ("attention", ATTENTIONS),
            ("mixed_precision", MIXED_PRECISIONS),
            ("data_format", DATA_FORMATS),
            ("save_dtype", ("bfloat16", "float32")),
        ):
            if getattr(self, name) not in allowed:
                raise RecipeError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if (self.init_from is None) == (self.model is None):
            raise RecipeError(
                "give exactly one of `init_from` (a checkpoint folder) and `model` (a shape to "
                "train from scratch)"
            )
        if self.model is not None and self.tokenizer is None:
            raise RecipeError("a model trained from scratch needs `tokenizer` (a folder, or builtin:bytes)")
        if self.init_from is not None and not (Path(self.init_from) / "config.json").is_file():
            raise RecipeError(f"init_from {self.init_from!r}: no checkpoint there (no config.json)")
        if (
            self.tokenizer is not None
            and not self.tokenizer.startswith(BUILTIN_PREFIX)
            and not Path(self.tokenizer).is_dir()
        ):
            raise RecipeError(f"tokenizer {self.tokenizer!r}: no such folder (or use builtin:bytes)")
        if not self.data:
            raise RecipeError("`data` lists no training file")
        for path in list(self.data) + list(self.eval_data):
            if path.startswith(BUILTIN_PREFIX):
                if path != BUILTIN_TEXT:
                    raise RecipeError(f"unknown built-in data {path!r}; the only one is {BUILTIN_TEXT}")
            elif not Path(path).is_file():
                raise RecipeError(f"data file {path!r} does not exist")
        positive = [
            "seq_len",
            "micro_batch_size",
            "grad_accum",
            "max_steps",
            "log_every",
            "eval_every",
            "save_every",
            "keep_checkpoints",
            "block_size",
        ]
        for name in positive:
            if getattr(self, name) < 1:
                raise RecipeError(f"{name} must be >= 1, got {getattr(self, name)}")
        for size in self.trained_block_sizes if self.is_sdar else ():
            if size < 1 or self.seq_len % size:
                raise RecipeError(f"block size {size} must be >= 1 and divide seq_len {self.seq_len}")
        if self.block_sizes is not None and (not self.is_sdar or self.block_size not in self.block_sizes):
            raise RecipeError(
                f"block_sizes {self.block_sizes} needs an sdar mode and must contain block_size "
                f"{self.block_size} (the size the saved config names as its default)"
            )
        if self.data_weights is not None and (
            len(self.data_weights) != len(self.data)
            or min(self.data_weights) < 0
            or sum(self.data_weights) <= 0
        ):
            raise RecipeError(
                f"data_weights {self.data_weights} must give one weight >= 0 per data file "
                f"({len(self.data)} files), not all zero"
            )
        if not 0 < self.eps < 1:
            raise RecipeError(f"eps must be in (0, 1), got {self.eps}")
        if not 0 <= self.eval_fraction < 1:
            raise RecipeError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise RecipeError(
                f"need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0 (got {self.lr}, "
                f"{self.min_lr_ratio}, {self.warmup_steps})"
            )
        for name in ("max_minutes", "fit_minutes"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise RecipeError(f"{name} must be > 0, got {getattr(self, name)}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def lr_at(step: int, recipe: Recipe, max_steps: int | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine to lr * min_lr_ratio at
    max_steps (default the recipe's)."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max((max_steps or recipe.max_steps) - recipe.warmup_steps, 1)
    progress = min((step - recipe.warmup_steps) / span, 1.0)
    floor = recipe.lr * recipe.min_lr_ratio
    return floor + (recipe.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------------------
# Reading


def _check_keys(raw: dict, cls, where: str) -> None:
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"unknown recipe key '{where}{key}'{hint}; valid keys: {', '.join(names)}")


def _coerce(value, annotation: str, name: str):
    """YAML gives int/float/str/bool/list; check them against the field's annotation (a string here)."""
    ann = annotation.replace(" ", "")
    if value is None:
        if "None" in ann:
            return None
        raise RecipeError(f"recipe key {name!r} cannot be null")
    if ann.startswith("list[int]") or ann.startswith("list[float]"):
        kind = ann[5 : ann.index("]")]
        if not isinstance(value, list) or not value:
            raise RecipeError(f"recipe key {name!r} must be a non-empty list of numbers, got {value!r}")
        return [_coerce(v, kind, f"{name}[{i}]") for i, v in enumerate(value)]
    if ann.startswith("list"):
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RecipeError(f"recipe key {name!r} must be a list of paths, got {value!r}")
        return [str(v) for v in value]
    base = ann.split("|")[0]
    if base == "bool":
        if not isinstance(value, bool):
            raise RecipeError(f"recipe key {name!r} must be true or false, got {value!r}")
        return value
    if base in ("int", "float") and isinstance(value, str):
        value = _number(value, name)
    if base == "int":
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise RecipeError(f"recipe key {name!r} must be an integer, got {value!r}")
        return int(value)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"recipe key {name!r} must be a number, got {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise RecipeError(f"recipe key {name!r} must be a string, got {value!r}")
        return str(value)
    return value


def _number(text: str, name: str) -> int | float:
    """A number written as text. YAML 1.1 (PyYAML) reads `1e-4` and `3E5` as strings: it wants a dot and a signed
    exponent (`1.0e-4`, `3.0e+5`), which nobody types."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise RecipeError(f"recipe key {name!r} must be a number, got {text!r}") from None
    if not math.isfinite(number):
        raise RecipeError(f"recipe key {name!r} must be a finite number, got {text!r}")
    return number


def recipe_from_dict(raw: dict) -> Recipe:
    """Build and validate a Recipe from a dict (YAML contents after overrides)."""
    if not isinstance(raw, dict):
        raise RecipeError(f"a recipe is a mapping of keys to values, got {type(raw).__name__}")
    _check_keys(raw, Recipe, "")
    kwargs = {}
    for f in fields(Recipe):
        if f.name not in raw:
            continue
        if f.name == "model":
            spec = raw["model"]
            if spec is None:
                kwargs["model"] = None
                continue
            if not isinstance(spec, dict):
                raise RecipeError(f"recipe key 'model' must be a mapping of model shape keys, got {spec!r}")
            _check_keys(spec, ModelSpec, "model.")
            kwargs["model"] = ModelSpec(
                **{
                    m.name: _coerce(spec[m.name], m.type, f"model.{m.name}")
                    for m in fields(ModelSpec)
                    if m.name in spec
                }
            )
        else:
            kwargs[f.name] = _coerce(raw[f.name], f.type, f.name)
    missing = [
        f.name
        for f in fields(Recipe)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in kwargs
    ]
    if missing:
        raise RecipeError(f"the recipe lacks the required key(s) {', '.join(missing)}")
    return Recipe(**kwargs).validate()


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`key=value` (value parsed as YAML; `model.key=value` for the model shape) on top of the YAML mapping."""
    raw = dict(raw)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text else None
        if key.startswith("model."):
            raw["model"] = dict(raw.get("model") or {})
            raw["model"][key.removeprefix("model.")] = value
        else:
            raw[key] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe YAML, apply overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no recipe file at {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from None
    return recipe_from_dict(apply_overrides(raw, list(overrides)))
