"""benchmarks/bench.py: the benchmark harness runs end to end on CPU with the tiny architecture and writes its files."""
import json

from benchmarks import bench


def test_bench_tiny_writes_results_and_realized_tpf(tmp_path, capsys):
    out = tmp_path / "res"
    bench.main(["--arch", "tiny", "--device", "cpu", "--batch-sizes", "1", "--block-lengths", "4",
                "--new-tokens", "8", "--prompt-len", "8", "--repeats", "1", "--transformers", "none",
                "--out", str(out)])
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
    row = {"mode": "sdar", "batch_size": alpha, "block_length": beta, "decode_tokens_per_second": tgs_sdar}
    eq11, _ = bench.realized_tpf(row, {alpha: {"decode_tokens_per_second": alpha / t_f}})
    assert abs(eq11 - beta / gamma) < 1e-9


def test_bench_runs_a_checkpoint(tmp_path):
    out = tmp_path / "ck"
    bench.main(["--checkpoint", "assets/models/sdar-tiny", "--device", "cpu", "--batch-sizes", "1", "--block-lengths",
                "4", "--new-tokens", "8", "--prompt-len", "8", "--repeats", "1", "--transformers", "none",
                "--out", str(out)])
    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["arch"] == "assets/models/sdar-tiny"
    assert {r["mode"] for r in data["rows"]} >= {"ar", "sdar"}
