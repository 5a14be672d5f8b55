"""Where a graphed decode forward spends its GPU time, by kernel class (SDAR-1.7B shape, batch 1, bf16).

    python -m benchmarks.profile_forward --out benchmarks/results/h100-profile-forward
    python -m benchmarks.profile_forward --arch sdar-30b-a3b --contexts 64 --split-k on --out DIR   (the MoE)

For `ar` (Q = 1, block 1) and SDAR block 16 (Q = 16) at a 64-token and an 8k-token context, with today's
attention and with the split-K decode kernel (Kernels.split_k_attention): the replay time of the runner's
CUDA graph, then the kernels of 20 replays under torch.profiler grouped into classes (kernels per layer and
microseconds per forward), and the idle time between kernels: a replay's span minus the time in which at least one
kernel runs. Kernels launched with PDL start while the one before drains and wait on the device, so their summed
time ("busy", and each class's) counts that waiting and can exceed the span; the idle time is what no kernel covers,
and what each kernel adds to the forward's end (`added_us`: its end minus the latest end before it, by its place in
a layer: qkv, o_proj, gate_up, down for the fused matmuls) is what it costs the forward.
A microbenchmark then times each of a layer's matmuls alone (graph of 20 calls) against reading its weight once,
and the cost of the smallest kernels (a residual add, an RMSNorm of one token).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from sdar_core import gemm as skinny
from sdar_core import pdl
from sdar_core.kernels import FUSIONS, Kernels
from sdar_core.runner import ChunkRunner

from . import common
from .common import graph_replay_ms, machine_info
from .moe import IndependentRouting, moe_floor_ms, moe_info

CLASSES = [
    ("experts", ("_expert_matmul", "_expert_gemv", "grouped")),
    ("routing", ("_route", "sort", "radix", "topk", "softmax", "cumsum", "scan")),
    ("fused", ("_add_norm", "_silu_mul", "_norm_rope")),
    (
        "attention",
        (
            "sdpa",
            "flash",
            "fmha",
            "attention",
            "_split_kernel",
            "_merge_kernel",
            "_in_block",
            "flex",
            "triton",
        ),
    ),
    ("matmul", ("nvjet", "gemv", "gemm", "cutlass", "xmma", "splitkreduce", "_skinny", "_mlp_kernel")),
    ("norm", ("layer_norm", "rms")),
    ("copy/index", ("index", "copy", "cat", "scatter", "gather")),
    ("elementwise", ("elementwise",)),
    ("reduce", ("reduce",)),
]


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CLASSES if any(k in low for k in keys)), "other")


SWITCHES = (
    "merge_fold",
    "rope_in_attention",
    "expert_fold",
    "gate_route",
    "persistent_mlp",
)  # recorded in each row


# a both/on/off option's values of its switch
SETTINGS = {"both": (False, True), "on": (True,), "off": (False,)}


def graphed(model, Q: int, total: int, start: int, kernels: Kernels):
    """The CUDA graph of one forward of Q rows at `start` of a `total`-slot cache with these kernels (as bench runs)."""
    runner = ChunkRunner(model, 1, total, Q, "graph", kernels=kernels)
    seq = torch.randint(10, 1000, (1, total), device="cuda")
    lf = 0
    runner(seq, start, Q, lf)
    return runner.graphs[(Q, lf)][0]


def covered_us(intervals) -> float:
    """The length of the union of (start, end) intervals: the time in which at least one of them runs."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total, reach = total + (end - start), end
        elif end > reach:
            total, reach = total + (end - reach), end
    return total


# A fused dense layer's matmuls in the order they run (model.fuse_projections()); the forward's last is the lm_head.
PROJECTIONS = ("qkv", "o_proj", "gate_up", "down")


def added_us(replays: list[list[tuple[str, float, float]]], layers: int) -> dict[str, float]:
    """The time each kernel of a forward adds to its end, by the kernel's place in a layer, averaged over replays
    of one graph (each a list of (name, start, end) in launch order): the kernel's end minus the latest end before
    it (0 when that came later), so a PDL kernel's early start and its wait count for nothing and the idle time
    before a kernel counts for it; the values of one replay sum to its span. A name that runs n times a layer
    (n x layers times a forward) is told apart as `name#i/n` by its place among them; the matmuls of a fused dense
    layer (four a layer, the lm_head after them) are named after PROJECTIONS; kernels that do not recur per layer
    keep their name and add up. Microseconds per occurrence: per layer for the per-layer ones."""
    totals: dict[str, float] = defaultdict(float)
    occurrences: dict[str, int] = {}
    for replay in replays:
        counts: dict[str, int] = defaultdict(int)
        for name, _, _ in replay:
            counts[name] += 1
        seen: dict[str, int] = defaultdict(int)
        reach = replay[0][1]
        for name, _, end in replay:
            k = seen[name]
            seen[name] += 1
            # a fused dense layer's matmuls: PROJECTIONS in every layer, then the lm_head
            projection = kernel_class(name) == "matmul" and counts[name] == len(PROJECTIONS) * layers + 1
            per_layer = len(PROJECTIONS) if projection else counts[name] // layers
            if per_layer and k < per_layer * layers:
                if projection:
                    label = PROJECTIONS[k % per_layer]
                else:
                    label = name if per_layer == 1 else f"{name}#{k % per_layer + 1}/{per_layer}"
                occurrences[label] = layers
            else:
                label = "lm_head" if projection else name
                occurrences.setdefault(label, 1)
            totals[label] += max(0.0, end - reach)
            reach = max(reach, end)
    return {label: t / len(replays) / occurrences[label] for label, t in totals.items()}


def replay_ms(graph, iters: int = 50) -> float:
    return graph_replay_ms(graph, iters)


def kernel_profile(graph, layers: int, reps: int = 20) -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    classes: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    names: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in kernels:
        for table, key in ((classes, kernel_class(e.name)), (names, e.name[:70])):
            table[key][0] += 1 / reps
            table[key][1] += e.device_time / reps
    busy = sum(e.device_time for e in kernels) / reps
    span = (
        (max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)) / reps
        if kernels
        else 0
    )
    covered = covered_us((e.time_range.start, e.time_range.end) for e in kernels) / reps
    ordered = sorted(kernels, key=lambda e: e.time_range.start)
    n = len(ordered) // reps
    replays = (
        [
            [(e.name[:70], e.time_range.start, e.time_range.end) for e in ordered[r * n : (r + 1) * n]]
            for r in range(reps)
        ]
        if n and len(ordered) == n * reps
        else []
    )
    return dict(
        kernels=len(kernels) / reps,
        busy_us=busy,
        span_us=span,
        idle_us=round(span - covered, 1),
        classes={
            c: dict(per_layer=round(n / layers, 2), per_forward=round(n, 1), us=round(t, 1))
            for c, (n, t) in sorted(classes.items(), key=lambda kv: -kv[1][1])
        },
        top=[
            (k, round(n, 1), round(t, 1))
            for k, (n, t) in sorted(names.items(), key=lambda kv: -kv[1][1])[:12]
        ],
        added_us={
            k: round(v, 2) for k, v in sorted(added_us(replays, layers).items(), key=lambda kv: -kv[1])
        },
    )


def microbench(model, bw: float) -> dict:
    """Each of a layer's matmuls alone at one token, and the smallest kernels, in graphs of 20 calls."""
    layer = model.model.layers[0]
    x = torch.randn(1, 1, model.config.hidden_size, device="cuda", dtype=torch.bfloat16)
    weights = {
        "qkv": layer.self_attn.qkv_weight,
        "o_proj": layer.self_attn.o_proj.weight,
        "gate_up": layer.mlp.gate_up_weight,
        "down": layer.mlp.down_proj.weight,
        "lm_head": model.lm_head.weight,
    }
    out = {}
    for name, w in weights.items():
        xin = torch.randn(1, 1, w.shape[1], device="cuda", dtype=torch.bfloat16)
        us = _graph_us(lambda: F.linear(xin, w))
        nbytes = w.numel() * w.element_size()
        out[name] = dict(
            us=round(us, 2), floor_us=round(1e6 * nbytes / bw, 2), GBps=round(nbytes / us / 1e3, 0)
        )
    norm = model.model.layers[0].input_layernorm
    out["residual_add"] = dict(us=round(_graph_us(lambda: x + x), 2))
    out["rms_norm"] = dict(us=round(_graph_us(lambda: norm(x)), 2))
    return out


def _graph_us(fn, calls: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return 1000 * replay_ms(graph) / calls


@torch.no_grad()  # as generate runs: the fused inference kernels only run without autograd
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--arch", default="sdar-1.7b", choices=sorted(common.ARCHS))
    p.add_argument("--contexts", nargs="+", default=["64", "8k"], choices=["64", "8k"])
    p.add_argument("--split-k", default="both", choices=list(SETTINGS))
    p.add_argument(
        "--gemm",
        nargs="+",
        default=["cublas"],
        choices=["cublas", "skinny", "cublas+pdl", "skinny+pdl"],
        help="the projections' kernel; +pdl: our Triton kernels launched with PDL (sdar_core/pdl.py)",
    )
    p.add_argument(
        "--fusions",
        nargs="+",
        default=["all"],
        help=f"the fused kernels (sdar_core/kernels.py: all, none, or names of {' '.join(FUSIONS)}), as bench takes"
        " them",
    )
    p.add_argument(
        "--merge-fold",
        default="off",
        choices=list(SETTINGS),
        help="the split-K attention's splits merged in its split kernel (Kernels.merge_fold), with --split-k on",
    )
    p.add_argument(
        "--rope-in-attention",
        action="store_true",
        help="q/k norm + RoPE and the K/V cache write inside the split-K kernel (Kernels.rope_in_attention)",
    )
    p.add_argument(
        "--expert-fold",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="an MoE layer's norm and add in its router GEMM and expert gemv kernels (Kernels.expert_fold)",
    )
    p.add_argument(
        "--gate-route",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --expert-fold: the router's GEMM and the routing in one kernel (Kernels.gate_route)",
    )
    p.add_argument(
        "--persistent-mlp",
        default="off",
        choices=list(SETTINGS),
        help="a one-token dense MLP as one persistent launch (Kernels.persistent_mlp)",
    )
    args = p.parse_args()
    fusions = args.fusions[0] if args.fusions in (["all"], ["none"]) else set(args.fusions)
    model = common.random_model(
        common.arch_config(args.arch), torch.device("cuda"), torch.bfloat16
    ).fuse_projections()
    ar = common.as_ar(model)
    layers = model.config.num_hidden_layers
    bw = common.measure_bandwidth("cuda")
    wb = common.weight_bytes(model)
    result = dict(machine=machine_info("cuda"), bandwidth_GBps=bw / 1e9, floor_ms=1000 * wb / bw, rows=[])
    if model.config.is_moe:
        # the one-token floor reads the dense weights and k experts per layer; every chunk row routes on its own
        # (see IndependentRouting)
        info = moe_info(model) | dict(bandwidth_GBps=bw / 1e9)
        result["floor_ms"] = moe_floor_ms(info, model.config.num_experts_per_tok, 0)
        IndependentRouting(model, rows=32)
    contexts = [c for c in (("64", 512, 64), ("8k", 8704, 8448)) if c[0] in args.contexts]
    for context, total, start in contexts:
        for mode, m, Q in (("ar", ar, 1), ("sdar16", model, 16)):
            splits, folds = SETTINGS[args.split_k], SETTINGS[args.merge_fold]
            persistent = SETTINGS[args.persistent_mlp]
            for split_k, gemm, fold, one_mlp in itertools.product(splits, args.gemm, folds, persistent):
                if fold and not split_k:
                    continue  # the fold is the split-K kernel's
                pdl.REQUESTED = gemm.endswith("+pdl")
                kernels = Kernels(
                    split_k_attention=split_k,
                    skinny_gemm=gemm.startswith("skinny"),
                    merge_fold=fold,
                    rope_in_attention=args.rope_in_attention,
                    expert_fold=args.expert_fold,
                    gate_route=args.gate_route,
                    persistent_mlp=one_mlp,
                ).with_fusions(fusions)
                graph = graphed(m, Q, total, start, kernels)
                row = dict(
                    context=context,
                    fusions=kernels.fusions(),
                    mode=mode,
                    split_k=split_k,
                    **{name: getattr(kernels, name) for name in SWITCHES},
                    gemm=gemm,
                    skinny_rows=skinny.MAX_ROWS if gemm.startswith("skinny") else 0,
                    add_splits=skinny.ADD_MAX_SPLIT,  # SDAR_ADD_SPLITS: 0, config_for's count
                    gemm_ahead=skinny.AHEAD,  # SDAR_GEMM_AHEAD
                    replay_ms=round(replay_ms(graph), 3),
                )
                row |= kernel_profile(graph, layers)
                result["rows"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "top"}), flush=True)
                del graph
                torch.cuda.empty_cache()
    result["microbench"] = {} if model.config.is_moe else microbench(model, bw)  # the dense layer's matmuls
    print(json.dumps(result["microbench"]), flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "profile.json").write_text(json.dumps(result, indent=1))
    print(f"\nfloor {result['floor_ms']:.3f} ms/forward at {bw / 1e9:.0f} GB/s")
    print(
        f"{'ctx':<4}{'mode':<8}{'split-k':<11}{'gemm':<7}{'replay ms':>10}{'kernels':>8}{'busy us':>9}"
        f"{'span us':>9}{'idle us':>9}  per class: "
        "kernels/layer, us/forward"
    )
    for r in result["rows"]:
        cls = "  ".join(f"{c} {v['per_layer']}/{v['us']:.0f}" for c, v in r["classes"].items())
        print(
            f"{r['context']:<4}{r['mode']:<8}{str(r['split_k']) + ('+fold' if r.get('merge_fold') else ''):<11}"
            f"{r.get('gemm', 'cublas'):<7}"
            f"{r['replay_ms']:>10.3f}{r['kernels']:>8.0f}"
            f"{r['busy_us']:>9.0f}{r['span_us']:>9.0f}{r['idle_us']:>9.0f}  {cls}"
        )
    print(
        "\nus each kernel adds to the forward's end (per occurrence; a matmul's floor from the microbenchmark):"
    )
    floors = result["microbench"]
    for r in result["rows"]:
        added = "  ".join(
            f"{k[:24]} {v:.1f}" + (f" (floor {floors[k]['floor_us']:.1f})" if k in floors else "")
            for k, v in list(r["added_us"].items())[:12]
        )
        gemm = r.get("gemm", "cublas") + ("+fold" if r.get("merge_fold") else "")
        print(f"{r['context']:<4}{r['mode']:<8}{gemm:<16}{added}")


if __name__ == "__main__":
    main()
