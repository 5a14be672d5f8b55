"""The Denoising visualizer tab: replay a generation's trajectory frame by frame (step slider, play with a
gr.Timer), its confidence heatmap, the per-block table, and the trace as JSON / CSV downloads."""
from __future__ import annotations

import gradio as gr

from .errors import shows_errors
from .prompting import conversation
from .recording import Recording, record
from .render import block_table, confidence_heatmap, frame_at, frame_html, placeholder_html, stats_markdown
from .settings import MAX_MESSAGE_CHARS, DecodeRequest, checked_text
from .streaming import stream
from .studio import Studio

EMPTY = "No generation yet in this session: chat in the Chat tab, or run a prompt here."


def replay_frame(recording: Recording | None, step) -> str:
    """HTML of the frame after global step `step` of the recording (clamped to its range)."""
    if recording is None or not recording.events:
        return placeholder_html(EMPTY)
    try:
        step = int(step)
    except (TypeError, ValueError):
        step = recording.n_steps - 1
    step = max(0, min(step, recording.n_steps - 1))
    last = step == recording.n_steps - 1 and recording.last_frame is not None
    frame = recording.last_frame if last else frame_at(recording.events, step, recording.answer_end)
    return frame_html(frame, recording.pieces, title=f"{recording.label!r} — frame {step + 1}/{recording.n_steps}")


def show(recording: Recording | None):
    """Everything the tab shows for a recording. Outputs: title, frame, slider, heatmap, table, files."""
    if recording is None or not recording.events:
        return (EMPTY, placeholder_html(EMPTY), gr.Slider(minimum=0, maximum=1, value=0, step=1),
                confidence_heatmap([]), block_table([]), None)
    last = recording.n_steps - 1
    title = f"**{recording.label}**  \n{stats_markdown(recording.stats, '' if recording.stats else '_stopped_')}"
    files = [p for p in (recording.json_path, recording.csv_path) if p]
    return (title, replay_frame(recording, last), gr.Slider(minimum=0, maximum=max(last, 1), value=last, step=1),
            confidence_heatmap(recording.events, recording.pieces), block_table(recording.events), files)


class Visualizer:
    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    @shows_errors
    def run(self, prompt, request: gr.Request, **ui):
        """Decode a prompt (one user turn) and show it; `ui` holds the decoding inputs by name (DecodeRequest).
        Outputs: recording, then show()'s six."""
        prompt = checked_text("prompt", prompt, MAX_MESSAGE_CHARS)
        if not prompt:
            raise gr.Error("Type a prompt first.", title="Empty prompt")
        req = DecodeRequest.from_ui(ui)
        lane, notes = self.studio.lane(req, conversation("", [], prompt))
        for n in notes:
            gr.Warning(n)
        for _ in stream({"answer": lane}, self.studio.arm_stop(request), pace_ms=req.pace_ms):
            if lane.state == "running":
                yield (gr.skip(), "Decoding…", frame_html(lane.frame, lane.pieces, title="Live"),
                       gr.skip(), gr.skip(), gr.skip(), gr.skip())
        rec = record(prompt[:80], lane)
        yield (rec, *show(rec))

    @staticmethod
    def frame(step, recording):
        return replay_frame(recording, step)

    @staticmethod
    def play(step, recording):
        """Start the replay (from the beginning when at the end). Outputs: slider, frame, timer."""
        if recording is None or not recording.events:
            return gr.skip(), placeholder_html(EMPTY), gr.Timer(active=False)
        step = int(step or 0)
        if step >= recording.n_steps - 1:
            step = 0
        return step, replay_frame(recording, step), gr.Timer(active=True)

    @staticmethod
    def tick(step, recording):
        """One timer tick: the next frame; the timer stops on the last one. Outputs: slider, frame, timer."""
        if recording is None or not recording.events:
            return gr.skip(), gr.skip(), gr.Timer(active=False)
        step = min(int(step or 0) + 1, recording.n_steps - 1)
        # Only the last frame touches the timer: a tick answered after Pause must not switch it back on.
        return step, replay_frame(recording, step), gr.Timer(active=False) if step >= recording.n_steps - 1 \
            else gr.skip()

    @staticmethod
    def pause():
        return gr.Timer(active=False)
