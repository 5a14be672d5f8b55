"""The Triton kernels built for Hopper (sm_90) on a machine without a GPU: Triton's CUDA backend and ptxas compile
each kernel as the decode forward launches it (bf16 tensors of the SDAR-1.7B and 30B-A3B shapes, the tile shapes and
splits the launch code picks, PDL on), nothing runs (helpers.compile_for_hopper). What the interpreter cannot see,
this catches before a GPU is lent: a constexpr branch that does not type-check for bf16 or float8, an operation the
CUDA backend does not lower, PDL's instructions, shared memory past the SM's 227 KB. The numbers are the
interpreter's tests' and the `cuda` tests' to check.
"""

from __future__ import annotations

import pytest
import torch

from helpers import compile_for_hopper, hopper_compiler_reason

pytestmark = pytest.mark.skipif(hopper_compiler_reason() is not None, reason=str(hopper_compiler_reason()))

SHARED = 227 << 10  # an H100's or H200's shared memory per block (opt-in)
BF = torch.bfloat16


@pytest.fixture(autouse=True)
def _pdl_on(monkeypatch):
    """Every kernel built as a Hopper GPU launches it: with programmatic dependent launch."""
    from sdar_core import pdl

    monkeypatch.setattr(pdl, "on", lambda x: True)


def built(run, expected: list[str]) -> list[dict]:
    kernels = compile_for_hopper(run)
    assert [k["name"] for k in kernels] == expected
    assert all(k["shared"] <= SHARED for k in kernels), kernels
    return kernels


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("Q, L, waves", [(1, 1, 2), (1, 1, 16), (16, 16, 16)])
def test_the_split_k_attention_builds_with_and_without_its_merge_folded(Q, L, waves, fold):
    """The 1.7B's heads (16 over 8 KV heads of 128) against a 512-slot buffer: one split (the CPU's stand-in
    count of 4 SMs at 2 waves) and 8 (16 waves), for an `ar` step and a block of 16."""
    from sdar_core.decode_attention import CacheQueries, SplitConfig, _split_k

    q = torch.zeros(1, 16, Q, 128, dtype=BF)
    k, v = torch.zeros(1, 8, 512, 128, dtype=BF), torch.zeros(1, 8, 512, 128, dtype=BF)
    where = CacheQueries(torch.arange(100, 100 + Q), L, torch.zeros(1, dtype=torch.long))
    expected = ["_split_kernel"] if fold else ["_split_kernel", "_merge_kernel"]
    kernels = built(lambda: _split_k(q, k, v, where, SplitConfig(waves=waves), fold), expected)
    assert kernels[0]["constants"]["FOLD"] is fold
    assert kernels[0]["constants"]["S"] == (1 if waves == 2 else 8)


def test_the_folded_merge_reads_every_split_in_its_own_instructions():
    """The last arriver's merge (`_merged_rows`) is unrolled over the S splits: its L1-bypassing loads grow with S, at
    least two (a log-sum-exp, a partial) for each more split, so that they can all be in flight at once. As a loop
    the count stayed flat (21, 25, 33 at 4, 8, 16 splits) and each split waited for its own L2 round trip."""
    from sdar_core.decode_attention import CacheQueries, SplitConfig, _split_k

    q = torch.zeros(1, 16, 1, 128, dtype=BF)
    k, v = torch.zeros(1, 8, 2048, 128, dtype=BF), torch.zeros(1, 8, 2048, 128, dtype=BF)
    where = CacheQueries(torch.arange(100, 101), 1, torch.zeros(1, dtype=torch.long))
    loads = {}
    for waves in (16, 32):
        config = SplitConfig(waves=waves)
        (kernel,) = built(lambda: _split_k(q, k, v, where, config, True), ["_split_kernel"])  # noqa: B023
        loads[kernel["constants"]["S"]] = kernel["ptx"].count("ld.global.cg")
    assert sorted(loads) == [8, 16]
    assert loads[16] - loads[8] >= 2 * 8, loads


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("Q, L", [(1, 1), (16, 16)])
def test_the_split_k_attention_builds_with_the_norm_and_rope_in_it(Q, L, fold):
    """The split kernel forming the queries and the chunk's keys itself (Kernels.rope_in_attention), at 8 splits."""
    from sdar_core.decode_attention import CacheQueries, Rope, SplitConfig, _split_k

    q, k, v = (
        torch.zeros(1, Q, 16, 128, dtype=BF),
        torch.zeros(1, Q, 8, 128, dtype=BF),
        torch.zeros(1, Q, 8, 128, dtype=BF),
    )
    caches = torch.zeros(1, 8, 512, 128, dtype=BF), torch.zeros(1, 8, 512, 128, dtype=BF)
    w, cos = torch.ones(128, dtype=BF), torch.zeros(1, 1, Q, 128, dtype=BF)
    rope = Rope(k, v, w, w, 1e-6, 1e-6, cos, cos)
    where = CacheQueries(torch.arange(100, 100 + Q), L, torch.zeros(1, dtype=torch.long))
    expected = ["_split_kernel"] if fold else ["_split_kernel", "_merge_kernel"]
    run = lambda: _split_k(q.transpose(1, 2), *caches, where, SplitConfig(waves=16), fold, rope)  # noqa: E731
    assert built(run, expected)[0]["constants"]["ROPE"] is True


@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("form", ["plain", "add", "norm", "swiglu-add", "fp8-add", "fp8-norm"])
def test_the_skinny_gemm_builds_in_every_form_the_forward_launches(rows, form):
    """o_proj (2048 x 2048) adding into the residual stream, gate_up (12288 x 2048) normalising its x, down
    (2048 x 6144) forming SwiGLU and adding, in bf16 and over float8 weights, at the tile shape and splits
    config_for picks for 132 SMs."""
    from sdar_core import gemm

    fp8 = form.startswith("fp8")
    n, k = {"plain": (2048, 2048), "norm": (12288, 2048), "fp8-norm": (12288, 2048)}.get(form, (2048, 2048))
    if form == "swiglu-add":
        k = 6144
    weight = torch.zeros(n, k, dtype=BF)
    data, scale = (gemm.quantize_fp8(weight).data, torch.ones(n)) if fp8 else (weight, None)
    x = torch.zeros(rows, 2 * k if form == "swiglu-add" else k, dtype=BF)
    residual = torch.zeros(rows, n, dtype=BF)
    squares = torch.zeros(rows, 128)  # o_proj's 128 tiles of 16 columns

    def run():
        if form.endswith("add"):
            gemm._rows_product(x, data, scale, swiglu=form.startswith("swiglu"), residual=residual)
        elif form.endswith("norm"):
            gemm._rows_product(x, data, scale, norm=(squares, torch.ones(k, dtype=BF), 1e-6))
        else:
            gemm._rows_product(x, data, scale)

    kernel = built(run, ["_skinny_kernel"])[0]
    assert (kernel["constants"]["ADD"], kernel["constants"]["NORM"]) == (
        form.endswith("add"),
        form.endswith("norm"),
    )


@pytest.mark.parametrize("rows", [1, 16])
def test_the_skinny_gemm_with_two_tiles_in_flight_loads_twice_the_weight_before_its_wait(rows, monkeypatch):
    """gemm.AHEAD (SDAR_GEMM_AHEAD=1): down (2048 x 6144, forming SwiGLU and adding) for one row (4 splits, 6 steps
    each) and 16 rows builds, and its weight loads before the PDL wait are twice the one-tile form's: the second
    step's tile is asked for before the first is summed."""
    from sdar_core import gemm

    x, w, residual = (
        torch.zeros(rows, 12288, dtype=BF),
        torch.zeros(2048, 6144, dtype=BF),
        torch.zeros(rows, 2048, dtype=BF),
    )
    before_wait = {}
    for ahead in (False, True):
        monkeypatch.setattr(gemm, "AHEAD", ahead)
        kernel = built(
            lambda: gemm._rows_product(x, w, None, swiglu=True, residual=residual), ["_skinny_kernel"]
        )[0]
        assert kernel["constants"]["AHEAD"] is ahead
        head = kernel["ptx"].split("griddepcontrol.wait")[0]
        before_wait[ahead] = head.count("ld.global.v4")
    assert before_wait[False] > 0 and before_wait[True] == 2 * before_wait[False], before_wait


@pytest.mark.parametrize("early", [False, True])
@pytest.mark.parametrize("fold", [False, True])
def test_the_expert_gemv_builds_with_and_without_the_layers_norm_and_add(fold, early, monkeypatch):
    """The 30B-A3B layer's expert shapes (h 2048, intermediate 768, top 8; 8 experts stored, not 128) at the
    default gemv tiles: gate/up normalising x, down adding into the residual stream; with moe.EARLY_DOWN (all 8
    slots), down loads the expert ids (through L2) and their weight tiles before its PDL wait."""
    from sdar_core import moe
    from sdar_core.gemm import Norm
    from sdar_core.moe import Experts

    monkeypatch.setattr(moe, "EARLY_DOWN", 8 if early else 0)
    experts = Experts(8, 2048, 768).to(BF)
    x, residual = torch.zeros(1, 2048, dtype=BF), torch.zeros(1, 2048, dtype=BF)
    chosen, weights = torch.arange(8)[None], torch.full((1, 8), 0.125, dtype=BF)
    norm = Norm(torch.zeros(1, 128), torch.ones(2048, dtype=BF), 1e-6) if fold else None
    with torch.no_grad():
        kernels = built(
            lambda: experts.gemv_forward(x, chosen, weights, norm=norm, residual=residual if fold else None),
            ["_expert_gemv_swiglu", "_expert_gemv_down"],
        )
    assert kernels[0]["constants"]["NORM"] is fold and kernels[1]["constants"]["ADD"] is fold
    assert kernels[1]["constants"]["EARLY"] == (8 if early else 0)
    head = kernels[1]["ptx"].split("griddepcontrol.wait")[0]
    assert ("ld.global.cg" in head and "ld.global.v4" in head) is early


def test_the_routing_kernel_and_the_router_with_its_routing_build():
    """The 30B-A3B router (128 experts, top 8, renormalised): the routing kernel alone, then the router's product
    and its routing in one kernel (moe.gate_route: 32 programs)."""
    from sdar_core import gemm
    from sdar_core.model import RMSNorm
    from sdar_core.moe import fused_route, gate_route

    built(lambda: fused_route(torch.zeros(1, 128, dtype=BF), 8, True, BF), ["_route_kernel"])
    normed = gemm.Normed(
        torch.zeros(1, 1, 2048, dtype=BF), torch.zeros(1, 1, 128), RMSNorm(2048, 1e-6).to(BF)
    )
    kernel = built(
        lambda: gate_route(normed, torch.zeros(128, 2048, dtype=BF), 8, True), ["_gate_route_kernel"]
    )
    assert kernel[0]["constants"]["SPLIT_K"] == 32


@pytest.mark.parametrize("block_size", [4, 16, 64])
def test_the_in_block_kernel_builds_for_every_tile_form(block_size):
    """The 1.7B's heads over 256 tokens: blocks of 4 (four a 16-row tile), 16 (one) and 64 (one, 8 warps)."""
    from sdar_core.in_block import in_block_merge

    q, causal = torch.zeros(1, 16, 256, 128, dtype=BF), torch.zeros(1, 16, 256, 128, dtype=BF)
    k, v = torch.zeros(1, 8, 256, 128, dtype=BF), torch.zeros(1, 8, 256, 128, dtype=BF)
    lse = torch.zeros(1, 16, 256)
    built(lambda: in_block_merge(q, k, v, causal, lse, block_size), ["_in_block_kernel"])


def test_the_kernels_the_forward_has_long_launched_build_too():
    """The rest of what a decode forward launches, unchanged since GPU runs passed but built here too, so that a
    change of Triton or of their shared helpers shows: the residual add + RMSNorm and SiLU x up kernels, q's and k's
    norm + RoPE with the K/V cache write in one launch, and the MoE's sorted form (the pairs' sort, the expert
    matmuls) for 16 tokens."""
    from sdar_core import fused
    from sdar_core.moe import Experts, fused_sort_pairs
    from sdar_core.norm_rope import norm_rope_qk_to_cache

    x, w = torch.zeros(1, 2048, dtype=BF), torch.ones(2048, dtype=BF)
    built(lambda: fused._add_rms_norm(x, x, w, 1e-6), ["_add_norm_kernel"])
    built(lambda: fused._silu_mul(torch.zeros(1, 12288, dtype=BF)), ["_silu_mul_kernel"])
    q, k = torch.zeros(1, 16, 16, 128, dtype=BF), torch.zeros(1, 16, 8, 128, dtype=BF)
    cache = torch.zeros(1, 8, 512, 128, dtype=BF)
    cos, sin = torch.zeros(1, 1, 16, 128, dtype=BF), torch.zeros(1, 1, 16, 128, dtype=BF)
    hw = torch.ones(128, dtype=BF)
    run = lambda: norm_rope_qk_to_cache(q, k, k, hw, hw, 1e-6, 1e-6, cos, sin, cache, cache, torch.arange(16))  # noqa: E731
    built(run, ["_norm_rope_kernel"])
    experts = Experts(8, 2048, 768).to(BF)
    tokens = torch.zeros(16, 2048, dtype=BF)
    chosen, weights = torch.arange(8).repeat(16, 1), torch.full((16, 8), 0.125, dtype=BF)
    built(lambda: fused_sort_pairs(chosen, 8), ["_sort_kernel"])
    with torch.no_grad():  # (the sort on the CPU is the eager one: it takes CUDA tensors only)
        built(lambda: experts.triton_forward(tokens, chosen, weights), ["_expert_matmul", "_expert_matmul"])


@pytest.mark.parametrize("ahead", [False, True])
def test_the_persistent_mlp_builds_at_the_1_7bs_shape(ahead, monkeypatch):
    """The 1.7B's one-token MLP (h 2,048, intermediate 6,144; down's 4 splits at 132 SMs) as one persistent launch,
    PDL on: it spins on its range counters with acquire loads and counts with release reductions after a barrier; two
    programs' shared memory fit on an SM."""
    from sdar_core import gemm, persistent
    from sdar_core.gemm import Normed
    from sdar_core.model import RMSNorm

    monkeypatch.setattr(gemm, "AHEAD", ahead)  # with two weight tiles in flight a program too
    x = Normed(torch.zeros(1, 1, 2048, dtype=BF), torch.zeros(1, 1, 128), RMSNorm(2048, 1e-6).to(BF))
    w1, w2 = torch.zeros(12288, 2048, dtype=BF), torch.zeros(2048, 6144, dtype=BF)
    kernel = built(lambda: persistent.mlp(x, w1, w2, x.x), ["_mlp_kernel"])[0]
    assert kernel["constants"]["SPLITS"] == 4 and kernel["constants"]["PDL"] is True
    assert kernel["constants"]["AHEAD"] is ahead
    assert kernel["shared"] * persistent.PROGRAMS_PER_SM <= 228 << 10
    ptx = kernel["ptx"]
    assert "ld.global.gpu.acquire" in ptx and "red.global.gpu.release" in ptx and "bar.sync" in ptx


# Each kernel sdar_core launches, and the test above that builds it for Hopper.
BUILT_BY = {
    "_split_kernel": test_the_split_k_attention_builds_with_and_without_its_merge_folded,
    "_merge_kernel": test_the_split_k_attention_builds_with_and_without_its_merge_folded,
    "_skinny_kernel": test_the_skinny_gemm_builds_in_every_form_the_forward_launches,
    "_expert_gemv_swiglu": test_the_expert_gemv_builds_with_and_without_the_layers_norm_and_add,
    "_expert_gemv_down": test_the_expert_gemv_builds_with_and_without_the_layers_norm_and_add,
    "_route_kernel": test_the_routing_kernel_and_the_router_with_its_routing_build,
    "_gate_route_kernel": test_the_routing_kernel_and_the_router_with_its_routing_build,
    "_in_block_kernel": test_the_in_block_kernel_builds_for_every_tile_form,
    "_add_norm_kernel": test_the_kernels_the_forward_has_long_launched_build_too,
    "_silu_mul_kernel": test_the_kernels_the_forward_has_long_launched_build_too,
    "_norm_rope_kernel": test_the_kernels_the_forward_has_long_launched_build_too,
    "_sort_kernel": test_the_kernels_the_forward_has_long_launched_build_too,
    "_expert_matmul": test_the_kernels_the_forward_has_long_launched_build_too,
    "_mlp_kernel": test_the_persistent_mlp_builds_at_the_1_7bs_shape,
}


def test_every_kernel_sdar_core_launches_has_a_hopper_build_here():
    """A kernel added to sdar_core without a build test here fails this (the same scan as the profile's classes)."""
    import re

    from sdar_core.paths import REPO

    launched = set()
    for path in sorted((REPO / "sdar_core").glob("*.py")):
        source = path.read_text()
        for name in re.findall(r"@triton\.jit\n\s*def (\w+)\(", source):
            if re.search(rf"\b{name}\[", source):  # launched on a grid, not a helper called from a kernel
                launched.add(name)
    assert launched == set(BUILT_BY), sorted(launched ^ set(BUILT_BY))


def test_the_committed_register_table_is_what_benchmarks_registers_builds_and_the_persistent_grid_fits():
    """benchmarks/results/cpu-hopper-registers/ is `python -m benchmarks.registers` (the same Triton: the same counts),
    and the persistent MLP's default grid, PROGRAMS_PER_SM programs an SM, fits the SMs at once with one and with two
    weight tiles in flight (its programs wait on each other: one that could not be resident would hang the rest)."""
    import json
    from pathlib import Path

    import triton

    from benchmarks.registers import measure
    from sdar_core import persistent

    rows = measure()
    committed = json.loads(
        (Path(__file__).parent.parent / "benchmarks/results/cpu-hopper-registers/registers.json").read_text()
    )
    if committed["triton"] == triton.__version__:
        assert rows == committed["rows"]
    mlp = [r for r in rows if r["name"] == "_mlp_kernel"]
    assert len(mlp) == 2 and all(r["programs_an_sm"] >= persistent.PROGRAMS_PER_SM for r in mlp), mlp
