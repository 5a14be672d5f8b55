"""What the studio's decode loop pays for sharing the interpreter, on this machine's CPU (no GPU needed):

1. A loop of small torch calls (each lets go of the GIL and must win it back, as the decode loop's step logic does)
   alone and beside one thread running Python, at CPython's 5 ms switch interval and at shorter ones
   (app/interpreter.py sets SWITCH_INTERVAL).
2. Gradio's own Python work for one streamed message of a player, at the end of a 256-token answer: it walks every
   output element by element (`add_root_url`, `async_traverse` for files), then diffs it against the last one; for
   the feed as a list of steps (before) and as a text log (app/feed.py, now).

    python -m benchmarks.interpreter --out benchmarks/results/cpu-interpreter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from sdar_core.trace import StepEvent

from .common import machine_info

INTERVALS = (0.005, 0.001, 0.0005, 0.0002, 0.0001)


def torch_calls(n: int) -> float:
    x = torch.ones(64)
    t0 = time.perf_counter()
    for _ in range(n):
        x.mul(2).sum()
    return time.perf_counter() - t0


def beside_a_busy_thread(n: int) -> tuple[float, float]:
    """(seconds for n torch-call pairs, the busy thread's Python units per second meanwhile)."""
    stop, units = threading.Event(), [0]

    def busy():
        while not stop.is_set():
            sum(range(500))
            units[0] += 1

    t = threading.Thread(target=busy)
    t.start()
    try:
        seconds = torch_calls(n)
    finally:
        stop.set()
        t.join()
    return seconds, units[0] / seconds


def switch_rows(n: int, repeats: int) -> list[dict]:
    old, rows = sys.getswitchinterval(), []
    try:
        for interval in INTERVALS:
            sys.setswitchinterval(interval)
            alone = statistics.median(torch_calls(n) for _ in range(repeats))
            runs = [beside_a_busy_thread(n) for _ in range(repeats)]
            crowded = statistics.median(s for s, _ in runs)
            rows.append(
                {
                    "switch_interval_ms": interval * 1e3,
                    "calls": 2 * n,
                    "alone_s": alone,
                    "beside_busy_thread_s": crowded,
                    "slowdown": crowded / alone,
                    "us_per_call_beside_busy": 1e6 * crowded / (2 * n),
                    "busy_thread_units_per_s": statistics.median(u for _, u in runs),
                }
            )
    finally:
        sys.setswitchinterval(old)
    return rows


def answer_events(tokens: int = 256, block: int = 4) -> list[StepEvent]:
    """A dynamic decode's steps for a `tokens`-long answer: one token committed per step."""
    events = []
    for b in range(tokens // block):
        state = [1] * block
        for s in range(block):
            state = state[:s] + [100 + b * block + s] + state[s + 1 :]
            events.append(
                StepEvent(
                    row=0,
                    block=b,
                    step=s,
                    block_start=40 + b * block,
                    block_state=list(state),
                    committed=[s],
                    committed_confidence=[0.9],
                    masked_confidence={i: 0.4 for i in range(s, block)},
                    candidates={i: 7 for i in range(s, block)},
                    prompt_positions=[],
                    final=s == block - 1,
                    stopped=False,
                )
            )
    return events


def gradio_message_seconds(before: dict, after: dict, repeats: int) -> float:
    """Gradio's Python work for sending `after` when `before` was sent last (blocks.process_api's walk for file
    URLs, the async walk for files to cache, utils.diff)."""
    from gradio import processing_utils
    from gradio.utils import diff
    from gradio_client import utils as client_utils

    async def one() -> None:
        data = processing_utils.add_root_url([after], "http://127.0.0.1:7860", None)
        await client_utils.async_traverse(data, lambda x: x, client_utils.is_file_obj_with_meta)
        diff([before], data)

    async def timed() -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            await one()
        return (time.perf_counter() - t0) / repeats

    return asyncio.run(timed())


def message_rows(repeats: int) -> list[dict]:
    from app.feed import Feed, expand

    events = answer_events()
    feed = Feed(run=1, title="", block_length=4, ar=False, pace_ms=0)
    pieces = {100 + i: f"t{i}" for i in range(256)}
    feed.push(events[:-4], pieces)
    text_before = feed.value()
    # the same feed with its steps as a list (the form it had before the log)
    list_before = expand(text_before)
    feed.push(events[-4:], {})
    text_after = feed.value()
    list_after = expand(text_after)
    return [
        {
            "feed": name,
            "steps": len(events),
            "gradio_ms_per_message": 1e3 * gradio_message_seconds(before, after, repeats),
            "value_bytes": len(json.dumps(after)),
        }
        for name, before, after in (
            ("list of steps (before)", list_before, list_after),
            ("text log (now)", text_before, text_after),
        )
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.interpreter", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--calls", type=int, default=5000, help="torch-call pairs per timed loop")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = {
        "machine": machine_info(torch.device("cpu")),
        "switch": switch_rows(args.calls, args.repeats),
        "messages": message_rows(20 * args.repeats),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    lines = [
        "| switch interval (ms) | torch calls alone (s) | beside a busy thread (s) | slowdown | µs per call | "
        "busy thread's work/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["switch"]:
        lines.append(
            f"| {r['switch_interval_ms']:g} | {r['alone_s']:.3f} | {r['beside_busy_thread_s']:.3f} | "
            f"{r['slowdown']:.0f}x | {r['us_per_call_beside_busy']:.0f} | {r['busy_thread_units_per_s']:.0f} |"
        )
    lines += [
        "",
        "| player feed | steps | Gradio's Python per message (ms) | value (bytes) |",
        "|---|---|---|---|",
    ]
    for r in result["messages"]:
        lines.append(
            f"| {r['feed']} | {r['steps']} | {r['gradio_ms_per_message']:.2f} | {r['value_bytes']} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
