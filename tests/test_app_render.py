"""app/render.py on StepEvents built by hand: frames (live, finished, replayed), HTML, per-block table."""

from __future__ import annotations

import re

import pytest

from app.render import (
    MASK_GLYPH,
    FrameBuilder,
    answer_start,
    block_table,
    confidence_colour,
    frame_at,
    frame_html,
    frame_text,
    kept_answer_end,
    watch_frames,
)
from sdar_core.trace import StepEvent

M = 99  # mask id
PIECES = {10: "A", 11: "B", 12: "C", 13: "D", 14: "E", 15: "F", 16: "<|im_end|>", 1: "p", 2: "q"}


def ev(block, step, start, state, committed, confs, masked_conf, prompt=(), final=False, stopped=False):
    return StepEvent(
        row=0,
        block=block,
        step=step,
        block_start=start,
        block_state=list(state),
        committed=list(committed),
        committed_confidence=list(confs),
        masked_confidence=dict(masked_conf),
        candidates={o: state[o] if state[o] != M else 10 for o in masked_conf},
        prompt_positions=list(prompt),
        final=final,
        stopped=stopped,
    )


@pytest.fixture
def trace():
    """Prompt of 6 tokens, block length 4: block 0 at 4 holds 2 prompt tokens (offsets 0, 1) and 2 masked;
    block 1 at 8 has 4 masked positions, decoded 2 + 1 + 1; the stop token lands at position 11."""
    return [
        ev(0, 0, 4, [1, 2, 10, M], [2], [0.95], {2: 0.95, 3: 0.40}, prompt=[0, 1]),
        ev(0, 1, 4, [1, 2, 10, 11], [3], [0.60], {3: 0.60}, prompt=[0, 1], final=True),
        ev(1, 0, 8, [12, M, 13, M], [0, 2], [0.92, 0.91], {0: 0.92, 1: 0.30, 2: 0.91, 3: 0.20}),
        ev(1, 1, 8, [12, 14, 13, M], [1], [0.50], {1: 0.50, 3: 0.10}),
        ev(1, 2, 8, [12, 14, 13, 16], [3], [0.70], {3: 0.70}, final=True, stopped=True),
    ]


def test_answer_starts_after_the_prompt_tail_of_the_first_block(trace):
    assert answer_start(trace) == 6


def test_frame_shows_mask_glyphs_exactly_where_positions_are_still_masked(trace):
    f = frame_at(trace, 3)
    assert [c.position for c in f.done] == [6, 7]  # block 0 is finished, prompt offsets left out
    assert [c.token for c in f.block] == [12, 14, 13, None]
    html = frame_html(f, PIECES)
    body = html.split('class="sdar-frame"')[1].split('class="sdar-legend"')[0]
    assert body.count(MASK_GLYPH) == 1
    assert frame_text(f, PIECES) == "AB" + "CED" + MASK_GLYPH


def test_frame_highlights_only_the_positions_committed_at_its_step(trace):
    f = frame_at(trace, 2)
    assert [c.fresh for c in f.block] == [True, False, True, False]
    html = frame_html(f, PIECES)
    fresh = re.findall(r'class="sdar-tok sdar-fresh"[^>]*>([^<]*)<', html)
    assert fresh == ["C", "D"]
    assert not any(c.fresh for c in f.done)


def test_each_token_is_coloured_by_the_confidence_it_was_committed_with(trace):
    f = frame_at(trace, 4)
    confs = {c.position: c.confidence for c in f.done + f.block}
    assert confs == {6: 0.95, 7: 0.60, 8: 0.92, 9: 0.50, 10: 0.91, 11: 0.70}
    html = frame_html(f, PIECES)
    assert f"background:{confidence_colour(0.92)}" in html and f"background:{confidence_colour(0.5)}" in html
    assert confidence_colour(0.0) != confidence_colour(1.0)


def test_positions_after_the_kept_answer_are_marked_discarded(trace):
    f = frame_at(trace, 4, answer_end=10)  # the answer was cut after position 9
    assert [c.discarded for c in f.block] == [False, False, True, True]
    assert frame_text(f, PIECES) == "ABCE"
    assert frame_text(frame_at(trace, 4), PIECES, hidden=[16]) == "ABCED"


def test_frame_at_clamps_to_the_trace(trace):
    assert [frame_at(trace, i).step for i in range(5)] == [0, 1, 2, 3, 4]
    assert frame_at(trace, 99).step == 4 and frame_at(trace, -5).step == 0
    assert frame_at([], 0).step == -1


def test_an_empty_trace_gives_an_empty_table():
    assert block_table([]).empty


def test_block_table_rows_are_steps_used_and_tokens_per_step(trace):
    df = block_table(trace)
    assert df["block"].tolist() == [1, 2]  # counted from 1, as the slider and the live view count
    assert df["steps"].tolist() == [2, 3]
    assert df["global steps"].tolist() == ["1–2", "3–5"]
    assert df["tokens"].tolist() == [2, 4]
    assert df["tokens per step (mean)"].tolist() == ["1 · 1 (1.00)", "2 · 1 · 1 (1.33)"]
    assert df["min confidence"].tolist() == [0.6, 0.5]


def test_ar_trace_of_one_token_blocks_renders_each_token_as_its_own_block():
    ar = [ev(i, 0, 5 + i, [10 + i], [0], [0.5 + i / 10], {0: 0.5 + i / 10}, final=True) for i in range(3)]
    f = frame_at(ar, 2)
    assert [c.token for c in f.done] == [10, 11] and [c.token for c in f.block] == [12]
    assert block_table(ar)["steps"].tolist() == [1, 1, 1]


def test_builder_finishes_its_last_frame_like_a_replay_with_the_answer_end(trace):
    builder = FrameBuilder()
    live = [builder.push(e) for e in trace]
    assert not any(c.discarded for c in live[-1].done + live[-1].block)
    end = kept_answer_end(trace, 4)  # a 4-token answer: positions 6..9 kept, 10 and 11 follow the stop
    assert end == 10 and kept_answer_end(trace, None) is None and kept_answer_end([], 4) is None
    finished = builder.finish(end)
    assert finished is live[-1]  # finished in place, not rebuilt
    assert finished == frame_at(trace, len(trace) - 1, answer_end=end)
    assert [c.discarded for c in finished.block] == [False, False, True, True]
    assert FrameBuilder().finish(end) is None


def test_the_stats_line_explains_nfe_tpf_and_tau_in_one_line():
    from app.render import stats_markdown
    from sdar_core.decoding import Stats

    stats = Stats(
        strategy="dynamic",
        block_length=4,
        steps=4,
        batch_size=1,
        prompt_tokens=5,
        new_tokens=12,
        forwards=4,
        prefill_forwards=1,
        seconds=0.1,
        prefill_seconds=0.01,
    )
    text = stats_markdown(stats)
    assert "**NFE** 4" in text and "**TPF** 3.00" in text
    glossary = text.split("<small>")[1]
    assert "NFE: forward passes" in glossary and "TPF: tokens per forward" in glossary and "τ:" in glossary


def test_the_legend_explains_masks_new_tokens_the_block_and_struck_out_text():
    from app.render import legend_html

    text = legend_html()
    assert "still masked" in text and "committed at this step" in text and "block in flight" in text
    assert "line-through" in text and "decoded after the end: dropped" in text and "the answer ends" in text


def test_a_replay_opens_every_block_fully_masked_before_its_first_step(trace):
    shown = watch_frames(trace)
    assert [(f.opening, f.step) for f in shown] == [
        (True, 0),
        (False, 0),
        (False, 1),
        (True, 2),
        (False, 2),
        (False, 3),
        (False, 4),
    ]
    opening = shown[3]  # block 2 before its first step: block 1 finished, its four positions masked
    assert [c.token for c in opening.done] == [10, 11] and [c.token for c in opening.block] == [None] * 4
    assert [c.confidence for c in opening.block] == [
        0.92,
        0.30,
        0.91,
        0.20,
    ]  # the model's guesses at that step
    assert [f for f in shown if not f.opening] == [
        frame_at(trace, i) for i in range(len(trace))
    ]  # the other frames are the steps themselves
    html = frame_html(opening, PIECES, total=5)
    assert "block 2 opens, 4 positions masked · next: step 3 of 5" in html and html.count(MASK_GLYPH) >= 4


def test_steps_and_blocks_are_counted_from_one_in_the_frame_title(trace):
    html = frame_html(frame_at(trace, 2), PIECES, total=5)
    assert "step 3 of 5 · block 2, its denoising step 1" in html
    assert "step 5 of 5 · block 2, its denoising step 3 (block done: nothing masked)" in frame_html(
        frame_at(trace, 4), PIECES, total=5
    )
    assert "committed at step 1" in frame_html(
        frame_at(trace, 0), PIECES
    )  # a token's tooltip counts the same way


def test_what_follows_a_committed_stop_token_is_struck_out_while_the_decode_runs():
    """The race lanes and the live view strike out the positions after <|im_end|> as soon as it is committed,
    as the chat leaves them out: the first committed stop token bounds the answer whatever comes before it."""
    trace = [
        ev(0, 0, 8, [12, 16, M, M], [0, 1], [0.9, 0.9], {0: 0.9, 1: 0.9, 2: 0.2, 3: 0.1}),
        ev(0, 1, 8, [12, 16, 13, 14], [2, 3], [0.5, 0.5], {2: 0.5, 3: 0.5}, final=True),
    ]
    builder = FrameBuilder(stop_ids=[16])
    first, last = (builder.push(e) for e in trace)
    assert [c.discarded for c in last.block] == [False, False, True, True]
    assert "sdar-discarded" in frame_html(last, PIECES) and "line-through" in frame_html(last, PIECES)
    assert frame_text(last, PIECES, hidden=[16]) == "C"
    assert not any(c.discarded for c in FrameBuilder().push(trace[0]).block)  # no stop ids: nothing known yet
