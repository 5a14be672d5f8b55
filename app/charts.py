"""Plotly figures of the AR vs SDAR tab: the sweep (TPF and tokens/s against block length, one curve per
threshold, as the paper's Figures 3-4) and the GPU measurements (tokens/s against batch size, with the AR bandwidth
ceiling)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .render import empty_figure

SWEEP_COLUMNS = [
    "block length",
    "threshold",
    "tokens",
    "forwards",
    "TPF",
    "tokens/s",
    "spread",
    "latency (ms)",
    "answer ends",
]


def sweep_table(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{c: r.get(c) for c in SWEEP_COLUMNS} for r in records], columns=SWEEP_COLUMNS)


def sweep_figures(records: list[dict], ar: dict | None = None) -> tuple[go.Figure, go.Figure]:
    """(TPF vs block length per threshold, tokens/s vs block length per threshold with the AR level)."""
    sdar = [r for r in records if r.get("threshold") is not None]
    if not sdar:
        msg = "Run the sweep to see TPF and speed against block length."
        return empty_figure(msg), empty_figure(msg)
    by_thr = defaultdict(list)
    for r in sdar:
        by_thr[r["threshold"]].append(r)
    blocks = sorted({r["block length"] for r in sdar})
    tpf, speed = go.Figure(), go.Figure()
    for thr in sorted(by_thr):
        rows = sorted(by_thr[thr], key=lambda r: r["block length"])
        x = [r["block length"] for r in rows]
        name = f"threshold {thr:g}"
        tpf.add_trace(go.Scatter(x=x, y=[r["TPF"] for r in rows], mode="lines+markers", name=name))
        speed.add_trace(go.Scatter(x=x, y=[r["tokens/s"] for r in rows], mode="lines+markers", name=name))
    if ar is not None:
        for fig, key in ((tpf, "TPF"), (speed, "tokens/s")):
            fig.add_hline(
                y=ar[key],
                line_dash="dash",
                line_color="#6b7280",
                annotation_text=f"AR ({ar[key]:g})",
                annotation_position="bottom right",
            )
    for fig, title, y in (
        (tpf, "Tokens per forward vs block length", "TPF"),
        (speed, "Decoding speed vs block length", "tokens/s"),
    ):
        fig.update_layout(
            title=dict(text=title, font=dict(size=14)),
            template="plotly_white",
            height=340,
            xaxis=dict(title="block length", type="log", tickvals=blocks, tickformat="d"),
            yaxis=dict(title=y, rangemode="tozero"),
            margin=dict(l=50, r=20, t=40, b=40),
            legend=dict(orientation="h", y=-0.25),
        )
    return tpf, speed


def race_figure(lanes: list[tuple[str, list[float], int]]) -> go.Figure:
    """The race as bars: tokens/s per lane (median, whiskers from the slowest to the fastest run, every run as a
    dot) beside the forwards each lane needed. lanes: (label, tokens/s of each timed run, forwards)."""
    if not lanes:
        return empty_figure("Race to see tokens/s and forwards per lane.", height=300)
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("tokens/s (median of the timed runs)", "forwards (NFE) for the answer"),
    )
    names = [name for name, _, _ in lanes]
    medians = [statistics.median(speeds) for _, speeds, _ in lanes]
    fig.add_trace(
        go.Bar(
            x=names,
            y=medians,
            marker_color="#6366f1",
            name="tokens/s",
            text=[f"{m:.1f}" for m in medians],
            textposition="inside",
            error_y=dict(
                type="data",
                symmetric=False,
                array=[max(s) - m for (_, s, _), m in zip(lanes, medians)],
                arrayminus=[m - min(s) for (_, s, _), m in zip(lanes, medians)],
            ),
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=[name for name, speeds, _ in lanes for _ in speeds],
            y=[v for _, speeds, _ in lanes for v in speeds],
            mode="markers",
            marker=dict(color="#111827", size=6),
            name="each timed run",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=names,
            y=[f for _, _, f in lanes],
            marker_color="#f59e0b",
            name="forwards",
            text=[str(f) for _, _, f in lanes],
            textposition="inside",
        ),
        row=1,
        col=2,
    )
    fig.update_layout(
        template="plotly_white", height=340, showlegend=False, margin=dict(l=50, r=20, t=70, b=40)
    )
    fig.update_yaxes(rangemode="tozero")
    return fig


MODE_NAMES = {
    "ar": "AR",
    "sdar": "SDAR",
    "hf-compiled": "transformers (compiled)",
    "hf-eager": "transformers (eager)",
}
MODE_DASH = {"ar": "dash", "hf-compiled": "dot", "hf-eager": "dot"}
CEILING_DASH, CEILING_COLOUR = (
    "longdashdot",
    "#dc2626",
)  # the AR bandwidth ceiling: unlike any measured series


def gpu_curve_label(row: dict) -> str:
    """A curve's name: mode, then the decoding (strategy, block length, threshold) for SDAR."""
    mode = row["mode"]
    label = MODE_NAMES.get(mode, mode)
    if mode == "sdar":
        label += f" {row['strategy']} L={row['block_length']:g}"
        if row["steps"] is not None:
            label += f" T={row['steps']:g}"
        if row["strategy"] == "dynamic" and row["threshold"] is not None:
            label += f" τ={row['threshold']:g}"
    return label


def ceiling_name(m) -> str:
    """The AR ceiling's legend entry, with its value: a bound, not a measurement."""
    return f"AR ceiling, batch 1: {m.ar_ceiling_tps:.0f} tokens/s ({m.bandwidth_GBps or 0:.0f} GB/s measured)"


def gpu_figure(rows: list[dict], machine) -> go.Figure:
    """One run's tokens/s vs batch size: one curve per (mode, block length, strategy), the AR bandwidth ceiling
    (weights streamed once per forward) as a line named with its value. The y axis is linear, or logarithmic
    when the run's values span more than LOG_SPAN (its range then fits the data and the ceiling)."""
    rows = [r for r in rows if machine is not None and r["run"] == machine.run]
    if not rows:
        return empty_figure(
            "No GPU measurements in benchmarks/results/ yet: python -m benchmarks.bench --out "
            "benchmarks/results/<name> writes them."
        )
    curves = defaultdict(list)
    for r in rows:
        key = (
            r["mode"],
            r["strategy"],
            r["block_length"],
            r["steps"],
            r["threshold"] if r["strategy"] == "dynamic" else None,
        )
        curves[key].append(r)
    fig = go.Figure()
    for key, rs in sorted(curves.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        rs.sort(key=lambda r: r["batch_size"])
        fig.add_trace(
            go.Scatter(
                x=[r["batch_size"] for r in rs],
                y=[r["tokens_per_second"] for r in rs],
                mode="lines+markers",
                name=gpu_curve_label(rs[0]),
                line=dict(dash=MODE_DASH.get(key[0], "solid")),
                hovertemplate=f"{gpu_curve_label(rs[0])}<br>batch %{{x}}: %{{y:.0f}} tokens/s<extra></extra>",
            )
        )
    batches = sorted({r["batch_size"] for r in rows})
    ys = [r["tokens_per_second"] for r in rows if r["tokens_per_second"] > 0]
    if machine.ar_ceiling_tps:
        name = ceiling_name(machine)
        fig.add_trace(
            go.Scatter(
                x=[batches[0], batches[-1]],
                y=[machine.ar_ceiling_tps] * 2,
                mode="lines",
                name=name,
                line=dict(dash=CEILING_DASH, color=CEILING_COLOUR, width=2),
                hovertemplate=f"{name}<extra></extra>",
            )
        )
        ys.append(machine.ar_ceiling_tps)
    log_y = bool(ys) and max(ys) / min(ys) > LOG_SPAN
    yaxis = dict(
        title="tokens/s", type="log" if log_y else "linear", rangemode="normal" if log_y else "tozero"
    )
    if log_y:  # log axes take exponents: the data and the ceiling, with a little room
        yaxis["range"] = [math.log10(min(ys)) - 0.1, math.log10(max(ys)) + 0.1]
    title = f"{machine.label}" + (f" · {machine.arch}" if machine.arch else "") + f" · {machine.run}"
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)),
        template="plotly_white",
        height=420,
        xaxis=dict(
            title="batch size", type="log" if len(batches) > 1 else "linear", tickvals=batches, tickformat="d"
        ),
        yaxis=yaxis,
        legend=dict(font=dict(size=11)),
        margin=dict(l=60, r=20, t=50, b=40),
    )
    return fig


LOG_SPAN = 30  # a run whose values span more than this (largest / smallest) gets a log y axis


GPU_COLUMNS = [
    "run",
    "gpu",
    "torch",
    "date",
    "model",
    "mode",
    "strategy",
    "block_length",
    "steps",
    "threshold",
    "batch_size",
    "tokens_per_second",
    "tpf",
    "ms_per_forward",
    "speedup_vs_ar",
]


def gpu_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame([{c: r.get(c) for c in GPU_COLUMNS} for r in rows], columns=GPU_COLUMNS)
    for c in ("tokens_per_second", "tpf", "ms_per_forward", "speedup_vs_ar"):
        table[c] = table[c].astype(float).round(2)
    return table
