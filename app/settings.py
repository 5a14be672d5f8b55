"""What a decode button sends, parsed in one place: the UI's values by name -> a DecodeRequest (which model,
the DecodeSettings, the watch pace), checked on the server because the API can send any value.

The names are the API's parameter names (ui.py wires each component under its field name), so a handler
never receives the decoding inputs by position."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping

SDAR_STRATEGIES = ("static", "dynamic", "sequential", "entropy")
MAX_BLOCK_LENGTH = 64
MAX_NEW_TOKENS = 1024
MAX_MESSAGE_CHARS = 8_000  # a message or prompt, checked before tokenisation (far above what a context holds)
MAX_SYSTEM_CHARS = 4_000


class SettingsError(ValueError):
    """A setting outside what the decoder accepts, named with its value and the valid range."""


def shown(value, width: int = 60) -> str:
    """repr(value) cut to `width` characters, for a message that names a refused value."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def checked_text(label: str, value, cap: int) -> str:
    """`value` stripped, when it is text of at most `cap` characters that UTF-8 can encode (None reads as "");
    else a SettingsError naming `label`."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SettingsError(f"{label} must be text, got {type(value).__name__}")
    if len(value) > cap:
        raise SettingsError(f"{label} is {len(value):,} characters long; at most {cap:,} are accepted")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SettingsError(f"{label} contains a character that is not valid text (a lone surrogate)") from None
    return value.strip()


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: [lo, hi] (or (lo, hi] when lo_open), whole numbers when integer."""

    label: str
    lo: float
    hi: float
    integer: bool = False
    lo_open: bool = False

    def parse(self, value) -> int | float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{self.label} must be a number, got {shown(value)}") from None
        if math.isnan(x) or (x <= self.lo if self.lo_open else x < self.lo) or x > self.hi:
            bracket = "(" if self.lo_open else "["
            lo, hi = (f"{int(v)}" if self.integer else f"{v:g}" for v in (self.lo, self.hi))
            raise SettingsError(f"{self.label} must be in {bracket}{lo}, {hi}], got {shown(value)}")
        if not self.integer:
            return x
        if x != int(x):
            raise SettingsError(f"{self.label} must be a whole number, got {shown(value)}")
        return int(x)


RANGES = {  # field name -> accepted values (strategy is a choice, checked on its own)
    "block_length": Range("block length", 1, MAX_BLOCK_LENGTH, integer=True),
    "steps": Range("denoising steps", 1, MAX_BLOCK_LENGTH, integer=True),
    "threshold": Range("threshold", 0, 1, lo_open=True),
    "temperature": Range("temperature", 0, 2),
    "top_p": Range("top-p", 0, 1, lo_open=True),
    "max_new_tokens": Range("max new tokens", 1, MAX_NEW_TOKENS, integer=True),
    "seed": Range("seed", 0, 2**31 - 1, integer=True),
}
PACE = Range("watch delay per frame (ms)", 0, 1000)


@dataclass(frozen=True)
class DecodeSettings:
    # The studio's defaults: sdar-tiny is confident, so at block 4 and threshold 0.9 every block of its example
    # answers filled in one step and a visitor never saw a block half denoised. A 16-wide block (trained) at 0.99
    # leaves positions masked after a step in every example answer (tests/test_app_examples.py) and still commits
    # several tokens per forward.
    block_length: int = 16
    steps: int = 16
    strategy: str = "dynamic"
    threshold: float = 0.99
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0

    @classmethod
    def from_ui(cls, ui: Mapping[str, object]) -> "DecodeSettings":
        """Validated settings from the UI's values by field name (a missing name keeps its default);
        raises SettingsError naming the first bad value."""
        strategy = ui.get("strategy", cls.strategy)
        if strategy not in SDAR_STRATEGIES:
            raise SettingsError(f"strategy must be one of {', '.join(SDAR_STRATEGIES)}, got {shown(strategy)}")
        values = {f.name: RANGES[f.name].parse(ui.get(f.name, f.default)) for f in fields(cls) if f.name in RANGES}
        if values["steps"] > values["block_length"]:
            raise SettingsError(f"denoising steps must be between 1 and the block length "
                                f"({values['block_length']}), got {values['steps']}")
        return cls(strategy=strategy, **values)

    def generate_kwargs(self) -> dict:
        """Keyword arguments of sdar_core.generate."""
        return asdict(self)

    def forwards_bound(self, prompt_len: int) -> int:
        """The most forwards a decode with these settings can take after a prompt of `prompt_len` tokens: the
        prefill, then at most `steps` per block up to max_new_tokens (one per token for AR). What its budget
        prices (app/budget.py)."""
        if self.strategy == "ar":
            return 1 + self.max_new_tokens
        L = self.block_length
        blocks = -(-(prompt_len + self.max_new_tokens) // L) - prompt_len // L
        return 1 + blocks * self.steps

    def as_ar(self) -> "DecodeSettings":
        """The same sampling, decoded one token per forward."""
        return replace(self, block_length=1, steps=1, strategy="ar")


@dataclass(frozen=True)
class DecodeRequest:
    """What a decode button sends besides its prompt: which model, how to decode, how fast to show it."""

    model_name: str
    settings: DecodeSettings
    pace_ms: float = 0.0  # the watch replay's delay per frame, after the decode (display only; 0: no replay)

    @classmethod
    def from_ui(cls, ui: Mapping[str, object]) -> "DecodeRequest":
        return cls(model_name=ui.get("model_name"), settings=DecodeSettings.from_ui(ui),
                   pace_ms=PACE.parse(ui.get("pace_ms") or 0))
