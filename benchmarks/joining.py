"""Visitors who arrive while a batch decodes: joining it at a block boundary against waiting for the next batch.

`python -m benchmarks.joining --out DIR` loads a random-weight model of --arch and sends a stream of visitors to the
studio's decode scheduler (app/scheduler.py, without the web server: what is measured is the scheduling), visitor i
pressing Send i x GAP seconds after the first, each with its own prompt, static block 16 / 4 steps, --new-tokens new
tokens (no stop token: every answer has that length). For every gap and every scheduler setting it records each
visitor's wait (Send to the start of its decode), latency (Send to its whole answer) and the rows of the decode it
shared; per setting the median and slowest visitor, the makespan (first Send to last answer) and the aggregate
tokens/s. The settings: `next batch` (SDAR_JOIN=0: a visitor who arrives while a batch runs waits for its end) and
`join, width W` (a batch holds at least W rows; a visitor takes a free one at the next block boundary). Each stream
runs twice and the second is reported (the first captures the batch widths' CUDA graphs). `alone` rows: one visitor
with nobody else, per width, what a batch's free rows cost a lone visitor.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from app.registry import LoadedModel
from app.scheduler import DecodeScheduler, Finished, Job, Started
from sdar_core import DecodeParams
from sdar_core.device import default_device, default_dtype

from .common import ARCHS, arch_config, machine_info, random_model


def prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """n prompts of 40-71 tokens (a chat turn with its template), distinct ids below the mask id."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, vocab - 2, (40 + (17 * i) % 32,), generator=g).tolist() for i in range(n)]


def stream(
    loaded: LoadedModel, scheduler: DecodeScheduler, ids: list[list[int]], gap: float, p: DecodeParams
):
    """Visitor i submits at i * gap; per visitor: submit, start and end times (perf_counter), rows, tokens."""
    out = [dict(visitor=i) for i in range(len(ids))]

    def follow(job: Job, rec: dict) -> None:
        for u in job.updates_until_done(poll=0.01):
            if isinstance(u, Started):
                rec.update(started=time.perf_counter(), rows=u.batch)
            elif isinstance(u, Finished):
                rec.update(ended=time.perf_counter(), tokens=len(u.tokens))
            else:
                rec.setdefault("error", repr(getattr(u, "error", u)))

    readers = []
    t0 = time.perf_counter()
    for i, (prompt, rec) in enumerate(zip(ids, out)):
        time.sleep(max(0.0, t0 + i * gap - time.perf_counter()))
        job = Job(loaded, prompt, p, visitor=f"visitor-{i}")
        rec["submitted"] = time.perf_counter()
        scheduler.submit(job)
        readers.append(threading.Thread(target=follow, args=(job, rec)))
        readers[-1].start()
    for r in readers:
        r.join(600)
    return out


def summary(name: str, gap: float, visitors: list[dict], batches: int) -> dict:
    ok = [v for v in visitors if "ended" in v]
    latency = sorted(v["ended"] - v["submitted"] for v in ok)
    makespan = max(v["ended"] for v in ok) - min(v["submitted"] for v in visitors) if ok else None
    tokens = sum(v["tokens"] for v in ok)
    return {
        "setting": name,
        "gap_s": gap,
        "visitors": len(visitors),
        "answered": len(ok),
        "decodes": batches,
        "median_wait_s": statistics.median(v["started"] - v["submitted"] for v in ok) if ok else None,
        "median_latency_s": statistics.median(latency) if ok else None,
        "slowest_latency_s": latency[-1] if ok else None,
        "makespan_s": makespan,
        "aggregate_tps": tokens / makespan if makespan else None,
        "rows_seen": sorted({v["rows"] for v in ok}),
    }


def settings(widths: list[int]) -> list[tuple[str, bool, int]]:
    return [("next batch", False, 1)] + [(f"join, width {w}", True, w) for w in widths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.joining", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sdar-1.7b", choices=sorted(ARCHS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--visitors", type=int, default=8)
    ap.add_argument("--gaps", type=float, nargs="+", default=[0.02, 0.05, 0.1], metavar="SECONDS")
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args(argv)
    device = default_device()
    config = arch_config(args.arch, block_size=args.block)
    model = random_model(config, device, default_dtype(device))
    loaded = LoadedModel("bench", "bench", model, None)
    p = DecodeParams(
        strategy="static", block_length=args.block, steps=args.steps, max_new_tokens=args.new_tokens
    ).resolved(config)
    ids = prompts(args.visitors, config.vocab_size)
    rows, visitors = [], []
    for name, join, width in settings(args.widths):
        for label, gap, people in [("alone", 0.0, ids[:1])] + [("stream", g, ids) for g in args.gaps]:
            if label == "alone" and not join:
                continue
            scheduler = DecodeScheduler(f"bench-{width}", lock=threading.Lock(), join=join, width=width)
            for _ in range(2):  # the first run captures the widths' graphs; the second is reported
                before = scheduler.batches
                got = stream(loaded, scheduler, people, gap, p)
            row = summary(
                name if label == "stream" else f"alone, width {width}", gap, got, scheduler.batches - before
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
            visitors += [{"setting": row["setting"], "gap_s": gap, **v} for v in got]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine_info(device), **{k: v for k, v in vars(args).items() if k != "out"}}
    (out / "results.json").write_text(
        json.dumps({"info": info, "rows": rows, "visitors": visitors}, indent=1)
    )
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fmt = lambda x: "" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = [f"# Joining a running batch ({info['machine']['gpu']}, {args.arch})", ""]
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(fmt(v) for v in r.values()) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
