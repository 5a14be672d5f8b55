"""What the app's user waits for on a CPU: time to the first visible block and to the whole answer.

    python -m benchmarks.latency                  # 2 threads, 5 timed runs each -> out/latency-cpu.json
    python -m benchmarks.latency --threads 4 --repeats 9 --out /tmp/latency.json

The requirement: "On 2 CPU cores the app answers a chat message with the first block visible within a
second and 128 tokens in a few seconds". Each decoder answers one chat message the way the app's Chat tab does (one
row, chat template, greedy, trace on, an on_step callback, CPU float32) in three settings:

- "answer": "What is 47 + 38?" with the model's stop tokens, what a user sees end to end;
- "long answer": "Explain what a computer is.", whose answer (with the model's stop tokens) is cut at 128 tokens;
- "no stop": "Write a short poem about the sea." with no stop tokens, so that 128 tokens are decoded even after the
  model's own end of turn (what follows it is text the model is unsure of: SDAR's TPF falls to about 1 there).

Times run from before the prompt is tokenized: `first_token_s` to the first on_step event that commits a token
(a token on screen), `first_block_s` to the first event that finishes a block (the whole first block on screen;
the same as first_token_s for AR), `total_s` to the return of generate. One untimed warm-up run first; the median
of `--repeats` timed runs is reported, with the min and max. The load average is recorded: other processes on the
machine slow every number down.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from sdar_core import generate, load_pretrained
from sdar_core.paths import in_checkout
from sdar_core.prompting import encode_prompt, stop_ids_for

from .common import hardware_name
from .evaluate import Decoder

ANSWER_PROMPT = "What is 47 + 38?"
LONG_PROMPT = "Explain what a computer is."
FREE_PROMPT = "Write a short poem about the sea."
LONG_TOKENS = 128


CASES = (Decoder("sdar-tiny", "dynamic", 0.9), Decoder("sdar-tiny", "static"), Decoder("ar-tiny", "ar"))


def time_one(
    model, tokenizer, case: Decoder, prompt: str, *, max_new_tokens: int, stop: list[int] | None
) -> dict:
    """One chat answer, timed as the user sees it: seconds to the first committed token, to the first finished
    block, and to the end; and the new tokens and forwards."""
    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    def on_step(event) -> None:
        now = time.perf_counter() - t0
        if event.committed and "first_token_s" not in marks:
            marks["first_token_s"] = now
        if event.final and "first_block_s" not in marks:
            marks["first_block_s"] = now

    ids = encode_prompt(tokenizer, prompt, chat=True)
    gen = generate(model, [ids], case.params(max_new_tokens, stop or []), trace=True, on_step=on_step)
    total = time.perf_counter() - t0
    return {
        **marks,
        "total_s": total,
        "new_tokens": gen.lengths[0],
        "forwards": sum(gen.stats.steps_per_block[0]),
        "text": tokenizer.decode(gen.row_tokens(0), skip_special_tokens=True),
    }


def measure(
    model, tokenizer, case: Decoder, prompt: str, *, max_new_tokens: int, stop: list[int] | None, repeats: int
) -> dict:
    """Median, min and max over `repeats` timed runs after one warm-up run."""
    time_one(model, tokenizer, case, prompt, max_new_tokens=max_new_tokens, stop=stop)
    runs = [
        time_one(model, tokenizer, case, prompt, max_new_tokens=max_new_tokens, stop=stop)
        for _ in range(repeats)
    ]
    out = {
        "model": case.model,
        "decoding": case.label,
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "stop_tokens": bool(stop),
        "new_tokens": runs[0]["new_tokens"],
        "forwards": runs[0]["forwards"],
        "tpf": runs[0]["new_tokens"] / max(runs[0]["forwards"], 1),
        "text": runs[0]["text"],
    }
    for key in ("first_token_s", "first_block_s", "total_s"):
        values = [r[key] for r in runs]
        out[key] = statistics.median(values)
        out[key + "_min"], out[key + "_max"] = min(values), max(values)
    out["tokens_per_s"] = out["new_tokens"] / out["total_s"]
    return out


def markdown(result: dict) -> str:
    lines = [
        f"{result['machine']}, torch {result['torch']}, median of {result['repeats']} runs (load average "
        f"{result['load_average_before'][0]:.2f} before, {result['load_average_after'][0]:.2f} after).",
        "",
        "| model | decoding | message | new tokens | TPF | first token (s) | first block (s) | total (s) | "
        "tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        message = f"*{r['prompt']}*" + ("" if r["stop_tokens"] else " (no stop tokens)")
        lines.append(
            f"| {r['model']} | {r['decoding']} | {message} | {r['new_tokens']} | {r['tpf']:.2f} | "
            f"{r['first_token_s']:.3f} | {r['first_block_s']:.3f} | {r['total_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="assets/models")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="out/latency-cpu.json", help="the report (default: %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {
        name: load_pretrained(Path(in_checkout(args.models)) / name, device="cpu", dtype=torch.float32)
        for name in sorted({c.model for c in CASES})
    }
    load_before = os.getloadavg()
    runs = []
    for case in CASES:
        model, tokenizer = models[case.model]
        case_stop = stop_ids_for(tokenizer, model.config)
        for prompt, n, stop in (
            (ANSWER_PROMPT, LONG_TOKENS, case_stop),
            (LONG_PROMPT, LONG_TOKENS, case_stop),
            (FREE_PROMPT, LONG_TOKENS, None),
        ):
            runs.append(
                measure(model, tokenizer, case, prompt, max_new_tokens=n, stop=stop, repeats=args.repeats)
            )
            r = runs[-1]
            print(
                f"{case.model:9s} {case.label:11s} {r['new_tokens']:3d} tokens: first block "
                f"{r['first_block_s']:.3f} s, total {r['total_s']:.2f} s",
                flush=True,
            )
    result = {
        "command": "python -m benchmarks.latency " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": hardware_name("cpu"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "repeats": args.repeats,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(result))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
