"""From the conversation to prompt ids: the model's own chat template (ChatML for SDAR chat models)."""

from __future__ import annotations

from sdar_core.prompting import chat_ids

# The system prompt every tab sends unless the visitor edits it (the one box in the settings column): the chat, the
# visualizer, the race and the sweep decode the same conversation, and the example test decodes it too.
DEFAULT_SYSTEM = "You are a helpful assistant."
FALLBACK_NOTE = (
    "this tokenizer has no chat template: the conversation is sent as plain 'User:/Assistant:' text"
)


def conversation(system: str | None, history: list[dict], message: str) -> list[dict]:
    """Messages in the chat-template format: optional system prompt, the past turns, the new user turn."""
    msgs = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    msgs += [{"role": m["role"], "content": m["content"]} for m in history]
    return msgs + [{"role": "user", "content": message}]


def prompt_ids(tokenizer, messages: list[dict]) -> tuple[list[int], str | None]:
    """(token ids of the prompt ending with the assistant's turn opener, a note when no template exists)."""
    if getattr(tokenizer, "chat_template", None):
        return chat_ids(tokenizer, messages), None
    text = (
        "".join(
            f"{m['content']}\n\n" if m["role"] == "system" else f"{m['role'].capitalize()}: {m['content']}\n"
            for m in messages
        )
        + "Assistant:"
    )
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"], FALLBACK_NOTE
