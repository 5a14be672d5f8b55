"""Mutation testing of the core invariants: how many small faults in each module its own tests catch.

    pip install -r requirements-dev.txt            # mutmut (never installed or run by CI)
    python -m benchmarks.mutation                  # every module below -> out/mutation/ (--out DIR)
    python -m benchmarks.mutation schedules kv_cache

benchmarks/results/mutation/ holds the committed run and its REPORT.md; a run never writes there unless --out names it.

mutmut (configured in pyproject.toml's [tool.mutmut]) copies the code to mutants/, makes one variant per small
change (an operator, a constant, a comparison, a removed argument...) and runs the tests that called the mutated
function against each variant: a variant that no test fails "survived". Each module is run on its own, against
only its matching test files (TARGETS), so that a run fits a session on 2 cores. The table gives the count per
status; `<module>.json` holds every mutant's status and `<module>-survivors.diff` the code of each survivor
(REPORT.md explains every one of them). OMP/MKL threads are pinned to 1: mutmut forks one child per core.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .table import print_table

OUT = "out/mutation"  # the default: a git-ignored folder, never the committed results

# module -> (its file, the test files that hold its invariants)
TARGETS: dict[str, tuple[str, list[str]]] = {
    "schedules": ("sdar_core/schedules.py", ["tests/test_schedules.py"]),
    "sampling": ("sdar_core/sampling.py", ["tests/test_sampling.py"]),
    "attention": ("sdar_core/attention.py", ["tests/test_attention.py"]),
    "kv_cache": ("sdar_core/kv_cache.py", ["tests/test_kv_cache.py"]),
    "objective": ("training/objective.py", ["tests/test_training_objective.py"]),
    # AR-mode decoding is held against transformers' own Qwen3 in test_model_parity.py
    "decoding": ("sdar_core/decoding.py", ["tests/test_decoding.py", "tests/test_model_parity.py"]),
}
STATUSES = ("killed", "survived", "timeout", "no tests", "suspicious", "segfault", "not checked")


def run_one(name: str, tests: list[str], max_children: int) -> None:
    """In this process: mutmut on TARGETS[name] only, its tests only (mutmut reads its config once, from
    pyproject.toml; the two fields that differ per module are replaced before the run)."""
    import dataclasses

    import mutmut.__main__ as mm
    import mutmut.configuration as mc

    path = TARGETS[name][0]
    mc._config = dataclasses.replace(
        mc.config(), only_mutate=[path], pytest_add_cli_args_test_selection=tests
    )
    mm._run([], max_children)


def statuses(path: str) -> dict[str, str]:
    """mutant name -> status, from the .meta file mutmut keeps beside the mutated copy."""
    from mutmut.stats import status_by_exit_code

    meta = json.loads((Path("mutants") / (path + ".meta")).read_text())
    return {key: status_by_exit_code[code] for key, code in sorted(meta["exit_code_by_key"].items())}


def survivor_diffs(names: list[str]) -> str:
    """`mutmut show` of every survivor: the mutated lines, for REPORT.md's explanations."""
    show = [
        subprocess.run([sys.executable, "-m", "mutmut", "show", n], capture_output=True, text=True).stdout
        for n in names
    ]
    return "\n".join(f"# {n}\n{diff}" for n, diff in zip(names, show))


def run_module(name: str, tests: list[str], max_children: int, results: Path) -> dict:
    """Run one module in a child process (mutmut keeps global state); record its statuses and survivors."""
    path = TARGETS[name][0]
    # mutmut's cache in mutants/ assumes one fixed set of mutated files: start each module afresh.
    shutil.rmtree("mutants", ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.mutation",
            "--run-one",
            name,
            "--max-children",
            str(max_children),
            "--tests",
            *tests,
        ],
        check=True,
    )
    seconds = time.perf_counter() - t0
    status = statuses(path)
    survivors = [k for k, s in status.items() if s != "killed"]
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}-survivors.diff").write_text(survivor_diffs(survivors))
    counts = collections.Counter(status.values())
    row = {
        "module": name,
        "file": path,
        "tests": tests,
        "mutants": len(status),
        "seconds": round(seconds),
        **{s: counts.get(s, 0) for s in STATUSES},
    }
    (results / f"{name}.json").write_text(json.dumps({**row, "status": status}, indent=1) + "\n")
    return row


def write_summary(rows: list[dict], max_children: int, results: Path) -> None:
    """summary.json: one row per module, the modules of earlier runs kept (a run may cover only some)."""
    path = results / "summary.json"
    modules = json.loads(path.read_text())["modules"] if path.exists() else {}
    machine = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "max_children": max_children,
    }
    modules.update({row["module"]: {**row, **machine} for row in rows})
    path.write_text(json.dumps({"modules": modules}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all of them)")
    parser.add_argument(
        "--out", default=OUT, help="folder for the counts and survivors (default: %(default)s)"
    )
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tests", nargs="+", help="test files to use instead of TARGETS' (one module only)")
    parser.add_argument("--run-one", choices=TARGETS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if args.run_one:
        return run_one(args.run_one, args.tests or TARGETS[args.run_one][1], args.max_children)
    unknown = sorted(set(args.modules) - set(TARGETS))
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if args.tests and len(args.modules) != 1:
        parser.error(f"--tests applies to one module; got modules {args.modules or 'all'}")
    results = Path(args.out)
    rows = [
        run_module(name, args.tests or TARGETS[name][1], args.max_children, results)
        for name in args.modules or TARGETS
    ]
    write_summary(rows, args.max_children, results)
    print_table(
        rows,
        [
            ("module", "module", ""),
            ("mutants", "mutants", "d"),
            ("killed", "killed", "d"),
            ("survived", "survived", "d"),
            ("timeout", "timeout", "d"),
            ("no tests", "no tests", "d"),
            ("seconds", "seconds", "d"),
        ],
    )


if __name__ == "__main__":
    main()
