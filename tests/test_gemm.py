"""The skinny GEMM (sdar_core/gemm.py) against the product written out in float64: on the CPU through Triton's
interpreter where it runs (every tile form: one row, tensor-core rows, split-K with the last-arriver sum, odd sizes
no tile divides), on the GPU under the `cuda` marker against float64 and cuBLAS, inside a CUDA graph, and decoding
with the kernel on against cuBLAS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_fused import norm_module

from sdar_core import fused, gemm, pdl
from sdar_core.decoding import generate
from sdar_core.fused import add_rms_norm, silu_mul
from sdar_core.kernels import Kernels

from helpers import FoldMath, interpreter_reason, random_model, rel_err, run_interpreted, tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rounding_excess(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, roundings: int = 1) -> float:
    """How far y = x w^T (bf16) lies beyond what `roundings` roundings of a float32 sum allow: |y - exact| may be
    the float32 accumulation's error (K * 2^-24 * sum |x w|) plus one bf16 ulp of the result per rounding; <= 0
    when it holds."""
    x, w = x.double().cpu().reshape(-1, x.shape[-1]), w.double().cpu()
    exact = x @ w.T
    ulp = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(1e-300))) - 7)
    slack = (x.abs() @ w.abs().T) * x.shape[-1] * 2.0**-24
    gap = (y.double().cpu().reshape(exact.shape) - exact).abs()
    return float((gap - roundings * (ulp + slack)).max())


def test_on_the_cpu_linear_is_f_linear_and_project_calls_the_module():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 5, 24), torch.randn(40, 24), torch.randn(40)
    assert torch.equal(gemm.linear(x, w), F.linear(x, w))
    assert torch.equal(gemm.linear(x, w, b), F.linear(x, w, b))
    module, called = torch.nn.Linear(24, 40), []
    module.register_forward_hook(lambda *_: called.append(1))  # big-model dispatch hooks the module call
    assert torch.equal(gemm.project(module, x), module(x)) and len(called) == 2


@pytest.mark.parametrize("rows", [1, 8, 16, 33, 64])
def test_the_tile_shapes_fill_the_chip_without_splitting_k_too_thin(rows):
    sms = 132
    for n, k in [(2048, 2048), (4096, 2048), (12288, 2048), (2048, 6144), (151936, 2048), (4096, 12288)]:
        cfg = gemm.config_for(rows, n, k, sms)
        tiles = -(-n // cfg.block_n) * -(-rows // gemm.block_m(rows))
        shortest = 512 if rows == 1 else 1536  # more rows: more partials for the last arriver to sum
        # each program reads at least that many columns
        assert k // cfg.split_k >= shortest or cfg.split_k == 1
        if cfg.split_k > 1:
            assert tiles * cfg.split_k // 2 < 2 * sms  # split only while the tiles alone are too few
        else:
            assert tiles >= 2 * sms or k // 2 < shortest
    assert gemm.config_for(1, 151936, 2048, sms).split_k == 1  # the lm_head has tiles enough
    assert gemm.config_for(1, 2048, 2048, sms).split_k > 1  # o_proj does not
    # the H100's tile sweep at 16 rows: qkv, o_proj and gate_up fastest unsplit, down at 4 splits
    assert [
        gemm.config_for(16, n, k, sms).split_k for n, k in [(4096, 2048), (2048, 2048), (12288, 2048)]
    ] == [1] * 3
    assert gemm.config_for(16, 2048, 6144, sms).split_k == 4


def ours(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The kernel at config_for's tile shape for any row count (`linear` sends it MAX_ROWS rows)."""
    x2 = x.reshape(-1, x.shape[-1])
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    return gemm.launch(x2, w, gemm.config_for(x2.shape[0], w.shape[0], w.shape[1], sms)).view(
        *x.shape[:-1], -1
    )


def test_the_rows_linear_sends_the_kernel_come_from_sdar_skinny_rows():
    read = "from sdar_core import gemm; print(gemm.MAX_ROWS)"
    env = {k: v for k, v in os.environ.items() if k != gemm.ENV_ROWS}
    run = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "16"  # the default
    for value, expected in (("64", "64"), ("0", "1-64"), ("sixteen", "1-64"), ("65", "1-64")):
        env[gemm.ENV_ROWS] = value
        run = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True)
        assert expected in (run.stdout if expected == "64" else run.stderr), (value, run.stdout, run.stderr)


def test_the_splits_of_an_adding_gemm_are_capped_by_sdar_add_splits(monkeypatch):
    """SDAR_ADD_SPLITS caps the splits of K of the GEMM that adds into the residual stream (o_proj, down under
    norm_fold), and of no other; unset, config_for's count; a value that is not 0 or a power of 2 is refused."""
    o_proj = torch.empty(2048, 2048)
    free = gemm.config_for(1, 2048, 2048, 132)
    assert free.split_k == 4 and gemm._config(1, o_proj, None, torch.device("cpu"), add=True) == free
    for cap in (1, 2, 8):
        monkeypatch.setattr(gemm, "ADD_MAX_SPLIT", cap)
        capped = gemm._config(1, o_proj, None, torch.device("cpu"), add=True)
        assert (capped.split_k, capped.block_n, capped.block_k) == (min(cap, 4), free.block_n, free.block_k)
        assert gemm._config(1, o_proj, None, torch.device("cpu")) == free  # a GEMM that does not add
    read = "from sdar_core import gemm; print(gemm.ADD_MAX_SPLIT)"
    env = {k: v for k, v in os.environ.items() if k != gemm.ENV_ADD_SPLITS}
    assert (
        subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True).stdout.strip()
        == "0"
    )
    for value, expected in (("2", "2"), ("3", "1, 2, 4"), ("two", "1, 2, 4")):
        env[gemm.ENV_ADD_SPLITS] = value
        run = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True)
        assert expected in (run.stdout if expected == "2" else run.stderr), (value, run.stdout, run.stderr)


def test_the_k_steps_in_flight_fit_the_shared_memory():
    """The case that overflowed an H100 (float8 weights, the SwiGLU fold, 64 rows: 272 KB asked of 227 KB at 4
    stages) is cut to what fits; the tile shapes config_for gives elsewhere keep their 4 stages."""
    cpu = torch.device("cpu")
    fp8_64 = gemm.config_for(64, 2048, 6144, 132, fp8=True)
    stages = gemm.stages_that_fit(fp8_64, 64, 1, 2, True, cpu)
    assert 1 <= stages < 4 and stages * fp8_64.block_k * (64 + 64 * 2 * 2) <= 227 << 10
    for rows, fp8, swiglu in [
        (1, False, False),
        (1, True, True),
        (16, True, True),
        (64, False, True),
        (64, True, False),
    ]:
        cfg = gemm.config_for(rows, 2048, 6144, 132, fp8=fp8)
        assert (
            gemm.stages_that_fit(cfg, gemm.block_m(rows), 1 if fp8 else 2, 2, swiglu, cpu) == cfg.stages == 4
        )


def test_the_kernel_is_only_taken_where_it_can_run():
    x, w = torch.randn(2, 16), torch.randn(8, 16)
    assert not gemm.skinny_runs(x, w, None)  # the CPU
    assert gemm.block_m(1) == 1 and gemm.block_m(2) == 16 and gemm.block_m(33) == 64


def hopper_ptx(kernel, signature: dict, constexprs: dict) -> str:
    """`kernel` built for sm_90 (Triton's own ptxas assembles it: no GPU needed): its PTX."""
    triton = pytest.importorskip("triton")
    from pathlib import Path

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton has no bundled ptxas")
    signature = {name: signature.get(name, "constexpr") for name in kernel.arg_names}
    # every pointer and integer 16-divisible, as Triton marks them at a launch on the real shapes
    aligned = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(kernel.arg_names)
        if signature[name][0] in "*i"
    }
    built = triton.compile(
        ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": 4, "num_stages": 4},
    )
    return built.asm["ptx"]


SKINNY_SIGNATURE = {
    **{name: "*bf16" for name in ("X", "W", "Y", "R", "NW")},
    **{name: "*fp32" for name in ("S", "WS", "SQ")},
    "COUNT": "*i32",
    "eps": "fp32",
    **{name: "i32" for name in ("T", "M", "N", "K", "sxm", "per_split")},
}


def pdl_order(ptx: str) -> list[str]:
    """The PTX's PDL instructions and global loads in program order: 'release', 'wait', 'load'."""
    order = []
    for line in ptx.splitlines():
        line = line.strip()
        if line.startswith("griddepcontrol.launch_dependents"):
            order.append("release")
        elif line.startswith("griddepcontrol.wait"):
            order.append("wait")
        elif line.startswith(("ld.global", "@%p")) and "ld.global" in line:
            order.append("load")
    return order


@pytest.mark.parametrize("fold", [False, True])
def test_built_for_hopper_our_kernels_read_nothing_before_their_pdl_wait_but_the_gemms_weight(fold):
    """pdl.py's contract, in the code the GPU runs (built for sm_90 by Triton's own ptxas, no GPU needed): the fused
    residual add + norm waits before its first load, then releases the next kernel; the GEMM releases first and
    reads its first weight tile (the only load there: x comes after the wait) before it waits, also where it adds
    the residual and normalises x (`fold`: the squares, the norm's weight and the residual are read after the wait).
    Without PDL neither has the instructions."""
    constexprs = dict(BLOCK_M=1, BLOCK_N=16, BLOCK_K=256, SPLIT_K=2, EVEN_K=True, IEEE=False, SCALED=False)
    constexprs |= dict(ADD=fold, NORM=fold, BLOCK_T=128 if fold else 1)
    order = pdl_order(
        hopper_ptx(gemm._skinny_kernel, SKINNY_SIGNATURE, constexprs | dict(SWIGLU=False, PDL=True))
    )
    assert order[0] == "release" and order.count("wait") == 1 and order.count("release") == 1
    before = order[1 : order.index("wait")]
    weight_tile_loads = 16 * 256 * 2 // (16 * 128)  # 16-byte loads a thread of 4 warps
    assert set(before) == {"load"} and len(before) == weight_tile_loads, order[:20]
    signature = {n: "*bf16" for n in ("X", "DELTA", "W", "SUM", "OUT")} | {
        n: "i32" for n in ("sx", "sd", "n")
    }
    order = pdl_order(
        hopper_ptx(fused._add_norm_kernel, signature | {"eps": "fp32"}, dict(BLOCK=2048, PDL=True))
    )
    assert order[:2] == ["wait", "release"] and "load" in order[2:]
    order = pdl_order(
        hopper_ptx(fused._add_norm_kernel, signature | {"eps": "fp32"}, dict(BLOCK=2048, PDL=False))
    )
    assert "wait" not in order and "release" not in order


# Every tile form on CPU tensors under the interpreter: rows 1 (CUDA-core form), 5, 16, 17 and 33 (tensor-core tiles
# with padding rows, 16-128 weight rows a tile, N no tile divides), 64; K that no step divides; split-K 1-4 with
# uneven last splits; a row stride wider than K; each shape twice, which must give the same bits, and the counters
# must be back to zero.
INTERPRETED = """
import json, torch
from sdar_core import gemm, pdl
from test_fused import silu_mul_by_hand
from test_gemm import rounding_excess
g = torch.Generator().manual_seed(0)
errors, same, cases = {}, True, [
    (1, 40, 300, (16, 128, 1)), (1, 40, 512, (16, 128, 2)), (5, 33, 700, (16, 128, 3)),
    (17, 70, 256, (32, 128, 2)), (40, 50, 384, (32, 64, 1)), (3, 64, 1024, (16, 256, 4)), (64, 24, 200, (16, 64, 2)),
    (16, 150, 640, (64, 128, 2)), (33, 130, 384, (128, 128, 3)),  # config_for's tensor-core tiles: W's 64+ rows
]
for rows, n, k, (bn, bk, split) in cases:
    x = torch.randn(rows, k + 8, generator=g)[:, :k]  # rows k + 8 apart
    w = torch.randn(n, k, generator=g)
    ref = x.double() @ w.double().T
    y = gemm.launch(x, w, gemm.GemmConfig(bn, bk, split))
    same &= torch.equal(y, gemm.launch(x, w, gemm.GemmConfig(bn, bk, split)))
    errors[f"{rows}x{n}x{k}/{split}"] = float((y.double() - ref).norm() / ref.norm())
# SiLU(gate) * up formed as down loads [gate; up]: one row with split-K, tensor-core rows, K no step divides, float8
for rows, n, k, (bn, bk, split), fp8 in [
    (1, 40, 512, (16, 128, 2), False), (5, 70, 700, (64, 128, 3), False), (17, 33, 256, (64, 128, 1), True),
]:
    gu = torch.randn(rows, 2 * k, generator=g)
    w = torch.randn(n, k, generator=g)
    act = silu_mul_by_hand(gu)
    if fp8:
        packed = gemm.quantize_fp8(w)
        y = gemm.launch(gu, packed.data, gemm.GemmConfig(bn, bk, split), packed.scale, swiglu=True)
        ref = act @ packed.dequantize(torch.float64).T
    else:
        y = gemm.launch(gu, w, gemm.GemmConfig(bn, bk, split), swiglu=True)
        ref = act @ w.double().T
    errors[f"swiglu {rows}x{n}x{k}/{split}{' fp8' if fp8 else ''}"] = float((y.double() - ref).norm() / ref.norm())
# The residual add and the norm folded in (norm_fold): a sublayer's last GEMM adds its product to the residual and
# writes each row's sums of squares per output tile (N no tile divides: the padding columns count nothing); the next
# GEMM normalises its x from them as it loads it. One row with split-K, tensor-core rows, SwiGLU, float8.
for rows, n, k, n2, (bn, bk, split), swiglu, fp8 in [
    (1, 40, 512, 24, (16, 128, 2), False, False), (5, 70, 300, 33, (64, 128, 3), False, False),
    (17, 33, 256, 50, (64, 128, 1), True, False), (3, 50, 384, 20, (16, 128, 2), False, True),
]:
    inp = torch.randn(rows, 2 * k if swiglu else k, generator=g)
    w, w2 = torch.randn(n, k, generator=g), torch.randn(n2, n, generator=g)
    residual, nw = torch.randn(rows, n, generator=g), torch.rand(n, generator=g) + 0.5
    act = silu_mul_by_hand(inp) if swiglu else inp.double()
    packed = gemm.quantize_fp8(w) if fp8 else None
    weight, scale = (packed.data, packed.scale) if fp8 else (w, None)
    total, squares = gemm.launch(inp, weight, gemm.GemmConfig(bn, bk, split), scale, swiglu, residual=residual)
    ref = residual.double() + act @ (packed.dequantize(torch.float64) if fp8 else w.double()).T
    name = f"fold {rows}x{n}x{k}/{split}{' swiglu' if swiglu else ''}{' fp8' if fp8 else ''}"
    errors[name + " sum"] = float((total.double() - ref).norm() / ref.norm())
    tiles = torch.nn.functional.pad(total.double(), (0, -n % bn)).view(rows, -1, bn)
    by_hand = (tiles * tiles).sum(-1)
    errors[name + " squares"] = float((squares.double() - by_hand).norm() / by_hand.norm())
    norm = gemm.Norm(squares, nw, 1e-6)
    y2 = gemm.launch(total, w2, gemm.GemmConfig(bn, bk, split), norm=norm)
    t = total.double()
    normed = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * nw.double()
    ref2 = normed @ w2.double().T
    errors[name + " normed"] = float((y2.double() - ref2).norm() / ref2.norm())
# bf16: one row (the interpreter's tl.dot misreads bf16 operands; the tensor-core form's bf16 runs on the GPU)
xb, wb = torch.randn(1, 512, generator=g).bfloat16(), torch.randn(96, 512, generator=g).bfloat16()
yb = gemm.launch(xb, wb, gemm.GemmConfig(16, 128, 2))
errors["bf16_excess"] = rounding_excess(yb, xb, wb)
# Two weight tiles in flight (gemm.AHEAD): the same bits as one, for every tile form above (one and several steps a
# split, uneven last splits) and the SwiGLU, add and norm folds
outs = {}
for ahead in (False, True):
    gemm.AHEAD = ahead
    g2, got = torch.Generator().manual_seed(1), []
    for rows, n, k, (bn, bk, split) in cases:
        x, w = torch.randn(rows, k, generator=g2), torch.randn(n, k, generator=g2)
        got.append(gemm.launch(x, w, gemm.GemmConfig(bn, bk, split)))
    inp, w, r = torch.randn(1, 1024, generator=g2), torch.randn(40, 512, generator=g2), torch.randn(1, 40, generator=g2)
    y, sq = gemm.launch(inp, w, gemm.GemmConfig(16, 128, 3), swiglu=True, residual=r)
    norm = gemm.Norm(sq, torch.rand(40, generator=g2) + 0.5, 1e-6)
    w2 = torch.randn(24, 40, generator=g2)
    outs[ahead] = got + [y, sq, gemm.launch(y, w2, gemm.GemmConfig(16, 16, 2), norm=norm)]
gemm.AHEAD = False
ahead_same = all(torch.equal(a, b) for a, b in zip(outs[False], outs[True]))
counters = gemm._counters.get(torch.device("cpu"))
print(json.dumps({"errors": errors, "same": bool(same), "ahead": ahead_same, "counters": int(counters.abs().sum())}))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_kernel_under_the_interpreter_equals_the_math():
    out = json.loads(run_interpreted(INTERPRETED))
    errors = out["errors"]
    assert errors.pop("bf16_excess") <= 0, out  # a float32 sum rounded once, as cuBLAS rounds
    assert max(errors.values()) < 1e-6, errors
    assert out["same"] and out["ahead"] and out["counters"] == 0


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("rows", [1, 4, 16, 33, 64])
@pytest.mark.parametrize("n,k", [(4096, 2048), (2048, 2048), (12288, 2048), (2048, 6144), (2560, 9728)])
def test_cuda_bf16_result_is_within_bf16_rounding_of_f_linear(rows, n, k):
    torch.manual_seed(rows)
    x = torch.randn(1, rows, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    with torch.no_grad():
        y, cublas = ours(x, w), F.linear(x, w)
        if rows <= gemm.MAX_ROWS:
            assert torch.equal(gemm.linear(x, w), y)  # linear takes the kernel
    assert y.shape == cublas.shape == (1, rows, n)
    assert rounding_excess(y, x, w) <= 0  # one rounding of a float32 sum
    assert rounding_excess(cublas, x, w) <= 0  # the same bound holds for cuBLAS: ours is within its rounding


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("fp8", [False, True])
def test_cuda_two_weight_tiles_in_flight_give_the_bits_of_one(rows, fp8, monkeypatch):
    """gemm.AHEAD (SDAR_GEMM_AHEAD=1) on the 1.7B's projections as the forward launches them, bf16 and float8: qkv
    and the lm_head's shape plain, o_proj adding into the residual stream, gate_up normalising from its squares, down
    forming SwiGLU and adding: each result (and each squares) the one-tile form's exactly."""
    torch.manual_seed(rows)
    dev, bf = "cuda", torch.bfloat16

    def weight(n, k):
        w = torch.randn(n, k, device=dev, dtype=bf) / k**0.5
        return gemm.quantize_fp8(w) if fp8 else w

    w_qkv, w_o, w_gu, w_down = weight(4096, 2048), weight(2048, 2048), weight(12288, 2048), weight(2048, 6144)
    x, residual = torch.randn(rows, 2048, device=dev, dtype=bf), torch.randn(rows, 2048, device=dev, dtype=bf)
    nw = torch.rand(2048, device=dev, dtype=bf) + 0.5
    results = {}
    for ahead in (False, True):
        monkeypatch.setattr(gemm, "AHEAD", ahead)
        with torch.no_grad():
            data, scale = gemm.parts(w_o)
            total, squares = gemm._rows_product(x, data, scale, residual=residual)
            gu = gemm._rows_product(total, *gemm.parts(w_gu), norm=(squares, nw, 1e-6))
            down, down_sq = gemm._rows_product(gu, *gemm.parts(w_down), swiglu=True, residual=total)
            results[ahead] = [gemm._rows_product(x, *gemm.parts(w_qkv)), total, squares, gu, down, down_sq]
    for a, b in zip(results[False], results[True]):
        assert torch.equal(a, b)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("rows", [1, 16, 64])
@pytest.mark.parametrize("fp8", [False, True])
def test_cuda_down_forming_swiglu_as_it_loads_equals_silu_mul_then_down(rows, fp8):
    """The 1.7B's down (2048 x 6144): the fold gives the bits of the unfused pair (fused.silu_mul, then the same
    kernel at the same tiles), and the pair is within one rounding of the float64 product."""
    torch.manual_seed(rows)
    gate_up = torch.randn(1, rows, 2 * 6144, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2048, 6144, device="cuda", dtype=torch.bfloat16) * 0.02
    weight = gemm.quantize_fp8(w) if fp8 else w
    with torch.no_grad():
        act = silu_mul(gate_up)
        pair = (
            torch.ops.sdar.fp8_linear(act, weight.data, weight.scale)
            if fp8
            else torch.ops.sdar.skinny_linear(act, w)
        )
        folded = gemm.swiglu_linear(gate_up, weight)
    assert torch.equal(folded, pair)
    assert rounding_excess(pair, act, weight.dequantize(torch.float64) if fp8 else w) <= 0
    assert gemm.swiglu_runs(gate_up, weight) == (fp8 or rows <= gemm.MAX_ROWS)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("fp8", [False, True])
def test_cuda_a_one_token_forward_with_the_fold_has_the_unfolded_logits(fp8):
    model = random_model(tiny_config("sdar", block_size=4)).cuda().to(torch.bfloat16).fuse_projections()
    if fp8:
        model.quantize_fp8()
    ids = torch.tensor([[7]], device="cuda")
    with torch.no_grad():
        folded = model(ids, kernels=Kernels(silu_down=True))
        unfolded = model(ids, kernels=Kernels(silu_down=False))
    assert torch.equal(folded, unfolded)


def test_on_the_cpu_a_normed_input_is_normalised_before_the_product():
    """Where the fold's kernel cannot run (here: the CPU) a Normed reaches linear / project as its norm, formed
    first: the same product as normalising, then projecting."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 40), torch.randn(24, 40)
    norm = norm_module(40)
    normed = gemm.Normed(x, torch.zeros(2, 3, 5), norm)
    assert torch.equal(gemm.linear(normed, w), F.linear(norm(x), w))
    layer = torch.nn.Linear(40, 24, bias=False)
    assert torch.equal(gemm.project(layer, normed), layer(norm(x)))
    assert not gemm.add_runs(x, w.T.contiguous(), torch.zeros(2, 3, 40))


@pytest.mark.parametrize("kind", ["sdar", "sdar_moe"])
def test_with_the_folds_kernels_stood_in_by_their_math_a_forward_has_the_unfolded_logits(kind, monkeypatch):
    """The model's dataflow under norm_fold, on the CPU: gemm.add_linear and gemm.normed_linear replaced by their
    float64 math (the sums of squares per 16-wide tile; the mean square from them alone) give the unfolded forward's
    logits for 1 and 3 rows and a logits slice. A dense model folds every add after layer 0's norm (two a layer, the
    lm_head normalising the last); in an MoE layer without expert_fold (tests/test_moe.py has it on) o_proj adds, but
    the router reads the normalised sum as a tensor and the experts' output waits for the next norm, so no GEMM
    normalises."""
    from sdar_core import model as model_module

    math = FoldMath()
    model = random_model(tiny_config(kind, block_size=4)).fuse_projections()
    layers = model.config.num_hidden_layers
    for rows, logits_from in ((1, 0), (3, 0), (3, 2)):
        ids = torch.arange(3, 3 + rows)[None]
        with torch.no_grad():
            unfolded = model(ids, logits_from=logits_from, kernels=Kernels(norm_fold=False))
            with monkeypatch.context() as m:
                m.setattr(model_module, "add_runs", lambda *a, **k: True)
                m.setattr(model_module, "add_linear", math.add_linear)
                m.setattr(gemm, "normed_runs", lambda *a: True)
                m.setattr(gemm, "normed_linear", math.normed_linear)
                math.calls.update(add=0, normed=0, experts=0, route=0)
                folded = model(ids, logits_from=logits_from, kernels=Kernels(norm_fold=True))
        assert folded.shape == unfolded.shape == (1, rows - logits_from, model.config.vocab_size)
        assert rel_err(folded, unfolded) < 1e-5
        if kind == "sdar":
            assert math.calls == {"add": 2 * layers, "normed": 2 * layers, "experts": 0, "route": 0}
        else:  # o_proj adds; the router reads norm(x) as a tensor
            assert math.calls == {"add": layers, "normed": 0, "experts": 0, "route": 0}


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("rows", [1, 16])
@pytest.mark.parametrize("fp8", [False, True])
def test_cuda_the_residual_add_and_the_norm_folded_into_the_gemms_match_the_unfolded_kernels(rows, fp8):
    """The 1.7B's o_proj (2048 x 2048) adding into the residual stream, then gate_up (12288 x 2048) reading the sum
    normalised: the sum has the bits of the product then fused.add_rms_norm's add; the squares are the sum's, tile by
    tile; and the normalised product is as close to the float64 math as the unfolded pair (add_rms_norm's rounded
    output, then the same GEMM): the two normalise alike, up to the order of the mean square's float32 sum."""
    torch.manual_seed(rows)
    dev, bf = "cuda", torch.bfloat16
    inp, residual = (
        torch.randn(1, rows, 2048, device=dev, dtype=bf),
        torch.randn(1, rows, 2048, device=dev, dtype=bf),
    )
    w_o = torch.randn(2048, 2048, device=dev, dtype=bf) * 0.02
    w_gu = torch.randn(12288, 2048, device=dev, dtype=bf) * 0.02
    norm = norm_module(2048).to(dev, bf)
    if fp8:
        w_o, w_gu = gemm.quantize_fp8(w_o), gemm.quantize_fp8(w_gu)
    with torch.no_grad():
        assert gemm.add_runs(inp, w_o, residual) == (rows <= gemm.FOLD_MAX_ROWS)  # the kernel serves any rows
        total, squares = gemm.add_linear(inp, w_o, residual)
        s, h = add_rms_norm(residual, gemm.linear(inp, w_o), norm)
        assert torch.equal(total, s)
        block_n = gemm.config_for(
            rows, 2048, 2048, torch.cuda.get_device_properties(0).multi_processor_count
        ).block_n
        by_hand = s.double().view(1, rows, -1, block_n).pow(2).sum(-1)
        assert rel_err(squares.double(), by_hand) < 1e-6
        normed = gemm.Normed(total, squares, norm)
        assert gemm.normed_runs(normed, w_gu)
        folded, unfolded = gemm.linear(normed, w_gu), gemm.linear(h, w_gu)
    t = s.double()
    x64 = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()
    w64 = w_gu.dequantize(torch.float64) if fp8 else w_gu.double()
    exact = x64 @ w64.T
    assert rel_err(folded.double(), exact) <= 1.2 * rel_err(unfolded.double(), exact)
    assert rel_err(folded.double(), unfolded.double()) < 1e-2


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("fp8", [False, True])
def test_cuda_with_the_norm_fold_no_add_norm_kernel_runs_and_the_logits_stay_within_rounding(
    fp8, monkeypatch
):
    """A bf16 forward of 1 and 4 rows: with norm_fold, fused.add_rms_norm's kernel never runs for one row (every add
    and norm is in a GEMM: 2 per layer without it; more rows than FOLD_MAX_ROWS keep it), and the logits are as close
    to the float32 model's as the unfolded ones."""
    model = random_model(tiny_config("sdar", block_size=4)).cuda()
    reference = random_model(tiny_config("sdar", block_size=4)).cuda()
    reference.load_state_dict(model.state_dict())
    model = model.to(torch.bfloat16).fuse_projections()
    if fp8:
        model.quantize_fp8()
    calls = []
    kernel = fused._add_rms_norm
    monkeypatch.setattr(fused, "_add_rms_norm", lambda *a: calls.append(1) or kernel(*a))
    layers = model.config.num_hidden_layers
    for rows in (1, 4):
        ids = torch.arange(3, 3 + rows, device="cuda")[None]
        with torch.no_grad():
            calls.clear()
            folded = model(ids, kernels=Kernels(norm_fold=True))
            assert len(calls) == (0 if rows <= gemm.FOLD_MAX_ROWS else 2 * layers)
            calls.clear()
            unfolded = model(ids, kernels=Kernels(norm_fold=False))
            assert len(calls) == 2 * layers
            exact = reference(ids).double()
        assert rel_err(folded.double(), exact) <= 1.5 * rel_err(unfolded.double(), exact) + 1e-3


@pytest.mark.cuda
@cuda
def test_cuda_float32_and_a_graph_replay_with_split_k():
    torch.manual_seed(0)
    x = torch.randn(3, 6144, device="cuda")  # down's K: more than one row splits K only this long
    w = torch.randn(2048, 6144, device="cuda")
    cfg = gemm.config_for(3, 2048, 6144, torch.cuda.get_device_properties(0).multi_processor_count)
    assert cfg.split_k > 1
    with torch.no_grad():
        eager = ours(x, w)
        assert rel_err(eager.cpu(), x.double().cpu() @ w.double().cpu().T) < 1e-6  # no TF32
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = ours(x, w)
        for _ in range(3):
            x.copy_(torch.randn_like(x))
            graph.replay()
            assert torch.equal(out, ours(x, w))
    assert int(gemm._counters[x.device].abs().sum()) == 0


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("strategy", ["static", "dynamic", "ar"])
@pytest.mark.parametrize("mode", ["graph", "static", "plain"])
@pytest.mark.parametrize("batch", [1, 2])
def test_cuda_decoding_with_the_skinny_gemm_gives_the_cublas_tokens(strategy, mode, batch):
    """float32 weights (products in full precision both ways), so a near-tie cannot flip: the same tokens. (Batch-1
    AR steps are the forwards with one row, which the kernel serves.)"""
    model = random_model(tiny_config("sdar", block_size=4)).cuda().fuse_projections()
    prompts = [[4, 5, 6, 7, 8, 9, 10], [1, 2, 3]][:batch]
    kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy=strategy, threshold=0.5)
    # every fusion on, whatever the defaults say (the SwiGLU fold into down, q and k in one launch among them)
    ours = generate(
        model, prompts, runner_mode=mode, kernels=Kernels(skinny_gemm=True).with_fusions("all"), **kw
    )
    cublas = generate(model, prompts, runner_mode="plain", kernels=Kernels(skinny_gemm=False), **kw)
    assert ours.tokens.tolist() == cublas.tokens.tolist()


@pytest.mark.cuda
@cuda
def test_cuda_a_chain_of_pdl_launches_in_a_graph_reads_each_result_after_it_is_written(monkeypatch):
    """Each GEMM reads what the norm before it wrote, each norm what the GEMM before it wrote, in fresh buffers
    the allocator recycles: a kernel that started reading (or writing) before its predecessor finished would
    change the bits. The chain launched with PDL inside a CUDA graph equals the chain launched without."""
    if not pdl.SUPPORTED or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs a Triton with launch_pdl and a Hopper or newer GPU")
    torch.manual_seed(0)
    ws = [torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16) * 0.03 for _ in range(12)]
    norm = norm_module(2048).cuda().to(torch.bfloat16)
    x = torch.randn(1, 1, 2048, device="cuda", dtype=torch.bfloat16)  # one row: linear takes the kernel

    def chain():
        h, out = x, []
        for w in ws:
            h, n = add_rms_norm(h, gemm.linear(h, w), norm)
            out.append(n)
        return torch.stack(out)

    with torch.no_grad():
        monkeypatch.setattr(pdl, "REQUESTED", False)
        plain = chain()
        monkeypatch.setattr(pdl, "REQUESTED", True)
        chain()  # compiles the PDL variants outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            chained = chain()
        for _ in range(5):
            graph.replay()
            assert torch.equal(chained, plain)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("strategy", ["static", "dynamic", "ar"])
def test_cuda_decoding_with_pdl_gives_the_same_tokens(strategy, monkeypatch):
    if not pdl.SUPPORTED or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs a Triton with launch_pdl and a Hopper or newer GPU")
    model = random_model(tiny_config("sdar", block_size=4)).cuda().fuse_projections()
    prompts = [[4, 5, 6, 7, 8, 9, 10]]  # batch 1: the AR steps take the skinny GEMM
    kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy=strategy, threshold=0.5)
    kw |= dict(runner_mode="graph", kernels=Kernels(skinny_gemm=True))
    monkeypatch.setattr(pdl, "REQUESTED", True)
    chained = generate(model, prompts, **kw)
    monkeypatch.setattr(pdl, "REQUESTED", False)
    assert chained.tokens.tolist() == generate(model, prompts, **kw).tokens.tolist()


def test_pdl_is_on_by_default_off_with_sdar_pdl_0_and_never_on_the_cpu():
    def requested(env: dict) -> str:
        code = "from sdar_core import pdl; print(pdl.REQUESTED)"
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
        )
        return done.stdout.strip()

    base = {k: v for k, v in os.environ.items() if k != pdl.ENV}
    assert requested(base) == "True"
    assert requested({**base, pdl.ENV: "0"}) == "False"
    assert not pdl.on(torch.zeros(2))  # a CPU tensor: no PDL whatever was asked
    assert pdl.options(True) == {"launch_pdl": True} and pdl.options(False) == {}
