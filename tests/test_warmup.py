"""sdar_core/warmup.py: the shapes a server warms are the ones its requests reach, and a warm-up decode lands in
the runner pool's entry for its shape, so that the first real request finds its runner (graphs included on a GPU)
ready and decodes exactly what a cold decode gives."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sdar_core import DecodeParams, generate
from sdar_core.kernels import Kernels
from sdar_core.runner import BUCKET, RUNNER_POOL, bucket
from sdar_core.warmup import WarmShape, needs_warm_up, warm_all, warm_shapes

from helpers import random_model, tiny_config


def test_shapes_cover_every_block_length_and_bucket_up_to_the_positions_asked_and_the_context():
    params = [
        DecodeParams(block_length=4),
        DecodeParams(strategy="ar", block_length=1),
        DecodeParams(block_length=4),
    ]
    assert warm_shapes(params, 2 * BUCKET, 4096) == [
        WarmShape(1, BUCKET),
        WarmShape(1, 2 * BUCKET),
        WarmShape(4, BUCKET),
        WarmShape(4, 2 * BUCKET),
    ]
    # buckets double: one position past 2 buckets needs the 4-bucket buffer; the context caps the last one
    assert [s.bucket for s in warm_shapes(params[:1], 2 * BUCKET + 1, 4096)] == [
        BUCKET,
        2 * BUCKET,
        4 * BUCKET,
    ]
    assert [s.bucket for s in warm_shapes(params[:1], 10 * BUCKET, 700)] == [BUCKET, 2 * BUCKET, 700]


def test_buckets_double_from_256_up_to_the_context():
    assert [bucket(n, 4096) for n in (1, 256, 257, 600, 2048, 3000, 5000)] == [
        256,
        256,
        512,
        1024,
        2048,
        4096,
        5000,
    ]
    assert bucket(600, 700) == 700 and bucket(100, 128) == 128


def test_a_cpu_model_has_nothing_to_warm():
    assert not needs_warm_up(random_model(tiny_config()))


def test_warm_up_fills_the_pool_entries_that_later_requests_use_and_leaves_their_tokens_unchanged():
    torch.manual_seed(0)
    model = random_model(tiny_config(max_position_embeddings=2 * BUCKET))
    static = dict(runner_mode="static", max_new_tokens=24, block_length=4, steps=4, strategy="dynamic")
    seen = []
    done = warm_all(
        model,
        [DecodeParams(**static), DecodeParams(**{**static, "strategy": "ar"})],
        max_positions=2 * BUCKET,
        filler_id=5,
        on_shape=lambda i, n, shape, s: seen.append((i, n, shape)),
    )
    assert [shape for shape, _ in done] == [
        WarmShape(1, BUCKET),
        WarmShape(1, 2 * BUCKET),
        WarmShape(4, BUCKET),
        WarmShape(4, 2 * BUCKET),
    ]
    assert seen == [(i, 4, shape) for i, (shape, _) in enumerate(done)]
    pool = RUNNER_POOL._pools[model.model]
    warmed = {(key[1], key[2]) for key in pool}  # (bucket, block size)
    assert warmed == {(BUCKET, 1), (2 * BUCKET, 1), (BUCKET, 4), (2 * BUCKET, 4)}
    runners = set(map(id, pool.values()))
    for prompt_len, strategy in (
        (10, "dynamic"),
        (BUCKET + 40, "dynamic"),
        (30, "ar"),
        (2 * BUCKET - 30, "ar"),
    ):
        prompt = torch.randint(0, 90, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
        warm = generate(model, prompt, **{**static, "strategy": strategy})
        cold = generate(model, prompt, **{**static, "strategy": strategy, "runner_mode": "plain"})
        assert torch.equal(warm.tokens, cold.tokens)
    assert set(map(id, pool.values())) == runners  # every request found its warmed runner


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_warm_up_captures_every_warmed_runners_prefill_graph():
    """With Kernels.graphed_prefill, on a GPU every warmed runner holds the graph a short prompt's prefill replays
    (runner.padded_prefill), the shapes whose warm prompt was prefilled op by op included: a visitor's first short
    prompt captures nothing."""
    model = random_model(tiny_config(max_position_embeddings=4 * BUCKET)).cuda()
    params = DecodeParams(
        max_new_tokens=24, block_length=4, steps=4, strategy="static", kernels=Kernels(graphed_prefill=True)
    )
    warm_all(model, [params, replace(params, strategy="ar")], max_positions=4 * BUCKET, filler_id=5)
    runners = RUNNER_POOL.runners(model)
    assert {(r.block_size, r.total) for r in runners} == {(L, b) for L in (1, 4) for b in (256, 512, 1024)}
    assert all(sorted(r.prefill_graphs) == [False] for r in runners)
    captured = {id(r): dict(r.prefill_graphs) for r in runners}
    for prompt_len in (10, 37):
        generate(model, [list(range(3, 3 + prompt_len))], params)
    assert {id(r): dict(r.prefill_graphs) for r in RUNNER_POOL.runners(model)} == captured


def wait_until_warm(warm, seconds: float = 120) -> None:
    import time

    deadline = time.monotonic() + seconds
    while warm.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not warm.running


def test_the_studio_warms_its_start_model_and_twin_shape_by_shape_in_the_background(
    studio_checkpoints, monkeypatch, caplog
):
    """On the CPU nothing is warmed; with warming forced (as on a GPU) every shape of the default settings, the
    race's AR lane and the AR twin is decoded once, each holding the device, with a log line."""
    import logging

    from app import studio as studio_mod
    from app.registry import ModelRegistry
    from app.streaming import DEVICE

    sdar, _ = studio_checkpoints
    registry = ModelRegistry(models_dir=sdar.parent)
    registry.get(str(sdar))
    # Nothing to capture on the CPU; on the GPU machine the warm-up starts at once (and is joined below).
    first = studio_mod.Warmup()
    assert first.start(registry, str(sdar)) == studio_mod.needs_warm_up(registry.get(str(sdar)).model)
    wait_until_warm(first)
    held = []
    real_warm_up = studio_mod.warm_up
    monkeypatch.setattr(studio_mod, "needs_warm_up", lambda model: True)
    monkeypatch.setattr(studio_mod, "warm_up", lambda *a: (held.append(DEVICE.locked()), real_warm_up(*a))[1])
    warm = studio_mod.Warmup()
    with caplog.at_level(logging.INFO, logger="app.studio"):
        assert warm.start(registry, str(sdar))
        wait_until_warm(warm)
    # sdar-tiny: its trained block 4, static and dynamic, and block 1 (the race's AR lane) x buckets 256, 512
    # (context 512), then the default settings (dynamic, block 16) at batches 2, 4, 8, 16 x 2 buckets;
    # ar-tiny: block 1 x 2.
    assert (warm.done, warm.total, warm.running, warm.note()) == (16, 16, False, "")
    assert held == [True] * 16 and not DEVICE.locked()
    lines = [r.getMessage() for r in caplog.records if "GPU warm-up" in r.getMessage()]
    assert [line.split(":")[0] for line in lines[:16]] == [f"GPU warm-up {i}/16" for i in range(1, 17)]
    shapes = [line.split(": ", 1)[1].rsplit(":", 1)[0] for line in lines[:16]]
    assert shapes[:4] == [
        f"sdar-tiny, {s}, block 4, cache {b} positions" for s in ("static", "dynamic") for b in (256, 512)
    ]
    assert shapes[6:14] == [
        f"sdar-tiny, dynamic, block 16, cache {b} positions, batch {n}"
        for n in (2, 4, 8, 16)
        for b in (256, 512)
    ]
    assert sum(": ar-tiny," in line for line in lines) == 2 and "GPU warm-up done" in lines[-1]


def test_a_visitor_who_comes_during_the_warm_up_is_served_and_the_warm_up_goes_on(
    studio_checkpoints, monkeypatch, caplog
):
    """The warm-up takes the device one shape at a time; a chat sent meanwhile (from a handler under
    torch.inference_mode) is decoded between two shapes, on the same pool of static runners, and every shape is
    still warmed. (Mixing grad modes on one pooled runner is tested at its root in test_grad_modes.py.)"""
    import logging
    import threading
    import time

    from app import studio as studio_mod
    from app.registry import ModelRegistry
    from app.settings import DecodeRequest, DecodeSettings

    sdar, _ = studio_checkpoints
    registry = ModelRegistry(models_dir=sdar.parent)
    registry.get(str(sdar))
    import sdar_core.decoding

    real_warm_up, started = studio_mod.warm_up, threading.Event()

    def warm_up(*args):
        started.set()
        return real_warm_up(*args)

    # every decode on pooled static runners, as graphs are on a GPU
    monkeypatch.setattr(sdar_core.decoding, "default_mode", lambda model: "static")
    monkeypatch.setattr(studio_mod, "needs_warm_up", lambda model: True)
    monkeypatch.setattr(studio_mod, "warm_up", warm_up)
    warm, studio = studio_mod.Warmup(), studio_mod.Studio(registry=registry)
    with caplog.at_level(logging.INFO, logger="app.studio"):
        assert warm.start(registry, str(sdar))
        assert started.wait(30)
        with torch.inference_mode():  # a handler's mode
            run = studio.start(
                DecodeRequest(str(sdar), DecodeSettings(max_new_tokens=8)),
                [{"role": "user", "content": "Hi"}],
                threading.Event(),
            )
            list(run.follow())
        assert run.stats is not None and run.stats.new_tokens >= 1
        deadline = time.monotonic() + 60
        while warm.running and time.monotonic() < deadline:
            time.sleep(0.05)
    assert warm.done == warm.total == 16
    assert not any("failed" in r.getMessage() for r in caplog.records)
