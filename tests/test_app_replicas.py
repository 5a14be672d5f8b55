"""Several GPUs: one copy of the model and one scheduler per GPU, each request to the least-loaded one. No machine
with two GPUs was lent to this project's sessions, so the routing is tested here on the CPU: a second copy stands for
a model on cuda:1 (its scheduler is never run), and the first device's scheduler is kept busy by real jobs waiting
for the device lock."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import torch

from app.registry import LoadedModel, ModelRegistry
from app.settings import DecodeRequest, DecodeSettings
from app.streaming import DEVICE
from app.studio import Studio, replica_registries


class Replica:
    """A registry on another GPU, as least_loaded sees it: a copy once loaded, a load started before."""

    def __init__(self, copy: LoadedModel | None) -> None:
        self.copy, self.started = copy, []

    def cached(self, name):
        return self.copy

    def start(self, name):
        self.started.append(name)


def on_gpu_1(m: LoadedModel) -> LoadedModel:
    return LoadedModel(
        m.name, m.path, SimpleNamespace(device=torch.device("cuda", 1), config=m.config), m.tokenizer
    )


def test_one_registry_per_further_gpu_with_the_first_ones_rules(tmp_path, monkeypatch):
    registry = ModelRegistry(models_dir=tmp_path, allow_any_model=True, offered=("me/my-model",))
    assert (
        replica_registries(registry) == [] or torch.cuda.device_count() > 1
    )  # this machine: one device at most
    assert replica_registries(registry, gpus=1) == []
    copies = replica_registries(registry, gpus=3)
    assert [c.device for c in copies] == ["cuda:1", "cuda:2"]
    for c in copies:
        assert (c.models_dir, c.allow_any_model, c.offered, c.capacity) == (
            registry.models_dir,
            True,
            registry.offered,
            registry.capacity,
        )
    assert replica_registries(ModelRegistry(models_dir=tmp_path, device="cpu"), gpus=3) == []  # a CPU studio
    monkeypatch.setenv("SDAR_REPLICAS", "0")  # the operator keeps the other GPUs free
    assert replica_registries(registry, gpus=3) == []


def test_a_request_goes_to_the_device_with_the_fewest_rows(studio_checkpoints):
    sdar, _ = studio_checkpoints
    name = str(sdar)
    replica = Replica(None)
    studio = Studio(registry=ModelRegistry(models_dir=sdar.parent), replicas=[replica])
    first = studio.ready(name)  # already routed once: the replica's load started
    assert replica.started == [name]
    replica.started.clear()
    # The copy on cuda:1 is not loaded yet: its load starts, the request stays on the first device.
    assert studio.least_loaded(name, first) is first and replica.started == [name]
    copy = on_gpu_1(first)
    replica.copy = copy
    assert studio.least_loaded(name, first) is first  # both idle: the first device
    replica.copy = None  # (until its copy is loaded, every request goes to the first device)
    req = DecodeRequest(name, DecodeSettings(max_new_tokens=4))
    with DEVICE:  # the first device is busy: two requests wait on its scheduler
        runs = [
            studio.start(req, [{"role": "user", "content": f"Hi {i}"}], threading.Event()) for i in range(2)
        ]
        assert studio.scheduler(first).load == 2
        replica.copy = copy  # loaded now: the next request goes to cuda:1, and one more after it still would
        assert studio.least_loaded(name, first) is copy
        assert studio.scheduler(replica.copy).load == 0 and studio.scheduler(replica.copy).lock is not DEVICE
    for run in runs:  # the device freed, the waiting requests are answered
        list(run.follow())
        assert run.stats is not None and run.stats.new_tokens >= 1
    assert studio.least_loaded(name, first) is first
