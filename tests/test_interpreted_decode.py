"""A whole decode with every Triton kernel run under Triton's interpreter on the CPU: the model's dataflow through the
kernels, end to end, before a GPU is lent.

The dispatch of each kernel asks for CUDA; here it is told the CPU will do (the script below), so that a static-shape
decode in float16 takes every kernel a GPU decode takes: the skinny GEMM and its folds, the split-K attention, the
fused norms, the MoE's kernels. Four decodes (SDAR dense and MoE with the static schedule, Qwen3 dense and MoE with
one token a step), each three ways: eager ops only (the reference), the default kernels, and every switch this
engine has off by default (the merge in the split kernel, norm + RoPE in it, the persistent MLP) with the two it has
on turned off (the MoE layer's norm and add in its kernels, the router with its routing). All give the reference's
tokens, and the kernels each launches show that each switch took its path: no merge kernel, norm + RoPE kernels for
the prefills only, the persistent MLP for the one-token dense layers, and by default one router-with-routing kernel
and one add + norm kernel fewer for each one-token MoE layer.
"""

from __future__ import annotations

import json

import pytest

from helpers import interpreter_reason, run_interpreted

DECODE = """
import json, torch
from collections import Counter
from triton.runtime.interpreter import InterpretedFunction
from sdar_core import decode_attention, fused, gemm, in_block, moe, norm_rope, runner
from sdar_core.decoding import generate
from sdar_core.kernels import Kernels
from helpers import random_model, tiny_config

launched = Counter()
run = InterpretedFunction.run


def counted(self, *args, **kwargs):
    launched[self.fn.__name__] += 1
    return run(self, *args, **kwargs)


InterpretedFunction.run = counted
CASES = [("sdar", "static", 4), ("sdar_moe", "static", 4), ("qwen3", "ar", 1), ("qwen3_moe", "ar", 1)]


def decodes(kernels, mode):
    out = []
    for kind, strategy, block in CASES:
        model = random_model(tiny_config(kind, block_size=4)).to(torch.float16).fuse_projections()
        kw = dict(max_new_tokens=6, block_length=block, steps=2, strategy=strategy, runner_mode=mode)
        out.append(generate(model, [[5, 9, 13, 21, 30]], kernels=kernels, **kw).tokens.tolist())
    return out


reference = decodes(Kernels().with_fusions("none"), "plain")
assert not launched, launched
on_cpu = lambda x, *params: x.stride(-1) == 1 and not fused.needs_grad(x, *params)  # noqa: E731
for module in (fused, gemm, norm_rope, moe, in_block):
    module.kernels_run = on_cpu
decode_attention.split_k_available = runner.split_k_available = lambda device: True
moe.triton_available = lambda x: x.dtype in (torch.float16, torch.bfloat16)
# A short prompt's prefill padded to 256 rows (graphed_prefill, on by default) costs the interpreter 64 times the
# work of its own length; it launches the same kernels and one more, silu_mul's for its 256 rows (tokens the same;
# that kernel's interpreter test is in test_fused.py): off here.
default = decodes(Kernels(graphed_prefill=False), "static")
default_launched = dict(launched)
launched.clear()
switches = Kernels(
    graphed_prefill=False,
    merge_fold=True,
    rope_in_attention=True,
    persistent_mlp=True,
    expert_fold=False,
    gate_route=False,
)
every = decodes(switches, "static")
print(json.dumps([reference, default, every, default_launched, dict(launched)]))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_a_decode_through_every_kernel_under_the_interpreter_gives_the_eager_tokens():
    reference, default, every, by_default, with_switches = json.loads(run_interpreted(DECODE))
    assert default == reference and every == reference
    assert "_merge_kernel" in by_default and "_merge_kernel" not in with_switches
    # every split launch formed its queries and keys itself: norm + RoPE kernels for the prefills only
    assert (
        by_default["_norm_rope_kernel"] - with_switches["_norm_rope_kernel"] == with_switches["_split_kernel"]
    )
    # by default every one-token MoE layer took the router with its routing, and its add went into the down gemv;
    # with those two off, a routing kernel and an add + norm kernel came back for each
    folded = by_default["_gate_route_kernel"]
    assert folded == by_default["_expert_gemv_down"] > 0 and "_gate_route_kernel" not in with_switches
    assert with_switches["_add_norm_kernel"] - by_default["_add_norm_kernel"] == folded
    assert with_switches["_route_kernel"] - by_default["_route_kernel"] == folded
    # the one-token dense MLPs took the persistent kernel, two GEMMs fewer each
    assert "_mlp_kernel" not in by_default and with_switches["_mlp_kernel"] > 0
