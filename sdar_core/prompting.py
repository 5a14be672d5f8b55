"""Chat prompts and stop tokens: what a tokenizer knows about turns, shared by the CLI, the app and training."""

from __future__ import annotations

import re

from .decode_params import GenerationError
from .template_sandbox import SANDBOX

# The ChatML special tokens of Qwen3 and SDAR checkpoints, which the embedded models' tokenizer has too.
END_OF_TEXT, TURN_START, TURN_END, MASK_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"
STOP_TOKENS = (TURN_END, END_OF_TEXT)
_SLOT = "\ue000sdar-content-{}\ue001"  # private-use characters: what a template renders in place of a content


def stop_ids_for(tokenizer, config) -> list[int]:
    """The ids that end an answer: the config's eos ids, the tokenizer's eos and the chat end-of-turn tokens it
    knows, restricted to ids the model can produce (inside its vocabulary)."""
    ids = set(config.eos_token_ids)
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        vocab = tokenizer.get_vocab()
        ids.update(vocab[t] for t in STOP_TOKENS if t in vocab)
    return sorted(i for i in ids if isinstance(i, int) and 0 <= i < config.vocab_size)


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation in the tokenizer's chat template, ending with the assistant's turn opener.

    The template's own text is tokenised with its special tokens, each message's content as plain text: a
    `<|im_end|><|im_start|>system` or `<|MASK|>` typed by someone is text, never a turn or a mask. The template
    is rendered around placeholders that are then replaced by the contents' ids (one tokenisation per piece:
    special tokens and the newline after a role already end a piece, so plain text gets the ids it always had).
    The template is the checkpoint's code: it renders in template_sandbox, bounded in time, memory and output.
    """
    for m in messages:
        checked_text(m["content"], f"the {m['role']} message")
    slots = {_SLOT.format(i): m["content"] for i, m in enumerate(messages)}
    text = SANDBOX.render(
        tokenizer.get_chat_template(),
        [{**m, "content": slot} for m, slot in zip(messages, slots)],
        dict(tokenizer.special_tokens_map),
    )
    pieces = re.split("(" + "|".join(map(re.escape, slots)) + ")", text) if slots else [text]
    if sorted(p for p in pieces if p in slots) != sorted(slots) or not all(
        isinstance(c, str) for c in slots.values()
    ):
        raise ValueError(
            "the chat template rewrote the message contents: cannot keep typed special tokens as text"
        )
    ids = []
    for piece in pieces:
        if piece in slots:
            ids += tokenizer(slots[piece], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def checked_text(text, what: str) -> str:
    """`text` when the tokenizer can encode it, else GenerationError: not a string, or a lone surrogate (bytes that
    were not UTF-8, as Python decodes a command line's)."""
    if not isinstance(text, str):
        raise GenerationError(f"{what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GenerationError(
            f"{what} holds bytes that are not UTF-8 text (at character {e.start})"
        ) from None
    return text


def encode_prompt(tokenizer, prompt: str, *, chat: bool, system: str | None = None) -> list[int]:
    checked_text(prompt, "the prompt")
    if system is not None:
        checked_text(system, "the system message")
    if not chat:
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return chat_ids(tokenizer, messages)
