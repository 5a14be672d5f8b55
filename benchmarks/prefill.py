"""The prompt's prefill on a GPU: its wall time against the GPU time of its kernels, AR (causal) and SDAR
(block-causal), with the block-causal attention under a mask and without one (Kernels.mask_free_prefill), launched
op by op and as the graph of the plain forward padded to 256 tokens (runner.padded_prefill).

    python -m benchmarks.prefill --out benchmarks/results/<gpu>-prefill

For each prompt length (default 64, 512, 2048 and 8192) and each of `ar` (the same weights as an AR model, blocks of
one: SDPA's causal flash kernel), `sdar-masked` (blocks of 16 under the dense block-causal mask: SDPA's
memory-efficient kernel), `sdar` (blocks of 16 through attention.block_causal_attention) and `sdar-kernel` (the same
with its in-block half and merge in in_block.py's one kernel, Kernels.in_block_kernel), each through a plain
runner (launched op by op, as every prefill ran before), and `ar-graph` and `sdar-graph` through a graph runner,
which with Kernels.graphed_prefill replays a prefill of up to runner.PREFILL_PADDED tokens padded to that many:
the prefill chunk timed wall to wall after a synchronisation, median of --repeats after a first call (`first_ms`:
a graph runner captures its prefill graph there, what the warm-up pays for each runner),
then one prefill under torch.profiler: the kernels it launched, the time some kernel ran (`gpu_ms`, the union of
their intervals) and the attention kernels' share. Wall time far above gpu_ms says the host's launches bound the
prefill; near it, the kernels do. A bench row's `prefill_ms` is the same prefill inside generate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sdar_core.kernels import Kernels
from sdar_core.runner import PREFILL_PADDED, ChunkRunner

from . import common
from .common import as_ar, machine_info
from .profile_forward import covered_us, kernel_class

MODES = ("ar", "sdar-masked", "sdar", "sdar-kernel", "ar-graph", "sdar-graph")


def prefill_call(model, length: int, mode: str):
    """(a call that runs one prefill of `length` random tokens, the fresh plain runner whose cache it fills)."""
    ar = mode.startswith("ar")
    kernels = Kernels(
        mask_free_prefill=mode != "sdar-masked",
        in_block_kernel=mode == "sdar-kernel",
        graphed_prefill=mode.endswith("-graph"),
    )
    decoder = as_ar(model) if ar else model
    runner_mode = "graph" if mode.endswith("-graph") else "plain"
    runner = ChunkRunner(decoder, 1, length + 16, 1 if ar else 16, runner_mode, kernels=kernels)
    generator = torch.Generator(device=model.device).manual_seed(length)
    seq = torch.randint(
        10, model.config.vocab_size - 10, (1, length), device=model.device, generator=generator
    )

    def call(keep=decoder):  # the runner holds its model weakly: the call keeps the AR view alive
        return runner(seq, 0, length, logits_from=length, prefill=True)

    return call, runner


def wall_ms(call, repeats: int) -> tuple[float, float]:
    """(the first call's milliseconds: a graph runner's capture of its prefill graph, the median of the rest)."""
    times = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t))
    return times[0], statistics.median(times[1:])


def kernel_times(call) -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    attention = [e for e in kernels if kernel_class(e.name) == "attention"]
    return dict(
        kernels=len(kernels),
        gpu_ms=covered_us((e.time_range.start, e.time_range.end) for e in kernels) / 1000,
        attention_ms=sum(e.device_time for e in attention) / 1000,
        attention_kernels=sorted({e.name[:60] for e in attention}),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sdar-1.7b", choices=sorted(common.ARCHS))
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 512, 2048, 8192])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.prefill measures a GPU's prefill: no CUDA device here")
    model = common.random_model(common.arch_config(args.arch, 16), torch.device("cuda"), torch.bfloat16)
    model.fuse_projections()
    rows = []
    with torch.no_grad():
        for length in args.lengths:
            for mode in args.modes:
                if mode.endswith("-graph") and length > PREFILL_PADDED:
                    continue  # the graph runner's prefill is the plain one past PREFILL_PADDED
                call, _ = prefill_call(model, length, mode)
                first, wall = wall_ms(call, args.repeats)
                row = dict(length=length, mode=mode, wall_ms=wall, first_ms=first) | kernel_times(call)
                rows.append(row)
                print(
                    f"P={length:<5} {mode:<12} wall {row['wall_ms']:8.2f} ms  gpu {row['gpu_ms']:8.2f} ms  "
                    f"attention {row['attention_ms']:7.2f} ms  {row['kernels']} kernels  first {first:7.1f} ms",
                    flush=True,
                )
                del call
                torch.cuda.empty_cache()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        info = machine_info("cuda") | dict(arch=args.arch, repeats=args.repeats)
        (out / "prefill.json").write_text(json.dumps(dict(machine=info, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
