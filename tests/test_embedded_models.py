"""The shipped demo models (assets/models/sdar-tiny, assets/models/ar-tiny) load and answer as recorded.

The expected texts in assets/models/eval/expected.json are regenerated only after a rebuild of the models, by
`python -m benchmarks.evaluate --write-expected` (CPU, float32, greedy).
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.evaluate import EXPECTED_CASES
from sdar_core import generate
from sdar_core.paths import MODELS_DIR, REPO
from sdar_core.prompting import encode_prompt, stop_ids_for
from training.synthetic import final_answer

EXPECTED = json.loads((MODELS_DIR / "eval" / "expected.json").read_text(encoding="utf-8"))


def _generate(model, tokenizer, prompts: list[str], decoder, max_new_tokens: int):
    ids = [encode_prompt(tokenizer, p, chat=True) for p in prompts]
    return generate(model, ids, decoder.params(max_new_tokens, stop_ids_for(tokenizer, model.config)))


def test_shipped_models_are_the_sdar_model_and_its_ar_twin(embedded_models):
    sdar, sdar_tok = embedded_models["sdar-tiny"]
    ar, ar_tok = embedded_models["ar-tiny"]
    assert sdar.config.is_sdar and sdar.config.block_size == 4
    assert not ar.config.is_sdar
    n_sdar, n_ar = (sum(p.numel() for p in m.parameters()) for m in (sdar, ar))
    assert n_sdar == n_ar and 14.0e6 < n_sdar < 14.5e6  # the recipes' 14.2M
    # Both ship the project's tokenizer byte for byte (tests/test_tokenizer.py checks that one).
    shipped = (REPO / "assets" / "tokenizer" / "tokenizer.json").read_bytes()
    for name in ("sdar-tiny", "ar-tiny"):
        assert (MODELS_DIR / name / "tokenizer.json").read_bytes() == shipped
    # The mask token the decoder writes is the tokenizer's <|MASK|>, a single id.
    assert sdar.config.mask_token_id == sdar_tok.convert_tokens_to_ids("<|MASK|>")
    assert sdar_tok("<|MASK|>", add_special_tokens=False)["input_ids"] == [sdar.config.mask_token_id]
    assert sdar_tok.convert_tokens_to_ids("<|im_end|>") in stop_ids_for(sdar_tok, sdar.config)


@pytest.mark.parametrize(
    "case", range(len(EXPECTED_CASES)), ids=[f"{d.model}-{d.label}-{p}" for p, d in EXPECTED_CASES]
)
def test_greedy_output_matches_the_committed_expected_text(embedded_models, case):
    prompt, decoder = EXPECTED_CASES[case]
    expected = EXPECTED["cases"][case]
    assert (expected["prompt"], expected["model"], expected["decoding"]) == (
        prompt,
        decoder.model,
        decoder.label,
    ), "expected.json is stale: run python -m benchmarks.evaluate --write-expected"
    model, tokenizer = embedded_models[decoder.model]
    gen = _generate(model, tokenizer, [prompt], decoder, EXPECTED["max_new_tokens"])
    assert tokenizer.decode(gen.row_tokens(0), skip_special_tokens=True) == expected["text"]
    assert (gen.lengths[0], sum(gen.stats.steps_per_block[0])) == (
        expected["new_tokens"],
        expected["forwards"],
    )


def test_greedy_decoding_is_deterministic_and_a_batch_gives_the_single_row_outputs(embedded_models):
    """Two prompts of different lengths in one batch, twice: the same tokens as each prompt alone (expected.json)."""
    model, tokenizer = embedded_models["sdar-tiny"]
    cases = [(i, p, d) for i, (p, d) in enumerate(EXPECTED_CASES) if d.model == "sdar-tiny" and d.threshold]
    prompts = [p for _, p, _ in cases]
    assert len(set(len(encode_prompt(tokenizer, p, chat=True)) for p in prompts)) > 1
    first = _generate(model, tokenizer, prompts, cases[0][2], EXPECTED["max_new_tokens"])
    second = _generate(model, tokenizer, prompts, cases[0][2], EXPECTED["max_new_tokens"])
    assert torch.equal(first.tokens, second.tokens)
    for r, (i, _, _) in enumerate(cases):
        assert tokenizer.decode(first.row_tokens(r), skip_special_tokens=True) == EXPECTED["cases"][i]["text"]


def test_sdar_dynamic_answers_the_sum_in_fewer_forwards_than_tokens(embedded_models):
    model, tokenizer = embedded_models["sdar-tiny"]
    decoder = next(d for p, d in EXPECTED_CASES if d.strategy == "dynamic")
    gen = _generate(model, tokenizer, ["What is 47 + 38?"], decoder, 128)
    tokens = gen.row_tokens(0)
    assert final_answer(tokenizer.decode(tokens, skip_special_tokens=True)) == "85"
    assert tokens[-1] in stop_ids_for(tokenizer, model.config)  # it stopped by itself
    assert gen.stats.tpf > 1.5, gen.stats.summary()


@pytest.mark.parametrize("strategy", ["static", "dynamic", "ar"])
def test_mask_token_never_appears_in_the_output(embedded_models, strategy):
    model, tokenizer = embedded_models["sdar-tiny"]
    ids = [
        encode_prompt(tokenizer, p, chat=True)
        for p in ("Write a short poem about the sea.", "What is 7 * 86?")
    ]
    gen = generate(model, ids, max_new_tokens=64, strategy=strategy, threshold=0.7, block_length=4, steps=4)
    assert gen.lengths == [64, 64]  # no stop ids: every position was decoded
    assert model.config.mask_token_id not in gen.tokens.flatten().tolist()
