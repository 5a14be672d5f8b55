"""A decode beside threads that run Python: what the studio's decodes meet in a server (Gradio's handlers and event
loop), measured on `generate` alone.

Each setting of the studio bench (chat: static b16/4, dynamic b4; the race's AR lanes) decodes alone, beside a
thread that runs Python without a pause, and beside one that runs Python a fifth of the time (4 ms in every 20 ms,
about what a page's messages cost Gradio), at the studio's switch interval (app/interpreter.py); each in the
decoder's variants (VARIANTS): the default (the denoising step's work after the forward replayed as a CUDA graph,
steps.py; a static schedule's blocks read one block late, Kernels.read_ahead), every block read before the next is
launched (read_ahead=0; the static settings only, the others never read ahead), and the step launched op by op
(Kernels.graphed_step=False). Every Python call into torch lets go of the interpreter's lock and must win it back,
so a step's count of calls, and whether the device has work queued while the host makes them, set what a busy
neighbour costs the decode.

    python -m benchmarks.crowded_decode --arch sdar-1.7b --out benchmarks/results/<machine>-crowded-decode
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from app.interpreter import SWITCH_INTERVAL
from sdar_core import generate
from sdar_core.decoding import UntrainedBlockSizeWarning
from sdar_core.kernels import DEFAULT_KERNELS

from .common import ARCHS, arch_config, as_ar, machine_info, random_model

# (name, model: "sdar" or its AR twin, generate options)
SETTINGS = (
    ("static b16/4", "sdar", dict(strategy="static", block_length=16, steps=4)),
    ("dynamic b4", "sdar", dict(strategy="dynamic", block_length=4, steps=4, threshold=0.9)),
    ("ar", "sdar", dict(strategy="ar")),
    ("ar twin", "twin", dict(strategy="ar")),
)
NEIGHBOURS = ("alone", "busy", "a fifth busy")
# (name, what it changes in the default Kernels, whether it applies to every setting or to the static ones only)
VARIANTS = (
    ("default", {}, True),
    ("read each block", {"read_ahead": 0}, False),
    ("op by op", {"graphed_step": False}, True),
)
DUTY = (0.004, 0.016)  # seconds running Python, seconds asleep: "a fifth busy"


class Neighbour:
    """A thread running Python next to the decode: without a pause ("busy") or a fifth of the time."""

    def __init__(self, kind: str) -> None:
        self.kind, self.stop, self.thread = kind, threading.Event(), None

    def _run(self) -> None:
        busy, idle = DUTY if self.kind == "a fifth busy" else (None, 0.0)
        while not self.stop.is_set():
            end = time.perf_counter() + busy if busy else None
            while not self.stop.is_set() and (end is None or time.perf_counter() < end):
                sum(range(300))
            if idle:
                self.stop.wait(idle)

    def __enter__(self) -> Neighbour:
        if self.kind != "alone":
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def reads_ahead(which: str, options: dict) -> bool:
    """Whether a setting's decode can read ahead: the block decoder (SDAR weights) with a static schedule."""
    return which == "sdar" and options["strategy"] in ("static", "ar")


def tokens_per_second(model, ids, options: dict, repeats: int) -> float:
    speeds = []
    for _ in range(repeats):
        gen = generate(model, [ids], **options)
        speeds.append(gen.stats.tokens_per_second)
    return statistics.median(speeds)


def measure(args) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    sdar = random_model(arch_config(args.arch, block_size=16), device, dtype)
    models = {"sdar": sdar, "twin": as_ar(sdar)}
    ids = torch.randint(100, 1000, (args.prompt,)).tolist()
    rows = []
    warnings.simplefilter(
        "ignore", UntrainedBlockSizeWarning
    )  # random weights: every block length is as good
    old = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for name, which, options in SETTINGS:
            for variant, change, everywhere in VARIANTS:
                if not everywhere and not reads_ahead(which, options):
                    continue
                kernels = dataclasses.replace(DEFAULT_KERNELS, **change)
                opts = dict(options, max_new_tokens=args.new_tokens, trace=True, kernels=kernels)
                generate(models[which], [ids], **opts)  # captures and compiles outside the timing
                alone = None
                for kind in NEIGHBOURS:
                    with Neighbour(kind):
                        tps = tokens_per_second(models[which], ids, opts, args.repeats)
                    alone = tps if kind == "alone" else alone
                    rows.append(
                        {
                            "setting": name,
                            "variant": variant,
                            "neighbour": kind,
                            "tokens_per_s": tps,
                            "over_alone": tps / alone,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        sys.setswitchinterval(old)
    return rows


def summary(rows: list[dict]) -> str:
    lines = [
        "| setting | variant | alone (tok/s) | beside a busy thread | beside a fifth busy |",
        "|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["setting"], r["variant"]) for r in rows))
    for setting, variant in keys:
        by = {r["neighbour"]: r for r in rows if r["setting"] == setting and r["variant"] == variant}
        cells = [f"{by['alone']['tokens_per_s']:.1f}"] + [
            f"{by[k]['tokens_per_s']:.1f} ({by[k]['over_alone']:.2f})" for k in NEIGHBOURS[1:]
        ]
        lines.append(f"| {setting} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.crowded_decode", description=__doc__.splitlines()[0]
    )
    p.add_argument("--arch", default="sdar-1.7b", choices=sorted(ARCHS))
    p.add_argument("--out", required=True)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt", type=int, default=30, help="prompt tokens")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rows = measure(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine_info(device),
        "args": vars(args),
        "switch_interval": SWITCH_INTERVAL,
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "summary.md").write_text(summary(rows))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
