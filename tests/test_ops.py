"""sdar_core/ops.py: a kernel launcher is a torch.library custom op for torch.compile and a plain call elsewhere, so
that a fresh process's first decode does not import torch._dynamo (a custom op's first call does: ~1.8 s)."""

from __future__ import annotations

import pytest
import torch

from sdar_core import decode_attention, fused, gemm, norm_rope
from sdar_core.ops import kernel_op

from helpers import interpreter_reason, run_interpreted


@kernel_op("sdar_test::double", mutates_args=())
def _double(x: torch.Tensor) -> torch.Tensor:
    CALLS.append(torch.compiler.is_compiling())
    return x * 2


@_double.register_fake
def _(x):
    return torch.empty_like(x)


CALLS: list[bool] = []


def test_outside_a_compilation_the_launcher_is_called_itself_and_under_torch_compile_the_op_is_traced():
    CALLS.clear()
    x = torch.arange(4.0)
    assert torch.equal(_double(x), 2 * x) and CALLS == [
        False
    ]  # the function itself, not through the dispatcher
    assert torch.equal(torch.ops.sdar_test.double(x), 2 * x)  # registered all the same
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    CALLS.clear()
    compiled = torch.compile(lambda t: _double(t) + 1, backend=backend, fullgraph=True)
    assert torch.equal(compiled(x), 2 * x + 1)
    (gm,) = graphs
    assert torch.ops.sdar_test.double.default in {node.target for node in gm.graph.nodes}
    assert CALLS == [False]  # the op's own kernel ran, once, when the graph ran: dynamo did not trace into it


def test_every_launcher_of_ours_is_wrapped():
    for launcher in (
        fused._add_rms_norm,
        fused._silu_mul,
        gemm._skinny_linear,
        gemm._fp8_linear,
        gemm._swiglu_linear,
        norm_rope.norm_rope,
        norm_rope.norm_rope_to_cache,
        norm_rope.norm_rope_qk_to_cache,
        decode_attention._split_k_op,
    ):
        assert callable(launcher.op) and not isinstance(launcher, torch._library.custom_ops.CustomOpDef)


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_a_direct_call_imports_no_dynamo_where_the_custom_op_does():
    """A launcher run by Triton's interpreter in a fresh process: called directly it leaves torch._dynamo unimported
    and equals the math; through the custom op it imports it (what a GPU's first decode paid before)."""
    script = """
import sys, torch
from sdar_core import fused
gu = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
ref = torch.nn.functional.silu(gu[:, :32]) * gu[:, 32:]
direct = torch.allclose(fused._silu_mul(gu), ref, atol=1e-6), "torch._dynamo" in sys.modules
torch.ops.sdar.silu_mul(gu)
print(*direct, "torch._dynamo" in sys.modules)
"""
    assert run_interpreted(script).split() == ["True", "False", "True"]
