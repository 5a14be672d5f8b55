"""benchmarks/evaluate.py: the committed subset's numbers are reproduced, and each measurement matches an independent
computation (the training objective, a plain forward, decoding one row at a time)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks import evaluate as ev
from sdar_core.paths import MODELS_DIR as MODELS
from sdar_core.paths import REPO
from training.data import encode_texts
from training.objective import sdar_loss

SUBSET = json.loads((REPO / ev.EVAL_DIR / "eval-subset.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def short_chunks(embedded_models):
    """Two chunks of 64 tokens (one padded) from the first held-out document of the committed subset."""
    _, tok = embedded_models["sdar-tiny"]
    text = ev.read_jsonl(REPO / ev.SUBSET_DATA / ev.TEXT_FILE, 1)[0]["text"]
    return ev.chunk_documents([encode_texts(tok, [text])[0][:100]], 64, 0)


def test_evaluation_reproduces_the_committed_subset_numbers():
    """The run recorded in eval-subset.json, repeated: accuracy and TPF exactly, losses to 1e-4."""
    settings = ev.EvalSettings(
        **{**SUBSET["settings"], "models": str(MODELS), "data": str(REPO / ev.SUBSET_DATA), "device": "cpu"}
    )
    assert SUBSET["data_sha256"] == {
        f: hashlib.sha256((REPO / ev.SUBSET_DATA / f).read_bytes()).hexdigest()
        for f in (ev.ARITH_FILE, ev.TEXT_FILE, ev.DEFINE_FILE)
    }
    result = ev.evaluate(settings, log=lambda *a: None)
    for name in ("ar-tiny", "sdar-tiny"):
        got, want = result["heldout"][name], SUBSET["heldout"][name]
        assert got["tokens"] == want["tokens"]
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-4), name
    rows = [(r["model"], r["decoding"]) for r in result["arith"] + result["grid"]]
    assert rows == [(r["model"], r["decoding"]) for r in SUBSET["arith"] + SUBSET["grid"]]
    assert len(result["grid"]) == len(ev.GRID) and result["define"]
    for got, want in zip(result["define"], SUBSET["define"]):
        assert (got["model"], got["decoding"], got["words"]) == (
            want["model"],
            want["decoding"],
            want["words"],
        )
        assert got["score"] == want["score"] and got["samples"] == want["samples"]
    for got, want in zip(result["arith"] + result["grid"], SUBSET["arith"] + SUBSET["grid"]):
        # (batch_tpf is left out: it also counts how often the decoder's loop checks for stop tokens)
        for key in (
            "correct",
            "accuracy",
            "tpf",
            "new_tokens",
            "row_forwards",
            "mean_new_tokens",
            "accuracy_by_op",
            "unfinished",
        ):
            assert got[key] == want[key], (got["model"], got["decoding"], key)
        assert got["mask_tokens"] == 0


def test_cached_nelbo_equals_the_training_objective_on_x_t_and_x_0(embedded_models, short_chunks):
    """sdar_nelbo (clean half cached once, noisy half per level) vs training's sdar_loss on the full [x_t ; x_0]."""
    model, _ = embedded_models["sdar-tiny"]
    cfg = model.config
    levels, seed = 3, 5
    fast, n = ev.sdar_nelbo(
        model,
        short_chunks,
        2,
        block_size=cfg.block_size,
        mask_token_id=cfg.mask_token_id,
        t_levels=levels,
        seed=seed,
    )
    reference = 0.0
    for r in range(short_chunks.input_ids.shape[0]):
        row = ev._rows(short_chunks, r, r + 1)
        for k in range(levels):
            noise = ev.chunk_noise(row, (k + 0.5) / levels, seed * 1_000_003 + r * levels + k)
            with torch.no_grad():
                out = sdar_loss(model, row, noise, block_size=cfg.block_size, mask_token_id=cfg.mask_token_id)
            reference += float(out.loss * out.n_targets) / levels
    assert n == int(short_chunks.loss_mask.sum()) == 100
    assert fast == pytest.approx(reference, rel=1e-5)


def test_ar_nll_equals_a_causal_forward_of_each_chunk(embedded_models, short_chunks):
    model, _ = embedded_models["ar-tiny"]
    total, n = ev.ar_nll(model, short_chunks, 1)
    reference, count = 0.0, 0
    for r in range(short_chunks.input_ids.shape[0]):
        ids = short_chunks.input_ids[r][short_chunks.loss_mask[r]][None]  # the chunk without its padding
        with torch.no_grad():
            logp = F.log_softmax(model(ids).float(), -1)[0, :-1]  # default mask: causal (block size 1)
        reference -= float(logp.gather(-1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    assert n == count == 100 - 2  # the first token of each chunk is not predicted
    assert total == pytest.approx(reference, rel=1e-5)


def test_chunks_cover_every_document_token_once_and_never_mix_documents():
    docs = [list(range(10, 140)), list(range(200, 205)), list(range(300, 364))]
    chunks = ev.chunk_documents(docs, 64, 0)
    assert chunks.input_ids.shape == (5, 64)  # 130 -> 64 + 64 + 2; 5; 64
    kept = [chunks.input_ids[r][chunks.loss_mask[r]].tolist() for r in range(5)]
    assert sum(kept, []) == sum(docs, [])
    assert (chunks.positions[chunks.loss_mask] < 64).all() and chunks.positions[0, 0] == chunks.positions[
        1, 0
    ] == 0


def test_tpf_counts_each_rows_own_forwards_so_it_does_not_depend_on_the_batch(embedded_models):
    """Per-row TPF of a batch of 4 equals that of the same problems decoded one by one; batch TPF is lower (every
    row of a batch waits for the slowest)."""
    model, tok = embedded_models["sdar-tiny"]
    problems = ev.read_jsonl(REPO / ev.SUBSET_DATA / ev.ARITH_FILE, 4)
    decoder = ev.Decoder("sdar-tiny", "dynamic", 0.9)
    batched = ev.arith_eval(model, tok, problems, decoder, ev.EvalSettings(batch_size=4)).summary()
    alone = ev.arith_eval(model, tok, problems, decoder, ev.EvalSettings(batch_size=1)).summary()
    for key in ("correct", "new_tokens", "row_forwards", "tpf"):
        assert batched[key] == alone[key], key
    assert alone["batch_tpf"] == alone["tpf"] and batched["batch_tpf"] < batched["tpf"]
    assert batched["tpf"] > 1.5 and not math.isnan(batched["tokens_per_s"])


def test_missing_data_says_how_to_build_it_or_use_the_committed_subset(tmp_path, capsys):
    assert ev.main(["--data", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "python -m training.corpus" in err and str(ev.SUBSET_DATA) in err


def test_definition_score_counts_the_glosss_content_words_found_in_the_reply():
    gloss = "a sheltered port where ships can take on or discharge cargo"
    assert ev.gloss_words(gloss) == {"sheltered", "port", "ships", "can", "take", "discharge", "cargo"}
    assert (
        ev.definition_score(
            gloss, "Harbor is a noun: a sheltered port where ships can take on or discharge cargo."
        )
        == 1.0
    )
    assert ev.definition_score(gloss, "A PORT for SHIPS, and the cargo they carry.") == pytest.approx(3 / 7)
    assert ev.definition_score(gloss, "7 + 8 = 15, write 5 carry 1") == 0.0
