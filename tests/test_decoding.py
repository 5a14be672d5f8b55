"""The block-diffusion decoder against an independent brute-force decoder, and its schedule properties."""

from __future__ import annotations

import gc
import math

import pytest
import torch

from sdar_core import GenerationError, generate
from sdar_core.attention import AttentionInputs
from sdar_core.decoding import DecodeParams
from sdar_core.kernels import Kernels
from sdar_core.runner import RUNNER_POOL

from helpers import hand_block_causal, random_model, tiny_config

MASK = 95  # tiny_config's mask id (vocab 96)


# --- an independent decoder: no cache, the whole sequence recomputed with a hand-built mask -----------


def hand_mask(n: int, block: int) -> torch.Tensor:
    """[1, 1, n, n]: query i sees key j iff j's block <= i's block (written with loops on purpose)."""
    return hand_block_causal(n, block)[None, None]


def brute_force(
    model, prompt: list[int], max_new: int, L: int, T: int, strategy: str, threshold=0.9, entropy_bound=1.0
) -> list[int]:
    P = len(prompt)
    total = math.ceil((P + max_new) / L) * L
    x = prompt + [MASK] * (total - P)
    for b in range(P // L, total // L):
        lo, hi = b * L, (b + 1) * L
        for step in range(T):
            masked = [i for i in range(lo, hi) if i >= P and x[i] == MASK]
            if not masked:
                break
            with torch.no_grad():
                logits = model(torch.tensor([x[:hi]]), attn=AttentionInputs(mask=hand_mask(hi, L)))[
                    0
                ].double()
            logits[:, MASK] = float("-inf")
            probs = logits.softmax(-1)
            # the authors' counts: from the block length, whatever the prompt already fills
            count = min(L // T + (1 if step < L % T else 0), len(masked))
            conf = {i: probs[i].max().item() for i in masked}
            token = {i: int(probs[i].argmax()) for i in masked}
            by_conf = sorted(masked, key=lambda i: (-conf[i], i))
            if strategy == "static":
                chosen = by_conf[:count]
            elif strategy == "dynamic":
                chosen = sorted(set(by_conf[:count]) | {i for i in masked if conf[i] > threshold})
            elif strategy == "sequential":
                chosen = masked[:count]
            elif strategy == "entropy":
                ent = {i: float(-(probs[i] * probs[i].clamp_min(1e-30).log()).sum()) for i in masked}
                by_ent = sorted(masked, key=lambda i: (ent[i], i))
                n, acc = 0, 0.0
                for i in by_ent:
                    acc += ent[i]
                    if acc > entropy_bound:
                        break
                    n += 1
                chosen = by_ent[: max(n, count, 1)]
            for i in chosen:
                x[i] = token[i]
    return x[P : P + max_new]


@pytest.fixture(scope="module")
def sdar():
    return random_model(tiny_config("sdar", block_size=4, layers=2))


@pytest.mark.parametrize("strategy", ["static", "dynamic", "sequential", "entropy"])
@pytest.mark.parametrize("L,T", [(1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (8, 3), (8, 8)])
@pytest.mark.parametrize("prompt_len", [4, 7])
def test_greedy_equals_brute_force_decoder(sdar, strategy, L, T, prompt_len):
    torch.manual_seed(prompt_len)
    prompt = torch.randint(0, 90, (prompt_len,)).tolist()
    gen = generate(
        sdar,
        [prompt],
        max_new_tokens=13,
        block_length=L,
        steps=T,
        strategy=strategy,
        threshold=0.5,
        entropy_bound=1.5,
    )
    expected = brute_force(sdar, prompt, 13, L, T, strategy, threshold=0.5, entropy_bound=1.5)
    assert gen.row_tokens(0) == expected


def test_fused_cache_write_saves_one_forward_per_block_with_identical_tokens(sdar):
    prompt = [[5, 17, 33, 2, 9, 60]]
    fused = generate(sdar, prompt, max_new_tokens=16, block_length=4, steps=4, strategy="static")
    unfused = generate(
        sdar, prompt, max_new_tokens=16, block_length=4, steps=4, strategy="static", fuse_cache_write=False
    )
    assert fused.tokens.tolist() == unfused.tokens.tolist()
    n_blocks = len(fused.stats.steps_per_block[0])
    assert n_blocks == math.ceil((6 + 16) / 4) - 6 // 4
    assert unfused.stats.forwards == fused.stats.forwards + n_blocks
    assert fused.stats.forwards == sum(fused.stats.steps_per_block[0])


def test_static_commits_exactly_the_static_count_per_step(sdar):
    gen = generate(
        sdar,
        [[3, 4, 5, 6, 7, 8, 9, 10]],
        max_new_tokens=24,
        block_length=8,
        steps=3,
        strategy="static",
        trace=True,
    )
    for e in gen.trace:
        assert len(e.committed) == [3, 3, 2][e.step]  # ceil(8/3), the remainder spread over the first steps
    assert all(s == [3] * len(s) for s in gen.stats.steps_per_block)


@pytest.mark.parametrize("L,T", [(4, 2), (4, 3), (8, 4), (8, 3)])
@pytest.mark.parametrize("prompt_len", [8, 9, 10, 13])
def test_partial_first_block_uses_block_length_counts(sdar, L, T, prompt_len):
    """Step s commits floor(L/T) (+1 for s < L mod T) of what is still masked, and the block ends once
    nothing is masked: a prompt ending inside a block makes its first block shorter, not its counts smaller."""
    prompt = list(range(3, 3 + prompt_len))
    gen = generate(
        sdar, [prompt], max_new_tokens=2 * L, block_length=L, steps=T, strategy="static", trace=True
    )
    counts = [L // T + (1 if s < L % T else 0) for s in range(T)]  # the same list for every block
    for b in range(len(gen.stats.steps_per_block[0])):
        masked = L - (prompt_len % L if b == 0 else 0)
        expected, left = [], masked
        for c in counts:
            if left == 0:
                break
            expected.append(min(c, left))
            left -= expected[-1]
        events = [e for e in gen.trace if e.block == b]
        assert [len(e.committed) for e in events] == expected, (b, masked)
        assert gen.stats.steps_per_block[0][b] == len(expected)
    assert gen.stats.forwards == sum(gen.stats.steps_per_block[0])
    assert gen.row_tokens(0) == brute_force(sdar, prompt, 2 * L, L, T, "static")


def test_partial_first_block_costs_fewer_forwards():
    """Block 8, 4 steps, a prompt ending 2 tokens into a block: 6 masked positions take 2, 2, 2 (3 forwards)."""
    model = random_model(tiny_config("sdar", block_size=8, layers=1))
    gen = generate(
        model,
        [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]],
        max_new_tokens=6,
        block_length=8,
        steps=4,
        strategy="static",
        trace=True,
    )
    assert [len(e.committed) for e in gen.trace] == [2, 2, 2]
    assert gen.stats.steps_per_block == [[3]] and gen.stats.forwards == 3


def test_a_final_token_is_never_changed_after_a_dynamic_step_went_past_the_static_count(sdar):
    """The authors' loop takes its top-k over all positions, so once a confident step has left fewer masked
    positions than the static count, its top-k also picks final positions and overwrites them. Ours commits
    only masked positions: every prompt or committed token stays as it was."""
    L, T = 8, 4
    torch.manual_seed(5)
    prompt = torch.randint(0, 90, (10,)).tolist()  # 2 prompt tokens in the first block in flight
    gen = generate(
        sdar,
        [prompt],
        max_new_tokens=30,
        block_length=L,
        steps=T,
        strategy="dynamic",
        threshold=0.3,
        trace=True,
    )
    short = 0  # steps that found fewer masked positions than the static count
    for b in range(len(gen.stats.steps_per_block[0])):
        events = [e for e in gen.trace if e.block == b]
        state = list(events[0].block_state)
        for i in events[0].committed:
            state[i] = MASK
        for e in events:
            short += len(e.masked_confidence) < L // T
            assert set(e.masked_confidence) == {i for i, t in enumerate(state) if t == MASK}
            final = [i for i in range(L) if i not in e.masked_confidence]
            assert [e.block_state[i] for i in final] == [state[i] for i in final]  # untouched
            assert set(e.committed) <= set(e.masked_confidence)
            state = list(e.block_state)
    assert short > 0  # the situation arose
    assert gen.row_tokens(0) == brute_force(sdar, prompt, 30, L, T, "dynamic", threshold=0.3)


def test_dynamic_never_commits_below_threshold_except_minimum(sdar):
    thr = 0.6
    gen = generate(
        sdar,
        [[3, 4, 5, 6]],
        max_new_tokens=32,
        block_length=8,
        steps=4,
        strategy="dynamic",
        threshold=thr,
        trace=True,
    )
    seen_parallel = False
    for e in gen.trace:
        minimum = 8 // 4
        above = [o for o, c in e.masked_confidence.items() if c > thr]
        assert set(above) <= set(e.committed)  # every confident position is taken
        below = [c for c in e.committed_confidence if c <= thr]
        if below:
            assert len(e.committed) == min(minimum, len(e.masked_confidence))
        seen_parallel |= len(e.committed) > minimum
    assert seen_parallel  # the threshold let some step commit more than the static count
    assert gen.stats.forwards <= 4 * len(gen.stats.steps_per_block[0])


def test_mask_token_never_appears_in_the_output(sdar):
    for strategy in ["static", "dynamic", "entropy", "ar"]:
        gen = generate(
            sdar,
            [[MASK, 3, MASK]],
            max_new_tokens=20,
            block_length=4,
            steps=2,
            strategy=strategy,
            temperature=1.5,
            seed=1,
        )
        assert MASK not in gen.tokens.tolist()[0]


def test_stop_token_ends_the_row_mid_block_and_is_counted_last(sdar):
    prompt = [[11, 12, 13, 14, 15]]
    free = generate(sdar, prompt, max_new_tokens=24, block_length=4, steps=4, strategy="static").row_tokens(0)
    # a token whose first occurrence is not the last position of its block
    stop = next(t for i, t in enumerate(free) if (5 + i) % 4 != 3 and t not in free[:i])
    cut = free.index(stop) + 1
    gen = generate(
        sdar,
        prompt,
        max_new_tokens=24,
        block_length=4,
        steps=4,
        strategy="static",
        stop_token_ids=[stop],
        trace=True,
    )
    assert gen.row_tokens(0) == free[:cut]
    assert gen.stats.new_tokens == cut
    assert gen.trace[-1].stopped and gen.trace[-1].final
    assert len(gen.stats.steps_per_block[0]) == math.ceil((5 + cut) / 4) - 1  # no block after the stop


def test_batch_rows_equal_single_row_runs(sdar):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]]
    for strategy, stop in [("dynamic", None), ("static", [17]), ("sequential", None), ("ar", None)]:
        kw = dict(
            max_new_tokens=12, block_length=4, steps=2, strategy=strategy, threshold=0.5, stop_token_ids=stop
        )
        batch = generate(sdar, prompts, **kw)
        for r, p in enumerate(prompts):
            alone = generate(sdar, [p], **kw)
            assert batch.row_tokens(r) == alone.row_tokens(0), (strategy, r)


def test_seeded_sampling_is_reproducible(sdar):
    kw = dict(
        max_new_tokens=16, block_length=4, steps=4, strategy="dynamic", temperature=1.0, top_p=0.9, top_k=20
    )
    a = generate(sdar, [[1, 2, 3]], seed=7, **kw).tokens.tolist()
    b = generate(sdar, [[1, 2, 3]], seed=7, **kw).tokens.tolist()
    c = generate(sdar, [[1, 2, 3]], seed=8, **kw).tokens.tolist()
    assert a == b and a != c


def test_trace_events_reach_on_step_as_they_happen_and_replay_the_block(sdar):
    seen = []
    gen = generate(
        sdar,
        [[1, 2, 3, 4, 5]],
        max_new_tokens=8,
        block_length=4,
        steps=2,
        strategy="static",
        trace=True,
        on_step=seen.append,
    )
    assert seen == gen.trace
    first = gen.trace[0]
    assert first.prompt_positions == [0]  # position 4 of the prompt sits in the first block in flight
    assert first.block_start == 4
    assert sum(MASK == t for t in first.block_state) == 3 - len(first.committed)
    assert gen.trace_json().startswith("{") and "confidence" in gen.trace_csv().splitlines()[0]


def test_no_trace_means_no_events(sdar):
    assert generate(sdar, [[1, 2]], max_new_tokens=4, block_length=4, steps=4).trace is None


def test_tpf_counts_tokens_per_decoding_forward(sdar):
    gen = generate(sdar, [[1, 2, 3, 4]], max_new_tokens=16, block_length=4, steps=2, strategy="static")
    assert gen.stats.forwards == 8 and gen.stats.prefill_forwards == 1
    assert gen.stats.tpf == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_length=0), "block_length"),
        (dict(block_length=4, steps=5), "steps"),
        (dict(block_length=4, steps=0), "steps"),
        (dict(strategy="dynamic", threshold=0.0), "threshold"),
        (dict(strategy="dynamic", threshold=1.5), "threshold"),
        (dict(max_new_tokens=10_000), "context"),
        (dict(strategy="beam"), "strategy"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(block_length=4.0), "block_length"),
        (dict(block_length=True), "block_length"),
        (dict(steps=2.5), "steps"),
        (dict(max_new_tokens=8.0), "max_new_tokens"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(top_k=3.0), "top_k"),
        (dict(top_k=-1), "top_k"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature="1"), "temperature"),
        (dict(seed=2**70), "seed"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(strategy="dynamic", threshold=float("nan")), "threshold"),
        (dict(strategy="entropy", entropy_bound=0.0), "entropy_bound"),
        (dict(stop_token_ids=[96]), "stop_token_ids"),
        (dict(stop_token_ids=[-1]), "stop_token_ids"),
        (dict(stop_token_ids=5), "stop_token_ids"),
        (dict(runner_mode="bogus"), "runner_mode"),
        (dict(trace="yes"), "trace"),
        (dict(blocklength=4), "unknown generate option"),
    ],
)
def test_bad_arguments_give_clear_errors(sdar, kwargs, match):
    args = dict(max_new_tokens=8, block_length=4, steps=4)
    args.update(kwargs)
    with pytest.raises(GenerationError, match=match):
        generate(sdar, [[1, 2, 3]], **args)


@pytest.mark.parametrize(
    "ids,match",
    [
        (torch.tensor([[1.0, 2.0, 3.0]]), "dtype"),
        (torch.tensor([[True, False]]), "dtype"),
        ([[1, 2.0, 3]], "2.0"),
        ([[1, 2, 96]], "96"),  # vocab 96: the largest id is 95
        ([[1, -2, 3]], "-2"),
        (torch.tensor([[1, 2], [3, 96]]), "row 1 holds 96"),
        ("hello", "input_ids"),
    ],
)
def test_bad_token_ids_are_rejected_by_name(sdar, ids, match):
    with pytest.raises(GenerationError, match=match):
        generate(sdar, ids, max_new_tokens=4, block_length=4, steps=4)


def test_a_decode_params_object_and_keywords_give_the_same_generation(sdar):
    params = DecodeParams(max_new_tokens=10, block_length=4, steps=2, strategy="static", stop_token_ids=[7])
    by_object = generate(sdar, [[1, 2, 3]], params)
    by_keywords = generate(
        sdar, [[1, 2, 3]], max_new_tokens=10, block_length=4, steps=2, strategy="static", stop_token_ids=[7]
    )
    assert by_object.tokens.tolist() == by_keywords.tokens.tolist()
    assert by_object.stats.forwards == by_keywords.stats.forwards
    overridden = generate(sdar, [[1, 2, 3]], params, max_new_tokens=3)  # keywords apply on top
    assert overridden.row_tokens(0) == by_object.row_tokens(0)[:3]
    assert params.max_new_tokens == 10  # the caller's object is not changed


def test_static_runners_are_pooled_per_model_and_dropped_with_it():
    model = random_model(tiny_config("sdar", block_size=4, layers=1))
    before = len(RUNNER_POOL._pools)
    generate(model, [[1, 2, 3]], max_new_tokens=4, runner_mode="static")
    first = next(iter(RUNNER_POOL._pools[model.model].values()))
    generate(model, [[4, 5, 6]], max_new_tokens=4, runner_mode="static")
    assert list(RUNNER_POOL._pools[model.model].values()) == [first]  # the same shape reuses its runner
    del model, first
    gc.collect()
    assert len(RUNNER_POOL._pools) == before


def test_a_full_runner_pool_drops_the_least_recently_used_runner(monkeypatch):
    """A server that warmed its shapes at start and then served other batch sizes keeps the shapes it still uses."""
    from sdar_core import runner

    monkeypatch.setattr(runner, "_POOL_SIZE", 2)
    model = random_model(tiny_config("sdar", block_size=4, layers=1))

    def decode(rows: int) -> None:
        generate(model, [[1, 2, 3]] * rows, max_new_tokens=4, runner_mode="static")

    def batches() -> list[int]:
        return [r.batch for r in RUNNER_POOL._pools[model.model].values()]

    decode(1)
    decode(2)
    first = RUNNER_POOL._pools[model.model]
    kept = next(iter(first.values()))
    decode(1)  # used again: now the most recent
    decode(3)  # a third shape: the batch-2 runner, the least recently used, goes
    assert batches() == [1, 3] and next(iter(first.values())) is kept


def test_empty_prompt_is_rejected(sdar):
    with pytest.raises(GenerationError, match="empty"):
        generate(sdar, [[]], max_new_tokens=4)


def test_block_diffusion_on_an_ar_model_is_refused():
    ar = random_model(tiny_config("qwen3"))
    with pytest.raises(GenerationError, match="autoregressive"):
        generate(ar, [[1, 2]], max_new_tokens=4, strategy="static")


def test_ar_mode_equals_transformers_greedy_generate(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sdar_core import load_pretrained

    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=96,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=256,
        )
    ).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.3)
    hf.save_pretrained(tmp_path)
    ours, _ = load_pretrained(tmp_path, device="cpu", with_tokenizer=False)
    prompts = [[5, 6, 7, 8, 9], [40, 41]]
    for prompt in prompts:
        ids = torch.tensor([prompt])
        expected = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=20,
            min_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        gen = generate(ours, ids, max_new_tokens=20, strategy="ar")
        assert gen.row_tokens(0) == expected
        assert gen.stats.forwards == 20 and gen.stats.tpf == 1.0
    batch = generate(ours, prompts, max_new_tokens=20, strategy="ar")
    for r, prompt in enumerate(prompts):
        assert batch.row_tokens(r) == generate(ours, [prompt], max_new_tokens=20, strategy="ar").row_tokens(0)


@pytest.mark.parametrize("strategy", ["static", "dynamic", "ar"])
def test_static_shape_runner_gives_the_plain_path_tokens(sdar, strategy):
    """The CUDA-graph path reads the whole cache buffer under a mask; on CPU its 'static' mode is the same
    computation without the graph, and must decode exactly what the plain path decodes."""
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    kw = dict(max_new_tokens=12, block_length=4, steps=2, strategy=strategy, threshold=0.5)
    plain = generate(sdar, prompts, runner_mode="plain", **kw)
    static = generate(sdar, prompts, runner_mode="static", **kw)
    assert static.tokens.tolist() == plain.tokens.tolist()
    again = generate(sdar, prompts, runner_mode="static", **kw)  # pooled runner, stale cache contents
    assert again.tokens.tolist() == plain.tokens.tolist()


@pytest.mark.parametrize("strategy", ["static", "ar"])
def test_a_short_prefill_runs_padded_to_256_never_static_at_its_own_length(sdar, strategy, monkeypatch):
    """A prompt of one or two whole blocks is no longer than a decode chunk, but it is a prefill: it must not get a
    static forward of its own length (on a GPU, a graph captured per prompt length on its first request). With
    Kernels.graphed_prefill it runs the plain path's forward padded to PREFILL_PADDED tokens (one graph per runner on
    a GPU), and the answer is the plain runner's."""
    from sdar_core import runner

    static_lengths, plain_lengths = [], []
    real_static, real_plain = runner.ChunkRunner.static_forward, runner.ChunkRunner._plain

    def spy_static(self, inputs, logits_from=0, forward_fn=None):
        static_lengths.append(inputs.ids.shape[1])
        return real_static(self, inputs, logits_from, forward_fn)

    def spy_plain(self, ids, positions, start, logits_from):
        plain_lengths.append(ids.shape[1])
        return real_plain(self, ids, positions, start, logits_from)

    monkeypatch.setattr(runner.ChunkRunner, "static_forward", spy_static)
    monkeypatch.setattr(runner.ChunkRunner, "_plain", spy_plain)
    kw = dict(max_new_tokens=8, block_length=4, steps=2, strategy=strategy)
    # two whole blocks and one token, then one whole block; for AR (blocks of one token) prefills of 2 and 6 tokens
    for prompt in (
        [list(range(1, 10)), list(range(1, 6))] if strategy != "ar" else [[1, 2, 3], [1, 2, 3, 4, 5, 6, 7]]
    ):
        static_lengths.clear()
        static = generate(sdar, [prompt], runner_mode="static", kernels=Kernels(graphed_prefill=True), **kw)
        assert plain_lengths == [runner.PREFILL_PADDED]  # the prefill, padded
        plain_lengths.clear()
        assert static.tokens.tolist() == generate(sdar, [prompt], runner_mode="plain", **kw).tokens.tolist()
        plain_lengths.clear()
        # one static forward per decoding forward (NFE); the prefill's forward is not among them
        assert static.stats.prefill_forwards == 1 and len(static_lengths) == static.stats.forwards


def test_without_graphed_prefill_a_short_prefill_runs_at_its_own_length(sdar, monkeypatch):
    """Kernels(graphed_prefill=False): the prefill takes the plain path at the prompt's whole blocks; with the
    default (True) a static runner's is padded to PREFILL_PADDED."""
    from sdar_core import runner

    lengths, real = [], runner.ChunkRunner._plain
    monkeypatch.setattr(
        runner.ChunkRunner,
        "_plain",
        lambda self, ids, *a: lengths.append(ids.shape[1]) or real(self, ids, *a),
    )
    kw = dict(max_new_tokens=8, block_length=4, steps=2, runner_mode="static")
    generate(sdar, [list(range(1, 10))], kernels=Kernels(graphed_prefill=False), **kw)
    generate(sdar, [list(range(1, 10))], **kw)
    assert lengths == [8, runner.PREFILL_PADDED]


@pytest.mark.parametrize("strategy", ["static", "ar"])
def test_padded_prefills_short_and_long_alone_and_left_padded_equal_the_plain_path(strategy):
    """With Kernels.graphed_prefill, prompts whose prefills are padded to 256 tokens (alone, and in a batch with left
    padding) and longer ones (the plain path): the static runner's answers are the plain runner's."""
    model = random_model(tiny_config("sdar", block_size=4, max_position_embeddings=1024))
    kw = dict(max_new_tokens=6, block_length=4, steps=2, strategy=strategy)
    g = torch.Generator().manual_seed(1)
    for lengths in ([13], [40], [100, 61], [256], [300]):
        prompts = [torch.randint(2, 95, (n,), generator=g).tolist() for n in lengths]
        plain = generate(model, prompts, runner_mode="plain", **kw)
        static = generate(model, prompts, runner_mode="static", kernels=Kernels(graphed_prefill=True), **kw)
        assert static.tokens.tolist() == plain.tokens.tolist()


def test_warm_prefill_outside_inference_mode_updates_the_buffers_a_decode_made_inside_it(monkeypatch):
    """The warm-up calls warm_prefill after its decode, outside inference mode, on a runner whose buffers that decode
    made in inference mode (generate runs in it): on an H200 setting the padding there raised ("Inplace update to
    inference tensor outside InferenceMode"). A static runner made graph-shaped here (its padded forward recorded,
    not captured: no CUDA) takes the same steps on the CPU: both padding states, then the runner's own padding back."""
    model = random_model(tiny_config("sdar", block_size=4, max_position_embeddings=1024))
    prompts = [[5, 6, 7, 8, 9], [3, 4]]
    generate(model, prompts, max_new_tokens=4, block_length=4, steps=2, runner_mode="static")
    (runner,) = [r for r in RUNNER_POOL.runners(model) if r.batch == 2]
    assert runner.pad.is_inference() and not torch.is_inference_mode_enabled()
    before = runner.pad.tolist()
    seen = []
    monkeypatch.setattr(runner, "mode", "graph")
    monkeypatch.setattr(runner, "padded_prefill", lambda ids: seen.append((ids.shape, runner.pad.tolist())))
    assert runner.warm_prefill(filler_id=1)
    assert seen == [((2, 4), [0, 0]), ((2, 4), [1, 0])]
    assert runner.pad.tolist() == before


def test_static_shape_runner_for_an_ar_model():
    ar = random_model(tiny_config("qwen3"))
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    plain = generate(ar, prompts, max_new_tokens=10, strategy="ar", runner_mode="plain")
    static = generate(ar, prompts, max_new_tokens=10, strategy="ar", runner_mode="static")
    assert static.tokens.tolist() == plain.tokens.tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("strategy", ["static", "dynamic", "ar"])
@pytest.mark.parametrize("model_type", ["sdar", "qwen3"])
def test_cuda_graph_path_equals_plain_path(strategy, model_type):
    """Tokens and the step trace (recorded on the device, read once per block / every 8 AR tokens) equal the plain
    path's and the CPU's, stop tokens included."""
    if model_type == "qwen3" and strategy != "ar":
        pytest.skip("an AR model decodes with the ar strategy only")
    cpu = random_model(tiny_config(model_type, block_size=4, layers=2))
    model = random_model(tiny_config(model_type, block_size=4, layers=2)).cuda()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    kw = dict(max_new_tokens=24, block_length=4, steps=2, strategy=strategy, threshold=0.5, trace=True)
    stop = generate(cpu, prompts, **kw).row_tokens(0)[5]
    kw["stop_token_ids"] = [stop]
    ref = generate(cpu, prompts, **kw)
    plain = generate(model, prompts, runner_mode="plain", **kw)
    graph = generate(model, prompts, runner_mode="graph", **kw)
    assert graph.tokens.tolist() == plain.tokens.tolist() == ref.tokens.tolist()

    def shape(gen):
        return [
            (e.row, e.block, e.step, e.block_start, e.block_state, e.committed, e.final, e.stopped)
            for e in gen.trace
        ]

    assert shape(graph) == shape(plain) == shape(ref)
    conf = lambda gen: [c for e in gen.trace for c in e.masked_confidence.values()]  # noqa: E731
    assert conf(graph) == pytest.approx(conf(ref), abs=1e-2)  # CUDA float32 kernels vs the CPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_short_prefills_replay_one_graph_per_runner_and_equal_the_plain_path():
    """Kernels.graphed_prefill: prompts of 20, 28 and 100 tokens alone, two left-padded ones, and 300 tokens (op by
    op), in graph mode: one prefill graph per runner and padding state, no graph of a prompt's own length, and the
    plain path's answers. The warm-up captures the graph a short prompt replays (warm_prefill)."""
    from sdar_core.runner import PREFILL_PADDED, RUNNER_POOL

    model = random_model(tiny_config("sdar", block_size=4, layers=2)).cuda()
    kw = dict(max_new_tokens=8, block_length=4, steps=2, kernels=Kernels(graphed_prefill=True))
    g = torch.Generator().manual_seed(2)
    for rows in ([20], [28], [100], [300], [30, 17]):
        prompts = [torch.randint(2, 95, (n,), generator=g).tolist() for n in rows]
        graph = generate(model, prompts, runner_mode="graph", **kw)
        assert graph.tokens.tolist() == generate(model, prompts, runner_mode="plain", **kw).tokens.tolist()
    runners = RUNNER_POOL.runners(model)
    alone = [r for r in runners if r.batch == 1 and r.total == 512]  # 300 + 8 positions
    assert [sorted(r.prefill_graphs) for r in runners if r.batch == 1 and r.total == 256] == [[False]]
    assert [sorted(r.prefill_graphs) for r in runners if r.batch == 2] == [[True]]
    assert len(alone) == 1 and not alone[0].prefill_graphs  # 300 tokens: longer than a padded prefill
    assert all(key[0] <= 2 * 4 for r in runners for key in r.graphs), [list(r.graphs) for r in runners]
    assert alone[0].warm_prefill(filler_id=1) and sorted(alone[0].prefill_graphs) == [False]
    assert PREFILL_PADDED == 256


def test_a_prepared_chunk_gives_the_logits_of_the_tokens_it_holds_at_each_call(sdar):
    """runner.prepare builds a chunk's inputs once for a block's steps, whose tokens change in place between them:
    each call must equal a fresh forward of the tokens held then (static mode: the computation a graph replays)."""
    from sdar_core.runner import ChunkRunner

    prompt = torch.arange(1, 9)[None]
    mask = sdar.config.mask_token_id
    runners = [ChunkRunner(sdar, 1, 64, 4, mode) for mode in ("static", "static", "plain")]
    for runner in runners:
        runner.forward(prompt, 0, 8, prefill=True)
        runner.cache.commit(8)
    block = torch.full((1, 4), mask)
    step = runners[0].prepare(block, 8, 0)
    first = step().clone()
    block[0, :2] = torch.tensor([11, 12])
    second = step()
    assert not torch.equal(first, second)
    assert torch.equal(second, runners[1].forward(block.clone(), 8, 0))
    torch.testing.assert_close(second, runners[2].forward(block.clone(), 8, 0), rtol=0, atol=1e-5)


def spy_steps(monkeypatch, name: str, entry) -> list:
    """A list that gets entry(state) at every call of sdar_core.decoding's step function `name` (denoise_step,
    next_token_step), which still runs."""
    from sdar_core import decoding

    log, real = [], getattr(decoding, name)

    def step(state, *a, **k):
        log.append(entry(state))
        return real(state, *a, **k)

    monkeypatch.setattr(decoding, name, step)
    return log


def test_a_blocks_events_are_sent_once_the_next_blocks_first_step_is_launched(sdar, monkeypatch):
    """The Python of a block's StepEvents (and the on_step callback's) runs while the device computes the next
    block's first step, not between the two blocks; the last block's events still come before generate returns."""
    log = spy_steps(monkeypatch, "denoise_step", lambda state: ("step", int(state.step)))
    three_blocks = dict(
        max_new_tokens=12, block_length=4, steps=2, strategy="static"
    )  # after a 4-token prompt
    gen = generate(sdar, [[1, 2, 3, 4]], on_step=lambda e: log.append(("event", e.block)), **three_blocks)
    assert gen.stats.forwards == 6  # 3 blocks of 2 steps
    blocks = [[i for i, (what, _) in enumerate(log) if what == "event" and log[i][1] == b] for b in range(3)]
    starts = [i for i, (what, k) in enumerate(log) if what == "step" and k == 0]  # each block's first step
    assert len(starts) == 3 and all(len(b) == 2 for b in blocks)
    for b in range(2):  # block b's events between block b+1's first step and its second
        assert starts[b + 1] < min(blocks[b]) and max(blocks[b]) < starts[b + 1] + len(blocks[b]) + 1
    assert min(blocks[2]) > max(i for i, (what, _) in enumerate(log) if what == "step")


def test_an_ar_tokens_event_is_sent_once_the_next_tokens_step_is_launched(monkeypatch):
    ar = random_model(tiny_config("qwen3"))
    log = spy_steps(monkeypatch, "next_token_step", lambda state: ("step", int(state.count)))
    gen = generate(
        ar, [[1, 2, 3]], max_new_tokens=5, strategy="ar", on_step=lambda e: log.append(("event", e.block))
    )
    assert gen.stats.forwards == 5
    # on the CPU every token is read at once; its event goes out after the next token's step (the last at the end)
    assert log == [("step", 0)] + [x for i in range(1, 5) for x in (("step", i), ("event", i - 1))] + [
        ("event", 4)
    ]


def test_captured_work_runs_eagerly_at_every_call_outside_graph_mode(sdar):
    from sdar_core.runner import ChunkRunner

    runner, calls = ChunkRunner(sdar, 1, 64, 4, "static"), []
    for _ in range(3):
        runner.run_captured(("work",), lambda: calls.append(1))
    assert len(calls) == 3 and runner.captured == {}
    assert runner.held("state", lambda: [1]) is runner.held("state", lambda: [2])  # made once, kept


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_a_new_model_captures_its_steps_after_every_graph_of_the_step_pool_died():
    """The graphed steps of every runner on a device share one memory pool. A studio that replaces its model drops
    every runner and graph of the device at once; the next model's first steps must still capture into the pool
    (torch refuses a pool whose graphs have all died until its allocator frees it) and decode what the plain path
    decodes."""
    from sdar_core import runner as runner_module

    kw = dict(max_new_tokens=12, block_length=4, steps=2, strategy="static")
    first = random_model(tiny_config("sdar", block_size=4, layers=2)).cuda()
    generate(first, [[1, 2, 3]], runner_mode="graph", **kw)
    device = first.device
    pool = runner_module._STEP_POOLS[device]
    held = isinstance(pool, torch.cuda.MemPool)
    assert held == runner_module._HELD_POOLS  # torch >= 2.7 with the native allocator
    if held:
        assert pool.use_count() > 1  # the pool's own reference and the step graphs'
    del first
    gc.collect()
    if held:
        assert pool.use_count() == 1  # every step graph died: only the pool's own reference is left
    second = random_model(tiny_config("sdar", block_size=4, layers=2), seed=5).cuda()
    prompts = [[4, 5, 6, 7, 8], [9, 10]]
    graph = generate(second, prompts, runner_mode="graph", **kw)
    plain = generate(second, prompts, runner_mode="plain", **kw)
    assert graph.tokens.tolist() == plain.tokens.tolist()
    assert runner_module._STEP_POOLS[device] is pool


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "model_type, strategy",
    [("sdar", "static"), ("sdar", "dynamic"), ("sdar", "entropy"), ("sdar", "ar"), ("qwen3", "ar")],
)
def test_cuda_a_graphed_step_decodes_what_the_step_launched_op_by_op_decodes(
    model_type, strategy, monkeypatch
):
    """Kernels.graphed_step: the work after each forward (steps.denoise_step, steps.next_token_step for an AR model)
    replayed as a graph gives the same tokens and trace as the same ops launched one by one, stop tokens included,
    and once captured no step runs it from Python."""
    from sdar_core.kernels import Kernels

    model = random_model(tiny_config(model_type, block_size=4, layers=2)).cuda()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    kw = dict(
        max_new_tokens=24, block_length=4, steps=4, strategy=strategy, threshold=0.5, runner_mode="graph"
    )
    kw["entropy_bound"] = 2.0
    kw["stop_token_ids"] = [generate(model, prompts, **kw).row_tokens(0)[9]]  # row 0 stops mid-answer
    eager = generate(model, prompts, trace=True, kernels=Kernels(graphed_step=False), **kw)
    calls = spy_steps(
        monkeypatch, "next_token_step" if model_type == "qwen3" else "denoise_step", lambda state: 1
    )
    graphed = generate(model, prompts, trace=True, **kw)
    captured = len(calls)
    again = generate(model, prompts, trace=True, **kw)
    replayed = len(calls) - captured
    untraced = generate(model, prompts, **kw)
    assert (
        graphed.tokens.tolist() == again.tokens.tolist() == untraced.tokens.tolist() == eager.tokens.tolist()
    )
    assert min(graphed.lengths) <= 10  # a row stopped mid-answer

    def steps(gen):
        return [(e.row, e.block, e.step, e.block_state, e.committed, e.masked_confidence) for e in gen.trace]

    assert steps(graphed) == steps(again) == steps(eager)
    # the first run captures each step's graph (the work runs twice per capture: once for real, once captured);
    # the second replays every step
    assert 0 < captured <= 4 < graphed.stats.forwards and replayed == 0


def test_a_block_length_outside_the_trained_block_sizes_warns_and_still_decodes():
    import warnings

    from sdar_core.decoding import UntrainedBlockSizeWarning

    config = tiny_config()
    config.trained_block_sizes = [2, 4]
    model = random_model(config)
    with pytest.warns(UntrainedBlockSizeWarning, match=r"block_length 8 is not among .* \(2, 4\)"):
        gen = generate(model, [[5, 6, 7]], max_new_tokens=8, block_length=8, steps=8, strategy="static")
    assert gen.lengths[0] == 8
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # a trained size, AR decoding, or the block size of a model without the list
        generate(model, [[5, 6, 7]], max_new_tokens=4, block_length=2, steps=2, strategy="static")
        generate(model, [[5, 6, 7]], max_new_tokens=4, strategy="ar")
        generate(random_model(tiny_config()), [[5, 6, 7]], max_new_tokens=4, block_length=4, steps=4)
    # Without the list a checkpoint was trained at its block size (ModelConfig.trained_blocks), as the studio says.
    with pytest.warns(UntrainedBlockSizeWarning, match=r"block_length 8 is not among .* \(4\)"):
        generate(random_model(tiny_config()), [[5, 6, 7]], max_new_tokens=4, block_length=8, steps=8)


def test_ar_model_trace_matches_a_cache_free_brute_force_token_by_token():
    """An AR (qwen3) model's step trace: one event per row and token, holding the token and its softmax probability
    from a full forward over prompt + tokens so far (no cache), the row's own positions, and nothing after a row
    stopped."""
    model = random_model(tiny_config("qwen3"))
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10, 11]]
    free = generate(model, prompts, max_new_tokens=8, strategy="ar")
    stop = free.row_tokens(0)[3]  # row 0 stops at its 4th token; row 1 runs on unless it meets it too
    gen = generate(model, prompts, max_new_tokens=8, strategy="ar", trace=True, stop_token_ids=[stop])
    expected = []
    for r, prompt in enumerate(prompts):
        seq = list(prompt)
        for i in range(8):
            with torch.no_grad():
                probs = model(torch.tensor([seq]))[0, -1].float().softmax(-1)
            tok = int(probs.argmax())
            expected.append((i, r, len(prompt) + i, tok, float(probs[tok]), tok == stop))
            seq.append(tok)
            if tok == stop:
                break
    got = sorted(
        (e.block, e.row, e.block_start, e.block_state[0], e.committed_confidence[0], e.stopped)
        for e in gen.trace
    )
    expected.sort()
    assert [g[:4] + g[5:] for g in got] == [e[:4] + e[5:] for e in expected]
    assert [g[4] for g in got] == pytest.approx([e[4] for e in expected], abs=1e-5)
    assert all(
        e.step == 0
        and e.final
        and e.committed == [0]
        and e.candidates == {0: e.block_state[0]}
        and e.masked_confidence == {0: e.committed_confidence[0]}
        and e.prompt_positions == []
        for e in gen.trace
    )
    assert any(e.stopped for e in gen.trace if e.row == 0)


def test_a_prompt_beyond_the_context_is_a_context_too_long_error_by_type():
    """The studio adds its hint by the error's type (app/errors.py), never by a word in the message."""
    from app.errors import CONTEXT_HINT, user_message
    from sdar_core import ContextTooLong

    model = random_model(tiny_config())  # context 512
    with pytest.raises(ContextTooLong, match="beyond the model's context of 512") as e:
        generate(model, [[5] * 500], max_new_tokens=64)
    assert isinstance(e.value, GenerationError) and user_message(e.value).endswith(CONTEXT_HINT)
    other = GenerationError("the context word alone does not make a context error")
    assert not user_message(other).endswith(CONTEXT_HINT)
