"""The Chat tab: multi-turn chat with the model's chat template; the answer streams block by block, and
inside the block in flight step by step (masked positions as ▒, this step's commits outlined, every
token coloured by its confidence)."""
from __future__ import annotations

import time

import gradio as gr

from .errors import shows_errors
from .prompting import check_fits, conversation, prompt_ids
from .recording import record
from .render import (MASK_GLYPH, FrameBuilder, frame_at, frame_html, frame_text, placeholder_html,
                     stats_markdown)
from .settings import DecodeSettings, SettingsError
from .studio import Studio, decode_job
from .streaming import stream_one

LIVE_PLACEHOLDER = "The block in flight appears here while the model answers."
MIN_FRAME_INTERVAL = 1 / 20  # seconds between two streamed frames when no pace is set


def prepare(studio: Studio, model_name: str, settings: DecodeSettings, messages: list[dict]):
    """(loaded model, prompt ids, settings, notes) for a request; SDAR settings become AR on an AR model."""
    loaded = studio.registry.get(model_name)
    notes = []
    if not loaded.is_sdar and settings.strategy != "ar":
        settings = settings.as_ar()
        notes.append(f"{loaded.display_name} is an autoregressive model: it decodes one token per forward.")
    ids, note = prompt_ids(loaded.tokenizer, messages)
    if note:
        notes.append(note)
    check_fits(len(ids), settings.max_new_tokens, settings.strategy, settings.block_length, loaded.context)
    return loaded, ids, settings, notes


def stream_answer(studio: Studio, loaded, ids, settings, request, *, pace_ms: float = 0.0):
    """Yield ("frame", Frame, pieces) while decoding, then ("done", Generation | None, events, pieces);
    Generation is None when the user pressed Stop."""
    stop = studio.arm_stop(request)
    builder, events, pieces = FrameBuilder(), [], {}
    last = 0.0
    for update in stream_one(decode_job(loaded, ids, settings), stop):
        if update.kind == "step":
            e = update.payload
            if e.row != 0:
                continue
            events.append(e)
            frame = builder.push(e)
            pieces.update(loaded.event_pieces(e))
            if stop.is_set():
                continue  # Stop while the paced view lags behind the decode: skip to the end
            now = time.perf_counter()
            if pace_ms > 0 or now - last >= MIN_FRAME_INTERVAL or e.final:
                last = now
                yield "frame", frame, pieces
                if pace_ms > 0:
                    time.sleep(pace_ms / 1000)
        elif update.kind == "error":
            raise update.payload
        else:
            yield "done", update.payload if update.kind == "done" else None, events, pieces


class Chat:
    """Handlers of the Chat tab (bound to the shared Studio)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    @shows_errors
    def respond(self, message, history, system, model_name, block_length, steps, strategy, threshold,
                temperature, top_p, max_new_tokens, seed, pace_ms, request: gr.Request):
        """Stream one answer. Outputs: chatbot, history, message box, live HTML, stats, recording."""
        message = (message or "").strip()
        if not message:
            raise gr.Error("Type a message first.", title="Empty message")
        settings = DecodeSettings.from_ui(block_length, steps, strategy, threshold, temperature, top_p,
                                          max_new_tokens, seed)
        pace = pace_milliseconds(pace_ms)
        history = list(history or [])
        loaded, ids, settings, notes = prepare(self.studio, model_name, settings,
                                               conversation(system, history, message))
        for n in notes:
            gr.Warning(n)
        history.append({"role": "user", "content": message})
        shown = history + [{"role": "assistant", "content": MASK_GLYPH}]
        yield shown, history, "", placeholder_html(f"Prompt: {len(ids)} tokens — decoding…"), "", gr.skip()
        hidden = loaded.stop_token_ids
        for kind, *rest in stream_answer(self.studio, loaded, ids, settings, request, pace_ms=pace):
            if kind == "frame":
                frame, pieces = rest
                shown[-1] = {"role": "assistant", "content": frame_text(frame, pieces, hidden) or MASK_GLYPH}
                yield shown, history, gr.skip(), frame_html(frame, pieces, title="Live"), gr.skip(), gr.skip()
                continue
            gen, events, pieces = rest
            rec = record(message[:80], events, gen, pieces)
            # The final frame, with anything after the stop token struck out.
            last = frame_at(rec.events, len(rec.events) - 1, rec.answer_end) if rec.events else None
            if gen is not None:
                answer = loaded.tokenizer.decode(gen.row_tokens(0), skip_special_tokens=True)
                stats = stats_markdown(gen.stats)
            else:
                answer = _committed_text(last, pieces, hidden)
                stats = stats_markdown(None, "_Stopped: the answer above is what was committed before Stop._")
            final = (frame_html(last, pieces, title="Stopped" if gen is None else "Done") if last is not None
                     else placeholder_html("No step was taken."))
            history.append({"role": "assistant", "content": answer})
            yield history, history, gr.skip(), final, stats, rec

    def stop(self, request: gr.Request) -> None:
        """Stop this session's decode at its next step (the answer so far is kept)."""
        self.studio.stop(request)

    def clear(self):
        """Outputs: chatbot, history, message box, live HTML, stats."""
        return [], [], "", placeholder_html(LIVE_PLACEHOLDER), ""


def _committed_text(last, pieces, hidden) -> str:
    """The committed tokens of a stopped run's last frame, without masks or stop tokens."""
    if last is None:
        return ""
    return "".join(pieces.get(c.token, "") for c in last.done + last.block
                   if c.token is not None and c.token not in set(hidden))


def pace_milliseconds(pace_ms) -> float:
    """The live view's delay per step in ms, checked (the API can send anything)."""
    try:
        pace = float(pace_ms or 0)
    except (TypeError, ValueError):
        raise SettingsError(f"live view delay must be a number of milliseconds, got {pace_ms!r}") from None
    if not 0 <= pace <= 1000:
        raise SettingsError(f"live view delay must be in [0, 1000] ms, got {pace_ms!r}")
    return pace
