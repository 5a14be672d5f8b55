"""generate(): SDAR's hierarchical decoding (paper §3.2, §7, Appendix B.2) and plain AR decoding.

Across blocks the decoder is autoregressive with a KV cache identical to an AR model's; inside a block
it runs masked-diffusion denoising: each step is one forward of the block in flight against the
committed cache (bidirectional inside the block), then a schedule commits some masked positions.

Layout of a batch (`BatchLayout`). Block boundaries fall at absolute positions that are multiples of
`block_length`, counted in each row's own sequence. Rows are left-padded by whole blocks so that every row's
first block in flight starts at the same tensor index: row r with prompt length P_r has k_r = P_r // L complete
prompt blocks and gets L * (max k - k_r) padding tokens in front. Padding keys are hidden by the mask and
RoPE positions are counted from each row's first real token, so every row computes what it would alone.

The cache write of a finished block is folded into the first denoising forward of the next block
(the "Engineering Gap" of the paper's Limitations): that forward's chunk is [final block b-1 ; block b],
block b-1's keys and values are kept, and the block costs exactly the denoising steps it uses.

Reading a block late (Kernels.read_ahead): a static schedule's steps need nothing from the host, so on a GPU block
b+1 is launched before block b's tokens are read (for the stop check and the StepEvents), through a copy to pinned
memory that lands when block b does (steps.Readback). The host's work between two blocks then overlaps the device's;
a row that stops costs the blocks launched past its stop, whose tokens are never read.

Joining a running decode (`join`, a `Joining`): a block boundary is the point where every row of the batch is in
the same state (its cache holds whole blocks, its next block is all masks), so a new row can take a free row of
the batch there (a row never used, or one whose answer has ended): its prompt's whole blocks are prefilled on
their own (batch 1) and copied into that row's cache so that they end where the batch's next block starts (the row
is left-padded by whole blocks like any other), its partial block becomes the prefix of that next block, and from
there it is denoised with the others. It computes what it would alone, as a padded row does. A server keeps
visitors who arrive while a batch runs from waiting for its end (app/scheduler.py).
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .decode_params import AR_BLOCK, ContextTooLong, DecodeParams, GenerationError, is_int
from .device import synchronize
from .runner import ChunkRunner, bucket, default_mode
from .schedules import SCHEDULES, static_steps_needed
from .steps import (
    CANDIDATES,
    CHOSEN,
    FINISHED,
    MASKED,
    STATE,
    TOKEN,
    BlockState,
    Readback,
    TokenState,
    denoise_step,
    next_token_step,
)
from .trace import Generation, Stats, StepEvent

__all__ = [
    "generate",
    "DecodeParams",
    "GenerationError",
    "ContextTooLong",
    "BatchLayout",
    "check_fits",
    "positions_needed",
    "Joining",
    "Room",
    "Arrival",
]

# AR decoding on a GPU reads the stop flags (a host sync) and emits the traced events every this many tokens, at
# the cost of a few spare forwards at most; on the CPU a read is free and happens every token.
STOP_CHECK_EVERY = 8


def positions_needed(prompt_len: int, max_new_tokens: int, strategy: str, block_length: int) -> int:
    """Positions a generation may use: the prompt plus the answer, rounded up to whole blocks (one token for ar)."""
    L = AR_BLOCK if strategy == "ar" else block_length
    return math.ceil((prompt_len + max_new_tokens) / L) * L


@dataclass(frozen=True)
class Room:
    """What a running decode offers at a block boundary: free rows, and where a joining row's prompt must fit."""

    rows: int  # free rows of the batch
    index: int  # the batch's block about to be decoded (0: its first; a joined row's block 0 is this one)
    position: int  # tensor index of the block about to be decoded: a joining prompt's whole blocks end there
    positions: int  # tensor positions from `position` to the end of the batch's buffer
    block: int  # the batch's block length

    def fits(self, prompt_len: int, max_new_tokens: int) -> bool:
        """Whether a prompt of prompt_len tokens with this answer limit can join here: its whole blocks fit before
        `position` (the row's left padding is whole blocks) and its partial block and answer fit after it."""
        whole = prompt_len // self.block * self.block
        rest = math.ceil((prompt_len - whole + max_new_tokens) / self.block) * self.block
        return prompt_len > 0 and max_new_tokens > 0 and whole <= self.position and rest <= self.positions


@dataclass(frozen=True)
class Arrival:
    """A row that joins a running decode: its prompt and its own answer limit."""

    ids: list[int]
    max_new_tokens: int


class Joining(Protocol):
    """Rows that join a decode while it runs (the module docstring): `width` rows are held, the input's rows first
    and the rest free; at every block boundary with a free row the decoder asks `admit(room)` for arrivals, at most
    room.rows, each fitting room (Room.fits). Joined rows are numbered after the input's, in the order they
    arrive: their StepEvents carry that row number and the Generation lists their answers after the input's."""

    width: int

    def admit(self, room: Room) -> list[Arrival]: ...


def generate(
    model,
    input_ids,
    params: DecodeParams | None = None,
    *,
    on_step: Callable[[StepEvent], None] | None = None,
    join: Joining | None = None,
    **options,
) -> Generation:
    """Decode up to `max_new_tokens` per row; returns a Generation (tokens [B, <=max_new_tokens], stats, trace).

    input_ids: LongTensor [B, T] or a list of id lists of different lengths. The options are a DecodeParams
    (`params`) and/or its fields as keywords (`max_new_tokens=64, strategy="static", ...`, applied on top);
    see DecodeParams for each. on_step receives every StepEvent as it happens. `join` lets rows join the decode
    at block boundaries (Joining; block decoding only: an AR model's next-token decoder takes none).

    Every decode runs under torch.inference_mode, whatever the caller's grad mode: the pooled runners' buffers
    (runner.py) are created and updated in one mode only, so a decode inside `torch.inference_mode()` and a plain
    one may share them. The returned tokens are a normal tensor.
    """
    with torch.inference_mode():
        gen = _generate(model, input_ids, params, on_step, join, options)
    gen.tokens = gen.tokens.clone()  # outside inference mode: the caller may edit it in place
    return gen


def _generate(model, input_ids, params: DecodeParams | None, on_step, join, options: dict) -> Generation:
    config = model.config
    params = DecodeParams.build(params, options)
    params.check(config)
    rows = prompt_rows(input_ids, config.vocab_size)
    p = params.resolved(config)
    warn_if_untrained_block(config, p)
    check_fits(max(len(r) for r in rows), p, config)
    tracer = Tracer.make(p.trace, on_step)
    if p.strategy == "ar" and not config.is_sdar:
        if join is not None:
            raise GenerationError("rows join block decoding only, not an AR model's next-token decoding")
        gen = NextTokenDecoder(model, rows, p, tracer).run()
    else:
        gen = BlockDecoder(model, rows, p, tracer, join).run()
    gen.stats.strategy = p.strategy
    gen.trace = tracer.events if tracer is not None else None
    return gen


def check_fits(prompt_len: int, p: DecodeParams, config) -> None:
    """Raise ContextTooLong when the longest prompt and p.max_new_tokens (p resolved) exceed the model's context."""
    needed = positions_needed(prompt_len, p.max_new_tokens, p.strategy, p.block_length)
    if needed > config.max_position_embeddings:
        raise ContextTooLong(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({p.max_new_tokens}), rounded up to whole blocks of "
            f"{p.block_length}, is {needed} tokens: beyond the model's context of {config.max_position_embeddings}"
        )


class UntrainedBlockSizeWarning(UserWarning):
    """Decoding with a block length outside the model's trained block sizes (ModelConfig.trained_blocks)."""


def warn_if_untrained_block(config, p: DecodeParams) -> None:
    """A block length outside the model's trained blocks decodes, but usually badly: say so (once per call)."""
    trained = config.trained_blocks
    if p.strategy != "ar" and trained and p.block_length not in trained:
        warnings.warn(
            f"block_length {p.block_length} is not among the block sizes this model was trained with "
            f"({', '.join(map(str, trained))}); expect worse output",
            UntrainedBlockSizeWarning,
            stacklevel=4,
        )


def prompt_rows(input_ids, vocab_size: int) -> list[list[int]]:
    """input_ids as a list of rows (a LongTensor [B, T], a list of id lists, or one id list), every id checked."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise GenerationError(
                f"input_ids must hold integer token ids, got a tensor of dtype {input_ids.dtype}"
            )
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise GenerationError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        rows = input_ids.tolist()
    elif isinstance(input_ids, (list, tuple)) and input_ids and is_int(input_ids[0]):
        rows = [list(input_ids)]
    elif isinstance(input_ids, (list, tuple)):
        rows = [r.tolist() if isinstance(r, torch.Tensor) else list(r) for r in input_ids]
    else:
        raise GenerationError(
            f"input_ids must be a LongTensor [B, T] or lists of token ids, got {type(input_ids)}"
        )
    if not rows or any(len(r) == 0 for r in rows):
        raise GenerationError("the prompt is empty: give at least one token per row")
    for r, row in enumerate(rows):
        bad = next((t for t in row if not is_int(t) or not 0 <= t < vocab_size), None)
        if bad is not None:
            raise GenerationError(
                f"input_ids must be integer token ids in 0..{vocab_size - 1}; row {r} holds {bad!r}"
            )
    return rows


def _cut_at_stop(tokens: list[int], stop_ids: list[int], limit: int) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token, at most `limit`; and whether a stop was hit."""
    tokens = tokens[:limit]
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[: i + 1], True
    return tokens, False


def _pad_id(config) -> int:
    """pad_token_id (checked inside the vocabulary with the config), else the first eos id the model has."""
    if config.pad_token_id is not None:
        return config.pad_token_id
    return next((i for i in config.eos_token_ids if 0 <= i < config.vocab_size), 0)


def _generator(p: DecodeParams, device) -> torch.Generator | None:
    if p.temperature == 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(p.seed if p.seed is not None else torch.seed())
    return generator


class Tracer:
    """Where StepEvents go: the trace list (trace=True) and/or the on_step callback."""

    def __init__(self, events: list[StepEvent] | None, on_step) -> None:
        self.events, self.on_step = events, on_step

    @classmethod
    def make(cls, trace: bool, on_step) -> Tracer | None:
        return cls([] if trace else None, on_step) if trace or on_step is not None else None

    def emit(self, event: StepEvent) -> None:
        if self.events is not None:
            self.events.append(event)
        if self.on_step is not None:
            self.on_step(event)


@dataclass
class BatchLayout:
    """Where every row's tokens sit in the batch tensor (see the module docstring); built once per call, a row
    rewritten when another row joins in its place (`seat`)."""

    prompts: list[list[int]]
    block: int  # L
    pad: list[int]  # left padding of each row, whole blocks
    start: int  # tensor index of the first block in flight, the same for every row
    seq: torch.Tensor  # [B, total] padding, prompt, then the fill token at every generated position
    fixed: torch.Tensor  # [B, total] bool: padding and prompt positions, never decoded
    pad_id: int
    fill_id: int

    @classmethod
    def build(
        cls,
        prompts: list[list[int]],
        block: int,
        max_new_tokens: int,
        fill_id: int,
        pad_id: int,
        device,
        total: Callable[[int], int] | None = None,
    ) -> BatchLayout:
        """`total(positions)`: the tensor's length for the positions the rows need (rounded down to whole blocks);
        default exactly those positions."""
        full_blocks = [len(p) // block for p in prompts]
        start = max(full_blocks) * block
        n_blocks = max(math.ceil((len(p) + max_new_tokens) / block) - k for p, k in zip(prompts, full_blocks))
        length = start + n_blocks * block
        if total is not None:
            length = max(length, start + (total(length) - start) // block * block)
        layout = cls(  # built on the host, moved once
            [],
            block,
            [],
            start,
            torch.full((len(prompts), length), fill_id, dtype=torch.long),
            torch.zeros((len(prompts), length), dtype=torch.bool),
            pad_id,
            fill_id,
        )
        for r, (ids, k) in enumerate(zip(prompts, full_blocks)):
            layout.seat(r, ids, start - k * block)
        layout.seq, layout.fixed = layout.seq.to(device), layout.fixed.to(device)
        return layout

    def seat(self, r: int, ids: list[int], pad: int) -> None:
        """Row r holds prompt `ids` after `pad` padding tokens, the fill token after it."""
        row = torch.full((self.seq.shape[1],), self.fill_id, dtype=torch.long)
        row[:pad] = self.pad_id
        row[pad : pad + len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.seq[r] = row.to(self.seq.device)
        self.fixed[r] = (torch.arange(self.seq.shape[1]) < pad + len(ids)).to(self.fixed.device)
        if r < len(self.prompts):
            self.prompts[r], self.pad[r] = ids, pad
        else:
            self.prompts.append(ids)
            self.pad.append(pad)

    @property
    def batch(self) -> int:
        return len(self.prompts)

    @property
    def total(self) -> int:
        return self.seq.shape[1]

    def prompt_end(self, r: int) -> int:
        """Tensor index just past row r's prompt."""
        return self.pad[r] + len(self.prompts[r])

    def masked_at(self, s: int) -> list[int]:
        """Masked positions of each row in the block at tensor index s before decoding it (host arithmetic)."""
        L = self.block
        return [L - max(0, min(L, self.prompt_end(r) - s)) for r in range(self.batch)]

    def answer(self, r: int, row: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
        """Row r's answer from `row` (its tensor row as a list): cut after its first stop token, at max_new_tokens."""
        return _cut_at_stop(row[self.prompt_end(r) :], stop_ids, max_new_tokens)[0]

    def finish(self, max_new_tokens: int, stop_ids: list[int], stats: Stats) -> Generation:
        """Cut every row after its first stop token and at max_new_tokens; fill in the token counts."""
        seq_rows = self.seq.tolist()
        answers = [self.answer(r, seq_rows[r], max_new_tokens, stop_ids) for r in range(self.batch)]
        return generation(answers, self.pad_id, stats)


def generation(answers: list[list[int]], pad_id: int, stats: Stats) -> Generation:
    """The Generation of these answers (one per row), the token counts filled into `stats`."""
    lengths = [len(a) for a in answers]
    tokens = torch.full((len(answers), max(lengths)), pad_id, dtype=torch.long)
    for r, kept in enumerate(answers):
        tokens[r, : len(kept)] = torch.tensor(kept, dtype=torch.long)
    stats.new_tokens = sum(lengths)
    stats.new_tokens_per_row = lengths
    return Generation(tokens=tokens, lengths=lengths, stats=stats)


def read_ahead(p: DecodeParams, schedule, device) -> int:
    """Blocks the block decoder launches before it reads the one before them (Kernels.read_ahead): none for a
    schedule that reads the device at every step (adaptive) or where a read does not wait for the device (CPU)."""
    if schedule.adaptive:
        return 0
    if p.kernels.read_ahead is not None:
        if not is_int(p.kernels.read_ahead) or p.kernels.read_ahead < 0:
            raise GenerationError(
                f"Kernels.read_ahead must be a whole number >= 0, got {p.kernels.read_ahead!r}"
            )
        return p.kernels.read_ahead
    if torch.device(device).type != "cuda":
        return 0
    return STOP_CHECK_EVERY if p.block_length == AR_BLOCK else 1


@dataclass
class Launched:
    """A block on the device whose tokens the host has not read yet."""

    b: int  # its index
    s: int  # its tensor index
    slots: list[tuple[int, int | None]]  # (slot, the slot's row) of the slots that decode it
    used: list[int]  # the steps each slot used (by slot)
    readback: Readback | None  # its tokens' copy to the host; None when nothing reads them


class Decoder:
    """The set-up both decoders share: the batch's layout (blocks of `block`, generated positions holding
    `fill_id`), its chunk runner and the sampling (each decoder keeps its step's buffers in the runner: steps.py).
    `roomy`: the layout fills its runner's whole buffer (room for rows that join)."""

    def __init__(
        self,
        model,
        rows: list[list[int]],
        p: DecodeParams,
        tracer: Tracer | None,
        block: int,
        fill_id: int,
        roomy: bool = False,
    ) -> None:
        self.model, self.p, self.tracer, self.device = model, p, tracer, model.device
        self.mask_id = model.config.mask_token_id
        self.generator = _generator(p, model.device)
        pad_id = _pad_id(model.config)
        context = model.config.max_position_embeddings
        total = (lambda n: bucket(n, context)) if roomy else None
        self.layout = BatchLayout.build(rows, block, p.max_new_tokens, fill_id, pad_id, model.device, total)
        self.seq = self.layout.seq  # [B, total]
        mode = p.runner_mode or default_mode(model)
        self.run_chunk = ChunkRunner.get(
            model, len(rows), self.seq.shape[1], block, mode, p.compile, p.kernels
        )
        self.run_chunk.set_padding(self.layout.pad)
        # a step's work after the forward replayed as a graph (steps.py); sampled decoding launches it op by op
        self.graphed = (
            self.run_chunk.mode == "graph" and p.kernels.graphed_step and p.sampling.temperature == 0
        )
        # the sending of the StepEvents read last: done once the next step is on the device, so that their Python
        # (and whatever on_step does) runs while the device works
        self.pending: Callable[[], None] | None = None

    def run_step(self, key: tuple, work: Callable[[], None]) -> None:
        """A step's work after the forward (steps.py): replayed as the runner's graph `key` when graphed."""
        if self.graphed:
            self.run_chunk.run_captured(key, work)
        else:
            work()

    def send_pending(self) -> None:
        send, self.pending = self.pending, None
        if send is not None:
            send()


class BlockDecoder(Decoder):
    """Block diffusion over a batch: the prompt's whole blocks prefilled in one forward, then block after
    block denoised against the cache until nothing is masked, every row ending at a stop or max_new_tokens; with
    `join`, rows joining at block boundaries (the module docstring).

    A row of the batch tensor is a *slot*; the rows of the Generation (and of the StepEvents) are the answers,
    the input's first (slot r holds row r at the start) and then each joined row in its turn."""

    def __init__(
        self,
        model,
        rows: list[list[int]],
        p: DecodeParams,
        tracer: Tracer | None,
        join: Joining | None = None,
    ) -> None:
        width = max(len(rows), join.width) if join is not None else len(rows)
        slots = rows + [rows[0]] * (width - len(rows))  # free slots start as copies of row 0, never decoded
        super().__init__(
            model, slots, p, tracer, p.block_length, model.config.mask_token_id, roomy=join is not None
        )
        self.L, self.join = p.block_length, join
        self.schedule = SCHEDULES["static" if p.strategy == "ar" else p.strategy]
        self.finished = [r >= len(rows) for r in range(width)]  # stopped, has its max_new_tokens, or free
        self.row_of: list[int | None] = [
            r if r < len(rows) else None for r in range(width)
        ]  # each slot's row
        self.limit = [p.max_new_tokens] * width  # each slot's max_new_tokens
        self.first_block = [0] * width  # the block index each slot's row started at
        self.prompts = [list(r) for r in rows]  # by row
        self.answers: dict[int, list[int]] = {}  # row -> answer, once its slot was taken by another row
        self.steps_per_block: list[list[int]] = [[] for _ in rows]  # by row
        self.forwards = 0
        self.state = self.run_chunk.held(
            "block", lambda: BlockState.allocate(width, self.L, self.device)
        )  # the block in flight
        self.state.set_steps(p.steps)
        self.steps_run = 0  # steps the last block took (its record holds that many)
        self.ahead = read_ahead(p, self.schedule, self.device)
        self.readbacks = [  # a ring: a block's copy is read before the block ahead + 1 later reuses it
            self.run_chunk.held(f"readback-{i}", lambda: Readback.allocate(width, self.L, self.device))
            for i in range(self.ahead + 1)
        ]

    def run(self) -> Generation:
        t0 = time.perf_counter()
        prefill_forwards = self.prefill()
        synchronize(self.device)
        prefill_seconds = time.perf_counter() - t0
        write_previous = False  # the previous block is final but its KV is not in the cache yet (fused path)
        b = 0  # the next block to launch
        unread: deque[Launched] = deque()  # launched blocks whose tokens are not read yet, oldest first
        ended = False  # a row ended in the last block read
        while True:
            s = self.layout.start + b * self.L  # tensor index of block b
            room = s + self.L <= self.layout.total
            if self.join is not None and room:
                if ended:  # whoever admits rows hears of those that ended before it is offered their slots
                    self.send_pending()
                self.admit(b, s)
            going = room and any(self.decodes(r, s) for r in range(self.layout.batch))
            if going:
                unread.append(self.launch(b, s, write_previous))
                write_previous = self.p.fuse_cache_write
                b += 1
            if not unread:
                break
            if len(unread) > self.ahead or not going:
                ended = self.settle(unread.popleft())
                if unread:  # the device has blocks queued: their StepEvents go now, not after the next launch
                    self.send_pending()
        self.send_pending()
        synchronize(self.device)
        p = self.p
        stats = Stats(
            strategy=p.strategy,
            block_length=self.L,
            steps=p.steps,
            batch_size=len(self.prompts),
            prompt_tokens=sum(map(len, self.prompts)),
            new_tokens=0,
            forwards=self.forwards,
            prefill_forwards=prefill_forwards,
            seconds=time.perf_counter() - t0,
            prefill_seconds=prefill_seconds,
            steps_per_block=self.steps_per_block,
        )
        if self.join is None:
            return self.layout.finish(p.max_new_tokens, p.stop_token_ids, stats)
        seq_rows = self.seq.tolist()
        for r, row in enumerate(self.row_of):
            if row is not None:
                self.answers[row] = self.answer(r, seq_rows[r])
        return generation([self.answers[row] for row in range(len(self.prompts))], self.layout.pad_id, stats)

    def decodes(self, r: int, s: int) -> bool:
        """Whether slot r decodes the block at tensor index s: its row has not ended (as far as the blocks read
        tell) and does not have its max_new_tokens before s."""
        return not self.finished[r] and s - self.layout.prompt_end(r) < self.limit[r]

    def launch(self, b: int, s: int, write_previous: bool) -> Launched:
        """Block b (tensor index s) denoised on the device, its tokens in place in the batch and, where they will be
        read (stop tokens, a trace), their copy to the host enqueued."""
        slots = [(r, self.row_of[r]) for r in range(self.layout.batch) if self.decodes(r, s)]
        used = self.denoise_block(s, write_previous, [r for r, _ in slots])
        if not self.p.fuse_cache_write:  # the paper's engine: one extra forward writes the final block's KV
            self.run_chunk(self.seq, s, self.L, logits_from=self.L)
            self.run_chunk.cache.commit(self.L)
            self.forwards += 1
        readback = None
        if self.tracer is not None or self.p.stop_token_ids:
            readback = self.readbacks[b % len(self.readbacks)]
            readback.stage(self.state, self.steps_run if self.tracer is not None else 0)
        return Launched(b, s, slots, used, readback)

    def settle(self, block: Launched) -> bool:
        """A launched block's tokens read (the deferred stop check, Appendix B.2: one host read per block, none at
        all without stop tokens or a trace): its steps counted and its StepEvents made ready for the rows that
        decoded it and are still running, and the rows it ends marked; whether it ended one."""
        tokens, ids, confs = block.readback.read() if block.readback is not None else (None, [], [])
        rows = [r for r, row in block.slots if self.row_of[r] == row and not self.finished[r]]
        if ids:
            self.send_pending()
            self.pending = self.block_events(block.b, block.s, rows, ids, confs)
        for r in rows:
            self.steps_per_block[self.row_of[r]].append(block.used[r])
            self.finished[r] = self.row_done(r, block.s, tokens)
        return any(self.finished[r] for r in rows)

    def answer(self, r: int, row: list[int]) -> list[int]:
        """The answer of slot r's row from its tensor row."""
        return self.layout.answer(r, row, self.limit[r], self.p.stop_token_ids)

    def prefill(self) -> int:
        """The prompt's complete blocks, in one forward, straight into the cache; the forwards it took."""
        start = self.layout.start
        if start == 0:
            return 0
        self.run_chunk(
            self.seq, 0, start, logits_from=start, prefill=True
        )  # logits of nothing: only the cache write matters
        self.run_chunk.cache.commit(start)
        return 1

    def admit(self, b: int, s: int) -> None:
        """Before block b (tensor index s): offer the free slots to rows that join, and seat those that come."""
        free = [r for r, done in enumerate(self.finished) if done]
        if not free:
            return
        room = Room(len(free), b, s, self.layout.total - s, self.L)
        arrivals = self.join.admit(room)
        if len(arrivals) > len(free) or not all(room.fits(len(a.ids), a.max_new_tokens) for a in arrivals):
            raise GenerationError(f"rows joining at position {s} do not fit the room offered: {room}")
        for r, arrival in zip(free, arrivals):
            self.seat(
                r, b, s, prompt_rows([arrival.ids], self.model.config.vocab_size)[0], arrival.max_new_tokens
            )
        if arrivals:
            self.run_chunk.set_padding(self.layout.pad)

    def seat(self, r: int, b: int, s: int, ids: list[int], max_new_tokens: int) -> None:
        """A joining row takes slot r before block b (tensor index s): its whole prompt blocks prefilled alone and
        copied into the slot's cache to end at s, its partial block the prefix of block b."""
        if self.row_of[r] is not None:  # the slot's answer ended: kept before the slot is rewritten
            self.answers[self.row_of[r]] = self.answer(r, self.seq[r].tolist())
        whole = len(ids) // self.L * self.L
        self.layout.seat(r, ids, s - whole)
        if whole:
            alone = ChunkRunner(self.model, 1, whole, self.L, "plain", kernels=self.p.kernels)
            alone(torch.tensor([ids[:whole]], device=self.device), 0, whole, logits_from=whole, prefill=True)
            cache = self.run_chunk.cache
            for mine, theirs in zip(cache.k + cache.v, alone.cache.k + alone.cache.v):
                mine[r, :, s - whole : s].copy_(theirs[0, :, :whole])
        self.row_of[r] = len(self.prompts)
        self.prompts.append(ids)
        self.steps_per_block.append([])
        self.finished[r], self.limit[r], self.first_block[r] = False, max_new_tokens, b

    def denoise_block(self, s: int, write_previous: bool, slots: list[int]) -> list[int]:
        """Denoise the block at tensor index s in the given slots until nothing is masked; the steps each slot used
        (host arithmetic for the static schedules, one host read per step for the adaptive ones). write_previous:
        its first forward also writes the previous (final) block into the cache. The StepEvents that wait are sent
        once the first step is on the device."""
        L, T, state = self.L, self.p.steps, self.state
        masked_at = self.layout.masked_at(s)
        active = [r in slots for r in range(self.layout.batch)]
        # The static schedules' step counts follow from the layout (prompt tails) without reading the device.
        static_used = [static_steps_needed(m, L, T) if a else 0 for a, m in zip(active, masked_at)]
        state.begin(self.seq[:, s : s + L], self.layout.fixed[:, s : s + L], active)
        rest = first = self.run_chunk.prepare(state.block, s, logits_from=0)
        if write_previous:  # the chunk [final block b-1 ; block b], its logits those of block b
            first = self.run_chunk.prepare(torch.cat([self.seq[:, s - L : s], state.block], 1), s - L, L)
        left = [a and m > 0 for a, m in zip(active, masked_at)]  # rows with masked positions
        used = [0] * self.layout.batch
        self.steps_run = 0
        for step in range(T):
            if self.schedule.adaptive:
                if not any(left):
                    break
                used = [u + int(m) for u, m in zip(used, left)]
            elif step == max(static_used):
                break
            self.step(first if step == 0 else rest, write_previous and step == 0)
            if step == 0:
                self.send_pending()
            if self.schedule.adaptive:
                left = state.left.tolist()  # the schedule's one host read per step
        self.seq[:, s : s + L] = state.block
        self.send_pending()  # (a block of no step has nothing on the device: what waits goes now)
        return used if self.schedule.adaptive else static_used

    def step(self, forward: Callable[[], torch.Tensor], write_previous: bool) -> None:
        """One denoising step: the chunk's forward, then steps.denoise_step (a graph replay when graphed)."""
        self.forwards += 1
        self.steps_run += 1
        logits = forward()  # [B, L, V]
        if write_previous:
            self.run_chunk.cache.commit(self.L)
        p = self.p

        def work() -> None:
            denoise_step(
                self.state,
                logits,
                mask_id=self.mask_id,
                schedule=self.schedule,
                options=p,
                generator=self.generator,
                record=self.tracer is not None,
            )

        traced = self.tracer is not None
        self.run_step(
            ("denoise", write_previous, p.strategy, p.threshold, p.entropy_bound, traced, self.mask_id), work
        )

    def row_done(self, r: int, s: int, block_tokens: list[list[int]] | None) -> bool:
        """Whether row r stopped in the final block at s or has max_new_tokens with it."""
        end = self.layout.prompt_end(r)
        first_new = max(end, s)
        n_before, n_new = first_new - end, s + self.L - first_new
        limit = self.limit[r]
        if block_tokens is None:
            return n_before + n_new >= limit
        kept, hit = _cut_at_stop(block_tokens[r][first_new - s :], self.p.stop_token_ids, limit - n_before)
        return hit or n_before + len(kept) >= limit

    def block_events(self, b: int, s: int, slots: list[int], ids: list, confs: list) -> Callable[[], None]:
        """The sending of the final block's StepEvents (one per step and slot that was still denoising) from its
        record on the host, with each row as it is now: called later, when rows may have ended or joined."""
        L, stop_ids, mask_id, layout = self.L, self.p.stop_token_ids, self.mask_id, self.layout
        rows = [  # (slot, its row, the row's block, the block's start in the row, the row's prompt end)
            (r, self.row_of[r], b - self.first_block[r], s - layout.pad[r], layout.prompt_end(r))
            for r in slots
        ]
        emit = self.tracer.emit

        def send() -> None:
            for step, (step_ids, conf) in enumerate(zip(ids, confs)):
                state, x0, chosen, masked = (step_ids[k] for k in (STATE, CANDIDATES, CHOSEN, MASKED))
                for r, row, block, start, end in rows:
                    if not any(masked[r]):
                        continue
                    fixed = [s + i < end for i in range(L)]  # prompt positions (a block holds no padding)
                    committed = [i for i in range(L) if chosen[r][i]]
                    new_tokens = [state[r][i] for i in range(L) if not fixed[i]]
                    final = mask_id not in new_tokens
                    emit(
                        StepEvent(
                            row=row,
                            block=block,
                            step=step,
                            block_start=start,
                            block_state=state[r],
                            committed=committed,
                            committed_confidence=[conf[r][i] for i in committed],
                            masked_confidence={i: conf[r][i] for i in range(L) if masked[r][i]},
                            candidates={i: x0[r][i] for i in range(L) if masked[r][i]},
                            prompt_positions=[i for i in range(L) if fixed[i]],
                            final=final,
                            stopped=final and any(t in stop_ids for t in new_tokens),
                        )
                    )

        return send


class NextTokenDecoder(Decoder):
    """Plain AR decoding for an AR model: one token per forward, next-token prediction, causal attention.

    The prefill writes prompt[:-1]; the decode loop starts from the last prompt token, so that every
    new token costs exactly one forward (TPF 1), the count SDAR's TPF is compared with.
    """

    def __init__(self, model, rows: list[list[int]], p: DecodeParams, tracer: Tracer | None) -> None:
        super().__init__(model, rows, p, tracer, 1, _pad_id(model.config))
        runner, stops = self.run_chunk, max(8, 1 << max(len(p.stop_token_ids) - 1, 0).bit_length())
        self.state = runner.held(
            f"token-{stops}",
            lambda: TokenState.allocate(
                self.layout.batch, runner.total, stops, STOP_CHECK_EVERY, self.device
            ),
        )
        self.emitted = 0  # tokens whose events were read

    def run(self) -> Generation:
        t0, longest, layout, state = time.perf_counter(), self.layout.start, self.layout, self.state
        if longest > 1:
            self.run_chunk(self.seq, 0, longest - 1, logits_from=longest - 1, prefill=True)
        state.begin(self.seq[:, longest - 1 : longest], self.p.stop_token_ids)
        run_chunk = self.run_chunk

        def forward(i: int) -> torch.Tensor:  # token i's forward, from each row's last token
            return run_chunk.forward(state.token, longest - 1 + i, 0)

        synchronize(self.device)
        prefill_seconds = time.perf_counter() - t0
        forwards = 0
        for i in range(self.p.max_new_tokens):
            forwards += 1
            if self.step(i, forward):
                break
        self.send_pending()
        self.events(forwards)()
        self.seq[:, longest : longest + forwards] = state.answer[:, :forwards]
        synchronize(self.device)
        stats = Stats(
            strategy="ar",
            block_length=1,
            steps=1,
            batch_size=layout.batch,
            prompt_tokens=sum(map(len, layout.prompts)),
            new_tokens=0,
            forwards=forwards,
            prefill_forwards=int(longest > 1),
            seconds=time.perf_counter() - t0,
            prefill_seconds=prefill_seconds,
        )
        gen = layout.finish(self.p.max_new_tokens, self.p.stop_token_ids, stats)
        stats.steps_per_block = [[1] * n for n in gen.lengths]
        return gen

    def step(self, i: int, forward: Callable[[int], torch.Tensor]) -> bool:
        """Token i of every row: its forward, then steps.next_token_step (a graph replay when graphed); whether every
        row has stopped (read every STOP_CHECK_EVERY tokens on a GPU, with the record's events)."""
        logits = forward(i)  # [B, 1, V]
        p, record = self.p, self.tracer is not None

        def work() -> None:
            next_token_step(
                self.state,
                logits,
                mask_id=self.mask_id,
                pad_id=self.layout.pad_id,
                options=p,
                generator=self.generator,
                record=record,
            )

        self.run_step(("next", record, self.state.stops.numel(), self.mask_id, self.layout.pad_id), work)
        self.send_pending()  # the last tokens' events, sent while the device computes this one
        if self.device.type != "cpu" and (i + 1) % STOP_CHECK_EVERY:
            return False
        self.pending = self.events(i + 1)
        return bool(self.p.stop_token_ids) and bool(self.state.finished.all())

    def events(self, decoded: int) -> Callable[[], None]:
        """The sending of the StepEvents of tokens self.emitted .. decoded - 1, read now (one host read)."""
        if self.tracer is None or decoded == self.emitted:
            return lambda: None
        ids, confs = self.state.read(self.emitted, decoded - self.emitted)
        first, self.emitted = self.emitted, decoded
        first_pos, pad, stop_ids, emit = (
            self.layout.start - 1,
            self.layout.pad,
            self.p.stop_token_ids,
            self.tracer.emit,
        )

        def send() -> (
            None
        ):  # per token, every row that had not stopped before it (first_pos: token 0's input)
            for i, (step_ids, conf) in enumerate(zip(ids, confs), start=first):
                tokens, finished = step_ids[TOKEN], step_ids[FINISHED]
                for r in range(len(tokens)):
                    tok, c = tokens[r][0], conf[r][0]
                    if not finished[r][0]:
                        emit(
                            StepEvent(
                                row=r,
                                block=i,
                                step=0,
                                block_start=first_pos + i + 1 - pad[r],
                                block_state=[tok],
                                committed=[0],
                                committed_confidence=[c],
                                masked_confidence={0: c},
                                candidates={0: tok},
                                prompt_positions=[],
                                final=True,
                                stopped=tok in stop_ids,
                            )
                        )

        return send
