"""What a generation reports: step events, the trace, and the stats.

These dataclasses are the whole contract between the decoder and its readers (the app, the CLI, the
benchmark). They hold plain Python values (ints, floats, lists), never tensors, so that a reader can
serialise them to JSON or CSV without knowing PyTorch.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field


@dataclass
class StepEvent:
    """One denoising step of one row (paper §3.2): what the block looked like after the step.

    `block_state` holds the token ids of the in-flight block after the step, with `mask_token_id` at
    positions that are still masked. Positions are offsets inside the block (0 .. block_length-1);
    `block_start` is the absolute position (in the row's own sequence, prompt included) of offset 0.
    `masked_confidence` maps every position that was masked *before* this step to the confidence the
    model gave its best candidate at this step (so committed positions are included).
    """

    row: int
    block: int  # index of the block among the generated blocks of this row (0 = first in-flight block)
    step: int  # denoising step inside the block, from 0
    block_start: int
    block_state: list[int]
    committed: list[int]  # block offsets committed at this step
    committed_confidence: list[float]  # same order as `committed`
    masked_confidence: dict[int, float]
    candidates: dict[int, int]  # offset -> best candidate token id for every position masked before the step
    prompt_positions: list[int]  # block offsets that hold prompt tokens (fixed, never decoded)
    final: bool  # True when this step left no masked position in the block
    stopped: bool  # True when the row hit a stop token in this block (tokens after it are discarded)

    def to_dict(self) -> dict:
        # The fields are flat (numbers, lists of numbers, int-keyed dicts): copied one level, not through asdict's
        # recursive deep copy (a recording converts every step of an answer). JSON object keys must be strings.
        return {
            "row": self.row,
            "block": self.block,
            "step": self.step,
            "block_start": self.block_start,
            "block_state": list(self.block_state),
            "committed": list(self.committed),
            "committed_confidence": list(self.committed_confidence),
            "masked_confidence": {str(k): v for k, v in self.masked_confidence.items()},
            "candidates": {str(k): v for k, v in self.candidates.items()},
            "prompt_positions": list(self.prompt_positions),
            "final": self.final,
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, d: dict) -> StepEvent:
        d = dict(d)
        d["masked_confidence"] = {int(k): float(v) for k, v in d["masked_confidence"].items()}
        d["candidates"] = {int(k): int(v) for k, v in d["candidates"].items()}
        return cls(**d)


@dataclass
class Stats:
    """Counters of one `generate` call (paper §7.2 and Appendix D.2).

    `forwards` counts decoding forwards (NFE) and excludes the prefill, which is `prefill_forwards`.
    TPF (tokens per forward) is new tokens over decoding forwards, summed over the batch's rows, as the
    paper's Effective Tokens per Forward Pass. For a batch, `new_tokens` is the sum over rows.
    """

    strategy: str
    block_length: int
    steps: int
    batch_size: int
    prompt_tokens: int  # sum over rows
    new_tokens: int  # sum over rows, up to and including each row's first stop token
    forwards: int
    prefill_forwards: int
    seconds: float
    prefill_seconds: float
    steps_per_block: list[list[int]] = field(default_factory=list)  # [row][block] steps that row used
    new_tokens_per_row: list[int] = field(default_factory=list)

    @property
    def tpf(self) -> float:
        """Tokens per decoding forward, per row (the paper's TPF): new tokens of a row / forwards."""
        if self.forwards == 0 or self.batch_size == 0:
            return 0.0
        return self.new_tokens / self.batch_size / self.forwards

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tpf"] = self.tpf
        d["tokens_per_second"] = self.tokens_per_second
        return d

    def summary(self) -> str:
        """One line a person reads: NFE, TPF, tokens/s, latency."""
        return (
            f"{self.new_tokens} new tokens in {self.forwards} forwards (+{self.prefill_forwards} prefill) | "
            f"TPF {self.tpf:.2f} | {self.tokens_per_second:.1f} tokens/s | {self.seconds * 1000:.0f} ms"
        )


@dataclass
class Generation:
    """The result of `generate`: tokens per row, stats and (when asked) the step trace."""

    tokens: object  # torch.LongTensor [B, <=max_new_tokens], right-padded with pad_token_id after a stop
    lengths: list[int]  # number of valid new tokens per row
    stats: Stats
    trace: list[StepEvent] | None = None

    def row_tokens(self, row: int) -> list[int]:
        return self.tokens[row, : self.lengths[row]].tolist()

    def trace_json(self) -> str:
        return json.dumps(
            {"stats": self.stats.to_dict(), "steps": [e.to_dict() for e in (self.trace or [])]}, indent=1
        )

    def trace_csv(self) -> str:
        """One row per (step, position masked before the step): the long format a spreadsheet reads."""
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(
            [
                "row",
                "block",
                "step",
                "block_start",
                "offset",
                "position",
                "candidate",
                "confidence",
                "committed",
            ]
        )
        for e in self.trace or []:
            committed = set(e.committed)
            for off, conf in sorted(e.masked_confidence.items()):
                w.writerow(
                    [
                        e.row,
                        e.block,
                        e.step,
                        e.block_start,
                        off,
                        e.block_start + off,
                        e.candidates.get(off, ""),
                        f"{conf:.6f}",
                        int(off in committed),
                    ]
                )
        return out.getvalue()
