"""The race's headline and the sweep's note say only what the measurements support: the forwards saved first (the
same on any machine), a speed-up only when the timed repeats' ranges do not overlap, never a ratio below 1 called
a speed-up, and wall-clock figures marked unreliable when the repeats disagree."""

from __future__ import annotations

import pytest

from app.race import Race, Timing, speedup_markdown, timing_verdict
from sdar_core.trace import Stats


def timing(strategy: str, forwards: int, speeds: list[float], tokens: int = 60) -> Timing:
    """Timed runs of `tokens` tokens in `forwards` forwards at each of `speeds` tokens/s."""
    block = 1 if strategy == "ar" else 16
    return Timing(
        runs=[
            Stats(
                strategy=strategy,
                block_length=block,
                steps=block,
                batch_size=1,
                prompt_tokens=20,
                new_tokens=tokens,
                forwards=forwards,
                prefill_forwards=1,
                seconds=tokens / v,
                prefill_seconds=0.01,
            )
            for v in speeds
        ]
    )


# The four readings of identical runs: 0.81x, 1.93x, 2.86x and 2.88x, from overlapping noisy repeats.
NOISY = [([40.0, 95.0, 180.0], [60.0, 110.0, 170.0]), ([30.0, 160.0, 200.0], [50.0, 80.0, 150.0])]


@pytest.mark.parametrize("sdar_speeds, ar_speeds", NOISY)
def test_overlapping_repeats_are_no_measurable_difference_and_forwards_come_first(sdar_speeds, ar_speeds):
    text = speedup_markdown({"ar": timing("ar", 60, ar_speeds), "sdar": timing("dynamic", 12, sdar_speeds)})
    head = text.splitlines()[0]
    assert head == "### SDAR vs AR on the same weights: **5.00×** fewer forwards"
    assert "no measurable difference on this machine (busy CPU)" in text
    assert "speed-up" not in text and "faster" not in text


def test_a_speed_up_only_when_the_ranges_do_not_overlap_and_never_below_one():
    fast = timing_verdict(
        timing("dynamic", 12, [300.0, 310.0, 320.0]), timing("ar", 60, [100.0, 105.0, 110.0])
    )
    assert fast == "**2.95×** faster"
    slow = timing_verdict(timing("dynamic", 12, [50.0, 52.0, 55.0]), timing("ar", 60, [100.0, 105.0, 110.0]))
    assert slow == "**2.02×** slower"  # a ratio below 1 is a slow-down, said as one
    text = speedup_markdown(
        {"ar": timing("ar", 60, [100.0, 105.0, 110.0]), "sdar": timing("dynamic", 12, [50.0, 52.0, 55.0])}
    )
    assert "slower" in text and "speed-up" not in text


def test_one_timed_run_is_never_a_verdict_on_speed():
    text = speedup_markdown({"ar": timing("ar", 60, [100.0]), "sdar": timing("dynamic", 12, [300.0])})
    assert "One timed run cannot tell a difference from noise" in text


def test_the_sweep_marks_wall_clock_figures_unreliable_when_repeats_disagree():
    assert timing("dynamic", 12, [100.0, 120.0, 140.0]).steady
    assert not timing("dynamic", 12, [20.0, 100.0, 180.0]).steady
    assert Race.sweep_note(0, 5) == ""
    assert Race.sweep_note(2, 5).startswith(
        "⚠️ Wall-clock figures are unreliable here: the repeats of 2 of 5 points"
    )
