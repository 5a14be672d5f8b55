"""The embedded pair's whole build (four stages, exports) on CPU with tiny step counts: the smoke run that must pass
before the one-session GPU rebuild. Recipe overrides on the command line (max_steps=...) reach every stage."""

from __future__ import annotations

import csv
import json

import pytest

from sdar_core.paths import REPO
from training import build_embedded

TOKENIZER = REPO / "assets" / "tokenizer"


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    """A folder laid out like the repository's (data/embedded, assets/tokenizer) with a few documents and chats."""
    if not (TOKENIZER / "tokenizer.json").is_file():
        pytest.skip("assets/tokenizer not built")
    root = tmp_path_factory.mktemp("build")
    data = root / "data" / "embedded"
    data.mkdir(parents=True)
    (root / "assets").mkdir()
    (root / "assets" / "tokenizer").symlink_to(TOKENIZER)
    texts = [f"Document {i}: the harbor was quiet and the ships were home, number {i}." for i in range(60)]
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + 1?"},
                {"role": "assistant", "content": f"Answer: {i + 1}"},
            ]
        }
        for i in range(60)
    ]
    for name, rows in (
        ("pretrain.jsonl", [{"text": t} for t in texts]),
        ("heldout_text.jsonl", [{"text": t} for t in texts[:8]]),
        ("sft.jsonl", chats),
    ):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_every_stage_runs_the_overridden_max_steps_and_the_sdar_export_records_its_block_sizes(
    tiny_data_dir, monkeypatch
):
    monkeypatch.chdir(tiny_data_dir)
    runs, out = tiny_data_dir / "runs", tiny_data_dir / "models"
    code = build_embedded.main(
        [
            "--runs",
            str(runs),
            "--out",
            str(out),
            "--no-progress",
            "max_steps=2",
            "seq_len=64",
            "micro_batch_size=2",
            "eval_batches=1",
            "warmup_steps=1",
            f"data_cache={runs / 'cache'}",
        ]
    )
    assert code == 0
    for stage in build_embedded.STAGES:
        steps = [int(r["step"]) for r in csv.DictReader(open(runs / stage.name / "metrics.csv"))]
        assert max(steps) == 2, stage.name
    sdar = json.loads((out / "sdar-tiny" / "config.json").read_text())
    ar = json.loads((out / "ar-tiny" / "config.json").read_text())
    assert sdar["model_type"] == "sdar" and sdar["block_size"] == 4
    assert sdar["trained_block_sizes"] == [1, 2, 4, 8, 16]
    assert ar["model_type"] == "qwen3" and "trained_block_sizes" not in ar
    recipe = json.loads((runs / "sdar-sft" / "final" / "training_recipe.json").read_text())
    assert recipe["data_weights"] == [0.75, 0.25] and recipe["max_steps"] == 2
