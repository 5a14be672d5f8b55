"""benchmarks/table.py: the console table of every benchmark, checked against a hand-written one."""

from benchmarks.table import format_table


def test_columns_are_right_aligned_to_their_widest_cell_with_formats_and_empty_missing_cells():
    rows = [
        {"mode": "ar", "tps": 12.345, "tpf": None},
        {"mode": "sdar", "tps": 1234.5, "tpf": 3.0, "extra": 1},
    ]
    table = format_table(rows, [("mode", "mode", ""), ("tok/s", "tps", ".1f"), ("TPF", "tpf", ".2f")])
    assert table.splitlines() == ["mode   tok/s   TPF", "  ar    12.3      ", "sdar  1234.5  3.00"]
