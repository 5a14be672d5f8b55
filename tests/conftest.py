"""Shared fixtures: the embedded models, and tiny random models in the real checkpoint format written by the tests
themselves (the functions they are built with live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdar_core.loading import load_pretrained
from sdar_core.paths import MODELS_DIR

from helpers import running_studio, write_checkpoints


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
    from app.registry import ModelRegistry

    sdar, _ = studio_checkpoints
    with running_studio(sdar, ModelRegistry(models_dir=sdar.parent)) as url:
        yield url, sdar
