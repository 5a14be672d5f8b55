"""Benchmark harness: `python -m sdar_core.bench [--arch sdar-1.7b] [--out benchmarks/results/NAME]`.

Measures, in one run on one device:
- the memory-bandwidth ceiling (a large device-to-device copy) and the AR ceiling it implies
  (bytes of weights read per forward / bandwidth);
- our `ar` mode (next-token decoding, the AR baseline) and SDAR block decoding on the same weights,
  over batch sizes, block lengths and schedules (the paper's Figure 4), with the realized TPF of
  Appendix D.2 (Eq. 11) computed from the measured throughput;
- transformers' own `generate` on the same architecture as the AR peer (eager, and static cache +
  compile on CUDA).
Writes results.json, results.csv and chart.html to --out and prints a table last. Random weights:
speed does not depend on what the weights are, except through the dynamic schedule, whose TPF on random
weights is the static minimum (see the README for TPF of a trained model).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import PUBLIC_SHAPES, ModelConfig
from .decoding import generate, synchronize
from .loading import default_device, default_dtype, load_pretrained
from .model import SDARForCausalLM
from .runner import ChunkRunner, default_mode

ARCHS = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, vocab_size=4096, tie_word_embeddings=True),
    **{f"sdar-{size}": shape for size, shape in PUBLIC_SHAPES.items()},
}


def arch_config(name: str, block_size: int = 4) -> ModelConfig:
    if name not in ARCHS:
        raise SystemExit(f"unknown architecture {name!r}; choose one of {', '.join(ARCHS)}")
    fields = dict(ARCHS[name])
    return ModelConfig(model_type="sdar", block_size=block_size, mask_token_id=fields["vocab_size"] - 1,
                       rope_theta=1_000_000.0, max_position_embeddings=32768, eos_token_id=0, **fields)


def random_model(config: ModelConfig, device, dtype) -> SDARForCausalLM:
    """Random weights straight on the device (no CPU copy of a multi-GB model)."""
    with torch.device("meta"):
        model = SDARForCausalLM(config)
    model = model.to_empty(device=device).to(dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(device)
    return model.eval()


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
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


@dataclass
class Case:
    mode: str  # "ar" | "sdar" | "hf-eager" | "hf-compiled"
    strategy: str
    block_length: int
    steps: int
    threshold: float
    batch_size: int


def as_ar(model):
    """The same weights viewed as an AR model (next-token prediction, the `ar` baseline)."""
    import copy

    ar = copy.copy(model)
    ar.config = copy.copy(model.config)
    ar.config.model_type, ar.config.block_size = "qwen3", 1
    return ar


def run_case(model, ar_model, case: Case, prompt_len: int, new_tokens: int, repeats: int, runner_mode, compile):
    torch.manual_seed(case.batch_size)
    ids = torch.randint(10, model.config.vocab_size - 10, (case.batch_size, prompt_len)).tolist()
    kw = dict(max_new_tokens=new_tokens, runner_mode=runner_mode, compile=compile)
    if case.mode == "ar":
        call = lambda: generate(ar_model, ids, strategy="ar", **kw)  # noqa: E731
    else:
        call = lambda: generate(model, ids, strategy=case.strategy, block_length=case.block_length,  # noqa: E731
                                steps=case.steps, threshold=case.threshold, **kw)
    call()  # warm-up: graph capture, compilation
    gens = [call() for _ in range(repeats)]
    gen = sorted(gens, key=lambda g: g.stats.seconds)[len(gens) // 2]
    s = gen.stats
    decode_seconds = s.seconds - s.prefill_seconds
    return dict(new_tokens=s.new_tokens, forwards=s.forwards, seconds=s.seconds,
                tokens_per_second=s.tokens_per_second, decode_tokens_per_second=s.new_tokens / decode_seconds,
                ms_per_forward=1000 * decode_seconds / max(s.forwards, 1), tpf=s.tpf)


def run_transformers(config: ModelConfig, device, dtype, batch: int, prompt_len: int, new_tokens: int, compiled: bool):
    """transformers' Qwen3 generate on the same architecture: the AR peer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hc = Qwen3Config(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                     intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
                     num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                     head_dim=config.head_dim, tie_word_embeddings=config.tie_word_embeddings,
                     max_position_embeddings=config.max_position_embeddings)
    with torch.device(device):
        hf = Qwen3ForCausalLM(hc).to(dtype).eval()
    ids = torch.randint(10, config.vocab_size - 10, (batch, prompt_len), device=device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
              pad_token_id=0, attention_mask=torch.ones_like(ids))
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
    return dict(new_tokens=batch * new_tokens, forwards=new_tokens, seconds=seconds,
                tokens_per_second=batch * new_tokens / seconds, decode_tokens_per_second=batch * new_tokens / seconds,
                ms_per_forward=1000 * seconds / new_tokens, tpf=1.0)


def machine_info(device) -> dict:
    info = dict(torch=torch.__version__, python=platform.python_version(), date=dt.date.today().isoformat(),
                host=platform.node(), device=str(device))
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["gpu"] = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return info


def cases_for(args) -> list[Case]:
    out = []
    for b in args.batch_sizes:
        out.append(Case("ar", "ar", 1, 1, 0.0, b))
        for L in args.block_lengths:
            out.append(Case("sdar", "static", L, max(1, L // args.tpf), 0.0, b))
            if args.dynamic:
                out.append(Case("sdar", "dynamic", L, L, args.threshold, b))
    return out


def realized_tpf(row: dict, ar_rows: dict) -> tuple[float | None, float | None]:
    """Eq. 11 of Appendix D.2 (the paper's engine: one extra forward per block), and the same without the
    extra forward (our fused cache write): TGS_SDAR * t_f / alpha, with t_f = alpha / TGS_AR (Eq. 9)."""
    ar = ar_rows.get(row["batch_size"])
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
    for r in rows:
        if r["mode"] in ("ar", "sdar"):
            label = "AR" if r["mode"] == "ar" else f"SDAR L={r['block_length']} {r['strategy']}"
            series.setdefault(label, []).append(r)
    for label, rs in series.items():
        rs = sorted(rs, key=lambda r: r["batch_size"])
        fig.add_scatter(x=[r["batch_size"] for r in rs], y=[r["tokens_per_second"] for r in rs], name=label,
                        mode="lines+markers")
    fig.update_layout(title=f"{info.get('arch')} on {info['gpu']} (torch {info['torch']}, {info['date']})",
                      xaxis_title="batch size", yaxis_title="tokens / s", xaxis_type="log", yaxis_type="log")
    fig.write_html(out / "chart.html", include_plotlyjs="cdn")


def print_table(info: dict, rows: list[dict]) -> None:
    print(f"\n{info.get('arch')} on {info['gpu']} | torch {info['torch']} | {info['date']}")
    print(f"bandwidth {info['bandwidth_GBps']:.0f} GB/s | weights {info['weight_GB']:.2f} GB | "
          f"floor {info['floor_ms_per_forward']:.3f} ms/forward | AR ceiling {info['ar_ceiling_tps']:.0f} tok/s")
    print(f"{'mode':<12}{'strategy':<9}{'L':>4}{'T':>4}{'B':>5}{'tok/s':>10}{'ms/fwd':>9}{'TPF':>6}"
          f"{'rTPF':>6}{'x AR':>7}")
    for r in rows:
        print(f"{r['mode']:<12}{r['strategy']:<9}{r['block_length']:>4}{r['steps']:>4}{r['batch_size']:>5}"
              f"{r['tokens_per_second']:>10.1f}{r['ms_per_forward']:>9.3f}{r['tpf']:>6.2f}"
              f"{(r.get('realized_tpf_fused') or 0):>6.2f}{(r.get('speedup_vs_ar') or 0):>7.2f}")


def report_markdown(results_dir: Path) -> str:
    """The README's performance section, generated from a committed results.json."""
    data = json.loads((Path(results_dir) / "results.json").read_text())
    info, rows = data["machine"], data["rows"]
    ar1 = next(r for r in rows if r["mode"] == "ar" and r["batch_size"] == 1)
    hf = [r for r in rows if r["mode"].startswith("hf-")]
    lines = [
        f"Measured by `{info.get('command', 'python -m sdar_core.bench')}` on {info['gpu']} (torch {info['torch']}, "
        f"{info['date']}): {info['arch']} shape, random bf16 weights ({info['weight_GB']:.2f} GB), "
        f"{info['prompt_len']}-token prompt, {info['new_tokens']} new tokens, CUDA graphs ({info['runner']}).",
        "",
        f"- memory-bandwidth floor: {info['floor_ms_per_forward']:.3f} ms per forward "
        f"({info['bandwidth_GBps']:.0f} GB/s device copy), AR ceiling {info['ar_ceiling_tps']:.0f} tokens/s;",
        f"- our `ar` mode at batch 1: {ar1['tokens_per_second']:.0f} tokens/s, {ar1['ms_per_forward']:.2f} ms per "
        f"forward ({ar1['tokens_per_second'] / info['ar_ceiling_tps']:.0%} of the ceiling);",
    ]
    for r in hf:
        lines.append(f"- transformers `generate` ({r['mode'][3:]}, batch 1): {r['tokens_per_second']:.0f} tokens/s;")
    lines += ["", "| batch | mode | L | T | tokens/s | ms / forward | TPF | realized TPF (fused) | Eq. 11 | x AR |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["mode"] in ("ar", "sdar")), key=lambda r: (r["batch_size"], r["block_length"])):
        eq11 = f"{r['realized_tpf_eq11']:.2f}" if r.get("realized_tpf_eq11") else "-"
        fused = f"{r['realized_tpf_fused']:.2f}" if r.get("realized_tpf_fused") else "-"
        lines.append(f"| {r['batch_size']} | {r['mode']} {r['strategy'] if r['mode'] == 'sdar' else ''} | "
                     f"{r['block_length']} | {r['steps']} | {r['tokens_per_second']:.0f} | {r['ms_per_forward']:.2f} | "
                     f"{r['tpf']:.2f} | {fused} | {eq11} | {r['speedup_vs_ar']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdar_core.bench", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="sdar-1.7b", choices=sorted(ARCHS), help="random weights of this shape")
    p.add_argument("--checkpoint", default=None, help="benchmark this checkpoint (folder or hub id) instead of --arch")
    p.add_argument("--device", default=str(default_device()))
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    p.add_argument("--block-lengths", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--tpf", type=int, default=4, help="static schedule: steps = block_length / tpf")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--no-dynamic", dest="dynamic", action="store_false")
    p.add_argument("--runner", default=None, choices=["plain", "static", "graph"])
    p.add_argument("--compile", action="store_true", help="torch.compile the graphed forward")
    p.add_argument("--fuse", action="store_true", help="fuse the q/k/v and gate/up matmuls (model.fuse_projections)")
    p.add_argument("--split-k", action="store_true",
                   help="static-shape forwards use the split-K decode attention (sdar_core/decode_attention.py)")
    p.add_argument("--transformers", default="auto", choices=["auto", "none", "eager", "compiled", "both"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="folder for results.json / .csv / chart.html")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="print the Markdown summary of a results folder (and redraw its chart.html); run nothing")
    args = p.parse_args(argv)
    if args.report:
        data = json.loads((Path(args.report) / "results.json").read_text())
        write_outputs(Path(args.report), data["machine"], data["rows"])
        print(report_markdown(Path(args.report)))
        return 0
    device = torch.device(args.device)
    dtype = default_dtype(device)
    ChunkRunner.split_k_attention = args.split_k
    if args.checkpoint:
        model, _ = load_pretrained(args.checkpoint, device=device, dtype=dtype, with_tokenizer=False)
        config = model.config
        if not config.is_sdar:
            raise SystemExit(f"{args.checkpoint} is an AR model (model_type {config.model_type}): the benchmark "
                             "compares AR and SDAR decoding of an SDAR checkpoint")
        args.arch = str(args.checkpoint)
    else:
        config = arch_config(args.arch)
        model = random_model(config, device, dtype)
    if args.fuse:
        model.fuse_projections()
    ar_model = as_ar(model)
    bw = measure_bandwidth(device)
    wb = weight_bytes(model)
    info = machine_info(device) | dict(arch=args.arch, parameters=config.num_parameters(), weight_GB=wb / 1e9,
                                      bandwidth_GBps=bw / 1e9, floor_ms_per_forward=1000 * wb / bw,
                                      ar_ceiling_tps=bw / wb, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                                      runner=args.runner or default_mode(model),
                                      compile=args.compile, fused=args.fuse, split_k=args.split_k, command="python -m sdar_core.bench " + " ".join(sys.argv[1:]))
    rows = []
    for case in cases_for(args):
        r = run_case(model, ar_model, case, args.prompt_len, args.new_tokens, args.repeats, args.runner, args.compile)
        rows.append(dict(case.__dict__, **r, model=args.arch, gpu=info["gpu"], torch=info["torch"], date=info["date"]))
        print(f"  {case.mode:<5}{case.strategy:<8} L={case.block_length:<3} T={case.steps:<3} B={case.batch_size:<3} "
              f"{r['tokens_per_second']:9.1f} tok/s  {r['ms_per_forward']:.3f} ms/forward", flush=True)
        if args.out:  # partial results survive a run cut short
            write_outputs(Path(args.out), info, rows)
    hf_modes = {"auto": ["compiled"] if device.type == "cuda" else ["eager"], "none": [], "eager": ["eager"],
                "compiled": ["compiled"], "both": ["eager", "compiled"]}[args.transformers]
    for hm in hf_modes:
        try:
            r = run_transformers(config, device, dtype, 1, args.prompt_len, args.new_tokens, hm == "compiled")
        except Exception as e:  # the peer is informative, not essential: record why it is missing
            print(f"  transformers {hm} failed: {type(e).__name__}: {e}", flush=True)
            continue
        rows.append(dict(mode=f"hf-{hm}", strategy="ar", block_length=1, steps=1, threshold=0.0, batch_size=1, **r,
                         model=args.arch, gpu=info["gpu"], torch=info["torch"], date=info["date"]))
    ar_rows = {r["batch_size"]: r for r in rows if r["mode"] == "ar"}
    for r in rows:
        eq11, fused = realized_tpf(r, ar_rows)
        r["realized_tpf_eq11"], r["realized_tpf_fused"] = eq11, fused
        base = ar_rows.get(r["batch_size"])
        r["speedup_vs_ar"] = r["tokens_per_second"] / base["tokens_per_second"] if base else None
    if args.out:
        write_outputs(Path(args.out), info, rows)
    print_table(info, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
