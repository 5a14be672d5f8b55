"""sdar_core.warmup.precompile: worker processes warm a server's shapes on stand-ins of its model before the model
loads. A stand-in has the config's shapes with as few layers as show every kind of layer, zero weights; the workers
warm every shape of the plan once and exit; the studio starts them only where there are kernels to compile (a GPU)
and not when its operator says SDAR_PRECOMPILE=0; on a GPU, a fresh process that warms the full model afterwards
compiles no kernel the workers did not."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks.startup import compiled_kernels
from sdar_core import DecodeParams, prespawn
from sdar_core.warmup import KernelClaims, precompile, stand_in, wait_for, warm_shapes

from helpers import tiny_config

REPO = Path(__file__).resolve().parent.parent


def test_a_stand_in_has_every_kind_of_layer_once_and_zero_weights():
    dense = stand_in(tiny_config("sdar", layers=4), "cpu", torch.float32)
    assert len(dense.model.layers) == 1
    assert all(not t.any() for t in dense.parameters())
    logits = dense(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 96) and not logits.any()
    for tied in (True, False):  # tied embeddings stay one tensor, as in the model the server loads
        m = stand_in(replace(tiny_config("sdar", layers=2), tie_word_embeddings=tied), "cpu", torch.float32)
        assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied
    moe = tiny_config("sdar_moe", layers=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    moe = replace(moe, mlp_only_layers=[0, 1])  # dense layers 0 and 1, sparse from 2 on
    model = stand_in(moe, "cpu", torch.float32, fused=True)
    assert len(model.model.layers) == 3 and model.model.layers[0].self_attn.qkv_weight is not None
    assert [moe.layer_is_sparse(i) for i in range(3)] == [False, False, True]


def test_a_stand_in_is_built_without_importing_sympy():
    """A worker's stand-in is made of zeros shaped from the meta model, not Module.to_empty, whose empty_like of a
    meta tensor runs through torch._refs and imports sympy (2-3.6 s of each worker on a GPU machine)."""
    code = (
        "import sys, torch; from sdar_core.warmup import stand_in; from helpers import tiny_config; "
        "m = stand_in(tiny_config('sdar', layers=2), torch.device('cpu'), torch.bfloat16, fused=True); "
        "print('sympy' in sys.modules, m.lm_head.weight.dtype)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.stdout.split() == ["False", "torch.bfloat16"], done.stderr[-2000:]


def test_the_workers_warm_every_shape_of_the_plan_once_and_exit(tmp_path):
    config = tiny_config("sdar", layers=2)
    params = [
        DecodeParams(strategy=s, block_length=4, steps=2, runner_mode="static").resolved(config)
        for s in ("static", "dynamic")
    ]
    plan = [
        (config, p, shape) for p in params for shape in warm_shapes([p], 512, config.max_position_embeddings)
    ]
    assert len(plan) == 4
    log = tmp_path / "stderr"
    with open(log, "w") as err:
        real = subprocess.Popen
        procs = []

        def popen(*a, **k):  # the workers' stderr to a file the test reads
            procs.append(real(*a, **k, stderr=err))
            return procs[-1]

        subprocess.Popen = popen
        try:  # one worker spawned early (before a server's imports), waiting for its job; the other by precompile
            early = prespawn.spawn(1)
            started = precompile(plan, device="cpu", dtype=torch.float32, workers=2, spawned=early)
            released = prespawn.spawn(1)  # and one that gets no job
            prespawn.release(released)
        finally:
            subprocess.Popen = real
        assert started == procs[:2] and started[0] is early[0]
        assert wait_for(started, timeout=300) == [0, 0] and wait_for(released, timeout=300) == [0]
    lines = log.read_text().splitlines()
    warmed = sorted(line.rsplit(": ", 1)[0] for line in lines if line.startswith("precompile: block 4"))
    assert warmed == sorted(
        f"precompile: block 4, cache {b} positions, {s}" for s in ("static", "dynamic") for b in (256, 512)
    )
    assert sum("shapes in" in line for line in lines) == 2  # each worker its summary line
    for event in (
        "imports done",
        "job received",
        "cpu ready",
        "stand-in of sdar: built on meta",
        "stand-in of sdar: zeros on cpu",
        "stand-in of sdar: ready",
    ):  # each worker's timeline, in seconds since its spawn; the released one says nothing
        assert sum(line.startswith(f"precompile: {event}") for line in lines) == 2
    assert all(re.search(r" \(at \d+\.\d s\)$", line) for line in lines if line.startswith("precompile: "))


def test_a_kernel_is_claimed_once_a_worker_skips_others_claims_and_a_server_waits_for_them(tmp_path):
    worker_a = KernelClaims(tmp_path, skip_claimed=True)
    worker_b = KernelClaims(tmp_path, skip_claimed=True, patience=0.3)
    server = KernelClaims(tmp_path, skip_claimed=False, patience=0.3)
    name = KernelClaims.kernel_name(SimpleNamespace(module="sdar_core.gemm", name="_skinny_kernel"), "spec 1")
    assert not worker_a.before_compile(name)  # the first to ask compiles it
    assert worker_a.compiled == 1 and (tmp_path / name).read_text() == str(os.getpid())
    assert worker_b.before_compile(name) and worker_b.skipped == 1  # a stand-in leaves its launch out
    t0 = time.monotonic()
    assert not worker_b.before_compile(
        name, skippable=False
    )  # indices are read: waits, then compiles (cache hit)
    assert not server.before_compile(name)
    assert (
        time.monotonic() - t0 >= 0.6 and server.waited_s >= 0.3
    )  # each waited its patience: a live claimant
    worker_a.done(name)
    t0 = time.monotonic()
    assert not server.before_compile(name) and time.monotonic() - t0 < 0.1  # done: no wait
    assert (worker_b.compiled, server.compiled) == (0, 0)


def test_a_server_does_not_wait_for_a_kernel_whose_claimant_has_exited(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "k").write_text(str(gone.pid))  # claimed by a worker that exited without finishing it
    server = KernelClaims(tmp_path, skip_claimed=False, patience=30)
    t0 = time.monotonic()
    assert not server.before_compile("k") and time.monotonic() - t0 < 1.0
    assert not server.claimant_alive("k") and server.compiled == 0


def test_every_kernel_module_but_the_moes_is_skippable():
    """A worker leaves out a kernel another process claimed when the kernel's outputs are only numbers: every module
    of sdar_core that defines Triton kernels, except moe.py (its routing indices are read: workers wait for those)
    and pdl.py (helpers inlined into the others, no kernel of its own). A new kernel module must be named here or
    there: the in-block kernel, on by default since 2026-12-07, was missing."""
    sources = {f"sdar_core.{path.stem}": path.read_text() for path in (REPO / "sdar_core").glob("*.py")}
    launched = {
        name
        for name, text in sources.items()
        if "@triton.jit" in text and re.search(r"^\s*def _\w+_kernel\(", text, re.M)
    }
    assert set(KernelClaims.SKIPPABLE) == launched - {"sdar_core.moe"}, launched


def test_kernel_names_tell_functions_and_specialisations_apart():
    gemm = SimpleNamespace(module="sdar_core.gemm", name="_skinny_kernel")
    attention = SimpleNamespace(module="sdar_core.decode_attention", name="_split_kernel")
    names = {KernelClaims.kernel_name(f, spec) for f in (gemm, attention) for spec in ("a", "b")}
    assert len(names) == 4
    assert KernelClaims.kernel_name(gemm, "a") == KernelClaims.kernel_name(
        SimpleNamespace(module="sdar_core.gemm", name="_skinny_kernel"), "a"
    )


def test_claims_become_tritons_compile_hooks_and_give_them_back(tmp_path):
    triton = pytest.importorskip("triton")
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is None or not hasattr(runtime, "jit_post_compile_hook"):
        pytest.skip("this Triton has no compile hooks")
    claims = KernelClaims(tmp_path, skip_claimed=True)
    assert claims.install() and runtime.jit_cache_hook == claims._before_compile
    assert not KernelClaims(tmp_path, skip_claimed=False).install()  # one holder at a time
    fn = SimpleNamespace(module="sdar_core.moe", name="_route")
    # as Triton calls them: a claimed-elsewhere MoE kernel is waited for, not skipped (its indices are read)
    assert runtime.jit_cache_hook(key="k", repr="r", fn=fn, compile={"specialization_data": "s"}) is False
    runtime.jit_post_compile_hook(key="k", repr="r", fn=fn, compile={"specialization_data": "s"})
    assert claims.is_done(KernelClaims.kernel_name(fn, "s"))
    shutil.rmtree(
        tmp_path
    )  # the folder gone (the claiming ended under a late compile): Triton compiles as usual
    assert runtime.jit_cache_hook(key="k2", repr="r", fn=fn, compile={"specialization_data": "t"}) is False
    runtime.jit_post_compile_hook(key="k2", repr="r", fn=fn, compile={"specialization_data": "t"})
    claims.uninstall()
    assert runtime.jit_cache_hook is None and runtime.jit_post_compile_hook is None


def test_the_studio_precompiles_on_a_gpu_only_and_not_when_switched_off(studio_checkpoints, monkeypatch):
    from app import warming
    from app.registry import ModelRegistry
    from app.settings import DecodeSettings

    sdar, _ = studio_checkpoints
    registry = ModelRegistry(models_dir=sdar.parent)
    loaded = registry.get(str(sdar))  # on the CPU, before CUDA is pretended below
    started = []
    monkeypatch.setattr(warming, "precompile", lambda plan, **kw: started.append((plan, kw)) or [])

    def early():  # workers spawned before the imports (sdar_core.prespawn), pretended: their stdin only
        return [SimpleNamespace(stdin=io.BytesIO()) for _ in range(2)]

    monkeypatch.setattr(warming.torch.cuda, "is_available", lambda: False)
    assert warming.start_precompile(registry, str(sdar), spawned=(released := early())) == 0 and not started
    assert all(w.stdin.closed for w in released)  # let go: they exit once imported
    monkeypatch.setattr(warming.torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("SDAR_PRECOMPILE", "0")
    assert warming.start_precompile(registry, str(sdar), spawned=(released := early())) == 0 and not started
    assert all(w.stdin.closed for w in released)
    monkeypatch.delenv("SDAR_PRECOMPILE")
    warming.start_precompile(registry, str(sdar), spawned=(given := early()))
    ((plan, kw),) = started
    # the shapes the warm-up takes, for the start model (sdar-tiny) and its AR twin, read from their configs
    want = warming.shapes_for(loaded.config, DecodeSettings())
    assert [(p, s) for c, p, s in plan if c.is_sdar] == want and len(plan) == len(want) + 2
    assert kw == {"dtype": torch.bfloat16, "weights": None, "spawned": given}


# What the CUDA tests' processes share: a 4-layer config, the plan they warm (static and dynamic block 4 and the AR
# lane, buckets up to 512) and one decode of it (its tokens).
CUDA_PLAN = """
import json, sys, torch
from sdar_core import DecodeParams, generate
from sdar_core.warmup import precompile, wait_for, warm_shapes, warm_up
from helpers import random_model, tiny_config
config = tiny_config("sdar", layers=4, hidden_size=128, intermediate_size=256)
params = [DecodeParams(strategy=s, block_length=b, steps=2).resolved(config)
          for s, b in (("static", 4), ("dynamic", 4), ("ar", 4))]
plan = [(config, p, shape) for p in params for shape in warm_shapes([p], 512, 512)]
def decode(model):
    p = DecodeParams(block_length=4, steps=2, max_new_tokens=8, stop_token_ids=[])
    return generate(model, [[5, 6, 7, 8, 9]], p).tokens[0].tolist()
"""


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_after_the_workers_a_fresh_server_compiles_no_kernel_of_its_own(tmp_path):
    """Two precompile workers warm static and dynamic block 4 and the AR lane on one-layer stand-ins; a fresh process
    then warms the same shapes on a 4-layer random model with the same kernel cache: the cache gains no entry."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton"), PYTHONPATH=f"{REPO}:{REPO / 'tests'}")
    script = (
        CUDA_PLAN
        + """
if sys.argv[1] == "workers":
    assert wait_for(precompile(plan, dtype=torch.bfloat16, workers=2)) == [0, 0]
else:
    model = random_model(config).to("cuda", torch.bfloat16)
    for _, p, shape in plan:
        warm_up(model, p, shape, 5)
print("ok")
"""
    )

    def entries() -> set[str]:
        root = tmp_path / "triton"
        return {p.name for p in root.iterdir()} if root.exists() else set()

    for role in ("workers", "server"):
        before = entries()
        done = subprocess.run(
            [sys.executable, "-c", script, role],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
        )
        assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
        if role == "workers":
            assert len(entries()) > len(before)  # the workers compiled kernels
    assert entries() == before  # the server found every kernel it needed


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_workers_and_the_server_beside_them_compile_each_kernel_once(tmp_path):
    """As the studio starts: two workers, then this process warms a 4-layer random model of the same config while they
    run. Every kernel variant in the cache was compiled by exactly one process (the workers' and the server's
    claimed kernels add up to the cache's variants), the workers left the others' kernels out, and the decode the
    server warmed gives the tokens of a decode without any of it."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton"), PYTHONPATH=f"{REPO}:{REPO / 'tests'}")
    script = (
        CUDA_PLAN
        + """
procs = precompile(plan, dtype=torch.bfloat16, workers=2)
model = random_model(config).to("cuda", torch.bfloat16)
for _, p, shape in plan:
    warm_up(model, p, shape, 5)
claims = procs.claims
compiled, waited = claims.compiled, claims.waited_s
print(json.dumps(dict(codes=wait_for(procs), compiled=compiled, waited=waited, hooks_gone=procs.claims is None,
                      tokens=decode(model))))
"""
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0] and result["hooks_gone"]
    summaries = [line for line in done.stderr.splitlines() if "shapes in" in line]
    by_worker = [int(re.search(r"(\d+) kernels compiled", line).group(1)) for line in summaries]
    skipped = [int(re.search(r"(\d+) launches left to others", line).group(1)) for line in summaries]
    variants = sum(compiled_kernels(tmp_path / "triton").values())
    assert len(by_worker) == 2 and sum(by_worker) > 0 and sum(skipped) > 0
    assert sum(by_worker) + result["compiled"] == variants  # no kernel compiled twice
    fresh = subprocess.run(  # the same decode in a process with a warm cache and no claims: the same tokens
        [
            sys.executable,
            "-c",
            CUDA_PLAN + "print(json.dumps(decode(random_model(config).to('cuda', torch.bfloat16))))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == result["tokens"]


def test_the_studio_starts_its_workers_before_it_imports_gradio(tmp_path):
    """python app.py: the workers are spawned (here, pretended) before torch's import, which they do beside the
    server's, and get their jobs before Gradio's import, which they overlap."""
    script = """
import io, sys, types
from app import launch
from sdar_core import prespawn
seen = {}
early = [types.SimpleNamespace(stdin=io.BytesIO())]
def spawn_workers(workers=None, env=None):
    seen["torch"] = "torch" in sys.modules
    from app import warming
    warming.start_precompile = start
    return early
def start(registry, name, settings=None, spawned=None):
    print("torch imported before the spawn:", seen["torch"])
    print("the early workers passed on:", spawned is early)
    print("gradio imported before the workers:", "gradio" in sys.modules)
    raise SystemExit(0)
prespawn.spawn_workers = spawn_workers
try:
    launch.main(["--model", sys.argv[1]])
finally:  # a start that stops before the jobs went out lets its workers go
    print("released when the start stopped:", early[0].stdin.closed)
"""
    done = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "assets" / "models" / "sdar-tiny")],
        env=dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-4:] == [
        "torch imported before the spawn: False",
        "the early workers passed on: True",
        "gradio imported before the workers: False",
        "released when the start stopped: True",
    ]


def test_an_fp8_stand_in_warms_the_float8_kernels_and_the_studio_asks_for_it(studio_checkpoints, monkeypatch):
    from app import warming
    from app.registry import ModelRegistry
    from sdar_core.gemm import Fp8Linear

    model = stand_in(tiny_config("sdar", layers=4), "cpu", torch.float32, weights="fp8")
    assert model.weights == "fp8" and isinstance(model.model.layers[0].mlp.down_proj, Fp8Linear)
    assert not model(torch.tensor([[1, 2, 3]])).any()  # zero rows quantize to zeros (scale 1)
    sdar, _ = studio_checkpoints
    registry = ModelRegistry(models_dir=sdar.parent, weights="fp8")
    started = []
    monkeypatch.setattr(warming, "precompile", lambda plan, **kw: started.append(kw) or [])
    monkeypatch.setattr(warming.torch.cuda, "is_available", lambda: True)
    warming.start_precompile(registry, str(sdar))
    assert started and started[0]["weights"] == "fp8"


def test_the_early_spawn_imports_no_torch_and_spawns_only_where_a_gpu_is_likely(monkeypatch):
    """sdar_core.prespawn runs before a server's imports: importing it (and the package) leaves torch unimported, and
    it starts workers only where the machine shows an NVIDIA device and SDAR_PRECOMPILE is not 0."""
    code = (
        "import sys; from sdar_core import prespawn; import sdar_core; "
        "print('torch' in sys.modules); from sdar_core import *; print('torch' in sys.modules, "
        "all(callable(globals()[n]) for n in sdar_core.__all__))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.stdout.split() == ["False", "True", "True"], done.stderr[-2000:]
    spawned = []
    monkeypatch.setattr(prespawn, "spawn", lambda count: spawned.append(count) or ["worker"] * count)
    monkeypatch.setattr(prespawn, "nvidia_device_present", lambda: False)
    assert prespawn.spawn_workers(env={}) == [] and not spawned
    monkeypatch.setattr(prespawn, "nvidia_device_present", lambda: True)
    assert prespawn.spawn_workers(env={"SDAR_PRECOMPILE": "0"}) == [] and not spawned
    assert prespawn.spawn_workers(3, env={}) == ["worker"] * 3
    monkeypatch.setattr(prespawn.os, "cpu_count", lambda: 64)
    assert len(prespawn.spawn_workers(env={"SDAR_PRECOMPILE": "1"})) == 4 and spawned == [3, 4]
