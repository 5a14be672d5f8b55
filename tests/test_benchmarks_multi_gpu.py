"""benchmarks.multi_gpu: the loss comparisons against hand-computed values, and its CPU mode end to end (DDP over two
gloo processes, then the half-way checkpoint resumed under DDP repeating the uninterrupted losses exactly)."""

from __future__ import annotations

import csv
import json

import pytest

from benchmarks.multi_gpu import compare_losses, main, run_figures, step_noise


def rows(losses: dict[int, float], **extra) -> dict[int, dict]:
    return {
        s: {"step": str(s), "loss": str(v), **{k: str(x) for k, x in extra.items()}}
        for s, v in losses.items()
    }


def test_step_noise_of_a_straight_line_with_alternating_noise():
    e = 0.3  # residual against the neighbours' mean: +-2e, so sigma = 2e / sqrt(1.5)
    losses = [5.0 - 0.1 * t + e * (-1) ** t for t in range(12)]
    assert step_noise(losses) == pytest.approx(2 * e / 1.5**0.5)
    assert step_noise([5.0 - 0.1 * t for t in range(12)]) == pytest.approx(0.0, abs=1e-12)


def test_compare_losses_uses_the_common_steps_from_the_first_one():
    a = rows({1: 9.0, 2: 4.0, 3: 3.5, 4: 3.0, 5: 2.5})
    b = rows({2: 4.5, 3: 3.4, 4: 3.2, 5: 2.5, 6: 2.0})
    got = compare_losses(a, b, first_step=3)
    assert (got["steps"], got["first_step"], got["last_step"]) == (3, 3, 5)
    assert got["max_abs_diff"] == pytest.approx(0.2)
    assert got["mean_diff"] == pytest.approx((-0.1 + 0.2 + 0.0) / 3, abs=1e-5)  # rounded to 5 places
    assert compare_losses(a, b, first_step=7) == {"steps": 0}


def test_run_figures_take_the_median_after_warm_up_and_the_largest_peak():
    figures = run_figures(
        {
            1: {"loss": "9", "raw_tokens_per_s": "10", "peak_memory_gib": "7.5"},
            **{
                s: {"loss": str(10 - s), "raw_tokens_per_s": str(100 * s), "peak_memory_gib": "3"}
                for s in range(6, 9)
            },
        },
        processes=2,
    )
    assert figures == dict(
        raw_tokens_per_s=700,
        effective_tokens_per_s=350,
        raw_tokens_per_s_per_gpu=350,
        peak_memory_gib=7.5,
        final_loss=2.0,
    )


def test_cpu_mode_ddp_on_two_gloo_processes_and_resume_repeat_the_losses(tmp_path):
    assert main(["--cpu", "--out", str(tmp_path), "--runs", "ddp-2", "resume-2"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    with (tmp_path / "ddp-2.metrics.csv").open() as f:
        whole = list(csv.DictReader(f))
    assert [int(r["step"]) for r in whole] == list(range(1, 13))
    assert int(whole[-1]["tokens"]) == 12 * 2 * 4 * 64  # steps x processes x micro-batch x seq_len
    with (tmp_path / "resume-2.metrics.csv").open() as f:
        resumed = list(csv.DictReader(f))
    assert [int(r["step"]) for r in resumed] == list(range(7, 13))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole[6:]]
    assert (
        summary["resume_vs_uninterrupted"]["steps"] == 6
        and summary["resume_vs_uninterrupted"]["max_abs_diff"] == 0
    )
    assert " -m torch.distributed.run --nproc_per_node 2" in summary["runs"]["ddp-2"]["command"]
