"""app/run.py's pacing: one page gets a message at most every FRAME_INTERVAL; a crowd's pages together get at most
MESSAGE_RATE a second (each fewer, larger ones), so that a crowd's messages do not take the interpreter the decode
loop needs. A followed run is counted while it is followed, and not after, however its follower ends."""

from __future__ import annotations

import threading

import pytest

from app.registry import ModelRegistry
from app.run import FOLLOWING, MESSAGE_RATE, Following
from app.settings import DecodeRequest, DecodeSettings
from app.streaming import FRAME_INTERVAL
from app.studio import Studio


def test_the_interval_between_messages_grows_with_the_runs_followed_together():
    f = Following()
    assert f.interval() == FRAME_INTERVAL
    with f:
        assert f.interval() == FRAME_INTERVAL  # one page: its own pace
        with f, f, f:
            assert f.count == 4
    assert f.count == 0
    for n in (1, 2, 8, 16, 64):
        f.count = n
        assert f.interval() == pytest.approx(max(FRAME_INTERVAL, n / MESSAGE_RATE))
        assert n / f.interval() <= MESSAGE_RATE + 1e-9  # the crowd's rate stays bounded
    assert Following().interval() * MESSAGE_RATE <= 2  # a lone page is not slowed: 1/20 s at 40 a second


def test_a_run_counts_as_followed_until_its_follower_ends_or_is_dropped(studio_checkpoints):
    sdar, _ = studio_checkpoints
    studio = Studio(registry=ModelRegistry(models_dir=sdar.parent))
    settings = DecodeSettings(block_length=4, steps=2, strategy="static", max_new_tokens=16)
    before = FOLLOWING.count

    def start():
        return studio.start(
            DecodeRequest(str(sdar), settings), [{"role": "user", "content": "Hi."}], threading.Event()
        )

    run = start()
    messages = 0
    for _ in run.follow():
        assert FOLLOWING.count == before + 1
        messages += 1
    assert FOLLOWING.count == before and messages >= 1 and run.stats is not None
    dropped = start()
    follower = dropped.follow()
    next(follower)  # a page that goes away after its first message: Gradio closes the generator
    assert FOLLOWING.count == before + 1
    follower.close()
    assert FOLLOWING.count == before
