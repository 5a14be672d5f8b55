"""The device a model runs on: its default, its dtype, waiting for it, and the machine's description for reports."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import torch


def graph_replay_ms(graph: torch.cuda.CUDAGraph, iters: int = 50, runs: int = 1) -> float:
    """Milliseconds per replay of a captured CUDA graph (CUDA events; after 5 warm-up replays; median of runs)."""
    for _ in range(5):
        graph.replay()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return sorted(times)[len(times) // 2]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on CUDA (what the checkpoints hold), float32 on CPU (bfloat16 matmuls are slow there)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU): what a wall-clock timing must do first."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_name(device: torch.device | str) -> str:
    """What ran the numbers, in one line: the GPU's name, or the CPU's with the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()}, {torch.get_num_threads()} threads"


def machine_info(device: torch.device | str) -> dict:
    """The machine a measurement ran on, as recorded beside its results (`gpu` is `hardware_name`)."""
    device = torch.device(device)
    info = dict(
        gpu=hardware_name(device),
        device=str(device),
        torch=torch.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        host=platform.node(),
        cpu_threads=torch.get_num_threads(),
        date=datetime.date.today().isoformat(),
    )
    if device.type == "cuda":
        info.update(
            cuda=torch.version.cuda,
            gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
        )
    return info
