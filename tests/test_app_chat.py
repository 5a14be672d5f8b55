"""app/chat.py's Chat.respond, called as Gradio calls it: the answer (its stats line with it) is sent before the
answer's recording is built, the last message holds the answer and the recording, and a recording that cannot be
saved leaves the answer standing with a note instead of an error."""

from __future__ import annotations

import types

import pytest

from app.registry import ModelRegistry

REQUEST = types.SimpleNamespace(session_hash="s", headers={}, client=types.SimpleNamespace(host="127.0.0.1"))
UI = dict(
    block_length=4, steps=4, strategy="static", threshold=0.9, temperature=0.0, top_p=1.0, seed=0, pace_ms=0
)


@pytest.fixture
def chat(studio_checkpoints):
    from app.chat import Chat
    from app.layout import layout
    from app.studio import Studio

    sdar, _ = studio_checkpoints
    studio = Studio(registry=ModelRegistry(models_dir=sdar.parent))
    _, page = layout(str(sdar), [str(sdar)], "", None)
    return Chat(studio, page), page, dict(UI, model_name=str(sdar), max_new_tokens=12)


def test_the_answer_is_sent_before_its_recording_and_the_last_message_holds_both(chat, monkeypatch):
    import app.chat as chat_module

    handler, p, ui = chat
    recorded = []
    real = chat_module.record
    monkeypatch.setattr(chat_module, "record", lambda *a: recorded.append(len(outputs)) or real(*a))
    outputs = []
    for out in handler.respond("What is 47 + 38?", [], "", REQUEST, **ui):
        outputs.append(out)
    answers = [i for i, o in enumerate(outputs) if "tokens ·" in str(o.get(p.chat_stats, ""))]
    # the recording was built after the answer had been yielded
    assert answers and recorded == [answers[0] + 1]
    last = outputs[-1]
    assert last[p.recording].events and last[p.chatbot] == outputs[answers[0]][p.chatbot]
    assert last[p.history][-1]["role"] == "assistant" and last[p.history][-1]["content"]


def test_a_recording_that_cannot_be_saved_leaves_the_answer_with_a_note(chat, monkeypatch):
    import app.chat as chat_module

    handler, p, ui = chat

    def full_disk(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chat_module, "record", full_disk)
    outputs = list(handler.respond("What is 47 + 38?", [], "", REQUEST, **ui))
    last = outputs[-1]
    assert p.recording not in last and "tokens ·" in last[p.chat_stats]
    assert last[p.chatbot][-1]["content"] == last[p.history][-1]["content"]  # the answer stands
    assert "⚠️" in last[p.chat_note] and "space" in last[p.chat_note].lower()
