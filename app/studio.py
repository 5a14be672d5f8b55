"""What every tab shares on the server: the model registry, the per-session stop flags, and how a request
becomes a Lane to stream (the model loaded, SDAR settings turned into AR ones on an AR model, the prompt ids)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import gradio as gr

from .prompting import prompt_ids
from .registry import ModelRegistry
from .settings import DecodeRequest
from .streaming import Lane, StopFlags


@dataclass
class Studio:
    registry: ModelRegistry = field(default_factory=ModelRegistry)
    stops: StopFlags = field(default_factory=StopFlags)

    def arm_stop(self, request) -> threading.Event:
        """A fresh stop flag for the session that sent `request`."""
        return self.stops.arm(getattr(request, "session_hash", None))

    def stop(self, request: gr.Request) -> None:
        """Stop this session's decode at its next step (what it committed so far is kept)."""
        self.stops.trigger(getattr(request, "session_hash", None))

    def lane(self, req: DecodeRequest, messages: list[dict]) -> tuple[Lane, list[str]]:
        """The lane that answers `messages` as `req` asks, and the notes the user should read about it."""
        loaded = self.registry.get(req.model_name)
        settings, notes = req.settings, []
        if not loaded.is_sdar and settings.strategy != "ar":
            settings = settings.as_ar()
            notes.append(f"{loaded.display_name} is an autoregressive model: it decodes one token per forward.")
        elif settings.strategy != "ar" and settings.block_length not in trained_blocks(loaded.config):
            notes.append(untrained_block_note(loaded.display_name, loaded.config, settings.block_length))
        ids, note = prompt_ids(loaded.tokenizer, messages)
        return Lane(loaded, ids, settings), notes + ([note] if note else [])


def trained_blocks(config) -> list[int]:
    """The block sizes an SDAR checkpoint was trained at: its config's list, else its default block size."""
    return sorted(config.trained_block_sizes or [config.block_size])


def untrained_block_note(name: str, config, block: int) -> str:
    sizes = trained_blocks(config)
    listed = ", ".join(map(str, sizes))
    return (f"{name} was trained at block size{'s' if len(sizes) > 1 else ''} {listed}; block {block} was not "
            "trained for: expect worse answers.")
