"""Decoding settings as the UI sends them, checked on the server (the API can send any value)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

SDAR_STRATEGIES = ("static", "dynamic", "sequential", "entropy")
MAX_BLOCK_LENGTH = 64
MAX_NEW_TOKENS = 1024


class SettingsError(ValueError):
    """A setting outside what the decoder accepts, named with its value and the valid range."""


def _number(name: str, value, lo: float, hi: float, *, integer: bool, lo_open: bool = False):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(x) or (x <= lo if lo_open else x < lo) or x > hi:
        bracket = "(" if lo_open else "["
        raise SettingsError(f"{name} must be in {bracket}{lo:g}, {hi:g}], got {value!r}")
    if integer:
        if x != int(x):
            raise SettingsError(f"{name} must be a whole number, got {value!r}")
        return int(x)
    return x


@dataclass
class DecodeSettings:
    block_length: int = 4
    steps: int = 4
    strategy: str = "dynamic"
    threshold: float = 0.9
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0

    @classmethod
    def from_ui(cls, block_length, steps, strategy, threshold, temperature, top_p, max_new_tokens,
                seed) -> "DecodeSettings":
        """Validated settings; raises SettingsError naming the first bad value."""
        if strategy not in SDAR_STRATEGIES:
            raise SettingsError(f"strategy must be one of {', '.join(SDAR_STRATEGIES)}, got {strategy!r}")
        block_length = _number("block length", block_length, 1, MAX_BLOCK_LENGTH, integer=True)
        steps = _number("denoising steps", steps, 1, MAX_BLOCK_LENGTH, integer=True)
        if steps > block_length:
            raise SettingsError(f"denoising steps must be between 1 and the block length ({block_length}), "
                                f"got {steps}")
        return cls(
            block_length=block_length, steps=steps, strategy=strategy,
            threshold=_number("threshold", threshold, 0, 1, integer=False, lo_open=True),
            temperature=_number("temperature", temperature, 0, 2, integer=False),
            top_p=_number("top-p", top_p, 0, 1, integer=False, lo_open=True),
            max_new_tokens=_number("max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS, integer=True),
            seed=_number("seed", seed, 0, 2**31 - 1, integer=True),
        )

    def generate_kwargs(self) -> dict:
        """Keyword arguments of sdar_core.generate."""
        return asdict(self)

    def as_ar(self) -> "DecodeSettings":
        """The same sampling, decoded one token per forward."""
        return replace(self, block_length=1, steps=1, strategy="ar")
