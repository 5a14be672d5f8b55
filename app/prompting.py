"""From the conversation to prompt ids: the model's own chat template (ChatML for SDAR chat models)."""
from __future__ import annotations

from sdar_core.decoding import positions_needed
from sdar_core.prompting import chat_ids

from .settings import SettingsError

FALLBACK_NOTE = "this tokenizer has no chat template: the conversation is sent as plain 'User:/Assistant:' text"


def conversation(system: str, history: list[dict], message: str) -> list[dict]:
    """Messages in the chat-template format: optional system prompt, the past turns, the new user turn."""
    msgs = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    msgs += [{"role": m["role"], "content": m["content"]} for m in history]
    return msgs + [{"role": "user", "content": message}]


def prompt_ids(tokenizer, messages: list[dict]) -> tuple[list[int], str | None]:
    """(token ids of the prompt ending with the assistant's turn opener, a note when no template exists)."""
    if getattr(tokenizer, "chat_template", None):
        return chat_ids(tokenizer, messages), None
    text = "".join(
        f"{m['content']}\n\n" if m["role"] == "system" else f"{m['role'].capitalize()}: {m['content']}\n"
        for m in messages) + "Assistant:"
    return tokenizer(text, add_special_tokens=False)["input_ids"], FALLBACK_NOTE


def check_fits(n_prompt: int, max_new_tokens: int, strategy: str, block_length: int, context: int) -> None:
    """The prompt plus the answer (rounded up to whole blocks) must fit the model's context."""
    needed = positions_needed(n_prompt, max_new_tokens, strategy, block_length)
    if needed > context:
        block = 1 if strategy == "ar" else block_length
        raise SettingsError(
            f"the prompt has {n_prompt} tokens; with {max_new_tokens} new tokens (in blocks of {block}) "
            f"that is {needed} tokens, beyond this model's context of {context}. Shorten the prompt, clear the "
            f"conversation, or lower max new tokens.")
