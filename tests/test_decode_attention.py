"""Decode attention (sdar_core/decode_attention.py) against a loop-built reference.

The reference gathers, for every (row, head, query), the keys the block-causal rule with left padding allows
(written out with loops, independent of sdar_core's masks) and takes their softmax in float64. Slots past the
end of the last query's block hold NaN, so a kernel that reads them fails.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sdar_core.attention import decode_attention, reference_decode_attention
from sdar_core.decode_attention import CacheQueries
from sdar_core.decoding import generate
from sdar_core.kernels import Kernels
from sdar_core.runner import ChunkRunner

from helpers import interpreter_reason, random_model, rel_err, run_interpreted, tiny_config


def loop_reference(q, k, v, q_index: list[int], L: int, pad: list[int]) -> torch.Tensor:
    B, H, Q, D = q.shape
    G = H // k.shape[1]
    out = torch.zeros(B, H, Q, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for r, i in enumerate(q_index):
                keys = [j for j in range(k.shape[2]) if (j // L <= i // L and j >= pad[b]) or j == i]
                kk, vv = k[b, h // G, keys].double(), v[b, h // G, keys].double()
                w = (kk @ q[b, h, r].double() / math.sqrt(D)).softmax(0)
                out[b, h, r] = w @ vv
    return out


def make_case(B, H, H_kv, D, T, q_index, L, pad, dtype=torch.float32, device="cpu", seed=0):
    """Random q and a cache whose slots past the last query's block are NaN (must never be read)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, len(q_index), D, generator=g)
    k, v = torch.randn(B, H_kv, T, D, generator=g), torch.randn(B, H_kv, T, D, generator=g)
    end = min((q_index[-1] // L + 1) * L, T)
    k[:, :, end:], v[:, :, end:] = float("nan"), float("nan")
    where = CacheQueries(torch.tensor(q_index, device=device), L, torch.tensor(pad, device=device))
    return [t.to(device, dtype) for t in (q, k, v)], where


# (query indices, block length, padding per row): AR, the block in flight, the fused chunk (finished block +
# block in flight), a chunk whose first block is partial (a prompt's last block), one query in the padding,
# and three blocks at once.
CASES = [
    ([37], 1, [0, 5]),
    (list(range(32, 36)), 4, [0, 3]),
    (list(range(28, 36)), 4, [2, 0]),
    (list(range(30, 36)), 4, [0, 0]),
    ([3], 1, [5, 0]),
    (list(range(24, 36)), 4, [1, 0]),
]


@pytest.mark.parametrize("q_index, L, pad", CASES)
def test_cpu_path_matches_loop_reference(q_index, L, pad):
    (q, k, v), where = make_case(2, 4, 2, 16, 48, q_index, L, pad)
    out = decode_attention(q, k, v, where)
    assert out.shape == q.shape
    assert rel_err(out, loop_reference(q, k, v, q_index, L, pad)) < 1e-5


def test_reference_reads_only_the_filled_part():
    (q, k, v), where = make_case(1, 4, 2, 16, 64, list(range(8, 12)), 4, [0])
    k[:, :, 12:], v[:, :, 12:] = 1e30, 1e30  # would dominate any softmax that reached them
    assert torch.isfinite(reference_decode_attention(q, k, v, where)).all()


@pytest.mark.parametrize("strategy", ["static", "ar"])
def test_static_runner_with_split_k_switch_equals_plain(strategy):
    model = random_model(tiny_config("sdar" if strategy != "ar" else "qwen3", block_size=4))
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]  # left padding of the first row
    kw = dict(max_new_tokens=12, block_length=4, steps=2, strategy=strategy)
    plain = generate(model, prompts, runner_mode="plain", **kw)
    static = generate(model, prompts, runner_mode="static", kernels=Kernels(split_k_attention=True), **kw)
    assert static.tokens.tolist() == plain.tokens.tolist()


INTERPRETED = """
import json, torch
from sdar_core.decode_attention import SplitConfig, _split_k
from test_decode_attention import CASES, loop_reference, make_case
errors = []
for q_index, L, pad in CASES:
    (q, k, v), where = make_case(2, 4, 2, 16, 48, q_index, L, pad)
    out = _split_k(q, k, v, where, SplitConfig(block_n=16, max_splits=3))  # several splits, a partial last step
    assert out.transpose(1, 2).is_contiguous(), out.stride()  # laid out [B, Q, H, D]: o_proj's input is a view
    errors.append(float((out.double() - loop_reference(q, k, v, q_index, L, pad)).norm() / out.norm()))
print(json.dumps(errors))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_triton_kernel_under_the_interpreter_matches_loop_reference():
    """The split and merge kernels on CPU tensors (Triton's interpreter), every case of CASES: NaN past each
    case's last block fails any read beyond kv_end."""
    errors = json.loads(run_interpreted(INTERPRETED))
    assert len(errors) == len(CASES) and max(errors) < 1e-5, errors


# The merge folded into the split kernel (Kernels.merge_fold): every case of CASES at 3 splits, twice (the first
# call's last arrivers must leave the counters at zero for the second), at one split (no partials, no counter), and
# a chunk of 72 queries over 2 query heads a KV head, 144 rows: two row tiles, each counted on its own.
FOLDED = """
import json, torch
from sdar_core import gemm
from sdar_core.decode_attention import SplitConfig, _split_k
from test_decode_attention import CASES, loop_reference, make_case
cases = [(case, 3) for case in CASES] + [(CASES[1], 1), ((list(range(8, 80)), 8, [0, 5]), 3)]
errors, apart = [], []
for (q_index, L, pad), splits in cases:
    (q, k, v), where = make_case(2, 4, 2, 16, 88, q_index, L, pad)
    config = SplitConfig(block_n=16, max_splits=splits)
    ref = loop_reference(q, k, v, q_index, L, pad)
    for _ in range(2):
        out = _split_k(q, k, v, where, config, fold=True)
        assert out.transpose(1, 2).is_contiguous(), out.stride()
        errors.append(float((out.double() - ref).norm() / ref.norm()))
    assert int(gemm.counters(q.device).abs().sum()) == 0  # every tile's counter reset by its last arriver
    apart.append(float((out - _split_k(q, k, v, where, config)).abs().max()))  # the merge kernel's result
print(json.dumps([errors, apart]))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_merge_folded_into_the_split_kernel_under_the_interpreter_matches_loop_reference():
    """The last split of each tile to finish merges the tile (Kernels.merge_fold): against the loop reference,
    and within float32 rounding of the merge kernel's result (the same weights, summed in another order)."""
    errors, apart = json.loads(run_interpreted(FOLDED))
    assert len(errors) == 2 * (len(CASES) + 2) and max(errors) < 1e-5, errors
    assert max(apart) < 1e-5, apart


def test_the_merge_fold_switch_is_off_by_default_and_changes_nothing_on_the_cpu():
    """Off until a GPU run has measured it; on the CPU (no kernel) the SDPA path runs whatever it says."""
    assert not Kernels().merge_fold
    (q, k, v), where = make_case(2, 4, 2, 16, 48, *CASES[2])
    assert torch.equal(decode_attention(q, k, v, where, fold=True), decode_attention(q, k, v, where))
    model = random_model(tiny_config("sdar", block_size=4))
    kw = dict(max_new_tokens=8, block_length=4, steps=2, strategy="static", runner_mode="static")
    plain = generate(model, [[1, 2, 3]], **kw)
    assert (
        generate(model, [[1, 2, 3]], kernels=Kernels(merge_fold=True), **kw).tokens.tolist()
        == plain.tokens.tolist()
    )


# Norm + RoPE in the split kernel (Kernels.rope_in_attention): an `ar` step, a block of 4, the fused chunk of two
# blocks whose keys straddle two splits' ranges (3 splits of 16 keys), with and without the merge folded.
ROPE_CASES = [([37], 1, [0, 5]), (list(range(32, 36)), 4, [0, 3]), (list(range(28, 36)), 4, [2, 0])]

ROPED = """
import json, torch
from sdar_core.decode_attention import CacheQueries, Rope, SplitConfig, _split_k
from sdar_core.model import rope_cos_sin
from sdar_core.norm_rope import norm_rope_qk_to_cache
from test_decode_attention import ROPE_CASES, loop_reference
from test_fused import rope_by_hand
out = []
for q_index, L, pad in ROPE_CASES:
    for fold in (False, True):
        g = torch.Generator().manual_seed(len(q_index) + L)
        B, H, H_kv, D, T, Q = 2, 4, 2, 16, 48, len(q_index)
        q, k, v = (torch.randn(B, Q, n, D, generator=g) for n in (H, H_kv, H_kv))
        k_cache, v_cache = torch.randn(B, H_kv, T, D, generator=g), torch.randn(B, H_kv, T, D, generator=g)
        end = (q_index[-1] // L + 1) * L
        k_cache[:, :, end:], v_cache[:, :, end:] = float("nan"), float("nan")  # never to be read
        qw, kw = torch.rand(D, generator=g) + 0.5, torch.rand(D, generator=g) + 0.5
        positions = torch.tensor(q_index).expand(B, Q) - torch.tensor(pad)[:, None]
        cos, sin = rope_cos_sin(positions, 1e4 ** -torch.arange(0, 1, 2 / D), torch.float32)
        where = CacheQueries(torch.tensor(q_index), L, torch.tensor(pad))
        # by hand: the keys' and queries' norm + RoPE in float64, the keys and values into copies of the caches
        keys, values = k_cache.clone().double(), v_cache.clone().double()
        keys[:, :, q_index] = rope_by_hand(k, kw, 1e-6, cos, sin)
        values[:, :, q_index] = v.double().transpose(1, 2)
        ref = loop_reference(rope_by_hand(q, qw, 1e-6, cos, sin), keys, values, q_index, L, pad)
        # the norm + RoPE kernel's caches, for their bits
        k_norm_rope, v_norm_rope = k_cache.clone(), v_cache.clone()
        norm_rope_qk_to_cache(q, k, v, qw, kw, 1e-6, 1e-6, cos, sin, k_norm_rope, v_norm_rope, where.q_index)
        config, rope = SplitConfig(block_n=16, max_splits=3, waves=16), Rope(k, v, qw, kw, 1e-6, 1e-6, cos, sin)
        got = _split_k(q.transpose(1, 2), k_cache, v_cache, where, config, fold, rope)
        same = [torch.equal(a[:, :, :end], b[:, :, :end]) for a, b in ((k_cache, k_norm_rope), (v_cache, v_norm_rope))]
        untouched = bool(k_cache[:, :, end:].isnan().all())
        out.append([float((got.double() - ref).norm() / ref.norm()), all(same), untouched])
print(json.dumps(out))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_norm_and_rope_in_the_split_kernel_under_the_interpreter_match_the_math_and_the_norm_rope_kernel():
    """The split kernel given the raw queries, keys and values: its attention against float64 norm + RoPE by hand
    and the loop reference, with and without the merge folded; the caches it leaves have the bits
    norm_rope_qk_to_cache writes (each split writes the chunk's keys in its own range: the fused chunk's straddle
    two), and nothing past the last block is touched."""
    out = json.loads(run_interpreted(ROPED))
    assert len(out) == 2 * len(ROPE_CASES)
    for error, same_cache, untouched in out:
        assert error < 1e-5 and same_cache and untouched, out


def test_the_rope_in_attention_switch_is_off_by_default_and_changes_nothing_on_the_cpu():
    assert not Kernels().rope_in_attention
    model = random_model(tiny_config("sdar", block_size=4))
    kw = dict(max_new_tokens=8, block_length=4, steps=2, strategy="static", runner_mode="static")
    plain = generate(model, [[1, 2, 3]], **kw)
    on = generate(model, [[1, 2, 3]], kernels=Kernels(rope_in_attention=True), **kw)
    assert on.tokens.tolist() == plain.tokens.tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("Q, L", [(1, 1), (16, 16), (32, 16)])
def test_cuda_norm_and_rope_in_the_split_kernel_give_the_bits_of_the_two_kernels(Q, L, fold):
    """The 1.7B's heads in bf16 over a 1,024-slot cache: the kernel forming q and the chunk's keys itself leaves
    the caches norm_rope_qk_to_cache leaves and returns the split kernel's output on that kernel's queries, bit for
    bit (the same rounding, the same attention)."""
    from sdar_core.decode_attention import Rope, split_k_attention, split_k_rope_attention
    from sdar_core.model import rope_cos_sin
    from sdar_core.norm_rope import norm_rope_qk_to_cache

    torch.manual_seed(Q)
    dev, bf, T, start = "cuda", torch.bfloat16, 1024, 600
    q = torch.randn(1, Q, 16, 128, device=dev, dtype=bf)
    k, v = torch.randn(1, Q, 8, 128, device=dev, dtype=bf), torch.randn(1, Q, 8, 128, device=dev, dtype=bf)
    k_cache, v_cache = (
        torch.randn(1, 8, T, 128, device=dev, dtype=bf),
        torch.randn(1, 8, T, 128, device=dev, dtype=bf),
    )
    qw, kw = torch.rand(128, device=dev, dtype=bf) + 0.5, torch.rand(128, device=dev, dtype=bf) + 0.5
    positions = torch.arange(start, start + Q, device=dev)[None]
    inv_freq = 1e6 ** -torch.arange(0, 1, 2 / 128, device=dev)
    cos, sin = rope_cos_sin(positions, inv_freq, bf)
    where = CacheQueries(positions[0], L, torch.zeros(1, dtype=torch.long, device=dev))
    k2, v2 = k_cache.clone(), v_cache.clone()
    roped = norm_rope_qk_to_cache(q, k, v, qw, kw, 1e-6, 1e-6, cos, sin, k2, v2, where.q_index)
    two = split_k_attention(roped, k2, v2, where, fold=fold)
    one = split_k_rope_attention(q, Rope(k, v, qw, kw, 1e-6, 1e-6, cos, sin), k_cache, v_cache, where, fold)
    assert torch.equal(k_cache, k2) and torch.equal(v_cache, v2)
    assert torch.equal(one, two)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["static", "ar"])
def test_cuda_graph_decoding_with_norm_and_rope_in_the_split_kernel_gives_the_same_tokens(strategy):
    """A bf16 model decoding in graph mode with rope_in_attention (and the merge folded): the tokens of the two
    kernels, and every split launch forming its queries and keys itself (norm + RoPE kernels for the prefills only:
    as many fewer as split launches)."""
    from torch.profiler import ProfilerActivity, profile

    model = random_model(tiny_config("sdar", block_size=4)).cuda().to(torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, 90, (n,), generator=g).tolist() for n in (150, 157)]
    kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy=strategy, runner_mode="graph")
    counts, tokens = {}, {}
    for name, kernels in (
        ("two", Kernels(merge_fold=True)),
        ("one", Kernels(rope_in_attention=True, merge_fold=True)),
    ):
        tokens[name] = generate(
            model, prompts, kernels=kernels, **kw
        ).tokens.tolist()  # captured outside the profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            generate(model, prompts, kernels=kernels, **kw)
            torch.cuda.synchronize()
        counts[name] = {
            kernel: sum(e.count for e in prof.key_averages() if kernel in e.key)
            for kernel in ("_norm_rope_kernel", "_split_kernel")
        }
    assert tokens["one"] == tokens["two"]
    assert counts["one"]["_split_kernel"] == counts["two"]["_split_kernel"] > 0
    assert (
        counts["two"]["_norm_rope_kernel"] - counts["one"]["_norm_rope_kernel"]
        == counts["one"]["_split_kernel"]
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("q_index, L, pad", CASES)
def test_cuda_merge_fold_matches_loop_reference(q_index, L, pad, fold):
    """bf16 on CUDA at the default split count, with the merge kernel and folded; called twice (the counters)."""
    (q, k, v), where = make_case(2, 4, 2, 16, 48, q_index, L, pad, dtype=torch.bfloat16, device="cuda")
    ref = loop_reference(q.cpu(), k.cpu(), v.cpu(), q_index, L, pad)
    for _ in range(2):
        assert rel_err(decode_attention(q, k, v, where, fold=fold).cpu(), ref) < 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("Q, L, context", [(1, 1, 8192), (16, 16, 600), (128, 64, 3000)])
def test_cuda_merge_fold_at_the_models_shape_in_a_graph(Q, L, context):
    """SDAR-1.7B's heads (16/8 of 128, bf16) over an 8k buffer: the folded kernel captured once and replayed at
    several fills, each against the merge kernel's output (within one bf16 rounding: the same float32 merge summed
    in another order) and the loop reference; the device's counters all zero after."""
    from sdar_core import gemm

    T = 8704
    torch.manual_seed(0)
    q = torch.randn(1, 16, Q, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, T, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    where = CacheQueries(torch.arange(Q, device="cuda"), L, torch.zeros(1, dtype=torch.long, device="cuda"))
    decode_attention(q, k, v, where, fold=True)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k, v, where, fold=True)
    for start in (0, context, T - Q):
        where.q_index.copy_(torch.arange(start, start + Q))
        graph.replay()
        plain = decode_attention(q, k, v, where)
        assert (out.float() - plain.float()).abs().max() <= 2**-7 * plain.float().abs().max(), start
        if start == context:
            ref = loop_reference(q.cpu(), k.cpu(), v.cpu(), list(range(start, start + Q)), L, [0])
            assert rel_err(out.cpu(), ref) < 1e-2
    torch.cuda.synchronize()
    assert int(gemm.counters(q.device).abs().sum()) == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["static", "ar"])
def test_cuda_graph_runner_with_the_merge_fold_equals_plain(strategy):
    """A model decoding in graph mode with the fold: the tokens of the same graph decode with the merge kernel; no
    merge kernel in its graph. Prompts of 150-157 tokens: a buffer of more than 128 slots, so that the kernel splits
    the keys (3 splits). The fold changes only the order of the merge's float32 sums; against the plain path's SDPA
    the split kernel's float32 products (tf32) differ by more, which flipped one of 48 tokens on an H200."""
    from torch.profiler import ProfilerActivity, profile

    model = random_model(tiny_config("sdar", block_size=4)).cuda()
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(2, 90, (n,), generator=g).tolist() for n in (150, 157)]
    kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy=strategy, runner_mode="graph")
    unfolded = generate(model, prompts, **kw)
    kernels = Kernels(merge_fold=True)
    assert generate(model, prompts, kernels=kernels, **kw).tokens.tolist() == unfolded.tokens.tolist()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        generate(model, prompts, kernels=kernels, **kw)
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    assert any("_split_kernel" in n for n in names) and not any("_merge_kernel" in n for n in names), names


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("q_index, L, pad", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_matches_loop_reference(q_index, L, pad, dtype):
    (q, k, v), where = make_case(2, 4, 2, 16, 48, q_index, L, pad, dtype=dtype, device="cuda")
    out = decode_attention(q, k, v, where)
    ref = loop_reference(q.cpu(), k.cpu(), v.cpu(), q_index, L, pad)
    assert rel_err(out.cpu(), ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)
    # o_proj's input [B, Q, H * D] is a view of the output: no copy kernel between attention and o_proj
    B, H, Q, D = out.shape
    assert out.transpose(1, 2).reshape(B, Q, H * D).data_ptr() == out.data_ptr()
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("Q, L", [(1, 1), (16, 16), (32, 16), (128, 64)])
def test_one_cuda_graph_serves_every_filled_length(Q, L):
    """SDAR-1.7B's attention shape (16/8 heads of 128, bf16): capture once, replay at several fills.
    (Q = 128: block 64's fused chunk, 256 rows per KV head, so two row tiles.)"""
    T = 1024
    torch.manual_seed(0)
    q = torch.randn(1, 16, Q, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, T, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    where = CacheQueries(torch.arange(Q, device="cuda"), L, torch.zeros(1, dtype=torch.long, device="cuda"))
    decode_attention(q, k, v, where)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k, v, where)
    for start in (0, 16, 400, T - Q):
        where.q_index.copy_(torch.arange(start, start + Q))
        graph.replay()
        ref = loop_reference(q.cpu(), k.cpu(), v.cpu(), list(range(start, start + Q)), L, [0])
        assert rel_err(out.cpu(), ref) < 1e-2, start


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "split_k", [None, False]
)  # the default (the kernel on CUDA) and SDPA over the buffer
@pytest.mark.parametrize("strategy", ["static", "dynamic", "ar"])
def test_graph_runner_equals_plain_with_and_without_split_k(strategy, split_k):
    model = random_model(tiny_config("sdar", block_size=4)).cuda()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy=strategy, threshold=0.5)
    plain = generate(model, prompts, runner_mode="plain", **kw)
    kernels = Kernels(split_k_attention=split_k)
    graph = generate(model, prompts, runner_mode="graph", kernels=kernels, **kw)
    assert ChunkRunner.get(model, 2, 64, 4, "graph", kernels=kernels).split_k == (split_k is None)
    assert graph.tokens.tolist() == plain.tokens.tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["static", "ar"])
def test_compiled_graphs_with_split_k_equal_plain(strategy):
    """torch.compile(fullgraph=True) of the forward takes the split-K kernel as one opaque op."""
    model = random_model(tiny_config("sdar", block_size=4, layers=2)).cuda()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    kw = dict(max_new_tokens=16, block_length=4, steps=2, strategy=strategy)
    plain = generate(model, prompts, runner_mode="plain", **kw)
    compiled = generate(model, prompts, runner_mode="graph", compile=True, **kw)
    assert compiled.tokens.tolist() == plain.tokens.tolist()


def test_split_k_is_off_on_the_cpu_by_default():
    """CPU static shapes keep SDPA over the whole buffer (their inputs carry the mask); the kernel needs CUDA."""
    model = random_model(tiny_config("sdar", block_size=4))
    runner = ChunkRunner(model, 1, 64, 4, "static")
    assert not runner.split_k
    assert runner.static_inputs(torch.zeros(1, 4, dtype=torch.long), 8).mask is not None
