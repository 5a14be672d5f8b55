"""sdar_core.warmup.precompile: worker processes warm a server's shapes on stand-ins of its model before the model
loads. A stand-in has the config's shapes with as few layers as show every kind of layer, zero weights; the workers
warm every shape of the plan once and exit; the studio starts them only where there are kernels to compile (a GPU)
and not when its operator says SDAR_PRECOMPILE=0; on a GPU, a fresh process that warms the full model afterwards
compiles no kernel the workers did not."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sdar_core import DecodeParams
from sdar_core.warmup import precompile, stand_in, wait_for, warm_shapes

from helpers import tiny_config

REPO = Path(__file__).resolve().parent.parent


def test_a_stand_in_has_every_kind_of_layer_once_and_zero_weights():
    dense = stand_in(tiny_config("sdar", layers=4), "cpu", torch.float32)
    assert len(dense.model.layers) == 1
    assert all(not t.any() for t in dense.parameters())
    logits = dense(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 96) and not logits.any()
    moe = tiny_config("sdar_moe", layers=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    moe = replace(moe, mlp_only_layers=[0, 1])  # dense layers 0 and 1, sparse from 2 on
    model = stand_in(moe, "cpu", torch.float32, fused=True)
    assert len(model.model.layers) == 3 and model.model.layers[0].self_attn.qkv_weight is not None
    assert [moe.layer_is_sparse(i) for i in range(3)] == [False, False, True]


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
        try:
            started = precompile(plan, device="cpu", dtype=torch.float32, workers=2)
        finally:
            subprocess.Popen = real
        assert started == procs and wait_for(started, timeout=300) == [0, 0]
    lines = log.read_text().splitlines()
    warmed = sorted(line.rsplit(": ", 1)[0] for line in lines if line.startswith("precompile: block 4"))
    assert warmed == sorted(
        f"precompile: block 4, cache {b} positions, {s}" for s in ("static", "dynamic") for b in (256, 512)
    )
    assert sum("shapes in" in line for line in lines) == 2  # each worker its summary line


def test_the_studio_precompiles_on_a_gpu_only_and_not_when_switched_off(studio_checkpoints, monkeypatch):
    from app import studio as studio_mod
    from app.registry import ModelRegistry

    sdar, _ = studio_checkpoints
    registry = ModelRegistry(models_dir=sdar.parent)
    loaded = registry.get(str(sdar))  # on the CPU, before CUDA is pretended below
    started = []
    monkeypatch.setattr(studio_mod, "precompile", lambda plan, **kw: started.append((plan, kw)) or [])
    monkeypatch.setattr(studio_mod.torch.cuda, "is_available", lambda: False)
    assert studio_mod.Warmup().precompile(registry, str(sdar)) == 0 and not started
    monkeypatch.setattr(studio_mod.torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("SDAR_PRECOMPILE", "0")
    assert studio_mod.Warmup().precompile(registry, str(sdar)) == 0 and not started
    monkeypatch.delenv("SDAR_PRECOMPILE")
    studio_mod.Warmup().precompile(registry, str(sdar))
    ((plan, kw),) = started
    # the shapes the warm-up takes, for the start model (sdar-tiny) and its AR twin, read from their configs
    want = studio_mod.shapes_for(loaded.config, studio_mod.DecodeSettings())
    assert [(p, s) for c, p, s in plan if c.is_sdar] == want and len(plan) == len(want) + 2
    assert kw == {"dtype": torch.bfloat16, "weights": None}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_after_the_workers_a_fresh_server_compiles_no_kernel_of_its_own(tmp_path):
    """Two precompile workers warm static and dynamic block 4 and the AR lane on one-layer stand-ins; a fresh process
    then warms the same shapes on a 4-layer random model with the same kernel cache: the cache gains no entry."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton"), PYTHONPATH=f"{REPO}:{REPO / 'tests'}")
    script = """
import sys, torch
from sdar_core import DecodeParams
from sdar_core.warmup import precompile, wait_for, warm_shapes, warm_up
from helpers import random_model, tiny_config
config = tiny_config("sdar", layers=4, hidden_size=128, intermediate_size=256)
params = [DecodeParams(strategy=s, block_length=b, steps=2).resolved(config)
          for s, b in (("static", 4), ("dynamic", 4), ("ar", 4))]
plan = [(config, p, shape) for p in params for shape in warm_shapes([p], 512, 512)]
if sys.argv[1] == "workers":
    assert wait_for(precompile(plan, dtype=torch.bfloat16, workers=2)) == [0, 0]
else:
    model = random_model(config).to("cuda", torch.bfloat16)
    for _, p, shape in plan:
        warm_up(model, p, shape, 5)
print("ok")
"""

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


def test_an_fp8_stand_in_warms_the_float8_kernels_and_the_studio_asks_for_it(studio_checkpoints, monkeypatch):
    from app import studio as studio_mod
    from app.registry import ModelRegistry
    from sdar_core.gemm import Fp8Linear

    model = stand_in(tiny_config("sdar", layers=4), "cpu", torch.float32, weights="fp8")
    assert model.weights == "fp8" and isinstance(model.model.layers[0].mlp.down_proj, Fp8Linear)
    assert not model(torch.tensor([[1, 2, 3]])).any()  # zero rows quantize to zeros (scale 1)
    sdar, _ = studio_checkpoints
    registry = ModelRegistry(models_dir=sdar.parent, weights="fp8")
    started = []
    monkeypatch.setattr(studio_mod, "precompile", lambda plan, **kw: started.append(kw) or [])
    monkeypatch.setattr(studio_mod.torch.cuda, "is_available", lambda: True)
    studio_mod.Warmup().precompile(registry, str(sdar))
    assert started and started[0]["weights"] == "fp8"
