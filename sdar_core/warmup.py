"""Paying a server's one-time costs before its first request.

On a GPU the first decode of a shape captures its CUDA graphs (runner.py) and compiles or tunes its kernels (the
split-K attention, the fused q/k-norm + RoPE): about a second for the first shape on an H100 and a few hundred
milliseconds for each later one. A "shape" is (block length, cache bucket): the runner pool keys its static
buffers and graphs by the block length and by prompt + answer rounded up to a bucket (runner.bucket: 256, 512,
1024, ... positions), so one short decode per (block length, bucket) warms every later request that lands there,
whatever its prompt. Nothing is captured on the CPU (plain runner), so there is nothing to warm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from .decode_params import DecodeParams
from .decoding import generate
from .runner import BUCKET, bucket, default_mode

# decoded blocks: the first forward of a block (Q = L) and the fused ones (Q = 2L, cache write)
WARM_BLOCKS = 3


@dataclass(frozen=True)
class WarmShape:
    block_length: int  # 1 for the "ar" strategy
    bucket: int  # cache positions: runner.bucket of the positions a decode uses
    batch: int = 1  # rows decoded together (a server that batches its visitors pads batches to a few sizes)

    def __str__(self) -> str:
        rows = f", batch {self.batch}" if self.batch > 1 else ""
        return f"block {self.block_length}, cache {self.bucket} positions{rows}"


def needs_warm_up(model) -> bool:
    """Whether decodes of this model capture graphs (CUDA, dense): a CPU model has nothing to warm."""
    return default_mode(model) != "plain"


def warm_shapes(params: Iterable[DecodeParams], max_positions: int, context: int) -> list[WarmShape]:
    """Every (block length, bucket) the decodes `params` (resolved: block lengths filled in) can reach with
    prompt + answer up to max_positions (capped by the model's context)."""
    top, size, buckets = min(max_positions, context), BUCKET, []
    while not buckets or buckets[-1] < top:
        buckets.append(bucket(min(size, top), context))
        size *= 2
    return [WarmShape(L, b) for L in sorted({p.block_length for p in params}) for b in buckets]


def warm_up(model, params: DecodeParams, shape: WarmShape, filler_id: int) -> float:
    """One short untimed decode with `params` (resolved) that lands in `shape`; the seconds it took."""
    L = shape.block_length
    # prompt + WARM_BLOCKS * L then ends one block before the bucket's end (past the previous bucket, half its size).
    prompt_len = max(
        1, min(shape.bucket - (WARM_BLOCKS + 1) * L, model.config.max_position_embeddings - 2 * L)
    )
    p = replace(params, max_new_tokens=WARM_BLOCKS * L, stop_token_ids=[], trace=False, temperature=0.0)
    t0 = time.perf_counter()
    generate(model, [[filler_id] * prompt_len] * shape.batch, p)
    return time.perf_counter() - t0


def warm_all(
    model,
    params: Iterable[DecodeParams],
    max_positions: int,
    filler_id: int,
    on_shape: Callable[[int, int, WarmShape, float], None] | None = None,
) -> list[tuple[WarmShape, float]]:
    """warm_up every shape of warm_shapes(params, max_positions); on_shape(i, n, shape, seconds) after each."""
    params = [p.resolved(model.config) for p in params]
    shapes = warm_shapes(params, max_positions, model.config.max_position_embeddings)
    by_block = {p.block_length: p for p in params}
    done = []
    for i, shape in enumerate(shapes):
        seconds = warm_up(model, by_block[shape.block_length], shape, filler_id)
        done.append((shape, seconds))
        if on_shape is not None:
            on_shape(i, len(shapes), shape, seconds)
    return done
