"""The wait of a fresh visitor's 8-token chat behind 4 maximal races (issue 33, finding 2), on the studio's public
API, on this machine (the CPU), with the embedded model.

    python -m benchmarks.fairness --label after --out benchmarks/results/fairness

The studio is launched in this process on a loopback port; every visitor is its own gradio_client (its own
session, so its own visitor on loopback). First a fresh chat alone (the baseline, median of 3); then 4 visitors
start a race at the caps (5 timed runs, 1,024 new tokens, block 1, the AR twin, one lane after the other, sampled
at temperature 2 so that the embedded model's answers run long), and once
they are under way fresh visitors send an 8-token chat one after the other: the chat's time to its whole answer,
minus the baseline (never below 0: on a shared machine the baseline is noisy), is its wait. The races are not
waited for: the process ends once the chats are measured.

Prediction (NOTES.md): first come first served (before), a chat waits for whole race rounds (the issue measured
153.9 s); with fair turns (after) it waits for the lane in flight at most, and the budget cuts each race to the
runs that fit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHAT_TOKENS = 8
RACES = 4
RACE_PROMPT = "Count from 1 to 500, separated by commas."
RACE_TEMPERATURE = (
    2.0  # sampled: the embedded model's greedy answers end after ~20 tokens, sampled ones run ~260
)
CHAT_PROMPT = "What is 47 + 38?"


def chat(client, model: str) -> float:
    """Seconds for one fresh 8-token chat (submit to the whole answer)."""
    t0 = time.perf_counter()
    client.predict(
        CHAT_PROMPT, "", model, 4, 4, "dynamic", 0.9, 0.0, 1.0, CHAT_TOKENS, 0, 0, api_name="/chat"
    )
    return time.perf_counter() - t0


def race(url: str, model: str, out: dict, index: int) -> None:
    """One maximal race; its seconds and outcome (or its error) in out[index]."""
    from gradio_client import Client

    t0 = time.perf_counter()
    try:
        result = Client(url, verbose=False).predict(
            RACE_PROMPT,
            model,
            1,
            1,
            "static",
            0.9,
            RACE_TEMPERATURE,
            1.0,
            1024,
            0,
            "one after the other (fair timings)",
            True,
            5,
            "",  # no system prompt
            api_name="/race",
        )
        out[index] = {"seconds": time.perf_counter() - t0, "headline": str(result[4])[:300]}
    except Exception as e:  # a refusal is an outcome too
        out[index] = {"seconds": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}"[:300]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="names the result file (before / after)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fairness")
    ap.add_argument("--chats", type=int, default=5, help="fresh chats measured behind the races")
    ap.add_argument("--gap", type=float, default=5.0, help="seconds between two measured chats")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds the races run before the first chat")
    ap.add_argument("--limit", type=float, default=400.0, help="seconds after which no new chat is sent")
    args = ap.parse_args(argv)

    import torch
    from gradio_client import Client

    from app.layout import LAUNCH_KWARGS
    from app.registry import DEFAULT_MODEL, ModelRegistry
    from app.ui import build_app

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    registry = ModelRegistry()
    registry.get(DEFAULT_MODEL)
    demo = build_app(default_model=DEFAULT_MODEL, registry=registry)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_KWARGS
    )
    url, model = f"http://127.0.0.1:{port}/", DEFAULT_MODEL

    chat(Client(url, verbose=False), model)  # first-use allocations
    alone = [chat(Client(url, verbose=False), model) for _ in range(5)]
    baseline = statistics.median(alone)
    print(f"a fresh {CHAT_TOKENS}-token chat alone: {baseline:.2f} s (median of 5)", flush=True)

    races: dict[int, dict] = {}
    threads = [threading.Thread(target=race, args=(url, model, races, i), daemon=True) for i in range(RACES)]
    t_races = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.settle)
    behind = []
    for i in range(args.chats):
        if time.perf_counter() - t_races > args.limit:
            break
        if i:
            time.sleep(args.gap)
        seconds = chat(Client(url, verbose=False), model)
        behind.append(seconds)
        print(
            f"fresh chat {i + 1} behind {RACES} races: {seconds:.2f} s (wait {seconds - baseline:.2f} s); races "
            f"ended so far: {len(races)}",
            flush=True,
        )
    result = {
        "label": args.label,
        "commit": commit(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": model,
        "chat_tokens": CHAT_TOKENS,
        "races": RACES,
        "race_settings": f"5 timed runs, 1024 new tokens, block 1, steps 1, static, temperature "
        f"{RACE_TEMPERATURE}, AR twin, one lane after the other",
        "chat_alone_s": alone,
        "chat_behind_races_s": behind,
        "chat_behind_median_s": statistics.median(behind),
        "chat_behind_max_s": max(behind),
        "wait_s": [max(0.0, s - baseline) for s in behind],
        "wait_median_s": max(0.0, statistics.median(behind) - baseline),
        "wait_max_s": max(0.0, max(behind) - baseline),
        "races_ended_while_measuring": races,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.label}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"a fresh chat behind {RACES} maximal races: median {result['chat_behind_median_s']:.2f} s, max "
        f"{result['chat_behind_max_s']:.2f} s (alone {baseline:.2f} s); wait median {result['wait_median_s']:.2f} s, "
        f"max {result['wait_max_s']:.2f} s -> {path}",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # the races still running end with the process
