"""What a decode button sends, parsed in one place: the UI's values by name -> a DecodeRequest (which model,
the DecodeSettings, the watch pace), checked on the server because the API can send any value. The ranges and the
controls' first values are sdar_core's (decode_params.OPTIONS), and a DecodeSettings becomes one DecodeParams.

The names are the API's parameter names (ui.py wires each component under its field name), so a handler
never receives the decoding inputs by position."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from sdar_core.decode_params import OPTIONS, DecodeParams, start_value

SDAR_STRATEGIES = tuple(s for s in OPTIONS["strategy"].choices if s != "ar")  # an AR model picks "ar" itself
MAX_BLOCK_LENGTH = int(OPTIONS["block_length"].hi)
MAX_NEW_TOKENS = int(OPTIONS["max_new_tokens"].hi)
MAX_MESSAGE_CHARS = 8_000  # a message or prompt, checked before tokenisation (far above what a context holds)
MAX_SYSTEM_CHARS = 4_000


class SettingsError(ValueError):
    """A setting outside what the decoder accepts, named with its value and the valid range."""


def shown(value, width: int = 60) -> str:
    """repr(value) cut to `width` characters, for a message that names a refused value."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


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
        raise SettingsError(
            f"{label} contains a character that is not valid text (a lone surrogate)"
        ) from None
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
    name: Range(o.label, o.lo, o.hi, integer=o.integer, lo_open=o.lo_open)
    for name, o in OPTIONS.items()
    if name != "top_k" and not o.choices
}
PACE = Range("watch delay per frame (ms)", 0, 1000)


@dataclass(frozen=True)
class DecodeSettings:
    block_length: int = start_value("block_length")
    steps: int = start_value("steps")
    strategy: str = start_value("strategy")
    threshold: float = start_value("threshold")
    temperature: float = start_value("temperature")
    top_p: float = start_value("top_p")
    max_new_tokens: int = start_value("max_new_tokens")
    seed: int = start_value("seed")

    @classmethod
    def from_ui(cls, ui: Mapping[str, object]) -> DecodeSettings:
        """Validated settings from the UI's values by field name (a missing name keeps its default);
        raises SettingsError naming the first bad value."""
        strategy = ui.get("strategy", cls.strategy)
        if strategy not in SDAR_STRATEGIES:
            raise SettingsError(
                f"strategy must be one of {', '.join(SDAR_STRATEGIES)}, got {shown(strategy)}"
            )
        values = {
            f.name: RANGES[f.name].parse(ui.get(f.name, f.default)) for f in fields(cls) if f.name in RANGES
        }
        if values["steps"] > values["block_length"]:
            raise SettingsError(
                f"denoising steps must be between 1 and the block length "
                f"({values['block_length']}), got {values['steps']}"
            )
        return cls(strategy=strategy, **values)

    def generate_kwargs(self) -> dict:
        """Keyword arguments of sdar_core.generate."""
        return asdict(self)

    def params(self, **extra) -> DecodeParams:
        """The DecodeParams these settings decode with (`extra`: the other fields, such as stop_token_ids)."""
        return DecodeParams(**self.generate_kwargs(), **extra)

    def forwards_bound(self, prompt_len: int) -> int:
        """The most forwards a decode with these settings can take after a prompt of `prompt_len` tokens: the
        prefill, then at most `steps` per block up to max_new_tokens (one per token for AR). What its budget
        prices (app/budget.py)."""
        return self.params().forwards_bound(prompt_len)

    def as_ar(self) -> DecodeSettings:
        """The same sampling, decoded one token per forward: DecodeParams.as_ar's rule, the one home of "AR is
        block 1", read back into these settings."""
        ar = self.params().as_ar()
        return replace(self, block_length=ar.block_length, steps=ar.steps, strategy=ar.strategy)


@dataclass(frozen=True)
class DecodeRequest:
    """What a decode button sends besides its prompt: which model, how to decode, how fast to show it."""

    model_name: str
    settings: DecodeSettings
    pace_ms: float = 0.0  # the watch replay's delay per frame, after the decode (display only; 0: no replay)

    @classmethod
    def from_ui(cls, ui: Mapping[str, object]) -> DecodeRequest:
        return cls(
            model_name=ui.get("model_name"),
            settings=DecodeSettings.from_ui(ui),
            pace_ms=PACE.parse(ui.get("pace_ms") or 0),
        )
