"""The AR vs SDAR tab: one prompt decoded one token per forward (`ar`) and by block diffusion on the same
weights (and `ar` on the AR twin when there is one), streamed side by side; a sweep over block lengths and
thresholds (TPF and tokens/s, the paper's Figures 3-4); the GPU measurements of the benchmark."""
from __future__ import annotations

import html
import time
from dataclasses import replace

import gradio as gr
import pandas as pd

from .benchmarks import read_results
from .charts import gpu_figure, gpu_table, sweep_figures, sweep_table
from .errors import shows_errors
from .prompting import check_fits, conversation, prompt_ids
from .registry import ar_twin_name
from .render import FrameBuilder, frame_html, placeholder_html, stats_row
from .settings import DecodeSettings, SettingsError
from .studio import Studio, decode_job
from .streaming import stream_lanes

LANES = ("ar", "sdar", "twin")
RACE_COLUMNS = ["run", "strategy", "block", "steps", "tokens", "forwards (NFE)", "TPF", "tokens/s", "latency (ms)"]
SEQUENTIAL, PARALLEL = "one after the other (fair timings)", "at the same time (live race)"
SWEEP_BLOCKS = (2, 4, 8, 16, 32)
SWEEP_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
FRAME_INTERVAL = 1 / 15


def lane_html(title: str, frame=None, pieces=None, *, status: str = "") -> str:
    head = (f'<div style="font-weight:600;margin-bottom:2px">{html.escape(title)}</div>'
            f'<div style="font-size:12px;color:#6b7280;min-height:1.2em">{html.escape(status)}</div>')
    if frame is None:
        return head + placeholder_html("waiting")
    return head + frame_html(frame, pieces, legend=False)


def speedup_markdown(stats: dict) -> str:
    """The headline: SDAR's tokens/s and forwards against AR on the same weights."""
    ar, sdar = stats.get("ar"), stats.get("sdar")
    if not ar or not sdar:
        return ""
    speed = sdar.tokens_per_second / ar.tokens_per_second if ar.tokens_per_second else float("nan")
    fwd = ar.forwards / sdar.forwards if sdar.forwards else float("nan")
    line = (f"### SDAR vs AR on the same weights: **{speed:.2f}×** tokens/s · {ar.forwards} → {sdar.forwards} "
            f"forwards (**{fwd:.2f}×**, TPF {sdar.tpf:.2f} vs {ar.tpf:.2f})")
    twin = stats.get("twin")
    if twin and twin.tokens_per_second:
        line += f"  \nvs the AR twin: {sdar.tokens_per_second / twin.tokens_per_second:.2f}× tokens/s"
    return line


class Race:
    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def _prompt(self, loaded, prompt: str, settings: DecodeSettings) -> list[int]:
        ids, _ = prompt_ids(loaded.tokenizer, conversation("", [], prompt))
        check_fits(len(ids), settings.max_new_tokens, settings.strategy, settings.block_length, loaded.context)
        return ids

    @shows_errors
    def race(self, prompt, model_name, block_length, steps, strategy, threshold, temperature, top_p,
             max_new_tokens, seed, mode, use_twin, request: gr.Request):
        """Outputs: AR lane, SDAR lane, twin lane, table, speedup."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise gr.Error("Type a prompt first.", title="Empty prompt")
        if mode not in (SEQUENTIAL, PARALLEL):
            raise SettingsError(f"race mode must be {SEQUENTIAL!r} or {PARALLEL!r}, got {mode!r}")
        settings = DecodeSettings.from_ui(block_length, steps, strategy, threshold, temperature, top_p,
                                          max_new_tokens, seed)
        loaded = self.studio.registry.get(model_name)
        if not loaded.is_sdar:
            raise gr.Error(f"{loaded.display_name} is an autoregressive model: the race needs an SDAR model "
                           "(it decodes the same weights both ways).")
        ids = self._prompt(loaded, prompt, settings)
        titles = {"ar": f"AR on the same weights ({loaded.display_name})",
                  "sdar": f"SDAR {settings.strategy}, block {settings.block_length}, steps {settings.steps}"
                          + (f", τ={settings.threshold:g}" if settings.strategy == "dynamic" else ""),
                  "twin": "AR twin"}
        # trace=False: the lanes are drawn from the streamed step events; no run keeps its trace
        jobs = {"ar": decode_job(loaded, ids, settings.as_ar(), trace=False),
                "sdar": decode_job(loaded, ids, settings, trace=False)}
        models = {"ar": loaded, "sdar": loaded}
        twin_name = ar_twin_name(model_name)
        twin_note = "no AR twin next to this model (sdar-X ↔ ar-X)"
        if use_twin and twin_name:
            twin = self.studio.registry.get(twin_name)
            titles["twin"] = f"AR twin ({twin.display_name})"
            jobs["twin"] = decode_job(twin, self._prompt(twin, prompt, settings.as_ar()), settings.as_ar(), trace=False)
            models["twin"] = twin
            twin_note = "waiting"
        elif not use_twin:
            twin_note = "AR twin not included"
        runs = {"ar": f"AR ({loaded.display_name})", "sdar": f"SDAR ({loaded.display_name})",
                "twin": titles["twin"]}  # the table's labels: its other columns say how each run decoded
        builders = {lane: FrameBuilder() for lane in jobs}
        frames, pieces, stats, t0 = {}, {lane: {} for lane in jobs}, {}, {}

        def render(lane: str) -> str:
            if lane not in jobs:
                return lane_html(titles[lane], status=twin_note)
            if lane in stats:
                s = stats[lane]
                status = (f"done: {s.new_tokens} tokens, {s.forwards} forwards, TPF {s.tpf:.2f}, "
                          f"{s.tokens_per_second:.1f} tokens/s, {s.seconds * 1000:.0f} ms")
            elif lane in frames:
                status = f"{builders[lane].n} forwards · {time.perf_counter() - t0[lane]:.1f} s"
            else:
                status = "waiting"
            return lane_html(titles[lane], frames.get(lane), pieces[lane], status=status)

        def table() -> pd.DataFrame:
            return pd.DataFrame([stats_row(runs[l], stats[l]) for l in LANES if l in stats], columns=RACE_COLUMNS)

        yield render("ar"), render("sdar"), render("twin"), table(), ""
        stop = self.studio.arm_stop(request)
        last = 0.0
        for u in stream_lanes(jobs, stop, parallel=mode == PARALLEL):
            if u.kind == "step":
                e = u.payload
                t0.setdefault(u.lane, time.perf_counter())
                frames[u.lane] = builders[u.lane].push(e)
                pieces[u.lane].update(models[u.lane].event_pieces(e))
                if time.perf_counter() - last < FRAME_INTERVAL:
                    continue
                last = time.perf_counter()
            elif u.kind == "error":
                raise u.payload
            elif u.kind == "stopped":
                yield render("ar"), render("sdar"), render("twin"), table(), "_Stopped._"
                return
            else:
                stats[u.lane] = u.payload.stats
            yield render("ar"), render("sdar"), render("twin"), table(), speedup_markdown(stats)

    @shows_errors
    def sweep(self, prompt, model_name, block_lengths, thresholds, max_new_tokens, request: gr.Request):
        """Dynamic decoding over block lengths x thresholds (steps = block length), and AR once.
        Outputs: TPF figure, tokens/s figure, table."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise gr.Error("Type a prompt first.", title="Empty prompt")
        blocks = sorted({_choice("block length", b, SWEEP_BLOCKS, lambda v: int(float(v)))
                         for b in (block_lengths or [])})
        thrs = sorted({_choice("threshold", t, SWEEP_THRESHOLDS, float) for t in (thresholds or [])})
        if not blocks or not thrs:
            raise gr.Error("Pick at least one block length and one threshold for the sweep.")
        base = DecodeSettings.from_ui(max(blocks), max(blocks), "dynamic", 0.9, 0.0, 1.0, max_new_tokens, 0)
        loaded = self.studio.registry.get(model_name)
        if not loaded.is_sdar:
            raise gr.Error(f"{loaded.display_name} is an autoregressive model: the sweep needs an SDAR model.")
        ids = self._prompt(loaded, prompt, base)
        stop = self.studio.arm_stop(request)
        runs = [("ar", None, None)] + [("sdar", b, t) for b in blocks for t in thrs]
        records, ar = [], None
        for kind, b, t in runs:
            if stop.is_set():
                gr.Warning("Sweep stopped.")
                break
            s = base.as_ar() if kind == "ar" else replace(base, block_length=b, steps=b, threshold=t)
            gen = decode_job(loaded, ids, s, trace=False)(None)
            st = gen.stats
            rec = {"block length": b or 1, "threshold": t, "tokens": st.new_tokens, "forwards": st.forwards,
                   "TPF": round(st.tpf, 3), "tokens/s": round(st.tokens_per_second, 1),
                   "latency (ms)": round(st.seconds * 1000), "answer ends": _last_line(loaded, gen)}
            if kind == "ar":
                ar = rec
                continue
            records.append(rec)
            tpf, speed = sweep_figures(records, ar)
            yield tpf, speed, sweep_table([ar] + records)
        if not records:
            tpf, speed = sweep_figures([], ar)
            yield tpf, speed, sweep_table([ar] if ar else [])

    @staticmethod
    def gpu_results():
        """Outputs: figure, table, notes (one line per benchmark run, then what was skipped)."""
        rows, machines, notes = read_results()
        lines = [f"**{m.run}**: {m.label}" + (f" · {m.arch}" if m.arch else "")
                 + (f" · {m.bandwidth_GBps:.0f} GB/s measured, AR ceiling {m.ar_ceiling_tps:.0f} tokens/s"
                    if m.bandwidth_GBps and m.ar_ceiling_tps else "")
                 + f" · {sum(r['run'] == m.run for r in rows)} rows" for m in machines]
        return gpu_figure(rows, machines), gpu_table(rows), "  \n".join(lines + notes)


def _last_line(loaded, gen, width: int = 40) -> str:
    """The answer's last line, shortened: where a too-large block or too-low threshold shows (`Answer: 85`
    turning into `Answer::18`), which TPF alone does not."""
    text = loaded.tokenizer.decode(gen.row_tokens(0), skip_special_tokens=True).strip()
    last = text.splitlines()[-1].strip() if text else ""
    return last if len(last) <= width else "…" + last[-width + 1:]


def _choice(name, value, choices, cast):
    """cast(value) if it is one of choices, else a SettingsError naming them."""
    try:
        v = cast(value)
    except (TypeError, ValueError):
        v = None
    if v not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return v
