"""The routed-expert layer (sdar_core/moe.py): the grouped form against a per-token brute force and the looped form,
the stacked layout against the public per-expert checkpoints, and MoE decoding on static shapes.

transformers' own Qwen3-MoE is the reference for the whole network (test_model_parity.py); here each form of the
experts is checked against a computation written out token by token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdar_core import load_pretrained
from sdar_core.decoding import generate
from sdar_core.gemm import project
from sdar_core.kernels import Kernels
from sdar_core.loading import CheckpointError, save_pretrained
from sdar_core.moe import (
    GEMV_MAX_TOKENS,
    TRITON_MAX_PAIRS,
    GemvConfig,
    KernelConfig,
    SparseMoE,
    grouped_mm_available,
    route,
    sort_pairs,
)

from helpers import FoldMath, interpreter_reason, random_model, rel_err, run_interpreted, tiny_config


def experts_layer(E: int, k: int, h: int, I: int, seed: int = 0) -> SparseMoE:
    torch.manual_seed(seed)
    moe = SparseMoE(E, k, norm_topk_prob=True, hidden=h, intermediate=I)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
    return moe


def brute_force(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Each token on its own: softmax over the router's logits, the top k renormalised, each chosen expert's SwiGLU
    from its own rows of the stacked weights, the weighted sum (float64, loops)."""
    x = x.double()
    E, I = moe.experts.num_experts, moe.experts.intermediate
    gate_up, down, router = (
        t.double() for t in (moe.experts.gate_up_proj, moe.experts.down_proj, moe.gate.weight)
    )
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        probs = torch.softmax(router @ x[n], dim=0)
        top = sorted(range(E), key=lambda e: -probs[e])[: moe.top_k]
        total = sum(probs[e] for e in top)
        for e in top:
            g, u = gate_up[e, :I] @ x[n], gate_up[e, I:] @ x[n]
            out[n] += probs[e] / total * (down[e] @ (g * torch.sigmoid(g) * u))
    return out


@pytest.mark.parametrize(
    "E, k, tokens",
    [(8, 2, 1), (8, 2, 13), (16, 4, 7), (4, 4, 5), (32, 8, 3)],
    ids=["one-token", "block", "k4", "every-expert", "most-experts-idle"],
)
def test_grouped_and_looped_experts_equal_a_per_token_brute_force(E, k, tokens):
    moe = experts_layer(E, k, h=24, I=20, seed=E + tokens)
    x = torch.randn(tokens, 24, generator=torch.Generator().manual_seed(tokens))
    ref = brute_force(moe, x)
    weights, chosen = route(moe.gate(x), k, True, x.dtype)
    with torch.no_grad():
        grouped = moe.experts.grouped_forward(x, chosen, weights)
        looped = moe.experts.looped_forward(x, chosen, weights)
        auto = moe(x)
    assert rel_err(grouped, ref) < 1e-6 and rel_err(looped, ref) < 1e-6
    assert torch.equal(auto, grouped)  # under no_grad on the CPU the layer takes the grouped form


def test_grouped_form_handles_every_pair_on_one_expert_and_tokens_in_any_order():
    moe = experts_layer(8, 2, h=16, I=12)
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    chosen = torch.tensor([[5, 2]] * 3 + [[2, 5]] * 3)  # two experts only, slots swapped halfway
    weights = torch.rand(6, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (
            rel_err(
                moe.experts.grouped_forward(x, chosen, weights),
                moe.experts.looped_forward(x, chosen, weights),
            )
            < 1e-6
        )


def test_training_takes_the_looped_form_and_its_gradients_match_the_brute_force():
    moe = experts_layer(8, 2, h=16, I=12, seed=3)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))
    moe(x).square().sum().backward()
    got = moe.experts.gate_up_proj.grad.clone(), moe.experts.down_proj.grad.clone()
    moe.zero_grad(set_to_none=True)
    brute_force(moe, x).square().sum().backward()  # float64 autograd through the written-out formula
    assert rel_err(got[0], moe.experts.gate_up_proj.grad) < 1e-5
    assert rel_err(got[1], moe.experts.down_proj.grad) < 1e-5
    idle = [e for e in range(8) if e not in route(moe.gate(x), 2, True, x.dtype)[1].unique().tolist()]
    assert all(got[1][e].abs().sum() == 0 for e in idle)  # an expert that got no token gets no gradient


# (E, k, tokens, h, I): one token; a block; every expert busy with segments longer than one 16-row tile; sizes that
# no tile divides
TRITON_CASES = [(8, 2, 1, 64, 48), (16, 4, 7, 64, 48), (4, 2, 40, 64, 48), (32, 8, 3, 50, 37)]

INTERPRETED = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from sdar_core.moe import KernelConfig, route
from test_moe import TRITON_CASES, brute_force, experts_layer
errors = []
for E, k, n, h, I in TRITON_CASES:
    moe = experts_layer(E, k, h=h, I=I, seed=E + n)
    x = torch.randn(n, h, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        weights, chosen = route(moe.gate(x), k, True, x.dtype)
        out = moe.experts.triton_forward(x, chosen, weights, KernelConfig(block_n=16, block_k=32))
    ref = brute_force(moe, x)
    errors.append(float((out.double() - ref).norm() / ref.norm()))
print(json.dumps(errors))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_triton_expert_kernels_under_the_interpreter_equal_the_brute_force():
    """The Triton kernels run by Triton's interpreter on CPU tensors (float32, small tiles so that segments span
    several row tiles and no tile divides the sizes) against the per-token float64 brute force."""
    errors = json.loads(run_interpreted(INTERPRETED, str(Path(__file__).parent)))
    assert len(errors) == len(TRITON_CASES) and max(errors) < 1e-5, errors


# (E, k, tokens, h, I): one token; two that share experts (E = k: every expert twice); three (the form is right for
# any count, if slow); sizes no tile divides
GEMV_CASES = [(8, 2, 1, 64, 48), (4, 4, 2, 64, 48), (16, 4, 3, 64, 48), (32, 8, 2, 50, 37)]

GEMV_INTERPRETED = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from sdar_core import moe as moe_module
from sdar_core.moe import GemvConfig, route
from test_moe import GEMV_CASES, brute_force, experts_layer
errors = []
for E, k, n, h, I in GEMV_CASES:
    moe = experts_layer(E, k, h=h, I=I, seed=E + n)
    x = torch.randn(n, h, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        weights, chosen = route(moe.gate(x), k, True, x.dtype)
        out = moe.experts.gemv_forward(x, chosen, weights, GemvConfig(block_n=16, down_block_n=8, block_k=32))
        unfused = moe.experts.looped_forward(x, chosen, weights, fuse=False)
        # the down gemv's weights before its wait (EARLY_DOWN: one K step, so block_k >= I), against its loop
        one_step = GemvConfig(block_n=16, down_block_n=8, block_k=64)
        loop = moe.experts.gemv_forward(x, chosen, weights, one_step)
        moe_module.EARLY_DOWN = k // 2  # half the slots early, the rest in the loop after the wait
        early = moe.experts.gemv_forward(x, chosen, weights, one_step)
        moe_module.EARLY_DOWN = 0
    ref = brute_force(moe, x)
    errors.append([
        float((out.double() - ref).norm() / ref.norm()),
        float((out - unfused).abs().max()),
        float((early.double() - loop.double()).norm() / loop.double().norm()),
    ])
print(json.dumps(errors))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_expert_gemv_kernels_under_the_interpreter_equal_the_brute_force_and_the_loop():
    """The gemv form's two kernels on CPU tensors (float32; tiles that leave remainders along both dimensions)
    against the per-token float64 brute force and the looped form of eager ops; the down gemv with half its slots'
    weight tiles loaded before its wait (EARLY_DOWN) within float32 rounding of its loop over the k experts."""
    errors = json.loads(run_interpreted(GEMV_INTERPRETED, str(Path(__file__).parent)))
    assert len(errors) == len(GEMV_CASES)
    for to_math, to_loop, early in errors:
        assert to_math < 1e-5 and to_loop < 1e-4 and early < 1e-6, errors


# The gemv form with the MoE layer's norm and residual add in it (Kernels.expert_fold): x given raw with its sums of
# squares per 16-wide tile (what o_proj's kernel writes), normalised by the gate/up kernel as it loads it; the down
# kernel adds its output to the residual and writes the sum's squares per 8-wide tile.
FOLDED_GEMV = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from sdar_core import moe as moe_module
from sdar_core.gemm import Norm
from sdar_core.moe import GemvConfig, route
from test_moe import GEMV_CASES, brute_force, experts_layer
errors = []
for E, k, n, h, I in GEMV_CASES:
    moe = experts_layer(E, k, h=h, I=I, seed=E + n)
    g = torch.Generator().manual_seed(n + 7)
    x, residual = torch.randn(n, h, generator=g), torch.randn(n, h, generator=g)
    nw, eps = torch.rand(h, generator=g) + 0.5, 1e-6
    x64 = x.double()
    squares = torch.nn.functional.pad(x64, (0, -h % 16)).view(n, -1, 16).pow(2).sum(-1).float()
    normed = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * nw.double()
    with torch.no_grad():
        weights, chosen = route(moe.gate(normed.float()), k, True, x.dtype)
        config = GemvConfig(block_n=16, down_block_n=8, block_k=32)
        total, sq = moe.experts.gemv_forward(x, chosen, weights, config, Norm(squares, nw, eps), residual)
        one_step = GemvConfig(block_n=16, down_block_n=8, block_k=64)
        loop, _ = moe.experts.gemv_forward(x, chosen, weights, one_step, Norm(squares, nw, eps), residual)
        moe_module.EARLY_DOWN = k  # every slot's tile before the wait, adding as it stores
        early, _ = moe.experts.gemv_forward(x, chosen, weights, one_step, Norm(squares, nw, eps), residual)
        moe_module.EARLY_DOWN = 0
    ref = residual.double() + brute_force(moe, normed)
    by_hand = torch.nn.functional.pad(total.double(), (0, -h % 8)).view(n, -1, 8).pow(2).sum(-1)
    assert sq.shape == (n, -(-h // 8)), sq.shape
    errors.append([
        float((total.double() - ref).norm() / ref.norm()),
        float((sq - by_hand).norm() / by_hand.norm()),
        float((early.double() - loop.double()).norm() / loop.double().norm()),
    ])
print(json.dumps(errors))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_gemv_form_with_the_norm_and_the_add_folded_in_under_the_interpreter_equals_the_math():
    """Every case of GEMV_CASES: residual + the layer's experts of RMSNorm(x) (float64 brute force), x normalised
    from its tile sums of squares alone, and the sum's own sums of squares tile by tile."""
    errors = json.loads(run_interpreted(FOLDED_GEMV, str(Path(__file__).parent)))
    assert len(errors) == len(GEMV_CASES)
    for to_math, squares, early in errors:
        assert to_math < 1e-5 and squares < 1e-6 and early < 1e-6, errors


def test_with_the_expert_fold_stood_in_by_its_math_a_one_token_forward_has_the_unfolded_logits(monkeypatch):
    """The model's dataflow under expert_fold, on the CPU: o_proj's add, the GEMMs that read a Normed and the gemv
    form with the norm and the add (tests/helpers.FoldMath: float64 sums of squares per tile) give the unfolded
    forward's logits for one token. Every layer's router and gate/up normalise from o_proj's squares, its down gemv
    adds and the next layer's qkv (the lm_head after the last) normalises from the gemv's squares; with gate_route
    the router's product and its routing are one call; with the switch off, or for three tokens, the router reads
    the norm as a tensor and the experts' output waits for the next norm."""
    from sdar_core import gemm
    from sdar_core import model as model_module
    from sdar_core import moe as moe_module

    math = FoldMath()
    model = random_model(tiny_config("sdar_moe", block_size=4)).fuse_projections()
    layers = model.config.num_hidden_layers
    assert all(isinstance(layer.mlp, SparseMoE) for layer in model.model.layers)
    for rows, fold, gate_route, expected in (
        (1, True, False, {"add": layers, "normed": 2 * layers, "experts": layers, "route": 0}),
        (1, True, True, {"add": layers, "normed": layers, "experts": layers, "route": layers}),
        (1, False, True, {"add": layers, "normed": 0, "experts": layers, "route": 0}),
        (3, True, True, {"add": layers, "normed": 0, "experts": 0, "route": 0}),
    ):
        ids = torch.arange(3, 3 + rows)[None]
        with torch.no_grad():
            unfolded = model(ids, kernels=Kernels(norm_fold=False))
            with monkeypatch.context() as m:
                m.setattr(model_module, "add_runs", lambda *a, **k: True)
                m.setattr(model_module, "add_linear", math.add_linear)
                m.setattr(gemm, "normed_runs", lambda *a: True)
                m.setattr(gemm, "normed_linear", math.normed_linear)
                m.setattr(moe_module, "normed_runs", lambda *a: True)
                m.setattr(moe_module, "triton_available", lambda x: x.shape[0] <= GEMV_MAX_TOKENS)
                m.setattr(
                    moe_module.Experts,
                    "gemv_forward",
                    lambda experts, *a, **k: math.gemv_forward(experts, *a, **k),
                )
                m.setattr(moe_module, "gate_route_runs", lambda x, gate: True)
                m.setattr(moe_module, "gate_route", math.gate_route)
                math.calls.update(add=0, normed=0, experts=0, route=0)
                folded = model(ids, kernels=Kernels(expert_fold=fold, gate_route=gate_route))
        assert rel_err(folded, unfolded) < 1e-5, (rows, fold, gate_route)
        assert math.calls == expected, (rows, fold, gate_route)


def test_the_expert_fold_is_on_by_default_and_never_taken_on_the_cpu():
    """On since an H100 measured it (with gate_route); on the CPU (no gemv form) the switch changes nothing."""
    assert Kernels().expert_fold and Kernels().gate_route
    model = random_model(tiny_config("sdar_moe", block_size=4)).fuse_projections()
    ids = torch.tensor([[5]])
    with torch.no_grad():
        off = Kernels(expert_fold=False, gate_route=False)
        assert torch.equal(model(ids), model(ids, kernels=off))


# The router's product and the routing in one kernel (Kernels.gate_route): (E, k, h, renormalise, K step), the
# splits h / step's largest divisor up to 32: 4, 16 and 6 programs; 20 experts pad the tile to 32 rows.
GATE_ROUTE_CASES = [(8, 2, 64, True, 16), (128, 8, 256, True, 16), (20, 4, 96, False, 16)]

GATE_ROUTE = """
import json, torch
from sdar_core import gemm
from sdar_core.model import RMSNorm
from sdar_core.moe import gate_route, gate_splits, route
from test_moe import GATE_ROUTE_CASES
out = []
for E, k, h, renorm, block_k in GATE_ROUTE_CASES:
    g = torch.Generator().manual_seed(E + h)
    x, weight = torch.randn(1, 1, h, generator=g), torch.randn(E, h, generator=g) * 0.3
    norm = RMSNorm(h, 1e-6)
    norm.weight.data = torch.rand(h, generator=g) + 0.5
    squares = torch.nn.functional.pad(x.double(), (0, -h % 16)).view(1, 1, -1, 16).pow(2).sum(-1).float()
    normed = gemm.Normed(x, squares, norm)
    x64 = x.double().view(1, h)
    logits = (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()) @ weight.double().T
    ref_w, ref_c = route(logits.float(), k, renorm, torch.float32, fuse=False)
    for _ in range(2):  # the second call finds the counter its first call's last arriver reset
        with torch.no_grad():
            w, c = gate_route(normed, weight, k, renorm, block_k=block_k)
        out.append([gate_splits(h, block_k), torch.equal(c, ref_c), float((w - ref_w).abs().max())])
    assert int(gemm.counters(x.device).abs().sum()) == 0
print(json.dumps(out))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_router_and_the_routing_in_one_kernel_under_the_interpreter_choose_as_the_math():
    """x normalised from its tile sums of squares, the logits summed over 4-16 programs by the last to arrive, the
    top k taken by the routing kernel's own code: the experts and weights of float64 logits routed eagerly."""
    out = json.loads(run_interpreted(GATE_ROUTE, str(Path(__file__).parent)))
    assert [splits for splits, _, _ in out] == [4, 4, 16, 16, 6, 6]
    assert all(same for _, same, _ in out), out
    assert max(error for _, _, error in out) < 1e-5, out


SORT_CASES = [(1, 1, 128), (1, 8, 128), (16, 8, 128), (5, 3, 7), (64, 2, 2), (128, 8, 128)]  # (tokens, k, E)

SORT_INTERPRETED = """
import json, torch
from sdar_core.moe import fused_sort_pairs, sort_pairs
from test_moe import SORT_CASES
same = []
for n, k, E in SORT_CASES:
    g = torch.Generator().manual_seed(n * k + E)
    chosen = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(n)])  # k distinct experts per token
    ours, eager = fused_sort_pairs(chosen, E), sort_pairs(chosen, E, fuse=False)
    pairs = list(zip(ours, eager))
    same.append(all(torch.equal(a, b) and a.dtype == b.dtype for a, b in pairs))
print(json.dumps(same))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_sort_kernel_under_the_interpreter_equals_torchs_stable_sort_and_counts():
    """The one-program counting sort against torch's stable sort, scatter_add and cumsum, exactly: one pair, one
    token's 8 of 128 experts, a block of 16 tokens, sizes that are no power of two, every pair on two experts (many
    ties), and the 1,024 pairs of the largest chunk it serves."""
    assert json.loads(run_interpreted(SORT_INTERPRETED)) == [True] * len(SORT_CASES)


ROUTE_CASES = [
    (1, 128, 8, True),
    (7, 37, 4, True),
    (5, 16, 16, False),
    (3, 8, 1, False),
]  # (tokens, E, k, norm)

ROUTE_INTERPRETED = """
import json, torch
from sdar_core.moe import fused_route
from test_moe import ROUTE_CASES, route_by_hand
out = []
for n, E, k, norm in ROUTE_CASES:
    logits = torch.randn(n, E, generator=torch.Generator().manual_seed(E)) * 3
    weights, chosen = fused_route(logits, k, norm, torch.float32)
    ref_w, ref_c = route_by_hand(logits, k, norm)
    out.append([chosen.tolist() == ref_c, float((weights.double() - ref_w).abs().max())])
print(json.dumps(out))
"""


def route_by_hand(logits: torch.Tensor, k: int, norm: bool) -> tuple[torch.Tensor, list[list[int]]]:
    """Per token in float64: the softmax, the k largest by a sort of (probability, -index), renormalised."""
    weights, chosen = [], []
    for row in logits.double():
        probs = torch.exp(row - row.max())
        probs = probs / probs.sum()
        top = sorted(range(len(probs)), key=lambda e: (-probs[e].item(), e))[:k]
        w = torch.stack([probs[e] for e in top])
        weights.append(w / w.sum() if norm else w)
        chosen.append(top)
    return torch.stack(weights), chosen


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_fused_routing_under_the_interpreter_equals_the_routing_by_hand():
    """The routing kernel on CPU tensors: the same experts in the same (descending) order, the same weights, for a
    30B-A3B-sized router, sizes that are no power of two, k = E and k = 1."""
    for same_experts, max_error in json.loads(run_interpreted(ROUTE_INTERPRETED)):
        assert same_experts and max_error < 1e-6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n, E, k, norm", ROUTE_CASES)
def test_cuda_fused_routing_equals_the_eager_routing(n, E, k, norm):
    """bf16 logits tie often (16 of them at k = E): the kernel takes the lower expert id first, as the hand-written
    routing does; torch.topk orders ties as it likes, so against it the experts are compared as sets."""
    logits = (torch.randn(n, E, generator=torch.Generator().manual_seed(E)) * 3).cuda().to(torch.bfloat16)
    weights, chosen = route(logits, k, norm, torch.bfloat16, fuse=True)
    eager_w, eager_c = route(logits, k, norm, torch.bfloat16, fuse=False)
    assert torch.equal(chosen.sort(-1).values, eager_c.sort(-1).values)
    assert (
        weights.float() - eager_w.float()
    ).abs().max() <= 2**-8  # both descending: ties have equal weights
    ref_w, ref_c = route_by_hand(logits.cpu(), k, norm)
    assert chosen.tolist() == ref_c and (weights.double().cpu() - ref_w).abs().max() < 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("E, k, n, h, I", TRITON_CASES)
def test_cuda_triton_experts_equal_the_brute_force(E, k, n, h, I):
    moe = experts_layer(E, k, h=h, I=I, seed=E + n).cuda().to(torch.bfloat16)
    x = torch.randn(n, h, device="cuda", dtype=torch.bfloat16)
    ref = brute_force(
        moe, x
    ).cpu()  # float64 on the layer's own bf16 values (the module itself stays as it is)
    with torch.no_grad():
        weights, chosen = route(moe.gate(x), k, True, x.dtype)
        for config in (KernelConfig(), KernelConfig(block_n=64, block_k=64, stages=3)):
            out = moe.experts.triton_forward(x, chosen, weights, config)
            assert rel_err(out.double().cpu(), ref) < 2e-2
        chosen_form = moe.experts.gemv_forward if n <= GEMV_MAX_TOKENS else moe.experts.triton_forward
        weights, chosen = route(project(moe.gate, x, Kernels().skinny_gemm), k, True, x.dtype)  # as the layer
        assert torch.equal(moe(x), chosen_form(x, chosen, weights))  # the layer's choice on CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("E, k, n, h, I", GEMV_CASES + [(128, 8, 1, 2048, 768), (128, 8, 2, 2048, 768)])
def test_cuda_expert_gemv_equals_the_brute_force_and_the_sorted_kernels(E, k, n, h, I):
    """The gemv form in bf16, at the test shapes and the 30B-A3B layer's, against float64 math on the same bf16
    values and the sorted Triton form; the layer takes it for one or two tokens and the sorted form for more."""
    moe = experts_layer(E, k, h=h, I=I, seed=E + n).cuda().to(torch.bfloat16)
    x = torch.randn(n, h, device="cuda", dtype=torch.bfloat16)
    ref = brute_force(moe, x).cpu()
    with torch.no_grad():
        logits = project(moe.gate, x, Kernels().skinny_gemm)  # the router's product as the layer computes it
        weights, chosen = route(logits, k, True, x.dtype)
        gemv = moe.experts.gemv_forward(x, chosen, weights)
        configs = (  # the default, the old default, the corners of the tile search's grid (benchmarks.moe)
            GemvConfig(),
            GemvConfig(block_n=16, down_block_n=8, block_k=256, stages=4, warps=4),
            GemvConfig(block_n=32, down_block_n=16, block_k=128, stages=2),
            GemvConfig(block_n=2, down_block_n=2, block_k=1024, stages=1, warps=1),
            GemvConfig(block_n=4, down_block_n=4, block_k=512, stages=3, warps=8),
        )
        for config in configs:
            out = moe.experts.gemv_forward(x, chosen, weights, config)
            assert rel_err(out.double().cpu(), ref) < 2e-2
        assert rel_err(gemv.float(), moe.experts.triton_forward(x, chosen, weights).float()) < 2e-2
        layer = moe(x)
        chosen_form = gemv if n <= GEMV_MAX_TOKENS else moe.experts.triton_forward(x, chosen, weights)
        assert torch.equal(layer, chosen_form)
        off = moe.experts(x, chosen, weights, Kernels(expert_gemv=False))
        assert torch.equal(off, moe.experts.triton_forward(x, chosen, weights))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n, k, E", SORT_CASES + [(TRITON_MAX_PAIRS // 8, 8, 128)])
def test_cuda_the_sort_kernel_equals_the_eager_sort(n, k, E):
    g = torch.Generator().manual_seed(n + k + E)
    chosen = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(n)]).cuda()
    ours, eager = sort_pairs(chosen, E), sort_pairs(chosen, E, fuse=False)
    assert all(torch.equal(a, b) for a, b in zip(ours, eager))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("early", [0, 4, 8])
def test_cuda_one_token_layer_in_a_graph_takes_the_gemv_and_follows_fresh_inputs(early, monkeypatch):
    """A one-token MoE layer (the AR step) captured in a CUDA graph and replayed on a new token that routes to other
    experts: the replay gives the looped form's output for the new token. With the down gemv's first `early` slots'
    expert ids and weights read before its PDL wait (moe.EARLY_DOWN), those reads see each replay's routing."""
    from sdar_core import moe as moe_module

    monkeypatch.setattr(moe_module, "EARLY_DOWN", early)
    moe = experts_layer(128, 8, h=512, I=256).cuda().to(torch.bfloat16)
    static_x = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        moe(static_x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = moe(static_x)
        for seed in range(3):
            static_x.copy_(torch.randn(1, 512, generator=torch.Generator().manual_seed(seed)).cuda())
            graph.replay()
            weights, chosen = route(moe.gate(static_x), 8, True, static_x.dtype)
            expected = moe.experts.looped_forward(static_x, chosen, weights)
            assert rel_err(out.float(), expected.float()) < 2e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tokens", [1, 16])
def test_cuda_moe_layers_in_a_graph_give_the_same_bits_with_and_without_pdl(tokens, monkeypatch):
    """Two MoE layers captured in one graph, their kernels (router GEMM, routing, sort, experts) chained with
    programmatic dependent launch where the GPU has it, against the same graph launched without: PDL changes when a
    kernel starts, never what it computes. One token takes the gemv form, 16 the sorted kernels."""
    from sdar_core import pdl

    layers = [experts_layer(128, 8, h=512, I=256, seed=s).cuda().to(torch.bfloat16) for s in (1, 2)]
    x = torch.randn(tokens, 512, device="cuda", dtype=torch.bfloat16)

    def replayed(requested: bool) -> torch.Tensor:
        monkeypatch.setattr(pdl, "REQUESTED", requested)
        with torch.no_grad():
            layers[1](layers[0](x))  # compile outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = layers[1](layers[0](x))
            graph.replay()
        return out.clone()

    assert torch.equal(replayed(True), replayed(False))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_large_chunks_take_the_grouped_matmul_and_agree_with_the_kernels():
    moe = experts_layer(16, 4, h=128, I=64).cuda().to(torch.bfloat16)
    if not grouped_mm_available(moe.gate.weight):
        pytest.skip("the grouped matmul needs a Hopper GPU")
    x = torch.randn(TRITON_MAX_PAIRS // 4 + 1, 128, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        weights, chosen = route(moe.gate(x), 4, True, x.dtype)
        grouped = moe.experts.grouped_forward(x, chosen, weights)
        assert torch.equal(moe(x), grouped)
        assert rel_err(moe.experts.triton_forward(x, chosen, weights).float(), grouped.float()) < 2e-2


def test_grouped_matmul_is_used_on_the_cpu_and_on_hopper_bfloat16_only():
    assert grouped_mm_available(torch.zeros(1))
    assert not grouped_mm_available(torch.zeros(1, device="meta"))


# --- the stacked layout against the public per-expert checkpoints ----------------------------------------


def moe_model(model_type: str = "sdar_moe", **overrides):
    return random_model(tiny_config(model_type, block_size=4, layers=2, **overrides), proj_std=0.3)


def test_save_pretrained_writes_the_public_per_expert_names_and_reloads_the_same_logits(tmp_path):
    model = moe_model()
    save_pretrained(
        model, None, tmp_path, max_shard_bytes=40_000
    )  # small shards: a layer's experts span several
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in index
    assert "model.layers.0.mlp.experts.3.up_proj.weight" in index
    assert not any(name.endswith(("gate_up_proj", "experts.down_proj")) for name in index)
    spanning = {index[f"model.layers.0.mlp.experts.{e}.gate_proj.weight"] for e in range(8)}
    assert len(spanning) > 1
    loaded, _ = load_pretrained(tmp_path, device="cpu", dtype=torch.float32, with_tokenizer=False)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_expert_weights_land_in_their_rows_of_the_stack(tmp_path):
    from safetensors.torch import load_file

    model = moe_model()
    save_pretrained(model, None, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    loaded, _ = load_pretrained(tmp_path, device="cpu", dtype=torch.float32, with_tokenizer=False)
    experts = loaded.model.layers[1].mlp.experts
    I = experts.intermediate
    for e in (0, 5):
        prefix = f"model.layers.1.mlp.experts.{e}."
        assert torch.equal(experts.gate_up_proj[e, :I], tensors[prefix + "gate_proj.weight"])
        assert torch.equal(experts.gate_up_proj[e, I:], tensors[prefix + "up_proj.weight"])
        assert torch.equal(experts.down_proj[e], tensors[prefix + "down_proj.weight"])


def test_a_missing_expert_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    save_pretrained(moe_model(), None, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.0.mlp.experts.6.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks 1 expert tensors .*experts\.6\.up_proj\.weight"):
        load_pretrained(tmp_path, device="cpu", with_tokenizer=False)


def test_an_expert_of_another_shape_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    save_pretrained(moe_model(), None, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.1.mlp.experts.2.down_proj.weight"] = torch.zeros(64, 31)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"experts of model\.layers\.1\.mlp have tensors of different shapes"
    ):
        load_pretrained(tmp_path, device="cpu", with_tokenizer=False)


def test_device_map_loading_of_an_moe_checkpoint_gives_the_same_logits(tmp_path):
    model = moe_model()
    save_pretrained(model, None, tmp_path, max_shard_bytes=40_000)
    mapped, _ = load_pretrained(tmp_path, device_map={"": "cpu"}, dtype=torch.float32, with_tokenizer=False)
    ids = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(mapped(ids), model(ids))


def test_transformers_reads_the_checkpoints_we_write(tmp_path):
    """Independent reader: transformers' Qwen3-MoE loads our per-expert files and computes the same logits."""
    from transformers import Qwen3MoeForCausalLM

    model = moe_model("qwen3_moe")
    save_pretrained(model, None, tmp_path)
    hf = Qwen3MoeForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert rel_err(model(ids), hf(ids).logits) < 1e-5


# --- decoding an MoE model on static shapes --------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["static", "dynamic", "ar"])
def test_moe_decoding_on_static_shapes_equals_the_looped_plain_path(strategy):
    """The static-shape runner (what a CUDA graph replays) with grouped experts gives the tokens of the plain path
    with the host-read expert loop."""
    model = moe_model()
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12]]
    kw = dict(max_new_tokens=16, block_length=4, steps=2, strategy=strategy, threshold=0.5)
    static = generate(model, prompts, runner_mode="static", **kw)
    looped = generate(model, prompts, runner_mode="plain", kernels=Kernels(grouped_experts=False), **kw)
    assert static.tokens.tolist() == looped.tokens.tolist()
    assert len({t for row in static.tokens.tolist() for t in row}) > 3  # not one repeated token


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_moe_layer_replays_in_a_graph_and_equals_the_looped_form():
    moe = experts_layer(16, 4, h=256, I=128).cuda().to(torch.bfloat16)
    if not grouped_mm_available(moe.gate.weight):
        pytest.skip("the grouped matmul needs a Hopper GPU")
    x = torch.randn(12, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        weights, chosen = route(moe.gate(x), 4, True, x.dtype)
        looped = moe.experts.looped_forward(x, chosen, weights)
        static_x = x.clone()
        moe(static_x)  # warm-up outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = moe(static_x)
        static_x.copy_(torch.randn_like(x))
        graph.replay()
        fresh_weights, fresh_chosen = route(moe.gate(static_x), 4, True, x.dtype)
        expected = moe.experts.looped_forward(static_x, fresh_chosen, fresh_weights)
    assert rel_err(out.float(), expected.float()) < 2e-2
    assert rel_err(moe(x).float(), looped.float()) < 2e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["static", "ar"])
def test_cuda_moe_graph_decoding_equals_plain(strategy):
    model = moe_model().cuda().to(torch.bfloat16)
    if not grouped_mm_available(model.model.embed_tokens.weight):
        pytest.skip("the grouped matmul needs a Hopper GPU")
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12]]
    kw = dict(max_new_tokens=16, block_length=4, steps=2, strategy=strategy)
    plain = generate(model, prompts, runner_mode="plain", **kw)
    graph = generate(model, prompts, runner_mode="graph", **kw)
    assert graph.tokens.tolist() == plain.tokens.tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("E, k, h, I", [(8, 2, 64, 48), (128, 8, 2048, 768)])
def test_cuda_the_moe_layer_with_its_norm_and_add_folded_matches_the_unfolded_layer(E, k, h, I):
    """One token in bf16 (the test shape and the 30B-A3B layer's): o_proj's kernel adds into the residual stream,
    then the folded layer (router and gate/up normalising x from o_proj's squares, down adding). Against the unfolded
    layer on the same routing: the norm as a kernel (F.rms_norm), the gemv form, the add; within bf16 rounding. The
    sum's squares are its own, tile by tile; the routing is the unfolded router's."""
    from sdar_core import gemm
    from sdar_core.model import RMSNorm

    torch.manual_seed(E)
    dev, bf = "cuda", torch.bfloat16
    moe = experts_layer(E, k, h=h, I=I, seed=E).to(dev, bf)
    norm = RMSNorm(h, 1e-6).to(dev, bf)
    with torch.no_grad():
        norm.weight.uniform_(0.8, 1.2)
        inp, residual = torch.randn(1, 1, h, device=dev, dtype=bf), torch.randn(1, 1, h, device=dev, dtype=bf)
        w_o = torch.randn(h, h, device=dev, dtype=bf) * 0.05
        total, squares = gemm.add_linear(inp, w_o, residual)
        x = gemm.Normed(total, squares, norm)
        on = Kernels(expert_fold=True)
        assert moe.fold_runs(x, total, on) and not moe.fold_runs(x, total, Kernels(expert_fold=False))
        folded, folded_squares = moe.folded(x, total, on)
        normed = norm(total)  # the unfolded layer's norm kernel
        logits = project(moe.gate, normed)
        weights, chosen = route(logits.reshape(1, E), k, True, bf)
        unfolded = total + moe.experts.gemv_forward(normed.reshape(1, h), chosen, weights).view(1, 1, h)
        assert torch.equal(route(project(moe.gate, x).reshape(1, E), k, True, bf)[1], chosen)
    assert rel_err(folded.float(), unfolded.float()) < 1e-2
    by_hand = folded.double().view(1, 1, -1, GemvConfig().down_block_n).pow(2).sum(-1)
    assert rel_err(folded_squares.double(), by_hand) < 1e-6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_a_one_token_moe_forward_with_the_expert_fold_runs_two_kernels_fewer_a_layer():
    """bf16 one-token forward of an MoE model: with expert_fold the logits stay within rounding of the unfolded
    forward's and 2 kernels a layer are gone (the router's norm, the add + norm after the experts), 3 with gate_route
    (the routing kernel too); a decode of one row in graph mode (each step one token) gives the tokens of the same
    kernels launched one by one."""
    from torch.profiler import ProfilerActivity, profile

    model = moe_model().cuda().to(torch.bfloat16).fuse_projections()
    layers = model.config.num_hidden_layers
    ids = torch.tensor([[7]], device="cuda")
    settings = {
        "off": Kernels(expert_fold=False, gate_route=False),
        "fold": Kernels(expert_fold=True, gate_route=False),
        "route": Kernels(expert_fold=True, gate_route=True),
    }
    counts, logits = {}, {}
    for name, kernels in settings.items():
        with torch.no_grad():
            model(ids, kernels=kernels)  # compiled outside the profile
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                logits[name] = model(ids, kernels=kernels)
                torch.cuda.synchronize()
        counts[name] = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
    for name in ("fold", "route"):
        assert rel_err(logits[name].float(), logits["off"].float()) < 2e-2, name
    assert counts["off"] - counts["fold"] == 2 * layers, counts
    assert counts["off"] - counts["route"] == 3 * layers, counts
    for kernels in (settings["fold"], settings["route"]):
        kw = dict(max_new_tokens=12, block_length=4, strategy="ar", kernels=kernels)
        static = generate(model, [[3, 4, 5]], runner_mode="static", **kw)
        graph = generate(model, [[3, 4, 5]], runner_mode="graph", **kw)
        assert graph.tokens.tolist() == static.tokens.tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("E, k, h", [(8, 2, 64), (128, 8, 2048)])
def test_cuda_the_router_and_the_routing_in_one_kernel_choose_as_the_two_kernels_in_a_graph(E, k, h):
    """bf16, one token (the test shape and the 30B-A3B router's): gate_route against the router's GEMM reading the same
    Normed then the routing kernel, each in a CUDA graph replayed for three fresh tokens: the same experts, weights
    within one bf16 rounding (the logits' float32 sums in another order); the counters zero after."""
    from sdar_core import gemm
    from sdar_core.model import RMSNorm
    from sdar_core.moe import gate_route, gate_route_runs

    torch.manual_seed(h)
    dev, bf = "cuda", torch.bfloat16
    gate = torch.nn.Linear(h, E, bias=False).to(dev, bf)
    norm = RMSNorm(h, 1e-6).to(dev, bf)
    x = torch.randn(1, 1, h, device=dev, dtype=bf)
    squares = x.float().view(1, 1, -1, 16).pow(2).sum(-1)
    normed = gemm.Normed(x, squares, norm)
    with torch.no_grad():  # inference: the kernels have no backward (gate_route_runs refuses a gradient)
        assert gate_route_runs(normed, gate)
        gate_route(normed, gate.weight, k, True)  # compiled (and the counters allocated) outside the capture
        route(project(gate, normed).reshape(1, E), k, True, bf)
        fused_graph, two_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(fused_graph):
            fused = gate_route(normed, gate.weight, k, True)
        with torch.cuda.graph(two_graph):
            two = route(project(gate, normed).reshape(1, E), k, True, bf)
    for _ in range(3):
        x.copy_(torch.randn(1, 1, h, device=dev, dtype=bf))
        squares.copy_(x.float().view(1, 1, -1, 16).pow(2).sum(-1))
        fused_graph.replay()
        two_graph.replay()
        assert torch.equal(fused[1], two[1])
        assert (fused[0].float() - two[0].float()).abs().max() <= 2**-7
    torch.cuda.synchronize()
    assert int(gemm.counters(x.device).abs().sum()) == 0


def test_bfloat16_mixed_weights_follow_the_float32_layer_to_rounding():
    moe = experts_layer(8, 2, h=32, I=16)
    x = torch.randn(9, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = moe(x)
        low = moe.to(torch.bfloat16)(x.bfloat16())
    assert rel_err(low.float(), ref) < 3e-2
    assert F.cosine_similarity(low.float().flatten(), ref.flatten(), dim=0) > 0.999
