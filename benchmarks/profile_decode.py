"""Where does a decode forward's time go? GPU time of one graphed forward vs wall time per token.

    python -m benchmarks.profile_decode --arch sdar-1.7b --out OUT

For each variant (CUDA graph of the eager forward; + fused q/k/v and gate/up; + torch.compile) it times
graph replays alone with CUDA events (GPU time per forward, Q = 1 and Q = 16 tokens), then whole
generate() calls (wall time per forward, which adds the host-side work of the decode loop), and profiles
one forward to count kernels. Prints a table and writes profile.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sdar_core.decoding import generate
from sdar_core.runner import ChunkRunner

from . import common
from .common import graph_replay_ms
from .table import print_table

TABLE = [
    ("variant", "variant", ""),
    ("kern", "kernels_q1", ""),
    ("gpu q1", "replay_ms_q1", ".3f"),
    ("gpu q16", "replay_ms_q16", ".3f"),
    ("gpu q32", "replay_ms_q32", ".3f"),
    ("AR wall", "ar_wall_ms_per_forward", ".3f"),
    ("SDAR wall", "sdar16x4_wall_ms_per_forward", ".3f"),
    ("AR t/s", "ar_tokens_per_s", ".1f"),
    ("SDAR t/s", "sdar16x4_tokens_per_s", ".1f"),
]


def replay_ms(model, q: int, compile: bool, total: int = 512, iters: int = 50) -> float:
    runner = ChunkRunner(model, 1, total, max(q, 1), "graph", compile)
    seq = torch.randint(0, 1000, (1, total), device="cuda")
    lf = q // 2 if q > 16 else 0  # the decoder's fused first step reads the second half only
    runner(seq, 256, q, lf)  # capture
    return graph_replay_ms(runner.graphs[(q, lf)][0], iters)


def kernels_per_forward(model, q: int, compile) -> tuple[int, list]:
    """Kernels launched by one forward (the same kernels a graph replays), and the costliest ones."""
    from torch.profiler import ProfilerActivity, profile

    runner = ChunkRunner(model, 1, 512, max(q, 1), "static", compile)
    seq = torch.randint(0, 1000, (1, 512), device="cuda")
    inputs = runner.static_inputs(seq[:, 256 : 256 + q], 256)  # what the runner hands its graphs

    def fwd():
        return runner.static_forward(inputs)

    for _ in range(3):
        fwd()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fwd()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    n = sum(e.count for e in events)
    top = sorted(events, key=lambda e: -e.device_time_total)[:10]
    return n, [(e.key[:60], e.count, round(e.device_time_total / 1000, 3)) for e in top]


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_decode", description=__doc__.splitlines()[0]
    )
    p.add_argument("--arch", default="sdar-1.7b")
    p.add_argument("--out", default=None, help="folder for profile.json (rewritten after each variant)")
    p.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="skip the torch.compile variant (it can take longer than a 10-minute call to compile)",
    )
    args = p.parse_args()
    config = common.arch_config(args.arch)
    results = {"arch": args.arch, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    model = common.random_model(config, torch.device("cuda"), torch.bfloat16)
    wb = common.weight_bytes(model)
    bw = common.measure_bandwidth("cuda")
    results["floor_ms"] = 1000 * wb / bw
    ar = common.as_ar(model)
    rows = []
    model.fuse_projections()
    variants = [("graph+fused", False)] + ([("graph+fused+compile-static", "static")] if args.compile else [])
    for name, comp in variants:
        row = {"variant": name}
        try:
            row["kernels_q1"], row["top_q1"] = kernels_per_forward(model, 1, comp)
            row["replay_ms_q1"] = replay_ms(model, 1, comp)
            row["replay_ms_q16"] = replay_ms(model, 16, comp)
            row["replay_ms_q32"] = replay_ms(model, 32, comp)
        except Exception as e:
            print(name, "failed:", type(e).__name__, str(e)[:2000], flush=True)
            continue
        ids = [torch.randint(10, 1000, (64,)).tolist()]
        for label, call in [
            ("ar", lambda: generate(ar, ids, max_new_tokens=256, strategy="ar", compile=comp)),
            (
                "sdar16x4",
                lambda: generate(
                    model, ids, max_new_tokens=256, strategy="static", block_length=16, steps=4, compile=comp
                ),
            ),
        ]:
            call()
            g = min((call() for _ in range(3)), key=lambda g: g.stats.seconds)
            row[f"{label}_wall_ms_per_forward"] = (
                1000 * (g.stats.seconds - g.stats.prefill_seconds) / g.stats.forwards
            )
            row[f"{label}_tokens_per_s"] = g.stats.tokens_per_second
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "top_q1"}), flush=True)
        for t in row["top_q1"]:
            print("   ", t)
        results["rows"] = rows
        if args.out:  # after each variant, so a run stopped by a time limit keeps what it measured
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "profile.json").write_text(json.dumps(results, indent=1))
    results["rows"] = rows
    print(f"floor {results['floor_ms']:.3f} ms/forward")
    print_table(rows, TABLE)


if __name__ == "__main__":
    main()
