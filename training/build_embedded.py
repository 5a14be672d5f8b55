"""Build the embedded demo models: AR pretrain -> SDAR CPT -> SDAR SFT (block sizes 1-16), and the AR twin (AR SFT).

    python -m training.build_embedded                       # every unfinished stage, in order (no time limit)
    python -m training.build_embedded --stage next          # the first unfinished stage only (one GPU call)
    python -m training.build_embedded --stage ar-pretrain   # one named stage
    python -m training.build_embedded --status              # what is done

Each stage is a recipe in training/recipes/ (embedded-*.yaml) writing to runs/embedded/<stage>; a stage always runs
with resume=true, so a call that hit the recipe's max_minutes continues where it stopped. The SFT stages export
their final model to <--out>/sdar-tiny and <--out>/ar-tiny (out/models by default; `--out assets/models` replaces
the shipped ones; safetensors shards <= 15 MiB, bf16, tokenizer included). Exit status: 0 when the requested
stages are finished, 3 when a time budget stopped one (run the same command again).

After a rebuild, regenerate what the tests compare the shipped models with, and the evaluation
(assets/models/README.md, "Evaluation"):

    python -m benchmarks.evaluate --write-expected            # assets/models/eval/expected.json
    python -m benchmarks.evaluate --data assets/models/eval/data --limit 8 --batch-size 8 --text-limit 1 \\
        --grid-limit 4 --define-limit 4 --no-samples --out assets/models/eval/eval-subset.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .recipe import RecipeError, load_recipe
from .train import FINAL, train

RECIPES = Path(__file__).parent / "recipes"
MAX_SHARD_BYTES = 15 * 2**20
SIZE_LIMIT_BYTES = 60 * 10**6  # both exported models together


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: str
    init_from: str | None  # the stage whose final model this one starts from
    export: str | None  # <--out>/<export> receives the final model


STAGES = [
    Stage("ar-pretrain", "embedded-ar-pretrain.yaml", None, None),
    Stage("sdar-cpt", "embedded-sdar-cpt.yaml", "ar-pretrain", None),
    Stage("sdar-sft", "embedded-sdar-sft.yaml", "sdar-cpt", "sdar-tiny"),
    Stage("ar-sft", "embedded-ar-sft.yaml", "ar-pretrain", "ar-tiny"),
]
STAGE_BY_NAME = {s.name: s for s in STAGES}


def stage_dir(runs: Path, stage: Stage) -> Path:
    return runs / stage.name


def is_done(runs: Path, out: Path, stage: Stage) -> bool:
    trained = (stage_dir(runs, stage) / FINAL / "config.json").is_file()
    return trained and (stage.export is None or (out / stage.export / "config.json").is_file())


def export(final_dir: Path, dest: Path) -> int:
    """Re-save a final checkpoint in bf16 shards of at most 15 MiB with its tokenizer; returns the weight bytes."""
    from sdar_core.loading import load_pretrained, save_pretrained

    model, tokenizer = load_pretrained(final_dir, device="cpu", dtype=torch.float32)
    save_pretrained(model, tokenizer, dest, dtype=torch.bfloat16, max_shard_bytes=MAX_SHARD_BYTES)
    return sum(f.stat().st_size for f in dest.glob("*.safetensors"))


def run_stage(stage: Stage, runs: Path, out: Path, overrides: list[str], progress: bool = True) -> bool:
    """Train (or continue) one stage, then export it; True when finished."""
    keys = [f"output_dir={stage_dir(runs, stage)}", "resume=true"]
    if stage.init_from:
        keys.append(f"init_from={stage_dir(runs, STAGE_BY_NAME[stage.init_from]) / FINAL}")
    recipe = load_recipe(RECIPES / stage.recipe, keys + overrides)
    print(f"== stage {stage.name}: {RECIPES / stage.recipe} -> {recipe.output_dir}", flush=True)
    result = train(recipe, progress=progress)
    if not result.finished:
        print(
            f"== stage {stage.name} paused at step {result.state.step}/{recipe.max_steps} (time budget); "
            "run again to continue",
            flush=True,
        )
        return False
    if stage.export:
        dest = out / stage.export
        size = export(result.final_dir, dest)
        print(f"== exported {dest} ({size / 2**20:.1f} MiB of weights)", flush=True)
    return True


def status(runs: Path, out: Path) -> None:
    for stage in STAGES:
        state = (
            "done"
            if is_done(runs, out, stage)
            else ("partial" if (stage_dir(runs, stage) / "checkpoints").is_dir() else "not started")
        )
        print(f"{stage.name:12s} {state}")
    sizes = [
        sum(f.stat().st_size for f in (out / s.export).glob("*.safetensors"))
        for s in STAGES
        if s.export and (out / s.export).is_dir()
    ]
    if sizes:
        total = sum(sizes)
        print(
            f"exported weights: {total / 1e6:.1f} MB"
            + ("" if total < SIZE_LIMIT_BYTES else f"  (over the {SIZE_LIMIT_BYTES / 1e6:.0f} MB budget)")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="all", help="all | next | " + " | ".join(s.name for s in STAGES))
    parser.add_argument(
        "--out",
        default="out/models",
        help="where sdar-tiny/ and ar-tiny/ are written (default: "
        "%(default)s; --out assets/models replaces the shipped ones)",
    )
    parser.add_argument("--runs", default="runs/embedded", help="training outputs, one folder per stage")
    parser.add_argument("--status", action="store_true", help="print what is done and exit")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logs of unattended runs)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="recipe key=value applied to every stage run (e.g. max_minutes=9)"
    )
    args = parser.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    if args.status:
        status(runs, out)
        return 0
    if args.stage == "all":
        todo = [s for s in STAGES if not is_done(runs, out, s)]
    elif args.stage == "next":
        todo = [s for s in STAGES if not is_done(runs, out, s)][:1]
    elif args.stage in STAGE_BY_NAME:
        todo = [STAGE_BY_NAME[args.stage]]
    else:
        parser.error(f"unknown stage {args.stage!r}; choose all, next, or one of {', '.join(STAGE_BY_NAME)}")
    for stage in todo:
        if stage.init_from:
            base = STAGE_BY_NAME[stage.init_from]
            if not is_done(runs, out, base):
                print(
                    f"error: stage {stage.name} starts from {base.name}, which is not finished "
                    f"(python -m training.build_embedded --stage {base.name})",
                    file=sys.stderr,
                )
                return 2
        try:
            finished = run_stage(stage, runs, out, args.overrides, progress=not args.no_progress)
        except RecipeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not finished:
            return 3
    if not todo:
        print("every stage is finished")
    status(runs, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
