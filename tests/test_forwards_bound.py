"""DecodeParams.forwards_bound, what the studio's budgets price a request by, against the forwards a decode really
takes (the decoder's own count, no stop token): never more than the bound, and the bound reached by a static decode
whose prompt ends on a block boundary."""

from __future__ import annotations

import pytest

from sdar_core import DecodeParams, generate

from helpers import random_model, tiny_config


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(vocab_size=96))


@pytest.mark.parametrize(
    "strategy, block, steps",
    [("static", 4, 4), ("static", 4, 2), ("dynamic", 4, 4), ("ar", None, None), ("static", None, None)],
)
@pytest.mark.parametrize("prompt_len", [3, 4, 9])
def test_a_decode_takes_at_most_its_bound(model, strategy, block, steps, prompt_len):
    p = DecodeParams(
        strategy=strategy,
        block_length=block,
        steps=steps,
        threshold=0.5,
        max_new_tokens=10,
        stop_token_ids=[],
    )
    gen = generate(model, [list(range(5, 5 + prompt_len))], p)
    used = gen.stats.forwards + gen.stats.prefill_forwards
    bound = p.forwards_bound(prompt_len, model.config)
    assert used <= bound
    if strategy == "static" and block is not None and prompt_len % block == 0:
        assert used == bound  # every block takes all its steps, and the prefill is one forward
