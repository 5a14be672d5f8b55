"""Unmasking schedules (paper §3.2): which masked positions of the block in flight become final at a step.

Each schedule is a function of the step's scores (confidences, entropies), the mask of still-masked
positions and the static count for the step, and returns a boolean [B, L] selection. All of them run on
the device with no host synchronisation. `SCHEDULES` maps a strategy name to its schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def static_count(block_length: int, steps: int, step: int) -> int:
    """How many positions step `step` of `steps` commits (the authors' `get_num_transfer_tokens`).

    floor(L/T) per step plus one for the first L mod T steps (L=8, T=3 gives 3, 3, 2), from the block
    *length*, so every block gets the same counts; a block that starts with prompt tokens runs out of masked
    positions early and ends after fewer steps. The caller caps the count at what is still masked.
    """
    return block_length // steps + int(step < block_length % steps)


def static_steps_needed(n_masked: int, block_length: int, steps: int) -> int:
    """Forwards the static count takes to unmask `n_masked` positions (at most `steps`: the counts sum to L)."""
    done = 0
    for step in range(steps):
        if done >= n_masked:
            return step
        done += static_count(block_length, steps, step)
    return steps


def _rank(score: torch.Tensor, descending: bool) -> torch.Tensor:
    """Rank [B, L] of every position by score (0 = best), ties broken by position."""
    order = score.argsort(dim=-1, descending=descending, stable=True)
    return order.argsort(dim=-1, stable=True)


def select_static(confidence, masked, count) -> torch.Tensor:
    """The `count` [B] masked positions of highest confidence."""
    conf = confidence.masked_fill(~masked, float("-inf"))
    return (_rank(conf, descending=True) < count[:, None]) & masked


def select_dynamic(confidence, masked, count, threshold: float) -> torch.Tensor:
    """Every masked position with confidence > threshold, and never fewer than `count` (the static count)."""
    return (masked & (confidence > threshold)) | select_static(confidence, masked, count)


def select_sequential(masked, count) -> torch.Tensor:
    """The `count` leftmost masked positions."""
    return masked & ((masked.long().cumsum(-1) - 1) < count[:, None])


def select_entropy(entropy, masked, count, bound: float) -> torch.Tensor:
    """Lowest-entropy masked positions while their summed entropy stays <= bound; at least `count`
    (and at least one)."""
    ent = entropy.masked_fill(~masked, float("inf"))
    rank = _rank(ent, descending=False)
    cum = ent.sort(dim=-1).values.cumsum(-1)  # [B, L] summed entropy of the i+1 best positions
    n_under = (cum <= bound).sum(-1)
    n = torch.maximum(n_under, count.clamp_min(1))
    return (rank < n[:, None]) & masked


@dataclass
class StepScores:
    """What a schedule chooses from at one denoising step of the block in flight."""

    candidates: torch.Tensor  # [B, L] the token each position would take
    confidence: torch.Tensor  # [B, L] probability of each position's candidate
    entropy: torch.Tensor | None  # [B, L] nats, computed only for schedules that read it
    masked: torch.Tensor  # [B, L] bool, positions still masked
    count: torch.Tensor  # [B] the static count, already capped at what is still masked


@dataclass(frozen=True)
class Schedule:
    select: Callable  # (StepScores, options with .threshold and .entropy_bound) -> chosen [B, L] bool
    adaptive: bool  # the steps a block takes depend on the confidences (read on the host each step)
    needs_entropy: bool = False


SCHEDULES: dict[str, Schedule] = {
    "static": Schedule(lambda s, o: select_static(s.confidence, s.masked, s.count), adaptive=False),
    "dynamic": Schedule(
        lambda s, o: select_dynamic(s.confidence, s.masked, s.count, o.threshold), adaptive=True
    ),
    "sequential": Schedule(lambda s, o: select_sequential(s.masked, s.count), adaptive=False),
    "entropy": Schedule(
        lambda s, o: select_entropy(s.entropy, s.masked, s.count, o.entropy_bound),
        adaptive=True,
        needs_entropy=True,
    ),
}
STRATEGIES = (*SCHEDULES, "ar")  # "ar": one token per forward (a block of one for SDAR weights)
