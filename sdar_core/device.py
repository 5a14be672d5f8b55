"""The device a model runs on: its default, its dtype, and waiting for it."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on CUDA (what the checkpoints hold), float32 on CPU (bfloat16 matmuls are slow there)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU): what a wall-clock timing must do first."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
