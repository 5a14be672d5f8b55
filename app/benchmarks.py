"""GPU measurements written by the benchmark (benchmarks/results/*.json), read defensively.

A result file is a JSON list of records with keys gpu, torch, date, model, mode ("ar" | "sdar"), strategy,
block_length, steps, threshold, batch_size, tokens_per_second, tpf. Files and records that do not have that
shape are skipped (and counted), so an unrelated JSON file in the folder cannot break the app.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .registry import REPO

RESULTS_DIR = REPO / "benchmarks" / "results"
REQUIRED = ("mode", "batch_size", "tokens_per_second")
TEXT_KEYS = ("gpu", "torch", "date", "model", "mode", "strategy")
NUMBER_KEYS = ("block_length", "steps", "threshold", "batch_size", "tokens_per_second", "tpf")


def _clean(rec: dict, source: str) -> dict | None:
    if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
        return None
    out = {k: (str(rec[k]) if rec.get(k) is not None else "") for k in TEXT_KEYS}
    for k in NUMBER_KEYS:
        v = rec.get(k)
        try:
            out[k] = float(v) if v is not None else None
        except (TypeError, ValueError):
            out[k] = None
    if out["batch_size"] is None or out["tokens_per_second"] is None or not math.isfinite(out["tokens_per_second"]):
        return None
    out["mode"] = out["mode"].lower()
    out["gpu"] = out["gpu"] or "unknown GPU"
    out["source"] = source
    return out


def read_results(folder: Path | str = RESULTS_DIR) -> tuple[list[dict], list[str]]:
    """(records, notes): every usable record of every *.json file in `folder`; notes name what was skipped."""
    folder = Path(folder)
    records, notes = [], []
    if not folder.is_dir():
        return records, [f"no {folder.name}/ folder yet"]
    for path in sorted(folder.glob("*.json")):
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            notes.append(f"{path.name}: not readable JSON, skipped")
            continue
        if isinstance(raw, dict) and isinstance(raw.get("records"), list):
            raw = raw["records"]
        if not isinstance(raw, list):
            notes.append(f"{path.name}: not a list of records, skipped")
            continue
        good = [r for r in (_clean(x, path.name) for x in raw) if r is not None]
        if len(good) < len(raw):
            notes.append(f"{path.name}: {len(raw) - len(good)} records without {', '.join(REQUIRED)} skipped")
        records.extend(good)
    return records, notes
