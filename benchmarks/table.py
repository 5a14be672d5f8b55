"""The console table every benchmark prints last."""

from __future__ import annotations

from typing import Any

Column = tuple[str, str, str]  # (header, row key, format spec such as ".2f"; "" for str())


def _cell(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def format_table(rows: list[dict], columns: list[Column]) -> str:
    """Right-aligned columns, each as wide as its widest cell; a missing or None value is an empty cell."""
    table = [[header for header, _, _ in columns]]
    table += [[_cell(row.get(key), spec) for _, key, spec in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in table)


def print_table(rows: list[dict], columns: list[Column]) -> None:
    print(format_table(rows, columns))
