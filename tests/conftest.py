"""Shared fixtures: the embedded models, and tiny random models in the real checkpoint format written by the tests
themselves (the functions they are built with live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdar_core.loading import load_pretrained
from sdar_core.paths import MODELS_DIR

from helpers import free_port, write_checkpoints


@pytest.fixture(scope="session")
def embedded_models():
    """The shipped sdar-tiny and ar-tiny, loaded once on CPU in float32: {name: (model, tokenizer)}."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    return {
        name: load_pretrained(MODELS_DIR / name, device="cpu", dtype=torch.float32)
        for name in ("sdar-tiny", "ar-tiny")
    }


@pytest.fixture(scope="session")
def studio_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(sdar-tiny, ar-tiny) folders of random weights, written once per test session."""
    return write_checkpoints(tmp_path_factory.mktemp("studio-models"))


@pytest.fixture(scope="module")
def launched_studio(studio_checkpoints):
    """The studio (build_app) on the test checkpoints, launched on a free loopback port: (url, sdar folder)."""
    from app.layout import LAUNCH_KWARGS
    from app.registry import ModelRegistry
    from app.ui import build_app

    sdar, _ = studio_checkpoints
    demo = build_app(default_model=str(sdar), registry=ModelRegistry(models_dir=sdar.parent))
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_KWARGS
    )
    try:
        yield f"http://127.0.0.1:{port}/", sdar
    finally:
        demo.close()
