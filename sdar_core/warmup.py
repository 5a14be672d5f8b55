"""Paying a server's one-time costs before its first request.

On a GPU the first decode of a shape captures its CUDA graphs (runner.py) and compiles or tunes its kernels (the
split-K attention, the fused q/k-norm + RoPE): about a second for the first shape on an H100 and a few hundred
milliseconds for each later one. A "shape" is (block length, cache bucket): the runner pool keys its static
buffers and graphs by the block length and by prompt + answer rounded up to a bucket (runner.bucket: 256, 512,
1024, ... positions), so one short decode per (block length, bucket) warms every later request that lands there,
whatever its prompt. Nothing is captured on the CPU (plain runner), so there is nothing to warm.

Most of a cold start's warm-up is Triton compiling kernels, one process compiling one kernel after another, and it
can only begin once the weights are loaded. `precompile` starts it earlier and wider: a few worker processes
(`python -m sdar_core.warmup`), started before the load, each warm a share of the shapes on a *stand-in* of the
model (its config with as few layers as show every kind of layer, zero weights, nothing read from disk). A kernel
specialises on one layer's shapes, the vocabulary and the dtype, never on the number of layers, so the stand-ins
compile every kernel the model's warm-up will ask for; Triton's kernel cache on disk (TRITON_CACHE_DIR) hands them to
the server, whose own warm-up then reads them back and captures its graphs.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch

from .config import ModelConfig
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
    # traced, as a server's decodes are (their steps go to the page): the step graphs it replays are the traced ones
    p = replace(params, max_new_tokens=WARM_BLOCKS * L, stop_token_ids=[], trace=True, temperature=0.0)
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


def stand_in(config: ModelConfig, device, dtype, fused: bool = False, weights: str | None = None):
    """A model of `config`'s shapes with zero weights and as few layers as show every kind of layer it has (dense,
    MoE): what `precompile`'s workers warm. `fused`: with fuse_projections (as the server's model will be);
    weights="fp8": with float8 projections (quantize_fp8, which fuses too), whose kernels differ."""
    from .loading import empty_model

    kinds, layers = set(), 0
    for i in range(config.num_hidden_layers):
        if config.layer_is_sparse(i) not in kinds:
            kinds.add(config.layer_is_sparse(i))
            layers = i + 1
    model = empty_model(replace(config, num_hidden_layers=layers)).to(dtype).to_empty(device=device)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.zero_()
    if config.tie_word_embeddings:  # to_empty gave the two shared tensors storage of their own
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(device)
    model = model.eval()
    if weights == "fp8":
        return model.quantize_fp8()
    return model.fuse_projections() if fused else model


def precompile(
    plan: list[tuple[ModelConfig, DecodeParams, WarmShape]],
    *,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    fused: bool = False,
    workers: int | None = None,
    weights: str | None = None,
) -> list[subprocess.Popen]:
    """Start worker processes that warm `plan` (each a model config and a (resolved params, shape) pair, as warm_up
    takes them) on stand-ins of the configs, the shapes dealt round-robin (`workers`: default one per 4 CPUs, at
    most 4, at most one per shape). Returns the processes at once: the caller loads its model meanwhile (`wait_for`
    collects them). Each writes a line per shape to its stderr (inherited)."""
    workers = workers or max(1, min(4, (os.cpu_count() or 1) // 4))
    workers = min(workers, len(plan))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `sdar_core` imports from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    procs = []
    for w in range(workers):
        job = pickle.dumps((str(device), dtype, fused, weights, plan[w::workers]))
        proc = subprocess.Popen([sys.executable, "-m", "sdar_core.warmup"], stdin=subprocess.PIPE, env=env)
        proc.stdin.write(job)
        proc.stdin.close()
        procs.append(proc)
    return procs


def wait_for(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    """The workers' exit codes, once they have ended (a worker still running after `timeout` s is killed: -9)."""
    codes, deadline = [], time.monotonic() + timeout
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def _worker() -> int:
    """`python -m sdar_core.warmup`: the job `precompile` pickled to stdin, warmed on stand-ins (one per config)."""
    device, dtype, fused, weights, plan = pickle.loads(sys.stdin.buffer.read())
    t0, models = time.perf_counter(), {}
    for config, params, shape in plan:
        key = repr(config)
        if key not in models:
            models[key] = stand_in(config, torch.device(device), dtype, fused, weights)
        seconds = warm_up(models[key], params, shape, filler_id=min(5, config.vocab_size - 2))
        print(f"precompile: {shape}, {params.strategy}: {seconds:.2f} s", file=sys.stderr, flush=True)
    print(f"precompile: {len(plan)} shapes in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
