"""benchmarks/throughput.py runs on CPU with a tiny shape and writes its JSON/CSV report."""

from __future__ import annotations

import json

import pytest

from benchmarks.throughput import main, step_flops, visible_pairs
from sdar_core.config import ModelConfig


def test_tiny_throughput_writes_a_report_for_both_objectives(tmp_path, capsys):
    assert main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "throughput.json").read_text())
    rows = {r["objective"]: r for r in report["results"]}
    assert set(rows) == {"ar", "sdar"} and "torch" in report["machine"]
    for r in rows.values():
        assert r["error"] is None and r["raw_tokens_per_s"] > 0
    # SDAR forwards [x_t ; x_0]: raw tokens are twice the effective ones.
    assert rows["sdar"]["raw_tokens_per_s"] == pytest.approx(
        rows["sdar"]["effective_tokens_per_s"] * 2, abs=0.2
    )
    assert (tmp_path / "throughput.csv").read_text().startswith("shape,objective")
    assert "SDAR/AR raw throughput" in capsys.readouterr().out


def test_sdar_attention_sees_about_twice_the_pairs_of_causal():
    T, bs = 64, 4
    causal = T * (T + 1) // 2
    assert visible_pairs("ar", T, bs) == causal
    # noisy half: own block + earlier clean blocks; clean half: block-causal
    block_causal = sum(((i // bs) + 1) * bs for i in range(T))
    assert visible_pairs("sdar", T, bs) == block_causal + sum(bs + (i // bs) * bs for i in range(T))
    config = ModelConfig(
        model_type="qwen3",
        vocab_size=100,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
    )
    assert step_flops(config, "sdar", T, 1, bs) > step_flops(config, "ar", T, 1, bs)
