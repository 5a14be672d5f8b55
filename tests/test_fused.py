"""The fused decode kernels (sdar_core/fused.py, norm_rope.py's cache writer) against the math written out in
float64: on the CPU through Triton's interpreter where it runs, on the GPU under the `cuda` marker; and decoding with
every fusion on against every fusion off."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from sdar_core.decoding import generate
from sdar_core.fused import add_rms_norm, silu_mul
from sdar_core.kernels import Kernels
from sdar_core.model import RMSNorm, rope_cos_sin

from helpers import interpreter_reason, random_model, rel_err, run_interpreted, tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def norm_by_hand(s, weight, eps):
    s = s.double()
    return s / torch.sqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def silu_mul_by_hand(gate_up):
    g, u = gate_up.double().chunk(2, -1)
    return g / (1 + torch.exp(-g)) * u


def rope_by_hand(x, weight, eps, cos, sin):
    """x [B, Q, H, D] -> [B, H, Q, D]: per-head RMSNorm, then rotate-half RoPE with cos/sin [B, 1, Q, D]."""
    n = norm_by_hand(x, weight, eps)
    D = x.shape[-1]
    c, s = cos.double().transpose(1, 2)[..., : D // 2], sin.double().transpose(1, 2)[..., : D // 2]
    a, b = n[..., : D // 2], n[..., D // 2 :]
    return torch.cat([a * c - b * s, b * c + a * s], -1).transpose(1, 2)


def norm_module(h: int, seed: int = 0) -> RMSNorm:
    norm = RMSNorm(h, 1e-6)
    norm.weight.data = torch.rand(h, generator=torch.Generator().manual_seed(seed)) + 0.5
    return norm


def test_the_eager_ops_are_the_math():
    torch.manual_seed(0)
    x, delta, norm = torch.randn(2, 3, 48), torch.randn(2, 3, 48), norm_module(48)
    s, n = add_rms_norm(x, delta, norm)
    assert torch.equal(s, x + delta)
    assert rel_err(n, norm_by_hand(x + delta, norm.weight, 1e-6)) < 1e-6
    same, n0 = add_rms_norm(x, None, norm)
    assert same is x and rel_err(n0, norm_by_hand(x, norm.weight, 1e-6)) < 1e-6
    gate_up = torch.randn(2, 3, 2 * 40)
    assert rel_err(silu_mul(gate_up), silu_mul_by_hand(gate_up)) < 1e-6


def test_fusions_are_switched_by_name():
    assert Kernels().with_fusions("none").fusions() == []
    assert Kernels().with_fusions({"add_norm", "silu_mul"}).fusions() == ["add_norm", "silu_mul"]
    assert Kernels().with_fusions("all").fusions() == [
        "norm_rope",
        "cache_write",
        "qk_rope",
        "add_norm",
        "silu_mul",
        "silu_down",
        "norm_fold",
        "routing",
    ]
    assert (
        Kernels().with_fusions("none").split_k_attention is None
    )  # the other switches are left as they were
    with pytest.raises(ValueError, match="unknown fusions \\['add_rms'\\]; choose from"):
        Kernels().with_fusions({"add_rms"})


# Each kernel launched on CPU tensors under the interpreter, against the float64 math: odd sizes that no tile
# divides (hidden 200; 2 x 1100 SiLU columns, two tiles), the cache writer at scattered cache indices of a buffer
# whose other slots must stay untouched.
INTERPRETED = """
import json, torch
from sdar_core import fused, norm_rope
from test_fused import norm_by_hand, norm_module, rope_by_hand, silu_mul_by_hand
from sdar_core.model import rope_cos_sin
g = torch.Generator().manual_seed(0)
errors = {}
x, delta, norm = torch.randn(5, 200, generator=g), torch.randn(5, 200, generator=g), norm_module(200)
s, n = torch.ops.sdar.add_rms_norm(x, delta, norm.weight, norm.eps)
errors["add_sum"] = float((s.double() - (x + delta).double()).abs().max())
errors["add_norm"] = float((n.double() - norm_by_hand(x + delta, norm.weight, 1e-6)).norm() / n.norm())
gu = torch.randn(3, 2 * 1100, generator=g)
ref = silu_mul_by_hand(gu)
errors["silu_mul"] = float((torch.ops.sdar.silu_mul(gu).double() - ref).norm() / ref.norm())
B, Q, H, D, T = 2, 3, 2, 16, 12
qkv = torch.randn(B, Q, 3 * H * D, generator=g)  # k and v sliced out of one projection: strided views
k, v = qkv[..., H * D: 2 * H * D].view(B, Q, H, D), qkv[..., 2 * H * D:].view(B, Q, H, D)
positions = torch.tensor([[4, 5, 6], [9, 10, 11]])
cos, sin = rope_cos_sin(positions, 1.0 / 10000 ** (torch.arange(0, D, 2).float() / D), torch.float32)
knorm = norm_module(D, seed=1)
out = norm_rope.norm_rope(k, knorm.weight, knorm.eps, cos, sin)
ref = rope_by_hand(k, knorm.weight, 1e-6, cos, sin)
errors["norm_rope"] = float((out.double() - ref).norm() / ref.norm())
k_cache, v_cache = torch.full((B, H, T, D), 7.0), torch.full((B, H, T, D), 7.0)
index = torch.tensor([2, 8, 9])
norm_rope.norm_rope_to_cache(k, v, knorm.weight, knorm.eps, cos, sin, k_cache, v_cache, index)
errors["to_cache_k"] = float((k_cache[:, :, index].double() - ref).norm() / ref.norm())
errors["to_cache_v"] = float((v_cache[:, :, index] - v.transpose(1, 2)).abs().max())
others = [i for i in range(T) if i not in index.tolist()]
errors["untouched"] = float((torch.cat([k_cache[:, :, others], v_cache[:, :, others]]) - 7.0).abs().max())
# q's heads (twice k's: grouped-query) and k's in one launch, each with its own norm weight
q = qkv[..., : H * D].view(B, Q, H, D)
qnorm = norm_module(D, seed=2)
k_cache2, v_cache2 = torch.full((B, H, T, D), 7.0), torch.full((B, H, T, D), 7.0)
q2, k2, v2 = qkv.view(B, Q, 3 * H, D)[:, :, : 2 * H], k[:, :, :1], v[:, :, :1]  # 2H query heads, 1 key head
k_cache2, v_cache2 = k_cache2[:, :1].contiguous(), v_cache2[:, :1].contiguous()
out_q = norm_rope.norm_rope_qk_to_cache(
    q2, k2, v2, qnorm.weight, knorm.weight, qnorm.eps, knorm.eps, cos, sin, k_cache2, v_cache2, index
)
ref_q, ref_k = rope_by_hand(q2, qnorm.weight, 1e-6, cos, sin), rope_by_hand(k2, knorm.weight, 1e-6, cos, sin)
errors["qk_q"] = float((out_q.double() - ref_q).norm() / ref_q.norm())
errors["qk_k"] = float((k_cache2[:, :, index].double() - ref_k).norm() / ref_k.norm())
errors["qk_v"] = float((v_cache2[:, :, index] - v2.transpose(1, 2)).abs().max())
errors["qk_untouched"] = float((torch.cat([k_cache2[:, :, others], v_cache2[:, :, others]]) - 7.0).abs().max())
print(json.dumps(errors))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_kernels_under_the_interpreter_equal_the_math():
    errors = json.loads(run_interpreted(INTERPRETED))
    assert errors.pop("add_sum") == 0 and errors.pop("to_cache_v") == 0 and errors.pop("untouched") == 0
    assert errors.pop("qk_v") == 0 and errors.pop("qk_untouched") == 0
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 16, 33])
def test_cuda_add_norm_and_silu_mul_equal_the_math(dtype, rows):
    torch.manual_seed(rows)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    x, delta = (torch.randn(1, rows, 2048, device="cuda", dtype=dtype) for _ in range(2))
    norm = norm_module(2048).cuda().to(dtype)
    with torch.no_grad():
        s, n = add_rms_norm(x, delta, norm)
        assert torch.equal(s, x + delta)  # the residual stream rounded as the eager add rounds it
        assert rel_err(n.cpu(), norm_by_hand(s.cpu(), norm.weight.cpu(), 1e-6)) < tol
        eager = norm(x + delta)
        assert (
            n.float() - eager.float()
        ).abs().max() <= eager.float().abs().max() * 2**-7  # within a bf16 ulp
        gate_up = torch.randn(1, rows, 2 * 6144, device="cuda", dtype=dtype) * 3
        act = silu_mul(gate_up)
        assert act.shape == (1, rows, 6144)
        assert rel_err(act.cpu(), silu_mul_by_hand(gate_up.cpu())) < tol


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_norm_rope_to_cache_writes_the_rotated_keys_and_the_values(dtype):
    torch.manual_seed(0)
    B, Q, H, D, T = 2, 16, 8, 128, 64
    qkv = torch.randn(B, Q, 3 * H * D, device="cuda", dtype=dtype)
    k, v = qkv[..., H * D : 2 * H * D].view(B, Q, H, D), qkv[..., 2 * H * D :].view(B, Q, H, D)
    positions = torch.arange(Q, device="cuda")[None] + torch.tensor([[20], [3000]], device="cuda")
    cos, sin = rope_cos_sin(positions, 1.0 / 1e6 ** (torch.arange(0, D, 2, device="cuda").float() / D), dtype)
    norm = norm_module(D).cuda().to(dtype)
    k_cache = torch.full((B, H, T, D), 7.0, device="cuda", dtype=dtype)
    v_cache = k_cache.clone()
    index = torch.arange(20, 20 + Q, device="cuda")
    from sdar_core.norm_rope import norm_rope, norm_rope_qk_to_cache, norm_rope_to_cache

    with torch.no_grad():
        norm_rope_to_cache(k, v, norm.weight, norm.eps, cos, sin, k_cache, v_cache, index)
        assert torch.equal(k_cache[:, :, index], norm_rope(k, norm.weight, norm.eps, cos, sin))
    assert torch.equal(v_cache[:, :, index], v.transpose(1, 2))
    rest = torch.ones(T, dtype=torch.bool)
    rest[20 : 20 + Q] = False
    assert (k_cache[:, :, rest] == 7).all() and (v_cache[:, :, rest] == 7).all()
    ref = rope_by_hand(k.cpu(), norm.weight.cpu(), 1e-6, cos.cpu(), sin.cpu())
    assert rel_err(k_cache[:, :, index].cpu(), ref) < (1e-2 if dtype == torch.bfloat16 else 1e-5)
    # q's heads and k's in one launch: the bits of the two kernels it replaces
    q = torch.randn(B, Q, 2 * H, D, device="cuda", dtype=dtype)
    qnorm = norm_module(D, seed=3).cuda().to(dtype)
    k_cache2, v_cache2 = torch.full_like(k_cache, 7.0), torch.full_like(v_cache, 7.0)
    with torch.no_grad():
        out_q = norm_rope_qk_to_cache(
            q, k, v, qnorm.weight, norm.weight, qnorm.eps, norm.eps, cos, sin, k_cache2, v_cache2, index
        )
        assert torch.equal(out_q, norm_rope(q, qnorm.weight, qnorm.eps, cos, sin))
    assert torch.equal(k_cache2, k_cache) and torch.equal(v_cache2, v_cache)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("model_type", ["sdar", "sdar_moe"])
@pytest.mark.parametrize("strategy", ["static", "dynamic", "ar"])
@pytest.mark.parametrize("mode", ["graph", "static", "plain"])
def test_cuda_decoding_with_every_fusion_gives_the_eager_tokens(model_type, strategy, mode):
    """bf16 would let a one-ulp difference flip a near-tie argmax: float32 weights, where the kernels and the eager
    ops agree to ~1e-6, so the tokens must be the same. (A float32 MoE has no static-shape expert form, so it is
    not graphed: test_moe.py replays bf16 MoE forwards in graphs.)"""
    if model_type == "sdar_moe" and mode == "graph":
        pytest.skip("a float32 MoE runs its experts in the looped form, which reads the host: no graph")
    model = random_model(tiny_config(model_type, block_size=4)).cuda().fuse_projections()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy=strategy, threshold=0.5)
    fused = generate(model, prompts, runner_mode=mode, kernels=Kernels().with_fusions("all"), **kw)
    eager = generate(model, prompts, runner_mode="plain", kernels=Kernels().with_fusions("none"), **kw)
    assert fused.tokens.tolist() == eager.tokens.tolist()


@pytest.mark.cuda
@cuda
def test_cuda_a_bfloat16_forward_with_fusions_is_as_accurate_as_the_eager_one():
    """Against the same weights in float64 on the CPU: the fused kernels round no worse than the eager ops (random
    weights amplify rounding through the layers, so the two bf16 forwards differ by ~2% from each other)."""
    import copy

    model = random_model(tiny_config("sdar", block_size=4, layers=4)).to(torch.bfloat16)
    ids = torch.randint(4, 90, (2, 12))
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(ids)
        gpu = model.cuda().fuse_projections()
        fused = gpu(ids.cuda(), kernels=Kernels().with_fusions("all")).cpu()
        eager = gpu(ids.cuda(), kernels=Kernels().with_fusions("none")).cpu()
    assert rel_err(fused, ref) < 1.5 * rel_err(eager, ref)
    assert F.cosine_similarity(fused.double().flatten(), ref.flatten(), dim=0) > 0.999
