"""The Chat tab: multi-turn chat with the model's chat template; the answer streams block by block, and
inside the block in flight step by step (masked positions as ▒, this step's commits outlined, every
token coloured by its confidence)."""
from __future__ import annotations

import gradio as gr

from .errors import shows_errors
from .prompting import conversation
from .recording import record
from .render import MASK_GLYPH, frame_html, frame_text, placeholder_html, stats_markdown
from .settings import MAX_MESSAGE_CHARS, MAX_SYSTEM_CHARS, DecodeRequest, checked_text
from .streaming import Lane, stream
from .studio import WARMUP, Studio

LIVE_PLACEHOLDER = "The block in flight appears here while the model answers."


class Chat:
    """Handlers of the Chat tab (bound to the shared Studio)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    @shows_errors
    def respond(self, message, history, system, request: gr.Request, **ui):
        """Stream one answer; `ui` holds the decoding inputs by name (DecodeRequest).
        Outputs: chatbot, history, message box, live HTML, stats, recording."""
        message = checked_text("message", message, MAX_MESSAGE_CHARS)
        system = checked_text("system prompt", system, MAX_SYSTEM_CHARS)
        if not message:
            raise gr.Error("Type a message first.", title="Empty message")
        req, history = DecodeRequest.from_ui(ui), list(history or [])
        lane, notes = self.studio.lane(req, conversation(system, history, message))
        for n in notes:
            gr.Warning(n)
        turn = history + [{"role": "user", "content": message}]
        shown = turn + [{"role": "assistant", "content": MASK_GLYPH}]
        waiting = WARMUP.note()
        yield shown, gr.skip(), "", placeholder_html(f"Prompt: {len(lane.ids)} tokens — decoding…"
                                                     + (f" ({waiting})" if waiting else "")), "", gr.skip()
        hidden = lane.loaded.stop_token_ids
        try:
            for _ in stream({"answer": lane}, self.studio.arm_stop(request), pace_ms=req.pace_ms):
                if lane.state == "running":
                    shown[-1] = {"role": "assistant",
                                 "content": frame_text(lane.frame, lane.pieces, hidden) or MASK_GLYPH}
                    yield shown, gr.skip(), gr.skip(), frame_html(lane.frame, lane.pieces, title="Live"), gr.skip(), \
                        gr.skip()
        except Exception:  # the decode refused the request (or failed): the conversation stays as it was
            yield history, gr.skip(), message, placeholder_html(LIVE_PLACEHOLDER), "", gr.skip()
            raise
        yield answered(lane, message, turn)

    def clear(self):
        """Outputs: chatbot, history, message box, live HTML, stats."""
        return [], [], "", placeholder_html(LIVE_PLACEHOLDER), ""


def answered(lane: Lane, message: str, turn: list[dict]) -> tuple:
    """respond()'s outputs once the lane ended: the answer in the conversation, its last frame, its stats."""
    rec = record(message[:80], lane)
    if lane.gen is not None:
        answer = lane.loaded.tokenizer.decode(lane.gen.row_tokens(0), skip_special_tokens=True)
        stats = stats_markdown(lane.gen.stats)
    else:
        answer = _committed_text(lane)
        stats = stats_markdown(None, "_Stopped: the answer above is what was committed before Stop._")
    final = (frame_html(lane.frame, lane.pieces, title="Stopped" if lane.gen is None else "Done")
             if lane.frame is not None else placeholder_html("No step was taken."))
    history = turn + [{"role": "assistant", "content": answer}]
    return history, history, gr.skip(), final, stats, rec


def _committed_text(lane: Lane) -> str:
    """The committed tokens of a stopped lane's last frame, without masks or stop tokens."""
    if lane.frame is None:
        return ""
    hidden = set(lane.loaded.stop_token_ids)
    return "".join(lane.pieces.get(c.token, "") for c in lane.frame.done + lane.frame.block
                   if c.token is not None and c.token not in hidden)
