"""The Denoising visualizer tab: replay a generation's trajectory frame by frame (step slider, play with a
gr.Timer), its confidence heatmap, the per-block table, and the trace as JSON / CSV downloads."""
from __future__ import annotations

import gradio as gr

from .errors import explains_in_place
from .prompting import conversation
from .recording import Recording, record
from .render import block_table, confidence_heatmap, frame_at, frame_html, placeholder_html, stats_markdown
from .replay import paced
from .settings import MAX_MESSAGE_CHARS, DecodeRequest, checked_text
from .streaming import stream
from .studio import Studio

EMPTY = "No generation yet in this session: chat in the Chat tab, or run a prompt here."


def shown_step(recording: Recording, step) -> int:
    """The step (counted from 1, as the slider shows it) clamped to the recording; the last one when unreadable."""
    try:
        step = int(step)
    except (TypeError, ValueError, OverflowError):
        step = recording.n_steps
    return max(1, min(step, recording.n_steps))


def replay_frame(recording: Recording | None, step) -> str:
    """HTML of the frame after step `step` (counted from 1) of the recording (clamped to its range)."""
    if recording is None or not recording.events:
        return placeholder_html(EMPTY)
    step = shown_step(recording, step)
    last = step == recording.n_steps and recording.last_frame is not None
    frame = recording.last_frame if last else frame_at(recording.events, step - 1, recording.answer_end)
    return frame_html(frame, recording.pieces, title=repr(recording.label), total=recording.n_steps)


def heatmap(recording: Recording | None, step=None):
    """The recording's confidence heatmap with step `step` (from 1) marked."""
    if recording is None or not recording.events:
        return confidence_heatmap([])
    return confidence_heatmap(recording.events, recording.pieces, current=shown_step(recording, step))


def show(recording: Recording | None):
    """Everything the tab shows for a recording. Outputs: title, frame, slider, heatmap, table, files."""
    if recording is None or not recording.events:
        return (EMPTY, placeholder_html(EMPTY), gr.Slider(minimum=1, maximum=2, value=1, step=1),
                confidence_heatmap([]), block_table([]), None)
    last = recording.n_steps
    title = f"**{recording.label}**  \n{stats_markdown(recording.stats, '' if recording.stats else '_stopped_')}"
    files = [p for p in (recording.json_path, recording.csv_path) if p]
    return (title, replay_frame(recording, last), gr.Slider(minimum=1, maximum=max(last, 2), value=last, step=1),
            heatmap(recording, last), block_table(recording.events), files)


class Visualizer:
    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    @explains_in_place(7, at=1)  # in the title, above the frame
    def run(self, prompt, request: gr.Request, **ui):
        """Decode a prompt (one user turn) and show it; `ui` holds the decoding inputs by name (DecodeRequest).
        Outputs: recording, then show()'s six."""
        prompt = checked_text("prompt", prompt, MAX_MESSAGE_CHARS)
        if not prompt:
            raise gr.Error("Type a prompt first.", title="Empty prompt")
        req = DecodeRequest.from_ui(ui)
        lane, notes = self.studio.lane(req, conversation("", [], prompt))
        notes = "".join(f"  \nℹ️ {n}" for n in notes)
        stop = self.studio.arm_stop(request)
        for _ in stream({"answer": lane}, stop):
            if lane.state == "running":
                yield (gr.skip(), "Decoding…" + notes, frame_html(lane.frame, lane.pieces, title="Live"),
                       gr.skip(), gr.skip(), gr.skip(), gr.skip())
        rec = record(prompt[:80], lane)
        if req.pace_ms and lane.gen is not None:  # the chat's watch replay, in this tab's frame
            for _, frame in paced(rec.watch, req.pace_ms, stop):
                yield (gr.skip(), "Watching the decode…" + notes,
                       frame_html(frame, rec.pieces, title="Watch", total=rec.n_steps), *[gr.skip()] * 4)
        title, *rest = show(rec)
        yield (rec, title + notes, *rest)

    @staticmethod
    def frame(step, recording):
        """The frame and the heatmap at slider step `step` (from 1). Outputs: frame, heatmap."""
        return replay_frame(recording, step), heatmap(recording, step)

    @staticmethod
    def play(step, recording):
        """Start the replay (from the beginning when at the end). Outputs: slider, frame, heatmap, timer."""
        if recording is None or not recording.events:
            return gr.skip(), placeholder_html(EMPTY), gr.skip(), gr.Timer(active=False)
        step = shown_step(recording, step)
        if step >= recording.n_steps:
            step = 1
        return step, replay_frame(recording, step), heatmap(recording, step), gr.Timer(active=True)

    @staticmethod
    def tick(step, recording):
        """One timer tick: the next frame; the timer stops on the last one. Outputs: slider, frame, heatmap,
        timer."""
        if recording is None or not recording.events:
            return gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
        step = min(shown_step(recording, step) + 1, recording.n_steps)
        # Only the last frame touches the timer: a tick answered after Pause must not switch it back on.
        return step, replay_frame(recording, step), heatmap(recording, step), \
            gr.Timer(active=False) if step >= recording.n_steps else gr.skip()

    @staticmethod
    def pause():
        return gr.Timer(active=False)
