"""generate(): SDAR's hierarchical decoding (paper §3.2, §7, Appendix B.2) and plain AR decoding.

Across blocks the decoder is autoregressive with a KV cache identical to an AR model's; inside a block
it runs masked-diffusion denoising: each step is one forward of the block in flight against the
committed cache (bidirectional inside the block), then a schedule commits some masked positions.

Layout of a batch. Block boundaries fall at absolute positions that are multiples of `block_length`,
counted in each row's own sequence. Rows are left-padded by whole blocks so that every row's first block
in flight starts at the same tensor index: row r with prompt length P_r has k_r = P_r // L complete
prompt blocks and gets L * (max k - k_r) padding tokens in front. Padding keys are hidden by the mask and
RoPE positions are counted from each row's first real token, so every row computes what it would alone.

The cache write of a finished block is folded into the first denoising forward of the next block
(the "Engineering Gap" of the paper's Limitations): that forward's chunk is [final block b-1 ; block b],
block b-1's keys and values are kept, and the block costs exactly the denoising steps it uses.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from .device import synchronize
from .runner import ChunkRunner, default_mode
from .sampling import SamplingError, SamplingParams, sample_tokens
from .schedules import (STRATEGIES, select_dynamic, select_entropy, select_sequential, select_static,
                        static_counts)
from .trace import Generation, Stats, StepEvent


class GenerationError(ValueError):
    """Arguments that generate() cannot honour, explained."""


def _prompt_rows(input_ids) -> list[list[int]]:
    """input_ids as a list of rows: a LongTensor [B, T], a list of id lists, or one id list."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise GenerationError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        rows = input_ids.tolist()
    elif input_ids and isinstance(input_ids[0], int):
        rows = [list(input_ids)]
    else:
        rows = [list(r.tolist() if isinstance(r, torch.Tensor) else r) for r in input_ids]
    if not rows or any(len(r) == 0 for r in rows):
        raise GenerationError("the prompt is empty: give at least one token per row")
    return rows


def positions_needed(prompt_len: int, max_new_tokens: int, strategy: str, block_length: int) -> int:
    """Positions a generation may use: the prompt plus the answer, rounded up to whole blocks (one token for ar)."""
    L = 1 if strategy == "ar" else block_length
    return math.ceil((prompt_len + max_new_tokens) / L) * L


def _validate(model, rows, *, max_new_tokens, block_length, steps, strategy, threshold, sampling,
              entropy_bound):
    config = model.config
    if strategy not in STRATEGIES:
        raise GenerationError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if strategy != "ar":
        if not config.is_sdar:
            raise GenerationError(
                f"this is an autoregressive model (model_type {config.model_type!r}): only strategy='ar' "
                "applies; block diffusion needs an SDAR checkpoint")
        if block_length < 1:
            raise GenerationError(f"block_length must be >= 1, got {block_length}")
        if not 1 <= steps <= block_length:
            raise GenerationError(f"steps must be between 1 and block_length ({block_length}), got {steps}")
        if strategy == "dynamic" and not 0 < threshold <= 1:
            raise GenerationError(f"threshold must be in (0, 1], got {threshold}")
        if strategy == "entropy" and not entropy_bound > 0:
            raise GenerationError(f"entropy_bound must be > 0, got {entropy_bound}")
    try:
        sampling.validate()
    except SamplingError as e:
        raise GenerationError(str(e)) from None
    longest = max(len(r) for r in rows)
    needed = positions_needed(longest, max_new_tokens, strategy, block_length)
    if needed > config.max_position_embeddings:
        L = 1 if strategy == "ar" else block_length
        raise GenerationError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}), rounded up to whole blocks of "
            f"{L}, is {needed} tokens: beyond the model's context of {config.max_position_embeddings}")


@torch.no_grad()
def generate(
    model,
    input_ids,
    *,
    max_new_tokens: int = 128,
    block_length: int | None = None,
    steps: int | None = None,
    strategy: str = "dynamic",
    threshold: float = 0.9,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_token_ids: list[int] | None = None,
    seed: int | None = 0,
    trace: bool = False,
    on_step: Callable[[StepEvent], None] | None = None,
    entropy_bound: float = 1.0,
    fuse_cache_write: bool = True,
    runner_mode: str | None = None,
    compile: bool = False,
) -> Generation:
    """Decode `max_new_tokens` per row; returns a Generation (tokens [B, <=max_new_tokens], stats, trace).

    input_ids: LongTensor [B, T] or a list of id lists of different lengths. block_length / steps
    default to the model's block size. strategy: "static" (ceil(L/T) per step), "dynamic" (confidence >
    threshold, at least the static count), "sequential" (left to right), "entropy" (lowest entropy while
    the summed entropy <= entropy_bound, at least the static count), "ar" (one token per forward with
    causal attention: next-token prediction for an AR model, a block of one masked token for SDAR).
    stop_token_ids end a row at its first stop token (kept; nothing after it is returned or counted).
    trace=True records a StepEvent per row and step; on_step receives them as they happen.
    runner_mode: "plain", "static" or "graph" (CUDA graphs; default on CUDA), see runner.py; all three
    give the same tokens. compile=True also torch.compile's the graphed forward.
    """
    config = model.config
    block_length = max(config.block_size, 1) if block_length is None else block_length
    steps = block_length if steps is None else steps
    sampling = SamplingParams(temperature, top_k, top_p)
    pad_id = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_ids or [0])[0]
    rows = _prompt_rows(input_ids)
    _validate(model, rows, max_new_tokens=max_new_tokens, block_length=block_length, steps=steps,
              strategy=strategy, threshold=threshold, sampling=sampling, entropy_bound=entropy_bound)
    stop_ids = sorted(set(stop_token_ids or []))
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
    events: list[StepEvent] | None = [] if trace else None
    emit = None
    if trace or on_step is not None:
        def emit(e: StepEvent) -> None:
            if events is not None:
                events.append(e)
            if on_step is not None:
                on_step(e)
    args = dict(max_new_tokens=max_new_tokens, sampling=sampling, stop_ids=stop_ids, generator=generator,
                emit=emit, pad_id=pad_id, mode=runner_mode or default_mode(model), compile=compile)
    if strategy == "ar" and not config.is_sdar:
        gen = _generate_next_token(model, rows, **args)
    else:
        if strategy == "ar":  # SDAR weights: a block of one masked token, predicted at its own position
            block_length, steps, schedule = 1, 1, "static"
        else:
            schedule = strategy
        gen = _generate_blocks(model, rows, block_length=block_length, steps=steps, schedule=schedule,
                               threshold=threshold, entropy_bound=entropy_bound, fuse=fuse_cache_write, **args)
    gen.stats.strategy = strategy
    gen.trace = events
    return gen


def _cut_at_stop(tokens: list[int], stop_ids: list[int], limit: int) -> tuple[list[int], bool]:
    """Tokens up to and including the first stop token, at most `limit`; and whether a stop was hit."""
    tokens = tokens[:limit]
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[: i + 1], True
    return tokens, False


def _generate_blocks(model, rows, *, max_new_tokens, block_length, steps, schedule, threshold, entropy_bound,
                     fuse, sampling, stop_ids, generator, emit, pad_id, mode, compile) -> Generation:
    device, L, B = model.device, block_length, len(rows)
    mask_id = model.config.mask_token_id
    t0 = time.perf_counter()
    prompt_len = [len(r) for r in rows]
    full_blocks = [p // L for p in prompt_len]
    k_max = max(full_blocks)
    pad = [L * (k_max - k) for k in full_blocks]  # left padding, whole blocks
    start = k_max * L  # tensor index of the first block in flight, the same for every row
    n_blocks = max(math.ceil((p + max_new_tokens) / L) - k for p, k in zip(prompt_len, full_blocks))
    total = start + n_blocks * L
    # seq: [B, total] every row's tokens in tensor layout; generated positions start as mask tokens.
    seq = torch.full((B, total), mask_id, dtype=torch.long)
    for r, ids in enumerate(rows):
        seq[r, : pad[r]] = pad_id
        seq[r, pad[r]: pad[r] + len(ids)] = torch.tensor(ids)
    seq = seq.to(device)
    fixed = torch.zeros(B, total, dtype=torch.bool)  # prompt positions inside the blocks in flight
    for r in range(B):
        fixed[r, : pad[r] + prompt_len[r]] = True
    fixed = fixed.to(device)

    run = ChunkRunner.get(model, B, total, L, mode, compile)
    run.set_padding(pad)

    prefill_forwards = 0
    if start > 0:  # the prompt's complete blocks, in one forward, straight into the cache
        run(seq, 0, start, logits_from=start)  # logits of nothing: only the cache write matters
        run.cache.commit(start)
        prefill_forwards = 1
    synchronize(device)
    prefill_seconds = time.perf_counter() - t0

    forwards = 0
    finished = [False] * B  # stopped, or has max_new_tokens
    steps_per_block: list[list[int]] = [[] for _ in range(B)]
    pending = False  # the previous block is final but its KV is not in the cache yet (fused path)
    tracing = emit is not None
    for b in range(n_blocks):
        if all(finished):
            break
        s = start + b * L  # tensor index of this block
        active = torch.tensor([not f for f in finished], device=device)
        # Masked positions per row at the block's start are known on the host from the layout (prompt tails),
        # so the static schedules know their step count without reading the device: min(T, masked) forwards.
        host_masked = [L - max(0, min(L, pad[r] + prompt_len[r] - s)) for r in range(B)]
        n_masked = torch.tensor(host_masked, device=device)  # [B]
        static_steps = max(min(steps, m) for r, m in enumerate(host_masked) if not finished[r])
        used = [0] * B
        adaptive = schedule in ("dynamic", "entropy")  # steps used depend on confidences: read on the host
        for step in range(steps):
            masked = (seq[:, s: s + L] == mask_id) & ~fixed[:, s: s + L] & active[:, None]
            if adaptive:
                row_masked = masked.any(-1).tolist()  # the schedule's one host sync per step
                if step > 0 and not any(row_masked):
                    break  # the block is done early
                used = [u + int(m) for u, m in zip(used, row_masked)]
            if pending:  # fused: write block b-1 and denoise block b in one forward
                logits = run(seq, s - L, 2 * L, logits_from=L)
                run.cache.commit(L)
                pending = False
            else:
                logits = run(seq, s, L, logits_from=0)
            forwards += 1
            x0, conf, ent = sample_tokens(logits, sampling, forbid_token=mask_id, generator=generator,
                                          want_entropy=schedule == "entropy")
            count = torch.minimum(static_counts(n_masked, steps, step), masked.sum(-1))
            if schedule == "static":
                chosen = select_static(conf, masked, count)
            elif schedule == "dynamic":
                chosen = select_dynamic(conf, masked, count, threshold)
            elif schedule == "sequential":
                chosen = select_sequential(masked, count)
            else:
                chosen = select_entropy(ent, masked, count, entropy_bound)
            seq[:, s: s + L] = torch.where(chosen, x0, seq[:, s: s + L])
            if tracing:
                _emit_steps(emit, b, step, s, seq, masked, chosen, conf, x0, fixed, pad, mask_id, finished, stop_ids)
            if not adaptive and step + 1 >= static_steps:
                break
        if not adaptive:
            used = [0 if finished[r] else min(steps, host_masked[r]) for r in range(B)]
        # The block is final. Deferred stop check (Appendix B.2): one host read per block, and none at all
        # without stop tokens (then only max_new_tokens ends a row, which the host knows).
        block_tokens = seq[:, s: s + L].tolist() if stop_ids else None
        for r in range(B):
            if finished[r]:
                continue
            steps_per_block[r].append(used[r])
            first_new = max(pad[r] + prompt_len[r], s)
            n_before = first_new - pad[r] - prompt_len[r]
            n_new, hit = s + L - first_new, False
            if block_tokens is not None:
                kept, hit = _cut_at_stop(block_tokens[r][first_new - s:], stop_ids, max_new_tokens - n_before)
                n_new = len(kept)
            if hit or n_before + n_new >= max_new_tokens:
                finished[r] = True
        if fuse:
            pending = True
        else:  # the paper's engine: one extra forward to write the finished block into the cache
            run(seq, s, L, logits_from=L)
            run.cache.commit(L)
            forwards += 1
    synchronize(device)
    seconds = time.perf_counter() - t0
    return _finish(seq.tolist(), rows, pad, max_new_tokens, stop_ids, pad_id,
                   Stats(strategy=schedule, block_length=L, steps=steps, batch_size=B,
                         prompt_tokens=sum(prompt_len), new_tokens=0, forwards=forwards,
                         prefill_forwards=prefill_forwards, seconds=seconds, prefill_seconds=prefill_seconds,
                         steps_per_block=steps_per_block))


def _emit_steps(emit, b, step, s, seq, masked, chosen, conf, x0, fixed, pad, mask_id, finished, stop_ids) -> None:
    """One StepEvent per row that was still denoising this block (host copies only when tracing)."""
    L = masked.shape[1]
    state = seq[:, s: s + L].tolist()
    masked_l, chosen_l, conf_l, x0_l = masked.tolist(), chosen.tolist(), conf.tolist(), x0.tolist()
    fixed_l = fixed[:, s: s + L].tolist()
    for r in range(len(state)):
        if finished[r] or not any(masked_l[r]):
            continue
        committed = [i for i in range(L) if chosen_l[r][i]]
        new_tokens = [state[r][i] for i in range(L) if not fixed_l[r][i]]
        final = mask_id not in new_tokens
        emit(StepEvent(
            row=r, block=b, step=step, block_start=s - pad[r], block_state=state[r], committed=committed,
            committed_confidence=[conf_l[r][i] for i in committed],
            masked_confidence={i: conf_l[r][i] for i in range(L) if masked_l[r][i]},
            candidates={i: x0_l[r][i] for i in range(L) if masked_l[r][i]},
            prompt_positions=[i for i in range(L) if fixed_l[r][i]],
            final=final,
            stopped=final and any(t in stop_ids for t in new_tokens),
        ))


def _finish(seq_rows, rows, pad, max_new_tokens, stop_ids, pad_id, stats: Stats) -> Generation:
    """Cut every row after its first stop token and at max_new_tokens; fill in the token counts."""
    out, lengths = [], []
    for r, ids in enumerate(rows):
        begin = pad[r] + len(ids)
        kept, _ = _cut_at_stop(seq_rows[r][begin:], stop_ids, max_new_tokens)
        out.append(kept)
        lengths.append(len(kept))
    width = max(lengths) if lengths else 0
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for r, kept in enumerate(out):
        tokens[r, : len(kept)] = torch.tensor(kept, dtype=torch.long)
    stats.new_tokens = sum(lengths)
    stats.new_tokens_per_row = lengths
    return Generation(tokens=tokens, lengths=lengths, stats=stats)


def _generate_next_token(model, rows, *, max_new_tokens, sampling, stop_ids, generator, emit, pad_id, mode,
                         compile) -> Generation:
    """Plain AR decoding for an AR model: one token per forward, next-token prediction, causal attention.

    The prefill writes prompt[:-1]; the decode loop starts from the last prompt token, so that every
    new token costs exactly one forward (TPF 1), the count SDAR's TPF is compared with.
    """
    device, B = model.device, len(rows)
    t0 = time.perf_counter()
    longest = max(len(r) for r in rows)
    pad = [longest - len(r) for r in rows]
    total = longest + max_new_tokens
    seq = torch.full((B, total), pad_id, dtype=torch.long)
    for r, ids in enumerate(rows):
        seq[r, pad[r]: longest] = torch.tensor(ids)
    seq = seq.to(device)
    run = ChunkRunner.get(model, B, total, 1, mode, compile)
    run.set_padding(pad)

    prefill_forwards = 0
    if longest > 1:
        run(seq, 0, longest - 1, logits_from=longest - 1)
        prefill_forwards = 1
    synchronize(device)
    prefill_seconds = time.perf_counter() - t0
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    stop_t = torch.tensor(stop_ids, device=device, dtype=torch.long)
    forwards = 0
    for i in range(max_new_tokens):
        pos = longest - 1 + i
        logits = run(seq, pos, 1, logits_from=0)  # [B, 1, V]
        forwards += 1
        x0, conf, _ = sample_tokens(logits, sampling, forbid_token=model.config.mask_token_id, generator=generator)
        seq[:, pos + 1] = torch.where(finished, pad_id, x0[:, 0])
        if emit is not None:
            fin, toks, confs = finished.tolist(), x0[:, 0].tolist(), conf[:, 0].tolist()
            for r in range(B):
                if fin[r]:
                    continue
                tok, c = toks[r], confs[r]
                emit(StepEvent(row=r, block=i, step=0, block_start=pos + 1 - pad[r], block_state=[tok],
                               committed=[0], committed_confidence=[c], masked_confidence={0: c},
                               candidates={0: tok}, prompt_positions=[], final=True, stopped=tok in stop_ids))
        if stop_ids:
            finished |= torch.isin(x0[:, 0], stop_t)
            # On a GPU the check costs a host sync, so it runs every 8 tokens (a few spare forwards at most);
            # on the CPU it is free and runs every token.
            if (device.type == "cpu" or (i + 1) % 8 == 0) and bool(finished.all()):
                break
    synchronize(device)
    seconds = time.perf_counter() - t0
    stats = Stats(strategy="ar", block_length=1, steps=1, batch_size=B, prompt_tokens=sum(map(len, rows)),
                  new_tokens=0, forwards=forwards, prefill_forwards=prefill_forwards, seconds=seconds,
                  prefill_seconds=prefill_seconds)
    seq_rows = seq.tolist()
    gen = _finish(seq_rows, rows, pad, max_new_tokens, stop_ids, pad_id, stats)
    stats.steps_per_block = [[1] * n for n in gen.lengths]
    return gen
