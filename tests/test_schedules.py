"""The unmasking schedules (sdar_core/schedules.py) against brute-force Python loops over positions.

Scores are drawn from a few levels so that ties are common: every schedule breaks them by position.
"""

from __future__ import annotations

import pytest
import torch

from sdar_core.schedules import (
    SCHEDULES,
    StepScores,
    select_dynamic,
    select_entropy,
    select_sequential,
    select_static,
    static_count,
    static_steps_needed,
)


def dealt_counts(L: int, T: int) -> list[int]:
    """Deal L positions to T steps one at a time, round robin: floor(L/T) each, one more for the first L mod T."""
    counts = [0] * T
    for i in range(L):
        counts[i % T] += 1
    return counts


def random_step(seed: int, B: int = 4, L: int = 8):
    """Scores with ties, a random masked pattern (some rows fully masked, some empty), counts capped at masked."""
    g = torch.Generator().manual_seed(seed)
    score = torch.randint(0, 4, (B, L), generator=g).float() / 4  # [B, L] levels 0, .25, .5, .75
    masked = torch.rand(B, L, generator=g) < torch.tensor([1.0, 0.6, 0.3, 0.0])[:B, None]
    count = torch.minimum(torch.randint(0, 4, (B,), generator=g), masked.sum(-1))
    return score, masked, count


def best_first(score_row: list[float], masked_row: list[bool], lowest: bool) -> list[int]:
    """Masked positions ordered best first (highest score, or lowest when `lowest`), ties by position."""
    sign = 1 if lowest else -1
    return sorted((i for i, m in enumerate(masked_row) if m), key=lambda i: (sign * score_row[i], i))


def as_rows(selection: torch.Tensor) -> list[set[int]]:
    return [{i for i, v in enumerate(row) if v} for row in selection.tolist()]


@pytest.mark.parametrize("L", range(1, 10))
def test_static_count_deals_the_block_round_robin_over_the_steps(L):
    for T in range(1, L + 1):
        assert [static_count(L, T, s) for s in range(T)] == dealt_counts(L, T)


def test_static_count_by_hand():
    assert [static_count(8, 3, s) for s in range(3)] == [3, 3, 2]
    assert [static_count(4, 4, s) for s in range(4)] == [1, 1, 1, 1]


@pytest.mark.parametrize("L", [1, 4, 7, 8])
def test_static_steps_needed_is_the_first_step_whose_counts_cover_the_masked_positions(L):
    for T in range(1, L + 1):
        counts = dealt_counts(L, T)
        for n in range(L + 1):
            brute = next(s for s in range(T + 1) if sum(counts[:s]) >= n)
            assert static_steps_needed(n, L, T) == brute, (n, L, T)


@pytest.mark.parametrize("seed", range(12))
def test_select_static_takes_the_count_most_confident_masked_positions(seed):
    conf, masked, count = random_step(seed)
    want = [
        set(best_first(c, m, lowest=False)[:n])
        for c, m, n in zip(conf.tolist(), masked.tolist(), count.tolist())
    ]
    assert as_rows(select_static(conf, masked, count)) == want


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", range(8))
def test_select_dynamic_takes_every_masked_position_over_threshold_and_at_least_the_count(seed, threshold):
    conf, masked, count = random_step(seed)
    want = []
    for c, m, n in zip(conf.tolist(), masked.tolist(), count.tolist()):
        over = {i for i in range(len(c)) if m[i] and c[i] > threshold}
        want.append(over | set(best_first(c, m, lowest=False)[:n]))
    assert as_rows(select_dynamic(conf, masked, count, threshold)) == want


def test_select_dynamic_threshold_is_strict():
    conf = torch.tensor([[0.5, 0.9, 0.2]])
    masked = torch.tensor([[True, True, True]])
    assert as_rows(select_dynamic(conf, masked, torch.tensor([0]), 0.5)) == [{1}]


@pytest.mark.parametrize("seed", range(8))
def test_select_sequential_takes_the_count_leftmost_masked_positions(seed):
    _, masked, count = random_step(seed)
    want = [
        {i for i, m in enumerate(row) if m}.intersection(sorted(i for i, m in enumerate(row) if m)[:n])
        for row, n in zip(masked.tolist(), count.tolist())
    ]
    assert as_rows(select_sequential(masked, count)) == want


def brute_entropy(ent: list[float], masked: list[bool], count: int, bound: float) -> set[int]:
    order = best_first(ent, masked, lowest=True)
    n, total = 0, 0.0
    for i in order:
        total += ent[i]
        if total > bound:
            break
        n += 1
    return set(order[: max(n, count, 1)])


@pytest.mark.parametrize("bound", [0.0, 0.5, 1.0, 10.0])
@pytest.mark.parametrize("seed", range(8))
def test_select_entropy_takes_lowest_entropies_while_their_sum_stays_under_the_bound(seed, bound):
    ent, masked, count = random_step(seed)
    want = [brute_entropy(e, m, n, bound) for e, m, n in zip(ent.tolist(), masked.tolist(), count.tolist())]
    assert as_rows(select_entropy(ent, masked, count, bound)) == want


def test_select_entropy_commits_at_least_one_even_with_count_zero():
    ent = torch.tensor([[2.0, 1.0, 3.0]])
    masked = torch.ones(1, 3, dtype=torch.bool)
    assert as_rows(select_entropy(ent, masked, torch.tensor([0]), bound=0.5)) == [{1}]


def test_select_entropy_sum_may_equal_the_bound():
    ent = torch.tensor([[0.25, 0.25, 0.5, 1.0]])
    masked = torch.ones(1, 4, dtype=torch.bool)
    assert as_rows(select_entropy(ent, masked, torch.tensor([1]), bound=1.0)) == [{0, 1, 2}]


class Options:
    threshold = 0.5
    entropy_bound = 0.6


@pytest.mark.parametrize("seed", range(4))
def test_schedule_registry_passes_each_schedule_its_scores_and_options(seed):
    conf, masked, count = random_step(seed)
    ent = conf.flip(-1)
    scores = StepScores(
        candidates=torch.zeros_like(masked, dtype=torch.long),
        confidence=conf,
        entropy=ent,
        masked=masked,
        count=count,
    )
    want = {
        "static": select_static(conf, masked, count),
        "dynamic": select_dynamic(conf, masked, count, 0.5),
        "sequential": select_sequential(masked, count),
        "entropy": select_entropy(ent, masked, count, 0.6),
    }
    for name, schedule in SCHEDULES.items():
        assert torch.equal(schedule.select(scores, Options), want[name]), name
    assert {n for n, s in SCHEDULES.items() if s.adaptive} == {"dynamic", "entropy"}
    assert {n for n, s in SCHEDULES.items() if s.needs_entropy} == {"entropy"}
