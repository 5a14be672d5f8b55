"""The studio's GPU paths, on CUDA (marked `cuda`, run on the device; CI has no GPU): the warm-up captures graphs
in the background while a visitor is served between two shapes, and the scheduler's batches (CUDA graphs, the
batch padded to a power of two) give every row the tokens `generate` gives it alone."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = [
    "Why is the sky blue?",
    "What is 47 + 38?",
    "Tell me a story about a very small robot.",
    "Count to ten.",
]


@pytest.fixture(scope="module")
def registry(studio_checkpoints):
    from app.registry import ModelRegistry

    sdar, _ = studio_checkpoints
    # float32: a row's argmax in a batch and alone then agree exactly (bf16 sums differ in their last bits)
    return ModelRegistry(models_dir=sdar.parent, device="cuda", dtype=torch.float32)


def test_the_warm_up_captures_on_cuda_while_a_visitor_is_served(registry, studio_checkpoints, caplog):
    from app import studio as studio_mod
    from app.settings import DecodeRequest, DecodeSettings

    sdar, _ = studio_checkpoints
    loaded = registry.get(str(sdar))
    assert loaded.model.device.type == "cuda"
    warm, studio = studio_mod.Warmup(), studio_mod.Studio(registry=registry)
    with caplog.at_level(logging.INFO, logger="app.studio"):
        assert warm.start(registry, str(sdar))
        with torch.inference_mode():
            run = studio.start(
                DecodeRequest(str(sdar), DecodeSettings(max_new_tokens=16)),
                [{"role": "user", "content": "Hi"}],
                threading.Event(),
            )
            list(run.follow())
        deadline = time.monotonic() + 300
        while warm.running and time.monotonic() < deadline:
            time.sleep(0.05)
    assert run.stats is not None and run.stats.new_tokens >= 1
    assert warm.done == warm.total > 0
    assert not any("failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("strategy, block, steps", [("static", 4, 2), ("dynamic", 4, 4)])
def test_a_batch_on_cuda_gives_each_row_its_tokens_alone(
    registry, studio_checkpoints, strategy, block, steps
):
    from app.scheduler import DecodeScheduler, Finished, Job
    from sdar_core import DecodeParams, generate

    sdar, _ = studio_checkpoints
    loaded = registry.get(str(sdar))
    scheduler = DecodeScheduler("cuda-test", lock=threading.Lock())
    jobs = []
    for prompt, n in zip(PROMPTS[:3], (24, 9, 16)):  # 3 rows: padded to a batch of 4
        p = DecodeParams(
            max_new_tokens=n,
            block_length=block,
            steps=steps,
            strategy=strategy,
            threshold=0.5,
            stop_token_ids=loaded.stop_token_ids,
        ).resolved(loaded.config)
        jobs.append(Job(loaded, loaded.tokenizer(prompt)["input_ids"], p))
    with scheduler._cv:
        for job in jobs:
            scheduler.submit(job)
    for job in jobs:
        updates = []
        while not updates or not isinstance(updates[-1], Finished):
            updates.append(job.updates.get(timeout=120))
        alone = generate(loaded.model, [job.ids], job.params)
        assert updates[0].batch == 3 and updates[-1].tokens == alone.row_tokens(0)
    assert scheduler.batches == 1
