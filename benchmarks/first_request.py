"""A server's first request of each shape against a warm one: what a visitor pays after the studio's warm-up.

    python -m benchmarks.first_request --out benchmarks/results/<name> [--arch sdar-1.7b] [--blocks 4 16]

One process, one random-weight model of --arch (the studio's own start, without Gradio):
1. warms the shapes the studio warms at start (sdar_core.warmup.warm_all: every block size of --blocks with the
   static and the dynamic schedule, up to 2048 positions);
2. per block size and prompt length (a prompt shorter than a block, one, two and three whole blocks and a token, and
   a long one), decodes --new-tokens with the step trace streamed (an on_step reader, as the studio's scheduler
   reads it): the first decode of that prompt length, then the same again, warm; tokens/s of each and their ratio
   (issue 29's goal: the first at least 0.8 of the warm one).
`--static-prefill` routes a prefill of at most two blocks through the static path at its own length, as the runner
did before prefills said so (`ChunkRunner.__call__(prefill=...)`), to measure what that cost; `--graphed-prefill`
replays a prefill of up to runner.PREFILL_PADDED tokens as its runner's prefill graph, padded
(Kernels.graphed_prefill, the default: the warm-up captures it); `--no-graphed-prefill` runs it op by op. Writes
results.json and summary.md under --out.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sdar_core import DecodeParams, generate
from sdar_core.device import default_device, default_dtype, synchronize
from sdar_core.kernels import Kernels
from sdar_core.runner import ChunkRunner
from sdar_core.warmup import warm_all

from .common import ARCHS, arch_config, machine_info, random_model

STRATEGIES = ("static", "dynamic")


def prompt_lengths(block: int) -> list[int]:
    """Shorter than a block, one, two and three whole blocks and a token, and a long prompt."""
    return [max(1, block // 2), block + 1, 2 * block + 1, 3 * block + 1, 200]


def triton_kernels() -> set[str]:
    """The compiled kernels in Triton's on-disk cache (a kernel built during a request shows up as a new entry)."""
    root = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    return {str(f.relative_to(root)) for f in root.glob("*/*.json") if not f.name.startswith("__grp__")}


def decode(model, prompt: list[int], params: DecodeParams) -> tuple[float, float, list[str]]:
    """Tokens/s of one decode of `prompt`, its steps read as they come (the studio's way); the seconds of its
    prefill; the names of the Triton kernels compiled during it."""
    steps, before = [], triton_kernels()
    synchronize(model.device)
    t0 = time.perf_counter()
    gen = generate(model, [prompt], params, on_step=steps.append)
    synchronize(model.device)
    tps = gen.stats.new_tokens / (time.perf_counter() - t0)
    built = sorted(Path(k).name.removesuffix(".json") for k in triton_kernels() - before)
    return tps, gen.stats.prefill_seconds, built


def old_prefill_path() -> None:
    """The runner before prefills said so: a chunk of at most two blocks took the static (graph) path."""
    call = ChunkRunner.__call__

    def static_prefill(self, seq, start, length, logits_from, prefill=False):
        return call(self, seq, start, length, logits_from, prefill and length > 2 * self.block_size)

    ChunkRunner.__call__ = static_prefill


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.first_request", description=__doc__.splitlines()[0]
    )
    p.add_argument("--arch", default="sdar-1.7b", choices=sorted(ARCHS))
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 16])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--static-prefill", action="store_true", help="the runner's prefill path before the fix")
    p.add_argument(
        "--graphed-prefill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="short prefills as one padded graph (Kernels.graphed_prefill)",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.static_prefill:
        old_prefill_path()
    device = default_device()
    config = arch_config(args.arch)
    config.trained_block_sizes = sorted(args.blocks)
    model = random_model(config, device, default_dtype(device))
    params = {
        (L, s): DecodeParams(
            block_length=L,
            steps=min(args.steps, L),
            strategy=s,
            threshold=0.9,
            max_new_tokens=args.new_tokens,
            stop_token_ids=[],
            kernels=Kernels(graphed_prefill=args.graphed_prefill),
        )
        for L in args.blocks
        for s in STRATEGIES
    }
    t0 = time.perf_counter()
    warm_all(model, list(params.values()), 2048, filler_id=1)
    warm_s = time.perf_counter() - t0
    rows = []
    for (L, strategy), dp in params.items():
        for n in prompt_lengths(L):
            prompt = [(7 * i + n) % 1000 + 10 for i in range(n)]
            first, first_prefill, built = decode(model, prompt, dp)
            warm, warm_prefill, _ = decode(model, prompt, dp)
            rows.append(
                {
                    "block": L,
                    "strategy": strategy,
                    "prompt": n,
                    "first_tps": first,
                    "warm_tps": warm,
                    "first_over_warm": first / warm,
                    "first_prefill_s": first_prefill,
                    "warm_prefill_s": warm_prefill,
                    "kernels_built": built,
                }
            )
            print(
                f"block {L} {strategy} prompt {n}: first {first:.0f}, warm {warm:.0f} tokens/s "
                f"({first / warm:.2f}); prefill {1000 * first_prefill:.1f} / {1000 * warm_prefill:.1f} ms; "
                f"Triton kernels built: {', '.join(built) or 'none'}",
                flush=True,
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "machine": machine_info(device),
        "arch": args.arch,
        "new_tokens": args.new_tokens,
        "static_prefill": args.static_prefill,
        "graphed_prefill": args.graphed_prefill,
        "warm_up_s": warm_s,
    }
    (out / "results.json").write_text(json.dumps({**info, "rows": rows}, indent=1))
    path = "padded to 256, a graph" if args.graphed_prefill else "plain"
    if args.static_prefill:
        path = "static at its length for <= 2 blocks (before)"
    lines = [
        f"First request after the warm-up ({args.arch}, {args.new_tokens} new tokens, prefill path: {path}; "
        f"warm-up {warm_s:.1f} s)",
        "",
        "| block | strategy | prompt tokens | first tok/s | warm tok/s | first / warm | prefill first / warm (ms) "
        "| Triton kernels built by the first |",
        "|---|---|---|---|---|---|---|---|",
    ] + [
        f"| {r['block']} | {r['strategy']} | {r['prompt']} | {r['first_tps']:.0f} | {r['warm_tps']:.0f} | "
        f"{r['first_over_warm']:.2f} | {1000 * r['first_prefill_s']:.1f} / {1000 * r['warm_prefill_s']:.1f} | "
        f"{', '.join(r['kernels_built']) or 'none'} |"
        for r in rows
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
