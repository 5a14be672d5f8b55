"""The training loop on CPU: loss goes down, checkpoints reload in sdar_core, resume repeats the same losses, and bad
recipes are refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdar_core import generate, load_pretrained
from sdar_core.paths import REPO
from training.recipe import RecipeError, load_recipe, recipe_from_dict
from training.train import ThroughputWindow, TimeBudget, latest_checkpoint, main, train

ASSET_TOKENIZER = REPO / "assets" / "tokenizer"
TOKENIZER = str(ASSET_TOKENIZER) if (ASSET_TOKENIZER / "tokenizer.json").is_file() else "builtin:bytes"


def tiny_recipe(out: Path, **overrides):
    raw = dict(
        mode="sdar-cpt",
        output_dir=str(out),
        data=["builtin:tiny-text"],
        tokenizer=TOKENIZER,
        model=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=128,
            max_position_embeddings=256,
        ),
        block_size=4,
        seq_len=32,
        eval_fraction=0.15,
        micro_batch_size=4,
        max_steps=30,
        lr=3e-3,
        warmup_steps=3,
        weight_decay=0.0,
        log_every=5,
        eval_every=30,
        eval_batches=2,
        save_every=1000,
        save_dtype="float32",
    )
    raw.update(overrides)
    return recipe_from_dict(raw)


@pytest.fixture(scope="module")
def sdar_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdar-run")
    return out, train(tiny_recipe(out), progress=False)


def test_tiny_sdar_run_lowers_eval_loss(sdar_run):
    _, result = sdar_run
    assert result.finished and result.state.step == 30
    first, last = result.eval_losses[0], result.eval_losses[30]
    assert last < first - 0.5, result.eval_losses


def test_final_checkpoint_loads_in_sdar_core_as_an_sdar_model(sdar_run):
    out, result = sdar_run
    model, tokenizer = load_pretrained(result.final_dir, device="cpu")
    c = model.config
    assert c.model_type == "sdar" and c.block_size == 4
    assert c.mask_token_id == tokenizer.mask_token_id == tokenizer.convert_tokens_to_ids("<|MASK|>")
    ids = torch.tensor([tokenizer("The little train", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (1, ids.shape[1], c.vocab_size) and torch.isfinite(logits).all()
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "raw_tokens_per_s" in header and "eval_loss" in header


def test_final_checkpoint_decodes_with_sdar_core_generate(sdar_run):
    _, result = sdar_run
    model, tokenizer = load_pretrained(result.final_dir, device="cpu")
    ids = torch.tensor([tokenizer("The little train", add_special_tokens=False)["input_ids"]])
    gen = generate(model, ids, max_new_tokens=8, block_length=4, steps=4, strategy="static")
    assert 0 < gen.tokens.shape[1] <= 8
    assert model.config.mask_token_id not in gen.tokens.flatten().tolist()


def test_resume_continues_at_the_same_step_with_the_same_losses(tmp_path):
    settings = dict(max_steps=6, log_every=1, eval_fraction=0.0)
    whole = train(tiny_recipe(tmp_path / "whole", **settings), progress=False)
    # A time budget too small for more than one step: stops cleanly after step 1 with a checkpoint.
    part = train(tiny_recipe(tmp_path / "split", max_minutes=1e-6, **settings), progress=False)
    assert not part.finished and part.state.step == 1
    assert latest_checkpoint(tmp_path / "split").name == "step-0000001"
    assert not (tmp_path / "split" / "final").exists()
    rest = train(tiny_recipe(tmp_path / "split", resume=True, **settings), progress=False)
    assert rest.finished and rest.state.step == 6
    assert sorted(rest.losses) == [2, 3, 4, 5, 6]
    for step, loss in rest.losses.items():
        assert loss == pytest.approx(whole.losses[step], rel=1e-5, abs=1e-6), step
    a, _ = load_pretrained(whole.final_dir, device="cpu", with_tokenizer=False)
    b, _ = load_pretrained(rest.final_dir, device="cpu", with_tokenizer=False)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_ar_sft_then_sdar_sft_from_that_checkpoint(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "\n".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"What is {i} + 1?"},
                        {"role": "assistant", "content": f"Answer: {i + 1}"},
                    ]
                }
            )
            for i in range(40)
        )
    )
    ar = train(
        tiny_recipe(tmp_path / "ar", mode="ar", data=[str(chat)], max_steps=4, eval_fraction=0.1),
        progress=False,
    )
    model, _ = load_pretrained(ar.final_dir, device="cpu")
    assert model.config.model_type == "qwen3" and model.config.block_size == 1
    sdar = train(
        tiny_recipe(
            tmp_path / "sdar",
            mode="sdar-sft",
            data=[str(chat)],
            model=None,
            tokenizer=None,
            init_from=str(ar.final_dir),
            max_steps=4,
            eval_fraction=0.1,
        ),
        progress=False,
    )
    model, tokenizer = load_pretrained(sdar.final_dir, device="cpu")
    assert model.config.model_type == "sdar" and model.config.block_size == 4
    assert model.config.mask_token_id == tokenizer.mask_token_id


def test_unknown_recipe_key_is_rejected_with_a_suggestion(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe key 'learning_rate'"):
        tiny_recipe(tmp_path / "x", learning_rate=1e-3)
    with pytest.raises(RecipeError, match="did you mean 'max_steps'"):
        tiny_recipe(tmp_path / "x", max_step=10)
    with pytest.raises(RecipeError, match="unknown recipe key 'model.hidden'"):
        tiny_recipe(tmp_path / "x", model=dict(hidden=3))


def test_numbers_written_the_short_way_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-4` as the string '1e-4': a numeric key takes it as the number it names, in a
    recipe file and in a key=value override alike; text that is no number is still refused by name."""
    path = REPO / "training" / "recipes" / "tiny-cpu-smoke.yaml"
    recipe = load_recipe(path, ["lr=1e-4", "warmup_steps=1e1", f"output_dir={tmp_path / 'o'}"])
    assert recipe.lr == pytest.approx(1e-4) and isinstance(recipe.lr, float)
    assert recipe.warmup_steps == 10 and isinstance(recipe.warmup_steps, int)
    written = tmp_path / "r.yaml"
    written.write_text(path.read_text().replace("weight_decay: 0.0", "weight_decay: 5E-2"))
    assert load_recipe(written, [f"output_dir={tmp_path / 'o'}"]).weight_decay == pytest.approx(0.05)
    with pytest.raises(RecipeError, match="recipe key 'lr' must be a number, got 'fast'"):
        load_recipe(path, ["lr=fast"])
    with pytest.raises(RecipeError, match="recipe key 'lr' must be a finite number, got 'nan'"):
        load_recipe(path, ["lr=nan"])
    with pytest.raises(RecipeError, match="recipe key 'warmup_steps' must be an integer, got 2.5"):
        load_recipe(path, ["warmup_steps=2.5e0"])


def test_missing_data_file_is_rejected_before_any_work(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"mode: sdar-cpt\noutput_dir: {tmp_path / 'out'}\ndata: [{tmp_path / 'nope.jsonl'}]\n"
        f"tokenizer: builtin:bytes\nmodel: {{hidden_size: 64}}\n"
    )
    assert main([str(recipe), "--no-progress"]) == 2
    assert "nope.jsonl' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([str(recipe), "bogus=1"]) == 2
    assert "unknown recipe key 'bogus'" in capsys.readouterr().err


def test_a_used_output_dir_needs_resume(sdar_run):
    out, _ = sdar_run
    with pytest.raises(RecipeError, match="resume=true"):
        train(tiny_recipe(out), progress=False)


def test_shipped_recipes_parse(tmp_path):
    paths = sorted((REPO / "training" / "recipes").glob("*.yaml"))
    assert paths
    for path in paths:
        try:
            recipe = load_recipe(path, [f"output_dir={tmp_path / path.stem}"])
        except RecipeError as e:  # data, tokenizer or base checkpoints not built on this machine
            assert "does not exist" in str(e) or "no such folder" in str(e) or "no checkpoint" in str(e), (
                path,
                e,
            )
        else:
            assert recipe.mode in ("ar", "sdar-cpt", "sdar-sft")


def test_fit_minutes_shrinks_max_steps_to_the_time_budget(tmp_path):
    result = train(
        tiny_recipe(tmp_path / "fit", max_steps=40, fit_minutes=1e-4, eval_fraction=0.0), progress=False
    )
    assert result.finished and result.state.step == 30 and result.state.max_steps == 30
    assert (tmp_path / "fit" / "final" / "config.json").is_file()


def test_time_budget_keeps_room_for_the_next_step_and_the_slowest_save():
    now = [100.0]
    budget = TimeBudget(minutes=1.0, clock=lambda: now[0])  # 60 s from t = 100
    assert not budget.exhausted()  # no step timed yet
    for seconds in (9.0, 1.0, 2.0):  # median 2 s: the next step is taken as 3 s
        budget.step_took(seconds)
    budget.save_took(4.0)  # reserve 6 s, and a faster save later does not shrink it
    budget.save_took(1.0)
    now[0] = 100.0 + 60 - 3 - 6  # exactly at the limit: still fits
    assert not budget.exhausted()
    now[0] += 0.01
    assert budget.exhausted()
    assert not TimeBudget(minutes=None, clock=lambda: now[0]).exhausted()


def test_throughput_window_counts_raw_and_effective_tokens_and_the_masked_fraction():
    sdar = tiny_recipe(Path("unused"))  # seq_len 32, SDAR: a row forwards 64 tokens
    window = ThroughputWindow(start=10.0, rows=8, masked=30.0, targets=120.0)
    assert window.rates(sdar, now=12.0) == {
        "raw_tokens_per_s": 8 * 64 / 2,
        "effective_tokens_per_s": 8 * 32 / 2,
        "masked_fraction": 0.25,
    }
    ar = tiny_recipe(Path("unused"), mode="ar")
    assert ThroughputWindow(start=0.0, rows=3).rates(ar, now=1.0) == {
        "raw_tokens_per_s": 96,
        "effective_tokens_per_s": 96,
        "masked_fraction": None,
    }


def test_block_sizes_are_drawn_per_micro_batch_from_the_seed_and_recorded_in_the_config(tmp_path):
    from training.train import block_size_at

    recipe = tiny_recipe(tmp_path / "blocks", block_sizes=[1, 2, 4, 8, 16], max_steps=3, eval_fraction=0.0)
    drawn = [block_size_at(recipe, step, m) for step in range(400) for m in range(2)]
    assert drawn == [block_size_at(recipe, step, m) for step in range(400) for m in range(2)]
    counts = {b: drawn.count(b) for b in (1, 2, 4, 8, 16)}
    assert set(drawn) == {1, 2, 4, 8, 16} and min(counts.values()) > 100, counts  # about 160 each
    other_seed = tiny_recipe(tmp_path / "b2", block_sizes=[1, 2, 4, 8, 16], seed=1)
    assert [block_size_at(other_seed, s, 0) for s in range(50)] != [
        block_size_at(recipe, s, 0) for s in range(50)
    ]
    assert block_size_at(tiny_recipe(tmp_path / "b3"), 7, 0) == 4  # no list: the recipe's block_size
    result = train(recipe, progress=False)
    config = json.loads((result.final_dir / "config.json").read_text())
    assert config["block_size"] == 4 and config["trained_block_sizes"] == [1, 2, 4, 8, 16]
    model, _ = load_pretrained(result.final_dir, device="cpu")
    assert model.config.trained_block_sizes == [1, 2, 4, 8, 16]


def test_block_sizes_must_divide_seq_len_and_contain_the_default(tmp_path):
    with pytest.raises(RecipeError, match="block size 3 must be >= 1 and divide seq_len 32"):
        tiny_recipe(tmp_path / "x", block_sizes=[3, 4])
    with pytest.raises(RecipeError, match="must contain block_size 4"):
        tiny_recipe(tmp_path / "x", block_sizes=[1, 2, 8])
    with pytest.raises(RecipeError, match="needs an sdar mode"):
        tiny_recipe(tmp_path / "x", mode="ar", block_sizes=[4])


def test_data_weights_need_one_weight_per_file(tmp_path):
    with pytest.raises(
        RecipeError, match=r"data_weights \[0.5, 0.5\] must give one weight >= 0 per data file"
    ):
        tiny_recipe(tmp_path / "x", data_weights=[0.5, 0.5])
