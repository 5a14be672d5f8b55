"""Train an AR or SDAR model from a recipe, on CPU, one GPU or several (accelerate: DDP, or FSDP).

    python -m training.train training/recipes/tiny-cpu-smoke.yaml [key=value ...]
    accelerate launch --num_processes 8 -m training.train training/recipes/sdar-1.7b-from-qwen3.yaml

Modes: `ar` (next-token prediction, Eq. 3: pretraining, continued pretraining, or AR SFT on chat data with a
response-only loss), `sdar-cpt` and `sdar-sft` (block diffusion NELBO, Eq. 7; paper §3.1). Writes to output_dir:
    metrics.csv        step, loss, lr, grad_norm, tokens, tokens/s (raw and effective), eval_loss, elapsed, and the
                       peak GPU memory of the busiest process
    checkpoints/step-N accelerate state (model, optimizer, RNG) + trainer_state.json; `resume=true` continues
    final/             the trained model as an HF-format checkpoint (sdar_core.load_pretrained reads it)
The data position and the diffusion noise of step N are pure functions of (seed, N), so a resumed run repeats the
uninterrupted run's losses exactly (up to non-deterministic GPU kernels).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdar_core.config import ModelConfig
from sdar_core.device import synchronize

from .data import MixedOrder, PackedRows, RowOrder, concat_rows, load_or_build_rows, split_eval
from .model_init import (
    enable_gradient_checkpointing,
    ensure_mask_token,
    init_model,
    load_recipe_tokenizer,
    param_groups,
)
from .objective import ar_loss, sample_noise, sdar_loss
from .recipe import Recipe, RecipeError, load_recipe, lr_at

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
FINAL = "final"
METRICS = "metrics.csv"
METRIC_FIELDS = [
    "step",
    "loss",
    "eval_loss",
    "lr",
    "grad_norm",
    "tokens",
    "raw_tokens_per_s",
    "effective_tokens_per_s",
    "masked_fraction",
    "elapsed_s",
    "peak_memory_gib",
]


@dataclass
class TrainerState:
    """What a checkpoint records beside the accelerate state. The data position is `step` (see RowOrder)."""

    step: int = 0
    tokens: int = 0  # effective tokens (rows x T) consumed so far
    elapsed_s: float = 0.0  # training wall time over all calls
    max_steps: int | None = None  # set by fit_minutes: the run's own step budget (<= the recipe's)
    last_loss: float | None = None
    eval_loss: float | None = None
    recipe: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    state: TrainerState
    finished: bool  # max_steps reached (final/ written); False: stopped by the time budget
    final_dir: Path | None
    losses: dict[int, float]  # step -> training loss of that step (this call only)
    eval_losses: dict[int, float]


# ---------------------------------------------------------------------------------------------------------------
# Set-up


def make_accelerator(recipe: Recipe):
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    precision = recipe.mixed_precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    kwargs = {}
    if _is_moe(recipe):  # experts that receive no token in a step have no gradient
        from accelerate import DistributedDataParallelKwargs

        kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if recipe.fsdp:
        from accelerate import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["DecoderLayer"],
            reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT",
            activation_checkpointing=recipe.gradient_checkpointing,
        )
    return Accelerator(mixed_precision=precision, cpu=not cuda, **kwargs)


def _is_moe(recipe: Recipe) -> bool:
    return (
        recipe.init_from is not None and ModelConfig.from_json(Path(recipe.init_from) / "config.json").is_moe
    )


def resolve_attention(recipe: Recipe, device: torch.device) -> str:
    """flex_attention (a BlockMask: masked tiles skipped) on CUDA with compile; SDPA with a dense mask otherwise."""
    if recipe.attention == "flex" and device.type != "cuda":
        raise RecipeError(
            "attention 'flex' needs a CUDA device (flex_attention has no CPU backward); use sdpa"
        )
    if recipe.attention != "auto":
        return recipe.attention
    return "flex" if device.type == "cuda" and recipe.compile else "sdpa"


def latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = sorted((output_dir / CHECKPOINTS).glob("step-*"))
    ckpts = [c for c in ckpts if (c / STATE_FILE).is_file()]
    return ckpts[-1] if ckpts else None


def check_output_dir(recipe: Recipe) -> None:
    """Refuse to silently overwrite a run: an output_dir with checkpoints needs resume=true."""
    out = Path(recipe.output_dir)
    if not recipe.resume and (latest_checkpoint(out) is not None or (out / FINAL / "config.json").is_file()):
        raise RecipeError(
            f"output_dir {out} already holds a run; pass resume=true to continue it, or choose "
            "another output_dir"
        )


def load_datasets(recipe: Recipe, tokenizer, log) -> tuple[PackedRows, PackedRows | None, list[int]]:
    """(training rows, eval rows, training rows per data file): with `data_weights` each file is packed (and its
    eval fraction split off) on its own, so that the sampler can weight the files."""
    settings = dict(
        data_format=recipe.data_format, response_only=recipe.response_only, max_docs=recipe.max_docs
    )
    cache = Path(recipe.data_cache) if recipe.data_cache else Path(recipe.output_dir) / "data-cache"
    groups = [[f] for f in recipe.data] if recipe.data_weights else [recipe.data]
    parts = [
        load_or_build_rows(files, tokenizer, recipe.seq_len, cache, log=log, **settings) for files in groups
    ]
    if recipe.eval_data:
        eval_rows = load_or_build_rows(
            recipe.eval_data, tokenizer, recipe.seq_len, cache, log=log, **settings
        )
    else:
        splits = [split_eval(rows, recipe.eval_fraction, recipe.seed) for rows in parts]
        parts = [train for train, _ in splits]
        held = [ev for _, ev in splits if ev is not None]
        eval_rows = concat_rows(held) if held else None
    return concat_rows(parts), eval_rows, [len(p) for p in parts]


# ---------------------------------------------------------------------------------------------------------------
# Steps


def step_generator(device: torch.device, *seed_parts: int) -> torch.Generator:
    """A generator seeded by (seed, step, micro-batch, rank): the noise of a step does not depend on history."""
    seed = 0
    for part in seed_parts:
        seed = (seed * 1_000_003 + int(part)) % (2**62)
    return torch.Generator(device=device).manual_seed(seed)


def block_size_at(recipe: Recipe, step: int, micro_batch: int) -> int:
    """The block size micro-batch `micro_batch` of step `step` trains with: one of `block_sizes`, drawn from
    (seed, step, micro-batch) alone (the same on every process and after a resume); `block_size` without a list."""
    if not recipe.block_sizes:
        return recipe.block_size
    return random.Random(f"block-size-{recipe.seed}-{step}-{micro_batch}").choice(recipe.block_sizes)


def compute_loss(
    model,
    batch,
    recipe: Recipe,
    mask_token_id: int | None,
    attention: str,
    generator,
    block_size: int | None = None,
):
    """The recipe's loss on one batch; SDAR's with `block_size` (default the recipe's)."""
    if recipe.is_sdar:
        noise = sample_noise(batch, recipe.eps, generator)
        return sdar_loss(
            model,
            batch,
            noise,
            block_size=block_size or recipe.block_size,
            mask_token_id=mask_token_id,
            attention=attention,
        )
    return ar_loss(model, batch, attention=attention)


@torch.no_grad()
def evaluate(model, rows: PackedRows, recipe: Recipe, mask_token_id, attention, accelerator) -> float:
    """Mean loss over up to eval_batches micro-batches of the eval rows, with fixed noise (comparable across evals)."""
    model.eval()
    mb, world, rank = recipe.micro_batch_size, accelerator.num_processes, accelerator.process_index
    n_batches = min(recipe.eval_batches, max(len(rows) // (mb * world), 1))
    total = torch.zeros(2, device=accelerator.device)  # sum of loss x targets, targets
    for i in range(n_batches):
        idx = [(i * world * mb + rank * mb + j) % len(rows) for j in range(mb)]
        batch = rows.batch(idx).to(accelerator.device)
        gen = step_generator(accelerator.device, recipe.seed, 10**9 + i, rank)
        out = compute_loss(model, batch, recipe, mask_token_id, attention, gen)
        total += torch.stack([out.loss.float() * out.n_targets, out.n_targets.float()])
    total = accelerator.reduce(total, reduction="sum")
    model.train()
    return (total[0] / total[1].clamp(min=1)).item()


CALIBRATION = (10, 30)  # fit_minutes times the steps between these two (after compilation and warm-up)


def fit_max_steps(
    recipe: Recipe, accelerator, step: int, max_steps: int, step_s: float, elapsed_s: float
) -> int:
    """The step budget that ends the run within fit_minutes (10% kept for evaluation and saving), never more than
    max_steps; the same on every process."""
    remaining = 0.9 * recipe.fit_minutes * 60 - elapsed_s
    fitted = step + max(int(remaining / max(step_s, 1e-9)), 0)
    fitted = accelerator.reduce(
        torch.tensor(float(fitted), device=accelerator.device), reduction="mean"
    ).item()
    return max(min(int(fitted), max_steps), step)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(accelerator, output_dir: Path, state: TrainerState, keep: int) -> Path:
    """accelerate state + trainer_state.json in checkpoints/step-N, written to a temporary folder and renamed."""
    final = output_dir / CHECKPOINTS / f"step-{state.step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in sorted((output_dir / CHECKPOINTS).glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_final(accelerator, model, tokenizer, recipe: Recipe, path: Path) -> None:
    """The HF-format checkpoint: the full state dict (gathered under FSDP) in a CPU model, via save_pretrained."""
    from sdar_core.loading import empty_model, load_state, save_pretrained

    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        config = accelerator.unwrap_model(model).config
        cpu_model = empty_model(config)
        load_state(cpu_model, {k: v.float() for k, v in state.items()}, device="cpu", dtype=torch.float32)
        dtype = torch.bfloat16 if recipe.save_dtype == "bfloat16" else torch.float32
        save_pretrained(
            cpu_model, tokenizer, path, dtype=dtype, max_shard_bytes=int(recipe.max_shard_mb * 2**20)
        )
        (path / "training_recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    accelerator.wait_for_everyone()


class MetricsLog:
    """metrics.csv (appended across resumed calls) and TensorBoard when it is installed."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.enabled, self.path = enabled, output_dir / METRICS
        self.tb = None
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                with self.path.open("w", newline="") as f:
                    csv.writer(f).writerow(METRIC_FIELDS)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.tb = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(k) is None else row[k] for k in METRIC_FIELDS])
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()


# ---------------------------------------------------------------------------------------------------------------
# The loop's bookkeeping


@dataclass
class TimeBudget:
    """max_minutes: the run stops (with a checkpoint) when the next step and a save would not fit in the budget. The
    next step is taken as 1.5 x the median of the last 20, a save as 1.5 x the slowest one so far."""

    minutes: float | None
    clock: Callable[[], float] = time.time
    start: float = field(init=False)
    step_times: list[float] = field(default_factory=list)
    save_reserve_s: float = 0.0

    def __post_init__(self) -> None:
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def step_took(self, seconds: float) -> None:
        self.step_times.append(seconds)

    def save_took(self, seconds: float) -> None:
        self.save_reserve_s = max(self.save_reserve_s, 1.5 * seconds)

    def exhausted(self) -> bool:
        if not self.minutes or not self.step_times:
            return False
        recent = sorted(self.step_times[-20:])
        return self.elapsed() + 1.5 * recent[len(recent) // 2] + self.save_reserve_s > self.minutes * 60


@dataclass
class ThroughputWindow:
    """What the steps since the last log line processed: metrics.csv's tokens/s and masked fraction."""

    start: float = field(default_factory=time.time)
    rows: int = 0
    masked: float = (
        0.0  # masked tokens and trained tokens, counted on the logged steps only (a host sync each)
    )
    targets: float = 0.0

    def rates(self, recipe: Recipe, now: float | None = None) -> dict:
        seconds = max((time.time() if now is None else now) - self.start, 1e-9)
        raw_per_row = recipe.seq_len * (2 if recipe.is_sdar else 1)  # SDAR forwards [x_t ; x_0]
        return {
            "raw_tokens_per_s": round(self.rows * raw_per_row / seconds),
            "effective_tokens_per_s": round(self.rows * recipe.seq_len / seconds),
            "masked_fraction": round(self.masked / self.targets, 4) if self.targets else None,
        }


@dataclass
class Run:
    """What one call of `train` works with: built by `start_run`, read and updated by the loop's steps."""

    recipe: Recipe
    accelerator: Any
    log: Callable
    tokenizer: Any
    model: Any  # as accelerate prepared it (DDP / FSDP wrapper)
    forward: Any  # the model, compiled when the recipe asks
    optimizer: torch.optim.Optimizer
    train_rows: PackedRows
    file_rows: list[int]  # training rows per data file (back to back in train_rows)
    eval_rows: PackedRows | None
    mask_token_id: int | None
    attention: str
    state: TrainerState
    max_steps: int  # the recipe's, or fewer: what fit_minutes allows
    budget: TimeBudget
    metrics: MetricsLog
    bar: Any = None  # tqdm on the main process when progress is on
    losses: dict[int, float] = field(default_factory=dict)
    eval_losses: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        weights = self.recipe.data_weights
        self.order = (
            MixedOrder(self.file_rows, weights, self.recipe.seed)
            if weights
            else RowOrder(len(self.train_rows), self.recipe.seed)
        )
        self.elapsed_before = self.state.elapsed_s  # training time of the calls before this one

    def elapsed(self) -> float:
        """Training wall time over all calls."""
        return self.elapsed_before + self.budget.elapsed()

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def output_dir(self) -> Path:
        return Path(self.recipe.output_dir)

    @property
    def rows_per_step(self) -> int:
        return self.recipe.micro_batch_size * self.recipe.grad_accum * self.accelerator.num_processes


def start_run(recipe: Recipe, budget: TimeBudget, progress: bool) -> Run:
    """Accelerator, tokenizer, data, model and optimizer; the state of the latest checkpoint when resuming."""
    accelerator = make_accelerator(recipe)
    log = print if accelerator.is_main_process else (lambda *a, **k: None)
    torch.manual_seed(recipe.seed)
    tokenizer = load_recipe_tokenizer(recipe)
    mask_token_id = ensure_mask_token(tokenizer, recipe.mask_token) if recipe.is_sdar else None
    with accelerator.main_process_first():
        train_rows, eval_rows, file_rows = load_datasets(recipe, tokenizer, log)
    log(
        f"data: {len(train_rows)} training rows, {len(eval_rows) if eval_rows is not None else 0} eval rows "
        f"of {recipe.seq_len} tokens"
    )
    model, optimizer = build_model(recipe, tokenizer, mask_token_id, accelerator, log)
    device = accelerator.device
    state = resume_state(recipe, accelerator, log)
    max_steps = min(recipe.max_steps, state.max_steps or recipe.max_steps)
    bar = None
    if progress and accelerator.is_main_process and state.step < max_steps:
        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=state.step, desc=recipe.mode, dynamic_ncols=True)
    return Run(
        recipe,
        accelerator,
        log,
        tokenizer,
        model,
        torch.compile(model) if recipe.compile and device.type == "cuda" else model,
        optimizer,
        train_rows,
        file_rows,
        eval_rows,
        mask_token_id,
        resolve_attention(recipe, device),
        state,
        max_steps,
        budget,
        MetricsLog(Path(recipe.output_dir), accelerator.is_main_process),
        bar,
    )


def build_model(recipe: Recipe, tokenizer, mask_token_id: int | None, accelerator, log):
    """The recipe's model in training mode and its AdamW, both prepared by accelerate."""
    model = init_model(recipe, tokenizer, mask_token_id)
    log(
        f"model: {model.config.model_type}, {model.config.num_parameters() / 1e6:.1f}M parameters, "
        f"block_size {model.config.block_size}, mask_token_id {model.config.mask_token_id}"
    )
    if recipe.gradient_checkpointing and not recipe.fsdp:
        enable_gradient_checkpointing(model)
    model.train()
    optimizer = torch.optim.AdamW(
        param_groups(model, recipe.weight_decay),
        lr=recipe.lr,
        betas=(recipe.beta1, recipe.beta2),
        fused=accelerator.device.type == "cuda" and not recipe.fsdp,
    )
    return accelerator.prepare(model, optimizer)


def resume_state(recipe: Recipe, accelerator, log) -> TrainerState:
    """A fresh state, or the latest checkpoint's (its accelerate state loaded into the prepared objects)."""
    ckpt = latest_checkpoint(Path(recipe.output_dir)) if recipe.resume else None
    if ckpt is None:
        return TrainerState(recipe=recipe.to_dict())
    accelerator.load_state(str(ckpt), strict=False)  # strict=False: tied lm_head is not stored twice
    state = TrainerState(**json.loads((ckpt / STATE_FILE).read_text()))
    state.recipe = recipe.to_dict()
    log(f"resume: {ckpt} (step {state.step})")
    return state


def train_step(run: Run, lr: float, window: ThroughputWindow) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over grad_accum micro-batches: (mean loss on the device, gradient norm)."""
    recipe, acc, step = run.recipe, run.accelerator, run.state.step
    world, rank, mb, accum = acc.num_processes, acc.process_index, recipe.micro_batch_size, recipe.grad_accum
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    step_loss = torch.zeros((), device=run.device)
    for m in range(accum):
        start = ((step * accum + m) * world + rank) * mb
        batch = run.train_rows.batch(run.order.rows(start, mb)).to(run.device)
        with acc.no_sync(run.model) if m < accum - 1 else nullcontext():
            out = compute_loss(
                run.forward,
                batch,
                recipe,
                run.mask_token_id,
                run.attention,
                step_generator(run.device, recipe.seed, step, m, rank),
                block_size_at(recipe, step, m),
            )
            acc.backward(out.loss / accum)
        step_loss += out.loss.detach() / accum
        if recipe.is_sdar and step % recipe.log_every == 0:
            window.masked += out.n_masked.item()
            window.targets += out.n_targets.item()
    grad_norm = acc.clip_grad_norm_(run.model.parameters(), recipe.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


def run_eval(run: Run) -> float:
    """The eval loss at the current step, recorded in the state and in the returned eval curve."""
    state = run.state
    state.eval_loss = run.eval_losses[state.step] = evaluate(
        run.forward, run.eval_rows, run.recipe, run.mask_token_id, run.attention, run.accelerator
    )
    return state.eval_loss


def peak_memory_gib(accelerator) -> float | None:
    """The largest peak of allocated GPU memory over the processes (what must fit on one GPU); None on the CPU."""
    if accelerator.device.type != "cuda":
        return None
    peak = torch.tensor(
        [torch.cuda.max_memory_allocated(accelerator.device) / 2**30], device=accelerator.device
    )
    return round(accelerator.gather(peak).max().item(), 2)


def log_step(run: Run, step_loss: torch.Tensor, grad_norm, lr: float, window: ThroughputWindow) -> bool:
    """metrics.csv, the eval loss and the progress bar after a step; True when the throughput window was logged
    (the caller starts a new one)."""
    recipe, state = run.recipe, run.state
    last = state.step == run.max_steps
    log_due = state.step % recipe.log_every == 0 or last
    eval_due = run.eval_rows is not None and (state.step % recipe.eval_every == 0 or last)
    row = {"step": state.step}
    if log_due:
        loss = run.accelerator.reduce(step_loss, reduction="mean").item()
        run.losses[state.step] = state.last_loss = loss
        row |= {
            "loss": round(loss, 5),
            "lr": f"{lr:.3e}",
            "grad_norm": round(float(grad_norm), 4),
            "tokens": state.tokens,
            **window.rates(recipe),
            "elapsed_s": round(run.elapsed(), 1),
            "peak_memory_gib": peak_memory_gib(run.accelerator),
        }
    if eval_due:  # after the throughput above, so evaluation time is not counted in it
        row["eval_loss"] = round(run_eval(run), 5)
    if log_due or eval_due:
        run.metrics.write(row)
    if run.bar is not None:
        if log_due:
            run.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=row["raw_tokens_per_s"])
        run.bar.update(1)
    return log_due


@dataclass
class FitMinutes:
    """fit_minutes: the steps between the two CALIBRATION steps are timed, then the step budget that ends the run in
    time replaces max_steps (once: a resumed run keeps the budget its state records)."""

    t_first: float | None = None

    def after_step(self, run: Run) -> None:
        if run.state.step not in CALIBRATION:
            return
        synchronize(run.device)
        if run.state.step == CALIBRATION[0]:
            self.t_first = time.time()
            return
        step_s = (time.time() - self.t_first) / (CALIBRATION[1] - CALIBRATION[0])
        run.max_steps = run.state.max_steps = fit_max_steps(
            run.recipe, run.accelerator, run.state.step, run.max_steps, step_s, run.budget.elapsed()
        )
        run.log(f"fit_minutes {run.recipe.fit_minutes}: max_steps {run.max_steps}")
        if run.bar is not None:
            run.bar.total = run.max_steps


def out_of_time(run: Run) -> bool:
    if not run.budget.minutes:
        return False
    late = run.budget.exhausted()
    if (
        run.accelerator.num_processes > 1
    ):  # every process must agree on stopping (they all take part in the save)
        late = bool(
            run.accelerator.reduce(torch.tensor(float(late), device=run.device), reduction="sum").item() > 0
        )
    return late


def save(run: Run) -> None:
    t_save = time.time()
    run.state.elapsed_s = run.elapsed()
    save_checkpoint(run.accelerator, run.output_dir, run.state, run.recipe.keep_checkpoints)
    run.budget.save_took(time.time() - t_save)


# ---------------------------------------------------------------------------------------------------------------
# The loop


def train(recipe: Recipe, *, progress: bool = True) -> TrainResult:
    """Run (or continue) the recipe until max_steps or max_minutes; see the module docstring."""
    budget = TimeBudget(recipe.max_minutes)
    check_output_dir(recipe)
    run = start_run(recipe, budget, progress)
    state, final_dir = run.state, run.output_dir / FINAL
    if state.step >= run.max_steps:  # finished before: only the final checkpoint may be missing
        if not (final_dir / "config.json").is_file():
            save_final(run.accelerator, run.model, run.tokenizer, recipe, final_dir)
        return TrainResult(state, True, final_dir, {}, {})
    if run.eval_rows is not None and state.step == 0:  # the starting point of the eval curve
        run.metrics.write({"step": 0, "eval_loss": round(run_eval(run), 5)})
        run.log(f"eval loss at step 0: {state.eval_loss:.4f}")
    calibrate = recipe.fit_minutes is not None and state.max_steps is None and state.step < CALIBRATION[0]
    fit = FitMinutes() if calibrate else None
    window, stopped = ThroughputWindow(), False
    while state.step < run.max_steps and not stopped:
        t_step = time.time()
        lr = lr_at(state.step, recipe, run.max_steps)
        step_loss, grad_norm = train_step(run, lr, window)
        state.step += 1
        state.tokens += run.rows_per_step * recipe.seq_len
        window.rows += run.rows_per_step
        budget.step_took(time.time() - t_step)
        if log_step(run, step_loss, grad_norm, lr, window):
            window = ThroughputWindow()
        if fit is not None:
            fit.after_step(run)
        late = out_of_time(run)
        if late or state.step % recipe.save_every == 0 or state.step == run.max_steps:
            save(run)
        stopped = late and state.step < run.max_steps
    if run.bar is not None:
        run.bar.close()
    if stopped:
        run.log(
            f"time budget of {recipe.max_minutes} min reached at step {state.step}: checkpoint saved; "
            "run again with resume=true to continue"
        )
        return TrainResult(state, False, None, run.losses, run.eval_losses)
    save_final(run.accelerator, run.model, run.tokenizer, recipe, final_dir)
    run.log(f"final checkpoint: {final_dir}")
    return TrainResult(state, True, final_dir, run.losses, run.eval_losses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", help="a recipe YAML (training/recipes/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value (model.key=value for the model shape)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        check_output_dir(recipe)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train(recipe, progress=not args.no_progress)
    return 0  # also when the time budget stopped the run: launchers (torchrun) treat other codes as a crash


if __name__ == "__main__":
    sys.exit(main())
