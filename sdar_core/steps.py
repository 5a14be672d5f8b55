"""A decoding step's device work after the forward, on buffers that keep their addresses, with no host read: the
block decoder's denoising step (`denoise_step` on a `BlockState`: sample the candidates, let the schedule choose,
commit the chosen positions, record the step, note which rows still hold masks) and the next-token decoder's step
(`next_token_step` on a `TokenState`: sample, commit, record, note the rows that stopped).

In runner mode "graph" (Kernels.graphed_step, greedy decoding) the runner captures each as a CUDA graph on its first
run and replays it after: a step is then the forward's replay, this replay and the copies of the forward's inputs, a
handful of calls from Python where the same work launched op by op takes thirty to forty-five. Each such call lets
go of the interpreter's lock and must win it back; in a server, beside threads that run Python (Gradio's), each can
wait a thread switch interval (app/interpreter.py), so the number of calls per step sets how much a busy server
slows a decode (benchmarks/NOTES.md). Sampled decoding (temperature > 0, a seeded generator) runs the same functions
eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import sample_tokens
from .schedules import Schedule, StepScores, static_count

# the block step record's slots, each [B, L] per step
STATE, CANDIDATES, CHOSEN, MASKED = range(4)
# the token step record's slots, each [B, 1] per token: the token, and whether its row had stopped before it
TOKEN, FINISHED = range(2)


@dataclass
class BlockState:
    """The block in flight, on buffers that keep their addresses (a captured step replays them): its tokens, which
    positions are prompt or padding, which rows decode it, the static counts, the index of the next step, the rows
    still masked after the last step, and the record of its steps (read once, when the block is final)."""

    block: torch.Tensor  # [B, L] long: the block's tokens, masks where still undecided
    fixed: torch.Tensor  # [B, L] bool: prompt and padding positions, never decoded
    active: torch.Tensor  # [B] bool: rows that decode this block
    counts: torch.Tensor  # [L] long: the static count of each step (schedules.static_count), 0 past the last
    step: torch.Tensor  # [1] long: the index of the next step
    left: torch.Tensor  # [B] bool: rows that still hold a masked position after the last step
    ids: torch.Tensor  # [L, 4, B, L] long: per step STATE (after the commit), CANDIDATES, CHOSEN, MASKED
    conf: torch.Tensor  # [L, B, L] float32: per step every position's candidate confidence

    @classmethod
    def allocate(cls, batch: int, block: int, device) -> BlockState:
        def zeros(*shape, dtype=torch.long):
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(
            zeros(batch, block),
            zeros(batch, block, dtype=torch.bool),
            zeros(batch, dtype=torch.bool),
            zeros(block),
            zeros(1),
            zeros(batch, dtype=torch.bool),
            zeros(block, 4, batch, block),
            zeros(block, batch, block, dtype=torch.float32),
        )

    def set_steps(self, steps: int) -> None:
        """The static counts of a block denoised in `steps` steps (at most the block's length)."""
        L = self.block.shape[1]
        counts = [static_count(L, steps, i) if i < steps else 0 for i in range(L)]
        self.counts.copy_(torch.tensor(counts), non_blocking=True)

    def begin(self, block: torch.Tensor, fixed: torch.Tensor, active: list[bool]) -> None:
        """A new block: its tokens and fixed positions (device tensors [B, L]) and the rows that decode it."""
        self.block.copy_(block)
        self.fixed.copy_(fixed)
        self.active.copy_(torch.tensor(active), non_blocking=True)
        self.step.zero_()


@dataclass
class Readback:
    """A final block's tokens and, traced, its steps' record, copied to the host without waiting (into pinned
    memory on CUDA, the copy's end marked by an event) and read later: the block decoder may launch the next blocks
    before it reads one (Kernels.read_ahead). The decoder holds a ring of them; a copy is enqueued on the stream
    after the block's last step and before the next block's first, so it reads the block's own buffers."""

    block: torch.Tensor  # [B, L] long, on the host
    ids: torch.Tensor  # [L, 4, B, L] long, on the host: BlockState.ids
    conf: torch.Tensor  # [L, B, L] float32, on the host: BlockState.conf
    done: torch.cuda.Event | None  # recorded after the copies (CUDA); elsewhere the copies wait
    steps: int = 0  # steps recorded in the copy (0: untraced)

    @classmethod
    def allocate(cls, batch: int, block: int, device) -> Readback:
        pinned = torch.device(device).type == "cuda"

        def empty(*shape, dtype=torch.long):
            return torch.empty(shape, dtype=dtype, pin_memory=pinned)

        done = torch.cuda.Event() if pinned else None
        return cls(
            empty(batch, block),
            empty(block, 4, batch, block),
            empty(block, batch, block, dtype=torch.float32),
            done,
        )

    def stage(self, state: BlockState, steps: int) -> None:
        """Enqueue the copy of the block in `state` and of its first `steps` recorded steps (0: none)."""
        wait = self.done is None
        self.block.copy_(state.block, non_blocking=not wait)
        if steps:
            self.ids[:steps].copy_(state.ids[:steps], non_blocking=not wait)
            self.conf[:steps].copy_(state.conf[:steps], non_blocking=not wait)
        self.steps = steps
        if self.done is not None:
            self.done.record()

    def read(self) -> tuple[list, list, list]:
        """Once the copy has landed: the block's tokens [B][L], the record's ids [steps][4][B][L] and confidences
        [steps][B][L] (empty when untraced)."""
        if self.done is not None:
            self.done.synchronize()
        return self.block.tolist(), self.ids[: self.steps].tolist(), self.conf[: self.steps].tolist()


def denoise_step(
    state: BlockState,
    logits: torch.Tensor,
    *,
    mask_id: int,
    schedule: Schedule,
    options,
    generator: torch.Generator | None,
    record: bool,
) -> None:
    """One step on the block in `state` from its logits [B, L, V]: the candidates and confidences (sampling.py),
    the schedule's choice among the masked positions of the active rows (never more than the step's static count
    where the schedule says so), the chosen candidates committed, the step recorded (`record`) and `state.left`
    set; `options` holds the sampling and the schedule's threshold and entropy bound (DecodeParams)."""
    masked = (state.block == mask_id) & ~state.fixed & state.active[:, None]
    x0, conf, ent = sample_tokens(
        logits,
        options.sampling,
        forbid_token=mask_id,
        generator=generator,
        want_entropy=schedule.needs_entropy,
    )
    count = torch.minimum(masked.sum(-1), state.counts.index_select(0, state.step))  # [B]
    chosen = schedule.select(StepScores(x0, conf, ent, masked, count), options)
    state.block.copy_(torch.where(chosen, x0, state.block))
    if record:
        slots = torch.stack((state.block, x0, chosen.long(), masked.long()))  # [4, B, L]
        state.ids.index_copy_(0, state.step, slots[None])
        state.conf.index_copy_(0, state.step, conf.float()[None])
    state.left.copy_((masked & ~chosen).any(-1))  # a chosen position holds a candidate, never the mask
    state.step.add_(1)


@dataclass
class TokenState:
    """A next-token decode on fixed buffers: each row's last token (the next forward's input), which rows stopped,
    the stop tokens, the answers so far, the count of tokens decoded, and the record of the last `window` tokens
    (read every `window` tokens at least)."""

    token: torch.Tensor  # [B, 1] long: each row's last token (padding once the row stopped)
    finished: torch.Tensor  # [B] bool: rows that produced a stop token
    stops: torch.Tensor  # [S] long: the stop tokens, -1 where there are fewer
    answer: torch.Tensor  # [B, N] long: the tokens decoded so far, padding after a row's stop
    count: torch.Tensor  # [1] long: tokens decoded so far
    ids: torch.Tensor  # [window, 2, B, 1] long: per token the slots TOKEN, FINISHED, at count % window
    conf: torch.Tensor  # [window, B, 1] float32: each token's confidence

    @classmethod
    def allocate(cls, batch: int, positions: int, stops: int, window: int, device) -> TokenState:
        def zeros(*shape, dtype=torch.long):
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(
            zeros(batch, 1),
            zeros(batch, dtype=torch.bool),
            zeros(stops),
            zeros(batch, positions),
            zeros(1),
            zeros(window, 2, batch, 1),
            zeros(window, batch, 1, dtype=torch.float32),
        )

    def begin(self, last: torch.Tensor, stop_ids: list[int]) -> None:
        """A new decode from each row's last prompt token `last` [B, 1], ending rows at `stop_ids`."""
        self.token.copy_(last)
        self.finished.zero_()
        stops = stop_ids + [-1] * (self.stops.numel() - len(stop_ids))
        self.stops.copy_(torch.tensor(stops), non_blocking=True)
        self.count.zero_()

    @property
    def window(self) -> int:
        return self.ids.shape[0]

    def read(self, first: int, n: int) -> tuple[list, list]:
        """Tokens first .. first + n - 1 of the record (n <= window) as host lists: ids [n][2][B][1], conf
        [n][B][1]."""
        ids, conf = self.ids.tolist(), self.conf.tolist()
        slots = [(first + k) % self.window for k in range(n)]
        return [ids[k] for k in slots], [conf[k] for k in slots]


def next_token_step(
    state: TokenState,
    logits: torch.Tensor,
    *,
    mask_id: int,
    pad_id: int,
    options,
    generator: torch.Generator | None,
    record: bool,
) -> None:
    """One token of every row from the logits [B, 1, V] of its last one: sampled (never the mask token), recorded
    (`record`), committed (padding for a row that had stopped), and the rows that produce a stop token marked."""
    x0, conf, _ = sample_tokens(logits, options.sampling, forbid_token=mask_id, generator=generator)
    token = x0[:, :1]  # [B, 1]
    if record:
        slot = state.count.remainder(state.window)
        state.ids.index_copy_(0, slot, torch.stack((token, state.finished[:, None].long()))[None])
        state.conf.index_copy_(0, slot, conf[:, :1].float()[None])
    kept = torch.where(state.finished[:, None], pad_id, token)
    state.token.copy_(kept)
    state.answer.index_copy_(1, state.count, kept)
    state.finished |= torch.isin(token[:, 0], state.stops)
    state.count.add_(1)
