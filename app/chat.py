"""The Chat tab: multi-turn chat with the model's chat template. The answer decodes at full speed, then (with a
watch pace, the default) replays frame by frame: every block opens fully masked (▒) and is denoised step by step,
this step's commits outlined, every token coloured by its confidence. Errors and notes appear in place, beside
the message box, and leave the conversation as it was."""
from __future__ import annotations

import gradio as gr

from .errors import explained, unshown
from .prompting import conversation
from .recording import Recording, record
from .render import MASK_GLYPH, Frame, frame_html, frame_text, placeholder_html, stats_markdown, step_label
from .replay import WATCH_MS, paced
from .settings import MAX_MESSAGE_CHARS, MAX_SYSTEM_CHARS, PACE, DecodeRequest, checked_text
from .streaming import Lane, stream
from .studio import WARMUP, Studio

LIVE_PLACEHOLDER = "The block in flight appears here while the model answers."
NO_ANSWER = "No answer to replay yet: send a message first."


class Chat:
    """Handlers of the Chat tab (bound to the shared Studio)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def respond(self, message, history, system, request: gr.Request, **ui):
        """Stream one answer; `ui` holds the decoding inputs by name (DecodeRequest). Outputs: chatbot, history,
        message box, live HTML, stats, recording, note (the message area). A refused request shows its reason in
        the message area, with the conversation and the message box as they were."""
        try:
            yield from self._respond(message, history, system, request, ui)
        except Exception as e:
            reason = explained(e)
            before = history if isinstance(history, list) else gr.skip()
            box = message if isinstance(message, str) else gr.skip()
            yield before, gr.skip(), box, placeholder_html(LIVE_PLACEHOLDER), "", gr.skip(), "⚠️ " + reason
            raise unshown(reason) from None

    def _respond(self, message, history, system, request, ui):
        message = checked_text("message", message, MAX_MESSAGE_CHARS)
        system = checked_text("system prompt", system, MAX_SYSTEM_CHARS)
        if not message:
            raise gr.Error("Type a message first.", title="Empty message")
        req, history = DecodeRequest.from_ui(ui), list(history or [])
        lane, notes = self.studio.lane(req, conversation(system, history, message))
        turn = history + [{"role": "user", "content": message}]
        shown = turn + [{"role": "assistant", "content": MASK_GLYPH}]
        waiting = WARMUP.note()
        note = "  \n".join(f"ℹ️ {n}" for n in notes)  # stays in the message area with the answer
        yield shown, gr.skip(), "", placeholder_html(f"Prompt: {len(lane.ids)} tokens — decoding…"
                                                     + (f" ({waiting})" if waiting else "")), "", gr.skip(), note
        hidden, stop = lane.loaded.stop_token_ids, self.studio.arm_stop(request)
        for _ in stream({"answer": lane}, stop):
            if lane.state != "running":
                continue
            if req.pace_ms:  # the replay follows: no answer flashing by first
                live = placeholder_html(f"Decoding… {lane.builder.n} steps so far; then shown frame by frame.")
                yield gr.skip(), gr.skip(), gr.skip(), live, gr.skip(), gr.skip(), gr.skip()
                continue
            shown[-1] = {"role": "assistant", "content": frame_text(lane.frame, lane.pieces, hidden) or MASK_GLYPH}
            yield shown, gr.skip(), gr.skip(), frame_html(lane.frame, lane.pieces, title="Live"), gr.skip(), \
                gr.skip(), gr.skip()
        rec = record(message[:80], lane)
        if req.pace_ms and lane.gen is not None:
            last = None
            for last, frame in paced(rec.watch, req.pace_ms, stop):
                shown[-1] = {"role": "assistant", "content": frame_text(frame, rec.pieces, hidden) or MASK_GLYPH}
                yield shown, gr.skip(), gr.skip(), watch_html(rec, frame, "Watch"), gr.skip(), gr.skip(), gr.skip()
            if last is not None and last < len(rec.watch) - 1:
                yield *stopped_replay(rec, rec.watch[last], turn, hidden), note
                return
        yield *answered(lane, rec, turn), note

    def replay(self, recording: Recording | None, pace_ms, request: gr.Request):
        """Replay the last answer in the live view at the watch pace (WATCH_MS when it is 0). Output: live HTML."""
        if recording is None or not recording.events:
            yield placeholder_html(NO_ANSWER)
            return
        try:
            pace = PACE.parse(pace_ms or 0) or WATCH_MS
        except ValueError as e:
            yield placeholder_html(str(e))
            return
        last, stop = None, self.studio.arm_stop(request)
        for last, frame in paced(recording.watch, pace, stop):
            yield watch_html(recording, frame, "Replay")
        if last is not None and last < len(recording.watch) - 1:
            yield watch_html(recording, recording.watch[last], "Stopped")
        elif last is not None:
            yield watch_html(recording, recording.watch[last], "Done")

    def clear(self):
        """Outputs: chatbot, history, message box, live HTML, stats, note."""
        return [], [], "", placeholder_html(LIVE_PLACEHOLDER), "", ""


def watch_html(rec: Recording, frame: Frame, title: str) -> str:
    return frame_html(frame, rec.pieces, title=title, total=rec.n_steps)


def answered(lane: Lane, rec: Recording, turn: list[dict]) -> tuple:
    """respond()'s outputs but the note, once the lane ended: the answer in the conversation, its last frame,
    its stats."""
    if lane.gen is not None:
        answer = lane.loaded.tokenizer.decode(lane.gen.row_tokens(0), skip_special_tokens=True)
        stats = stats_markdown(lane.gen.stats)
    else:
        answer = committed_text(lane.frame, lane.pieces, lane.loaded.stop_token_ids)
        stats = stats_markdown(None, "_Stopped: the answer above is what was committed before Stop._")
    final = (frame_html(lane.frame, lane.pieces, title="Stopped" if lane.gen is None else "Done",
                        total=rec.n_steps) if lane.frame is not None else placeholder_html("No step was taken."))
    history = turn + [{"role": "assistant", "content": answer}]
    return history, history, gr.skip(), final, stats, rec


def stopped_replay(rec: Recording, frame: Frame, turn: list[dict], hidden) -> tuple:
    """respond()'s outputs but the note when Stop ended the replay: the answer as committed at the frame shown,
    which stays."""
    at = step_label(frame.step, rec.n_steps)
    history = turn + [{"role": "assistant", "content": committed_text(frame, rec.pieces, hidden)}]
    note = (f"_Stopped the replay at {at}: the answer above is what was committed by then (the whole decode is in "
            "the Denoising visualizer)._")
    return history, history, gr.skip(), watch_html(rec, frame, "Stopped"), stats_markdown(None, note), rec


def committed_text(frame: Frame | None, pieces, hidden) -> str:
    """The committed tokens of a frame, without masks or stop tokens."""
    return "" if frame is None else frame_text(frame, pieces, hidden, masks=False)
