"""The decode forward's goals, from a run's committed result folders: one table, and the profile of each row that
falls short.

    python -m benchmarks.goals --bench DIR [--moe DIR] [--baseline DIR ...] [--startup FILE]
                               [--profile FILE] [--moe-profile FILE] [--out FILE]

- --bench: a `benchmarks.bench` folder of the SDAR-1.7B shape at batch 1 with a 64-token prompt, an 8k one and
  compiled transformers (`device_kernels.sh h200`'s readme/, or `goals`').
- --moe: the 30B-A3B's bench folder.
- --baseline: earlier bench folders of the same card. No row of ours that one of them measured too (the same mode,
  prompt, new tokens, batch, block and steps) may be slower than the fastest of them by more than SLOWER.
- --startup: a `benchmarks.startup` results file (its fastest cold start with precompile workers).
- --profile / --moe-profile: `benchmarks.profile_forward` results (profile.json), read for the rows that fall
  short: the graph replay against the floor, kernels per forward and layer, the idle time between kernels, and what
  each projection adds against its floor.

Prints markdown; --out writes it too.
Not a test: it reads measurements, it does not make them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from .bench import forward_floor_ms

SLOWER = 0.03  # a row this much slower than the baseline's counts as slower (run-to-run noise is 1-2%)
PROJECTIONS = ("qkv", "o_proj", "gate_up", "down", "lm_head")
KEYS = (
    "mode",
    "prompt_len",
    "new_tokens",
    "batch_size",
    "block_length",
    "steps",
    "strategy",
)  # one measured row


@dataclass(frozen=True)
class Goal:
    measure: str
    goal: str
    value: str  # as measured, formatted
    met: bool | None  # None: not measured by the folders given
    detail: str = ""
    profile: str | None = (
        None  # profile_forward's row ("64 ar", "8k ar", "64 sdar16") of a row that falls short
    )


def read(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def row(
    results: dict, mode: str, prompt: int, block: int | None = None, steps: int | None = None
) -> dict | None:
    """The batch-1 row of `mode` at `prompt` tokens (with that block length and step count), or None."""
    for r in results["rows"]:
        if r["mode"] == mode and r["prompt_len"] == prompt and r["batch_size"] == 1:
            if (block is None or r["block_length"] == block) and (steps is None or r["steps"] == steps):
                return r
    return None


def dense_goals(bench: dict) -> list[Goal]:
    """The SDAR-1.7B shape's four goals at batch 1."""
    info = bench["machine"]
    ar, sdar = row(bench, "ar", 64), row(bench, "sdar", 64, 16, 4)
    hf = row(bench, "hf-compiled", 64)
    ar8k = row(bench, "ar", 8192)
    goals = []
    if ar:
        share = ar["tokens_per_second"] / info["ar_ceiling_tps"]
        goals.append(
            Goal(
                "`ar` tokens/s over the bandwidth ceiling, 64-token prompt",
                ">= 0.70",
                f"{share:.2f}",
                share >= 0.70,
                f"{ar['tokens_per_second']:.0f} of {info['ar_ceiling_tps']:.0f} tokens/s, "
                f"{ar['ms_per_forward']:.3f} ms per forward",
                "64 ar",
            )
        )
    if sdar and hf:
        times = sdar["tokens_per_second"] / hf["tokens_per_second"]
        goals.append(
            Goal(
                "SDAR static b16/4 over transformers compiled",
                ">= 10x",
                f"{times:.1f}x",
                times >= 10,
                f"{sdar['tokens_per_second']:.0f} / {hf['tokens_per_second']:.0f} tokens/s",
                "64 sdar16",
            )
        )
    if sdar and ar:
        ratio = sdar["ms_per_forward"] / ar["ms_per_forward"]
        goals.append(
            Goal(
                "SDAR b16/4 forward over the `ar` forward",
                "<= 1.15",
                f"{ratio:.2f}",
                ratio <= 1.15,
                f"{sdar['ms_per_forward']:.3f} / {ar['ms_per_forward']:.3f} ms",
                "64 sdar16",
            )
        )
    if ar8k:
        floor = forward_floor_ms(info, 8192, ar8k["new_tokens"])
        if floor:
            over = ar8k["ms_per_forward"] / floor
            goals.append(
                Goal(
                    "8k prompt: `ar` forward over its floor",
                    "<= 1.4x",
                    f"{over:.2f}x",
                    over <= 1.4,
                    f"{ar8k['ms_per_forward']:.3f} / {floor:.3f} ms (the weights and the K/V at mid-generation)",
                    "8k ar",
                )
            )
    return goals


def moe_goal(moe: dict) -> Goal | None:
    """The 30B-A3B's one-token floor (the dense weights and k experts a layer) over its `ar` forward."""
    ar = row(moe, "ar", moe["machine"]["prompt_len"])
    if ar is None:
        return None
    floor = moe["machine"]["floor_ms_per_forward"]
    share = floor / ar["ms_per_forward"]
    return Goal(
        "30B-A3B `ar` forward over its MoE floor",
        ">= 0.5",
        f"{share:.2f}",
        share >= 0.5,
        f"{ar['ms_per_forward']:.3f} ms against {floor:.3f}",
        "64 ar",
    )


def startup_goal(startup: dict) -> Goal | None:
    """The fastest cold start with precompile workers (the studio's default) to its first token."""
    runs = [r for r in startup["runs"] if r.get("run", "").startswith("cold") and r.get("precompile_workers")]
    if not runs:
        return None
    best = min(runs, key=lambda r: r["first_token_s"])
    return Goal(
        "cold start to first token",
        "<= 15 s",
        f"{best['first_token_s']:.1f} s",
        best["first_token_s"] <= 15,
        f"{best['precompile_workers']} precompile workers, {best.get('device', '')}".rstrip(", "),
    )


def matched(bench: dict, baseline: dict) -> list[tuple[dict, dict]]:
    """(row, the baseline's row) for every row of ours (not transformers') in `bench` that the baseline measured too
    (the same KEYS)."""
    before = {tuple(r.get(k) for k in KEYS): r for r in baseline["rows"]}
    pairs = [
        (r, before.get(tuple(r.get(k) for k in KEYS)))
        for r in bench["rows"]
        if not r["mode"].startswith("hf-")
    ]
    return [(r, old) for r, old in pairs if old is not None]


def prefill_ms(r: dict) -> float:
    """A bench row's prefill: its seconds less its forwards at its ms per forward (which counts the decode only)."""
    return 1000 * r["seconds"] - r["forwards"] * r["ms_per_forward"]


def slower_rows(bench: dict, baseline: dict, tolerance: float = SLOWER) -> list[str]:
    """The rows of `bench` slower than the same row of `baseline` by more than `tolerance`, described with where the
    time went: the forward's ms and the prefill's, before -> now."""
    return [
        f"{r['mode']} {r['strategy']} prompt {r['prompt_len']} batch {r['batch_size']} "
        f"b{r['block_length']}/{r['steps']}: {r['tokens_per_second']:.0f} against {old['tokens_per_second']:.0f} "
        f"tokens/s (forward {old['ms_per_forward']:.3f} -> {r['ms_per_forward']:.3f} ms, prefill "
        f"{prefill_ms(old):.0f} -> {prefill_ms(r):.0f} ms)"
        for r, old in matched(bench, baseline)
        if r["tokens_per_second"] < (1 - tolerance) * old["tokens_per_second"]
    ]


def fastest(baselines: list[dict]) -> dict:
    """One baseline of several runs: each row (KEYS) at its fastest among them."""
    best: dict[tuple, dict] = {}
    for run in baselines:
        for r in run["rows"]:
            key = tuple(r.get(k) for k in KEYS)
            if key not in best or r["tokens_per_second"] > best[key]["tokens_per_second"]:
                best[key] = r
    return {"rows": list(best.values())}


def curve_goal(bench: dict, baseline: dict) -> Goal:
    slower = slower_rows(bench, baseline)
    return Goal(
        "batch curve (1-64) and every committed row",
        "no row slower",
        f"{len(slower)} of {len(matched(bench, baseline))} slower",
        not slower,
        "; ".join(slower),
    )


def profile_summary(profile: dict, name: str) -> str | None:
    """One line for profile_forward's row `name` ("64 ar", "8k ar", "64 sdar16"): the replay against the floor,
    kernels per forward and layer, the idle time, what each projection adds against its floor (the microbenchmark's)
    and the largest other kernels."""
    context, mode = name.split()
    rows = [r for r in profile["rows"] if r["context"] == context and r["mode"] == mode]
    if not rows:
        return None
    r = min(rows, key=lambda r: r["replay_ms"])  # the fastest configuration profiled (the defaults')
    layers = max(
        (v["per_forward"] / v["per_layer"] for v in r["classes"].values() if v["per_layer"]), default=1
    )
    parts = [
        f"replay {r['replay_ms']:.3f} ms against a {profile['floor_ms']:.3f} ms floor",
        f"{r['kernels']:.0f} kernels ({r['kernels'] / layers:.1f} a layer)",
    ]
    if "idle_us" in r:
        parts.append(f"{r['idle_us']:.0f} us idle between kernels")
    added = r.get("added_us", {})
    floors = profile.get("microbench", {})
    projections = [
        f"{p} {added[p]:.1f}" + (f" (floor {floors[p]['floor_us']:.1f})" if p in floors else "")
        for p in PROJECTIONS
        if p in added
    ]
    if projections:
        parts.append(
            "us each adds to the forward's end (a layer's; the lm_head's once): " + ", ".join(projections)
        )
    others = [(k, v) for k, v in added.items() if k not in PROJECTIONS][:4]
    if others:
        parts.append("the largest others: " + ", ".join(f"{short_name(k)} {v:.1f}" for k, v in others))
    return "; ".join(parts)


def short_name(kernel: str) -> str:
    """A profiler's kernel name without its namespaces and template arguments ("void at::native::(anonymous
    namespace)::vectorized_layer_norm_kernel<c10::BFloat16, ..." -> "vectorized_layer_norm_kernel")."""
    return kernel.split("<")[0].split("::")[-1].removeprefix("void ").strip()


def markdown(goals: list[Goal], profiles: dict[str, dict]) -> str:
    lines = ["| measure | goal | measured | met | |", "|---|---|---|---|---|"]
    for g in goals:
        met = "-" if g.met is None else "yes" if g.met else "**no**"
        lines.append(f"| {g.measure} | {g.goal} | {g.value} | {met} | {g.detail} |")
    short = [g for g in goals if g.met is False and g.profile]
    if short:
        lines += ["", "Profiles of the rows that fall short:", ""]
    for g in short:
        profile = profiles.get("moe" if g.measure.startswith("30B") else "dense")
        line = profile_summary(profile, g.profile) if profile else None
        lines.append(f"- {g.measure} ({g.profile}): {line or 'no profile given'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True, help="the SDAR-1.7B shape's bench folder (results.json)")
    p.add_argument("--moe", help="the 30B-A3B's bench folder")
    p.add_argument(
        "--baseline",
        nargs="+",
        help="earlier bench folders of the same card: no row of --bench slower than any",
    )
    p.add_argument("--startup", help="a benchmarks.startup results file")
    p.add_argument("--profile", help="profile_forward's profile.json of the SDAR-1.7B shape")
    p.add_argument("--moe-profile", help="profile_forward's profile.json of the 30B-A3B")
    p.add_argument("--out", help="also write the markdown here")
    args = p.parse_args(argv)

    def present(path: str | None, inside: str = "") -> bool:
        """Whether an optional input was given and exists; one missing (a run cut short) is named and left out."""
        if path and not (Path(path) / inside).exists():
            print(f"(not found, left out: {Path(path) / inside})")
            return False
        return bool(path)

    bench = read(args.bench)
    goals = dense_goals(bench)
    if present(args.moe, "results.json"):
        goals += [g for g in [moe_goal(read(args.moe))] if g]
    if present(args.startup):
        goals += [g for g in [startup_goal(json.loads(Path(args.startup).read_text()))] if g]
    if args.baseline:
        goals.append(curve_goal(bench, fastest([read(folder) for folder in args.baseline])))
    profiles = {
        name: json.loads(Path(path).read_text())
        for name, path in (("dense", args.profile), ("moe", args.moe_profile))
        if present(path)
    }
    text = markdown(goals, profiles)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
