"""Train the embedded demo model's tokenizer: a small byte-level BPE, saved in the Hugging Face format.

    python -m training.tokenizer --data data/embedded --out assets/tokenizer --vocab-size 4096

Byte-level BPE as in GPT-2 and Qwen (any text round-trips), with two differences that suit a tiny model: every digit
is its own pre-token (so 1234 is always the four tokens 1 2 3 4 and column arithmetic is learnable), and the
vocabulary is 4096 entries. Special tokens, each a single id: `<|endoftext|>` (0, also padding), `<|im_start|>`,
`<|im_end|>` (end of a chat turn, the eos) and `<|MASK|>` (the SDAR mask token). The folder holds `tokenizer.json`,
`tokenizer_config.json` and `chat_template.jinja` (ChatML, as Qwen's without tools or thinking), so
`transformers.AutoTokenizer.from_pretrained(out)` loads it offline.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from sdar_core.prompting import END_OF_TEXT, MASK_TOKEN, TURN_END, TURN_START

SPECIAL_TOKENS = [END_OF_TEXT, TURN_START, TURN_END, MASK_TOKEN]  # ids 0, 1, 2, 3
MAX_TOKEN_CHARS = 16  # no merge longer than this: a 4k vocabulary is better spent on common pieces

# ChatML as Qwen writes it, without the tool-calling and thinking parts.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE with digits split one per pre-token (NFC normalised, like Qwen)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),  # 1234 -> 1 2 3 4
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Train the BPE on texts; the same texts in the same order give the same tokenizer."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(
            f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256} (specials + 256 bytes), "
            f"got {vocab_size}"
        )
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=MAX_TOKEN_CHARS,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def file_texts(path: Path) -> Iterator[str]:
    """The "text" of every row of a data set .jsonl and the content of every message, in file order."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: build the data set first with `python -m training.corpus --out {path.parent}`"
        )
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "text" in row:
                yield row["text"]
            for message in row.get("messages", []):
                yield message["content"]


def corpus_texts(data: Path) -> Iterator[str]:
    """The texts of pretrain.jsonl, then every message of sft.jsonl, in file order."""
    for name in ("pretrain.jsonl", "sft.jsonl"):
        yield from file_texts(data / name)


def save_hf(tok: Tokenizer, out: Path, model_max_length: int = 4096):
    """Save as a transformers tokenizer folder (tokenizer.json, tokenizer_config.json, chat_template.jinja) that
    `AutoTokenizer.from_pretrained` loads with transformers 4.5x and 5.x."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=TURN_END,
        pad_token=END_OF_TEXT,
        mask_token=MASK_TOKEN,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    # transformers 5 writes its own class name and an `extra_special_tokens` list; transformers 4 knows neither.
    # The 4.x spelling below loads in both, so users with either version get the same tokenizer.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["additional_special_tokens"] = config.pop("extra_special_tokens", ["<|im_start|>"])
    config["model_max_length"] = model_max_length
    config.pop("backend", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return hf


def count_tokens(tok: Tokenizer, texts: Iterable[str], batch: int = 1024) -> tuple[int, int]:
    """(tokens, characters) over texts."""
    n_tokens = n_chars = 0
    buf = []
    for t in texts:
        buf.append(t)
        n_chars += len(t)
        if len(buf) == batch:
            n_tokens += sum(len(e.ids) for e in tok.encode_batch(buf, add_special_tokens=False))
            buf = []
    if buf:
        n_tokens += sum(len(e.ids) for e in tok.encode_batch(buf, add_special_tokens=False))
    return n_tokens, n_chars


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the embedded demo model's byte-level BPE tokenizer.")
    ap.add_argument("--data", default="data/embedded", help="folder with pretrain.jsonl and sft.jsonl")
    ap.add_argument(
        "--out",
        default="out/tokenizer",
        help="where the tokenizer is written (default: %(default)s; assets/tokenizer is the shipped one)",
    )
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--model-max-length", type=int, default=4096, help="recorded in tokenizer_config.json")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)

    tok = train_tokenizer(corpus_texts(data), args.vocab_size)
    save_hf(tok, out, args.model_max_length)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1e3:.0f} kB), vocabulary {tok.get_vocab_size()}")

    stats = {}
    for name in ("pretrain.jsonl", "sft.jsonl", "heldout_text.jsonl"):
        n_tokens, n_chars = count_tokens(tok, file_texts(data / name))
        stats[name] = {
            "bytes": (data / name).stat().st_size,
            "characters": n_chars,
            "tokens": n_tokens,
            "tokens_per_char": round(n_tokens / max(n_chars, 1), 4),
        }
        print(
            f"{name}: {n_chars / 1e6:.1f} M characters, {n_tokens / 1e6:.2f} M tokens, "
            f"{n_tokens / max(n_chars, 1):.3f} tokens/char"
        )
    (data / "token_counts.json").write_text(json.dumps(stats, indent=2) + "\n")


if __name__ == "__main__":
    main()
