"""Command line: `python -m sdar_core [--model PATH] --prompt "..." [--chat] [schedule options]` (or `sdar ...`).

Prints the generated text on stdout, then the generation's stats on stderr. Bad input of any kind (a checkpoint, a
config, a decoding option, a device) ends with one line `error: ...` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import warnings

import torch

from .config import ConfigError
from .decode_params import OPTIONS, DecodeParams
from .decoding import GenerationError, UntrainedBlockSizeWarning, generate
from .loading import WEIGHT_CHOICES, CheckpointError, load_pretrained, weights_from_choice
from .paths import DEFAULT_MODEL
from .prompting import encode_prompt, stop_ids_for

PROG = "python -m sdar_core"
DEFAULTS = {f.name: f.default for f in dataclasses.fields(DecodeParams)}
DEVICE_TYPES = ("cpu", "cuda")


class CliError(ValueError):
    """A command-line value that cannot work, in words."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A malformed option in one line (argparse's default prints the whole usage block before it)."""
        self.exit(2, f"error: {message} (see {PROG} --help)\n")


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def parse_device(name: str | None) -> torch.device | None:
    """The --device value as a device this machine has; None (the default device) when not given."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type not in DEVICE_TYPES:
        raise CliError(
            f"--device {name!r}: a model runs on one of {', '.join(DEVICE_TYPES)}, not {device.type}"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name!r}: this machine has no CUDA GPU; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CliError(
            f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
        )
    return device


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="checkpoint folder or hub id (default: the embedded sdar-tiny)",
    )
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    for name, option in OPTIONS.items():  # the decoding options: DecodeParams' fields, its defaults
        kind = str if option.choices else int if option.integer else finite_float
        p.add_argument(
            "--" + name.replace("_", "-"), type=kind, choices=option.choices or None, default=DEFAULTS[name]
        )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when there is one)")
    p.add_argument(
        "--weights",
        choices=WEIGHT_CHOICES,
        default="dtype",
        help="fp8: the projections as float8 weights with a scale per row (half the bytes a step reads on a GPU)",
    )
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    return p


def run(args: argparse.Namespace) -> None:
    model, tokenizer = load_pretrained(
        args.model,
        device=parse_device(args.device),
        weights=weights_from_choice(args.weights),
    )
    ids = encode_prompt(tokenizer, args.prompt, chat=args.chat, system=args.system)
    with warnings.catch_warnings(record=True) as caught:  # the library's warnings as one plain line each
        warnings.simplefilter("always", UntrainedBlockSizeWarning)
        options = {name: getattr(args, name) for name in OPTIONS}
        params = DecodeParams(**options, stop_token_ids=stop_ids_for(tokenizer, model.config))
        gen = generate(model, [ids], params)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(tokenizer.decode(gen.row_tokens(0), skip_special_tokens=True))
    print(json.dumps(gen.stats.to_dict()) if args.json else gen.stats.summary(), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:  # Ctrl+C: the user's choice, not a fault
        print("error: interrupted", file=sys.stderr)
        return 130
    except (CliError, ConfigError, CheckpointError, GenerationError, ValueError, OSError) as e:
        # The library's errors are ValueErrors, a missing file or an unreachable hub an OSError: the user's to fix.
        # Anything else is a fault of ours and keeps its traceback.
        print(
            "error: " + " ".join(str(e).split()), file=sys.stderr
        )  # one line, even for a library's long message
        return 2
    return 0
