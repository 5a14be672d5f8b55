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

The workers and the server divide the compiling kernel by kernel (`KernelClaims`): most kernels lie on every shape's
path (the GEMMs, the fused norms), so workers that each warmed their shapes whole compiled the same kernels side by
side, and the server, arriving before them, a third time. Each process now claims a kernel in a shared folder before
Triton compiles it (Triton's compile hooks, `triton.knobs.runtime`): a worker skips a kernel another process has
claimed (a stand-in's numbers are never read, so the launch is left out) and goes on to the next one on its path; the
server waits for a kernel a worker is compiling, then reads it from the cache, and compiles itself only what nobody
has claimed. Every kernel is compiled once, by as many processes at a time as there are.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from .config import ModelConfig
from .decode_params import DecodeParams
from .decoding import generate
from .prespawn import default_workers, release, spawn
from .runner import BUCKET, RUNNER_POOL, bucket, default_mode

try:  # Triton ships with CUDA builds of torch; without it there is nothing to compile
    import triton
except ImportError:
    triton = None

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
    # a prompt this long is prefilled op by op: the graph that replays short prompts' prefills is captured here
    for runner in RUNNER_POOL.runners(model):
        if (runner.block_size, runner.total, runner.batch) == (L, shape.bucket, shape.batch):
            runner.warm_prefill(filler_id)
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


def stand_in(
    config: ModelConfig,
    device,
    dtype,
    fused: bool = False,
    weights: str | None = None,
    on_phase: Callable[[str], None] | None = None,
):
    """A model of `config`'s shapes with zero weights and as few layers as show every kind of layer it has (dense,
    MoE): what `precompile`'s workers warm. `fused`: with fuse_projections (as the server's model will be);
    weights="fp8": with float8 projections (quantize_fp8, which fuses too), whose kernels differ. `on_phase` is told
    each phase's end (a worker's timeline)."""
    from .loading import empty_model

    said = on_phase or (lambda phase: None)

    kinds, layers = set(), 0
    for i in range(config.num_hidden_layers):
        if config.layer_is_sparse(i) not in kinds:
            kinds.add(config.layer_is_sparse(i))
            layers = i + 1
    model = empty_model(replace(config, num_hidden_layers=layers)).to(dtype)
    said("built on meta")
    # Zeros made from each meta tensor's shape, not Module.to_empty: empty_like of a meta tensor runs through
    # torch._refs, whose first call imports sympy (0.4 s on a 2-core CPU, 2-3.6 s of a worker on a GPU machine).
    # A parameter two modules share (tied embeddings) gets one tensor, so the tie holds.
    zeros: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in zeros:
                zeros[id(p)] = nn.Parameter(
                    torch.zeros(p.shape, dtype=p.dtype, device=device), p.requires_grad
                )
            setattr(module, name, zeros[id(p)])
        for name, b in list(module.named_buffers(recurse=False)):
            module.register_buffer(
                name,
                torch.zeros(b.shape, dtype=b.dtype, device=device),
                persistent=name not in module._non_persistent_buffers_set,
            )
    said(f"zeros on {device}")
    model.reset_rope(device)
    model = model.eval()
    if weights == "fp8":
        model = model.quantize_fp8()
    elif fused:
        model = model.fuse_projections()
    said("float8 projections" if weights == "fp8" else "projections fused" if fused else "ready")
    return model


class KernelClaims:
    """The kernels the processes of one cold start compile, claimed in a shared folder so that each is compiled once.

    A kernel is named by a hash of its function and its specialisation (what Triton keys a compiled variant by).
    `claim` creates the kernel's file, atomically, and writes its process id there: True for the one process that
    created it, which compiles the kernel and then marks it `done`. While installed (`install`), Triton asks
    `_before_compile` before compiling a kernel it has not yet compiled in this process. A kernel claimed elsewhere:
    a worker (`skip_claimed`) leaves it out when its outputs are only numbers (SKIPPABLE: a stand-in's numbers are
    never read; the expert kernels' routing indices are, so those it waits for); otherwise the process waits while
    the claimant lives and has not finished it, at most `patience` seconds, then lets Triton go on, which reads the
    claimant's result from its disk cache."""

    # the modules whose kernels write only floating-point results (skippable in a stand-in)
    SKIPPABLE = (
        "sdar_core.gemm",
        "sdar_core.fused",
        "sdar_core.norm_rope",
        "sdar_core.decode_attention",
        "sdar_core.in_block",
        "sdar_core.persistent",
    )

    def __init__(self, folder: str | os.PathLike, skip_claimed: bool, patience: float = 60.0) -> None:
        self.folder = str(folder)
        self.skip_claimed = skip_claimed
        self.patience = patience
        self.compiled = 0  # kernels this process claimed
        self.skipped = 0  # launches left out: kernels claimed by another process (workers only)
        self.waited_s = 0.0  # seconds spent waiting for other processes' kernels
        self._installed = False

    @staticmethod
    def kernel_name(fn: object, specialization: str) -> str:
        """The claim's file name: a hash of the kernel function's full name and its specialisation."""
        qualname = getattr(getattr(fn, "fn", None), "__qualname__", None) or getattr(fn, "name", repr(fn))
        module = getattr(fn, "module", "")
        return hashlib.sha256(f"{module}:{qualname}|{specialization}".encode()).hexdigest()[:32]

    def claim(self, name: str) -> bool:
        try:
            fd = os.open(os.path.join(self.folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        self.compiled += 1
        return True

    def claimant_alive(self, name: str) -> bool:
        """Whether the process that claimed the kernel still runs (True while its claim file is being written)."""
        try:
            pid = int(open(os.path.join(self.folder, name)).read() or 0)
        except (OSError, ValueError):
            return False
        if not pid:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _zombie(pid)

    def done(self, name: str) -> None:
        with open(os.path.join(self.folder, name + ".done"), "w"):
            pass

    def is_done(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.folder, name + ".done"))

    def before_compile(self, name: str, skippable: bool = True) -> bool:
        """Whether Triton should leave the kernel out: True for a worker's launch of a kernel claimed elsewhere whose
        outputs are skippable; else False, after waiting for the kernel's claimant if another process has it."""
        if self.claim(name):
            return False
        if self.skip_claimed and skippable:
            self.skipped += 1
            return True
        t0 = time.monotonic()
        while not self.is_done(name) and self.claimant_alive(name) and time.monotonic() - t0 < self.patience:
            time.sleep(0.005)
        self.waited_s += time.monotonic() - t0
        return False

    def _before_compile(self, *, fn=None, compile=None, key=None, **_) -> bool:
        try:
            spec = (compile or {}).get("specialization_data") or repr(key)
            skippable = str(getattr(fn, "module", "")) in self.SKIPPABLE
            return self.before_compile(self.kernel_name(fn, spec), skippable)
        except (
            Exception
        ):  # the claims only save time: whatever fails here, Triton compiles as it would without
            return False

    def _after_compile(self, *, fn=None, compile=None, key=None, **_) -> None:
        try:
            spec = (compile or {}).get("specialization_data") or repr(key)
            self.done(self.kernel_name(fn, spec))
        except (
            Exception
        ):  # e.g. the folder removed under a late compile: a waiter then stops at the claimant's end
            pass

    def install(self) -> bool:
        """Become Triton's compile hooks in this process; False (nothing done) where this Triton has none, or
        another hook holds them."""
        runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
        if runtime is None or not all(
            hasattr(runtime, h) for h in ("jit_cache_hook", "jit_post_compile_hook")
        ):
            return False
        if runtime.jit_cache_hook is not None or runtime.jit_post_compile_hook is not None:
            return False
        runtime.jit_cache_hook, runtime.jit_post_compile_hook = self._before_compile, self._after_compile
        self._installed = True
        return True

    def uninstall(self) -> None:
        runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
        if self._installed and runtime is not None and runtime.jit_cache_hook == self._before_compile:
            runtime.jit_cache_hook = runtime.jit_post_compile_hook = None
        self._installed = False


def _zombie(pid: int) -> bool:
    """Whether a process has exited but not been reaped (Linux's /proc; elsewhere: no)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class Precompiling(list):
    """`precompile`'s worker processes (a list of subprocess.Popen), with the claims the server shares with them."""

    claims: KernelClaims | None = None

    def finish(self) -> None:
        """The server stops claiming (its later kernels compile as usual) and the claims folder goes."""
        if self.claims is not None:
            self.claims.uninstall()
            shutil.rmtree(self.claims.folder, ignore_errors=True)
            self.claims = None


def precompile(
    plan: list[tuple[ModelConfig, DecodeParams, WarmShape]],
    *,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    fused: bool = False,
    workers: int | None = None,
    weights: str | None = None,
    spawned: list[subprocess.Popen] | None = None,
) -> list[subprocess.Popen]:
    """Worker processes that warm `plan` (each a model config and a (resolved params, shape) pair, as warm_up
    takes them) on stand-ins of the configs, the shapes dealt round-robin (`workers`: default one per 4 CPUs, at
    most 4, at most one per shape), the kernels divided among them and this process by claims (KernelClaims: on CUDA
    with a Triton that has compile hooks). `spawned`: workers started earlier (sdar_core.prespawn.spawn_workers,
    before this process's imports), which get the jobs (those beyond `workers` or the plan are released); without
    them the workers start now. Returns the processes at once: the caller loads its model meanwhile and warms it
    (its kernels claimed too); `wait_for` collects the workers and ends the claiming. Each worker writes a line per
    phase and per shape to its stderr (inherited)."""
    workers = workers or (len(spawned) if spawned else default_workers())
    workers = min(workers, len(plan))
    if spawned:
        release(spawned[workers:])
        spawned = spawned[:workers]
    procs = Precompiling(spawned or [])
    procs.extend(spawn(workers - len(procs)))
    folder = None
    if triton is not None and torch.device(device).type == "cuda":
        claims = KernelClaims(tempfile.mkdtemp(prefix="sdar-kernel-claims-"), skip_claimed=False)
        if claims.install():
            procs.claims, folder = claims, claims.folder
        else:
            shutil.rmtree(claims.folder, ignore_errors=True)
    for w, proc in enumerate(procs):
        job = pickle.dumps((str(device), dtype, fused, weights, folder, plan[w::workers], proc.spawned))
        proc.stdin.write(job)
        proc.stdin.close()
    return procs


def wait_for(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    """The workers' exit codes, once they have ended (a worker still running after `timeout` s is killed: -9); then
    the claiming ends (Precompiling.finish)."""
    codes, deadline = [], time.monotonic() + timeout
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    if isinstance(procs, Precompiling):
        procs.finish()
    return codes


def _worker() -> int:
    """`python -m sdar_core.warmup`: the job `precompile` pickled to stdin, warmed on stand-ins (one per config).
    Each stderr line says when (seconds since the worker was spawned): its imports done, its job received (a worker
    spawned before the server's imports waits for it), its device ready (a CUDA context), each stand-in built, each
    shape warmed."""
    imported = time.time()
    job = sys.stdin.buffer.read()  # sent once the server knows its plan; nothing: released (prespawn.release)
    if not job:
        return 0
    device, dtype, fused, weights, folder, plan, spawned = pickle.loads(job)

    def say(line: str, at: float | None = None) -> None:
        print(f"precompile: {line} (at {(at or time.time()) - spawned:.1f} s)", file=sys.stderr, flush=True)

    say("imports done", at=imported)
    say("job received")
    torch.zeros(1, device=device)  # the device's context and its first kernel: timed apart from the stand-in
    say(f"{device} ready")
    claims = KernelClaims(folder, skip_claimed=True) if folder else None
    if claims is not None and not claims.install():
        claims = None
    t0, models = time.perf_counter(), {}
    for config, params, shape in plan:
        key = repr(config)
        if key not in models:
            models[key] = stand_in(
                config,
                torch.device(device),
                dtype,
                fused,
                weights,
                on_phase=lambda phase, kind=config.model_type: say(f"stand-in of {kind}: {phase}"),
            )
        seconds = warm_up(models[key], params, shape, filler_id=min(5, config.vocab_size - 2))
        say(f"{shape}, {params.strategy}: {seconds:.2f} s")
    shared = (
        f", {claims.compiled} kernels compiled, {claims.skipped} launches left to others" if claims else ""
    )
    say(f"{len(plan)} shapes in {time.perf_counter() - t0:.1f} s{shared}")
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
