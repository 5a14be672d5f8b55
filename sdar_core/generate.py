"""Command line: `python -m sdar_core.generate --model PATH --prompt "..." [--chat] [schedule options]`.

Prints the generated text, then the generation's stats. (Run it with -m; inside Python use
`sdar_core.generate`, the function.)
"""
from __future__ import annotations

import argparse
import json
import sys

from .decoding import GenerationError, generate
from .loading import CheckpointError, load_pretrained
from .schedules import STRATEGIES


def stop_ids_for(tokenizer, config) -> list[int]:
    """The ids that end an answer: the config's eos ids and the chat end-of-turn tokens the tokenizer knows."""
    ids = set(config.eos_token_ids)
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        for tok in ("<|im_end|>", "<|endoftext|>"):
            tid = tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
    return sorted(ids)


def encode_prompt(tokenizer, prompt: str, *, chat: bool, system: str | None = None) -> list[int]:
    if not chat:
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdar_core.generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint folder or hub id")
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--strategy", choices=STRATEGIES, default="dynamic")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    args = p.parse_args(argv)
    try:
        model, tokenizer = load_pretrained(args.model, device=args.device)
        ids = encode_prompt(tokenizer, args.prompt, chat=args.chat, system=args.system)
        gen = generate(model, [ids], max_new_tokens=args.max_new_tokens, block_length=args.block_length,
                       steps=args.steps, strategy=args.strategy, threshold=args.threshold,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                       stop_token_ids=stop_ids_for(tokenizer, model.config))
    except (CheckpointError, GenerationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(tokenizer.decode(gen.row_tokens(0), skip_special_tokens=True))
    print(json.dumps(gen.stats.to_dict()) if args.json else gen.stats.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
