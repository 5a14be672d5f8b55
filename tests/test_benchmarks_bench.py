"""benchmarks/bench.py: the benchmark harness runs end to end on CPU with the tiny architecture and writes its files."""

import json

import pytest

from benchmarks import bench


def test_bench_tiny_writes_results_and_realized_tpf(tmp_path, capsys):
    out = tmp_path / "res"
    bench.main(
        [
            "--arch",
            "tiny",
            "--device",
            "cpu",
            "--batch-sizes",
            "1",
            "--block-lengths",
            "4",
            "--new-tokens",
            "8",
            "--prompt-len",
            "8",
            "--repeats",
            "1",
            "--transformers",
            "none",
            "--out",
            str(out),
        ]
    )
    data = json.loads((out / "results.json").read_text())
    rows = {(r["mode"], r["strategy"]): r for r in data["rows"]}
    assert rows[("ar", "ar")]["tpf"] == 1.0
    static = rows[("sdar", "static")]
    assert static["tpf"] == 4.0 and static["steps"] == 1
    # Eq. 11 without the extra cache forward: realized TPF = TGS_SDAR * t_f / alpha, t_f from the AR run
    t_f = 1 / rows[("ar", "ar")]["decode_tokens_per_second"]
    assert abs(static["realized_tpf_fused"] - static["decode_tokens_per_second"] * t_f) < 1e-9
    assert data["machine"]["ar_ceiling_tps"] > 0
    assert "batch_size" in (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "tok/s" in capsys.readouterr().out


def test_realized_tpf_matches_eq_11_of_the_paper():
    # A run that reaches TPF beta/gamma = 4 with one extra forward per block (the paper's engine):
    alpha, beta, gamma, t_f = 4, 16, 4, 0.002
    tgs_sdar = alpha * beta / ((gamma + 1) * t_f)  # Eq. 10
    row = {
        "mode": "sdar",
        "prompt_len": 64,
        "batch_size": alpha,
        "block_length": beta,
        "decode_tokens_per_second": tgs_sdar,
    }
    eq11, _ = bench.realized_tpf(row, {(64, alpha): {"decode_tokens_per_second": alpha / t_f}})
    assert abs(eq11 - beta / gamma) < 1e-9


def test_bench_runs_a_checkpoint(tmp_path):
    out = tmp_path / "ck"
    bench.main(
        [
            "--checkpoint",
            "assets/models/sdar-tiny",
            "--device",
            "cpu",
            "--batch-sizes",
            "1",
            "--block-lengths",
            "4",
            "--new-tokens",
            "8",
            "--prompt-len",
            "8",
            "--repeats",
            "1",
            "--transformers",
            "none",
            "--out",
            str(out),
        ]
    )
    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["arch"] == "assets/models/sdar-tiny"
    assert {r["mode"] for r in data["rows"]} >= {"ar", "sdar"}


def test_context_sweep_runs_batch_one_at_later_lengths_and_reports_each(tmp_path):
    out = tmp_path / "sweep"
    bench.main(
        [
            "--arch",
            "tiny",
            "--device",
            "cpu",
            "--batch-sizes",
            "1",
            "2",
            "--block-lengths",
            "4",
            "--no-dynamic",
            "--prompt-lengths",
            "8",
            "24",
            "--new-tokens",
            "8",
            "4",
            "--repeats",
            "1",
            "--transformers",
            "none",
            "--out",
            str(out),
        ]
    )
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert sorted(
        (r["prompt_len"], r["new_tokens"] // r["batch_size"], r["batch_size"], r["mode"]) for r in rows
    ) == [
        (8, 8, 1, "ar"),
        (8, 8, 1, "sdar"),
        (8, 8, 2, "ar"),
        (8, 8, 2, "sdar"),
        (24, 4, 1, "ar"),
        (24, 4, 1, "sdar"),
    ]
    long_ar = next(r for r in rows if r["prompt_len"] == 24 and r["mode"] == "ar")
    long_sdar = next(r for r in rows if r["prompt_len"] == 24 and r["mode"] == "sdar")
    assert long_sdar["speedup_vs_ar"] == long_sdar["tokens_per_second"] / long_ar["tokens_per_second"]
    report = bench.report_markdown(out)
    sweep_rows = [line for line in report.splitlines() if line.startswith("| 24 | 4 |")]
    assert len(sweep_rows) == 2 and f"| {long_ar['tokens_per_second']:.0f} |" in sweep_rows[0]
    # --page: a page's generated part, written by an older folder, becomes this folder's report; the prose stays
    page = out.parent / "page.md"
    old_part = bench.PAGE_BEGIN.format(folder="benchmarks/results/old", page=str(page)) + "\nold table\n"
    page.write_text(
        f"# Speed\n\nprose before\n\n{old_part}{bench.PAGE_END}\n\nprose after\n", encoding="utf-8"
    )
    assert bench.main(["--report", str(out), "--page", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Speed\n\nprose before\n\n") and text.endswith(
        f"{bench.PAGE_END}\n\nprose after\n"
    )
    assert "old table" not in text and report.strip() in text
    assert bench.PAGE_BEGIN.format(folder=str(out), page=str(page)) in text
    assert bench.page_with_report(text, str(out), str(page)) == text  # written once, nothing changes
    page.write_text("# Speed\n\nno generated part\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="has no generated part"):
        bench.main(["--report", str(out), "--page", str(page)])
    assert page.read_text(encoding="utf-8") == "# Speed\n\nno generated part\n"


def test_forward_floor_counts_weights_and_the_filled_kv():
    info = {"weight_GB": 2.0, "bandwidth_GBps": 1000.0, "kv_bytes_per_position": 1e5}
    # 2 GB of weights + (100 + 50) positions of 1e5 bytes at 1e12 B/s
    assert abs(bench.forward_floor_ms(info, 100, 100) - 1000 * (2e9 + 1.5e7) / 1e12) < 1e-12


def test_new_tokens_must_match_the_prompt_lengths():
    args = bench.build_parser().parse_args(["--prompt-lengths", "8", "16", "32", "--new-tokens", "4", "8"])
    with pytest.raises(SystemExit, match="one per prompt length"):
        bench.sweep(args)


def test_moe_bench_reports_distinct_experts_the_one_token_floor_and_the_checkpoint_load(
    tmp_path, monkeypatch
):
    """tiny-moe (16 experts, 4 per token) end to end on the CPU: written with save_pretrained and loaded back, every
    chunk row routed independently; the distinct experts per forward against the independent-routing expectation,
    and the ceiling from the dense weights plus k experts per layer (not the whole checkpoint); the gemv tiles it was
    given are the ones in force and on record."""
    from sdar_core import moe

    monkeypatch.setattr(moe, "GEMV", moe.GEMV)  # bench --gemv-tiles replaces it for the process
    out = tmp_path / "moe"
    bench.main(
        [
            "--arch",
            "tiny-moe",
            "--device",
            "cpu",
            "--batch-sizes",
            "1",
            "--block-lengths",
            "16",
            "--steps",
            "4",
            "--no-dynamic",
            "--new-tokens",
            "32",
            "--prompt-len",
            "8",
            "--repeats",
            "1",
            "--transformers",
            "none",
            "--save-load",
            str(tmp_path / "ckpt"),
            "--gemv-tiles",
            *"4 2 512 2 8".split(),
            "--out",
            str(out),
        ]
    )
    data = json.loads((out / "results.json").read_text())
    m, rows = data["machine"], {r["mode"]: r for r in data["rows"]}
    tiles = dict(block_n=4, down_block_n=2, block_k=512, stages=2, warps=8)
    assert m["gemv_tiles"] == tiles and moe.GEMV == moe.GemvConfig(**tiles)
    assert m["moe"] and m["routing"] == "independent" and (m["experts"], m["experts_per_token"]) == (16, 4)
    assert m["load"]["shards"] >= 1 and abs(m["load"]["checkpoint_GB"] - m["load"]["weights_GB"]) < 1e-3
    one_token = m["dense_bytes"] + 4 * m["sparse_layers"] * m["expert_bytes"]
    assert abs(m["ar_ceiling_tps"] - m["bandwidth_GBps"] * 1e9 / one_token) < 1e-6 * m["ar_ceiling_tps"]
    assert rows["ar"]["distinct_experts"] == 4 and rows["ar"]["routed_rows"] == 1
    sdar = rows["sdar"]
    assert (
        16 <= sdar["routed_rows"] <= 32
    )  # a block of 16 masked rows, or 32 with the finished block fused in
    expected = 16 * (1 - (1 - 4 / 16) ** sdar["routed_rows"])
    assert abs(sdar["uniform_distinct_experts"] - expected) < 1e-9
    assert 4 < sdar["distinct_experts"] <= 16 and abs(sdar["distinct_experts"] - expected) < 2
    assert sdar["moe_floor_ms"] > rows["ar"]["moe_floor_ms"]


def test_the_gemv_tile_search_finds_the_fastest_checked_tiling_and_times_each_once():
    """gemv_descent on a made-up cost with one best point off the default in every field, a faster tiling that
    fails its check (never chosen), and a count of the calls."""
    from benchmarks.moe import GEMV_GRID, gemv_descent

    best = dict(block_n=4, down_block_n=16, block_k=512, stages=2, warps=8)
    calls = []

    def timed(c):
        calls.append(tuple(c.values()))
        if c["block_n"] == 2:  # the fastest of all, but its output did not match
            return None
        return 1.0 + sum(abs(GEMV_GRID[f].index(c[f]) - GEMV_GRID[f].index(best[f])) for f in GEMV_GRID)

    start = dict(block_n=16, down_block_n=8, block_k=256, stages=4, warps=4)
    assert gemv_descent(timed, start) == best
    assert len(calls) == len(set(calls)) and len(calls) <= sum(map(len, GEMV_GRID.values())) * 2
    assert (
        gemv_descent(lambda c: None if c != start else 1.0, start) == start
    )  # nothing else passes: the start


def test_the_independent_routing_expectation_matches_a_simulation():
    import torch

    from benchmarks.moe import uniform_distinct

    g = torch.Generator().manual_seed(0)
    for E, k, n in ((16, 4, 4), (128, 8, 16), (128, 8, 32)):
        counts = [
            torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(n)]).unique().numel()
            for _ in range(400)
        ]
        assert abs(sum(counts) / len(counts) - uniform_distinct(E, k, n)) < 0.03 * uniform_distinct(E, k, n)
