"""FP8 weights (gemm.quantize_fp8, SDARForCausalLM.quantize_fp8, load_pretrained(weights="fp8")): the quantization
against e4m3's own rounding, the product against float64 math of the dequantized weight, the quantized model against
an independently built float model holding the dequantized weights, decoding against the brute-force decoder, the
kernel under Triton's interpreter and, under the `cuda` marker, on the GPU against float64 and inside a graph."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_decoding import brute_force
from test_gemm import rounding_excess

from sdar_core import gemm
from sdar_core.decoding import generate
from sdar_core.gemm import FP8_MAX, Fp8Linear, quantize_fp8
from sdar_core.kernels import Kernels
from sdar_core.loading import CheckpointError, load_pretrained, save_pretrained

from helpers import interpreter_reason, load_tokenizer, random_model, rel_err, run_interpreted, tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# e4m3: 3 mantissa bits (a relative step of 2^-3, so round-to-nearest is within 2^-4), smallest subnormal 2^-9
E4M3_REL, E4M3_TINY = 2.0**-4, 2.0**-9


def test_each_row_is_scaled_to_e4m3s_range_and_rounded_to_nearest():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 300, generator=g) * torch.logspace(-3, 2, 48)[:, None]  # rows of very different sizes
    w[7] = 0.0
    packed = quantize_fp8(w)
    assert packed.data.dtype == torch.float8_e4m3fn and packed.scale.dtype == torch.float32
    assert packed.shape == w.shape and packed.data.is_contiguous()
    live = torch.arange(48) != 7
    assert torch.equal(
        packed.data.float().abs().amax(1)[live], torch.full((47,), FP8_MAX)
    )  # each row's max -> 448
    assert packed.scale[7] == 1 and not packed.data[7].float().any()  # a zero row stays zero
    # the dequantized weight within e4m3's rounding of each element, relative to its row's scale
    q = w.double() / packed.scale.double()[:, None]
    err = (packed.data.double() - q).abs()
    assert bool((err <= E4M3_REL * q.abs() + E4M3_TINY).all())
    assert rel_err(packed.dequantize(torch.float32), w) < 0.04


def test_the_product_is_the_scaled_product_of_the_float8_rows():
    g = torch.Generator().manual_seed(1)
    x, w, b = (
        torch.randn(3, 5, 96, generator=g),
        torch.randn(40, 96, generator=g),
        torch.randn(40, generator=g),
    )
    packed = quantize_fp8(w)
    exact = x.double() @ packed.dequantize(torch.float64).T  # float64 math of what the weight now holds
    for y in (gemm.linear(x, packed), gemm.fp8_reference(x, packed)):
        assert y.dtype == torch.float32 and y.shape == (3, 5, 40)
        assert rel_err(y, exact) < 1e-6
    assert rel_err(gemm.linear(x, packed, b), exact + b.double()) < 1e-6
    # bf16 activations: the result in bf16, one rounding of the float32 product
    xb = x.bfloat16()
    yb = gemm.linear(xb, packed)
    assert yb.dtype == torch.bfloat16
    assert rounding_excess(yb, xb.float(), packed.dequantize(torch.float64).float()) <= 0
    module = Fp8Linear(packed, b)
    assert torch.equal(module(x), gemm.linear(x, packed, b))
    assert torch.equal(gemm.project(module, x), module(x))
    assert not gemm.fp8_runs(x, packed)  # the CPU: torch's product, never the kernel


def dequantized_twin(model, quantized):
    """A plain float model (nn.Linear everywhere) whose projections hold the fp8 model's dequantized weights:
    built from the original's modules, not through quantize_fp8's code paths."""
    twin = copy.deepcopy(model)
    q_layers, t_layers = quantized.model.layers, twin.model.layers
    with torch.no_grad():
        for q_layer, t_layer in zip(q_layers, t_layers):
            for part in ("self_attn", "mlp"):
                for name, module in getattr(t_layer, part).named_children():
                    source = getattr(getattr(q_layer, part), name)
                    if isinstance(module, torch.nn.Linear):
                        assert isinstance(source, Fp8Linear), name
                        module.weight = torch.nn.Parameter(source.packed.dequantize(torch.float32))
        twin.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
        twin.lm_head.weight = torch.nn.Parameter(quantized.lm_head.packed.dequantize(torch.float32))
    return twin


@pytest.mark.parametrize("tied", [False, True])
def test_the_quantized_model_equals_a_float_model_holding_its_dequantized_weights(tied):
    model = random_model(tiny_config("sdar", block_size=4, tie_word_embeddings=tied))
    quantized = copy.deepcopy(model).quantize_fp8()
    assert quantized.weights == "fp8" and model.weights == "float32"
    ids = torch.randint(0, 95, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, full = quantized(ids), dequantized_twin(model, quantized)(ids), model(ids)
    assert rel_err(got, want) < 1e-5  # every projection and the lm_head wired to its own float8 rows
    assert 1e-4 < rel_err(got, full) < 0.2  # and it is a quantization: close to the float model, not equal
    # the embedding keeps its float weight (tied or not); no float projection weight is left
    assert quantized.model.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(quantized.model.embed_tokens.weight, model.model.embed_tokens.weight)
    floats = [
        n
        for n, t in quantized.state_dict().items()
        if t.dtype == torch.float32 and ("proj" in n or "lm_head" in n) and not n.endswith("weight_scale")
    ]
    assert floats == []
    attn = quantized.model.layers[0].self_attn
    assert (
        attn.q_proj.weight.data_ptr() == attn.qkv_weight.data.data_ptr()
    )  # q/k/v are views of one fused weight
    assert quantized.quantize_fp8() is quantized and quantized.model.layers[0].self_attn is attn  # idempotent


def test_an_moe_model_keeps_its_experts_and_quantizes_the_rest():
    model = random_model(tiny_config("sdar_moe", block_size=4))
    quantized = copy.deepcopy(model).quantize_fp8()
    moe = quantized.model.layers[0].mlp
    assert moe.experts.gate_up_proj.dtype == torch.float32 and isinstance(
        quantized.model.layers[0].self_attn.o_proj, Fp8Linear
    )
    ids = torch.randint(0, 95, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(quantized(ids), model(ids)) < 0.2


@pytest.mark.parametrize("strategy", ["static", "dynamic"])
def test_decoding_fp8_weights_with_the_cache_equals_the_brute_force_decoder(strategy):
    model = random_model(tiny_config("sdar", block_size=4)).quantize_fp8()
    prompt = [4, 5, 6, 7, 8, 9, 10]
    got = generate(
        model, [prompt], max_new_tokens=13, block_length=4, steps=2, strategy=strategy, threshold=0.5
    )
    assert got.row_tokens(0) == brute_force(model, prompt, 13, 4, 2, strategy, threshold=0.5)


def test_load_pretrained_fp8_and_its_refusals(tmp_path):
    model = random_model(tiny_config("sdar", block_size=4, vocab_size=len(load_tokenizer()) + 8))
    folder = save_pretrained(model, load_tokenizer(), tmp_path / "m")
    loaded, _ = load_pretrained(folder, device="cpu", weights="fp8")
    plain, _ = load_pretrained(folder, device="cpu")
    assert loaded.weights == "fp8" and plain.weights == "float32"
    ids = torch.randint(0, 90, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids), copy.deepcopy(plain).quantize_fp8()(ids))
    for bad in ("int4", "FP8", 8):
        with pytest.raises(CheckpointError, match="use None .* or 'fp8'"):
            load_pretrained(folder, device="cpu", weights=bad)
    with pytest.raises(CheckpointError, match="drop device_map"):
        load_pretrained(folder, device="cpu", weights="fp8", device_map="auto")
    with pytest.raises(CheckpointError, match="float8 weights"):  # not the public format: nothing written
        save_pretrained(loaded, None, tmp_path / "fp8")
    assert not (tmp_path / "fp8").exists()


def test_fp8_tiles_read_the_same_bytes_per_step():
    for rows in (1, 16, 64):
        plain, fp8 = gemm.config_for(rows, 4096, 2048, 132), gemm.config_for(rows, 4096, 2048, 132, fp8=True)
        assert fp8.block_k == 2 * plain.block_k and fp8.block_n == plain.block_n
        assert 2048 // fp8.split_k >= fp8.block_k  # every split at least one step long


# The kernel with float8 weights on CPU tensors: one row (CUDA-core form), 5 and 17 rows (tensor-core tiles, float32
# activations: the interpreter misreads bf16 dot operands), split-K with the scale applied by the last arriver, K no
# step divides, odd N.
INTERPRETED = """
import json, torch
from sdar_core import gemm
g = torch.Generator().manual_seed(0)
errors, cases = {}, [(1, 40, 300, (16, 256, 1)), (1, 48, 1024, (16, 256, 2)), (5, 33, 700, (16, 128, 3)),
                     (17, 70, 512, (32, 256, 2)), (3, 64, 1024, (16, 512, 2)), (16, 130, 768, (64, 256, 2))]
for rows, n, k, (bn, bk, split) in cases:
    x = torch.randn(rows, k, generator=g)
    packed = gemm.quantize_fp8(torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g))
    ref = x.double() @ packed.dequantize(torch.float64).T
    y = gemm.launch(x, packed.data, gemm.GemmConfig(bn, bk, split), packed.scale)
    errors[f"{rows}x{n}x{k}/{split}"] = float((y.double() - ref).norm() / ref.norm())
xb = torch.randn(1, 512, generator=g).bfloat16()
pb = gemm.quantize_fp8(torch.randn(96, 512, generator=g))
yb = gemm.launch(xb, pb.data, gemm.GemmConfig(16, 256, 2), pb.scale)
from test_gemm import rounding_excess
errors["bf16_excess"] = rounding_excess(yb, xb, pb.dequantize(torch.float64))
# the registered op at config_for's float8 tiles (BLOCK_K 512, split-K over a 132-SM chip): 1, 16 and 64 rows
for rows, n, k in [(1, 256, 2048), (16, 96, 1024), (64, 40, 768)]:
    x = torch.randn(1, rows, k, generator=g)
    packed = gemm.quantize_fp8(torch.randn(n, k, generator=g))
    ref = x.double() @ packed.dequantize(torch.float64).T
    y = torch.ops.sdar.fp8_linear(x, packed.data, packed.scale)
    assert y.shape == (*x.shape[:-1], n), y.shape
    errors[f"op {rows}x{n}x{k}"] = float((y.double() - ref).norm() / ref.norm())
print(json.dumps({"errors": errors, "counters": int(gemm._counters[torch.device("cpu")].abs().sum())}))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_fp8_kernel_under_the_interpreter_equals_the_math():
    out = json.loads(run_interpreted(INTERPRETED))
    errors = out["errors"]
    assert errors.pop("bf16_excess") <= 0, out
    assert max(errors.values()) < 1e-6, errors
    assert out["counters"] == 0


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("rows", [1, 4, 16, 33, 64])
@pytest.mark.parametrize("n,k", [(4096, 2048), (2048, 2048), (12288, 2048), (2048, 6144)])
def test_cuda_fp8_kernel_is_within_bf16_rounding_of_the_dequantized_product(rows, n, k):
    torch.manual_seed(rows)
    x = torch.randn(1, rows, k, device="cuda", dtype=torch.bfloat16)
    packed = quantize_fp8(torch.randn(n, k, device="cuda") * 0.02)
    with torch.no_grad():
        y = gemm.linear(x, packed)  # every row count up to FP8_MAX_ROWS takes the kernel
        assert gemm.fp8_runs(x, packed)
        ref = gemm.fp8_reference(x, packed)
    assert y.shape == (1, rows, n) and y.dtype == torch.bfloat16
    assert rounding_excess(y, x, packed.dequantize(torch.float64)) <= 0
    assert rel_err(y.float(), ref.float()) < 1e-2


@pytest.mark.cuda
@cuda
def test_cuda_fp8_in_a_graph_and_decoding_against_the_reference_path():
    torch.manual_seed(0)
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    packed = quantize_fp8(torch.randn(2048, 2048, device="cuda") * 0.02)
    with torch.no_grad():
        eager = gemm.linear(x, packed)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = gemm.linear(x, packed)
        for _ in range(3):
            x.copy_(torch.randn_like(x))
            graph.replay()
            assert torch.equal(out, gemm.linear(x, packed))
    assert eager.shape == (1, 2048)
    # float32 activations (full-precision products both ways): the kernel's tokens are the reference path's
    model = random_model(tiny_config("sdar", block_size=4)).cuda().quantize_fp8()
    kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy="static")
    for mode in ("graph", "plain"):
        ours = generate(
            model, [[4, 5, 6, 7, 8, 9, 10]], runner_mode=mode, kernels=Kernels(skinny_gemm=True), **kw
        )
        ref = generate(
            model, [[4, 5, 6, 7, 8, 9, 10]], runner_mode="plain", kernels=Kernels(skinny_gemm=False), **kw
        )
        assert ours.tokens.tolist() == ref.tokens.tolist()


def test_the_benchmarks_floor_counts_the_float8_bytes_and_not_the_gathered_embedding():
    from benchmarks.common import weight_bytes

    config = tiny_config("sdar", block_size=4, tie_word_embeddings=True)
    model = random_model(config)
    h, i, v, layers = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
        config.num_hidden_layers,
    )
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    rows = {"qkv": (q + 2 * kv, h), "o": (h, q), "gate_up": (2 * i, h), "down": (h, i)}
    norms = layers * (2 * h + 2 * config.head_dim) + h  # float32 norm weights
    assert weight_bytes(model) == 4 * (layers * sum(n * k for n, k in rows.values()) + v * h + norms)
    model.quantize_fp8()
    per_layer = sum(n * k + 4 * n for n, k in rows.values())  # a byte per weight, a float32 scale per row
    assert weight_bytes(model) == layers * per_layer + (v * h + 4 * v) + 4 * norms
