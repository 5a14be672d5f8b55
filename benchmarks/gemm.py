"""The decode forward's projections one by one: cuBLAS (F.linear) against the skinny Triton GEMM (sdar_core/gemm.py)
for every projection shape of the 1.7B, 4B and 8B models at 1-64 rows, against the bandwidth floor.

    python -m benchmarks.gemm --out benchmarks/results/h200-gemm [--archs sdar-1.7b sdar-4b sdar-8b]
        [--rows 1 4 16 32 64] [--sweep-arch sdar-1.7b --sweep-rows 1 16 64] [--fp8]

Each measurement is a CUDA graph of one call per weight copy, with as many distinct copies of the weight as make
512 MB, so that every call reads its weight from memory (not from the 50-60 MB L2, as back-to-back calls on one
weight would), launched as the graphed forward launches it; the replay is timed with CUDA events (median of 3 runs
of 10 replays) and divided by the copies. Floor: the weight's bytes at the bandwidth of a device copy
(common.measure_bandwidth, bytes read + written). `--sweep-arch` also times a grid of tile shapes for its shapes
(block_n, block_k, split_k): the best of them against `config_for`'s choice says what the heuristic leaves.
`--fp8` adds the kernel over the same weights as float8 rows with a scale each (what `load_pretrained(...,
weights="fp8")` runs), launched with PDL, against its own floor (the float8 bytes and the scales). Also recorded:
each result's largest distance from the float64 product, in units of what one rounding of a float32
sum allows (tests/test_gemm.py's bound), for cuBLAS and for ours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sdar_core import gemm, pdl

from . import common
from .common import graph_replay_ms, machine_info

COLD_BYTES = 512 << 20


def projections(arch: str) -> list[tuple[str, int, int]]:
    """(name, N, K) of the fused decode projections of an architecture."""
    c = common.ARCHS[arch]
    h, d, inter = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    return [
        ("qkv", q + 2 * kv, h),
        ("o_proj", h, q),
        ("gate_up", 2 * inter, h),
        ("down", h, inter),
        ("lm_head", c["vocab_size"], h),
    ]


def time_us(fn, xs, ws) -> float:
    """Microseconds per call of fn(x, w) over the copies, from a CUDA graph's replay."""
    for x, w in zip(xs, ws):
        fn(x, w)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for x, w in zip(xs, ws):
            fn(x, w)
    us = 1000 * graph_replay_ms(graph, iters=10, runs=3) / len(ws)
    del graph
    return us


def excess(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> float:
    """max (|y - exact| - allowed) / allowed, allowed = one bf16 ulp + the float32 sum's error bound: <= 0 holds."""
    x, w = x.double(), w.double()
    exact = x @ w.T
    allowed = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(1e-300))) - 7)
    allowed += (x.abs() @ w.abs().T) * x.shape[-1] * 2.0**-24
    return float(((y.double() - exact).abs() / allowed).max() - 1)


def sweep_configs(rows: int, k: int) -> list[gemm.GemmConfig]:
    out = []
    for bn, bk, split in itertools.product((16, 32, 64, 128), (128, 256), (1, 2, 4, 8)):
        if k % split == 0 and k // split >= bk:
            out.append(gemm.GemmConfig(bn, bk, split))
    return out


def measure(args) -> dict:
    device = torch.device("cuda")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    bw = common.measure_bandwidth(device)
    result = dict(
        machine=machine_info(device), bandwidth_GBps=bw / 1e9, sms=sms, gemm_ahead=gemm.AHEAD, rows=[]
    )
    started = time.perf_counter()
    g = torch.Generator(device=device).manual_seed(0)
    for arch in args.archs:
        for name, n, k in projections(arch):
            nbytes = n * k * 2
            copies = max(1, -(-COLD_BYTES // nbytes))
            ws = [
                torch.randn(n, k, device=device, dtype=torch.bfloat16, generator=g) * 0.02
                for _ in range(copies)
            ]
            for rows in args.rows:
                xs = [torch.randn(rows, k, device=device, dtype=torch.bfloat16, generator=g)] * copies
                cfg = gemm.config_for(rows, n, k, sms)
                row = dict(arch=arch, proj=name, n=n, k=k, rows=rows, weight_MB=nbytes / 1e6, copies=copies)
                row["floor_us"] = 1e6 * nbytes / bw
                row["cublas_us"] = time_us(F.linear, xs, ws)
                # ours launched plainly, then (where it runs) with PDL: each call overlaps the previous one's
                # tail; the tile sweep below runs plainly too
                for key, chained in (("ours_us", False), ("ours_pdl_us", True)):
                    if chained and not pdl.SUPPORTED:
                        continue
                    pdl.REQUESTED = chained
                    row[key] = time_us(lambda x, w, c=cfg: gemm.launch(x, w, c), xs, ws)
                pdl.REQUESTED = False
                row["config"] = [cfg.block_n, cfg.block_k, cfg.split_k]
                row["cublas_excess"] = excess(F.linear(xs[0], ws[0]), xs[0], ws[0])
                row["ours_excess"] = excess(gemm.launch(xs[0], ws[0], cfg), xs[0], ws[0])
                if (
                    args.fp8
                ):  # the same product over float8 weights (a scale per row), PDL as the forward runs it
                    packed = [gemm.quantize_fp8(w) for w in ws]
                    cfg8 = gemm.config_for(rows, n, k, sms, fp8=True)
                    pdl.REQUESTED = pdl.SUPPORTED
                    row["fp8_us"] = time_us(
                        lambda x, q, c=cfg8: gemm.launch(x, q.data, c, q.scale), xs, packed
                    )
                    pdl.REQUESTED = False
                    row["fp8_floor_us"] = 1e6 * (n * k + 4 * n) / bw
                    row["fp8_config"] = [cfg8.block_n, cfg8.block_k, cfg8.split_k]
                    row["fp8_excess"] = excess(
                        gemm.launch(xs[0], packed[0].data, cfg8, packed[0].scale),
                        xs[0],
                        packed[0].dequantize(torch.float64),
                    )
                    row["fp8_of_bw"] = round(row["fp8_floor_us"] / row["fp8_us"], 3)
                    del packed
                if arch == args.sweep_arch and rows in args.sweep_rows and name != "lm_head":
                    tried = {}
                    for c in sweep_configs(rows, k):
                        if time.perf_counter() - started > args.budget_s:
                            break
                        try:
                            us = time_us(lambda x, w, c=c: gemm.launch(x, w, c), xs, ws)
                        except Exception as e:  # a tile shape this GPU cannot hold (shared memory)
                            print(f"  {c}: {type(e).__name__}", flush=True)
                            continue
                        tried[f"{c.block_n}/{c.block_k}/{c.split_k}"] = round(us, 2)
                    if tried:
                        best = min(tried, key=tried.get)
                        row |= dict(sweep=tried, best_config=best, best_us=tried[best])
                for key in ("cublas", "ours", "ours_pdl", "best"):
                    if f"{key}_us" in row:
                        row[f"{key}_of_bw"] = round(row["floor_us"] / row[f"{key}_us"], 3)
                result["rows"].append(row)
                print(
                    f"{arch} {name:8s} {n:6d}x{k:5d} rows {rows:2d}: floor {row['floor_us']:7.2f} us  cuBLAS "
                    f"{row['cublas_us']:7.2f} ({row['cublas_of_bw']:.2f})  ours {row['ours_us']:7.2f} "
                    f"({row['ours_of_bw']:.2f}) {row['config']}"
                    + (
                        f"  PDL {row['ours_pdl_us']:.2f} ({row['ours_pdl_of_bw']:.2f})"
                        if "ours_pdl_us" in row
                        else ""
                    )
                    + (f"  best {row['best_us']:.2f} {row['best_config']}" if "best_us" in row else "")
                    + (
                        f"  fp8 {row['fp8_us']:.2f} ({row['fp8_of_bw']:.2f} of its {row['fp8_floor_us']:.2f})"
                        if "fp8_us" in row
                        else ""
                    ),
                    flush=True,
                )
            del ws
            torch.cuda.empty_cache()
    return result


def summary(result: dict) -> str:
    lines = [
        f"# Skinny matmuls on {result['machine']['gpu']} (copy bandwidth {result['bandwidth_GBps']:.0f} GB/s)",
        "",
        "us per call, cold L2, inside a CUDA graph; (fraction of the copy bandwidth)",
        "",
        "| arch | projection | N x K | rows | floor | cuBLAS | ours (config) | ours with PDL | best swept | fp8 floor "
        "| fp8 weights, PDL (config) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        best = f"{r['best_us']:.2f} ({r['best_of_bw']:.2f}) {r['best_config']}" if "best_us" in r else ""
        pdl_us = f"{r['ours_pdl_us']:.2f} ({r['ours_pdl_of_bw']:.2f})" if "ours_pdl_us" in r else ""
        fp8 = (
            f"{r['fp8_floor_us']:.2f} | {r['fp8_us']:.2f} ({r['fp8_of_bw']:.2f}) {'/'.join(map(str, r['fp8_config']))}"
            if "fp8_us" in r
            else " | "
        )
        lines.append(
            f"| {r['arch']} | {r['proj']} | {r['n']}x{r['k']} | {r['rows']} | {r['floor_us']:.2f} | "
            f"{r['cublas_us']:.2f} ({r['cublas_of_bw']:.2f}) | {r['ours_us']:.2f} ({r['ours_of_bw']:.2f}) "
            f"{'/'.join(map(str, r['config']))} | {pdl_us} | {best} | {fp8} |"
        )
    return "\n".join(lines) + "\n"


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None)
    p.add_argument("--archs", nargs="+", default=["sdar-1.7b", "sdar-4b", "sdar-8b"])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    p.add_argument("--sweep-arch", default="sdar-1.7b")
    p.add_argument("--sweep-rows", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--budget-s", type=float, default=240, help="stop sweeping tile shapes after this long")
    p.add_argument(
        "--fp8", action="store_true", help="also time the kernel over float8 weights (gemm.quantize_fp8)"
    )
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("the skinny GEMM benchmark needs a CUDA GPU (the kernel is Triton's)")
    for arch in args.archs:
        if arch not in common.ARCHS or common.ARCHS[arch].get("num_experts"):
            raise SystemExit(f"--archs: {arch!r} is not a dense architecture of benchmarks.common.ARCHS")
    result = measure(args)
    text = summary(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1))
        (out / "summary.md").write_text(text)


if __name__ == "__main__":
    main()
