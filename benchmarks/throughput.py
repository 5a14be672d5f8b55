"""Training throughput of the AR and SDAR objectives: tokens/s and MFU of full training steps on random-init models.

    python -m benchmarks.throughput --out runs/throughput                 # Qwen3-0.6B and 1.7B shapes, GPU
    python -m benchmarks.throughput --tiny --out /tmp/tp                  # a tiny shape, runs on CPU

Each configuration runs a few warm-up steps (compilation) then timed steps of the real training step (forward,
backward, AdamW) in bf16 autocast with fp32 master weights, as training.train does. Paper App. B.1: SDAR's raw
throughput (tokens processed per GPU per second) is comparable to AR's, but SDAR processes the clean and the noisy
copy of each sample, so its effective speed is about half. Reported: raw tokens/s (SDAR counts 2T per T-token row),
effective tokens/s (T per row), and MFU = model FLOPs / step time / peak bf16 FLOPs (6 x parameters in matmuls x
tokens, plus attention over the visible keys only; lm_head on the noisy half only for SDAR).
Writes throughput.json and throughput.csv to --out, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from sdar_core.config import PUBLIC_SHAPES, ModelConfig
from sdar_core.device import synchronize
from sdar_core.model import SDARForCausalLM
from training.model_init import enable_gradient_checkpointing, init_weights, param_groups
from training.objective import PackedBatch, block_ids, document_causal_mask_mod, sdar_mask_mod
from training.recipe import Recipe
from training.train import compute_loss, step_generator

from .common import machine_info
from .table import print_table

# fmt: off
SHAPES = {
    **{f"qwen3-{size}": shape for size, shape in PUBLIC_SHAPES.items()},
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True),
}
# fmt: on
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}


@dataclass
class Result:
    shape: str
    objective: str
    parameters_m: float
    seq_len: int
    rows: int
    block_size: int
    attention: str
    compiled: bool
    grad_ckpt: bool
    step_s: float | None = None
    raw_tokens_per_s: float | None = None
    effective_tokens_per_s: float | None = None
    tflops_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None
    error: str | None = None


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def visible_pairs(objective: str, seq_len: int, block_size: int) -> int:
    """(query, key) pairs the attention mask allows for one row of one sample."""
    seg = torch.zeros(1, seq_len, dtype=torch.long)
    pos = torch.arange(seq_len)[None]
    if objective == "sdar":
        mod = sdar_mask_mod(seg, block_ids(seg, pos, block_size))
        n = 2 * seq_len
    else:
        mod, n = document_causal_mask_mod(seg), seq_len
    total = 0
    for start in range(0, n, 1024):  # in row chunks: 8k x 8k at once would be 64M booleans
        q = torch.arange(start, min(start + 1024, n))[None, :, None]
        total += int(mod(torch.zeros(1, 1, 1, dtype=torch.long), None, q, torch.arange(n)[None, None]).sum())
    return total


def step_flops(config: ModelConfig, objective: str, seq_len: int, rows: int, block_size: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward)."""
    h, L, d = config.hidden_size, config.num_hidden_layers, config.head_dim
    layer_params = (
        h * d * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
        + 3 * h * config.intermediate_size
    )
    tokens = rows * seq_len * (2 if objective == "sdar" else 1)
    head_tokens = rows * seq_len  # the lm_head runs on T positions in both objectives
    matmul = 2 * (L * layer_params * tokens + h * config.vocab_size * head_tokens)
    attention = 4 * config.num_attention_heads * d * L * rows * visible_pairs(objective, seq_len, block_size)
    return 3 * (matmul + attention)


def random_batch(rows: int, seq_len: int, vocab: int, device) -> PackedBatch:
    """Rows of random tokens packed with two samples each (the second starts mid-row)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab - 1, (rows, seq_len), generator=g)
    cut = seq_len // 3
    seg = (torch.arange(seq_len) >= cut).long().expand(rows, seq_len).contiguous()
    pos = (
        torch.where(seg == 0, torch.arange(seq_len), torch.arange(seq_len) - cut)
        .expand(rows, seq_len)
        .contiguous()
    )
    return PackedBatch(ids, seg, pos, torch.ones(rows, seq_len, dtype=torch.bool)).to(device)


@dataclass(frozen=True)
class Case:
    """One configuration to time: a model shape, an objective and the systems settings of the step."""

    shape: str
    objective: str  # "ar" | "sdar"
    seq_len: int
    rows: int
    block_size: int
    attention: str
    compile: bool
    grad_ckpt: bool

    def config(self) -> ModelConfig:
        sdar = self.objective == "sdar"
        return ModelConfig(
            model_type="sdar" if sdar else "qwen3",
            rope_theta=1e6,
            block_size=self.block_size if sdar else 1,
            mask_token_id=SHAPES[self.shape]["vocab_size"] - 1 if sdar else None,
            **SHAPES[self.shape],
        )


def training_step(case: Case, model: SDARForCausalLM, device: torch.device):
    """The real training step (forward, backward, clip, AdamW) on one fixed random batch, as a function of its index."""
    config = model.config
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if case.compile else model
    recipe = Recipe(
        mode="sdar-cpt" if case.objective == "sdar" else "ar",
        output_dir="-",
        data=["-"],
        block_size=case.block_size,
    )
    batch = random_batch(case.rows, case.seq_len, config.vocab_size, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def one_step(i: int) -> None:
        with autocast:
            out = compute_loss(
                forward, batch, recipe, config.mask_token_id, case.attention, step_generator(device, 0, i)
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return one_step


def seconds_per_step(one_step, warmup: int, steps: int, device: torch.device) -> float:
    """Mean wall time of `steps` steps after `warmup` untimed ones (compilation happens there)."""
    for i in range(warmup):
        one_step(i)
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(steps):
        one_step(warmup + i)
    synchronize(device)
    return (time.perf_counter() - t0) / steps


def fill_rates(res: Result, case: Case, config: ModelConfig, step_s: float, device: torch.device) -> None:
    """Tokens/s (raw: SDAR counts the noisy and the clean copy), achieved TFLOP/s, MFU and peak memory."""
    tokens = case.rows * case.seq_len
    res.step_s = round(step_s, 4)
    res.effective_tokens_per_s = round(tokens / step_s, 1)
    res.raw_tokens_per_s = round(tokens * (2 if case.objective == "sdar" else 1) / step_s, 1)
    flops = step_flops(config, case.objective, case.seq_len, case.rows, case.block_size) / step_s
    res.tflops_per_s = round(flops / 1e12, 4)
    peak = peak_flops(device)
    res.mfu = round(flops / peak, 4) if peak else None
    if device.type == "cuda":
        res.peak_memory_gib = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def measure(case: Case, warmup: int, steps: int, device: torch.device) -> Result:
    """Build the model of `case` on `device`, time its training step, and report; out of memory is a result too."""
    config = case.config()
    res = Result(
        case.shape,
        case.objective,
        round(config.num_parameters() / 1e6, 1),
        case.seq_len,
        case.rows,
        case.block_size,
        case.attention,
        case.compile,
        case.grad_ckpt,
    )
    model = None
    try:
        with torch.device(device):
            model = SDARForCausalLM(config)
        init_weights(model, 0.02)
        if case.grad_ckpt:
            enable_gradient_checkpointing(model)
        model.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step_s = seconds_per_step(training_step(case, model, device), warmup, steps, device)
        fill_rates(res, case, config, step_s, device)
    except torch.OutOfMemoryError as e:
        res.error = f"out of memory ({str(e).splitlines()[0][:120]})"
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


TABLE = [
    (c, c, "")
    for c in (
        "shape",
        "objective",
        "seq_len",
        "rows",
        "step_s",
        "raw_tokens_per_s",
        "effective_tokens_per_s",
        "tflops_per_s",
        "mfu",
        "peak_memory_gib",
        "grad_ckpt",
        "error",
    )
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for throughput.json / throughput.csv")
    parser.add_argument(
        "--shapes", default="qwen3-0.6b,qwen3-1.7b", help=f"comma list of {', '.join(SHAPES)}"
    )
    parser.add_argument("--objectives", default="ar,sdar")
    parser.add_argument("--tiny", action="store_true", help="the tiny shape, short rows, 2 steps (CPU)")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=1, help="rows per step (micro-batch)")
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--attention", default="auto", choices=["auto", "flex", "sdpa"])
    parser.add_argument(
        "--grad-ckpt",
        default="auto",
        choices=["auto", "on", "off"],
        help="auto: off, retried on when a configuration runs out of memory",
    )
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.shapes, args.seq_len, args.rows, args.warmup, args.steps = "tiny", 64, 2, 1, 2
    compile = device.type == "cuda" and not args.no_compile
    attention = args.attention if args.attention != "auto" else ("flex" if compile else "sdpa")
    results = []
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
        for objective in args.objectives.split(","):
            if objective not in ("ar", "sdar"):
                parser.error(f"unknown objective {objective!r}; choose ar or sdar")
            case = Case(
                shape,
                objective,
                args.seq_len,
                args.rows,
                args.block_size,
                attention,
                compile,
                grad_ckpt=args.grad_ckpt == "on",
            )
            res = measure(case, args.warmup, args.steps, device)
            if res.error and args.grad_ckpt == "auto":
                res = measure(replace(case, grad_ckpt=True), args.warmup, args.steps, device)
            results.append(res)
            print(
                f"{shape} {objective}: {res.raw_tokens_per_s} raw tok/s, {res.effective_tokens_per_s} effective, "
                f"MFU {res.mfu}" + (f" ({res.error})" if res.error else ""),
                flush=True,
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(device), "results": [asdict(r) for r in results]}
    (out / "throughput.json").write_text(json.dumps(report, indent=2))
    with (out / "throughput.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
        w.writeheader()
        w.writerows(asdict(r) for r in results)
    print_table([asdict(r) for r in results], TABLE)
    for shape in dict.fromkeys(r.shape for r in results):
        ar = next(
            (r for r in results if r.shape == shape and r.objective == "ar" and r.raw_tokens_per_s), None
        )
        sd = next(
            (r for r in results if r.shape == shape and r.objective == "sdar" and r.raw_tokens_per_s), None
        )
        if ar and sd:
            print(
                f"{shape}: SDAR/AR raw throughput {sd.raw_tokens_per_s / ar.raw_tokens_per_s:.2f}, "
                f"effective {sd.effective_tokens_per_s / ar.effective_tokens_per_s:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
