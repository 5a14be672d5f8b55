"""Routed experts of the Qwen3-MoE layer (SDAR-30B-A3B): the router, and the experts in two equivalent forms.

The experts' weights are two stacked tensors, the layout of transformers 5 (`mlp.experts.gate_up_proj` [E, 2I, h]:
gate rows then up rows per expert; `mlp.experts.down_proj` [E, h, I]); loading.py maps the public checkpoints'
per-expert tensors onto them and save_pretrained writes them back per expert.

Four forms compute the same thing:
- gemv (one or two tokens on CUDA, an AR step: GEMV_MAX_TOKENS): no sort at all. Two Triton kernels read the
  chosen experts' weights straight from the router's choice: `_expert_gemv_swiglu`, one program per (pair, tile of
  BLOCK_N intermediate columns), streams that tile of the expert's gate and up rows against the token's row and
  writes silu(g) * u (g and u rounded first, as F.linear then silu_mul round them); `_expert_gemv_down`, one
  program per (token, tile of output columns), streams the tile of each of the token's k experts' down rows
  against its activation and sums the k routed-weighted results in float32 before one rounding (the combine that
  the other forms do with a kernel of their own). Two tokens that chose the same expert read it twice, which at
  one or two tokens costs less than sorting them together (an expert gets at most two rows).
- triton (decoding on CUDA, up to TRITON_MAX_PAIRS pairs): the (token, expert) pairs sorted by expert, then two
  Triton kernels (`_expert_matmul`): one program per expert segment and tile of output columns reads that expert's
  weight tile once for all its rows (16 at a time), gathers its input rows by index (gate/up) or applies SwiGLU on
  load (down), and writes the routed-weighted outputs back in token order. A program whose pair is not the first
  of its expert exits at once, so the grid depends on the number of pairs only and an expert that got no pair is
  never read. Written for the few rows of decoding, where the grouped matmul reaches a fifth of the bandwidth
  (benchmarks/results/h200-moe).
- grouped (larger chunks, and the CPU): the pairs sorted the same way, one grouped matmul over the stacked weights
  for gate/up and one for down (`torch._grouped_mm`, `offs` = where each expert's rows end), the pairs put back in
  order and their weighted outputs summed.
- looped (training, and where neither runs): one matmul per expert that got tokens, with the host reading which
  ones; the reference the other forms are tested against.

The sort of the pairs by expert and each expert's segment end are one Triton kernel on CUDA (`_sort_kernel`, one
program: each pair's place is the number of pairs before it in (expert, pair) order, a stable counting sort) where
the eager ops take five (sort, zeros, scatter_add, cumsum and a copy).

Every Triton kernel here launches with programmatic dependent launch where it runs (pdl.py), as the dense
layer's kernels do, so that a chain of them overlaps each launch with the previous kernel's tail.

In the gemv, triton and grouped forms every shape depends on the number of tokens only and nothing is read back to the
host, so a decode forward of an MoE model is captured in a CUDA graph like a dense one; an expert that gets no pair
has its weights never read (a forward reads the *distinct* experts it routes to).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import pdl
from .fused import kernels_run, silu_mul
from .gemm import FOLD_MAX_ROWS, Norm, Normed, module_weight, normed_linear, normed_runs, project
from .gemm import counters as gemm_counters
from .kernels import DEFAULT_KERNELS, Kernels

try:  # Triton ships with CUDA builds of torch; CPU-only installs use the grouped matmul
    import triton
    import triton.language as tl
except ImportError:
    triton = None

TRITON_MAX_PAIRS = 1024  # more (token, expert) pairs (a prefill) take the grouped matmul
GEMV_MAX_TOKENS = 2  # chunks of at most this many tokens take the gemv form (an expert gets at most 2 rows)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes of `_expert_matmul` (benchmarks/moe.py sweeps them on the 30B-A3B layer)."""

    block_n: int = 64  # output columns per program
    block_k: int = 64
    stages: int = 3
    warps: int = (
        4  # (the H200 sweep, benchmarks/results/h200-moe/layer.json: the best or within 5% at 1-64 rows)
    )


KERNEL = KernelConfig()


@dataclass(frozen=True)
class GemvConfig:
    """Tile sizes of the gemv form's two kernels. The defaults are what `python -m benchmarks.moe --gemv-tiles`
    found fastest at one token of the 30B-A3B shape on an H200 (benchmarks/results/h200-gemv-tiles): 8 x 768 / 2 =
    3,072 programs of gate/up and 2048 / 2 = 1,024 of down, each streaming two weight rows (of each of gate and up,
    or of each of the token's 8 experts) in steps of 1,024 columns. Larger tiles give one token too few programs
    for the GPU's bandwidth (16 / 8 columns: 41% of it against 64%)."""

    block_n: int = 2  # gate/up: intermediate columns per program (the gate's and the up's each)
    down_block_n: int = 2  # down: output columns per program
    block_k: int = 1024
    stages: int = 2
    warps: int = 4


GEMV = GemvConfig()
# The down gemv's first weight tiles asked for before its PDL wait: SDAR_MOE_EARLY=n (1, 2, 4 or 8) slots of the
# token's k (0, the default: none; off until measured). The expert ids were written by the routing, two kernels back,
# which finished before the gate/up gemv's programs passed their own wait, and every one of them had passed it before
# this kernel could launch; so each program loads the ids and its first n slots' tiles while the gate/up gemv still
# runs (one K step: I <= block_k), and those n products are summed in one reduction (within float32 rounding of the
# loop's sum, not its bits). The Hopper build of the 30B-A3B's down takes 32 registers a thread with 0-2 slots early,
# 48 with 4 (10 programs an SM fit: its 1,024 programs still one wave) and 122 with all 8 (4 fit: two waves;
# python -m benchmarks.registers). The H200's profile has the down gemv at 12.8 us a layer against a 5.2 us floor
# (benchmarks/NOTES.md, "The expert down gemv's first tiles before its wait").
_early = os.environ.get("SDAR_MOE_EARLY", "0")
if _early not in ("0", "1", "2", "4", "8"):
    raise ValueError(
        f"SDAR_MOE_EARLY={_early!r}: give the slots of the down gemv loaded early, 0, 1, 2, 4 or 8"
    )
EARLY_DOWN = int(_early)


def grouped_mm_available(x: torch.Tensor) -> bool:
    """Whether torch's grouped matmul runs on `x`'s device and dtype without reading its offsets on the host: the
    CPU build, and Hopper-or-newer GPUs in bfloat16 (the CUTLASS kernel; elsewhere torch falls back to a loop that
    reads them)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cpu":
        return True
    return x.is_cuda and x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0)


def triton_available(x: torch.Tensor) -> bool:
    """Whether the Triton expert kernels run on `x`: a CUDA tensor in a 16-bit float type."""
    return triton is not None and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)


def sort_pairs(chosen: torch.Tensor, num_experts: int, fuse: bool = True):
    """The N*k (token, expert) pairs of chosen [N, k] grouped by expert, on the device with no host read:
    (expert of each sorted pair [P], token-major pair index of each [P], where each expert's rows end [E]).
    With `fuse`, one kernel where it runs (CUDA with Triton, at most TRITON_MAX_PAIRS pairs)."""
    if fuse and kernels_run(chosen) and chosen.numel() <= TRITON_MAX_PAIRS:
        return fused_sort_pairs(chosen, num_experts)
    expert = chosen.flatten()  # [P], P = N * k pairs, token-major
    sorted_expert, order = expert.sort(stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=chosen.device)
    counts.scatter_add_(0, expert, torch.ones_like(expert))  # (bincount would read its maximum on the host)
    return sorted_expert, order, counts.cumsum(0)


def fused_sort_pairs(chosen: torch.Tensor, num_experts: int):
    """`sort_pairs` as one kernel (any device Triton runs on: its interpreter takes CPU tensors)."""
    chosen = chosen.contiguous()
    P = chosen.numel()
    sorted_expert = torch.empty(P, dtype=chosen.dtype, device=chosen.device)
    order = torch.empty(P, dtype=torch.int64, device=chosen.device)
    ends = torch.empty(num_experts, dtype=torch.int64, device=chosen.device)
    chained = pdl.on(chosen)
    _sort_kernel[(1,)](
        chosen,
        sorted_expert,
        order,
        ends,
        P,
        num_experts,
        P_POW2=triton.next_power_of_2(P),
        E_POW2=triton.next_power_of_2(num_experts),
        CHUNK=16,
        PDL=chained,
        num_warps=8,
        **pdl.options(chained),
    )
    return sorted_expert, order, ends


def route(logits: torch.Tensor, top_k: int, norm_topk_prob: bool, dtype: torch.dtype, fuse: bool = True):
    """Qwen3-MoE routing: softmax over the experts in float32, the top k, optionally renormalised.
    logits [N, E] -> (weights [N, k] in `dtype`, chosen expert ids [N, k]).

    At inference on CUDA one Triton kernel does it all (`_route_kernel`, one program per token: the softmax, k
    rounds of "take the largest, mask it", the renormalisation, the cast), where the eager ops take six kernels."""
    if fuse and kernels_run(logits) and top_k <= logits.shape[-1]:
        return fused_route(logits, top_k, norm_topk_prob, dtype)
    probs = logits.float().softmax(-1)
    weights, chosen = probs.topk(top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights.to(dtype), chosen


def _routing_outputs(n: int, top_k: int, dtype: torch.dtype, device: torch.device):
    """The routing kernels' outputs for n tokens: weights [n, k] in `dtype`, chosen expert ids [n, k]."""
    return torch.empty(n, top_k, dtype=dtype, device=device), torch.empty(
        n, top_k, dtype=torch.int64, device=device
    )


def fused_route(logits: torch.Tensor, top_k: int, norm_topk_prob: bool, dtype: torch.dtype):
    """`route` as one kernel (any device Triton runs on: its interpreter takes CPU tensors)."""
    N, E = logits.shape
    weights, chosen = _routing_outputs(N, top_k, dtype, logits.device)
    chained = pdl.on(logits)
    _route_kernel[(N,)](
        logits,
        weights,
        chosen,
        logits.stride(0),
        E,
        TOP_K=top_k,
        K_POW2=triton.next_power_of_2(top_k),
        NORM=norm_topk_prob,
        BLOCK_E=triton.next_power_of_2(E),
        PDL=chained,
        num_warps=1,
        **pdl.options(chained),
    )
    return weights, chosen


# The router's one-token GEMM and the routing in one kernel (Kernels.gate_route): the [E, h] weight split along h
# among up to GATE_SPLITS programs, each reading its [E, h / splits] slice in steps of GATE_BLOCK_K columns (16 KB a
# program for the 30B-A3B's 128 x 2048: as many programs, and as many bytes each, as the skinny GEMM gives it).
GATE_SPLITS = 32
GATE_BLOCK_K = 64
GATE_MAX_EXPERTS = 256  # the whole [E] row of logits in one program's registers


def gate_splits(h: int, block_k: int = GATE_BLOCK_K) -> int:
    """The programs gate_route splits h columns among: the most, at most GATE_SPLITS, that take whole steps each."""
    steps = h // block_k
    return max(s for s in range(1, min(GATE_SPLITS, steps) + 1) if steps % s == 0)


def gate_route_runs(x: Normed, gate: nn.Module) -> bool:
    """Whether `gate_route` takes the router's product of this one-token Normed: `normed_runs` for a bias-free
    bf16/fp16 nn.Linear of at most GATE_MAX_EXPERTS rows whose columns are whole GATE_BLOCK_K steps."""
    weight = getattr(gate, "weight", None)
    return (
        isinstance(gate, nn.Linear)
        and gate.bias is None
        and weight.shape[0] <= GATE_MAX_EXPERTS
        and weight.shape[1] % GATE_BLOCK_K == 0
        and x.x.numel() == weight.shape[1]
        and weight.dtype in (torch.bfloat16, torch.float16)
        and normed_runs(x, weight)
    )


def gate_route(
    x: Normed, weight: torch.Tensor, top_k: int, norm_topk_prob: bool, block_k: int = GATE_BLOCK_K
):
    """`route` of the router's product of one normalised token, in one launch where `gate_route_runs`: each
    program normalises its slice of x as it loads it (gemm.row_rstd, gemm.normalise) and stores its float32 partial
    logits; the last to arrive sums them in split order, rounds them to x's dtype as the GEMM's output is rounded,
    and takes the top k as `_route_kernel` does (top_k_of). -> (weights [1, k] in x's dtype, chosen [1, k]).
    (Triton's interpreter runs it on CPU tensors of any float dtype; `block_k` divides h.)"""
    E, h = weight.shape
    xs = x.x.reshape(1, h)
    count = gemm_counters(xs.device)
    if count is None:  # a graph captured before the counters exist: the GEMM, then the routing kernel
        return route(normed_linear(x, weight).reshape(1, E), top_k, norm_topk_prob, xs.dtype)
    squares = x.squares.reshape(1, -1).contiguous()
    weights, chosen = _routing_outputs(1, top_k, xs.dtype, xs.device)
    splits, block_e = gate_splits(h, block_k), triton.next_power_of_2(E)
    partial = torch.empty(splits, block_e, dtype=torch.float32, device=xs.device)
    chained = pdl.on(xs)
    _gate_route_kernel[(splits,)](
        xs,
        weight,
        squares,
        x.norm.weight,
        float(x.norm.eps),
        squares.shape[1],
        partial,
        count,
        weights,
        chosen,
        h,
        E,
        h // splits,
        TOP_K=top_k,
        K_POW2=triton.next_power_of_2(top_k),
        NORM_TOPK=norm_topk_prob,
        BLOCK_E=block_e,
        BLOCK_K=block_k,
        SPLIT_K=splits,
        BLOCK_T=triton.next_power_of_2(squares.shape[1]),
        PDL=chained,
        num_warps=4,
        **pdl.options(chained),
    )
    return weights, chosen


class Experts(nn.Module):
    """E SwiGLU experts as two stacked weights: expert e is down_proj[e] @ (silu(g) * u), [g; u] = gate_up_proj[e] @ x.
    Under no_grad a static-shape form runs where one does (triton_available, then grouped_mm_available), unless
    the caller's Kernels turns `grouped_experts` off; else the loop."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.num_experts, self.intermediate = num_experts, intermediate
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, intermediate))

    def forward(
        self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, kernels: Kernels = DEFAULT_KERNELS
    ) -> torch.Tensor:
        """x [N, h], chosen / weights [N, k] -> sum over the k slots of weight * expert(x): [N, h]."""
        if kernels.grouped_experts and not torch.is_grad_enabled():
            if triton_available(x):
                if kernels.expert_gemv and x.shape[0] <= GEMV_MAX_TOKENS:
                    return self.gemv_forward(x, chosen, weights)
                if chosen.numel() <= TRITON_MAX_PAIRS or not grouped_mm_available(x):
                    return self.triton_forward(x, chosen, weights, fuse_sort=kernels.routing)
            if grouped_mm_available(x):
                return self.grouped_forward(x, chosen, weights, kernels.silu_mul)
        return self.looped_forward(x, chosen, weights, kernels.silu_mul)

    def gemv_forward(
        self,
        x: torch.Tensor,
        chosen: torch.Tensor,
        weights: torch.Tensor,
        config: GemvConfig | None = None,
        norm: Norm | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The gemv form (module docstring): two kernels, no sort; any number of tokens is computed right, few
        are fast. With `norm` (gemm.Norm: x's rows' tile sums of squares, the RMSNorm's weight and eps), the
        gate/up kernel normalises x as it loads it, rounded as fused.add_rms_norm rounds. With `residual` [N, h], the
        down kernel adds its output to it as gemm.add_linear does and the result is (the sum, its squares [N, T]:
        each row's sum of squares over each of the T = h / down_block_n output tiles), what a gemm.Normed of the
        sum carries to the next layer's GEMM."""
        c = config or GEMV
        N, k = chosen.shape
        h, I = x.shape[1], self.intermediate
        x, chosen, weights = x.contiguous(), chosen.contiguous(), weights.contiguous()
        gate_up, down = self.gate_up_proj, self.down_proj
        act = torch.empty(N * k, I, device=x.device, dtype=x.dtype)  # silu(g) * u per token-major pair
        chained = pdl.on(x)
        launch = dict(  # both kernels' tiles along K and launch options
            TOP_K=k,
            BLOCK_K=c.block_k,
            PDL=chained,
            num_warps=c.warps,
            num_stages=c.stages,
            **pdl.options(chained),
        )
        if norm is not None and (norm.squares.shape[0] != N or norm.weight.shape != (h,)):
            raise ValueError(f"a Norm of the gemv form needs [{N}, T] squares and a [{h}] weight")
        # the norm's squares, weight, eps and tile count (unused stand-ins without one)
        squares_in, nw, eps = (
            (norm.squares.contiguous(), norm.weight, norm.eps) if norm is not None else (x, x, 0.0)
        )
        tiles_in = squares_in.shape[1] if norm is not None else 1
        _expert_gemv_swiglu[(N * k, triton.cdiv(I, c.block_n))](
            x,
            chosen,
            gate_up,
            act,
            squares_in,
            nw,
            eps,
            tiles_in,
            I,
            h,
            x.stride(0),
            gate_up.stride(0),
            gate_up.stride(1),
            BLOCK_N=c.block_n,
            NORM=norm is not None,
            BLOCK_T=triton.next_power_of_2(tiles_in),
            **launch,
        )
        out = torch.empty(N, h, device=x.device, dtype=x.dtype)
        tiles = triton.cdiv(h, c.down_block_n)
        if residual is not None and (residual.shape != (N, h) or not residual.is_contiguous()):
            raise ValueError(f"the residual must be a contiguous [{N}, {h}], not {tuple(residual.shape)}")
        squares = (
            torch.empty(N, tiles, device=x.device, dtype=torch.float32) if residual is not None else None
        )
        _expert_gemv_down[(N, tiles)](
            act,
            chosen,
            weights,
            down,
            out,
            residual if residual is not None else out,
            squares if squares is not None else out,
            h,
            I,
            down.stride(0),
            down.stride(1),
            BLOCK_N=c.down_block_n,
            ADD=residual is not None,
            EARLY=EARLY_DOWN if I <= c.block_k and EARLY_DOWN <= k else 0,
            **launch,
        )
        return (out, squares) if residual is not None else out

    def triton_forward(
        self,
        x: torch.Tensor,
        chosen: torch.Tensor,
        weights: torch.Tensor,
        config: KernelConfig | None = None,
        fuse_sort: bool = True,
    ) -> torch.Tensor:
        c = config or KERNEL
        N, k = chosen.shape
        P, h, I = N * k, x.shape[1], self.intermediate
        sorted_expert, order, ends = sort_pairs(chosen, self.num_experts, fuse_sort)
        x = x.contiguous()
        act = torch.empty(P, 2 * I, device=x.device, dtype=x.dtype)  # [g; u] per sorted pair
        out = torch.empty(P, h, device=x.device, dtype=x.dtype)  # weighted expert outputs, token-major pairs
        chained = pdl.on(x)
        for src, w, dst, n, kk, down in (
            (x, self.gate_up_proj, act, 2 * I, h, False),
            (act, self.down_proj, out, h, I, True),
        ):
            _expert_matmul[(P, triton.cdiv(n, c.block_n))](
                src,
                order,
                sorted_expert,
                ends,
                w,
                weights.reshape(-1),
                dst,
                n,
                kk,
                src.stride(0),
                w.stride(0),
                w.stride(1),
                dst.stride(0),
                TOP_K=k,
                DOWN=down,
                BLOCK_M=16,
                BLOCK_N=c.block_n,
                BLOCK_K=c.block_k,
                PDL=chained,
                num_warps=c.warps,
                num_stages=c.stages,
                **pdl.options(chained),
            )
        return out.view(N, k, h).sum(1)

    def grouped_forward(
        self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, fuse: bool = True
    ) -> torch.Tensor:
        N, k = chosen.shape
        _, order, ends = sort_pairs(chosen, self.num_experts)
        ends = ends.to(torch.int32)  # the grouped matmul's offsets
        rows = x[order // k]  # [P, h]
        act = silu_mul(torch._grouped_mm(rows, self.gate_up_proj.transpose(1, 2), offs=ends), fuse)  # [P, I]
        out = torch._grouped_mm(act, self.down_proj.transpose(1, 2), offs=ends)  # [P, h]
        out = torch.empty_like(out).index_copy_(0, order, out)  # back to token-major pairs
        return (out.view(N, k, -1) * weights[..., None]).sum(1)

    def looped_forward(
        self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, fuse: bool = True
    ) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():  # only the experts that got tokens (the host reads which)
            token, slot = (chosen == e).nonzero(as_tuple=True)
            y = F.linear(silu_mul(F.linear(x[token], self.gate_up_proj[e]), fuse), self.down_proj[e])
            out.index_add_(0, token, y * weights[token, slot, None])
        return out


class SparseMoE(nn.Module):
    """Top-k routed experts (Qwen3-MoE): `gate` is the router, `experts` the stacked experts."""

    def __init__(
        self, num_experts: int, top_k: int, norm_topk_prob: bool, hidden: int, intermediate: int
    ) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = Experts(num_experts, hidden, intermediate)

    def forward(self, x: torch.Tensor, kernels: Kernels = DEFAULT_KERNELS) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, h]
        logits = project(self.gate, x, kernels.skinny_gemm)  # [N, E]; one row: the skinny GEMM (gemm.py)
        weights, chosen = route(
            logits, self.top_k, self.norm_topk_prob, x.dtype, kernels.routing
        )  # [N, k] each
        return self.experts(x, chosen, weights, kernels).view(shape)

    def fold_runs(self, x: Normed, residual: torch.Tensor, kernels: Kernels) -> bool:
        """Whether `folded` takes this layer's input (Kernels.expert_fold): one token (gemm.FOLD_MAX_ROWS, as the
        dense layer's fold), the router's GEMM normalises it as it loads it (gemm.normed_runs), the gemv form runs
        (CUDA, Triton, a 16-bit dtype, no gradient, its switches on), and the residual is a [1, 1, h] like x."""
        h = x.x.shape[-1]
        return (
            kernels.expert_fold
            and kernels.grouped_experts
            and kernels.expert_gemv
            and x.x.numel() == h * FOLD_MAX_ROWS
            and self.gate.bias is None
            and kernels.skinny_gemm
            and normed_runs(x, module_weight(self.gate))
            and triton_available(x.x)
            and not torch.is_grad_enabled()
            and residual.shape == x.x.shape
            and residual.dtype == x.x.dtype
            and residual.device == x.x.device
        )

    def folded(
        self, x: Normed, residual: torch.Tensor, kernels: Kernels
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual + this layer's output, its squares), where `fold_runs`: the post-attention RMSNorm formed by
        the router's GEMM and the gate/up gemv as each loads x, the add by the down gemv as it stores (no norm kernel
        before the layer, no add + norm kernel after it: two kernels fewer a layer)."""
        shape, h = x.x.shape, x.x.shape[-1]
        if kernels.gate_route and kernels.routing and gate_route_runs(x, self.gate):
            weights, chosen = gate_route(x, self.gate.weight, self.top_k, self.norm_topk_prob)
        else:
            logits = project(self.gate, x)  # the router normalises x as it loads it (gemm.normed_linear)
            weights, chosen = route(
                logits.reshape(-1, logits.shape[-1]),
                self.top_k,
                self.norm_topk_prob,
                x.x.dtype,
                kernels.routing,
            )
        squares = x.squares.reshape(-1, x.squares.shape[-1])
        total, out_squares = self.experts.gemv_forward(
            x.x.reshape(-1, h),
            chosen,
            weights,
            norm=Norm(squares, x.norm.weight, float(x.norm.eps)),
            residual=residual.reshape(-1, h).contiguous(),
        )
        return total.view(shape), out_squares.view(*shape[:-1], out_squares.shape[-1])


if triton is not None:

    @triton.jit
    def _route_kernel(
        LOGITS,
        W,
        C,
        stride,
        n_experts,
        TOP_K: tl.constexpr,
        K_POW2: tl.constexpr,
        NORM: tl.constexpr,
        BLOCK_E: tl.constexpr,
        PDL: tl.constexpr,
    ):
        pdl.wait_and_release(PDL)
        row = tl.program_id(0)
        e = tl.arange(0, BLOCK_E)
        z = tl.load(LOGITS + row * stride + e, mask=e < n_experts, other=float("-inf")).to(tl.float32)
        top_k_of(z, e, n_experts, W, C, row, TOP_K, K_POW2, NORM)

    @triton.jit
    def top_k_of(z, e, n_experts, W, C, row, TOP_K: tl.constexpr, K_POW2: tl.constexpr, NORM: tl.constexpr):
        """Row `row` of (W, C): the top k of softmax(z) over the experts e < n_experts (z [BLOCK_E] float32, -inf past
        them), in descending order as torch's topk returns them, renormalised with NORM."""
        p = tl.exp(z - tl.max(z, 0))
        p = p / tl.sum(p, 0)  # the softmax; padding lanes are 0
        p = tl.where(e < n_experts, p, -1.0)  # never taken
        slot = tl.arange(0, K_POW2)
        weights = tl.zeros([K_POW2], tl.float32)
        chosen = tl.zeros([K_POW2], tl.int64)
        for j in tl.static_range(TOP_K):  # the largest left, in descending order as topk returns them
            best = tl.max(p, 0)
            pick = tl.argmax(p, 0)
            weights = tl.where(slot == j, best, weights)
            chosen = tl.where(slot == j, pick.to(tl.int64), chosen)
            p = tl.where(e == pick, -1.0, p)
        if NORM:
            weights = weights / tl.sum(weights, 0)
        keep = slot < TOP_K
        tl.store(W + row * TOP_K + slot, weights.to(W.dtype.element_ty), mask=keep)
        tl.store(C + row * TOP_K + slot, chosen, mask=keep)

    @triton.jit
    def _gate_route_kernel(
        X,  # [1, K] the residual stream's token, normalised as it is loaded
        W,  # [E, K] the router's weight
        SQ,  # [1, T] float32: X's sums of squares per tile of the GEMM that wrote it
        NW,  # [K] the RMSNorm's weight
        eps,
        T,
        PARTIAL,  # [SPLIT_K, BLOCK_E] float32 workspace
        COUNT,  # [1+] int32 counters, zero between launches (gemm's)
        WEIGHTS,  # [1, TOP_K] out
        CHOSEN,  # [1, TOP_K] out
        K,
        n_experts,
        per_split,
        TOP_K: tl.constexpr,
        K_POW2: tl.constexpr,
        NORM_TOPK: tl.constexpr,
        BLOCK_E: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SPLIT_K: tl.constexpr,
        BLOCK_T: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """One split of the router's logits for one token; the last split to arrive routes (gate_route)."""
        pid = tl.program_id(0)
        e = tl.arange(0, BLOCK_E)
        rows = tl.where(e < n_experts, e, 0)[:, None]  # rows past E read row 0 (their logits are never taken)
        k0 = pid * per_split
        # as the skinny GEMM: release the next kernel, read the first weight tile (no kernel writes W), then wait
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        rk = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(W + rows * K + rk[None, :])
        if PDL:
            tl.extra.cuda.gdc_wait()
        rstd = row_rstd(SQ, tl.zeros([1], tl.int64), T, K, eps, BLOCK_T)  # [1, 1]
        acc = tl.zeros([BLOCK_E], tl.float32)
        for kk in range(0, per_split, BLOCK_K):
            rk = k0 + kk + tl.arange(0, BLOCK_K)
            if kk > 0:
                w = tl.load(W + rows * K + rk[None, :])
            x = normalise(tl.load(X + rk)[None, :], rstd, tl.load(NW + rk)[None, :])
            acc += tl.sum(x.to(tl.float32) * w.to(tl.float32), axis=1)
        tl.store(PARTIAL + pid * BLOCK_E + e, acc)
        arrived = tl.atomic_add(COUNT, 1, sem="acq_rel")  # releases the partial, acquires the others'
        if arrived == SPLIT_K - 1:
            total = tl.zeros([BLOCK_E], tl.float32)
            for s in range(SPLIT_K):
                total += tl.load(PARTIAL + s * BLOCK_E + e, cache_modifier=".cg")
            z = total.to(X.dtype.element_ty).to(tl.float32)  # the logits as the GEMM would round them
            z = tl.where(e < n_experts, z, float("-inf"))
            top_k_of(z, e, n_experts, WEIGHTS, CHOSEN, 0, TOP_K, K_POW2, NORM_TOPK)
            tl.atomic_xchg(COUNT, 0)

    @triton.jit
    def _expert_matmul(
        x_ptr,
        order_ptr,
        expert_ptr,
        ends_ptr,
        w_ptr,
        scale_ptr,
        out_ptr,
        N,
        K,
        stride_x,
        stride_we,
        stride_wn,
        stride_out,
        TOP_K: tl.constexpr,
        DOWN: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """out[rows, cols] = a[rows] @ w[e, cols].T for the rows of one expert segment of the sorted pairs.
        gate/up (DOWN false): a = x[order // TOP_K], out rows in sorted order.
        down (DOWN true): a = silu(g) * u of x = [g; u] (K columns each), out rows at order (token-major) scaled
        by the pair's routing weight."""
        pdl.wait_and_release(PDL)
        p = tl.program_id(0)
        e = tl.load(expert_ptr + p)
        prev = tl.load(expert_ptr + p - 1, mask=p > 0, other=-1)
        if e != prev:  # the first pair of its expert owns the segment; the others exit
            end = tl.load(ends_ptr + e).to(tl.int32)
            cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            w_rows = w_ptr + e.to(tl.int64) * stride_we + cols[:, None].to(tl.int64) * stride_wn
            for m0 in range(p, end, BLOCK_M):
                rows = m0 + tl.arange(0, BLOCK_M)
                live = rows < end
                pair = tl.load(order_ptr + rows, mask=live, other=0)
                if DOWN:
                    src = rows
                else:
                    src = pair // TOP_K
                a_rows = x_ptr + src[:, None].to(tl.int64) * stride_x
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for k0 in range(0, K, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    a_ok = live[:, None] & (ks[None, :] < K)
                    if DOWN:
                        g = tl.load(a_rows + ks[None, :], mask=a_ok, other=0.0).to(tl.float32)
                        u = tl.load(a_rows + K + ks[None, :], mask=a_ok, other=0.0).to(tl.float32)
                        a = (g * tl.sigmoid(g) * u).to(w_ptr.dtype.element_ty)
                    else:
                        a = tl.load(a_rows + ks[None, :], mask=a_ok, other=0.0)
                    w = tl.load(w_rows + ks[None, :], mask=col_ok[:, None] & (ks[None, :] < K), other=0.0)
                    acc = tl.dot(a, tl.trans(w), acc)
                if DOWN:
                    acc = acc * tl.load(scale_ptr + pair, mask=live, other=0.0).to(tl.float32)[:, None]
                    dst = pair
                else:
                    dst = rows
                tl.store(
                    out_ptr + dst[:, None].to(tl.int64) * stride_out + cols[None, :],
                    acc.to(out_ptr.dtype.element_ty),
                    mask=live[:, None] & col_ok[None, :],
                )

    @triton.jit
    def _sort_kernel(
        CHOSEN,
        SORTED,
        ORDER,
        ENDS,
        P,
        E,
        P_POW2: tl.constexpr,
        E_POW2: tl.constexpr,
        CHUNK: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """One program: pair i goes to place #{j : (e_j, j) < (e_i, i)} (a stable sort by expert); expert x's rows
        end at #{j : e_j <= x}. The pairs are compared CHUNK at a time against all of them."""
        pdl.wait_and_release(PDL)
        i = tl.arange(0, P_POW2)
        ei = tl.load(CHOSEN + i, mask=i < P, other=E)
        rank = tl.zeros([P_POW2], tl.int32)
        x = tl.arange(0, E_POW2)
        ends = tl.zeros([E_POW2], tl.int32)
        for j0 in range(0, P, CHUNK):
            j = j0 + tl.arange(0, CHUNK)
            live = j < P
            ej = tl.load(CHOSEN + j, mask=live, other=E)
            before = (ej[None, :] < ei[:, None]) | ((ej[None, :] == ei[:, None]) & (j[None, :] < i[:, None]))
            rank += tl.sum((before & live[None, :]).to(tl.int32), axis=1)
            ends += tl.sum(((ej[None, :] <= x[:, None]) & live[None, :]).to(tl.int32), axis=1)
        tl.store(SORTED + rank, ei, mask=i < P)
        tl.store(ORDER + rank, i.to(tl.int64), mask=i < P)
        tl.store(ENDS + x, ends.to(tl.int64), mask=x < E)

    from .gemm import normalise, row_rstd, store_tile

    @triton.jit
    def _expert_gemv_swiglu(
        X,
        CHOSEN,
        W,
        ACT,
        SQ,  # [N, T] float32: each row of X's sums of squares per tile of the GEMM that wrote it (NORM)
        NW,  # [K] the RMSNorm weight X is normalised with (NORM)
        eps,
        T,
        I,
        K,
        stride_x,
        stride_we,
        stride_wn,
        TOP_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        NORM: tl.constexpr,  # x = RMSNorm(X[t]) formed as it is loaded (gemm's normalise, row_rstd)
        BLOCK_T: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """ACT[p, cols] = silu(g) * u, [g; u] = W[e_p] @ x[p // TOP_K] at the gate rows `cols` and the up rows
        I + cols (each rounded to the dtype first, as F.linear rounds)."""
        pdl.wait_and_release(PDL)
        p = tl.program_id(0)
        e = tl.load(CHOSEN + p).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.where(cols < I, cols, 0)  # columns past I read row 0 (never stored): no column mask
        gate = W + e * stride_we + cols[:, None].to(tl.int64) * stride_wn
        up = gate + I * stride_wn
        row = X + (p // TOP_K).to(tl.int64) * stride_x
        rstd = 0.0
        if NORM:
            rstd = row_rstd(SQ, tl.zeros([1], tl.int64) + p // TOP_K, T, K, eps, BLOCK_T)  # [1, 1]
        g = tl.zeros((BLOCK_N,), dtype=tl.float32)
        u = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            ok = ks < K
            a = tl.load(row + ks, mask=ok, other=0.0)[None, :]
            if NORM:
                a = normalise(a, rstd, tl.load(NW + ks, mask=ok, other=0.0)[None, :])
            a = a.to(tl.float32)
            wg = tl.load(gate + ks[None, :], mask=ok[None, :], other=0.0)
            wu = tl.load(up + ks[None, :], mask=ok[None, :], other=0.0)
            g += tl.sum(wg.to(tl.float32) * a, axis=1)
            u += tl.sum(wu.to(tl.float32) * a, axis=1)
        dtype = ACT.dtype.element_ty
        g = g.to(dtype).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32) * u.to(dtype).to(tl.float32)
        out = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(ACT + p.to(tl.int64) * I + out, act.to(dtype), mask=out < I)

    @triton.jit
    def _expert_gemv_down(
        ACT,
        CHOSEN,
        SCALE,
        W,
        OUT,
        R,  # [tokens, N] the residual stream OUT is added to (ADD)
        SQ,  # [tokens, T] float32: each row's sum of squares of OUT per program's columns (ADD: written)
        N,
        K,
        stride_we,
        stride_wn,
        TOP_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        ADD: tl.constexpr,  # OUT = R + the sum, each rounded as gemm.add_linear rounds (gemm's store_tile)
        PDL: tl.constexpr,
        EARLY: tl.constexpr = 0,  # the first EARLY slots' weight tiles loaded before the PDL wait (EARLY_DOWN)
    ):
        """OUT[t, cols] = sum over the token's TOP_K slots s of SCALE[t, s] * W[e_ts][cols] @ ACT[t * TOP_K + s],
        in float32, rounded once."""
        t = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        safe = tl.where(cols < N, cols, 0)
        total = tl.zeros((BLOCK_N,), dtype=tl.float32)
        steps = tl.cdiv(K, BLOCK_K)
        first = 0  # the slots summed before the loop
        if EARLY > 0:  # one K step (K <= BLOCK_K): the first EARLY slots' tiles before the wait
            pairs0 = t * TOP_K + tl.arange(0, EARLY)
            ks0 = tl.arange(0, BLOCK_K)
            ok0 = ks0 < K
            # the ids through L2 (.cg): this SM's L1 may hold the previous forward's
            e0 = tl.load(CHOSEN + pairs0, cache_modifier=".cg").to(tl.int64)
            w0 = tl.load(
                W
                + e0[:, None, None] * stride_we
                + safe[None, :, None].to(tl.int64) * stride_wn
                + ks0[None, None, :],
                mask=ok0[None, None, :],
                other=0.0,
            )  # [EARLY, BLOCK_N, BLOCK_K]
            pdl.wait_and_release(PDL)
            scale0 = tl.load(SCALE + pairs0).to(tl.float32)
            a0 = tl.load(ACT + pairs0[:, None].to(tl.int64) * K + ks0[None, :], mask=ok0[None, :], other=0.0)
            products = tl.sum(w0.to(tl.float32) * a0.to(tl.float32)[:, None, :], axis=2)  # [EARLY, BLOCK_N]
            total = tl.sum(products * scale0[:, None], axis=0)
            first = EARLY
        else:
            pdl.wait_and_release(PDL)
        for it in range(
            first * steps, TOP_K * steps
        ):  # one flat loop over (slot, K step): the loads pipeline across slots
            pair = t * TOP_K + it // steps
            ks = (it % steps) * BLOCK_K + tl.arange(0, BLOCK_K)
            ok = ks < K
            e = tl.load(CHOSEN + pair).to(tl.int64)
            scale = tl.load(SCALE + pair).to(tl.float32)
            w = tl.load(
                W + e * stride_we + safe[:, None].to(tl.int64) * stride_wn + ks[None, :],
                mask=ok[None, :],
                other=0.0,
            )
            a = tl.load(ACT + pair.to(tl.int64) * K + ks, mask=ok, other=0.0).to(tl.float32)
            total += scale * tl.sum(w.to(tl.float32) * a[None, :], axis=1)
        if ADD:
            out = (t.to(tl.int64) * N + cols)[None, :]
            live = (cols < N)[None, :]
            res = tl.load(R + out, mask=live, other=0.0).to(tl.float32)
            rows = tl.zeros([1], tl.int64) + t
            tiles = tl.num_programs(1)
            store_tile(
                total[None, :],
                OUT,
                SCALE,
                res,
                SQ,
                out,
                live,
                rows,
                safe,
                tl.program_id(1),
                tiles,
                t + 1,
                False,
                True,
            )
        else:
            tl.store(OUT + t.to(tl.int64) * N + cols, total.to(OUT.dtype.element_ty), mask=cols < N)
