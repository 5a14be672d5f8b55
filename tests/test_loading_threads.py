"""Loading builds its empty model for this thread only: the studio loads checkpoints on background threads while
other threads build modules and decode. (accelerate's `init_empty_weights` patches nn.Module for the whole process:
on the GPU machine two overlapping loads left the patch installed, and every module built afterwards, in any thread,
came out on the meta device: the warm-up, the chat and the tests that followed all failed.)"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import torch
from test_loading import small_checkpoint
from torch import nn

import sdar_core.loading as loading
from sdar_core import load_pretrained


def test_a_module_built_while_another_thread_loads_gets_real_parameters(tmp_path, monkeypatch):
    small_checkpoint(tmp_path)
    inside, release = threading.Event(), threading.Event()

    class Held(loading.SDARForCausalLM):
        def __init__(self, config):
            super().__init__(config)
            inside.set()
            assert release.wait(30)

    monkeypatch.setattr(loading, "SDARForCausalLM", Held)
    loader = threading.Thread(
        target=load_pretrained, args=(tmp_path,), kwargs=dict(device="cpu", with_tokenizer=False)
    )
    loader.start()
    try:
        assert inside.wait(30)
        assert nn.Linear(3, 3).weight.device.type == "cpu"  # built on this thread while the load is inside
        assert torch.zeros(2).device.type == "cpu"
        # and initialised: the load's skipping of torch.nn.init holds for its thread only
        torch.manual_seed(0)
        built = nn.Linear(3, 3).weight.detach().clone()
        torch.manual_seed(0)
        expected = torch.empty(3, 3)
        nn.init.kaiming_uniform_(expected, a=5**0.5)  # what nn.Linear's reset_parameters draws
        assert torch.equal(built, expected) and built.abs().sum() > 0
    finally:
        release.set()
        loader.join(30)


def test_overlapping_loads_on_two_threads_leave_nothing_behind(tmp_path):
    small_checkpoint(tmp_path)
    models, errors = [], []

    def load_many():
        try:
            for _ in range(6):
                models.append(load_pretrained(tmp_path, device="cpu", with_tokenizer=False)[0])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=load_many) for _ in range(3)]
    for t in threads:
        t.start()
    built = [nn.Linear(4, 4) for _ in range(50)]  # meanwhile, on this thread
    for t in threads:
        t.join(60)
    assert not errors and len(models) == 18
    assert all(p.device.type == "cpu" for m in built for p in m.parameters())
    assert all(t.device.type == "cpu" for m in models for t in [*m.parameters(), *m.buffers()])
    assert nn.Linear(2, 2).weight.device.type == "cpu"  # and afterwards


def test_an_empty_model_runs_no_init_and_no_meta_arithmetic_that_imports_dynamo():
    """The first meta `normal_` or division runs through torch._refs, which imports torch._dynamo and sympy: over a
    second of a cold start (the server's load, each precompile worker's stand-in). A fresh process shows none."""
    script = (
        "import sys\n"
        "from sdar_core.config import ModelConfig\n"
        "from sdar_core.loading import empty_model\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "m = empty_model(ModelConfig.from_json('assets/models/sdar-tiny/config.json'))\n"
        "assert all(t.device.type == 'meta' for t in [*m.parameters(), *m.buffers()])\n"
        "print('dynamo' if 'torch._dynamo' in sys.modules else 'clean')\n"
    )
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=repo, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "clean"


def test_the_rope_frequencies_of_a_model_built_on_meta_are_reset_to_the_cpu_computation(tmp_path):
    small_checkpoint(tmp_path)
    model, _ = load_pretrained(tmp_path, device="cpu", with_tokenizer=False)
    d, theta = model.config.head_dim, model.config.rope_theta
    expected = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # an independent, float64 form
    assert torch.allclose(model.inv_freq.double(), expected, rtol=1e-6)
