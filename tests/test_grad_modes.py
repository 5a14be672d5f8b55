"""One grad mode for every decode: a pooled runner created inside `torch.inference_mode()` (the studio's chat)
and reused by a plain `generate` call (the GPU warm-up), and the other way round, decodes the same tokens and
never raises "Inplace update to inference tensor outside InferenceMode"."""

from __future__ import annotations

import pytest
import torch

from sdar_core import generate
from sdar_core.runner import RUNNER_POOL

from helpers import random_model, tiny_config


def decode(model, mode, rows, grad_mode):
    with grad_mode():
        return generate(
            model, rows, max_new_tokens=12, block_length=4, steps=2, strategy="static", runner_mode=mode
        ).tokens


GRAD_MODES = {"inference": torch.inference_mode, "no_grad": torch.no_grad, "enabled": torch.enable_grad}
ORDERS = [
    ("inference", "no_grad"),
    ("no_grad", "inference"),
    ("inference", "enabled"),
    ("enabled", "inference"),
]


def check_mixed(device: str, mode: str) -> None:
    model = random_model(tiny_config()).to(device)
    rows = [[5, 6, 7, 8, 9], [10, 11]]
    reference = generate(
        model, rows, max_new_tokens=12, block_length=4, steps=2, strategy="static", runner_mode="plain"
    ).tokens
    for first, second in ORDERS:
        a = decode(model, mode, rows, GRAD_MODES[first])  # creates (or reuses) the pooled runner
        b = decode(model, mode, rows, GRAD_MODES[second])  # reuses it in the other mode
        assert torch.equal(a, reference) and torch.equal(b, reference), (first, second)
    assert RUNNER_POOL._pools.get(model.model), "the static runner was pooled"


@pytest.mark.parametrize("mode", ["static"])
def test_inference_and_plain_generate_share_a_pooled_runner_cpu(mode):
    check_mixed("cpu", mode)


def test_returned_tokens_are_normal_tensors():
    model = random_model(tiny_config())
    tokens = generate(model, [[5, 6, 7]], max_new_tokens=4, block_length=4, steps=4).tokens
    assert not tokens.is_inference()
    tokens[0, 0] = 3  # a caller may edit what it got back


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["static", "graph"])
def test_inference_and_plain_generate_share_a_pooled_runner_cuda(mode):
    check_mixed("cuda", mode)
