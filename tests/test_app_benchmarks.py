"""app/benchmarks.py and the GPU figure on results written here in the format of benchmarks.bench.write_outputs:
benchmarks/results/<run>/results.json = {"machine": {...}, "rows": [...]}, read recursively."""

from __future__ import annotations

import json

MACHINE = {
    "torch": "2.11.0+cu130",
    "date": "2026-11-23",
    "device": "cuda",
    "gpu": "NVIDIA H100 80GB HBM3",
    "arch": "sdar-1.7b",
    "bandwidth_GBps": 2903.0,
    "ar_ceiling_tps": 843.6,
}


def row(mode, batch, tps, strategy="ar", block=1, steps=1, threshold=0.0, tpf=1.0):
    return {
        "mode": mode,
        "strategy": strategy,
        "block_length": block,
        "steps": steps,
        "threshold": threshold,
        "batch_size": batch,
        "tokens_per_second": tps,
        "tpf": tpf,
        "ms_per_forward": 5.0,
        "realized_tpf_eq11": None,
        "realized_tpf_fused": None,
        "speedup_vs_ar": 1.0,
        "gpu": MACHINE["gpu"],
        "torch": MACHINE["torch"],
        "date": MACHINE["date"],
        "model": "sdar-1.7b",
    }


def write_run(folder, rows, machine=MACHINE):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}))


def test_reader_finds_every_run_recursively_with_its_machine_and_skips_bad_files(tmp_path):
    from app.benchmarks import read_results

    rows = [row("ar", b, 200.0 * b) for b in (1, 4, 16)]
    rows += [
        row("sdar", b, 600.0 * b, "static", 16, 4, tpf=4.0) for b in (16, 1, 4)
    ]  # out of order on purpose
    rows += [row("sdar", b, 500.0 * b, "dynamic", 4, 4, 0.9, 3.1) for b in (1, 4)]
    rows += [row("hf-compiled", 1, 208.0), {"mode": "sdar", "note": "no batch size"}]
    write_run(tmp_path / "h100-2026-11-23", rows)
    write_run(
        tmp_path / "older" / "a100",
        [row("ar", 1, 90.0)],
        {**MACHINE, "gpu": "NVIDIA A100", "date": "2025-01-01", "ar_ceiling_tps": None},
    )
    (tmp_path / "notes.json").write_text(json.dumps({"hello": "world"}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")

    records, machines, notes = read_results(tmp_path)
    assert len(records) == 3 + 3 + 2 + 1 + 1
    assert {m.run for m in machines} == {"h100-2026-11-23", "older/a100"}
    h100 = next(m for m in machines if m.run == "h100-2026-11-23")
    assert (
        h100.ar_ceiling_tps == 843.6
        and h100.label == "NVIDIA H100 80GB HBM3 · torch 2.11.0+cu130 · 2026-11-23"
    )
    assert sorted(notes) == sorted(
        [
            "broken/results.json: not readable JSON, skipped",
            'notes.json: neither {"machine", "rows"} nor a list of rows, skipped',
            "h100-2026-11-23/results.json: 1 rows without mode, batch_size, tokens_per_second skipped",
        ]
    )
    assert read_results(tmp_path / "missing")[:2] == ([], [])


def test_reader_keeps_the_batch_curve_of_a_context_sweep(tmp_path):
    from app.benchmarks import read_results

    rows = [dict(row("ar", b, 300.0 * b), prompt_len=64) for b in (1, 4)] + [
        dict(row("ar", 1, 260.0), prompt_len=8192)
    ]
    write_run(tmp_path / "sweep", rows, {**MACHINE, "prompt_len": 64})
    records, _, _ = read_results(tmp_path)
    assert sorted((r["batch_size"], r["tokens_per_second"]) for r in records) == [(1.0, 300.0), (4.0, 1200.0)]


def test_gpu_figure_has_one_curve_per_mode_block_and_strategy_and_the_ar_ceiling_line(tmp_path):
    from app.benchmarks import read_results
    from app.charts import gpu_figure, gpu_table

    rows = [row("ar", b, 200.0 * b) for b in (1, 4, 16)]
    rows += [row("sdar", b, 600.0 * b, "static", 16, 4, tpf=4.0) for b in (16, 1, 4)]
    rows += [row("sdar", b, 500.0 * b, "dynamic", 4, 4, 0.9, 3.1) for b in (1, 4)]
    rows += [row("hf-compiled", 1, 208.0)]
    write_run(tmp_path / "h100", rows)
    write_run(
        tmp_path / "a100", [row("ar", 1, 90.0)], {**MACHINE, "gpu": "NVIDIA A100", "date": "2025-01-01"}
    )
    records, machines, _ = read_results(tmp_path)
    assert [m.run for m in machines] == ["h100", "a100"]  # newest first
    fig = gpu_figure(records, machines[0])  # one run at a time: the other run's curve is not drawn
    curves = {t.name: t for t in fig.data}
    ceiling_name = "AR ceiling, batch 1: 844 tokens/s (2903 GB/s measured)"  # its value in the legend
    assert set(curves) == {
        "AR",
        "SDAR static L=16 T=4",
        "SDAR dynamic L=4 T=4 τ=0.9",
        "transformers (compiled)",
        ceiling_name,
    }
    static = curves["SDAR static L=16 T=4"]
    assert list(static.x) == [1, 4, 16] and list(static.y) == [600, 2400, 9600]  # sorted by batch size
    assert curves["AR"].line.dash == "dash"
    title = fig.layout.title.text
    assert "NVIDIA H100 80GB HBM3" in title and "torch 2.11.0+cu130" in title and "2026-11-23" in title
    ceiling = curves[ceiling_name]  # a named legend entry, styled unlike every measured series
    assert list(ceiling.y) == [843.6, 843.6] and list(ceiling.x) == [1, 16]
    assert ceiling.line.dash not in {t.line.dash for t in fig.data if t is not ceiling}
    assert not fig.layout.annotations  # no text placed at a value on the axis (a log axis then ran to 10^70)
    assert fig.layout.yaxis.type == "log"  # 200 to 9600 tokens/s: a log axis, spanning just the data
    assert [round(v, 2) for v in fig.layout.yaxis.range] == [2.2, 4.08]
    assert gpu_figure(records, machines[1]).layout.yaxis.type == "linear"  # a run of one value: linear
    table = gpu_table([r for r in records if r["run"] == "h100"])
    assert len(table) == len(rows) and set(table["run"]) == {"h100"}


def test_gpu_results_handler_reads_the_repository_folder_without_failing():
    from app.race import Race

    fig, table, notes, picker = Race.gpu_results()
    assert fig is not None and isinstance(notes, str) and picker.value == picker.choices[0][0]


def test_skipped_result_files_go_to_the_server_log_not_the_page(tmp_path, monkeypatch, caplog):
    import logging

    from app import race
    from app.benchmarks import read_results

    (tmp_path / "broken.json").write_text("{not json")
    monkeypatch.setattr(race, "read_results", lambda: read_results(tmp_path))
    with caplog.at_level(logging.INFO, logger="app.race"):
        _, _, notes, _ = race.Race.gpu_results()
    assert "skipped" not in notes
    assert any("broken.json" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def test_every_committed_run_has_its_own_name_one_figure_each_and_a_log_axis_that_fits():
    """The picker lists each committed run once, by GPU, date, what ran and its file; each run's figure holds
    only its curves and its ceiling, and a log axis spans the data, not the ceiling's position as an exponent."""
    import math

    from app.benchmarks import read_results
    from app.charts import gpu_figure

    rows, machines, _ = read_results()
    names = [m.name for m in machines]
    assert len(names) == len(set(names)) >= 5, names
    for m in machines:
        fig = gpu_figure(rows, m)
        shown = [y for t in fig.data for y in t.y]
        assert len(fig.data) <= 12 and shown, m.name  # one run's curves, not every run's
        assert m.gpu.removeprefix("NVIDIA ") in m.name and m.date in m.name and m.run in m.name
        if fig.layout.yaxis.type == "log":
            lo, hi = fig.layout.yaxis.range
            assert lo <= math.log10(min(shown)) and hi >= math.log10(max(shown)) and hi - lo < 4, (
                m.name,
                lo,
                hi,
            )


def test_every_committed_moe_run_has_the_one_token_ceiling():
    """An MoE forward at batch 1 reads the dense weights and k experts per layer: the AR ceiling is that, not the
    whole checkpoint's bytes (which put one run's ceiling at 67 tokens/s beside a rerun's 674)."""
    from app.benchmarks import RESULTS_DIR
    from benchmarks import moe

    checked = 0
    for path in sorted(RESULTS_DIR.rglob("*.json")):
        data = json.loads(path.read_text())
        machine = data.get("machine") if isinstance(data, dict) else None
        if isinstance(machine, dict) and machine.get("moe") and machine.get("ar_ceiling_tps"):
            want = moe.one_token_floor(machine)["ar_ceiling_tps"]
            assert abs(machine["ar_ceiling_tps"] - want) < 1e-6 * want, (
                path,
                machine["ar_ceiling_tps"],
                want,
            )
            checked += 1
    assert checked >= 4
