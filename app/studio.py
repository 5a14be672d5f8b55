"""What every tab shares on the server: the model registry, the per-session stop flags, and the one way
the app runs a decode (a worker thread streaming StepEvents back to a Gradio generator handler)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from sdar_core import generate

from .registry import LoadedModel, ModelRegistry
from .settings import DecodeSettings
from .streaming import StopFlags


@dataclass
class Studio:
    registry: ModelRegistry = field(default_factory=ModelRegistry)
    stops: StopFlags = field(default_factory=StopFlags)

    def arm_stop(self, request) -> threading.Event:
        """A fresh stop flag for the session that sent `request` (a private one when there is no session)."""
        session = getattr(request, "session_hash", None)
        return self.stops.arm(session) if session else threading.Event()

    def stop(self, request) -> bool:
        session = getattr(request, "session_hash", None)
        return bool(session) and self.stops.trigger(session)


def decode_job(loaded: LoadedModel, ids: list[int], settings: DecodeSettings, *, trace: bool = True) -> Callable:
    """`run(on_step) -> Generation` for the streaming worker: one row, the model's stop tokens."""
    def run(on_step):
        input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.model.device)  # [1, T_prompt]
        return generate(loaded.model, input_ids, stop_token_ids=loaded.stop_token_ids, trace=trace,
                        on_step=on_step, **settings.generate_kwargs())
    return run
