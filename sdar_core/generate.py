"""Command line: `python -m sdar_core.generate --model PATH --prompt "..." [--chat] [schedule options]`.

Prints the generated text, then the generation's stats.

This module shares its name with the function `sdar_core.generate`. Importing it (which makes Python set the
package attribute `sdar_core.generate` to the module) must not break `from sdar_core import generate`, so the
module is made callable: calling it calls the function.
"""
from __future__ import annotations

import argparse
import json
import sys
import types

from .decoding import GenerationError, generate
from .loading import CheckpointError, load_pretrained
from .prompting import encode_prompt, stop_ids_for  # noqa: F401  (re-exported)
from .schedules import STRATEGIES


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


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
