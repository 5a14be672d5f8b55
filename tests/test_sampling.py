"""The mask token is never committed, in every sampling path and schedule, even by a model whose most likely token
is the mask token everywhere; and the sampling functions against brute-force computations.

Uses only public APIs (generate, the model, sdar_core.sampling): the decode loop's internals may change.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sdar_core import generate
from sdar_core.sampling import SamplingError, SamplingParams, filter_logits, sample_tokens

from helpers import random_model, tiny_config

MASK = 95  # tiny_config's mask id: the last of its 96 ids
PROMPTS = [[7, 12, 33, 4, 58], [21, 9, 9, 40, 2, 77, 13, 64, 5, 30]]  # two rows of different lengths
MAX_NEW, BLOCK = 10, 4
SAMPLINGS = {  # name -> (temperature, top_k, top_p)
    "greedy": (0.0, 0, 1.0),
    "temperature": (1.0, 0, 1.0),
    "top-k": (0.8, 3, 1.0),
    "top-p": (1.2, 0, 0.7),
}
DECODES = {  # name -> (model type, strategy)
    "static": ("sdar", "static"),
    "dynamic": ("sdar", "dynamic"),
    "sequential": ("sdar", "sequential"),
    "entropy": ("sdar", "entropy"),
    "ar on SDAR weights": ("sdar", "ar"),
    "ar on an AR model": ("qwen3", "ar"),
}


def mask_favouring_model(model_type: str, boost: float = 500.0, seed: int = 0):
    """A random tiny model whose largest logit is the mask token's at every position, by construction.

    Column 0 of the embedding is 1 for every token and no sublayer writes to the residual's dim 0 (row 0 of
    o_proj and down_proj is zero), so dim 0 is 1 everywhere and positive after the final RMSNorm. The mask
    token's lm_head row reads only dim 0, scaled by `boost`; no other row reads it.
    """
    config = tiny_config(model_type)
    if config.mask_token_id is None:  # an AR model that still names a mask token (as ar-tiny does)
        config = dataclasses.replace(config, mask_token_id=MASK)
    model = random_model(config, seed=seed)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[MASK] = 0.0
        model.lm_head.weight[MASK, 0] = boost
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Forwards this small are faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    return {t: mask_favouring_model(t) for t in ("sdar", "qwen3")}


def positions_to_decode(strategy: str) -> int:
    """Generated positions in the layout of the longest-running row: the most forwards a decoder that commits at
    least one position per forward can need (blocks of 1 for AR)."""
    block = 1 if strategy == "ar" else BLOCK
    return max(block * (math.ceil((len(p) + MAX_NEW) / block) - len(p) // block) for p in PROMPTS)


@pytest.mark.parametrize("model_type", ["sdar", "qwen3"])
def test_the_model_favours_the_mask_token_everywhere(models, model_type):
    ids = torch.randint(0, 96, (3, 40), generator=torch.Generator().manual_seed(1))
    ids[:, ::3] = MASK
    with torch.no_grad():
        logits = models[model_type](ids)  # [3, 40, V]
    others = torch.cat([logits[..., :MASK], logits[..., MASK + 1 :]], -1)
    margin = logits[..., MASK] - others.max(-1).values
    assert margin.min() > 20.0, margin.min()  # p(mask) > 1 - 1e-6 at every position


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("decode", DECODES)
def test_mask_token_is_never_committed(models, decode, sampling):
    model_type, strategy = DECODES[decode]
    temperature, top_k, top_p = SAMPLINGS[sampling]
    gen = generate(
        models[model_type],
        PROMPTS,
        max_new_tokens=MAX_NEW,
        block_length=BLOCK,
        steps=BLOCK,
        strategy=strategy,
        threshold=0.9,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=3,
        trace=True,
    )
    assert gen.lengths == [MAX_NEW, MAX_NEW]  # decoded to the end: no stall
    for r in range(len(PROMPTS)):
        assert MASK not in gen.row_tokens(r)
    assert 0 < gen.stats.forwards <= positions_to_decode(strategy)  # no loop: at least one commit per forward
    assert gen.trace
    for e in gen.trace:
        assert e.committed, f"step without a commit: {e}"
        assert all(e.block_state[i] != MASK for i in e.committed)
        assert MASK not in e.candidates.values()
        if e.final:
            assert MASK not in e.block_state


# --- sdar_core.sampling, function by function, against brute force


def mask_first_logits(seed: int = 0, shape=(2, 5, 12), mask: int = 11) -> torch.Tensor:
    """Random logits [B, L, V] with the `mask` id the largest everywhere."""
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    logits[..., mask] = logits.max(-1).values + 3.0
    return logits


def brute_probs(logits_row: list[float], forbid: int, temperature: float = 1.0) -> list[float]:
    """softmax(logits / temperature) with `forbid` removed, one Python float at a time."""
    exps = [0.0 if v == forbid else math.exp(x / temperature) for v, x in enumerate(logits_row)]
    total = sum(exps)
    return [e / total for e in exps]


@pytest.mark.parametrize("want_entropy", [False, True])
def test_greedy_picks_the_best_other_token_with_its_probability(want_entropy):
    logits = mask_first_logits()
    x0, conf, ent = sample_tokens(
        logits.clone(), SamplingParams(), forbid_token=11, generator=None, want_entropy=want_entropy
    )
    for b in range(2):
        for i in range(5):
            probs = brute_probs(logits[b, i].tolist(), forbid=11)
            best = max(range(12), key=probs.__getitem__)
            assert x0[b, i].item() == best != 11
            assert conf[b, i].item() == pytest.approx(probs[best], rel=1e-5)
            if want_entropy:
                h = -sum(p * math.log(p) for p in probs if p > 0)
                assert ent[b, i].item() == pytest.approx(h, rel=1e-5)
    x0, _, _ = sample_tokens(logits.clone(), SamplingParams(), forbid_token=None, generator=None)
    assert (x0 == 11).all()  # without the ban the mask token is the argmax: the ban above is what removed it


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(1.0),
        SamplingParams(0.7, top_k=1),
        SamplingParams(0.7, top_k=2),
        SamplingParams(1.5, top_p=0.3),
        SamplingParams(2.0, top_k=4, top_p=0.8),
    ],
)
def test_sampling_never_draws_the_mask_token_and_reports_the_filtered_probability(params):
    logits = mask_first_logits(seed=1, shape=(4, 200, 12))
    x0, conf, _ = sample_tokens(
        logits.clone(), params, forbid_token=11, generator=torch.Generator().manual_seed(0)
    )
    assert not (x0 == 11).any()
    filtered = filter_logits(
        torch.cat([logits[..., :11], torch.full_like(logits[..., :1], -math.inf)], -1) / params.temperature,
        params.top_k,
        params.top_p,
    )
    probs = filtered.softmax(-1)
    assert (probs.gather(-1, x0[..., None]) > 0).all()  # only tokens the filters keep
    torch.testing.assert_close(conf, probs.gather(-1, x0[..., None]).squeeze(-1))
    if params.top_k == 1:  # top-1 of the tokens left once the mask token is banned: the greedy choice
        greedy, _, _ = sample_tokens(logits.clone(), SamplingParams(), forbid_token=11, generator=None)
        assert torch.equal(x0, greedy)


def test_sampling_frequencies_follow_the_distribution_without_the_mask_token():
    logits = mask_first_logits(seed=2, shape=(1, 1, 6), mask=5).expand(1, 20000, 6).clone()
    x0, _, _ = sample_tokens(
        logits, SamplingParams(1.0), forbid_token=5, generator=torch.Generator().manual_seed(0)
    )
    freq = torch.bincount(x0.flatten(), minlength=6).double() / x0.numel()
    expected = torch.tensor(brute_probs(logits[0, 0].tolist(), forbid=5), dtype=torch.double)
    assert freq[5] == 0
    assert (freq - expected).abs().max() < 0.02  # 20,000 draws: standard error below 0.004


def brute_filter_keep(row: list[float], top_k: int, top_p: float) -> set[int]:
    """Ids kept by top-k then top-p (the smallest highest-probability set whose mass reaches top_p)."""
    order = sorted(range(len(row)), key=lambda v: -row[v])
    kept = order[:top_k] if top_k else order
    exps = [math.exp(row[v]) for v in kept]
    total, mass, nucleus = sum(exps), 0.0, []
    for v, e in zip(kept, exps):
        if mass >= top_p:
            break
        nucleus.append(v)
        mass += e / total
    return set(nucleus)


@pytest.mark.parametrize(
    "top_k,top_p", [(0, 1.0), (1, 1.0), (3, 1.0), (0, 0.5), (0, 0.9), (4, 0.6), (0, 1e-6)]
)
def test_filter_logits_keeps_what_brute_force_keeps(top_k, top_p):
    logits = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(top_k * 10 + int(top_p * 100)))
    out = filter_logits(logits, top_k, top_p)
    for b in range(3):
        for i in range(4):
            keep = brute_filter_keep(logits[b, i].tolist(), top_k, top_p)
            got = {v for v in range(10) if out[b, i, v] != -math.inf}
            assert got == keep
            assert all(out[b, i, v] == logits[b, i, v] for v in keep)  # kept logits are unchanged


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(temperature=-0.5), "temperature must be >= 0, got -0.5"),
        (dict(temperature=float("nan")), "temperature must be >= 0, got nan"),
        (dict(top_k=-1), "top_k must be >= 0 (0 disables it), got -1"),
        (dict(top_p=0.0), "top_p must be in (0, 1], got 0.0"),
        (dict(top_p=1.5), "top_p must be in (0, 1], got 1.5"),
    ],
)
def test_sampling_params_name_the_bad_value(kwargs, message):
    with pytest.raises(SamplingError) as err:
        SamplingParams(**kwargs).validate()
    assert str(err.value) == message
    SamplingParams().validate()


@pytest.mark.parametrize("top_p,n_kept", [(0.25, 1), (0.5, 2), (0.75, 3), (0.76, 4)])
def test_top_p_on_exact_masses_keeps_the_smallest_set_that_reaches_it(top_p, n_kept):
    # Four equal logits: every probability is exactly 1/4, so a set's mass equals top_p exactly at the boundary
    # (brute_filter_keep's rule: stop adding tokens once the mass reaches top_p).
    out = filter_logits(torch.zeros(2, 4), 0, top_p)
    assert ((out != -math.inf).sum(-1) == n_kept).all()
    assert len(brute_filter_keep([0.0] * 4, 0, top_p)) == n_kept


def test_top_p_one_keeps_every_logit_even_those_whose_probability_underflows():
    logits = torch.tensor(
        [[0.0, -120.0, -130.0, 5.0]]
    )  # exp(-125) is 0 in float32: a mass of exactly 1 before it
    assert logits.softmax(-1)[0, 1] == 0
    assert torch.equal(filter_logits(logits, 0, 1.0), logits)
    assert torch.equal(filter_logits(logits, 4, 1.0), logits)  # top_k = vocabulary size keeps everything too


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_entropy_is_returned_only_when_asked(temperature):
    logits = mask_first_logits()
    generator = torch.Generator().manual_seed(0)
    _, _, ent = sample_tokens(
        logits.clone(), SamplingParams(temperature), forbid_token=11, generator=generator
    )
    assert ent is None


def test_draws_come_from_the_given_generator_only():
    logits = mask_first_logits(seed=3, shape=(2, 50, 12))
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the global RNG differs; the generator's seed does not
        x0, _, _ = sample_tokens(
            logits.clone(), SamplingParams(1.0), forbid_token=11, generator=torch.Generator().manual_seed(7)
        )
        draws.append(x0)
    assert torch.equal(draws[0], draws[1])
    other, _, _ = sample_tokens(
        logits.clone(), SamplingParams(1.0), forbid_token=11, generator=torch.Generator().manual_seed(8)
    )
    assert not torch.equal(draws[0], other)  # the seed matters: 100 draws from a spread distribution
