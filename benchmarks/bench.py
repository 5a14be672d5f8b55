"""Benchmark harness: `python -m benchmarks.bench [--arch sdar-1.7b] [--out benchmarks/results/NAME]`.

Measures, in one run on one device:
- the memory-bandwidth ceiling (a large device-to-device copy) and the AR ceiling it implies
  (bytes of weights read per forward / bandwidth);
- our `ar` mode (next-token decoding, the AR baseline) and SDAR block decoding on the same weights,
  over batch sizes, block lengths and schedules (the paper's Figure 4), with the realized TPF of
  Appendix D.2 (Eq. 11) computed from the measured throughput;
- transformers' own `generate` on the same architecture as the AR peer (eager, and static cache +
  compile on CUDA);
- all of it at each of --prompt-lengths (the context sweep): the batch curve at the first, batch 1 at the others.
Writes results.json, results.csv and chart.html to --out and prints a table last. Random weights:
speed does not depend on what the weights are, except through the dynamic schedule, whose TPF on random
weights is the static minimum (docs/training.md has the TPF of a trained model).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sdar_core import gemm, pdl
from sdar_core import moe as experts
from sdar_core.config import ModelConfig
from sdar_core.decode_attention import split_k_available
from sdar_core.decoding import DecodeParams, generate
from sdar_core.device import default_device, default_dtype, synchronize
from sdar_core.kernels import FUSIONS, Kernels
from sdar_core.loading import WEIGHT_CHOICES, load_pretrained, weights_from_choice
from sdar_core.model import SDARForCausalLM
from sdar_core.runner import default_mode

from . import moe
from .common import ARCHS, arch_config, as_ar, machine_info, measure_bandwidth, random_model, weight_bytes
from .table import print_table


@dataclass
class Case:
    mode: str  # "ar" | "sdar" | "hf-eager" | "hf-compiled"
    prompt_len: int
    new_tokens: int
    strategy: str
    block_length: int
    steps: int
    threshold: float
    batch_size: int


def case_inputs(model, ar_model, case: Case):
    """(the model that decodes the case, the prompt ids, the decode arguments) of a case."""
    torch.manual_seed(case.batch_size)
    ids = torch.randint(10, model.config.vocab_size - 10, (case.batch_size, case.prompt_len)).tolist()
    kw = dict(max_new_tokens=case.new_tokens)
    if case.mode == "ar":
        return ar_model, ids, dict(kw, strategy="ar")
    return (
        model,
        ids,
        dict(
            kw,
            strategy=case.strategy,
            block_length=case.block_length,
            steps=case.steps,
            threshold=case.threshold,
        ),
    )


def run_case(model, ar_model, case: Case, repeats: int, params: DecodeParams):
    """params: the run's runner, compilation and kernels; the case fills in the rest."""
    decoder, ids, kw = case_inputs(model, ar_model, case)
    call = lambda: generate(decoder, ids, params, **kw)  # noqa: E731
    call()  # warm-up: graph capture, compilation
    gens = [call() for _ in range(repeats)]
    gen = sorted(gens, key=lambda g: g.stats.seconds)[len(gens) // 2]
    s = gen.stats
    decode_seconds = s.seconds - s.prefill_seconds
    return dict(
        new_tokens=s.new_tokens,
        forwards=s.forwards,
        seconds=s.seconds,
        prefill_ms=1000 * s.prefill_seconds,
        tokens_per_second=s.tokens_per_second,
        decode_tokens_per_second=s.new_tokens / decode_seconds,
        ms_per_forward=1000 * decode_seconds / max(s.forwards, 1),
        tpf=s.tpf,
    )


def moe_row(model, ar_model, case: Case, info: dict) -> dict:
    """An MoE case's distinct experts per sparse layer and forward, and the floor of such a forward."""
    decoder, ids, kw = case_inputs(model, ar_model, case)
    stats = moe.routing_stats(decoder, ids, case.block_length, **kw)
    if not stats:
        return {}
    kv = info["kv_bytes_per_position"] * case.batch_size * (case.prompt_len + case.new_tokens / 2)
    c = model.config
    return dict(
        stats,
        uniform_distinct_experts=moe.uniform_distinct(
            c.num_experts, c.num_experts_per_tok, stats["routed_rows"]
        ),
        moe_floor_ms=moe.moe_floor_ms(info, stats["distinct_experts"], kv),
    )


def run_transformers(
    config: ModelConfig, device, dtype, batch: int, prompt_len: int, new_tokens: int, compiled: bool
):
    """transformers' Qwen3 (or Qwen3-MoE) generate on the same architecture: the AR peer."""
    import transformers

    shape = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        tie_word_embeddings=config.tie_word_embeddings,
        max_position_embeddings=config.max_position_embeddings,
    )
    if config.is_moe:
        hc = transformers.Qwen3MoeConfig(
            **shape,
            num_experts=config.num_experts,
            num_experts_per_tok=config.num_experts_per_tok,
            moe_intermediate_size=config.moe_intermediate_size,
            norm_topk_prob=config.norm_topk_prob,
        )
        cls = transformers.Qwen3MoeForCausalLM
    else:
        hc, cls = transformers.Qwen3Config(**shape), transformers.Qwen3ForCausalLM
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the model's dtype: a float32 copy of a 30B model fits no GPU
    try:
        with torch.device(device):
            hf = cls(hc).eval()
    finally:
        torch.set_default_dtype(default)
    ids = torch.randint(10, config.vocab_size - 10, (batch, prompt_len), device=device)
    kw = dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        attention_mask=torch.ones_like(ids),
    )
    if compiled:
        kw["cache_implementation"] = "static"
    with torch.no_grad():
        for _ in range(2 if compiled else 1):
            hf.generate(ids, **kw)
        times = []
        for _ in range(2):
            synchronize(device)
            t = time.perf_counter()
            hf.generate(ids, **kw)
            synchronize(device)
            times.append(time.perf_counter() - t)
    del hf
    seconds = min(times)
    return dict(
        new_tokens=batch * new_tokens,
        forwards=new_tokens,
        seconds=seconds,
        tokens_per_second=batch * new_tokens / seconds,
        decode_tokens_per_second=batch * new_tokens / seconds,
        ms_per_forward=1000 * seconds / new_tokens,
        tpf=1.0,
    )


def sweep(args) -> list[tuple[int, int]]:
    """(prompt length, new tokens) of the context sweep: --new-tokens gives one count for all or one per length."""
    news = args.new_tokens if len(args.new_tokens) > 1 else args.new_tokens * len(args.prompt_lengths)
    if len(news) != len(args.prompt_lengths):
        raise SystemExit(
            f"--new-tokens takes one count or one per prompt length ({len(args.prompt_lengths)}), "
            f"got {len(news)}"
        )
    return list(zip(args.prompt_lengths, news))


def cases_for(args) -> list[Case]:
    out = []
    for i, (prompt, new) in enumerate(sweep(args)):
        for b in args.batch_sizes if i == 0 else [1]:
            out.append(Case("ar", prompt, new, "ar", 1, 1, 0.0, b))
            for L in args.block_lengths:
                steps = min(args.steps, L) if args.steps else max(1, L // args.tpf)
                out.append(Case("sdar", prompt, new, "static", L, steps, 0.0, b))
                if args.dynamic:
                    out.append(Case("sdar", prompt, new, "dynamic", L, L, args.threshold, b))
    return out


def realized_tpf(row: dict, ar_rows: dict) -> tuple[float | None, float | None]:
    """Eq. 11 of Appendix D.2 (the paper's engine: one extra forward per block), and the same without the
    extra forward (our fused cache write): TGS_SDAR * t_f / alpha, with t_f = alpha / TGS_AR (Eq. 9)."""
    ar = ar_rows.get((row.get("prompt_len"), row["batch_size"]))
    if ar is None or row["mode"] != "sdar":
        return None, None
    alpha, beta = row["batch_size"], row["block_length"]
    t_f = alpha / ar["decode_tokens_per_second"]
    fused = row["decode_tokens_per_second"] * t_f / alpha
    inv = alpha / (row["decode_tokens_per_second"] * t_f) - 1 / beta
    return (1 / inv if inv > 0 else None), fused


def write_outputs(out: Path, info: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    keys = sorted({k for r in rows for k in r})
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    try:
        import plotly.graph_objects as go
    except ImportError:
        return
    fig = go.Figure()
    series: dict[str, list[dict]] = {}
    for r in rows:  # the batch curve: the first prompt length
        if r["mode"] in ("ar", "sdar") and r.get("prompt_len", info["prompt_len"]) == info["prompt_len"]:
            label = "AR" if r["mode"] == "ar" else f"SDAR L={r['block_length']} {r['strategy']}"
            series.setdefault(label, []).append(r)
    for label, rs in series.items():
        rs = sorted(rs, key=lambda r: r["batch_size"])
        fig.add_scatter(
            x=[r["batch_size"] for r in rs],
            y=[r["tokens_per_second"] for r in rs],
            name=label,
            mode="lines+markers",
        )
    fig.update_layout(
        title=f"{info.get('arch')} on {info['gpu']} (torch {info['torch']}, {info['date']})",
        xaxis_title="batch size",
        yaxis_title="tokens / s",
        xaxis_type="log",
        yaxis_type="log",
    )
    fig.write_html(out / "chart.html", include_plotlyjs="cdn")


TABLE = [
    ("P", "prompt_len", "d"),
    ("mode", "mode", ""),
    ("strategy", "strategy", ""),
    ("L", "block_length", "d"),
    ("T", "steps", "d"),
    ("B", "batch_size", "d"),
    ("tok/s", "tokens_per_second", ".1f"),
    ("ms/fwd", "ms_per_forward", ".3f"),
    ("TPF", "tpf", ".2f"),
    ("rTPF", "realized_tpf_fused", ".2f"),
    ("x AR", "speedup_vs_ar", ".2f"),
]


def print_summary(info: dict, rows: list[dict]) -> None:
    print(f"\n{info.get('arch')} on {info['gpu']} | torch {info['torch']} | {info['date']}")
    print(
        f"bandwidth {info['bandwidth_GBps']:.0f} GB/s | weights {info['weight_GB']:.2f} GB | "
        f"floor {info['floor_ms_per_forward']:.3f} ms/forward | AR ceiling {info['ar_ceiling_tps']:.0f} tok/s"
    )
    print_table(rows, TABLE)


def forward_floor_ms(info: dict, prompt_len: int, new_tokens: int) -> float | None:
    """Reading the weights plus the K/V filled at mid-generation once, at the measured bandwidth."""
    if "kv_bytes_per_position" not in info:
        return None
    kv = info["kv_bytes_per_position"] * (prompt_len + new_tokens / 2)
    return 1000 * (info["weight_GB"] * 1e9 + kv) / (info["bandwidth_GBps"] * 1e9)


def report_markdown(results_dir: Path) -> str:
    """docs/performance.md's summary and first table, generated from a committed results.json."""
    data = json.loads((Path(results_dir) / "results.json").read_text())
    info, rows = data["machine"], data["rows"]
    command = re.sub(r" --out \S+", "", info.get("command", "python -m benchmarks.bench"))  # the reader's own
    sweep_ = info.get("sweep") or [[info["prompt_len"], info["new_tokens"]]]
    first = [r for r in rows if r.get("prompt_len", info["prompt_len"]) == info["prompt_len"]]
    ar1 = next(r for r in first if r["mode"] == "ar" and r["batch_size"] == 1)
    lines = [
        f"Measured by `{command}` on {info['gpu']} (torch {info['torch']}, "
        f"{info['date']}): {info['arch']} shape, random bf16 weights"
        f"{' stored as float8 (a scale per row)' if info.get('weights') == 'fp8' else ''} "
        f"({info['weight_GB']:.2f} GB), "
        f"{sweep_[0][0]}-token prompt, {sweep_[0][1]} new tokens, CUDA graphs ({info['runner']})"
        f"{', split-K decode attention' if info.get('split_k') else ''}.",
        "",
        f"- memory-bandwidth floor: {info['floor_ms_per_forward']:.3f} ms per forward "
        f"({info['bandwidth_GBps']:.0f} GB/s device copy), AR ceiling {info['ar_ceiling_tps']:.0f} tokens/s;",
        f"- our `ar` mode at batch 1: {ar1['tokens_per_second']:.0f} tokens/s, {ar1['ms_per_forward']:.2f} ms per "
        f"forward ({ar1['tokens_per_second'] / info['ar_ceiling_tps']:.0%} of the ceiling);",
    ]
    for r in (r for r in first if r["mode"].startswith("hf-")):
        lines.append(
            f"- transformers `generate` ({r['mode'][3:]}, batch 1): {r['tokens_per_second']:.0f} tokens/s;"
        )
    lines += [
        "",
        "| batch | mode | L | T | tokens/s | ms / forward | TPF | realized TPF (fused) | Eq. 11 | x AR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    decoded = (r for r in first if r["mode"] in ("ar", "sdar"))
    for r in sorted(decoded, key=lambda r: (r["batch_size"], r["block_length"])):
        eq11 = f"{r['realized_tpf_eq11']:.2f}" if r.get("realized_tpf_eq11") else "-"
        fused = f"{r['realized_tpf_fused']:.2f}" if r.get("realized_tpf_fused") else "-"
        lines.append(
            f"| {r['batch_size']} | {r['mode']} {r['strategy'] if r['mode'] == 'sdar' else ''} | "
            f"{r['block_length']} | {r['steps']} | {r['tokens_per_second']:.0f} | {r['ms_per_forward']:.2f} | "
            f"{r['tpf']:.2f} | {fused} | {eq11} | {r['speedup_vs_ar']:.2f} |"
        )
    if len(sweep_) > 1:
        lines += ["", *context_table(info, rows, sweep_)]
    return "\n".join(lines)


def context_table(info: dict, rows: list[dict], sweep_: list) -> list[str]:
    """Batch 1 at each prompt length: each mode against the floor of its forward and against transformers."""
    lines = [
        "Context sweep, batch 1 (floor: reading the weights and the K/V filled at mid-generation once):",
        "",
        "| prompt | new | mode | L | T | tokens/s | ms / forward | floor ms | x AR | x transformers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for prompt, new in sweep_:
        here = [r for r in rows if r.get("prompt_len") == prompt and r["batch_size"] == 1]
        hf = max((r["tokens_per_second"] for r in here if r["mode"].startswith("hf-")), default=None)
        floor = forward_floor_ms(info, prompt, new)
        for r in sorted(here, key=lambda r: (r["mode"].startswith("hf-"), r["mode"], r["block_length"])):
            mode = f"{r['mode']} {r['strategy']}" if r["mode"] == "sdar" else r["mode"]
            ar = f"{r['speedup_vs_ar']:.2f}" if r.get("speedup_vs_ar") else "-"
            peer = f"{r['tokens_per_second'] / hf:.2f}" if hf else "-"
            lines.append(
                f"| {prompt} | {new} | {mode} | {r['block_length']} | {r['steps']} | "
                f"{r['tokens_per_second']:.0f} | {r['ms_per_forward']:.2f} | "
                f"{f'{floor:.2f}' if floor else '-'} | {ar} | {peer} |"
            )
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="sdar-1.7b", choices=sorted(ARCHS), help="random weights of this shape")
    p.add_argument(
        "--checkpoint", default=None, help="benchmark this checkpoint (folder or hub id) instead of --arch"
    )
    p.add_argument("--device", default=str(default_device()))
    p.add_argument(
        "--prompt-lengths",
        "--prompt-len",
        dest="prompt_lengths",
        type=int,
        nargs="+",
        default=[64],
        help="the context sweep: the batch curve runs at the first, batch 1 at the others",
    )
    p.add_argument(
        "--new-tokens", type=int, nargs="+", default=[256], help="one count, or one per prompt length"
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    p.add_argument("--block-lengths", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--tpf", type=int, default=4, help="static schedule: steps = block_length / tpf")
    p.add_argument(
        "--steps", type=int, default=None, help="static schedule: this many steps per block (not --tpf)"
    )
    p.add_argument(
        "--routing",
        default="auto",
        choices=["auto", "model", "independent"],
        help="MoE: the model's own routing, or each chunk row routed independently (benchmarks/moe.py); "
        "auto: independent on random weights, the model's own for a --checkpoint",
    )
    p.add_argument(
        "--save-load",
        default=None,
        metavar="DIR",
        help="write the model to DIR with save_pretrained, load it back with load_pretrained and "
        "report both times and the peak memory; the loaded model is the one measured",
    )
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--no-dynamic", dest="dynamic", action="store_false")
    p.add_argument("--runner", default=None, choices=["plain", "static", "graph"])
    p.add_argument("--compile", action="store_true", help="torch.compile the graphed forward")
    p.add_argument(
        "--weights",
        choices=WEIGHT_CHOICES,
        default="dtype",
        help="fp8: the projections and the lm_head as float8 weights with a scale per row (model.quantize_fp8; "
        "the floor counts their bytes)",
    )
    p.add_argument(
        "--fuse", action="store_true", help="fuse the q/k/v and gate/up matmuls (model.fuse_projections)"
    )
    p.add_argument(
        "--no-split-k",
        dest="split_k",
        action="store_false",
        help="static-shape forwards use SDPA over the whole buffer instead of the split-K decode kernel",
    )
    p.add_argument(
        "--fusions",
        nargs="+",
        default=["all"],
        help="the fused decode kernels to take on CUDA (sdar_core/kernels.py: all, none, or names of "
        f"{' '.join(FUSIONS)}); the others run as eager kernels",
    )
    p.add_argument(
        "--no-skinny-gemm",
        dest="skinny_gemm",
        action="store_false",
        help="every projection through cuBLAS (default: one-row projections through sdar_core/gemm.py's kernel)",
    )
    p.add_argument(
        "--graphed-prefill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a short prompt's prefill as one graph of the forward padded to 256 tokens (Kernels.graphed_prefill)",
    )
    p.add_argument(
        "--in-block-kernel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="an SDAR prefill's in-block keys and merge in one Triton kernel (Kernels.in_block_kernel)",
    )
    p.add_argument(
        "--merge-fold",
        action="store_true",
        help="the split-K decode attention's splits merged by its last split of each tile, no merge kernel "
        "(Kernels.merge_fold)",
    )
    p.add_argument(
        "--rope-in-attention",
        action="store_true",
        help="q/k norm + RoPE and the K/V cache write inside the split-K attention kernel (Kernels.rope_in_attention)",
    )
    p.add_argument(
        "--expert-fold",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="an MoE layer's norm and residual add in its router GEMM and expert gemv kernels for one token "
        "(Kernels.expert_fold)",
    )
    p.add_argument(
        "--gate-route",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --expert-fold: the router's GEMM and the routing in one kernel (Kernels.gate_route)",
    )
    p.add_argument(
        "--persistent-mlp",
        action="store_true",
        help="a one-token dense MLP (norm, [gate; up], SwiGLU, down, add) as one persistent launch "
        "(Kernels.persistent_mlp)",
    )
    p.add_argument(
        "--no-expert-gemv",
        dest="expert_gemv",
        action="store_false",
        help="an MoE's one- or two-token expert steps through the sorted Triton kernels instead of the gemv form "
        "(sdar_core/moe.py)",
    )
    p.add_argument(
        "--gemv-tiles",
        nargs=5,
        type=int,
        metavar=("BLOCK_N", "DOWN_BLOCK_N", "BLOCK_K", "STAGES", "WARPS"),
        help="the gemv form's tiles (sdar_core.moe.GemvConfig; default: its defaults), e.g. the best_gemv that "
        "python -m benchmarks.moe --gemv-tiles found",
    )
    p.add_argument("--transformers", default="auto", choices=["auto", "none", "eager", "compiled", "both"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--out",
        default=None,
        help="folder for results.json / .csv / chart.html (with --report: where "
        "the redrawn chart goes; the folder read is never written)",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="print the Markdown summary of a results folder; run nothing",
    )
    p.add_argument(
        "--page",
        default=None,
        metavar="MD",
        help="with --report: rewrite the part of this Markdown page generated from the folder (its marks name it)",
    )
    return p


def load_model(args, device: torch.device, dtype: torch.dtype) -> SDARForCausalLM:
    """The --checkpoint (an SDAR one), or random weights of the --arch shape."""
    if not args.checkpoint:
        return random_model(arch_config(args.arch), device, dtype)
    model, _ = load_pretrained(args.checkpoint, device=device, dtype=dtype, with_tokenizer=False)
    if not model.config.is_sdar:
        raise SystemExit(
            f"{args.checkpoint} is an AR model (model_type {model.config.model_type}): the benchmark "
            "compares AR and SDAR decoding of an SDAR checkpoint"
        )
    return model


def device_info(model, device: torch.device, args, kernels: Kernels) -> dict:
    """The machine, the run's settings and the memory-bandwidth floor of a forward on it."""
    bw, wb, c = measure_bandwidth(device), weight_bytes(model), model.config
    kv_bytes = (
        2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * model.dtype.itemsize
    )  # per position
    return (
        machine_info(device)
        | dict(
            arch=args.arch,
            parameters=c.num_parameters(),
            weight_GB=wb / 1e9,
            bandwidth_GBps=bw / 1e9,
            floor_ms_per_forward=1000 * wb / bw,
            ar_ceiling_tps=bw / wb,
            kv_bytes_per_position=kv_bytes,
            prompt_len=args.prompt_lengths[0],
            sweep=sweep(args),
            runner=args.runner or default_mode(model),
            compile=args.compile,
            fused=args.fuse or args.weights == "fp8",
            weights=model.weights,
            fusions=kernels.fusions(),
            skinny_gemm=kernels.skinny_gemm,
            skinny_rows=gemm.MAX_ROWS if kernels.skinny_gemm else 0,
            add_splits=gemm.ADD_MAX_SPLIT,  # SDAR_ADD_SPLITS: 0, config_for's count
            gemm_ahead=gemm.AHEAD,  # SDAR_GEMM_AHEAD: two weight tiles in flight a program
            graphed_prefill=kernels.graphed_prefill,
            mask_free_prefill=kernels.mask_free_prefill,
            in_block_kernel=kernels.in_block_kernel,
            merge_fold=kernels.merge_fold,
            rope_in_attention=kernels.rope_in_attention,
            expert_fold=kernels.expert_fold,
            gate_route=kernels.gate_route,
            persistent_mlp=kernels.persistent_mlp,
            expert_gemv=kernels.expert_gemv,
            gemv_tiles=asdict(experts.GEMV),
            moe_early_down=experts.EARLY_DOWN,  # SDAR_MOE_EARLY: the down gemv's slots loaded before its wait
            pdl=pdl.REQUESTED and pdl.SUPPORTED,
            split_k=bool(args.split_k and split_k_available(device)),
            command="python -m benchmarks.bench " + " ".join(sys.argv[1:]),
        )
    )


def decode_rows(model, info: dict, args, params: DecodeParams) -> list[dict]:
    """Our `ar` mode and SDAR block decoding, one row per case; written after each when --out is given."""
    ar_model, rows = as_ar(model), []
    for case in cases_for(args):
        r = run_case(model, ar_model, case, args.repeats, params)
        if info.get("moe"):
            r |= moe_row(model, ar_model, case, info)
            r["of_moe_floor"] = r["moe_floor_ms"] / r["ms_per_forward"] if "moe_floor_ms" in r else None
        rows.append(
            dict(case.__dict__, **r, model=args.arch, gpu=info["gpu"], torch=info["torch"], date=info["date"])
        )
        print(
            f"  P={case.prompt_len:<5} {case.mode:<5}{case.strategy:<8} L={case.block_length:<3} T={case.steps:<3} "
            f"B={case.batch_size:<3} {r['tokens_per_second']:9.1f} tok/s  {r['ms_per_forward']:.3f} ms/forward",
            flush=True,
        )
        if args.out:  # partial results survive a run cut short
            write_outputs(Path(args.out), info, rows)
    return rows


def transformers_rows(
    config: ModelConfig, info: dict, args, device: torch.device, dtype: torch.dtype, rows: list[dict]
) -> None:
    """transformers' generate at batch 1 at each prompt length, in the --transformers modes, appended to rows (and
    written after each when --out is given); a mode that fails is skipped with its reason."""
    modes = {
        "auto": ["compiled"] if device.type == "cuda" else ["eager"],
        "none": [],
        "eager": ["eager"],
        "compiled": ["compiled"],
        "both": ["eager", "compiled"],
    }[args.transformers]
    for (prompt, new), mode in ((pn, m) for pn in sweep(args) for m in modes):
        try:
            r = run_transformers(config, device, dtype, 1, prompt, new, mode == "compiled")
        except Exception as e:  # the peer is informative, not essential: record why it is missing
            print(f"  transformers {mode} at {prompt} failed: {type(e).__name__}: {e}", flush=True)
            continue
        rows.append(
            dict(
                mode=f"hf-{mode}",
                prompt_len=prompt,
                strategy="ar",
                block_length=1,
                steps=1,
                threshold=0.0,
                batch_size=1,
                **r,
                model=args.arch,
                gpu=info["gpu"],
                torch=info["torch"],
                date=info["date"],
            )
        )
        print(f"  P={prompt:<5} hf-{mode} {r['tokens_per_second']:9.1f} tok/s", flush=True)
        if args.out:
            write_outputs(Path(args.out), info, rows)


def add_comparisons(rows: list[dict]) -> None:
    """Each row's realized TPF (Eq. 11, and fused) and its speed-up over `ar` at the same batch size."""
    ar_rows = {(r.get("prompt_len"), r["batch_size"]): r for r in rows if r["mode"] == "ar"}
    for r in rows:
        r["realized_tpf_eq11"], r["realized_tpf_fused"] = realized_tpf(r, ar_rows)
        base = ar_rows.get((r.get("prompt_len"), r["batch_size"]))
        r["speedup_vs_ar"] = r["tokens_per_second"] / base["tokens_per_second"] if base else None


PAGE_BEGIN = (
    "<!-- written by `python -m benchmarks.bench --report {folder} --page {page}`, to the end mark -->"
)
PAGE_END = "<!-- the end of the part written by bench --report -->"


def page_with_report(text: str, folder: str, page: str, root: Path = Path(".")) -> str:
    """A Markdown page's text with its generated part (from a PAGE_BEGIN line, whichever results folder it names, to
    PAGE_END) replaced by report_markdown of `folder` (relative to `root`) under a PAGE_BEGIN that names `folder`;
    the rest of the page kept. ValueError when the page has no such part."""
    any_folder = (
        re.escape(PAGE_BEGIN).replace(re.escape("{folder}"), r"\S+").replace(re.escape("{page}"), r"\S+")
    )
    begin, end = re.search(any_folder, text), text.find(PAGE_END)
    if begin is None or end < begin.end():
        raise ValueError(
            f"{page} has no generated part: it needs a line {PAGE_BEGIN!r} and a line {PAGE_END!r}"
        )
    report = report_markdown(root / folder).strip()
    source = (
        f"The summary and the tables are what `python -m benchmarks.bench --report {folder}` prints (it reads the "
        f"folder and writes nothing; `--page {page}` writes them into this page, `--out DIR` redraws the chart)."
    )
    return f"{text[: begin.start()]}{PAGE_BEGIN.format(folder=folder, page=page)}\n{report}\n\n{source}\n{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        data = json.loads((Path(args.report) / "results.json").read_text())
        if data["machine"].get("moe"):  # runs written before the MoE floor had the dense formula's
            data["machine"] |= moe.one_token_floor(data["machine"])
        if args.out:
            write_outputs(Path(args.out), data["machine"], data["rows"])
        if args.page:  # the page's generated part rewritten in place, from this folder
            page = Path(args.page)
            try:
                text = page_with_report(page.read_text(encoding="utf-8"), args.report, args.page)
            except (OSError, ValueError) as e:
                raise SystemExit(f"--page {args.page}: {e}") from None
            page.write_text(text, encoding="utf-8")
            print(f"{args.page}: its generated part is now the report of {args.report}")
            return 0
        print(report_markdown(Path(args.report)))
        return 0
    device = torch.device(args.device)
    dtype = default_dtype(device)
    model = load_model(args, device, dtype)
    if args.checkpoint:
        args.arch = str(args.checkpoint)
    loaded = {}
    if args.save_load:  # the model is dropped between the two, so the load's peak memory is its own
        save_s, block_size = moe.save(model, Path(args.save_load), dtype), model.config.block_size
        del model
        model, loaded = moe.load(Path(args.save_load), device, dtype)
        model.config.block_size, loaded["save_s"] = block_size, save_s
        print(
            f"  save_pretrained {save_s:.1f} s, load_pretrained {loaded['load_s']:.1f} s ({loaded['shards']} "
            f"shards, {loaded['checkpoint_GB']:.1f} GB, peak {loaded.get('peak_gpu_GB', 0):.1f} GB on the GPU, "
            f"{loaded['peak_host_rss_GB']:.1f} GB host)",
            flush=True,
        )
    if args.fuse:
        model.fuse_projections()
    if weights_from_choice(args.weights) == "fp8":
        model.quantize_fp8()  # fuses too
    if args.gemv_tiles:  # read at every call of the gemv form
        experts.GEMV = experts.GemvConfig(**dict(zip(moe.GEMV_TILES, args.gemv_tiles)))
    fusions = args.fusions[0] if args.fusions in (["all"], ["none"]) else set(args.fusions)
    kernels = Kernels(
        split_k_attention=None if args.split_k else False,
        skinny_gemm=args.skinny_gemm,
        graphed_prefill=args.graphed_prefill,
        in_block_kernel=args.in_block_kernel,
        merge_fold=args.merge_fold,
        rope_in_attention=args.rope_in_attention,
        expert_fold=args.expert_fold,
        gate_route=args.gate_route,
        expert_gemv=args.expert_gemv,
        persistent_mlp=args.persistent_mlp,
    )
    kernels = kernels.with_fusions(fusions)
    params = DecodeParams(runner_mode=args.runner, compile=args.compile, kernels=kernels)
    info = device_info(model, device, args, kernels) | ({"load": loaded} if loaded else {})
    if model.config.is_moe:
        info |= moe.moe_info(model)
        info |= moe.one_token_floor(info)
        info["routing"] = (
            args.routing if args.routing != "auto" else ("model" if args.checkpoint else "independent")
        )
        if info["routing"] == "independent":
            moe.IndependentRouting(model, rows=max(args.batch_sizes) * max(args.prompt_lengths + [128]))
    rows = decode_rows(model, info, args, params)
    config = model.config
    del model  # transformers' model of the same shape may need the memory
    if device.type == "cuda":
        torch.cuda.empty_cache()
    transformers_rows(config, info, args, device, dtype, rows)
    add_comparisons(rows)
    if args.out:
        write_outputs(Path(args.out), info, rows)
    print_summary(info, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
