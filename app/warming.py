"""What the studio warms at start, and the worker processes that compile its kernels while the start model loads.

Imports torch and sdar_core but not Gradio: app/launch.py starts the workers from here before it imports the page
(Gradio's import takes seconds), so that they compile while the rest of the studio imports and the model loads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import torch

from sdar_core import DecodeParams
from sdar_core.prespawn import release, switched_off
from sdar_core.warmup import precompile, wait_for, warm_shapes

from .registry import ModelRegistry, ar_twin_name
from .scheduler import MAX_BATCH
from .settings import DecodeSettings

log = logging.getLogger("app.studio")

WARM_POSITIONS = 2048  # prompt + answer covered by the warm-up: buckets 256, 512, 1024, 2048 per block length
CROWD_POSITIONS = 512  # and, for the default settings, the batches a crowd's chats form (buckets 256 and 512)


def shapes_for(config, settings: DecodeSettings) -> list[tuple[DecodeParams, object]]:
    """What a visitor can pick, warmed: every trained block size with the static and the dynamic schedule (steps as
    the settings ask, at most the block), and the AR lane, up to WARM_POSITIONS positions; then, for an SDAR model,
    the default settings at the batch sizes a crowd forms, up to CROWD_POSITIONS."""
    context = config.max_position_embeddings
    params = [settings.as_ar().params()]
    if config.is_sdar:
        params = [
            replace(settings, strategy=s, block_length=block, steps=min(settings.steps, block)).params()
            for block in config.trained_blocks
            for s in ("static", "dynamic")
        ] + params
    shapes = [
        (p, shape)
        for p in (p.resolved(config) for p in params)
        for shape in warm_shapes([p], WARM_POSITIONS, context)
    ]
    if not config.is_sdar:  # the AR twin races in single lanes
        return shapes
    # A crowd's chats at the default settings decode together: the scheduler pads a batch to a power of two.
    chat = settings.params().resolved(config)
    batches = [1 << k for k in range(1, MAX_BATCH.bit_length()) if 1 << k <= MAX_BATCH]
    return shapes + [
        (chat, replace(shape, batch=rows))
        for rows in batches
        for shape in warm_shapes([chat], CROWD_POSITIONS, context)
    ]


def start_precompile(
    registry: ModelRegistry, name: str, settings: DecodeSettings | None = None, spawned: list | None = None
) -> int:
    """On a GPU, before `name` loads: worker processes compile the kernels the warm-up of `name` and its AR
    twin will ask for, on stand-ins of their configs (sdar_core.warmup.precompile), while this process loads
    the weights; a thread reaps them and logs when they are done. `spawned`: the workers app/launch.py started
    before its imports (sdar_core.prespawn), given the jobs or released. The workers used (0: off with
    SDAR_PRECOMPILE=0, on the CPU, or for a model whose config cannot be read without loading it)."""
    spawned = spawned or []
    if switched_off() or not torch.cuda.is_available() or registry.device not in (None, "cuda", "cuda:0"):
        release(spawned)
        return 0
    settings = settings if settings is not None else DecodeSettings()
    plan = [
        (config, p, shape)
        for config in filter(None, (registry.peek_config(n) for n in (name, ar_twin_name(name)) if n))
        for p, shape in shapes_for(config, settings)
    ]
    if not plan:
        release(spawned)
        return 0
    t0 = time.perf_counter()
    procs = precompile(
        plan, dtype=registry.dtype or torch.bfloat16, weights=registry.weights, spawned=spawned
    )

    def reap() -> None:
        codes = wait_for(procs)
        log.info(
            "kernels precompiled for %d decode shapes by %d processes in %.1f s (exit codes %s)",
            len(plan),
            len(procs),
            time.perf_counter() - t0,
            codes,
        )

    threading.Thread(target=reap, daemon=True, name="sdar-precompile").start()
    return len(procs)
