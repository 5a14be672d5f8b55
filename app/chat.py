"""The Chat tab: multi-turn chat with the model's chat template. The answer decodes at full speed on the device's
scheduler (batched with other visitors' requests); the page's player draws the steps as they arrive and, with a
watch delay (the default), replays them in the browser: every block opens fully masked (▒) and is denoised step
by step. Errors and notes appear in place, beside the message box, and leave the conversation as it was."""

from __future__ import annotations

import logging

import gradio as gr

from .errors import explained, unshown
from .feed import empty
from .prompting import conversation
from .recording import record
from .render import MASK_GLYPH, stats_markdown
from .run import Run
from .settings import MAX_MESSAGE_CHARS, MAX_SYSTEM_CHARS, DecodeRequest, checked_text
from .studio import WARMUP, Studio

log = logging.getLogger(__name__)
LIVE_PLACEHOLDER = "The block being denoised appears here while the model answers."


class Chat:
    """Handlers of the Chat tab (bound to the shared Studio and the page's components)."""

    def __init__(self, studio: Studio, page) -> None:
        self.studio, self.p = studio, page

    def respond(self, message, history, system, request: gr.Request, **ui):
        """Stream one answer; `ui` holds the decoding inputs by name (DecodeRequest). Yields the page's outputs by
        component. A refused request shows its reason in the message area, the conversation as it was."""
        p = self.p
        try:
            yield from self._respond(message, history, system, request, ui)
        except Exception as e:
            reason = explained(e)
            out = {p.live: empty(LIVE_PLACEHOLDER), p.chat_stats: "", p.chat_note: "⚠️ " + reason}
            if isinstance(history, list):
                out[p.chatbot] = history
            if isinstance(message, str):
                out[p.message] = message
            yield out
            raise unshown(reason) from None

    def _respond(self, message, history, system, request, ui):
        p = self.p
        message = checked_text("message", message, MAX_MESSAGE_CHARS)
        system = checked_text("system prompt", system, MAX_SYSTEM_CHARS)
        if not message:
            raise gr.Error("Type a message first.", title="Empty message")
        req, history = DecodeRequest.from_ui(ui), list(history or [])
        run = self.studio.start(
            req, conversation(system, history, message), self.studio.arm_stop(request), title=""
        )
        turn = history + [{"role": "user", "content": message}]
        shown = turn + [{"role": "assistant", "content": MASK_GLYPH}]
        waiting = WARMUP.note()
        note = "  \n".join(f"ℹ️ {n}" for n in run.notes)  # stays in the message area with the answer
        yield {
            p.chatbot: shown,
            p.message: "",
            p.live: run.feed.value(),
            p.chat_stats: "",
            p.chat_note: note + (f"  \n⏳ {waiting}" if waiting else ""),
        }
        for _ in run.follow():  # the bubble only grows (Gradio then sends the new text alone)
            shown[-1] = {"role": "assistant", "content": run.text_so_far() or MASK_GLYPH}
            yield {p.chatbot: shown, p.live: run.feed.value()}
        answer = run.answer_text()
        history = turn + [{"role": "assistant", "content": answer}]
        stats = (
            stats_markdown(run.stats, run.batch_note())
            if run.stats
            else stats_markdown(None, "_Stopped: the answer above is what was committed before Stop._")
        )
        log.info("served a chat answer: %s", run.timeline())
        answered = {
            p.chatbot: history,
            p.history: history,
            p.live: run.feed.value(),
            p.chat_stats: stats,
            p.chat_note: note,
        }
        yield answered
        # The answer is on its way; the recording (the visualizer's copy, its trace files for download) is built
        # after it, so that writing them never delays an answer (in a crowd every handler builds its recording
        # when the batch ends). The last message repeats the answer (Gradio sends no change for it), so that
        # an API caller's result is the whole answer.
        try:
            recording = record(message[:80], run)
        except Exception as e:  # the answer stands; only the visualizer's copy is missing
            log.warning("the answer's recording was not saved: %s", e)
            yield {**answered, p.chat_note: "  \n".join(x for x in (note, f"⚠️ {explained(e)}") if x)}
            return
        yield {**answered, p.recording: recording}

    def clear(self, request: gr.Request = None):
        """The conversation and the player emptied: a decode of this session stops, a replay playing in the page
        stops."""
        p = self.p
        self.studio.stop(request)
        return {
            p.chatbot: [],
            p.history: [],
            p.message: "",
            p.live: empty(LIVE_PLACEHOLDER, run=-1),
            p.chat_stats: "",
            p.chat_note: "",
        }


__all__ = ["Chat", "LIVE_PLACEHOLDER", "Run"]
