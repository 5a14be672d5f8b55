"""A one-token MLP in one persistent launch: RMSNorm, [gate; up], SwiGLU, down and the residual add.

With the norm fold (kernels.Kernels.norm_fold) a batch-1 step's MLP is two skinny GEMMs (gemm.py): [gate; up] that
normalises x as it loads it, then down that forms SiLU(gate) * up as it loads and adds into the residual stream. The
second cannot start its reduction before the first has finished: under PDL its programs load one weight tile each and
then wait for the whole first grid, so the memory is idle while the last wave of [gate; up] drains and down's programs
ramp up (benchmarks/NOTES.md: on the 1.7B, gate_up and down take 27 us a layer on an H200 against an 18.5 us floor).

`mlp` runs both in one grid of programs that are all resident at once (`fitting_programs`: the SMs times what fits
on one, at most PROGRAMS_PER_SM), each taking work units in turn, so the dependency is per slice of K, not per grid:
- phase 1, [gate; up]: units of BLOCK_N rows of the fused weight, ordered by the slice of the intermediate that
  down's split s reads (`range` s: its gate tiles, then its up tiles); a program that finishes a unit stores its
  rows and counts it in on the range's counter (release);
- phase 2, down: units (split s, output tile), all of split 0 first, dealt first to the programs that had one
  [gate; up] unit fewer (free the earliest); a program loads its unit's first weight tile, waits until range s is
  complete (acquire), then sums its slice; the last of an output tile's splits to arrive adds
  the splits in split order, adds the residual and stores the sum and its squares per tile (gemm.store_tile), as the
  two-kernel path does. Split 0's reduction starts while [gate; up] still streams the later ranges.
The last program to finish resets the counters. Every rounding is the two kernels' (the same tile shapes, steps and
order): the result equals theirs bit for bit (tests/test_persistent.py checks it on a GPU, and under the interpreter
against float64 math and the two GEMMs, with one program doing every unit and with several at once, each in a thread).

The programs wait on each other, so all must be resident: `fitting_programs` asks the compiled kernel's registers and
shared memory how many fit on an SM. A kernel launched after this one under PDL starts only once every program of this
one has started, so it cannot take their places.
"""

from __future__ import annotations

import os

import torch

from . import gemm, pdl
from .gemm import (
    FOLD_MAX_ROWS,
    GemmConfig,
    Normed,
    _config,
    _sm_count,
    cdiv,
    counters,
    normed_runs,
    stages_that_fit,
)
from .ops import kernel_op

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# The most programs an SM takes, fewer where the compiled kernel's resources allow fewer: 4 (SDAR_MLP_PER_SM=1-8
# overrides it: the benchmarks compare). Each program has one 16 x 256 weight tile in flight (8 KB; 80 registers a
# thread in the Hopper build, so 6 fit: python -m benchmarks.registers), and the two GEMMs it replaces keep ~6 an SM of
# those in flight.
PROGRAMS_PER_SM = int(os.environ.get("SDAR_MLP_PER_SM", "4"))
REGISTERS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
_fits: dict[tuple, int] = {}  # (device, dtype, the launch's shapes and constexprs) -> programs an SM


def mlp_runs(x: Normed, gate_up: torch.Tensor, down: torch.Tensor, residual: torch.Tensor) -> bool:
    """Whether `mlp` takes this one-token MLP: bf16/fp16/fp32 weights (not float8) of x's dtype, the [gate; up]
    GEMM would take the Normed (gemm.normed_runs), one row, the residual a [1, h] of x's dtype, and an intermediate
    size of whole 16-row tiles, and the device's split-K counters allocated."""
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor)):
        return False
    h, inter = x.x.shape[-1], down.shape[-1]
    if x.x.numel() != h * FOLD_MAX_ROWS or gate_up.shape != (2 * inter, h) or down.shape != (h, inter):
        return False
    if residual.shape != x.x.shape or residual.dtype != x.x.dtype or residual.device != x.x.device:
        return False
    if down.dtype != x.x.dtype or not down.is_contiguous() or inter % 16:
        return False
    # (the counters exist unless a graph capture would have to allocate them: the two GEMMs then run unsplit)
    return normed_runs(x, gate_up) and counters(x.x.device) is not None


def mlp(
    x: Normed, gate_up: torch.Tensor, down: torch.Tensor, residual: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + down(SiLU(gate) * up of RMSNorm(x) [gate; up]^T), its squares) in one launch, where `mlp_runs`:
    what gemm.normed_linear then gemm.add_linear(swiglu=True) return, bit for bit."""
    return _mlp(x.x, x.squares, x.norm.weight, float(x.norm.eps), gate_up, down, residual)


@kernel_op("sdar::persistent_mlp", mutates_args=())
def _mlp(
    x: torch.Tensor,
    squares: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    residual: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    h = x.shape[-1]
    cfg = _config(1, down, None, x.device, add=True)  # down's tiles and splits, as gemm.add_linear picks them
    y, sq = launch(
        x.reshape(1, h),
        squares.reshape(1, -1),
        norm_weight,
        eps,
        gate_up,
        down,
        residual.reshape(1, h),
        _config(1, gate_up, None, x.device).block_k,  # [gate; up]'s K step, as gemm.normed_linear picks it
        cfg,
    )
    return y.view(x.shape), sq.view(*x.shape[:-1], sq.shape[-1])


@_mlp.register_fake
def _(x, squares, norm_weight, eps, gate_up, down, residual):
    cfg = _config(1, down, None, x.device, add=True)
    return torch.empty_like(residual), x.new_empty(
        *x.shape[:-1], cdiv(down.shape[0], cfg.block_n), dtype=torch.float32
    )


def launch(
    x: torch.Tensor,
    squares: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    residual: torch.Tensor,
    block_k1: int,
    cfg: GemmConfig,
    programs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [1, h] normalised with `norm_weight`, `eps` and its sums of squares per tile `squares` [1, T], through
    [gate; up] (`gate_up` [2I, h], 16-row units in `block_k1` steps), SiLU(gate) * up, and `down` [h, I] at tile
    shape `cfg` (16 rows: the one-row form), added to `residual` [1, h]: (the sum [1, h], its squares [1, h / 16]).
    `programs`: the grid (None: all that fit at once on a GPU, `fitting_programs`; 1 on the CPU, where the interpreter
    runs the programs one after another and one program must do every unit)."""
    h, inter = x.shape[-1], down.shape[-1]
    if cfg.block_n != 16 or x.shape[0] != 1:
        raise ValueError("the persistent MLP is the one-row form: 16-row tiles, one row of x")
    splits = cfg.split_k
    per_split = cdiv(cdiv(inter, splits), cfg.block_k) * cfg.block_k
    tiles = cdiv(h, cfg.block_n)
    count = counters(x.device)
    if count is None or tiles + splits + 1 > count.numel():
        raise ValueError("the persistent MLP needs the device's split-K counters, allocated before a capture")
    y = torch.empty_like(residual)
    sq = torch.empty(1, tiles, dtype=torch.float32, device=x.device)
    # [gate; up], as gate_up's GEMM stores it
    hidden = torch.empty(1, 2 * inter, dtype=x.dtype, device=x.device)
    ws = torch.empty(splits, h, dtype=torch.float32, device=x.device)
    chained = pdl.on(x)
    args = (
        x,
        squares,
        norm_weight,
        eps,
        squares.shape[-1],
        gate_up,
        hidden,
        down,
        residual,
        y,
        sq,
        ws,
        count,
    )
    meta = dict(
        h=h,
        inter=inter,
        per_split=per_split,
        BLOCK_N=cfg.block_n,
        BLOCK_K1=block_k1,
        BLOCK_K2=cfg.block_k,
        SPLITS=splits,
        EVEN1=h % block_k1 == 0,
        EVEN2=inter % cfg.block_k == 0 and per_split * splits == inter,
        IEEE=x.dtype == torch.float32,
        BLOCK_T=triton.next_power_of_2(squares.shape[-1]),
        PDL=chained,
        AHEAD=gemm.AHEAD,
        num_warps=cfg.warps,
        num_stages=stages_that_fit(cfg, 1, down.element_size(), x.element_size(), True, x.device),
        **pdl.options(chained),
    )
    if programs is None:
        programs = fitting_programs(args, meta, x.device) if x.is_cuda else 1
    units = max(splits * 2 * (per_split // cfg.block_n), splits * tiles)
    _mlp_kernel[(max(1, min(programs, units)),)](*args, **meta)
    return y, sq


def fitting_programs(args: tuple, meta: dict, device: torch.device) -> int:
    """The SMs times the programs of this kernel one SM holds at once (registers, shared memory, warps), at most
    PROGRAMS_PER_SM: compiled without a launch (Triton's warmup) the first time for these shapes, remembered after."""
    key = (device, args[0].dtype, tuple(sorted(meta.items())))
    if key not in _fits:
        compiled = _mlp_kernel.warmup(*args, grid=(1,), **meta)
        compiled._init_handles()  # loads the module: its register count is known from then on
        warps = meta["num_warps"]
        regs = -(-max(compiled.n_regs, 1) // 8) * 8 * 32 * warps  # allocated per warp in 8-register steps
        props = torch.cuda.get_device_properties(device)
        smem = getattr(props, "shared_memory_per_multiprocessor", 228 << 10)
        by_smem = smem // (compiled.metadata.shared + 1024) if compiled.metadata.shared else PROGRAMS_PER_SM
        fit = min(PROGRAMS_PER_SM, REGISTERS_PER_SM // regs, by_smem, MAX_WARPS_PER_SM // warps)
        _fits[key] = max(1, fit)
    return _sm_count(device) * _fits[key]


if triton is not None:
    from .fused import silu_mul_tile
    from .gemm import _step, _weight_tile, _x_tile, row_rstd, store_tile

    @triton.jit
    def _unit_tile(W1, u, G, per_split, inter, h, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Phase 1's unit u: (its range, its first column of the intermediate, its first row of [gate; up], its first
        weight tile; nothing loaded for a unit past the intermediate's end)."""
        r = u // (2 * G)
        j = u % (2 * G)
        col = r * per_split + (j % G) * BLOCK_N
        row0 = (j // G) * inter + col
        rn = row0 + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        live = (rk[None, :] < h) & (col + 0 * rn[:, None] < inter)
        return r, col, row0, tl.load(W1 + rn[:, None] * h + rk[None, :], mask=live, other=0.0)

    @triton.jit
    def _gate_up_unit(
        X,
        NW,
        W1,
        HID,
        w,
        row0,
        rstd,
        h,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        EVEN: tl.constexpr,
        IEEE: tl.constexpr,
        AHEAD: tl.constexpr,
    ):
        """BLOCK_N rows of RMSNorm(x) [gate; up]^T from row0, its first weight tile `w` already loaded, stored in
        HID rounded once (as gemm's one-row form: one multiply-and-sum a K step, float32 across steps). With AHEAD,
        the next step's weight tile is asked for before the current step's sum (gemm.AHEAD: the same sums)."""
        rn = row0 + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        x = _x_tile(X + rk[None, :], rk[None, :] < h, h, True, False, True, NW + rk[None, :], rstd)
        acc = tl.zeros((1, BLOCK_N), dtype=tl.float32)
        if AHEAD:
            w_next = _weight_tile(W1, rn, 0, BLOCK_K, h, h, BLOCK_K)
            for kk in range(BLOCK_K, h, BLOCK_K):
                w_after = _weight_tile(W1, rn, 0, kk + BLOCK_K, h, h, BLOCK_K)
                acc = _step(acc, x, w, 1, IEEE)
                rk = kk + tl.arange(0, BLOCK_K)
                x = _x_tile(
                    X + rk[None, :], rk[None, :] < h, h, not EVEN, False, True, NW + rk[None, :], rstd
                )
                w = w_next
                w_next = w_after
        acc = _step(acc, x, w, 1, IEEE)
        if not AHEAD:
            for kk in range(BLOCK_K, h, BLOCK_K):
                rk = kk + tl.arange(0, BLOCK_K)
                x = _x_tile(
                    X + rk[None, :], rk[None, :] < h, h, not EVEN, False, True, NW + rk[None, :], rstd
                )
                if EVEN:
                    w = tl.load(W1 + rn[:, None] * h + rk[None, :])
                else:
                    w = tl.load(W1 + rn[:, None] * h + rk[None, :], mask=rk[None, :] < h, other=0.0)
                acc = _step(acc, x, w, 1, IEEE)
        tl.store(HID + rn[None, :], acc.to(HID.dtype.element_ty))

    @triton.jit
    def _swiglu_tile(HID, rk, inter, dtype: tl.constexpr):
        """One K step of SiLU(gate) * up from the [gate; up] row other programs wrote (read through L2: .cg)."""
        live = rk[None, :] < inter
        gate = tl.load(HID + rk[None, :], mask=live, other=0.0, cache_modifier=".cg").to(tl.float32)
        up = tl.load(HID + inter + rk[None, :], mask=live, other=0.0, cache_modifier=".cg").to(tl.float32)
        return silu_mul_tile(gate, up, dtype)

    @triton.jit
    def _mlp_kernel(
        X,  # [1, h] the residual stream before the MLP (normalised as it is loaded)
        SQ,  # [1, T] float32: its sums of squares per tile (o_proj's)
        NW,  # [h] the post-attention RMSNorm's weight
        eps,
        T,
        W1,  # [2I, h] [gate; up]
        HID,  # [1, 2I] [gate; up] of the normalised x (written in phase 1, read in phase 2)
        W2,  # [h, I] down
        R,  # [1, h] the residual stream the product is added to
        Y,  # [1, h] R + the MLP's output
        SQO,  # [1, h / BLOCK_N] float32: Y's sums of squares per tile (for the next layer's qkv)
        WS,  # [SPLITS, h] float32 partials of down
        COUNT,  # int32 counters, zero between launches: down's output tiles, then the ranges, then the programs done
        h,
        inter,
        per_split,
        BLOCK_N: tl.constexpr,
        BLOCK_K1: tl.constexpr,
        BLOCK_K2: tl.constexpr,
        SPLITS: tl.constexpr,
        EVEN1: tl.constexpr,
        EVEN2: tl.constexpr,
        IEEE: tl.constexpr,
        BLOCK_T: tl.constexpr,
        PDL: tl.constexpr,
        AHEAD: tl.constexpr,  # two weight tiles in flight a program (gemm.AHEAD)
    ):
        pid = tl.program_id(0)
        P = tl.num_programs(0)
        tiles = tl.cdiv(h, BLOCK_N)
        RANGE = COUNT + tiles
        DONE = RANGE + SPLITS
        G = per_split // BLOCK_N  # gate tiles (and up tiles) a range holds
        units1 = SPLITS * 2 * G
        dtype = HID.dtype.element_ty
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        # phase 1: the first unit's first weight tile before the PDL wait (no kernel writes W1), the rest after it
        r, col, row0, w = _unit_tile(W1, pid, G, per_split, inter, h, BLOCK_N, BLOCK_K1)
        if PDL:
            tl.extra.cuda.gdc_wait()
        rstd = row_rstd(SQ, tl.zeros((1,), dtype=tl.int32), T, h, eps, BLOCK_T)
        for u in range(pid, units1, P):
            if u != pid:
                r, col, row0, w = _unit_tile(W1, u, G, per_split, inter, h, BLOCK_N, BLOCK_K1)
            if col < inter:  # a range past the intermediate's end (its last) has fewer tiles
                _gate_up_unit(X, NW, W1, HID, w, row0, rstd, h, BLOCK_N, BLOCK_K1, EVEN1, IEEE, AHEAD)
                tl.debug_barrier()  # every thread's stores before the count that releases them
                tl.atomic_add(RANGE + r, 1, sem="release")
        # phase 2: down, split by split; each unit waits for its own range only. The programs with one [gate; up] unit
        # fewer (units1 is not a multiple of P: the first `extra` programs take one more) are free first and take
        # the first units, the earliest splits; the others follow them.
        extra = units1 % P
        rank = (pid - extra + P) % P
        rm = tl.arange(0, 1)
        for v in range(rank, SPLITS * tiles, P):
            s = v // tiles
            n = v % tiles
            rn2 = n * BLOCK_N + tl.arange(0, BLOCK_N)
            rn_safe = tl.where(rn2 < h, rn2, 0)
            k0 = s * per_split
            rk = k0 + tl.arange(0, BLOCK_K2)
            w = _weight_tile(W2, rn_safe, k0, 0, per_split, inter, BLOCK_K2)
            # with AHEAD, the second step's tile too, before the wait (as in _gate_up_unit: one in flight a sum)
            if AHEAD:
                w_next = _weight_tile(W2, rn_safe, k0, BLOCK_K2, per_split, inter, BLOCK_K2)
            need = 2 * tl.cdiv(tl.minimum(per_split, inter - k0), BLOCK_N)
            seen = tl.atomic_add(RANGE + s, 0, sem="acquire")
            while seen < need:
                seen = tl.atomic_add(RANGE + s, 0, sem="acquire")
            tl.debug_barrier()  # no thread reads the range before the count that acquires it
            live = (rm[:, None] < 1) & (rn2[None, :] < h)
            out = rm[:, None] * h + rn2[None, :]
            res = tl.load(R + out, mask=live, other=0.0).to(tl.float32)
            acc = tl.zeros((1, BLOCK_N), dtype=tl.float32)
            x = _swiglu_tile(HID, rk, inter, dtype)
            if AHEAD:
                for kk in range(BLOCK_K2, per_split, BLOCK_K2):
                    w_after = _weight_tile(W2, rn_safe, k0, kk + BLOCK_K2, per_split, inter, BLOCK_K2)
                    acc = _step(acc, x, w, 1, IEEE)
                    x = _swiglu_tile(HID, k0 + kk + tl.arange(0, BLOCK_K2), inter, dtype)
                    w = w_next
                    w_next = w_after
            acc = _step(acc, x, w, 1, IEEE)
            if not AHEAD:
                for kk in range(BLOCK_K2, per_split, BLOCK_K2):
                    rk = k0 + kk + tl.arange(0, BLOCK_K2)
                    if EVEN2:
                        w = tl.load(W2 + rn_safe[:, None] * inter + rk[None, :])
                    else:
                        w = tl.load(
                            W2 + rn_safe[:, None] * inter + rk[None, :], mask=rk[None, :] < inter, other=0.0
                        )
                    acc = _step(acc, _swiglu_tile(HID, rk, inter, dtype), w, 1, IEEE)
            if SPLITS == 1:
                store_tile(acc, Y, Y, res, SQO, out, live, rm, rn_safe, n, tiles, 1, False, True)
            else:
                tl.store(WS + s * h + out, acc, mask=live)
                tl.debug_barrier()
                # releases the partial, acquires the others'
                arrived = tl.atomic_add(COUNT + n, 1, sem="acq_rel")
                if arrived == SPLITS - 1:
                    total = tl.zeros((1, BLOCK_N), dtype=tl.float32)
                    for t in range(SPLITS):
                        total += tl.load(WS + t * h + out, mask=live, other=0.0, cache_modifier=".cg")
                    store_tile(total, Y, Y, res, SQO, out, live, rm, rn_safe, n, tiles, 1, False, True)
                    tl.atomic_xchg(COUNT + n, 0)
        # the last program out resets the range counters and its own for the next launch
        tl.debug_barrier()
        if tl.atomic_add(DONE, 1, sem="acq_rel") == P - 1:
            for t in tl.static_range(SPLITS):
                tl.atomic_xchg(RANGE + t, 0)
            tl.atomic_xchg(DONE, 0)
