"""What the measurements share: the model shapes they run (`ARCHS`), random-weight models of them, their bytes, the
device's memory bandwidth, the replay time of a CUDA graph, and the machine's description recorded beside every
result. Library code never measures: these live here, beside the programs that do.
"""

from __future__ import annotations

import copy
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch

from sdar_core.config import PUBLIC_SHAPES, ModelConfig
from sdar_core.device import synchronize
from sdar_core.loading import empty_model
from sdar_core.model import SDARForCausalLM
from training.model_init import init_weights

# fmt: off
ARCHS = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=4096, tie_word_embeddings=True),
    "tiny-moe": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, vocab_size=4096, tie_word_embeddings=False, num_experts=16,
                     num_experts_per_tok=4, moe_intermediate_size=64, norm_topk_prob=True),
    **{f"sdar-{size}": shape for size, shape in PUBLIC_SHAPES.items()},
}
# fmt: on


def arch_config(name: str, block_size: int = 4) -> ModelConfig:
    if name not in ARCHS:
        raise SystemExit(f"unknown architecture {name!r}; choose one of {', '.join(ARCHS)}")
    fields = dict(ARCHS[name])
    return ModelConfig(
        model_type="sdar_moe" if fields.get("num_experts") else "sdar",
        block_size=block_size,
        mask_token_id=fields["vocab_size"] - 1,
        rope_theta=1_000_000.0,
        max_position_embeddings=32768,
        eos_token_id=0,
        **fields,
    )


def random_model(config: ModelConfig, device, dtype) -> SDARForCausalLM:
    """Random weights straight on the device (no CPU copy of a multi-GB model)."""
    # Cast while on meta: a float32 30B-A3B (122 GB) would not fit beside its copy.
    model = empty_model(config).to(dtype)
    model = model.to_empty(device=device)
    init_weights(model, 0.02, generator=torch.Generator(device=device).manual_seed(0))
    if config.tie_word_embeddings:  # to_empty gave the two shared tensors separate storage
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(device)
    return model.eval()


def weight_bytes(model) -> int:
    """The bytes of the model's weights, each tensor once (a tied lm_head is its embedding). With float8
    projections (quantize_fp8) their float8 rows and scales, and not the embedding table, which the lm_head no longer
    reads (a forward gathers a few of its rows)."""
    from sdar_core.gemm import Fp8Linear

    fp8 = isinstance(model.lm_head, Fp8Linear)
    skip = {id(model.model.embed_tokens.weight)} if fp8 else set()
    tensors = list(model.parameters()) + [
        b for m in model.modules() if isinstance(m, Fp8Linear) for b in (m.weight, m.weight_scale)
    ]
    seen, total = set(skip), 0
    for p in tensors:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def measure_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus bytes written."""
    if torch.device(device).type != "cuda":
        nbytes = 1 << 27
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize(device)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def as_ar(model):
    """The same weights viewed as an AR model (next-token prediction, the `ar` baseline)."""
    ar = copy.copy(model)
    ar.config = copy.copy(model.config)
    ar.config.model_type, ar.config.block_size = "qwen3_moe" if model.config.is_moe else "qwen3", 1
    return ar


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
