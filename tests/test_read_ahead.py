"""Kernels.read_ahead: the block decoder launches the next blocks of a static schedule before it reads the tokens of
the one before them (on CUDA by default, forced here on the CPU, where the same code runs in the same order). Each
answer, its trace and its steps must be those of the decoder that reads every block before it launches the next;
a stop costs at most that many spare blocks; max_new_tokens costs none."""

from __future__ import annotations

import pytest
import torch
from test_decoding import brute_force, spy_steps
from test_joining import Scripted, prompt

from sdar_core import GenerationError, generate
from sdar_core.decoding import Arrival
from sdar_core.kernels import Kernels

from helpers import random_model, tiny_config


@pytest.fixture(scope="module")
def sdar():
    return random_model(tiny_config("sdar", block_size=4, layers=2))


def events(gen) -> list[tuple]:
    return [
        (
            e.row,
            e.block,
            e.step,
            e.block_start,
            e.block_state,
            e.committed,
            e.candidates,
            e.prompt_positions,
            e.final,
            e.stopped,
        )
        for e in gen.trace
    ]


@pytest.mark.parametrize("strategy,L,T", [("static", 4, 2), ("sequential", 4, 4), ("ar", 1, 1)])
@pytest.mark.parametrize("ahead", [1, 2, 8])
def test_reading_ahead_decodes_and_traces_what_reading_every_block_does(sdar, strategy, L, T, ahead):
    prompts = [prompt(5, 1), prompt(9, 2), prompt(3, 3)]
    kw = dict(max_new_tokens=20, block_length=L, steps=T, strategy=strategy, runner_mode="static")
    free = generate(sdar, prompts, **kw)
    stops = [free.row_tokens(0)[6], free.row_tokens(1)[11]]  # rows end at different blocks, one maybe never
    kw["stop_token_ids"] = stops
    seen: list = []
    read_each = generate(sdar, prompts, trace=True, kernels=Kernels(read_ahead=0), **kw)
    ahead_gen = generate(
        sdar, prompts, trace=True, on_step=seen.append, kernels=Kernels(read_ahead=ahead), **kw
    )
    assert ahead_gen.tokens.tolist() == read_each.tokens.tolist()
    assert min(ahead_gen.lengths) < 20  # a stop ended a row
    assert events(ahead_gen) == events(read_each) and seen == ahead_gen.trace
    assert ahead_gen.stats.steps_per_block == read_each.stats.steps_per_block
    # the blocks launched past a row's stop before it was read: at most `ahead` spare blocks of T steps
    spare = ahead_gen.stats.forwards - read_each.stats.forwards
    assert 0 <= spare <= ahead * T
    for r, ids in enumerate(prompts):  # and every answer is the cache-free decoder's, cut at the stop
        want = brute_force(sdar, ids, 20, L, T, "static" if strategy == "ar" else strategy)
        cut = next((i + 1 for i, t in enumerate(want) if t in stops), len(want))
        assert ahead_gen.row_tokens(r) == want[:cut]


def test_without_stop_tokens_reading_ahead_runs_no_spare_block(sdar):
    kw = dict(max_new_tokens=13, block_length=4, steps=2, strategy="static", runner_mode="static", trace=True)
    read_each = generate(sdar, [prompt(6, 4), prompt(2, 5)], kernels=Kernels(read_ahead=0), **kw)
    ahead = generate(sdar, [prompt(6, 4), prompt(2, 5)], kernels=Kernels(read_ahead=3), **kw)
    assert ahead.tokens.tolist() == read_each.tokens.tolist()
    assert (
        ahead.stats.forwards == read_each.stats.forwards
    )  # max_new_tokens is known before the blocks are read
    assert events(ahead) == events(read_each)


def test_a_block_is_read_once_the_next_one_is_launched_and_its_events_go_out_then(sdar, monkeypatch):
    """With one block ahead, block b's tokens are read (and its StepEvents sent) after every step of block b+1 is
    on the device: the host's work between two blocks overlaps the device's."""
    from sdar_core import steps

    log = spy_steps(monkeypatch, "denoise_step", lambda state: ("step", int(state.step)))
    real = steps.Readback.read

    def read(self):
        log.append(("read", None))
        return real(self)

    monkeypatch.setattr(steps.Readback, "read", read)
    kw = dict(max_new_tokens=12, block_length=4, steps=2, strategy="static", stop_token_ids=[95])
    generate(
        sdar,
        [[1, 2, 3, 4]],
        on_step=lambda e: log.append(("event", e.block)),
        kernels=Kernels(read_ahead=1),
        **kw,
    )
    what = [w if w != "event" else f"event{b}" for w, b in log]
    assert what == (
        ["step", "step", "step", "step", "read", "event0", "event0"]  # blocks 0 and 1 launched, block 0 read
        + ["step", "step", "read", "event1", "event1"]  # block 2 launched, block 1 read
        + ["read", "event2", "event2"]  # nothing left to launch: block 2 read
    )


def test_rows_join_a_decode_that_reads_ahead_and_answer_as_alone(sdar):
    first = [prompt(9, 1), prompt(5, 2)]
    plan = [(0, Arrival(prompt(3, 3), 10)), (8, Arrival(prompt(8, 4), 7)), (10, Arrival(prompt(6, 5), 12))]
    joining = Scripted(width=3, plan=list(plan))
    stop = generate(sdar, [first[1]], max_new_tokens=14, block_length=4, steps=2, strategy="static")
    stops = [stop.row_tokens(0)[5]]  # the second row frees its slot early
    gen = generate(
        sdar,
        first,
        max_new_tokens=14,
        block_length=4,
        steps=2,
        strategy="static",
        stop_token_ids=stops,
        runner_mode="static",
        join=joining,
        kernels=Kernels(read_ahead=2),
    )
    assert not joining.plan and len(joining.seated) == 3
    limits = [14, 14] + [a.max_new_tokens for _, a in joining.seated]
    prompts = first + [a.ids for _, a in joining.seated]
    for r, (ids, limit) in enumerate(zip(prompts, limits)):
        want = brute_force(sdar, ids, limit, 4, 2, "static")
        cut = next((i + 1 for i, t in enumerate(want) if t in stops), len(want))
        assert gen.row_tokens(r) == want[:cut], r


def test_reading_ahead_leaves_the_adaptive_schedules_alone_and_refuses_a_bad_count(sdar):
    kw = dict(max_new_tokens=9, block_length=4, steps=4, strategy="dynamic", threshold=0.5)
    assert (
        generate(sdar, [prompt(5, 6)], kernels=Kernels(read_ahead=4), **kw).stats.forwards
        == generate(sdar, [prompt(5, 6)], **kw).stats.forwards
    )
    for bad in (-1, 1.5):
        with pytest.raises(GenerationError, match="read_ahead"):
            generate(
                sdar, [prompt(5, 6)], max_new_tokens=4, strategy="static", kernels=Kernels(read_ahead=bad)
            )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["static", "ar"])
def test_cuda_the_default_read_ahead_decodes_and_traces_what_reading_every_block_does(strategy):
    """On CUDA a static decode reads one block late (eight for strategy "ar") through pinned copies and events: the
    same tokens, trace and steps as reading each block at once, graphed or not."""
    model = random_model(tiny_config("sdar", block_size=4, layers=2)).cuda()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
    kw = dict(max_new_tokens=40, block_length=4, steps=2, strategy=strategy, runner_mode="graph")
    free = generate(model, prompts, **kw)
    kw["stop_token_ids"] = [free.row_tokens(0)[9], free.row_tokens(2)[21]]
    read_each = generate(model, prompts, trace=True, kernels=Kernels(read_ahead=0), **kw)
    for kernels in (Kernels(), Kernels(graphed_step=False)):
        ahead = generate(model, prompts, trace=True, kernels=kernels, **kw)
        assert ahead.tokens.tolist() == read_each.tokens.tolist()
        assert events(ahead) == events(read_each)
        assert ahead.stats.steps_per_block == read_each.stats.steps_per_block
        assert ahead.stats.forwards >= read_each.stats.forwards
    assert min(read_each.lengths) < 40
