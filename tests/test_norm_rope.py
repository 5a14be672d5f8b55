"""q/k RMSNorm + RoPE in one kernel (sdar_core/norm_rope.py) against the math written out in float64."""

from __future__ import annotations

import pytest
import torch

from sdar_core.decoding import generate
from sdar_core.kernels import Kernels
from sdar_core.model import Attention, RMSNorm, rope_cos_sin

from helpers import random_model, rel_err, tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def by_hand(x, weight, eps, cos, sin):
    """x [B, Q, H, D] -> [B, H, Q, D]: RMSNorm per head, then rotate-half RoPE with the given cos, sin [B, 1, Q, D]
    (the model's own, so that only the norm and the rotation are under test), in float64."""
    x = x.double()
    D = x.shape[-1]
    n = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    c, s = (
        cos.double().transpose(1, 2)[..., : D // 2],
        sin.double().transpose(1, 2)[..., : D // 2],
    )  # [B, Q, 1, D/2]
    a, b = n[..., : D // 2], n[..., D // 2 :]
    return torch.cat([a * c - b * s, b * c + a * s], -1).transpose(1, 2)


def test_rope_tables_repeat_each_frequency_over_both_halves():
    cos, sin = rope_cos_sin(
        torch.tensor([[3, 11]]), 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8), torch.float32
    )
    angles = torch.tensor([3.0, 11.0])[:, None] * (1.0 / 10000 ** (torch.arange(0, 8, 2).double() / 8))
    assert torch.allclose(cos[0, 0].double(), torch.cat([angles.cos(), angles.cos()], -1), atol=1e-6)
    assert torch.allclose(sin[0, 0].double(), torch.cat([angles.sin(), angles.sin()], -1), atol=1e-6)


def test_eager_path_matches_the_math_on_cpu():
    torch.manual_seed(0)
    x, positions = torch.randn(2, 3, 4, 16), torch.tensor([[0, 1, 2], [7, 8, 9]])
    norm = RMSNorm(16, 1e-6)
    norm.weight.data = torch.rand(16) + 0.5
    cos, sin = rope_cos_sin(positions, 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16), torch.float32)
    out = Attention.norm_rope(x, norm, cos, sin)
    assert rel_err(out, by_hand(x, norm.weight, 1e-6, cos, sin)) < 1e-6


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Q", [1, 16])
def test_kernel_matches_the_math_on_a_strided_fused_projection(dtype, Q):
    """SDAR-1.7B's heads (16 q / 8 kv of 128), q and k sliced out of one fused qkv output (not contiguous)."""
    torch.manual_seed(0)
    B, H, H_kv, D = 2, 16, 8, 128
    qkv = torch.randn(B, Q, (H + 2 * H_kv) * D, device="cuda", dtype=dtype) * 3
    q, k = qkv[..., : H * D].view(B, Q, H, D), qkv[..., H * D : (H + H_kv) * D].view(B, Q, H_kv, D)
    positions = torch.arange(Q, device="cuda")[None] + torch.tensor([[5], [3000]], device="cuda")
    cos, sin = rope_cos_sin(positions, 1.0 / 1e6 ** (torch.arange(0, D, 2, device="cuda").float() / D), dtype)
    norm = RMSNorm(D, 1e-6).cuda()
    norm.weight.data = (torch.rand(D, device="cuda") + 0.5).to(dtype)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    for x in (q, k):
        out = Attention.norm_rope(x, norm, cos, sin)
        assert out.shape == (B, x.shape[2], Q, D) and out.dtype == dtype
        ref = by_hand(x.cpu(), norm.weight.cpu(), 1e-6, cos.cpu(), sin.cpu())
        assert rel_err(out.cpu().double(), ref) < tol


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("strategy", ["static", "dynamic", "ar"])
def test_graphed_decoding_with_the_kernel_gives_the_eager_tokens(strategy):
    model = random_model(tiny_config("sdar", block_size=4)).cuda()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy=strategy, threshold=0.5)
    fused = generate(
        model, prompts, runner_mode="graph", kernels=Kernels().with_fusions("all"), **kw
    )  # qk_rope too
    eager = generate(model, prompts, runner_mode="plain", kernels=Kernels(norm_rope=False), **kw)
    assert fused.tokens.tolist() == eager.tokens.tolist()


def test_training_never_takes_the_forward_only_kernel():
    """The kernel has no backward: a tensor that autograd tracks (training) must take the eager path."""
    from sdar_core.fused import needs_grad

    w = torch.ones(4, requires_grad=True)
    x = torch.randn(1, 2, 3, 4)
    assert needs_grad(x, w)
    assert not needs_grad(x, w.detach())
    with torch.no_grad():
        assert not needs_grad(x, w)


@pytest.mark.cuda
@cuda
def test_a_training_step_on_cuda_backpropagates_like_the_eager_path():
    """Regression: a CUDA training forward once went through the forward-only kernel and failed in backward."""
    torch.manual_seed(0)
    model = random_model(tiny_config("sdar", block_size=4)).cuda().float()
    ids = torch.randint(4, 60, (2, 16), device="cuda")
    grads = []
    for fused in (True, False):
        model.zero_grad()
        model(ids, kernels=Kernels().with_fusions("all" if fused else "none")).float().pow(
            2
        ).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.equal(grads[0], grads[1])
