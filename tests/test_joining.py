"""Rows joining a running decode at block boundaries (decoding.Joining): every row, joined or not, decodes what the
brute-force decoder (no cache, the whole sequence recomputed under a hand-built mask) gives for its prompt alone;
its step events are those of decoding it alone; a joined row takes a slot never used or one whose row ended; an
arrival that does not fit the room offered is refused by name."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from test_decoding import MASK, brute_force

from sdar_core import GenerationError, generate
from sdar_core.decoding import Arrival, Room

from helpers import random_model, tiny_config


@pytest.fixture(scope="module")
def sdar():
    return random_model(tiny_config("sdar", block_size=4, layers=2))


@dataclass
class Scripted:
    """Arrivals that come at a tensor position (each waits until a boundary at or after it offers a row it fits)."""

    width: int
    plan: list[tuple[int, Arrival]]
    rooms: list[Room] = field(default_factory=list)
    seated: list[tuple[int, Arrival]] = field(default_factory=list)  # (position, arrival), in joining order

    def admit(self, room: Room) -> list[Arrival]:
        self.rooms.append(room)
        come = [
            (at, a) for at, a in self.plan if at <= room.position and room.fits(len(a.ids), a.max_new_tokens)
        ]
        come = come[: room.rows]
        for item in come:
            self.plan.remove(item)
            self.seated.append((room.position, item[1]))
        return [a for _, a in come]


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 90, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize(
    "strategy,L,T", [("static", 4, 2), ("dynamic", 4, 4), ("static", 2, 1), ("ar", 1, 1)]
)
@pytest.mark.parametrize("mode", ["plain", "static"])
def test_every_row_joined_or_not_decodes_what_brute_force_gives_alone(sdar, strategy, L, T, mode):
    first = [prompt(9, 1), prompt(5, 2)]
    # a short prompt (no whole block), one of whole blocks only, one with a partial block; each joins when a slot
    # is free: the never-used third slot at once, the others mid-decode in slots whose rows ended (the first
    # arrival's, then one of the input's)
    plan = [(0, Arrival(prompt(3, 3), 10)), (8, Arrival(prompt(8, 4), 7)), (10, Arrival(prompt(6, 5), 12))]
    joining = Scripted(width=3, plan=list(plan))
    gen = generate(
        sdar,
        first,
        max_new_tokens=14,
        block_length=L,
        steps=T,
        strategy=strategy,
        threshold=0.5,
        runner_mode=mode,
        join=joining,
    )
    assert not joining.plan and len(joining.seated) == 3  # every arrival joined
    assert joining.seated[-1][0] > joining.rooms[0].position  # the last ones mid-decode
    assert len(gen.lengths) == 5 and gen.stats.batch_size == 5
    limits = [14, 14] + [a.max_new_tokens for _, a in joining.seated]
    prompts = first + [a.ids for _, a in joining.seated]
    for r, (ids, limit) in enumerate(zip(prompts, limits)):
        want = brute_force(sdar, ids, limit, L, T, "static" if strategy == "ar" else strategy, threshold=0.5)
        assert gen.row_tokens(r) == want, (r, ids)
    # rows joined at the block boundaries the decoder offered, a free row each time
    assert all(room.position % L == 0 and room.rows >= 1 for room in joining.rooms)


def test_a_joined_row_reports_the_steps_it_would_alone(sdar):
    kw = dict(block_length=4, steps=2, strategy="dynamic", threshold=0.6)
    joiner = Arrival(prompt(6, 7), 9)
    seen = []
    gen = generate(
        sdar,
        [prompt(10, 6)],
        max_new_tokens=16,
        trace=True,
        on_step=seen.append,
        join=Scripted(width=2, plan=[(12, joiner)]),
        **kw,
    )
    alone = generate(sdar, [joiner.ids], max_new_tokens=joiner.max_new_tokens, trace=True, **kw)
    joined = [e for e in gen.trace if e.row == 1]
    assert seen == gen.trace and len(joined) == len(alone.trace)
    for got, want in zip(joined, alone.trace):
        # the same block index (from the row's first block), positions in the row's own sequence, tokens
        assert (got.block, got.step, got.block_start, got.block_state, got.committed) == (
            want.block,
            want.step,
            want.block_start,
            want.block_state,
            want.committed,
        )
        assert got.committed_confidence == pytest.approx(want.committed_confidence, abs=1e-5)
    assert gen.row_tokens(1) == alone.row_tokens(0)
    assert gen.stats.steps_per_block[1] == alone.stats.steps_per_block[0]
    assert gen.stats.new_tokens == sum(gen.lengths)


def test_a_row_that_stops_frees_its_slot_for_the_next_arrival(sdar):
    kw = dict(block_length=4, steps=4, strategy="static")
    free = generate(sdar, [prompt(5, 8)], max_new_tokens=12, **kw).row_tokens(0)
    stop = free[5]  # the first row stops in its second block
    second = Arrival(prompt(7, 9), 8)
    joining = Scripted(width=1, plan=[(0, second)])
    gen = generate(sdar, [prompt(5, 8)], max_new_tokens=12, stop_token_ids=[stop], join=joining, **kw)
    cut = free.index(stop) + 1
    assert gen.row_tokens(0) == free[:cut]
    assert joining.seated and joining.seated[0][0] == 4 * (
        5 // 4 + (5 % 4 + cut + 3) // 4
    )  # the next boundary
    alone = generate(sdar, [second.ids], max_new_tokens=8, stop_token_ids=[stop], **kw)
    assert gen.row_tokens(1) == alone.row_tokens(0)


def test_room_says_which_prompts_fit_and_a_misfit_arrival_is_refused(sdar):
    room = Room(rows=1, index=0, position=8, positions=8, block=4)
    assert room.fits(8, 8)  # two whole blocks end at 8; answer in two blocks
    assert room.fits(11, 5)  # partial block of 3 + 5 tokens: two blocks
    assert not room.fits(12, 1)  # three whole blocks cannot end at 8
    assert not room.fits(3, 6)  # 3 + 6 tokens need three blocks
    assert not room.fits(0, 4) and not room.fits(4, 0)

    class Pushy:
        width = 2

        def admit(self, room):
            return [Arrival(list(range(1, room.position + 5)), 4)]  # one whole block too many

    with pytest.raises(GenerationError, match="do not fit the room offered"):
        generate(sdar, [[1, 2, 3]], max_new_tokens=8, block_length=4, steps=2, join=Pushy())


def test_joining_needs_the_block_decoder(sdar):
    ar = random_model(tiny_config("qwen3", layers=2))
    with pytest.raises(GenerationError, match="join block decoding only"):
        generate(ar, [[1, 2, 3]], max_new_tokens=4, strategy="ar", join=Scripted(width=2, plan=[]))


def test_without_arrivals_a_roomy_decode_gives_the_plain_decode(sdar):
    kw = dict(max_new_tokens=11, block_length=4, steps=2, strategy="dynamic", threshold=0.5)
    rows = [prompt(6, 10), prompt(13, 11)]
    plain = generate(sdar, rows, **kw)
    joining = Scripted(width=4, plan=[])
    roomy = generate(sdar, rows, join=joining, **kw)
    assert roomy.tokens.tolist() == plain.tokens.tolist() and roomy.lengths == plain.lengths
    assert roomy.stats.forwards == plain.stats.forwards
    rows_offered = [room.rows for room in joining.rooms]
    assert rows_offered[0] == 2 and rows_offered == sorted(
        rows_offered
    )  # the free two, then rows as they end
    assert MASK not in sum(roomy.tokens.tolist(), [])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["static", "dynamic"])
def test_cuda_rows_joining_a_graphed_decode_answer_as_on_the_cpu(strategy):
    """In graph mode (the captured forwards read the padding and the cache in place, the joined rows' prompts are
    prefilled on the plain path and copied in) with the fused kernels, every row, joined or not, gives the CPU's
    brute-force tokens."""
    cpu = random_model(tiny_config("sdar", block_size=4, layers=2))
    model = random_model(tiny_config("sdar", block_size=4, layers=2)).cuda()
    kw = dict(max_new_tokens=14, block_length=4, steps=2, strategy=strategy, threshold=0.5)
    first = [prompt(9, 1), prompt(5, 2)]
    plan = [(0, Arrival(prompt(3, 3), 10)), (8, Arrival(prompt(8, 4), 7)), (10, Arrival(prompt(6, 5), 12))]
    joining = Scripted(width=4, plan=list(plan))
    gen = generate(model, first, runner_mode="graph", join=joining, **kw)
    assert not joining.plan
    seated = [a for _, a in joining.seated]
    for r, (ids, limit) in enumerate(
        zip(first + [a.ids for a in seated], [14, 14] + [a.max_new_tokens for a in seated])
    ):
        want = brute_force(cpu, ids, limit, 4, 2, strategy, threshold=0.5)
        assert gen.row_tokens(r) == want, r
