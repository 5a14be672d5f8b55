"""Decode attention side by side: one layer of SDAR-1.7B (16 query heads, 8 KV heads of 128, bf16, batch 1).

    python -m benchmarks.decode_attention --out benchmarks/results/h100-decode-attention

A preallocated buffer of T slots, `filled` of them committed; Q queries: Q = 1 (AR, L = 1) at index `filled`,
Q = 16 (the block in flight, L = 16) at filled..filled+15, Q = 32 (the fused cache-write chunk: the finished
block and the block in flight) at filled-16..filled+15. Every variant is captured in a CUDA graph and the replay
timed with events (median of 5 runs of 50 replays). Floor: the K/V slots below the last block's end read once at
the bandwidth of a device copy (bytes read + written), the measure common.measure_bandwidth takes for the weights.

Variants: today's path (K/V repeated for GQA, SDPA with an additive mask over the buffer); SDPA enable_gqa with
the same mask; SDPA over the filled slice (needs the length on the host: one graph per length, for reference);
flex_attention compiled, with a BlockMask whose per-row KV block count is rewritten on the device inside the
graph; our split-K Triton kernel at a few launch settings.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from sdar_core.attention import attention, block_causal_mask
from sdar_core.decode_attention import CacheQueries, SplitConfig, split_k_attention

from . import common
from .common import graph_replay_ms, machine_info

H, H_KV, D = 16, 8, 128
SHAPES = [(512, 320), (2560, 2304), (8704, 8448)]  # (buffer slots, committed)


def chunk(Q: int, filled: int) -> tuple[torch.Tensor, int]:
    """Cache indices of the queries and the block length for a chunk of Q queries."""
    if Q == 1:
        return torch.arange(filled, filled + 1), 1
    first = filled - 16 if Q == 32 else filled
    return torch.arange(first, first + Q), 16


def graph_time_us(fn, iters: int = 50, runs: int = 5) -> float:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return 1000 * graph_replay_ms(graph, iters, runs)


def flex_variant(q, k, v, where: CacheQueries):
    """flex_attention with a BlockMask whose KV block count per row is computed on the device at each call."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    T, block = k.shape[2], 128
    kv_num = torch.zeros(1, 1, 1, dtype=torch.int32, device=q.device)
    kv_idx = torch.arange(T // block, dtype=torch.int32, device=q.device).view(1, 1, 1, -1)
    L, q_index, pad = where.block_size, where.q_index, where.pad

    def mask_mod(b, h, qi, kj):
        i = q_index[qi]
        return (kj // L <= i // L) & ((kj >= pad[b]) | (kj == i))

    block_mask = BlockMask.from_kv_blocks(
        kv_num, kv_idx, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(q.shape[2], T)
    )
    compiled = torch.compile(flex_attention, dynamic=False)

    def run():
        kv_num.copy_(((where.kv_end(T) + block - 1) // block).view(1, 1, 1))
        return compiled(q, k, v, block_mask=block_mask, enable_gqa=True)

    return run


def variants(q, k, v, where: CacheQueries, filled_end: int):
    T = k.shape[2]
    bool_mask = block_causal_mask(where.q_index, T, where.block_size, k_start=where.pad)
    additive = torch.zeros(bool_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
        ~bool_mask, float("-inf")
    )
    slice_mask = bool_mask[..., :filled_end]
    out = {
        "today": lambda: attention(q, k, v, additive),
        "sdpa_gqa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=additive, enable_gqa=True),
        "sdpa_slice": lambda: attention(q, k[:, :, :filled_end], v[:, :, :filled_end], slice_mask),
        "flex": flex_variant(q, k, v, where),
    }
    for bn, warps, stages in [(64, 4, 2), (32, 4, 2), (128, 4, 2), (64, 4, 3), (64, 8, 2)]:
        config = replace(SplitConfig(), block_n=bn, num_warps=warps, num_stages=stages)
        out[f"splitk_n{bn}_w{warps}_s{stages}"] = lambda c=config: split_k_attention(q, k, v, where, c)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch._dynamo.config.cache_size_limit = 64  # one flex compilation per shape
    bw = common.measure_bandwidth("cuda")
    rows = []
    for T, filled in SHAPES:
        for Q in (1, 16, 32):
            idx, L = chunk(Q, filled)
            torch.manual_seed(0)
            q = torch.randn(1, H, Q, D, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(1, H_KV, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            where = CacheQueries(idx.cuda(), L, torch.zeros(1, dtype=torch.long, device="cuda"))
            end = min(int(idx[-1]) // L * L + L, T)
            ref = attention(
                q, k[:, :, :end], v[:, :, :end], block_causal_mask(where.q_index, end, L), backend="eager"
            )
            row = dict(slots=T, filled=filled, Q=Q, kv_end=end, floor_us=1e6 * 2 * end * H_KV * D * 2 / bw)
            for name, fn in variants(q, k, v, where, end).items():
                try:
                    err = ((fn().float() - ref.float()).norm() / ref.float().norm()).item()
                    row[name] = round(graph_time_us(fn), 2)
                    row[name + "_err"] = err
                except Exception as e:  # a variant that cannot run here is recorded, not fatal
                    row[name] = None
                    print(f"{name} T={T} Q={Q} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                info = machine_info("cuda") | dict(bandwidth_GBps=bw / 1e9, triton=_triton_version())
                (Path(args.out) / "results.json").write_text(
                    json.dumps({"machine": info, "rows": rows}, indent=1)
                )
    names = [k for k in rows[0] if k not in ("slots", "filled", "Q", "kv_end") and not k.endswith("_err")]
    print(f"\nmicroseconds per call (CUDA graph replay), bandwidth {bw / 1e9:.0f} GB/s")
    print(f"{'slots':>6}{'filled':>7}{'Q':>4} " + " ".join(f"{n[:18]:>18}" for n in names))
    for r in rows:
        print(
            f"{r['slots']:>6}{r['filled']:>7}{r['Q']:>4} "
            + " ".join(f"{r[n]:>18.1f}" if r.get(n) is not None else f"{'-':>18}" for n in names)
        )
    worst = max((r[n + "_err"] for r in rows for n in names if n + "_err" in r), default=0.0)
    print(f"largest relative error against the float32 eager reference: {worst:.2e}")


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
