"""GPU measurements written by the benchmark (`python -m benchmarks.bench --out ...`), read defensively.

Each run is committed as benchmarks/results/<name>/results.json (searched recursively):

    {"machine": {"gpu", "torch", "date", "arch", "bandwidth_GBps", "ar_ceiling_tps", ...},
     "rows": [{"mode": "ar" | "sdar" | "hf-compiled" | "hf-eager", "strategy", "block_length", "steps",
               "threshold", "batch_size", "tokens_per_second", "tpf", "ms_per_forward", "speedup_vs_ar",
               "realized_tpf_eq11", "realized_tpf_fused", "gpu", "torch", "date", "model"}, ...]}

A bare JSON list of rows (the older format) is read too. Files and rows without that shape are skipped and
named in the notes, so an unrelated JSON file in the folder cannot break the app.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from sdar_core.paths import REPO

RESULTS_DIR = REPO / "benchmarks" / "results"
REQUIRED = ("mode", "batch_size", "tokens_per_second")
TEXT_KEYS = ("gpu", "torch", "date", "model", "mode", "strategy")
NUMBER_KEYS = (
    "block_length",
    "steps",
    "threshold",
    "batch_size",
    "tokens_per_second",
    "tpf",
    "ms_per_forward",
    "speedup_vs_ar",
    "realized_tpf_eq11",
    "realized_tpf_fused",
)


@dataclass
class Machine:
    """What one benchmark run measured on: the label of its curves and its AR bandwidth ceiling."""

    run: str  # the results folder, relative to benchmarks/results/
    gpu: str
    torch: str
    date: str
    arch: str = ""
    bandwidth_GBps: float | None = None
    ar_ceiling_tps: float | None = None  # batch-1 AR tokens/s if every forward only streamed the weights

    model: str = ""  # what ran: the architecture measured

    @property
    def label(self) -> str:
        return f"{self.gpu} · torch {self.torch} · {self.date}"

    @property
    def name(self) -> str:
        """The run as the picker lists it: GPU, date, what ran, and its file (unique)."""
        gpu = self.gpu.removeprefix("NVIDIA ")
        return f"{gpu} · {self.date} · {self.model or self.arch or '?'} · {self.run}"


def _number(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _clean(rec, run: str, machine: dict) -> dict | None:
    """A row with every text key a string and every number key a float or None; None if unusable."""
    if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
        return None
    out = {k: str(rec.get(k) if rec.get(k) is not None else machine.get(k) or "") for k in TEXT_KEYS}
    out.update({k: _number(rec.get(k)) for k in NUMBER_KEYS})
    if out["batch_size"] is None or out["tokens_per_second"] is None:
        return None
    out["mode"] = out["mode"].lower()
    out["model"] = out["model"] or str(machine.get("arch") or "")
    out["gpu"] = out["gpu"] or "unknown GPU"
    out["run"] = run
    return out


def _machine(info, run: str, rows: list[dict]) -> Machine:
    info = info if isinstance(info, dict) else {}
    first = rows[0] if rows else {}

    def text(k):
        return str(info.get(k) or first.get(k) or "?")

    models = sorted({r["model"] for r in rows if r.get("model")})
    return Machine(
        run=run,
        gpu=text("gpu"),
        torch=text("torch"),
        date=text("date"),
        arch=str(info.get("arch") or ""),
        bandwidth_GBps=_number(info.get("bandwidth_GBps")),
        ar_ceiling_tps=_number(info.get("ar_ceiling_tps")),
        model=", ".join(models),
    )


def read_results(folder: Path | str = RESULTS_DIR) -> tuple[list[dict], list[Machine], list[str]]:
    """(rows, machines, notes) of every results.json (any *.json) under `folder`, recursively.

    rows: the usable rows, each with its run in "run"; machines: one per file that had rows, newest first;
    notes: what was skipped and why."""
    folder = Path(folder)
    rows, machines, notes = [], [], []
    if not folder.is_dir():
        return (
            rows,
            machines,
            [
                f"no {folder.name}/ folder yet: `python -m benchmarks.bench --out "
                f"benchmarks/results/<name>` writes one"
            ],
        )
    for path in sorted(folder.rglob("*.json")):
        # A run is its file: the folder for results.json, the folder and the file's stem otherwise (a folder can
        # hold several runs: fused.json and eager.json).
        rel = path.relative_to(folder).with_suffix("")
        run = str(rel.parent) if rel.name == "results" and rel.parent != Path(".") else str(rel)
        where = str(path.relative_to(folder))
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            notes.append(f"{where}: not readable JSON, skipped")
            continue
        info = {}
        if isinstance(raw, dict) and isinstance(raw.get("rows"), list):
            info, raw = raw.get("machine") or {}, raw["rows"]
        if not isinstance(raw, list):
            notes.append(f'{where}: neither {{"machine", "rows"}} nor a list of rows, skipped')
            continue
        info = info if isinstance(info, dict) else {}
        # The batch curve is measured at the run's first prompt length; its context sweep is the README's table.
        first = info.get("prompt_len")
        raw = [x for x in raw if not isinstance(x, dict) or x.get("prompt_len", first) == first]
        good = [r for r in (_clean(x, run, info) for x in raw) if r is not None]
        if len(good) < len(raw):
            notes.append(f"{where}: {len(raw) - len(good)} rows without {', '.join(REQUIRED)} skipped")
        if good:
            rows.extend(good)
            machines.append(_machine(info, run, good))
    machines.sort(key=lambda m: m.date, reverse=True)  # stable: runs of one date stay in path order
    return rows, machines, notes
