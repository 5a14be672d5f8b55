"""app/settings.py: the UI's values, by name, parsed into a DecodeRequest in one place."""

from __future__ import annotations

import math

import pytest

from app.settings import DecodeRequest, DecodeSettings, SettingsError

UI = dict(
    model_name="assets/models/sdar-tiny",
    block_length=8,
    steps=4,
    strategy="static",
    threshold=0.5,
    temperature=0.7,
    top_p=0.9,
    max_new_tokens=64,
    seed=3,
    pace_ms=120,
)


def test_values_are_read_by_name_whatever_their_order_and_type():
    req = DecodeRequest.from_ui(dict(reversed(list(UI.items()))))
    assert req.model_name == "assets/models/sdar-tiny" and req.pace_ms == 120.0
    assert req.settings == DecodeSettings(
        block_length=8,
        steps=4,
        strategy="static",
        threshold=0.5,
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=64,
        seed=3,
    )
    # Sliders send floats and numbers may come as text through the API: whole numbers become ints.
    s = DecodeSettings.from_ui({**UI, "block_length": 8.0, "steps": "4", "seed": 3.0})
    assert (s.block_length, s.steps, s.seed) == (8, 4, 3) and all(
        type(v) is int for v in (s.block_length, s.seed)
    )
    assert s.generate_kwargs() == dict(
        block_length=8,
        steps=4,
        strategy="static",
        threshold=0.5,
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=64,
        seed=3,
    )


def test_missing_names_keep_the_defaults_and_ar_keeps_the_sampling():
    assert DecodeSettings.from_ui({}) == DecodeSettings()
    s = DecodeSettings.from_ui({"block_length": 8, "steps": 8, "max_new_tokens": 8})
    assert (s.block_length, s.steps, s.max_new_tokens, s.strategy, s.threshold) == (8, 8, 8, "dynamic", 0.99)
    ar = DecodeSettings.from_ui(UI).as_ar()
    assert (ar.block_length, ar.steps, ar.strategy) == (1, 1, "ar") and (ar.temperature, ar.top_p) == (
        0.7,
        0.9,
    )
    assert DecodeRequest.from_ui({"model_name": "m", "pace_ms": None}).pace_ms == 0.0


@pytest.mark.parametrize(
    "over, match",
    [
        ({"steps": 5, "block_length": 4}, "between 1 and the block length \\(4\\), got 5"),
        ({"block_length": 0}, "block length must be in \\[1, 64\\], got 0"),
        ({"block_length": 65}, "block length"),
        ({"threshold": 0.0}, "threshold must be in \\(0, 1\\]"),
        ({"strategy": "magic"}, "strategy must be one of static, dynamic, sequential, entropy, got 'magic'"),
        ({"max_new_tokens": math.nan}, "max new tokens"),
        ({"max_new_tokens": 8.5}, "max new tokens must be a whole number, got 8.5"),
        ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
        ({"seed": -1}, "seed"),
        ({"pace_ms": 10_000}, "watch delay per frame \\(ms\\) must be in \\[0, 1000\\], got 10000"),
    ],
)
def test_a_bad_value_is_named_with_what_is_valid(over, match):
    with pytest.raises(SettingsError, match=match):
        DecodeRequest.from_ui({**UI, **over})


def test_the_controls_start_at_sdar_cores_values_and_accept_its_ranges():
    """One home for the decoding defaults and ranges (sdar_core.decode_params): DecodeSettings reads them, and the
    DecodeParams it builds is what generate receives."""
    from sdar_core import DecodeParams
    from sdar_core.decode_params import OPTIONS, start_value

    assert DecodeSettings() == DecodeSettings(
        **{f: start_value(f) for f in DecodeSettings.__dataclass_fields__}
    )
    assert start_value("temperature") == DecodeParams().temperature and start_value("threshold") == 0.99
    assert DecodeSettings().params(stop_token_ids=[3]) == DecodeParams(
        block_length=16, steps=16, threshold=0.99, stop_token_ids=[3]
    )
    top = OPTIONS["max_new_tokens"].hi
    assert DecodeSettings.from_ui({"max_new_tokens": top}).max_new_tokens == top
    with pytest.raises(SettingsError, match="max new tokens"):
        DecodeSettings.from_ui({"max_new_tokens": top + 1})
