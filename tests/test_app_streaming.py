"""app/streaming.py: a lane's streamed events are generate's own trace, its last frame is the replay's, frames are
throttled in one place, Stop ends a lane at its next step, and a decode's error reaches the handler's thread."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from app import streaming
from app.render import frame_at, kept_answer_end
from app.settings import DecodeSettings
from app.streaming import Lane, stream
from sdar_core import GenerationError, generate
from sdar_core.trace import StepEvent

SETTINGS = DecodeSettings(block_length=4, steps=4, strategy="static", max_new_tokens=24)


@pytest.fixture(scope="module")
def loaded(studio_checkpoints):
    from app.registry import ModelRegistry

    sdar, _ = studio_checkpoints
    return ModelRegistry(models_dir=sdar.parent).get(str(sdar))


def lane_of(loaded, settings=SETTINGS) -> Lane:
    return Lane(loaded, loaded.tokenizer("Why is the sky blue?")["input_ids"], settings)


def steps_shown(lanes, **kw) -> list[int]:
    """How many steps the lane had taken at each yield of the stream."""
    return [len(lanes["a"].events) for _ in stream(lanes, threading.Event(), **kw)]


def test_a_lane_holds_generates_trace_and_a_last_frame_equal_to_the_replay(loaded):
    lane = lane_of(loaded)
    list(stream({"a": lane}, threading.Event()))
    ref = generate(
        loaded.model,
        torch.tensor([lane.ids]),
        stop_token_ids=loaded.stop_token_ids,
        trace=True,
        **SETTINGS.generate_kwargs(),
    )
    assert lane.state == "done" and lane.gen.row_tokens(0) == ref.row_tokens(0)
    assert lane.events == ref.trace and len(lane.events) == lane.builder.n
    end = kept_answer_end(ref.trace, ref.lengths[0])
    assert lane.frame == frame_at(ref.trace, len(ref.trace) - 1, answer_end=end)
    assert set(lane.pieces) >= {t for e in ref.trace for t in e.block_state}


def test_frames_wait_for_the_interval_except_the_first_and_the_lane_end(loaded, monkeypatch):
    """Frames follow wall time only (a block's end forces none: at hundreds of steps a second on a GPU every extra
    frame is interpreter time the decode thread waits for); a watch pace is a replay after the decode (replay.py)."""
    monkeypatch.setattr(streaming, "FRAME_INTERVAL", 3600.0)  # no step is due by time, after the first
    lane = lane_of(loaded)
    shown = steps_shown({"a": lane})
    assert shown == [1, len(lane.events)]
    assert len(lane.events) == 6 * 4  # static, 4 steps per block: every step was still decoded and recorded


def ev(i: int) -> StepEvent:
    return StepEvent(
        row=0,
        block=i,
        step=0,
        block_start=8 + i,
        block_state=[10 + i],
        committed=[0],
        committed_confidence=[0.5],
        masked_confidence={0: 0.5},
        candidates={0: 10 + i},
        prompt_positions=[],
        final=True,
        stopped=False,
    )


def fake_lane() -> Lane:
    model = SimpleNamespace(event_pieces=lambda e: {t: str(t) for t in e.block_state}, stop_token_ids=[])
    return Lane(model, [1, 2, 3], SETTINGS)


def test_stop_ends_the_running_lane_at_its_next_step_and_starts_no_other(monkeypatch):
    released = threading.Event()

    def decode(lane, on_step, turn=None, stop=None):  # one step, then wait for the consumer to press Stop
        on_step(ev(0))
        released.wait(30)
        on_step(ev(1))
        pytest.fail("the step after Stop was not refused")

    monkeypatch.setattr(streaming, "decode", decode)
    lanes, stop = {"a": fake_lane(), "b": fake_lane()}, threading.Event()
    for _ in stream(lanes, stop):
        stop.set()
        released.set()
    assert lanes["a"].state == "stopped" and lanes["a"].gen is None and lanes["a"].events == [ev(0)]
    assert lanes["a"].frame is not None and lanes["b"].state == "waiting" and not lanes["b"].events


@pytest.mark.parametrize("parallel", [False, True])
def test_lanes_run_one_after_the_other_or_together(monkeypatch, parallel):
    log, together = [], threading.Barrier(2, timeout=30)

    def decode(lane, on_step, turn=None, stop=None):
        log.append(("start", lane))
        if parallel:
            together.wait()  # returns only when both lanes run at once
        on_step(ev(0))
        log.append(("end", lane))
        return SimpleNamespace(lengths=[1])

    monkeypatch.setattr(streaming, "decode", decode)
    lanes = {"a": fake_lane(), "b": fake_lane()}
    list(stream(lanes, threading.Event(), parallel=parallel))
    assert all(lane.state == "done" and lane.events == [ev(0)] for lane in lanes.values())
    if not parallel:
        assert log == [("start", lanes["a"]), ("end", lanes["a"]), ("start", lanes["b"]), ("end", lanes["b"])]


def test_a_decode_error_is_raised_in_the_handlers_thread(loaded):
    too_long = Lane(loaded, [5] * 600, SETTINGS)  # the fixture's context is 512
    with pytest.raises(GenerationError, match="context"):
        list(stream({"a": too_long}, threading.Event()))
