"""Plotly figures of the AR vs SDAR tab: the sweep (TPF and tokens/s against block length, one curve per
threshold, as the paper's Figures 3-4) and the GPU measurements (tokens/s against batch size)."""
from __future__ import annotations

from collections import defaultdict

import pandas as pd
import plotly.graph_objects as go

SWEEP_COLUMNS = ["block length", "threshold", "tokens", "forwards", "TPF", "tokens/s", "latency (ms)"]


def _empty(message: str, height: int = 320) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(height=height, template="plotly_white", xaxis_visible=False, yaxis_visible=False)
    return fig


def sweep_table(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{c: r.get(c) for c in SWEEP_COLUMNS} for r in records], columns=SWEEP_COLUMNS)


def sweep_figures(records: list[dict], ar: dict | None = None) -> tuple[go.Figure, go.Figure]:
    """(TPF vs block length per threshold, tokens/s vs block length per threshold with the AR level)."""
    sdar = [r for r in records if r.get("threshold") is not None]
    if not sdar:
        msg = "Run the sweep to see TPF and speed against block length."
        return _empty(msg), _empty(msg)
    by_thr = defaultdict(list)
    for r in sdar:
        by_thr[r["threshold"]].append(r)
    tpf, speed = go.Figure(), go.Figure()
    for thr in sorted(by_thr):
        rows = sorted(by_thr[thr], key=lambda r: r["block length"])
        x = [r["block length"] for r in rows]
        name = f"threshold {thr:g}"
        tpf.add_trace(go.Scatter(x=x, y=[r["TPF"] for r in rows], mode="lines+markers", name=name))
        speed.add_trace(go.Scatter(x=x, y=[r["tokens/s"] for r in rows], mode="lines+markers", name=name))
    if ar is not None:
        for fig, key in ((tpf, "TPF"), (speed, "tokens/s")):
            fig.add_hline(y=ar[key], line_dash="dash", line_color="#6b7280",
                          annotation_text=f"AR ({ar[key]:g})", annotation_position="bottom right")
    for fig, title, y in ((tpf, "Tokens per forward vs block length", "TPF"),
                          (speed, "Decoding speed vs block length", "tokens/s")):
        fig.update_layout(title=dict(text=title, font=dict(size=14)), template="plotly_white", height=340,
                          xaxis=dict(title="block length", type="log", dtick=0.30103, tickformat="d"),
                          yaxis=dict(title=y, rangemode="tozero"), margin=dict(l=50, r=20, t=40, b=40),
                          legend=dict(orientation="h", y=-0.25))
    return tpf, speed


def gpu_figure(records: list[dict]) -> go.Figure:
    """tokens/s vs batch size, one curve per (GPU, model, mode, strategy, block length, threshold)."""
    if not records:
        return _empty("No GPU measurements in benchmarks/results/ yet (python -m sdar_core.bench writes them).")
    curves = defaultdict(list)
    for r in records:
        key = (r["gpu"], r["model"], r["mode"], r["strategy"] if r["mode"] != "ar" else "", r["block_length"],
               r["threshold"] if r["mode"] != "ar" else None)
        curves[key].append(r)
    fig = go.Figure()
    for (gpu, model, mode, strategy, block, thr), rows in sorted(curves.items(), key=lambda kv: str(kv[0])):
        rows.sort(key=lambda r: r["batch_size"])
        label = f"{gpu} · {model} · {mode.upper()}"
        if mode != "ar":
            label += f" {strategy} L={block:g}" + (f" τ={thr:g}" if thr is not None else "")
        fig.add_trace(go.Scatter(x=[r["batch_size"] for r in rows], y=[r["tokens_per_second"] for r in rows],
                                 mode="lines+markers", name=label,
                                 line=dict(dash="dash" if mode == "ar" else "solid")))
    gpus = sorted({r["gpu"] for r in records})
    fig.update_layout(title=dict(text=f"Measured throughput on {', '.join(gpus)}", font=dict(size=14)),
                      template="plotly_white", height=380, xaxis=dict(title="batch size", type="log"),
                      yaxis=dict(title="tokens/s", rangemode="tozero"), margin=dict(l=50, r=20, t=40, b=40))
    return fig


def gpu_table(records: list[dict]) -> pd.DataFrame:
    cols = ["gpu", "torch", "date", "model", "mode", "strategy", "block_length", "steps", "threshold", "batch_size",
            "tokens_per_second", "tpf"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in records], columns=cols)
