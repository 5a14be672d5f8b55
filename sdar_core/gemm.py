"""Skinny matmuls of the decode forward: y = x W^T for a few rows of x, one Triton kernel that streams W once at the
memory's speed. `linear` sends it 1-16 rows (a batch-1 AR step, an SDAR block: MAX_ROWS below); `launch` takes 1-64.

At decode time a projection reads megabytes of weight for a few kilobytes of activations: the time is the weight
read, and what loses it is too few loads in flight (a 2048 x 2048 weight is 8 MB, ~2 us at 4 TB/s, less than the
ramp-up of a kernel that gives each SM one tile) and the tail of a wave. The kernel tiles W by BLOCK_N output rows
and splits K among SPLIT_K programs when the output tiles alone do not fill the chip; each program reads its
[BLOCK_N, K / SPLIT_K] slice of W once, in BLOCK_K steps, for all the rows of x at once (a multiply-and-sum on the
CUDA cores for one row, tensor cores on 16, 32 or 64 padded rows for more).

Split-K in one launch: each program stores its float32 partial product in a workspace and counts itself in on an
atomic counter of its output tile; the program that arrives last sums the SPLIT_K partials in split order (the
result does not depend on who arrives last), rounds once to the output dtype and resets the counter to zero for the
next call. The counters are one zero-initialised int32 buffer per device, allocated outside CUDA-graph capture;
kernels on one device share them, which is safe because the kernels of a device run in the order of the one stream
the decoder uses (two streams running split-K GEMMs at once would need a buffer each).

The result is the float32 sum rounded once, as cuBLAS's bf16 GEMM rounds it: within bf16 rounding of F.linear
(tests/test_gemm.py checks both against float64 math). Inference only (no backward): with a gradient wanted, on
the CPU, with a bias, or for more than MAX_ROWS rows (below), `linear` calls F.linear. Which tile shapes run is
`config_for` below: from the sweep of `python -m benchmarks.gemm` (benchmarks/NOTES.md, "Skinny matmuls").

FP8 weights (`Fp8Weight`, `quantize_fp8`; a model switches with `SDARForCausalLM.quantize_fp8` or
`load_pretrained(..., weights="fp8")`): each output row of W stored as float8 e4m3 times one float32 scale, for half
the bytes a decode step reads. The same kernel reads them: it widens each float8 tile in registers (to float32 for
one row, to the activations' dtype for the tensor-core form, exactly: every e4m3 value is a bf16 / fp16 value) and
multiplies the float32 sum by the row's scale before the one rounding, so y = scale * (x q^T) with x in its own dtype.
`linear` sends it 1-FP8_MAX_ROWS rows (no cuBLAS kernel reads float8 weights beside bf16 activations); elsewhere (the
CPU, a prefill's many rows) the product is written with torch (`fp8_reference`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import pdl
from .fused import kernels_run, needs_grad
from .ops import kernel_op

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# The most rows `linear` sends to the kernel: 16 (SDAR_SKINNY_ROWS, 1-64, overrides it: the benchmarks compare).
# Measured on an H100 (benchmarks/NOTES.md, "Skinny matmuls" and "Weights in L2 before the wait"): for one row it is
# cuBLAS's equal alone and, launched with PDL (pdl.py) in a chain of our kernels, the batch-1 AR forward is 10%
# faster; at 2-16 rows the tensor-core form with the split rule below joins the same PDL chain and SDAR's block-16
# forward is 4% faster than through cuBLAS (2.280 -> 2.186 ms); at batch 4's 64 rows it was 19% slower (before that
# rule, not re-measured), so cuBLAS keeps more than 16. `launch` itself serves 1-64 rows (the benchmark's sweep).
ENV_ROWS = "SDAR_SKINNY_ROWS"


def _rows_from_env() -> int:
    value = os.environ.get(ENV_ROWS, "16")
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise ValueError(f"{ENV_ROWS}={value!r}: give the most rows the skinny GEMM takes, 1-64")
    return int(value)


MAX_ROWS = _rows_from_env()
# The most splits of K the GEMM that adds into the residual stream takes (add_linear: o_proj and down under
# norm_fold). Its last arriver of a tile also adds the residual and sums the squares, and every program carries that
# code: o_proj added 8.0 us a layer with the fold against 6.0 without, at 4 splits (benchmarks/NOTES.md, "The residual
# add and the norm in the GEMMs"). 0, the default: config_for's count; SDAR_ADD_SPLITS=1, 2, ... caps it (the
# benchmarks compare).
ENV_ADD_SPLITS = "SDAR_ADD_SPLITS"


def _add_splits_from_env() -> int:
    value = os.environ.get(ENV_ADD_SPLITS, "0")
    if not value.isdigit() or int(value) & (int(value) - 1):
        raise ValueError(
            f"{ENV_ADD_SPLITS}={value!r}: give the most splits of K an adding GEMM takes, 1, 2, 4, ... (0: any)"
        )
    return int(value)


ADD_MAX_SPLIT = _add_splits_from_env()
# Weight tiles a program keeps in flight: 1, the default, loads each K step's tile where it is used; SDAR_GEMM_AHEAD=1
# loads the next step's tile before the current step's sum (the same sums in the same order: the same bits). Each
# program then waits on one tile while the next comes in. Off until measured: the H200's microbenchmark has down at
# 69% and qkv at 78% of the bandwidth with ~4 programs an SM against gate_up's 92% with ~6, as if the bytes in flight
# an SM, not the stream, set their speed (benchmarks/NOTES.md, "Two weight tiles in flight").
ENV_AHEAD = "SDAR_GEMM_AHEAD"
AHEAD = os.environ.get(ENV_AHEAD, "0") == "1"
# The rows `linear` sends to the kernel for an Fp8Weight: every row count the kernel serves (the decode forward's
# steps and blocks; a longer prefill dequantizes instead).
FP8_MAX_ROWS = 64
FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
COUNTERS = 1 << 14  # split-K tiles one launch may use (output tiles x row tiles)
_counters: dict[torch.device, torch.Tensor] = {}


@dataclass(frozen=True)
class GemmConfig:
    block_n: int  # output features per program
    block_k: int  # reduction step
    split_k: int  # programs sharing one output tile's reduction
    warps: int = 4
    stages: int = 4

    def grid(self, rows: int, n: int) -> tuple[int, int, int]:
        return (cdiv(n, self.block_n), self.split_k, cdiv(rows, block_m(rows)))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_m(rows: int) -> int:
    """Rows of x per program: all of them up to 64, padded to 16, 32 or 64 for the tensor cores (tl.dot's narrow
    operand needs 16 or more); 1 for one row (the CUDA-core form)."""
    return 1 if rows == 1 else 16 if rows <= 16 else 32 if rows <= 32 else 64


# The shortest slice of K a split may take: one row, 512; more rows, 1,536. Each split writes rows x block_n float32
# partials that the last arriver sums, which costs more the more rows there are: the H100's tile sweep at 16 rows
# (benchmarks/results/h100-rows-folds/gemm/) found no split best for K = 2,048 (qkv 9.76 us against 10.85 at 4
# splits, gate_up 20.61 against 25.07 at 2; o_proj even) and 4 splits for down's K = 6,144 (13.56 against 14.03 at 8).
MIN_SPLIT_K = (512, 1536)


def config_for(rows: int, n: int, k: int, sms: int, fp8: bool = False) -> GemmConfig:
    """The tile shape for an [rows, k] x [n, k]^T product on a chip of `sms` SMs: enough programs for about two
    per SM (output tiles first, then splits of K no shorter than MIN_SPLIT_K nor than one step), 16-byte-aligned
    steps along K (twice as many float8 elements: the same bytes per step). One row: 16 weight rows by 256 per
    program; more: 64 weight rows by 128, the M of one warpgroup MMA (the tensor-core form puts W's rows there)."""
    block_n = 16 if rows == 1 else 64
    block_k = (256 if rows == 1 else 128) * (2 if fp8 else 1)
    tiles = cdiv(n, block_n) * cdiv(rows, block_m(rows))
    shortest = MIN_SPLIT_K[rows > 1]
    split = 1
    while tiles * split < 2 * sms and k // (split * 2) >= max(shortest, block_k) and tiles <= COUNTERS:
        split *= 2
    return GemmConfig(block_n=block_n, block_k=block_k, split_k=split)


def _kernel_takes(x: torch.Tensor, weight: torch.Tensor, max_rows: int) -> bool:
    """CUDA with Triton, no gradient, 1-max_rows rows of a floating dtype, a contiguous weight on x's device."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return (
        1 <= rows <= max_rows
        and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and weight.is_contiguous()
        and kernels_run(x, weight)
        and weight.device == x.device
    )


def skinny_runs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `linear` takes the kernel: CUDA with Triton, no gradient, no bias, at most MAX_ROWS rows, contiguous
    operands of one floating dtype."""
    return bias is None and x.dtype == weight.dtype and _kernel_takes(x, weight, MAX_ROWS)


@dataclass(frozen=True)
class Fp8Weight:
    """A weight [n, k] as float8 e4m3 rows times a float32 scale per row: W[i] ~ data[i] * scale[i]."""

    data: torch.Tensor  # [n, k] float8_e4m3fn
    scale: torch.Tensor  # [n] float32

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def rows(self, start: int, stop: int) -> Fp8Weight:
        """Rows [start, stop) as views (a fused [q; k; v] weight's q part)."""
        return Fp8Weight(self.data[start:stop], self.scale[start:stop])

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.data.float() * self.scale[:, None]).to(dtype)


def quantize_fp8(weight: torch.Tensor) -> Fp8Weight:
    """Per-output-row float8 e4m3: each row scaled so that its largest |value| is e4m3's largest (448), rounded to
    nearest. A row of zeros keeps scale 1."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    data = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return Fp8Weight(data.contiguous(), scale.contiguous())


class Fp8Linear(torch.nn.Module):
    """An nn.Linear for inference over an Fp8Weight: buffers `weight` (float8) and `weight_scale` (float32), the
    bias kept as it was."""

    def __init__(self, packed: Fp8Weight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = packed.shape
        self.register_buffer("weight", packed.data)
        self.register_buffer("weight_scale", packed.scale)
        self.bias = bias

    @property
    def packed(self) -> Fp8Weight:
        return Fp8Weight(self.weight, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=fp8"


def fp8_runs(x: torch.Tensor, weight: Fp8Weight) -> bool:
    """Whether `linear` takes the kernel for an Fp8Weight: CUDA with Triton, no gradient, 1-FP8_MAX_ROWS rows of a
    floating dtype, a contiguous weight on x's device."""
    return _kernel_takes(x, weight.data, FP8_MAX_ROWS)


def takes(x: torch.Tensor, weight: torch.Tensor | Fp8Weight) -> bool:
    """Whether `linear` (no bias) sends x to the kernel for this weight: fp8_runs or skinny_runs."""
    return fp8_runs(x, weight) if isinstance(weight, Fp8Weight) else skinny_runs(x, weight, None)


def parts(weight: torch.Tensor | Fp8Weight) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel's operands of a weight: (data, row scales) for an Fp8Weight, (weight, None) for bf16/fp16/fp32."""
    return (weight.data, weight.scale) if isinstance(weight, Fp8Weight) else (weight, None)


def swiglu_runs(gate_up: torch.Tensor, weight: torch.Tensor | Fp8Weight) -> bool:
    """Whether the down projection's kernel takes [gate; up] [..., 2k] and forms SiLU(gate) * up as it loads it
    (`swiglu_linear`): `linear` would take these rows for this weight (fp8_runs, skinny_runs) and gate_up is twice
    the weight's k wide."""
    return gate_up.shape[-1] == 2 * weight.shape[1] and takes(gate_up, weight)


def swiglu_linear(gate_up: torch.Tensor, weight: torch.Tensor | Fp8Weight) -> torch.Tensor:
    """(SiLU(gate) * up) W^T of gate_up = [gate; up] in one launch, where `swiglu_runs`: the activation is never
    written, and no kernel of its own runs between gate_up's and down's."""
    return _swiglu_linear(gate_up, *parts(weight))


def fp8_reference(x: torch.Tensor, weight: Fp8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T for an Fp8Weight with torch: scale * (x q^T) (q widened exactly to x's dtype; float32 on the CPU,
    whose bf16 matmul is slow), rounded to x's dtype. A CUDA prefill's many rows take this path: one transient
    dequantized copy of q per call."""
    if x.is_cuda:
        y = F.linear(x, weight.data.to(x.dtype)) * weight.scale
    else:
        y = F.linear(x.float(), weight.data.float()) * weight.scale
    y = y.to(x.dtype)
    return y + bias if bias is not None else y


def linear(
    x: torch.Tensor | Normed,
    weight: torch.Tensor | Fp8Weight,
    bias: torch.Tensor | None = None,
    fuse: bool = True,
) -> torch.Tensor:
    """F.linear(x, weight, bias); with `fuse`, the skinny kernel where it runs (skinny_runs, fp8_runs). An Fp8Weight
    goes to its kernel, else to fp8_reference. A Normed x is normalised by the kernel as it loads it where
    `normed_runs`, else first (Normed.tensor)."""
    if isinstance(x, Normed):
        if fuse and bias is None and normed_runs(x, weight):
            return normed_linear(x, weight)
        x = x.tensor()
    if isinstance(weight, Fp8Weight):
        if fuse and fp8_runs(x, weight):
            y = _fp8_linear(x, weight.data, weight.scale)
            return y + bias if bias is not None else y
        return fp8_reference(x, weight, bias)
    if fuse and skinny_runs(x, weight, bias):
        return _skinny_linear(x, weight)
    return F.linear(x, weight, bias)


def module_weight(module: torch.nn.Module) -> torch.Tensor | Fp8Weight:
    """An nn.Linear's weight, or an Fp8Linear's packed one."""
    return module.packed if isinstance(module, Fp8Linear) else module.weight


def project(module: torch.nn.Module, x: torch.Tensor | Normed, fuse: bool = True) -> torch.Tensor:
    """module(x) for an nn.Linear or an Fp8Linear; with `fuse`, the skinny kernel where it runs. Where it does not
    (a weight on another device, as big-model dispatch leaves it), the module call, whose hooks bring the weight.
    A Normed x: see `linear`."""
    if isinstance(x, Normed):
        if fuse and module.bias is None and normed_runs(x, module_weight(module)):
            return normed_linear(x, module_weight(module))
        x = x.tensor()
    if isinstance(module, Fp8Linear):
        return linear(x, module.packed, module.bias, fuse)
    if fuse and skinny_runs(x, module.weight, module.bias):
        return _skinny_linear(x, module.weight)
    return module(x)


# The residual stream's add and the RMSNorm after it, folded into the GEMMs on either side (kernels.Kernels'
# norm_fold): the projection that ends a sublayer (o_proj, down) adds its product to the residual stream as it stores
# it and writes, per output tile, each row's sum of squares of the sum; the projection that reads the normalised
# stream next (qkv, gate_up, the lm_head) sums those few partial sums for the row's mean square and normalises each
# tile of x as it loads it. No kernel runs between the two GEMMs, where fused.add_rms_norm ran before.
# The rows the fold takes: one (a batch-1 AR step). Measured on an H100 (benchmarks/NOTES.md, "The residual add and
# the norm in the GEMMs"): the one-token forward 1.762 -> 1.733 ms, 262 -> 206 kernels; SDAR's 16-row block forward
# 1.962 -> 2.174 ms, the tensor-core form's qkv 8.8 -> 15.2 us (its x tiles pass through registers to be normalised).
FOLD_MAX_ROWS = 1


@dataclass(frozen=True)
class Normed:
    """RMSNorm(x) with `norm` (an RMSNorm module: weight, eps), not formed yet: `linear` and `project` form it in
    the GEMM where `normed_runs`; `tensor()` forms it for any other reader. `squares` [..., T]: x's rows' sums of
    squares per output tile of the GEMM that wrote x (`add_linear`)."""

    x: torch.Tensor
    squares: torch.Tensor
    norm: torch.nn.Module

    @property
    def shape(self) -> torch.Size:
        return self.x.shape

    def tensor(self) -> torch.Tensor:
        return self.norm(self.x)


def normed_runs(x: Normed, weight: torch.Tensor | Fp8Weight) -> bool:
    """Whether `normed_linear` takes x for this weight: `linear` would take the rows and the norm's weight is a
    contiguous [k] of x's dtype on x's device."""
    nw = x.norm.weight
    if nw.shape != (weight.shape[1],) or nw.dtype != x.x.dtype or nw.device != x.x.device:
        return False
    return nw.is_contiguous() and not needs_grad(nw) and takes(x.x, weight)


def normed_linear(x: Normed, weight: torch.Tensor | Fp8Weight) -> torch.Tensor:
    """RMSNorm(x.x) W^T in one launch, where `normed_runs`: the normalised rows are never written."""
    return _normed_linear(x.x, x.squares, x.norm.weight, float(x.norm.eps), *parts(weight))


def add_runs(
    inp: torch.Tensor, weight: torch.Tensor | Fp8Weight, residual: torch.Tensor, swiglu: bool = False
) -> bool:
    """Whether `add_linear` takes these: one row (FOLD_MAX_ROWS), `linear` (`swiglu_runs` with `swiglu`) would take
    inp for this weight, and the residual is a [..., n] of inp's dtype on inp's device with inp's leading shape."""
    if inp.numel() != inp.shape[-1] * FOLD_MAX_ROWS:
        return False
    if residual.dtype != inp.dtype or residual.device != inp.device or needs_grad(residual):
        return False
    if residual.shape != (*inp.shape[:-1], weight.shape[0]):
        return False
    return swiglu_runs(inp, weight) if swiglu else takes(inp, weight)


def add_linear(
    inp: torch.Tensor, weight: torch.Tensor | Fp8Weight, residual: torch.Tensor, swiglu: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + inp W^T, its squares) in one launch, where `add_runs`; with `swiglu`, inp is [gate; up] as
    `swiglu_linear` takes it. The squares [..., T] float32 are what a Normed of the sum carries."""
    data, scale = parts(weight)
    return _add_linear(inp, data, scale, residual, swiglu)


def counters(device: torch.device) -> torch.Tensor | None:
    """The device's split-K counters (all zero between launches); None while a CUDA graph is being captured and
    none exist yet (an allocation then would belong to the graph's pool)."""
    buf = _counters.get(device)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if buf is None and not capturing:
        buf = _counters[device] = torch.zeros(COUNTERS, dtype=torch.int32, device=device)
    return buf


@dataclass(frozen=True)
class Norm:
    """RMSNorm(x) with `weight` and `eps` formed by the kernel as it loads x, each row's mean square from `squares`
    [rows, T]: the sums of squares over the T output tiles of the kernel that wrote x (`launch`'s `residual`)."""

    squares: torch.Tensor
    weight: torch.Tensor
    eps: float


def launch(
    x2: torch.Tensor,
    weight: torch.Tensor,
    cfg: GemmConfig,
    scale: torch.Tensor | None = None,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    norm: Norm | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y [rows, n] = x2 [rows, k] @ weight[n, k]^T with tile shape `cfg` (the benchmark sweeps shapes through
    this); with `scale` [n] (float32; a float8 weight's row scales), y = scale * (x2 @ weight^T); with `swiglu`,
    x2 is [gate; up] [rows, 2k] and the product is SiLU(gate) * up (rounded as fused.silu_mul rounds it) @ W^T.
    With `norm`, x2 is normalised as it is loaded (Norm). With `residual` [rows, n], y = residual + the product
    (the new residual stream) and the result is (y, squares [rows, cfg.grid's output tiles] float32): each row's
    sum of squares of y per output tile, which a later launch's Norm reads."""
    rows, k = x2.shape
    k //= 2 if swiglu else 1
    n = weight.shape[0]
    y = torch.empty(rows, n, dtype=x2.dtype, device=x2.device)
    count = counters(x2.device) if cfg.split_k > 1 else None
    if cfg.split_k > 1 and count is None:
        cfg = GemmConfig(cfg.block_n, cfg.block_k, 1, cfg.warps, cfg.stages)
    grid = cfg.grid(rows, n)
    if cfg.split_k > 1 and grid[0] * grid[2] > COUNTERS:
        raise ValueError(f"{grid[0] * grid[2]} split-K tiles, more than the {COUNTERS} counters")
    per_split = cdiv(cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    ws = torch.empty(cfg.split_k, rows, n, dtype=torch.float32, device=x2.device) if cfg.split_k > 1 else y
    squares = None
    if residual is not None:
        if residual.shape != (rows, n) or not residual.is_contiguous():
            raise ValueError(f"the residual must be a contiguous [{rows}, {n}], not {tuple(residual.shape)}")
        squares = torch.empty(rows, grid[0], dtype=torch.float32, device=x2.device)
    if norm is not None:
        if swiglu or norm.squares.shape[0] != rows or norm.weight.shape != (k,):
            raise ValueError("a Norm needs [rows, T] squares and a [k] weight, and no swiglu")
        squares = norm.squares
    tiles = squares.shape[1] if squares is not None else 1
    chained = pdl.on(x2)
    _skinny_kernel[grid](
        x2,
        weight,
        scale if scale is not None else y,
        y,
        ws,
        count if count is not None else y,
        residual if residual is not None else y,
        squares if squares is not None else ws,
        norm.weight if norm is not None else y,
        norm.eps if norm is not None else 0.0,
        tiles,
        rows,
        n,
        k,
        x2.stride(0),
        per_split,
        BLOCK_M=block_m(rows),
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        SPLIT_K=cfg.split_k,
        EVEN_K=k % cfg.block_k == 0 and per_split * cfg.split_k == k,
        IEEE=x2.dtype == torch.float32,
        SCALED=scale is not None,
        SWIGLU=swiglu,
        ADD=residual is not None,
        NORM=norm is not None,
        BLOCK_T=triton.next_power_of_2(tiles) if norm is not None else 1,
        PDL=chained,
        AHEAD=AHEAD,
        num_warps=cfg.warps,
        num_stages=stages_that_fit(
            cfg, block_m(rows), weight.element_size(), x2.element_size(), swiglu, x2.device
        ),
        **pdl.options(chained),
    )
    return (y, squares) if residual is not None else y


def stages_that_fit(
    cfg: GemmConfig, rows_tile: int, w_bytes: int, x_bytes: int, swiglu: bool, device: torch.device
) -> int:
    """cfg.stages, fewer where that many K steps in flight overflow the SM's shared memory: each holds a weight tile
    and an x tile (two with SWIGLU: gate and up). Measured on an H100: float8 weights with the SwiGLU fold at 64 rows
    asked 272 KB of its 227 KB at 4 stages."""
    per_stage = cfg.block_k * (cfg.block_n * w_bytes + rows_tile * x_bytes * (2 if swiglu else 1))
    limit = _smem(device)
    stages = cfg.stages
    while stages > 1 and stages * per_stage > limit:
        stages -= 1
    return stages


def _smem(device: torch.device) -> int:
    """Shared memory one program may use (Hopper's 227 KB off a GPU, where only the interpreter runs)."""
    if device.type != "cuda":
        return 227 << 10
    return getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 227 << 10)


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def _config(
    rows: int, weight: torch.Tensor, scale: torch.Tensor | None, device: torch.device, add: bool = False
) -> GemmConfig:
    """config_for's tile shape for `rows` rows against this weight on this device (float8 tiles with `scale`); for
    a GEMM that adds into the residual stream (`add`), at most ADD_MAX_SPLIT splits where that is set."""
    cfg = config_for(rows, weight.shape[0], weight.shape[1], _sm_count(device), fp8=scale is not None)
    if add and ADD_MAX_SPLIT and cfg.split_k > ADD_MAX_SPLIT:
        cfg = GemmConfig(cfg.block_n, cfg.block_k, ADD_MAX_SPLIT, cfg.warps, cfg.stages)
    return cfg


def _rows_product(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    swiglu: bool = False,
    residual: torch.Tensor | None = None,
    norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
):
    """x [..., k] @ weight^T through `launch` at config_for's tile shape (float8 tiles when `scale` is given;
    with `swiglu`, x is [gate; up] [..., 2k]); with `residual` [..., n], (residual + the product, its squares
    [..., T]); with `norm` (squares [..., T], weight, eps), x normalised as it is loaded."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    cfg = _config(x2.shape[0], weight, scale, x.device, add=residual is not None)
    lead, n = x.shape[:-1], weight.shape[0]
    if norm is not None:
        squares, nw, eps = norm
        norm = Norm(squares.reshape(-1, squares.shape[-1]).contiguous(), nw, eps)
    if residual is None:
        return launch(x2, weight, cfg, scale, swiglu, norm=norm).view(*lead, n)
    y, squares = launch(x2, weight, cfg, scale, swiglu, residual.reshape(-1, n).contiguous(), norm)
    return y.view(*lead, n), squares.view(*lead, squares.shape[-1])


def _squares_like(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The squares `_rows_product` returns beside a sum (the fake ops' shape)."""
    rows = x.numel() // x.shape[-1]
    cfg = _config(rows, weight, scale, x.device, add=True)
    return x.new_empty(*x.shape[:-1], cfg.grid(rows, weight.shape[0])[0], dtype=torch.float32)


@kernel_op("sdar::add_linear", mutates_args=())
def _add_linear(
    inp: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, residual: torch.Tensor, swiglu: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return _rows_product(inp, weight, scale, swiglu, residual=residual)


@_add_linear.register_fake
def _(inp, weight, scale, residual, swiglu):
    return torch.empty_like(residual), _squares_like(inp, weight, scale)


@kernel_op("sdar::normed_linear", mutates_args=())
def _normed_linear(
    x: torch.Tensor,
    squares: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    return _rows_product(x, weight, scale, norm=(squares, norm_weight, eps))


@_normed_linear.register_fake
def _(x, squares, norm_weight, eps, weight, scale):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@kernel_op("sdar::skinny_linear", mutates_args=())
def _skinny_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _rows_product(x, weight, None)


@_skinny_linear.register_fake
def _(x, weight):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@kernel_op("sdar::fp8_linear", mutates_args=())
def _fp8_linear(x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return _rows_product(x, data, scale)


@_fp8_linear.register_fake
def _(x, data, scale):
    return x.new_empty(*x.shape[:-1], data.shape[0])


@kernel_op("sdar::swiglu_linear", mutates_args=())
def _swiglu_linear(gate_up: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return _rows_product(gate_up, weight, scale, swiglu=True)


@_swiglu_linear.register_fake
def _(gate_up, weight, scale):
    return gate_up.new_empty(*gate_up.shape[:-1], weight.shape[0])


if triton is not None:
    from .fused import silu_mul_tile

    @triton.jit
    def _step(acc, x, w, BLOCK_M: tl.constexpr, IEEE: tl.constexpr):
        """acc + one K step. One row: acc [1, BLOCK_N] += a multiply-and-sum on the CUDA cores. More: acc
        [BLOCK_N, BLOCK_M] += w x^T on the tensor cores, the weight tile as the wide operand (BLOCK_N >= 64 of its
        rows: Hopper's warpgroup MMA) and the few rows of x as the narrow one (a float8 w widened to x's dtype
        first: exact)."""
        if BLOCK_M == 1:
            acc += tl.sum(x.to(tl.float32) * w.to(tl.float32), axis=1)[None, :]
        elif IEEE:
            acc = tl.dot(w.to(x.dtype), tl.trans(x), acc, input_precision="ieee")
        else:
            acc = tl.dot(w.to(x.dtype), tl.trans(x), acc)
        return acc

    @triton.jit
    def _x_tile(ptrs, live, K, MASKED: tl.constexpr, SWIGLU: tl.constexpr, NORM: tl.constexpr, nw_ptrs, rstd):
        """One K step of x; with SWIGLU, SiLU(gate) * up of the [gate; up] row (up K columns on), rounded as
        fused.silu_mul rounds it: the SiLU to x's dtype, then the product (zeros past K stay zero). With NORM, the
        step of RMSNorm(x) rounded as fused.add_rms_norm rounds it: x * rstd * weight in float32, rounded once."""
        if MASKED:
            x = tl.load(ptrs, mask=live, other=0.0)
        else:
            x = tl.load(ptrs)
        if SWIGLU:
            if MASKED:
                up = tl.load(ptrs + K, mask=live, other=0.0).to(tl.float32)
            else:
                up = tl.load(ptrs + K).to(tl.float32)
            x = silu_mul_tile(x.to(tl.float32), up, x.dtype)
        if NORM:
            if MASKED:
                nw = tl.load(nw_ptrs, mask=live, other=0.0)
            else:
                nw = tl.load(nw_ptrs)
            x = normalise(x, rstd, nw)
        return x

    @triton.jit
    def normalise(x, rstd, nw):
        """A tile of RMSNorm(x) rounded as fused.add_rms_norm rounds it: x * rstd * weight in float32, rounded once
        to x's dtype."""
        return (x.to(tl.float32) * rstd * nw.to(tl.float32)).to(x.dtype)

    @triton.jit
    def row_rstd(SQ, rows, T, K, eps, BLOCK_T: tl.constexpr):
        """[len(rows), 1]: 1 / sqrt(mean square + eps) of each of `rows`, its sum of squares the sum of its T tile
        sums in SQ [M, T] (what the GEMM that wrote the row stored beside it: `store_tile`), the mean over K columns."""
        rt = tl.arange(0, BLOCK_T)
        sq = tl.load(SQ + rows[:, None] * T + rt[None, :], mask=rt[None, :] < T, other=0.0)
        return (1.0 / tl.sqrt(tl.sum(sq, axis=1) / K + eps))[:, None]

    @triton.jit
    def _skinny_kernel(
        X,
        W,
        S,  # [N] float32 row scales (SCALED)
        Y,
        WS,
        COUNT,
        R,  # [M, N] the residual stream y is added to (ADD)
        SQ,  # [M, T] float32: per output tile, the sum of squares of y's row there (ADD: written; NORM: read)
        NW,  # [K] the RMSNorm weight x is normalised with (NORM)
        eps,
        T,
        M,
        N,
        K,
        sxm,
        per_split,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr,
        EVEN_K: tl.constexpr,
        IEEE: tl.constexpr,  # float32 operands: full-precision products, as F.linear without TF32
        SCALED: tl.constexpr,  # W is float8: y = S * (x W^T)
        SWIGLU: tl.constexpr,  # X holds [gate; up] (up K columns after gate): x = SiLU(gate) * up
        ADD: tl.constexpr,  # y = R + x W^T (each rounded as the eager add rounds), its squares' sums into SQ
        NORM: tl.constexpr,  # x = RMSNorm(X) with NW, each row's mean square from the T sums of SQ
        BLOCK_T: tl.constexpr,
        PDL: tl.constexpr,
        AHEAD: tl.constexpr = False,  # the next K step's weight tile loaded before the current step's sum
    ):
        pid_n, pid_k, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rn_safe = tl.where(rn < N, rn, 0)  # rows past N read row 0 (never stored): the W loads need no mask
        rm_safe = tl.where(rm < M, rm, 0)
        k0 = pid_k * per_split
        if BLOCK_M == 1:
            acc = tl.zeros((1, BLOCK_N), dtype=tl.float32)
        else:  # y^T: W's rows along the MMA's M
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        # The first step apart: its weight tile is read before the PDL wait (no kernel writes W), its x after.
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        rk = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(W + rn_safe[:, None] * K + rk[None, :], mask=rk[None, :] < K, other=0.0)
        if AHEAD:  # the second step's tile too, before the wait (none past the split)
            w_next = _weight_tile(W, rn_safe, k0, BLOCK_K, per_split, K, BLOCK_K)
        if PDL:
            tl.extra.cuda.gdc_wait()
        live = (rm[:, None] < M) & (rn[None, :] < N)
        out = rm[:, None] * N + rn[None, :]
        res = 0.0
        if ADD:  # the residual tile now, beside the first x tile: not a dependent load in the store's tail
            res = tl.load(R + out, mask=live, other=0.0).to(tl.float32)
        rstd = 0.0
        if NORM:  # the row's sum of squares from the T tile sums its producer wrote (one small load, no pass over x)
            rstd = row_rstd(SQ, rm_safe, T, K, eps, BLOCK_T)
        nw_ptrs = NW + rk[None, :]
        x = _x_tile(
            X + rm_safe[:, None] * sxm + rk[None, :], rk[None, :] < K, K, True, SWIGLU, NORM, nw_ptrs, rstd
        )
        if AHEAD:
            for kk in range(BLOCK_K, per_split, BLOCK_K):
                w_after = _weight_tile(
                    W, rn_safe, k0, kk + BLOCK_K, per_split, K, BLOCK_K
                )  # in flight meanwhile
                acc = _step(acc, x, w, BLOCK_M, IEEE)
                rk = k0 + kk + tl.arange(0, BLOCK_K)
                x_ptrs = X + rm_safe[:, None] * sxm + rk[None, :]
                x = _x_tile(x_ptrs, rk[None, :] < K, K, not EVEN_K, SWIGLU, NORM, NW + rk[None, :], rstd)
                w = w_next
                w_next = w_after
        acc = _step(acc, x, w, BLOCK_M, IEEE)
        if not AHEAD:
            for kk in range(BLOCK_K, per_split, BLOCK_K):
                rk = k0 + kk + tl.arange(0, BLOCK_K)
                x_ptrs = X + rm_safe[:, None] * sxm + rk[None, :]
                w_ptrs = W + rn_safe[:, None] * K + rk[None, :]
                x = _x_tile(x_ptrs, rk[None, :] < K, K, not EVEN_K, SWIGLU, NORM, NW + rk[None, :], rstd)
                if EVEN_K:
                    w = tl.load(w_ptrs)
                else:
                    w = tl.load(w_ptrs, mask=rk[None, :] < K, other=0.0)
                acc = _step(acc, x, w, BLOCK_M, IEEE)
        if BLOCK_M > 1:
            acc = tl.trans(acc)  # [BLOCK_M, BLOCK_N], once per tile
        if SPLIT_K == 1:
            store_tile(acc, Y, S, res, SQ, out, live, rm, rn_safe, pid_n, T, M, SCALED, ADD)
        else:
            tl.store(WS + pid_k * M * N + out, acc, mask=live)
            tile = pid_m * tl.num_programs(0) + pid_n
            arrived = tl.atomic_add(
                COUNT + tile, 1, sem="acq_rel"
            )  # releases the partial, acquires the others'
            if arrived == SPLIT_K - 1:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in range(SPLIT_K):
                    total += tl.load(WS + s * M * N + out, mask=live, other=0.0, cache_modifier=".cg")
                store_tile(total, Y, S, res, SQ, out, live, rm, rn_safe, pid_n, T, M, SCALED, ADD)
                tl.atomic_xchg(COUNT + tile, 0)

    @triton.jit
    def _weight_tile(W, rn_safe, k0, kk, per_split, K, BLOCK_K: tl.constexpr):
        """The [rows, BLOCK_K] weight tile of the split from k0 at its step kk, zeros at and past the split's end
        (per_split) and K's: a step that does not exist loads nothing."""
        rk = k0 + kk + tl.arange(0, BLOCK_K)
        live = (rk[None, :] < K) & (kk + 0 * rn_safe[:, None] < per_split)
        return tl.load(W + rn_safe[:, None] * K + rk[None, :], mask=live, other=0.0)

    @triton.jit
    def store_tile(
        acc, Y, S, res, SQ, out, live, rm, rn_safe, pid_n, T, M, SCALED: tl.constexpr, ADD: tl.constexpr
    ):
        """An output tile's float32 sum, scaled (SCALED), rounded once to Y's dtype and stored; with ADD, added to
        the residual tile `res` (float32, loaded after the wait) first (the product rounded, then the sum, as
        `x + delta` rounds them) and the tile's sum of squares of each row's result (as rounded) stored in SQ's
        column pid_n."""
        if SCALED:
            acc *= tl.load(S + rn_safe)[None, :]
        y = acc.to(Y.dtype.element_ty)
        if ADD:
            y = (y.to(tl.float32) + res).to(Y.dtype.element_ty)
            yf = tl.where(live, y.to(tl.float32), 0.0)
            tl.store(SQ + rm * T + pid_n, tl.sum(yf * yf, axis=1), mask=rm < M)
        tl.store(Y + out, y, mask=live)
