"""Training on two GPUs of one host: DDP against one GPU, FSDP against DDP, and resume under DDP, in one command.

    python -m benchmarks.multi_gpu --out runs/multi-gpu                     # a host with 2 GPUs (NCCL), ~6 minutes
    python -m benchmarks.multi_gpu --cpu --out /tmp/multi-gpu               # a tiny shape, 2 gloo processes on CPU

Every run is `training.train` on the shipped recipe training/recipes/multi-gpu-sdar-cpt.yaml (SDAR CPT from a random
init on generated text), launched with `accelerate launch` on GPUs and `torch.distributed.run` (gloo) on the CPU:
    ddp-1          Qwen3-0.6B shape, 1 process: micro_batch x 2 accumulation (the global batch of ddp-2)
    ddp-2          Qwen3-0.6B shape, 2 processes, DDP: micro_batch x 1 accumulation; a checkpoint at half way
    resume-2       ddp-2's half-way checkpoint resumed under DDP: its losses against ddp-2's, step by step
    fsdp-2-large   Qwen3-1.7B shape, 2 processes, FSDP2 full sharding; its final/ loaded and decoded on one device
    ddp-2-large    Qwen3-1.7B shape, 2 processes, DDP: the memory and speed FSDP is compared with
ddp-1 and ddp-2 read the same rows at every step but draw different diffusion noise (it is seeded per process and
micro-batch), so their losses agree within the noise of one step's loss, which is estimated from the curves.
Writes to --out: <run>.metrics.csv (each run's metrics.csv), summary.json and summary.md (the table, the commands).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sdar_core.config import PUBLIC_SHAPES
from sdar_core.paths import REPO

RECIPE = REPO / "training" / "recipes" / "multi-gpu-sdar-cpt.yaml"
# fmt: off
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
# fmt: on
WARMUP_STEPS = 5  # left out of tokens/s and of the loss comparison (allocator warm-up, first-step kernels)


@dataclass
class Plan:
    """What the runs use on this host: model shapes, steps, batch, and how processes are launched."""

    small: dict
    large: dict
    steps: int
    large_steps: int
    micro_batch: int
    seq_len: int
    cpu: bool

    def launcher(self, processes: int, port: int) -> list[str]:
        if self.cpu:  # accelerate launch runs a single process with --cpu; torchrun gives gloo processes
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(processes),
                "--master_port",
                str(port),
                "-m",
                "training.train",
            ]
        multi = ["--multi_gpu"] if processes > 1 else []
        return [
            "accelerate",
            "launch",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            *multi,
            "--mixed_precision",
            "bf16",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(port),
            "-m",
            "training.train",
        ]


def free_port() -> int:
    """A TCP port nobody listens on now, for the launcher's rendezvous: two runs at once must not share one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_plan() -> Plan:
    return Plan(
        PUBLIC_SHAPES["0.6b"],
        PUBLIC_SHAPES["1.7b"],
        steps=40,
        large_steps=20,
        micro_batch=8,
        seq_len=1024,
        cpu=False,
    )


def cpu_plan() -> Plan:
    return Plan(
        TINY_SHAPE,
        {**TINY_SHAPE, "hidden_size": 96},
        steps=12,
        large_steps=6,
        micro_batch=4,
        seq_len=64,
        cpu=True,
    )


@dataclass
class RunSpec:
    name: str
    large: bool  # the Qwen3-1.7B shape (else 0.6B)
    processes: int
    fsdp: bool = False
    resume_from: str | None = None  # a run whose half-way checkpoint this one continues
    extra: list[str] = field(default_factory=list)


RUNS = [
    RunSpec("ddp-1", False, 1),
    RunSpec("ddp-2", False, 2),
    RunSpec("resume-2", False, 2, resume_from="ddp-2"),
    RunSpec("fsdp-2-large", True, 2, fsdp=True),
    RunSpec("ddp-2-large", True, 2),
]

RESUMED = {
    r.resume_from for r in RUNS if r.resume_from
}  # runs whose half-way checkpoint another run continues


def write_corpus(path: Path) -> None:
    """Generated worked arithmetic and formulas (training.synthetic): about 1M tokens of the embedded tokenizer."""
    from training import synthetic

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for doc in synthetic.pretrain_documents(20000, 5000, seed=0):
            f.write(json.dumps({"text": doc}) + "\n")


def overrides(plan: Plan, spec: RunSpec, work: Path, tokenizer: str) -> list[str]:
    """key=value arguments of training.train for one run."""
    shape = plan.large if spec.large else plan.small
    steps = plan.large_steps if spec.large else plan.steps
    accum = 2 // spec.processes  # the same global batch on 1 and 2 processes
    args = [
        f"output_dir={work / spec.name}",
        f"data=[{work / 'corpus.jsonl'}]",
        f"data_cache={work / 'data-cache'}",
        f"tokenizer={tokenizer}",
        f"max_steps={steps}",
        f"micro_batch_size={plan.micro_batch}",
        f"grad_accum={accum}",
        f"seq_len={plan.seq_len}",
        f"fsdp={spec.fsdp}",
        f"save_every={steps // 2 if spec.name in RESUMED else steps}",
    ]  # a checkpoint only where one is read
    args += [f"model.{k}={v}" for k, v in shape.items()]
    if plan.cpu:
        args += ["model.vocab_size=null", "save_dtype=float32"]
    if spec.resume_from:
        args.append("resume=true")
    return args + spec.extra


def seed_resume(plan: Plan, spec: RunSpec, work: Path) -> None:
    """The resumed run's folder starts with only the half-way checkpoint of the run it continues."""
    steps = plan.large_steps if spec.large else plan.steps
    source = work / spec.resume_from / "checkpoints" / f"step-{steps // 2:07d}"
    if not source.is_dir():
        raise FileNotFoundError(
            f"{spec.name}: no checkpoint {source} to resume from (did {spec.resume_from} run?)"
        )
    target = work / spec.name / "checkpoints" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)


def launch(plan: Plan, spec: RunSpec, work: Path, tokenizer: str, port: int) -> dict:
    """Run one training job to the end; its command, exit code, wall time and console log file."""
    if spec.resume_from:
        seed_resume(plan, spec, work)
    command = plan.launcher(spec.processes, port) + [
        str(RECIPE),
        *overrides(plan, spec, work, tokenizer),
        "--no-progress",
    ]
    env = dict(os.environ)
    if not plan.cpu and spec.processes == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    if plan.cpu:
        env["OMP_NUM_THREADS"] = "1"
    log = work / f"{spec.name}.log"
    t0 = time.time()
    with log.open("w") as f:
        rc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    return dict(command=" ".join(command), rc=rc, wall_s=round(time.time() - t0, 1), log=str(log))


# ---------------------------------------------------------------------------------------------------------------
# Reading the runs


def read_losses(metrics_csv: Path) -> dict[int, dict]:
    """step -> the metrics row of every step that logged a training loss."""
    import csv

    with metrics_csv.open() as f:
        return {int(r["step"]): r for r in csv.DictReader(f) if r.get("loss")}


def step_noise(losses: list[float]) -> float:
    """The standard deviation of one step's loss around the curve's trend: the residual against the mean of the two
    neighbours has variance 1.5 sigma^2 for independent noise on a locally straight curve."""
    residuals = [b - (a + c) / 2 for a, b, c in zip(losses, losses[1:], losses[2:])]
    return statistics.pstdev(residuals) / 1.5**0.5 if len(residuals) > 1 else float("nan")


def compare_losses(a: dict[int, dict], b: dict[int, dict], first_step: int) -> dict:
    """Step-by-step loss differences of two runs over the steps both logged from first_step on."""
    steps = sorted(s for s in set(a) & set(b) if s >= first_step)
    diffs = [float(b[s]["loss"]) - float(a[s]["loss"]) for s in steps]
    if not diffs:
        return dict(steps=0)
    sigma = step_noise([float(a[s]["loss"]) for s in steps])
    return dict(
        steps=len(steps),
        first_step=steps[0],
        last_step=steps[-1],
        max_abs_diff=round(max(map(abs, diffs)), 5),
        mean_diff=round(statistics.fmean(diffs), 5),
        step_noise_sigma=round(sigma, 5),
        diff_sigma=round(statistics.pstdev(diffs), 5),
        last_loss_a=float(a[steps[-1]]["loss"]),
        last_loss_b=float(b[steps[-1]]["loss"]),
    )


def run_figures(rows: dict[int, dict], processes: int) -> dict:
    """Median tokens/s over the steps after warm-up (raw: SDAR counts its 2T forwarded tokens), per process too, and
    the largest per-process peak of GPU memory."""
    timed = [r for s, r in rows.items() if s > WARMUP_STEPS and r.get("raw_tokens_per_s")]
    if not timed:
        return {}
    raw = statistics.median(float(r["raw_tokens_per_s"]) for r in timed)
    peaks = [float(r["peak_memory_gib"]) for r in rows.values() if r.get("peak_memory_gib")]
    return dict(
        raw_tokens_per_s=round(raw),
        effective_tokens_per_s=round(raw / 2),
        raw_tokens_per_s_per_gpu=round(raw / processes),
        peak_memory_gib=max(peaks) if peaks else None,
        final_loss=float(rows[max(rows)]["loss"]),
    )


def decode_check(final_dir: Path, device: str) -> dict:
    """The FSDP run's HF checkpoint read by load_pretrained on one device, and a few tokens generated with it."""
    import torch

    from sdar_core import generate, load_pretrained

    t0 = time.time()
    model, tokenizer = load_pretrained(final_dir, device=device)
    ids = torch.tensor(
        [tokenizer("Q: 12 + 30 = ?\nA:", add_special_tokens=False)["input_ids"]], device=device
    )
    gen = generate(model, ids, max_new_tokens=8, block_length=4, steps=4, strategy="static")
    tokens = gen.tokens[0].tolist()
    return dict(
        checkpoint=str(final_dir),
        device=device,
        dtype=str(next(model.parameters()).dtype),
        parameters_m=round(model.config.num_parameters() / 1e6, 1),
        new_tokens=len(tokens),
        mask_token_generated=model.config.mask_token_id in tokens,
        text=tokenizer.decode(tokens),
        seconds=round(time.time() - t0, 1),
    )


# ---------------------------------------------------------------------------------------------------------------
# The summary


def summarize(plan: Plan, runs: dict[str, dict], work: Path) -> dict:
    """The issue's figures from the runs that finished: loss agreement, scaling, memory, resume."""
    rows = {
        name: read_losses(work / name / "metrics.csv")
        for name in runs
        if (work / name / "metrics.csv").is_file()
    }
    summary = {"runs": runs, "figures": {n: run_figures(r, runs[n]["processes"]) for n, r in rows.items()}}
    fig = summary["figures"]
    if {"ddp-1", "ddp-2"} <= rows.keys():
        summary["ddp_vs_one_gpu"] = compare_losses(rows["ddp-1"], rows["ddp-2"], WARMUP_STEPS + 1)
        one, two = fig["ddp-1"].get("raw_tokens_per_s"), fig["ddp-2"].get("raw_tokens_per_s")
        if one and two:
            summary["ddp_vs_one_gpu"] |= dict(
                speedup=round(two / one, 3), scaling_efficiency=round(two / (2 * one), 3)
            )
    if {"ddp-2", "resume-2"} <= rows.keys():
        summary["resume_vs_uninterrupted"] = compare_losses(
            rows["ddp-2"], rows["resume-2"], plan.steps // 2 + 1
        )
    if {"fsdp-2-large", "ddp-2-large"} <= rows.keys():
        fsdp, ddp = fig["fsdp-2-large"], fig["ddp-2-large"]
        summary["fsdp_vs_ddp"] = dict(
            fsdp_peak_gib=fsdp.get("peak_memory_gib"),
            ddp_peak_gib=ddp.get("peak_memory_gib"),
            fsdp_raw_tokens_per_s=fsdp.get("raw_tokens_per_s"),
            ddp_raw_tokens_per_s=ddp.get("raw_tokens_per_s"),
            loss=compare_losses(rows["ddp-2-large"], rows["fsdp-2-large"], WARMUP_STEPS + 1),
        )
    return summary


def markdown(summary: dict) -> str:
    lines = [
        "| run | processes | shape | steps | raw tokens/s | per GPU | peak GiB per GPU | final loss | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in summary["runs"].items():
        f = summary["figures"].get(name, {})
        lines.append(
            f"| {name} | {run['processes']} | {run['shape']} | {run['steps']} | "
            f"{f.get('raw_tokens_per_s', '-')} | {f.get('raw_tokens_per_s_per_gpu', '-')} | "
            f"{f.get('peak_memory_gib', '-')} | {f.get('final_loss', '-')} | {run['wall_s']} |"
        )
    for key in (
        "ddp_vs_one_gpu",
        "resume_vs_uninterrupted",
        "fsdp_vs_ddp",
        "fsdp_checkpoint_decode",
        "machine",
    ):
        if key in summary:
            lines += ["", f"**{key}**: `{json.dumps(summary[key])}`"]
    lines += ["", "Commands:", ""] + [f"    {run['command']}" for run in summary["runs"].values()]
    return "\n".join(lines) + "\n"


def write_outputs(summary: dict, out: Path, work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in summary["runs"]:
        if (work / name / "metrics.csv").is_file():
            shutil.copyfile(work / name / "metrics.csv", out / f"{name}.metrics.csv")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(markdown(summary))


def drop_checkpoints(work: Path, name: str) -> None:
    """Free the disk (a 1.7B run writes ~30 GB): a run's checkpoints and final/ once no later run reads them."""
    shutil.rmtree(work / name / "checkpoints", ignore_errors=True)
    shutil.rmtree(work / name / "final", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder for the metrics CSVs and the summary")
    parser.add_argument(
        "--work",
        default=None,
        help="folder for the runs (checkpoints: tens of GB on GPUs); default: --out/work",
    )
    parser.add_argument("--cpu", action="store_true", help="a tiny shape on 2 gloo CPU processes")
    parser.add_argument("--tokenizer", default=str(REPO / "assets" / "tokenizer"))
    parser.add_argument(
        "--runs", nargs="*", default=[r.name for r in RUNS], help="a subset of the runs, in order"
    )
    args = parser.parse_args(argv)
    plan = cpu_plan() if args.cpu else gpu_plan()
    out, work = Path(args.out).resolve(), Path(args.work or Path(args.out) / "work").resolve()
    unknown = sorted(set(args.runs) - {r.name for r in RUNS})
    if unknown:
        parser.error(f"unknown run(s) {unknown}; the runs are {[r.name for r in RUNS]}")
    write_corpus(work / "corpus.jsonl")
    runs: dict[str, dict] = {}
    extra: dict = {"machine": machine(plan)}
    for spec in (r for r in RUNS if r.name in args.runs):
        print(f"[multi_gpu] {spec.name} ...", flush=True)
        result = launch(plan, spec, work, args.tokenizer, free_port())
        runs[spec.name] = dict(
            processes=spec.processes,
            fsdp=spec.fsdp,
            shape="1.7b" if spec.large else "0.6b",
            steps=plan.large_steps if spec.large else plan.steps,
            **result,
        )
        if plan.cpu:
            runs[spec.name]["shape"] = "tiny-" + runs[spec.name]["shape"]
        if result["rc"] != 0:
            runs[spec.name]["log_tail"] = Path(result["log"]).read_text().splitlines()[-25:]
        print(f"[multi_gpu] {spec.name}: rc {result['rc']}, {result['wall_s']} s", flush=True)
        if spec.fsdp and (work / spec.name / "final" / "config.json").is_file():
            extra["fsdp_checkpoint_decode"] = decode_check(
                work / spec.name / "final", "cpu" if plan.cpu else "cuda"
            )
        for name in (spec.name, spec.resume_from):
            if name and (name not in RESUMED or spec.resume_from == name):
                drop_checkpoints(work, name)
        write_outputs(summarize(plan, runs, work) | extra, out, work)
    print(markdown(summarize(plan, runs, work) | extra))
    return 0 if all(r["rc"] == 0 for r in runs.values()) else 1


def machine(plan: Plan) -> dict:
    import torch

    from .common import machine_info

    info = machine_info("cpu" if plan.cpu else "cuda")
    info["gpus"] = 0 if plan.cpu else torch.cuda.device_count()
    info["nccl_env"] = {k: v for k, v in os.environ.items() if k.startswith("NCCL_")}
    return info


if __name__ == "__main__":
    sys.exit(main())
