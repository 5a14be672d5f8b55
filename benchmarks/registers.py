"""Registers a thread, shared memory, and programs an SM holds, of the decode kernels whose switches trade registers
for bytes in flight, built for Hopper (sm_90) on any machine with Triton's CUDA backend (no GPU: the tests' own
`helpers.compile_for_hopper`, which reads ptxas's register count from the cubin):

    python -m benchmarks.registers --out benchmarks/results/cpu-hopper-registers

- the skinny GEMM's down projection of the 1.7B (2048 x 6144, SwiGLU and the residual add folded) for 1 and 16 rows,
  with one weight tile in flight a program and with two (gemm.AHEAD, SDAR_GEMM_AHEAD=1);
- the persistent MLP of the 1.7B (persistent.py) with one and two tiles in flight;
- the 30B-A3B's expert down gemv with 0, 1, 2, 4 and 8 of the token's experts' tiles loaded before its PDL wait
  (moe.EARLY_DOWN, SDAR_MOE_EARLY).

"Programs an SM" is what the registers (65,536 an SM, per warp in steps of 8 a thread), the shared memory (228 KB)
and the warps (64) allow; against it, "programs a launch asks an SM" is the grid over 132 SMs (one wave fits when it
is not larger). Writes registers.json and registers.md under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SMS = 132
BF = torch.bfloat16


def programs_an_sm(registers: int, shared: int, warps: int) -> int:
    by_registers = 65536 // (-(-registers // 8) * 8 * 32 * warps)
    by_shared = (228 << 10) // (shared + 1024) if shared else 32
    return min(by_registers, by_shared, 64 // warps, 32)


def cases():
    """(name, setting, the function that launches the kernel, the module attribute it reads and its value, grid)."""
    from sdar_core import gemm, moe, persistent
    from sdar_core.gemm import Normed
    from sdar_core.model import RMSNorm

    for rows in (1, 16):
        x, w, r = (
            torch.zeros(rows, 12288, dtype=BF),
            torch.zeros(2048, 6144, dtype=BF),
            torch.zeros(rows, 2048, dtype=BF),
        )
        cfg = gemm.config_for(rows, 2048, 6144, SMS)
        grid = cfg.grid(rows, 2048)
        for ahead in (False, True):
            yield (
                f"skinny GEMM, down 2048 x 6144, {rows} row{'s' * (rows > 1)}",
                f"two tiles in flight: {ahead}",
                lambda x=x, w=w, r=r: gemm._rows_product(x, w, None, swiglu=True, residual=r),
                (gemm, "AHEAD", ahead),
                grid[0] * grid[1] * grid[2],
            )
    normed = Normed(torch.zeros(1, 1, 2048, dtype=BF), torch.zeros(1, 1, 128), RMSNorm(2048, 1e-6).to(BF))
    w1, w2 = torch.zeros(12288, 2048, dtype=BF), torch.zeros(2048, 6144, dtype=BF)
    for ahead in (False, True):
        yield (
            "persistent MLP, 1.7B",
            f"two tiles in flight: {ahead}",
            lambda: persistent.mlp(normed, w1, w2, normed.x),
            (gemm, "AHEAD", ahead),
            SMS * persistent.PROGRAMS_PER_SM,
        )
    experts = moe.Experts(8, 2048, 768).to(BF)
    token, chosen, weights = (
        torch.zeros(1, 2048, dtype=BF),
        torch.arange(8)[None],
        torch.full((1, 8), 0.125, dtype=BF),
    )
    for early in (0, 1, 2, 4, 8):
        yield (
            "expert down gemv, 30B-A3B (h 2048, I 768, top 8)",
            f"experts' tiles before the wait: {early}",
            lambda: experts.gemv_forward(token, chosen, weights),
            (moe, "EARLY_DOWN", early),
            2048 // moe.GEMV.down_block_n,
        )


def built_row(compile_for_hopper, kernel, setting, launch, module, attribute, value, grid) -> dict:
    """One case built with `module.attribute` set to `value` (restored after): its table row."""
    saved = getattr(module, attribute)
    setattr(module, attribute, value)
    try:
        with torch.no_grad():
            built = compile_for_hopper(launch)[-1]  # the expert gemv launches gate/up, then down
    finally:
        setattr(module, attribute, saved)
    fit = programs_an_sm(built["registers"], built["shared"], built["warps"])
    return dict(
        kernel=kernel,
        setting=setting,
        name=built["name"],
        registers=built["registers"],
        shared=built["shared"],
        warps=built["warps"],
        programs_an_sm=fit,
        asked_an_sm=round(grid / SMS, 1),
        one_wave=grid <= fit * SMS,
    )


def measure() -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from sdar_core import pdl

    from helpers import compile_for_hopper

    rows = []
    on, pdl.on = pdl.on, lambda x: True  # built as a Hopper GPU launches them: with PDL
    try:
        for kernel, setting, launch, (module, attribute, value), grid in cases():
            rows.append(
                built_row(compile_for_hopper, kernel, setting, launch, module, attribute, value, grid)
            )
    finally:
        pdl.on = on
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = measure()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import triton

    (out / "registers.json").write_text(json.dumps(dict(triton=triton.__version__, rows=rows), indent=1))
    lines = [
        f"Built for sm_90 with Triton {triton.__version__} (`python -m benchmarks.registers`), no GPU.",
        "",
        "| kernel | setting | registers a thread | shared (bytes) | programs an SM fit | asked an SM | one wave |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kernel']} | {r['setting']} | {r['registers']} | {r['shared']} | {r['programs_an_sm']} | "
            f"{r['asked_an_sm']} | {'yes' if r['one_wave'] else 'no'} |"
        )
    (out / "registers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
