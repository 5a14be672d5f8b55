"""What a server's start costs before its first token, cold (empty kernel caches) and on a restart.

    python -m benchmarks.startup --out benchmarks/results/<name> [--arch sdar-1.7b] [--workdir /tmp/startup]

Writes a random-weight checkpoint of --arch once, then starts a fresh Python process twice on it with the same
kernel cache folders (TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR under --workdir, emptied before the first): each
process imports torch and sdar_core, loads the checkpoint, warms every decode shape the studio warms at start
(sdar_core.warmup: the default dynamic settings and the AR lane, cache buckets up to 2,048 positions) with a progress
line per shape, and then times one request (64-token prompt, first token and 64 tokens). The first process compiles
the Triton kernels (split-K attention, the fused norms, the expert kernels) and writes them to the cache; the
second, a restart, reads them back and pays only graph capture. With --precompile N a third start, cold again (caches
emptied), first starts N worker processes, before its own imports, which compile the kernels on stand-ins while it
loads the weights (as the studio does at start: sdar_core.prespawn, sdar_core.warmup.precompile). Not a test:
nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()  # the child's clock starts at its first line


WARMED = 2048  # positions the warm-up covers


def compiled_kernels(triton_cache: Path) -> dict[str, int]:
    """The Triton kernels in a cache folder: each kernel's name and how many compiled variants of it (one
    specialisation each: its constexprs, which integer arguments are 1 or divisible by 16, the target) lie there."""
    names: dict[str, int] = {}
    for binary in sorted(Path(triton_cache).glob("*/*.cubin")):
        names[binary.stem] = names.get(binary.stem, 0) + 1
    return names


def precompile_lines(stderr: str) -> list[str]:
    """The precompile workers' progress lines (sdar_core.warmup's `precompile: ...`) in a child's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("precompile: ")]


def child(checkpoint: str, workers: int) -> dict:
    # sdar_core.prespawn imports the standard library only: the workers start before this process's imports
    from sdar_core import prespawn

    spawned = prespawn.spawn(workers) if workers else []  # as the studio does (app/launch.py)
    spawned_s = time.perf_counter() - T0  # the workers' lines count from here
    import torch

    from sdar_core.config import ModelConfig
    from sdar_core.decode_params import DecodeParams
    from sdar_core.decoding import generate
    from sdar_core.device import default_device, default_dtype, synchronize
    from sdar_core.loading import load_pretrained
    from sdar_core.warmup import precompile, wait_for, warm_all, warm_shapes

    marks = dict(import_s=time.perf_counter() - T0)
    device = default_device()
    params = [DecodeParams(), DecodeParams(strategy="ar")]
    procs = []
    if workers:  # as the studio does: the jobs sent after the imports, before the load
        config = ModelConfig.from_json(Path(checkpoint) / "config.json")
        plan = [
            (config, p, shape)
            for p in (p.resolved(config) for p in params)
            for shape in warm_shapes([p], WARMED, config.max_position_embeddings)
        ]
        procs = precompile(
            plan,
            device=str(device),
            dtype=default_dtype(device),
            fused=True,
            workers=workers,
            spawned=spawned,
        )
        marks["workers_spawned_s"] = spawned_s
        marks["precompile_started_s"] = time.perf_counter() - T0  # the jobs sent
    model, _ = load_pretrained(checkpoint, device=device, with_tokenizer=False)
    model.fuse_projections()
    synchronize(device)
    marks["loaded_s"] = time.perf_counter() - T0
    shapes = warm_all(
        model,
        params,
        WARMED,
        filler_id=5,
        on_shape=lambda i, n, s, sec: print(f"  warm-up {i + 1}/{n}: {s}: {sec:.2f} s", flush=True),
    )
    marks |= dict(
        warm_shapes=len(shapes),
        warmed_s=time.perf_counter() - T0,
        warm_up_s=sum(sec for _, sec in shapes),
        first_shape_s=shapes[0][1] if shapes else 0.0,
    )
    prompt = [[5 + i % 50 for i in range(64)]]
    t = time.perf_counter()
    generate(model, prompt, DecodeParams(max_new_tokens=model.config.block_size, stop_token_ids=[]))
    synchronize(device)
    marks["first_token_after_warm_up_s"] = time.perf_counter() - t
    marks["first_token_s"] = time.perf_counter() - T0
    t = time.perf_counter()
    out = generate(model, prompt, DecodeParams(max_new_tokens=64, stop_token_ids=[]))
    synchronize(device)
    marks["request_64_tokens_s"] = time.perf_counter() - t
    marks["tokens"] = int(out.lengths[0])
    marks["precompile_workers"] = len(procs)
    claims = getattr(
        procs, "claims", None
    )  # the kernels this process compiled itself, and its waits for workers
    marks["server_kernels_compiled"] = claims.compiled if claims is not None else None
    marks["server_waited_s"] = claims.waited_s if claims is not None else None
    marks["precompile_exit_codes"] = wait_for(procs)
    marks["device"] = str(device) + (
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    )
    return marks


def stand_in_child(checkpoint: str) -> dict:
    """A fresh process that builds the precompile workers' stand-in of the checkpoint's config and nothing else:
    each phase's end in seconds since the process started (what a worker's storage costs with no server beside it)."""
    import torch

    from sdar_core.config import ModelConfig
    from sdar_core.device import default_device, default_dtype
    from sdar_core.warmup import stand_in

    phases = {"imports done": time.perf_counter() - T0}
    device = default_device()
    torch.zeros(1, device=device)
    phases[f"{device} ready"] = time.perf_counter() - T0
    config = ModelConfig.from_json(Path(checkpoint) / "config.json")
    stand_in(
        config,
        device,
        default_dtype(device),
        fused=True,
        on_phase=lambda phase: phases.__setitem__(phase, time.perf_counter() - T0),
    )
    return phases


def stand_ins_alone(checkpoint: Path, count: int, env: dict) -> list[dict]:
    """`count` stand_in_child processes started at once; their phases."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.startup", "--stand-in-child", str(checkpoint)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a stand-in process failed (exit {proc.returncode}): {err[-2000:]}")
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="sdar-1.7b")
    p.add_argument("--workdir", default="/tmp/sdar-startup")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--precompile",
        type=int,
        default=0,
        metavar="WORKERS",
        help="also a cold start with this many precompile workers (sdar_core.warmup.precompile), caches emptied",
    )
    p.add_argument(
        "--stand-ins",
        type=int,
        default=0,
        metavar="N",
        help="then N fresh processes at once that only build the workers' stand-in (no server beside them): its "
        "phases, timed alone",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--stand-in-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.child_workers)), flush=True)
        return 0
    if args.stand_in_child:
        print("RESULT " + json.dumps(stand_in_child(args.stand_in_child)), flush=True)
        return 0

    # imported here, not at the top: a child process times its own imports from its first line (T0)
    import torch

    from sdar_core.device import default_device, default_dtype
    from sdar_core.loading import save_pretrained

    from .common import arch_config, machine_info, random_model

    work = Path(args.workdir)
    checkpoint, caches = work / "checkpoint", work / "caches"
    shutil.rmtree(work, ignore_errors=True)
    device = default_device()
    model = random_model(arch_config(args.arch), device, default_dtype(device))
    save_pretrained(model, None, checkpoint, dtype=default_dtype(device))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    env = dict(
        os.environ,
        TRITON_CACHE_DIR=str(caches / "triton"),
        TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"),
        PYTHONUNBUFFERED="1",
    )
    runs = []
    starts = [("cold", 0), ("restart", 0)]
    if args.precompile:
        starts += [(f"cold, {args.precompile} precompile workers", args.precompile)]
    for name, workers in starts:
        if name.startswith("cold"):
            shutil.rmtree(caches, ignore_errors=True)
        t = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.startup",
                "--child",
                str(checkpoint),
                "--child-workers",
                str(workers),
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        wall = time.perf_counter() - t
        print(done.stdout, done.stderr[-3000:] if done.returncode else "", flush=True)
        if done.returncode:
            raise SystemExit(f"the {name} start failed (exit {done.returncode})")
        marks = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
        kernels = compiled_kernels(caches / "triton")
        runs.append(
            dict(
                run=name,
                process_wall_s=wall,
                **marks,
                precompile_log=precompile_lines(done.stderr),
                triton_variants=sum(kernels.values()),
                triton_kernels=kernels,
            )
        )
        print(
            f"{name}: first token {marks['first_token_s']:.1f} s after the process started (import "
            f"{marks['import_s']:.1f}, loaded {marks['loaded_s']:.1f}, {marks['warm_shapes']} shapes warmed by "
            f"{marks['warmed_s']:.1f}); {sum(kernels.values())} Triton kernel variants in the cache",
            flush=True,
        )
    result = dict(
        machine=machine_info(device),
        arch=args.arch,
        command="python -m benchmarks.startup " + " ".join(argv if argv is not None else sys.argv[1:]),
        runs=runs,
    )
    if args.stand_ins:
        result["stand_ins_alone"] = stand_ins_alone(checkpoint, args.stand_ins, env)
        for i, phases in enumerate(result["stand_ins_alone"]):
            print(
                f"stand-in {i + 1} alone: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()),
                flush=True,
            )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "startup.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
