"""Chat prompts and stop tokens: what a tokenizer knows about turns, shared by the CLI, the app and training."""
from __future__ import annotations


# The ChatML special tokens of Qwen3 and SDAR checkpoints, which the embedded models' tokenizer has too.
END_OF_TEXT, TURN_START, TURN_END, MASK_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"
STOP_TOKENS = (TURN_END, END_OF_TEXT)


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
    """Token ids of a conversation in the tokenizer's chat template, ending with the assistant's turn opener."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer, prompt: str, *, chat: bool, system: str | None = None) -> list[int]:
    if not chat:
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return chat_ids(tokenizer, messages)
