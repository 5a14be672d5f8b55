"""The options of one `generate` call, as one dataclass that checks itself (paper §3.2, §7.2).

Every entry point builds one `DecodeParams` and hands it to the loop unchanged: the studio (from its controls, by
field name), the CLI (its options are the field names), the warm-up, the benchmarks and the evaluation;
`generate(model, ids, max_new_tokens=64, strategy="static")` builds one from its keyword arguments. The field
defaults here are the only defaults; `OPTIONS` says how a person sets each user-facing field (its label and the
range a control or an API call accepts; the studio's sliders and the CLI's choices read it). `check` refuses
every value that generate cannot honour with a `GenerationError` that names the argument and says what is valid.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from numbers import Integral, Real

from .kernels import DEFAULT_KERNELS, Kernels
from .runner import MODES
from .sampling import SamplingError, SamplingParams
from .schedules import STRATEGIES

SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes seeds in [0, 2**64)
AR_BLOCK = 1  # strategy "ar": one token per forward, a block of one (causal attention, or one masked token)


class GenerationError(ValueError):
    """Arguments that generate() cannot honour, explained."""


class ContextTooLong(GenerationError):
    """The prompt and the answer asked for do not fit in the model's context (a shorter prompt or answer would)."""


def is_int(value) -> bool:
    """An integer that is not a bool (True is an int to Python, never a meaningful count here)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if not is_int(value) or value < low or (high is not None and value > high):
        valid = f"between {low} and {high}" if high is not None else f">= {low}"
        raise GenerationError(f"{name} must be an integer {valid}, got {value!r}")


def _check_real(name: str, value, valid: str, ok) -> None:
    if not isinstance(value, Real) or isinstance(value, bool) or math.isnan(value) or not ok(value):
        raise GenerationError(f"{name} must be {valid}, got {value!r}")


@dataclass
class DecodeParams:
    """How to decode: the schedule, the sampling, the limits, and what to record.

    strategy: "static" (the authors' counts: floor(L/T) per step, +1 for the first L mod T steps), "dynamic"
    (confidence > threshold, at least the static count), "sequential" (left to right), "entropy" (lowest
    entropy while the summed entropy <= entropy_bound, at least the static count), "ar" (one token per forward
    with causal attention: next-token prediction for an AR model, a block of one masked token for SDAR).
    block_length / steps default to the model's block size. stop_token_ids end a row at its first stop token
    (kept; nothing after it is returned or counted). trace=True records a StepEvent per row and step.
    runner_mode: "plain", "static" or "graph" (CUDA graphs; default on CUDA), see runner.py; all three give the
    same tokens; compile=True (or "static" / "dynamic") also torch.compile's the graphed forward. kernels: the
    fused and decode kernels the forwards may take (kernels.py; the same tokens up to their rounding).
    """

    max_new_tokens: int = 128
    block_length: int | None = None
    steps: int | None = None
    strategy: str = "dynamic"
    threshold: float = 0.9
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = 0  # None: a fresh random seed
    entropy_bound: float = 1.0
    trace: bool = False
    fuse_cache_write: bool = True
    runner_mode: str | None = None  # None: runner.default_mode(model)
    compile: bool | str = False
    kernels: Kernels = DEFAULT_KERNELS  # which kernels the forwards take (kernels.py)

    @classmethod
    def build(cls, params: DecodeParams | None, options: dict) -> DecodeParams:
        """`params` (or the defaults) with the keyword `options` of a generate call applied."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise GenerationError(
                f"unknown generate option(s) {', '.join(unknown)}; the options are "
                f"{', '.join(sorted(names))} and on_step"
            )
        if options.get("stop_token_ids", ()) is None:
            options = {**options, "stop_token_ids": []}
        return dataclasses.replace(params or cls(), **options)

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p)

    def as_ar(self) -> DecodeParams:
        """The same sampling and limits, decoded one token per forward."""
        return dataclasses.replace(self, block_length=AR_BLOCK, steps=AR_BLOCK, strategy="ar")

    def forwards_bound(self, prompt_len: int, config=None) -> int:
        """The most forwards a decode with these options can take after a prompt of `prompt_len` tokens: the
        prefill, then at most `steps` per block up to max_new_tokens (one per token for AR). What the studio's
        budgets price. `config` gives the block length when it is left to the model."""
        if self.strategy == "ar":
            return 1 + self.max_new_tokens
        L = self.block(config) if self.block_length is None else self.block_length
        steps = L if self.steps is None else min(self.steps, L)
        blocks = -(-(prompt_len + self.max_new_tokens) // L) - prompt_len // L
        return 1 + blocks * steps

    def block(self, config) -> int:
        """The block length decoded with: AR_BLOCK for "ar", else block_length or the model's block size."""
        if self.strategy == "ar":  # SDAR weights: a block of one masked token, predicted at its own position
            return AR_BLOCK
        return max(config.block_size, 1) if self.block_length is None else self.block_length

    def resolved(self, config) -> DecodeParams:
        """Defaults filled from the model (block size), after `check`: the values the decoder runs with."""
        block = self.block(config)
        steps = block if self.steps is None or self.strategy == "ar" else self.steps
        return dataclasses.replace(
            self, block_length=block, steps=steps, stop_token_ids=sorted(set(self.stop_token_ids))
        )

    def check(self, config) -> None:
        """Raise GenerationError naming the first argument out of range (types included)."""
        if self.strategy not in STRATEGIES:
            raise GenerationError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        if self.strategy != "ar":
            self._check_block(config)
        self._check_sampling()
        self._check_stop_ids(config.vocab_size)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, SEED_LIMIT - 1)
        for name in ("trace", "fuse_cache_write"):
            if not isinstance(getattr(self, name), bool):
                raise GenerationError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.runner_mode is not None and self.runner_mode not in MODES:
            raise GenerationError(
                f"runner_mode must be one of {', '.join(MODES)} or None, got {self.runner_mode!r}"
            )
        if self.compile not in (True, False, "static", "dynamic"):
            raise GenerationError(f"compile must be True, False, 'static' or 'dynamic', got {self.compile!r}")
        if not isinstance(self.kernels, Kernels):
            raise GenerationError(f"kernels must be a sdar_core.kernels.Kernels, got {self.kernels!r}")

    def _check_block(self, config) -> None:
        if not config.is_sdar:
            raise GenerationError(
                f"this is an autoregressive model (model_type {config.model_type!r}): only strategy='ar' "
                "applies; block diffusion needs an SDAR checkpoint"
            )
        block = self.block(config)  # (not "ar" here)
        _check_int("block_length", block, 1)
        steps = block if self.steps is None else self.steps
        if not is_int(steps) or not 1 <= steps <= block:
            raise GenerationError(f"steps must be between 1 and block_length ({block}), got {steps!r}")
        _check_real(
            "threshold",
            self.threshold,
            "a number in (0, 1]",
            lambda t: 0 < t <= 1 or self.strategy != "dynamic",
        )
        _check_real(
            "entropy_bound", self.entropy_bound, "a number > 0", lambda e: e > 0 or self.strategy != "entropy"
        )

    def _check_sampling(self) -> None:
        _check_real("temperature", self.temperature, "a finite number >= 0 (0 is greedy)", math.isfinite)
        _check_int("top_k", self.top_k, 0)
        _check_real("top_p", self.top_p, "a number in (0, 1]", lambda p: True)
        try:
            self.sampling.validate()
        except SamplingError as e:
            raise GenerationError(str(e)) from None

    def _check_stop_ids(self, vocab_size: int) -> None:
        ids = self.stop_token_ids
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise GenerationError(f"stop_token_ids must be a list of token ids, got {ids!r}")
        bad = [t for t in ids if not is_int(t) or not 0 <= t < vocab_size]
        if bad:
            raise GenerationError(f"stop_token_ids must be token ids in 0..{vocab_size - 1}, got {bad[0]!r}")


@dataclass(frozen=True)
class Option:
    """How a person sets one DecodeParams field (the studio's controls and its API check, the CLI's choices): what
    to call it and the values accepted, [lo, hi] ((lo, hi] when lo_open, whole numbers when integer) or `choices`.
    `start` is a control's first value where it differs from the field's default (None there: "the model's")."""

    label: str
    lo: float = 0
    hi: float = math.inf
    integer: bool = False
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    start: float | None = None


# The studio's first values: sdar-tiny is confident, so at block 4 and threshold 0.9 every block of its example
# answers filled in one step and a visitor never saw a block half denoised. A 16-wide block (trained) at 0.99 leaves
# positions masked after a step in every example answer (tests/test_app_examples.py) and still commits several
# tokens per forward.
OPTIONS = {  # the user-facing fields, in the order a person meets them
    "block_length": Option("block length", 1, 64, integer=True, start=16),
    "steps": Option("denoising steps", 1, 64, integer=True, start=16),
    "strategy": Option("strategy", choices=STRATEGIES),
    "threshold": Option("threshold", 0, 1, lo_open=True, start=0.99),
    "temperature": Option("temperature", 0, 2),
    "top_k": Option("top-k", 0, 1000, integer=True),
    "top_p": Option("top-p", 0, 1, lo_open=True),
    "max_new_tokens": Option("max new tokens", 1, 1024, integer=True),
    "seed": Option("seed", 0, 2**31 - 1, integer=True),
}


def start_value(name: str):
    """The first value of the control for field `name`: its Option's start, else the field's default."""
    if OPTIONS[name].start is not None:
        return OPTIONS[name].start
    return next(f.default for f in dataclasses.fields(DecodeParams) if f.name == name)
