"""The persistent MLP kernel (persistent.py): under the interpreter against float64 math and against the two GEMMs it
replaces (gemm.launch), bit for bit, with one program and with several at once (each in a thread, waiting on each
other as on a GPU); the grid is what fits on the SMs at once; on the CPU the switch changes nothing; on a GPU the one
launch equals the two GEMMs bit for bit at the 1.7B's and 4B's shapes and in a graph decode, one kernel fewer a
layer."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from sdar_core.decoding import generate
from sdar_core.kernels import Kernels

from helpers import interpreter_reason, random_model, rel_err, run_interpreted, tiny_config


def mlp_inputs(h: int, inter: int, g: torch.Generator, dtype: torch.dtype = torch.float32):
    """A one-token MLP's launch inputs: (x [1, h], its sums of squares per 16-wide tile, the norm's weight, [gate; up]
    [2I, h], down [h, I], the residual [1, h])."""
    x = torch.randn(1, h, generator=g).to(dtype)
    w1 = (torch.randn(2 * inter, h, generator=g) / h**0.5).to(dtype)
    w2 = (torch.randn(h, inter, generator=g) / inter**0.5).to(dtype)
    residual, nw = torch.randn(1, h, generator=g).to(dtype), (torch.rand(h, generator=g) + 0.5).to(dtype)
    squares = torch.nn.functional.pad(x.double(), (0, -h % 16)).view(1, -1, 16).pow(2).sum(-1).float()
    return x, squares, nw, w1, w2, residual


# Each program of an interpreted launch in a thread of its own: the interpreter runs a grid's programs one after
# another, where a program that waits for another would wait forever.
HARNESS = """
import triton.language as tl
from triton.runtime import interpreter as I
from sdar_core import gemm, persistent

local = threading.local()
builder = I.interpreter_builder
serial_pid = builder.create_get_program_id


def program_id(axis):
    idx = getattr(local, "idx", None)
    if idx is None:
        return serial_pid(axis)
    return I.TensorHandle(np.array([idx[axis]], dtype=np.int32), tl.int32)


builder.create_get_program_id = program_id
serial_call = I.GridExecutor.__call__


def threaded_call(self, *args, **kwargs):
    fn, threads, errors = self.fn, [], []

    def spawn(**kw):
        idx = builder.grid_idx

        def body():
            local.idx = idx
            try:
                fn(**kw)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=body, daemon=True)
        t.start()
        threads.append(t)
        if idx == tuple(d - 1 for d in builder.grid_dim):
            for t in threads:
                t.join(timeout=60)
            if any(t.is_alive() for t in threads):
                raise TimeoutError("the programs did not finish: a wait that never ends")
            if errors:
                raise errors[0]

    serial_dim = builder.set_grid_dim

    def set_grid_dim(*dims):  # called after the arguments are bound, before the programs run
        self.fn = spawn
        return serial_dim(*dims)

    builder.set_grid_dim = set_grid_dim
    try:
        return serial_call(self, *args, **kwargs)
    finally:
        self.fn = fn
        builder.set_grid_dim = serial_dim


I.GridExecutor.__call__ = threaded_call
"""

# One program runs every unit under the interpreter (its programs run one after another): the ranges, the splits
# and their last-arriver sum, an intermediate no step divides (the last range short), h no step divides, one split,
# float32 and bf16. Each case against float64 math and against gemm.launch's two GEMMs at the same tiles; the
# counters back at zero.
INTERPRETED = """
import json, torch
from sdar_core import gemm, persistent
from test_fused import silu_mul_by_hand
from test_persistent import mlp_inputs
g = torch.Generator().manual_seed(0)
errors, equal = {}, {}
for h, inter, bk1, (bk2, splits), dtype in [
    (64, 128, 32, (32, 2), torch.float32), (40, 96, 32, (32, 3), torch.float32), (48, 80, 16, (32, 1), torch.float32),
    (64, 160, 32, (16, 4), torch.float32), (64, 128, 32, (32, 2), torch.bfloat16),
]:
    x, squares, nw, w1, w2, residual = mlp_inputs(h, inter, g, dtype)
    cfg = gemm.GemmConfig(16, bk2, splits)
    y, sq = persistent.launch(x, squares, nw, 1e-6, w1, w2, residual, bk1, cfg)
    # float64 math
    t = x.double()
    normed = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * nw.double()
    ref = residual.double() + silu_mul_by_hand(normed @ w1.double().T) @ w2.double().T
    name = f"{h}x{inter}/{splits} {str(dtype)[6:]}"
    errors[name] = float((y.double() - ref).norm() / ref.norm())
    by_hand = torch.nn.functional.pad(y.double(), (0, -h % 16)).view(1, -1, 16).pow(2).sum(-1)
    errors[name + " squares"] = float((sq.double() - by_hand).norm() / by_hand.norm())
    # the two GEMMs at the same tiles
    gate_up = gemm.launch(x, w1, gemm.GemmConfig(16, bk1, 1), norm=gemm.Norm(squares, nw, 1e-6))
    y2, sq2 = gemm.launch(gate_up, w2, cfg, swiglu=True, residual=residual)
    equal[name] = bool(torch.equal(y, y2) and torch.equal(sq, sq2))
    # two weight tiles in flight (gemm.AHEAD): the same bits
    gemm.AHEAD = True
    y3, sq3 = persistent.launch(x, squares, nw, 1e-6, w1, w2, residual, bk1, cfg)
    gemm.AHEAD = False
    equal[name + " ahead"] = bool(torch.equal(y, y3) and torch.equal(sq, sq3))
counters = gemm._counters.get(torch.device("cpu"))
print(json.dumps({"errors": errors, "equal": equal, "counters": int(counters.abs().sum())}))
"""


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_persistent_mlp_under_the_interpreter_is_the_math_and_the_two_gemms_bit_for_bit():
    out = json.loads(run_interpreted(INTERPRETED))
    errors = out["errors"]
    assert max(v for k, v in errors.items() if "float32" in k) < 1e-6, errors
    assert max(v for k, v in errors.items() if "bfloat16" in k) < 2e-2, errors
    assert all(out["equal"].values()), out["equal"]
    assert out["counters"] == 0


# Several programs at once under the interpreter: each program of a launch in its own thread (its program id
# thread-local), so that phase 2's waits on the range counters meet phase 1's counts from other programs as they come.
# With 2, 3, 5 and 8 programs the result is the one program's bit for bit and the counters are back at zero; a wait
# that never ends (a wrong count) fails after a minute instead of hanging; without the waits the results differ.
THREADS = (
    """
import json, threading
import numpy as np
import torch
"""
    + HARNESS
    + """
from test_persistent import mlp_inputs
g = torch.Generator().manual_seed(0)
out = {}
for h, inter, bk1, (bk2, splits) in [(64, 128, 32, (32, 2)), (40, 96, 32, (32, 3)), (64, 160, 32, (16, 4))]:
    x, sq, nw, w1, w2, r = mlp_inputs(h, inter, g)
    cfg = gemm.GemmConfig(16, bk2, splits)
    one = persistent.launch(x, sq, nw, 1e-6, w1, w2, r, bk1, cfg, programs=1)
    for P in (2, 3, 5, 8):
        gemm.AHEAD = P == 5  # two weight tiles in flight: the same bits
        many = persistent.launch(x, sq, nw, 1e-6, w1, w2, r, bk1, cfg, programs=P)
        out[f"{h}x{inter}/{splits} P={P}"] = bool(torch.equal(one[0], many[0]) and torch.equal(one[1], many[1]))
    gemm.AHEAD = False
print(json.dumps({"equal": out, "counters": int(gemm._counters[torch.device("cpu")].abs().sum())}))
"""
)


@pytest.mark.skipif(interpreter_reason() is not None, reason=str(interpreter_reason()))
def test_the_persistent_mlp_with_its_programs_as_threads_is_the_one_programs_result():
    out = json.loads(run_interpreted(THREADS))
    assert all(out["equal"].values()) and len(out["equal"]) == 12, out["equal"]
    assert out["counters"] == 0


def test_the_persistent_mlp_is_off_by_default_and_never_taken_on_the_cpu():
    """Off until a GPU has measured it; on the CPU (no kernel) the switch changes nothing."""
    assert not Kernels().persistent_mlp
    model = random_model(tiny_config("sdar", block_size=4)).fuse_projections()
    ids = torch.tensor([[5]])
    with torch.no_grad():
        assert torch.equal(model(ids, kernels=Kernels(persistent_mlp=True)), model(ids))


def test_the_launcher_refuses_more_than_one_row_and_wider_tiles():
    from sdar_core import gemm, persistent

    x, w1, w2 = torch.zeros(2, 32), torch.zeros(64, 32), torch.zeros(32, 32)
    with pytest.raises(ValueError, match="one-row form"):
        persistent.launch(
            x, torch.zeros(2, 2), torch.ones(32), 1e-6, w1, w2, x, 32, gemm.GemmConfig(16, 32, 1)
        )
    with pytest.raises(ValueError, match="one-row form"):
        persistent.launch(
            x[:1], torch.zeros(1, 2), torch.ones(32), 1e-6, w1, w2, x[:1], 32, gemm.GemmConfig(64, 32, 1)
        )


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="needs triton (the kernel's definition)"
)
@pytest.mark.parametrize(
    "regs, shared, per_sm, expected",
    [(72, 2048, 4, 4), (72, 2048, 8, 7), (200, 2048, 4, 2), (72, 120 << 10, 4, 1), (40, 0, 8, 8)],
)
def test_the_grid_is_what_fits_on_the_sms_at_once(monkeypatch, regs, shared, per_sm, expected):
    """The programs wait on each other, so the grid is the SMs times the programs one SM holds at once: registers
    (65,536 an SM, allocated per warp in steps of 8 a thread), shared memory, at most PROGRAMS_PER_SM; the compiled
    kernel is asked once per shape."""
    from types import SimpleNamespace

    from sdar_core import persistent

    asked = []

    def warmup(*args, grid, **meta):
        asked.append(meta)
        return SimpleNamespace(
            n_regs=regs, metadata=SimpleNamespace(shared=shared), _init_handles=lambda: None
        )

    props = SimpleNamespace(multi_processor_count=132, shared_memory_per_multiprocessor=228 << 10)
    monkeypatch.setattr(persistent._mlp_kernel, "warmup", warmup)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(persistent, "_sm_count", lambda device: 132)
    monkeypatch.setattr(persistent, "PROGRAMS_PER_SM", per_sm)
    monkeypatch.setattr(persistent, "_fits", {})
    meta = dict(h=2048, inter=6144, num_warps=4)
    for _ in range(2):
        assert persistent.fitting_programs((torch.zeros(1),), meta, torch.device("cpu")) == 132 * expected
    assert len(asked) == 1


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("h, inter", [(2048, 6144), (64, 128), (2560, 9728)])
def test_cuda_the_persistent_mlp_is_the_two_gemms_bit_for_bit(h, inter):
    """bf16, one token, the 1.7B's, a tiny model's and the 4B's MLP: the one launch gives the two GEMMs'
    (gemm.normed_linear, gemm.add_linear with swiglu) sum and squares exactly, the same bits on a second launch, and
    a sum within bf16 rounding of the eager layer."""
    from sdar_core import gemm, persistent
    from sdar_core.model import RMSNorm

    torch.manual_seed(h)
    dev, bf = "cuda", torch.bfloat16
    norm = RMSNorm(h, 1e-6).to(dev, bf)
    with torch.no_grad():
        norm.weight.uniform_(0.8, 1.2)
        w_o = torch.randn(h, h, device=dev, dtype=bf) / h**0.5
        inp, residual = torch.randn(1, 1, h, device=dev, dtype=bf), torch.randn(1, 1, h, device=dev, dtype=bf)
        total, squares = gemm.add_linear(inp, w_o, residual)  # o_proj's add: the stream and its squares
        x = gemm.Normed(total, squares, norm)
        w1 = torch.randn(2 * inter, h, device=dev, dtype=bf) / h**0.5
        w2 = torch.randn(h, inter, device=dev, dtype=bf) / inter**0.5
        assert persistent.mlp_runs(x, w1, w2, total)
        y, sq = persistent.mlp(x, w1, w2, total)
        y_again, sq_again = persistent.mlp(x, w1, w2, total)
        two = gemm.add_linear(gemm.normed_linear(x, w1), w2, total, swiglu=True)
        gu = norm(total).float() @ w1.float().T
        gate, up = gu.chunk(2, dim=-1)
        eager = total.float() + (torch.nn.functional.silu(gate) * up) @ w2.float().T
    assert torch.equal(y, two[0]) and torch.equal(sq, two[1])
    assert torch.equal(y, y_again) and torch.equal(sq, sq_again)
    assert rel_err(y.float(), eager) < 1e-2
    assert int(gemm.counters(torch.device(dev)).abs().sum()) == 0


@pytest.mark.cuda
@cuda
def test_cuda_a_graph_decode_with_the_persistent_mlp_gives_the_default_tokens_with_one_kernel_fewer_a_layer():
    """bf16, batch 1, AR steps in graph mode: the tokens of the default kernels; a one-token forward runs one kernel
    fewer a layer (the MLP's two GEMMs are one launch)."""
    from torch.profiler import ProfilerActivity, profile

    model = random_model(tiny_config("sdar", block_size=4)).cuda().to(torch.bfloat16).fuse_projections()
    on = Kernels(persistent_mlp=True)
    kw = dict(max_new_tokens=16, block_length=4, strategy="ar", runner_mode="graph")
    assert generate(model, [[3, 4, 5]], kernels=on, **kw).tokens.tolist() == (
        generate(model, [[3, 4, 5]], **kw).tokens.tolist()
    )
    ids = torch.tensor([[7]], device="cuda")
    counts = {}
    for name, kernels in (("off", Kernels()), ("on", on)):
        with torch.no_grad():
            model(ids, kernels=kernels)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model(ids, kernels=kernels)
                torch.cuda.synchronize()
        counts[name] = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
    assert counts["off"] - counts["on"] == model.config.num_hidden_layers, counts
