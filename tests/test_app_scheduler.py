"""app/scheduler.py: visitors' jobs that wait together decode as one batch, and batching never changes an answer:
each row's tokens, steps and stats are what `generate` gives for that prompt alone (the independent computation);
each job ends at its own limit or stop token; a sampled job decodes alone; Stop ends one row and not its neighbours;
a job that arrives while a batch with a free row decodes joins it at a block boundary (never past a turn that is
due first); a job that cannot decode fails in its caller's thread; an error inside a batch reaches each of its
jobs, joined ones included, and the scheduler goes on."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from app.registry import ModelRegistry
from app.scheduler import DecodeScheduler, Failed, Finished, Job, Started, Steps, batching_from_env
from sdar_core import DecodeParams, GenerationError, generate

PROMPTS = [
    "Why is the sky blue?",
    "What is 47 + 38?",
    "Tell me a story about a very small robot and its dog.",
]


@pytest.fixture(scope="module")
def loaded(studio_checkpoints):
    sdar, _ = studio_checkpoints
    return ModelRegistry(models_dir=sdar.parent).get(str(sdar))


def params_for(loaded, **over) -> DecodeParams:
    base = dict(block_length=4, steps=2, strategy="dynamic", threshold=0.6, max_new_tokens=20)
    return DecodeParams(**{**base, **over}, stop_token_ids=loaded.stop_token_ids).resolved(loaded.config)


def job_for(loaded, prompt: str, **over) -> Job:
    return Job(loaded, loaded.tokenizer(prompt)["input_ids"], params_for(loaded, **over))


def drain(job: Job, timeout: float = 60) -> tuple[list, Finished | Failed]:
    """Every update of the job until it ends (a test never hangs: a job silent for `timeout` s fails it)."""
    updates = []
    while not updates or not isinstance(updates[-1], (Finished, Failed)):
        updates.append(job.updates.get(timeout=timeout))
    return updates, updates[-1]


def same_step(a, b) -> bool:
    """The same step of the same row, token for token; confidences equal to 1e-4 (row index aside: a batch's)."""

    def close(x, y):
        return list(x) == list(y) if isinstance(x, dict) else x == pytest.approx(y, abs=1e-4)

    exact = (
        "block",
        "step",
        "block_start",
        "block_state",
        "committed",
        "candidates",
        "prompt_positions",
        "final",
        "stopped",
    )
    return (
        all(getattr(a, f) == getattr(b, f) for f in exact)
        and close(a.committed_confidence, b.committed_confidence)
        and close(a.masked_confidence, b.masked_confidence)
        and list(a.masked_confidence.values()) == pytest.approx(list(b.masked_confidence.values()), abs=1e-4)
    )


def submit_held(scheduler: DecodeScheduler, jobs: list[Job]) -> None:
    """Submit every job before the scheduler may look at its queue (it waits on the same reentrant condition), as
    visitors who press Send at the same moment."""
    with scheduler._cv:
        for job in jobs:
            scheduler.submit(job)


def test_waiting_jobs_decode_as_one_batch_each_row_as_it_would_alone(loaded):
    scheduler = DecodeScheduler("test", lock=threading.Lock())
    jobs = [job_for(loaded, p, max_new_tokens=n) for p, n in zip(PROMPTS, (20, 9, 14))]
    submit_held(scheduler, jobs)
    for job in jobs:
        updates, last = drain(job)
        alone = generate(loaded.model, [job.ids], replace(job.params, trace=True))
        assert isinstance(updates[0], Started) and updates[0].batch == 3
        assert isinstance(last, Finished) and not last.stopped
        assert last.tokens == alone.row_tokens(0)  # the same answer as alone, cut at its own limit
        events = [e for u in updates if isinstance(u, Steps) for e in u.events]
        # every step as alone (a batch's float sums differ in the last bits: confidences to 1e-4)
        assert len(events) == len(alone.trace)
        for got, want in zip(events, alone.trace):
            assert same_step(got, want), (got, want)
        assert last.stats.forwards == alone.stats.forwards and last.stats.new_tokens == alone.stats.new_tokens
        assert last.stats.steps_per_block == alone.stats.steps_per_block
    assert scheduler.batches == 1


def test_different_settings_and_sampled_jobs_decode_in_batches_of_their_own_oldest_first(loaded):
    scheduler = DecodeScheduler("test", lock=threading.Lock())
    greedy = [job_for(loaded, p) for p in PROMPTS[:2]]
    static = job_for(loaded, PROMPTS[0], strategy="static", steps=4)
    sampled = [job_for(loaded, p, temperature=0.8, seed=3) for p in PROMPTS[:2]]
    order = [greedy[0], static, sampled[0], greedy[1], sampled[1]]
    submit_held(scheduler, order)
    results = {id(j): drain(j) for j in order}
    assert [results[id(j)][0][0].batch for j in order] == [2, 1, 1, 2, 1]
    assert scheduler.batches == 4
    # a sampled answer follows its seed, whatever else was queued with it
    alone = generate(loaded.model, [sampled[1].ids], sampled[1].params)
    assert results[id(sampled[1])][1].tokens == alone.row_tokens(0)


def test_jobs_arriving_apart_on_an_idle_device_share_its_first_batch(loaded):
    """Visitors who press Send together reach the server milliseconds apart: the idle device waits for the
    arrivals to pause (a window widened here so that a slow test machine keeps the arrivals inside it)."""
    scheduler = DecodeScheduler("test", lock=threading.Lock(), gather=(0.4, 3.0))
    jobs = [job_for(loaded, p, max_new_tokens=4) for p in PROMPTS]
    for job in jobs:
        scheduler.submit(job)
        time.sleep(0.05)
    assert [drain(j)[0][0].batch for j in jobs] == [3, 3, 3]
    assert scheduler.batches == 1
    # without the window, the first arrival decodes alone before the others come
    scheduler = DecodeScheduler("test", lock=threading.Lock(), gather=(0.0, 0.0))
    first, *rest = [job_for(loaded, p, max_new_tokens=4) for p in PROMPTS]
    scheduler.submit(first)
    assert drain(first)[0][0].batch == 1
    submit_held(scheduler, rest)
    assert [drain(j)[0][0].batch for j in rest] == [2, 2]


def test_the_window_ends_at_its_limit_while_jobs_keep_arriving(loaded):
    scheduler = DecodeScheduler("test", lock=threading.Lock(), gather=(0.3, 0.5))
    jobs = [job_for(loaded, PROMPTS[0], max_new_tokens=2) for _ in range(12)]
    for job in jobs:  # one every 0.1 s, each inside the quiet window of the last: the limit ends the wait
        scheduler.submit(job)
        time.sleep(0.1)
    sizes = [drain(j)[0][0].batch for j in jobs]
    assert sizes[0] < len(jobs) and scheduler.batches >= 2


def test_max_batch_splits_a_crowd(loaded):
    scheduler = DecodeScheduler("test", max_batch=2, lock=threading.Lock())
    jobs = [job_for(loaded, p, max_new_tokens=4) for p in PROMPTS]
    submit_held(scheduler, jobs)
    assert [drain(j)[0][0].batch for j in jobs] == [2, 2, 1]


def test_stop_ends_one_row_and_its_neighbours_finish(loaded):
    scheduler = DecodeScheduler("test", lock=threading.Lock())
    victim, other = (
        job_for(loaded, PROMPTS[0], max_new_tokens=40),
        job_for(loaded, PROMPTS[1], max_new_tokens=40),
    )
    waiting = job_for(loaded, PROMPTS[2], strategy="static")  # another key: it waits behind the first batch
    seen = threading.Event()

    original = victim.updates.put

    def put(update):  # Stop pressed as soon as the victim's first block arrives
        original(update)
        if isinstance(update, Steps) and not seen.is_set():
            seen.set()
            victim.stop.set()

    victim.updates.put = put
    waiting.stop.set()  # stopped before its turn: it ends unrun
    submit_held(scheduler, [victim, other, waiting])
    updates, last = drain(victim)
    assert isinstance(last, Finished) and last.stopped and last.stats is None
    assert sum(len(u.events) for u in updates if isinstance(u, Steps)) < 40
    _, done = drain(other)
    alone = generate(loaded.model, [other.ids], other.params)
    assert not done.stopped and done.tokens == alone.row_tokens(0)
    w_updates, w_last = drain(waiting)
    assert w_last.stopped and not any(isinstance(u, (Started, Steps)) for u in w_updates)


def test_a_job_that_cannot_decode_fails_in_the_callers_thread(loaded):
    scheduler = DecodeScheduler("test", lock=threading.Lock())
    too_long = Job(loaded, [5] * 600, params_for(loaded))  # the fixture's context is 512
    with pytest.raises(GenerationError, match="context"):
        scheduler.submit(too_long)
    assert scheduler.load == 0


def test_an_error_in_a_batch_reaches_each_of_its_jobs_and_the_scheduler_goes_on(loaded, monkeypatch):
    import app.scheduler as scheduler_module

    scheduler = DecodeScheduler("test", lock=threading.Lock())
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access")
        return generate(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "generate", failing)
    jobs = [job_for(loaded, p, max_new_tokens=4) for p in PROMPTS[:2]]
    submit_held(scheduler, jobs)
    for job in jobs:
        last = drain(job)[1]
        assert isinstance(last, Failed) and "illegal memory access" in str(last.error)
    later = scheduler.submit(job_for(loaded, PROMPTS[2], max_new_tokens=4))
    assert isinstance(drain(later)[1], Finished)


def test_a_request_whose_model_is_still_loading_is_told_its_progress_at_once(studio_checkpoints, monkeypatch):
    """A load that outlasts the studio's grace (a download) is not waited for: the request is refused with the load's
    progress, holding nothing; once loaded, the next request is served."""
    from app import studio as studio_mod
    from app.registry import LoadStatus
    from app.settings import DecodeRequest, DecodeSettings

    sdar, _ = studio_checkpoints
    studio = studio_mod.Studio(registry=ModelRegistry(models_dir=sdar.parent))
    never = threading.Event()
    status = LoadStatus(
        name="JetLM/SDAR-4B-Chat", phase="downloading", elapsed=12, downloaded=2 << 30, expected=8 << 30
    )
    monkeypatch.setattr(studio_mod, "LOAD_GRACE", 0.2)
    monkeypatch.setattr(studio.registry, "ready_or_status", lambda name: status)
    monkeypatch.setattr(studio.registry, "loading", lambda name: type("Loading", (), {"done": never})())
    req = DecodeRequest(str(sdar), DecodeSettings(max_new_tokens=4))
    with pytest.raises(studio_mod.ModelLoading, match="is downloading: 2.1 GB of about 8.6 GB, 12 s so far"):
        studio.start(req, [{"role": "user", "content": "Hi"}], threading.Event())
    monkeypatch.undo()
    run = studio.start(req, [{"role": "user", "content": "Hi"}], threading.Event())
    list(run.follow())
    assert run.stats is not None


def submit_when_decoding(scheduler: DecodeScheduler, running: Job, jobs: list[Job]) -> None:
    """Submit `jobs` once `running` has started to decode: they are queued (under the scheduler's condition) before
    the batch's next block boundary can look at the queue."""
    first = running.updates.get(timeout=60)
    assert isinstance(first, Started)
    running.updates.put(first)  # back for drain (order kept: nothing else came before it was taken)
    submit_held(scheduler, jobs)


def test_a_job_arriving_while_a_batch_decodes_joins_it_and_answers_as_alone(loaded):
    scheduler = DecodeScheduler("test", lock=threading.Lock(), width=2)  # one free row beside the first job
    running = job_for(loaded, PROMPTS[2], max_new_tokens=200)
    scheduler.submit(running)
    late = job_for(loaded, PROMPTS[1], max_new_tokens=12)
    submit_when_decoding(scheduler, running, [late])
    updates, last = drain(late)
    assert isinstance(updates[0], Started) and updates[0].batch == 2  # it joined the running batch
    alone = generate(loaded.model, [late.ids], replace(late.params, trace=True))
    assert isinstance(last, Finished) and last.tokens == alone.row_tokens(0)
    events = [e for u in updates if isinstance(u, Steps) for e in u.events]
    assert len(events) == len(alone.trace) and all(same_step(g, w) for g, w in zip(events, alone.trace))
    assert last.stats.steps_per_block == alone.stats.steps_per_block
    assert not drain(running)[1].stopped
    assert scheduler.batches == 1


def test_without_a_free_row_or_with_joining_off_a_late_job_waits_for_the_next_batch(loaded):
    for scheduler in (
        DecodeScheduler("test", lock=threading.Lock()),  # width 1: the running batch has no free row
        DecodeScheduler("test", lock=threading.Lock(), width=2, join=False),
    ):
        running = job_for(loaded, PROMPTS[2], max_new_tokens=60)
        scheduler.submit(running)
        late = job_for(loaded, PROMPTS[1], max_new_tokens=8)
        submit_when_decoding(scheduler, running, [late])
        assert drain(late)[0][0].batch == 1
        assert scheduler.batches == 2


def test_joining_never_overtakes_a_turn_that_is_due_first(loaded):
    """A job of another setting waits first: a later job with the running batch's settings does not join (the batch
    would run on past the waiting turn); it decodes after that turn."""
    scheduler = DecodeScheduler("test", lock=threading.Lock(), width=4)
    running = job_for(loaded, PROMPTS[2], max_new_tokens=60)
    scheduler.submit(running)
    other = job_for(loaded, PROMPTS[0], strategy="static", steps=4, max_new_tokens=8)
    same = job_for(loaded, PROMPTS[1], max_new_tokens=8)
    submit_when_decoding(scheduler, running, [other, same])
    assert drain(same)[0][0].batch == 1 and drain(other)[0][0].batch == 1
    assert scheduler.batches == 3 and scheduler.turns[-2:] == [other.visitor, same.visitor]


def test_an_error_after_a_job_joined_reaches_it_too(loaded, monkeypatch):
    import app.scheduler as scheduler_module

    scheduler = DecodeScheduler("test", lock=threading.Lock(), width=2)
    joined = threading.Event()
    original = scheduler_module.BatchRows.add

    def add(self, jobs, block=0):
        original(self, jobs, block)
        if jobs and jobs[0] is not self.starting[0]:  # a job joined
            joined.set()
            raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(scheduler_module.BatchRows, "add", add)
    running = job_for(loaded, PROMPTS[2], max_new_tokens=200)
    scheduler.submit(running)
    late = job_for(loaded, PROMPTS[1], max_new_tokens=8)
    submit_when_decoding(scheduler, running, [late])
    for job in (running, late):
        last = drain(job)[1]
        assert isinstance(last, Failed) and "out of memory" in str(last.error)
    assert joined.is_set() and scheduler.load == 0


@pytest.mark.parametrize(
    "env,want",
    [
        ({}, (True, 1)),
        ({"SDAR_JOIN": "0"}, (False, 1)),
        ({"SDAR_JOIN": "on", "SDAR_BATCH_WIDTH": " 4 "}, (True, 4)),
        ({"SDAR_BATCH_WIDTH": "16"}, (True, 16)),
    ],
)
def test_the_batching_switches_are_read_from_the_environment(env, want):
    assert batching_from_env(env) == want


@pytest.mark.parametrize(
    "env,match",
    [
        ({"SDAR_JOIN": "maybe"}, "SDAR_JOIN='maybe': give 1"),
        ({"SDAR_BATCH_WIDTH": "0"}, "SDAR_BATCH_WIDTH='0': give a whole number of rows from 1 to 16"),
        ({"SDAR_BATCH_WIDTH": "17"}, "from 1 to 16"),
        ({"SDAR_BATCH_WIDTH": "two"}, "SDAR_BATCH_WIDTH='two'"),
    ],
)
def test_a_bad_batching_switch_is_refused_by_name(env, match):
    with pytest.raises(ValueError, match=match):
        batching_from_env(env)


def test_the_studio_builds_its_schedulers_with_the_batching_switches(loaded, monkeypatch):
    from app.studio import Studio

    monkeypatch.setenv("SDAR_JOIN", "0")
    monkeypatch.setenv("SDAR_BATCH_WIDTH", "4")
    scheduler = Studio().scheduler(loaded)
    assert (scheduler.join, scheduler.width) == (False, 4)
