"""What a decode button sends, parsed in one place: the UI's values by name -> a DecodeRequest (which model,
the sdar_core DecodeParams, the watch pace), checked on the server because the API can send any value. The
accepted ranges and the controls' first values are DecodeParams' own (sdar_core.decode_params.OPTIONS).

The names are the API's parameter names (ui.py wires each component under its field name), so a handler
never receives the decoding inputs by position."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from sdar_core.decode_params import OPTIONS, DecodeParams, start_value

UI_FIELDS = ("block_length", "steps", "strategy", "threshold", "temperature", "top_p", "max_new_tokens", "seed")
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
            raise SettingsError(f"{self.label} must be in {bracket}{self.lo:g}, {self.hi:g}], got {shown(value)}")
        if not self.integer:
            return x
        if x != int(x):
            raise SettingsError(f"{self.label} must be a whole number, got {shown(value)}")
        return int(x)


RANGES = {  # field name -> accepted values (strategy is a choice, checked on its own)
    name: Range(o.label, o.lo, o.hi, integer=o.integer, lo_open=o.lo_open)
    for name, o in OPTIONS.items() if name in UI_FIELDS and not o.choices
}
PACE = Range("watch delay per frame (ms)", 0, 1000)


def params_from_ui(ui: Mapping[str, object]) -> DecodeParams:
    """Validated DecodeParams from the UI's values by field name (a missing name takes its control's first value,
    sdar_core.decode_params.start_value); raises SettingsError naming the first bad value."""
    strategy = ui.get("strategy", start_value("strategy"))
    if strategy not in SDAR_STRATEGIES:
        raise SettingsError(f"strategy must be one of {', '.join(SDAR_STRATEGIES)}, got {shown(strategy)}")
    values = {name: RANGES[name].parse(ui.get(name, start_value(name))) for name in RANGES}
    if values["steps"] > values["block_length"]:
        raise SettingsError(f"denoising steps must be between 1 and the block length "
                            f"({values['block_length']}), got {values['steps']}")
    return DecodeParams(strategy=strategy, **values)


@dataclass(frozen=True)
class DecodeRequest:
    """What a decode button sends besides its prompt: which model, how to decode, how fast to show it."""

    model_name: str
    settings: DecodeParams
    pace_ms: float = 0.0  # the watch replay's delay per frame, after the decode (display only; 0: no replay)

    @classmethod
    def from_ui(cls, ui: Mapping[str, object]) -> "DecodeRequest":
        return cls(model_name=ui.get("model_name"), settings=params_from_ui(ui),
                   pace_ms=PACE.parse(ui.get("pace_ms") or 0))
