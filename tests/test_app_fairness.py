"""A public studio that no visitor can monopolise (issue 33, findings 2-4): the scheduler serves the visitor who used
the device least first, a race or a sweep borrows the device through the same queue, every request is priced in
forwards before it starts (and held to it while it runs), and Stop reaches the run it was made for whatever else
its session or other sessions do. Orders and counts only: no wall-clock bound."""

from __future__ import annotations

import gc
import threading
import types

import pytest

from app.budget import Budget, Budgets, runs_within
from app.registry import ModelRegistry
from app.scheduler import DecodeScheduler, Finished, Job, SchedulerTurn, Steps
from app.settings import DecodeSettings
from app.streaming import StopFlags
from sdar_core import DecodeParams, generate

PROMPT = "What is 47 + 38?"


@pytest.fixture(scope="module")
def loaded(studio_checkpoints):
    sdar, _ = studio_checkpoints
    return ModelRegistry(models_dir=sdar.parent).get(str(sdar))


def job_for(loaded, visitor: str, steps: int = 4, max_new_tokens: int = 8, budget=None) -> Job:
    params = DecodeParams(
        block_length=4, steps=steps, strategy="static", max_new_tokens=max_new_tokens, stop_token_ids=[]
    ).resolved(loaded.config)
    return Job(loaded, loaded.tokenizer(PROMPT)["input_ids"], params, visitor=visitor, budget=budget)


def drain(job: Job, timeout: float = 120) -> list:
    updates = []
    while not updates or not isinstance(updates[-1], Finished):
        updates.append(job.updates.get(timeout=timeout))
    return updates


# --- finding 2: fair queueing by device time ---------------------------------------------------------------------


def test_finding2_a_fresh_visitor_goes_before_the_queued_work_of_a_visitor_who_used_the_device(loaded):
    """Before: first come, first served (the heavy visitor's three queued jobs all ran before the fresh one)."""
    lock = threading.Lock()
    scheduler = DecodeScheduler("test", lock=lock)
    drain(
        scheduler.submit(job_for(loaded, "heavy", max_new_tokens=32))
    )  # device time on the heavy visitor's count
    with (
        lock
    ):  # the device is busy (a race lane, say) while both queue; taken once the first batch is charged
        assert scheduler.used("heavy") > 0 and scheduler.used("fresh") == 0
        heavy = [
            scheduler.submit(job_for(loaded, "heavy", steps=s)) for s in (1, 2, 4)
        ]  # three keys: three turns
        fresh = scheduler.submit(
            job_for(loaded, "fresh", steps=2)
        )  # last to come; shares a key with one of them
    for job in heavy + [fresh]:
        drain(job)
    assert scheduler.turns[1] == "fresh"  # the first turn after the busy device is the fresh visitor's
    assert scheduler.turns[2:] == [
        "heavy",
        "heavy",
    ]  # the heavy job of the same key rode along in fresh's batch


def test_finding2_a_race_lane_takes_its_turn_behind_a_fresher_visitors_chat(loaded):
    """A race's lanes borrow the device from the scheduler's queue one turn at a time: a chat that arrives while a
    lane runs is served before the race's next lane (before: the race held the device for a whole round and
    polled for it again, ahead of the queue)."""
    scheduler = DecodeScheduler("test", lock=threading.Lock())
    stop = threading.Event()
    turn = SchedulerTurn(scheduler, "racer")
    assert turn.take(stop)  # the first lane's turn
    chat = scheduler.submit(job_for(loaded, "fresh"))  # a chat arrives while the lane decodes
    scheduler.charge("racer", 5.0)  # the lane's seconds (charged by the scheduler when given back)
    turn.give_back()
    assert turn.take(stop)  # the next lane queues behind the chat
    try:
        assert chat.updates.qsize() and isinstance(drain(chat)[-1], Finished)
        assert scheduler.turns == ["racer", "fresh", "racer"]
    finally:
        turn.give_back()


def test_a_lease_stopped_while_it_waits_is_dropped_and_the_queue_goes_on(loaded):
    lock = threading.Lock()
    scheduler = DecodeScheduler("test", lock=lock)
    stop = threading.Event()
    got = []
    with lock:
        waiter = threading.Thread(target=lambda: got.append(SchedulerTurn(scheduler, "racer").take(stop)))
        waiter.start()
        while not scheduler.waiting:
            threading.Event().wait(0.01)
        stop.set()
        waiter.join(30)
    assert got == [False]
    assert isinstance(drain(scheduler.submit(job_for(loaded, "fresh")))[-1], Finished)


# --- finding 2: cost budgets in forwards -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, block, steps",
    [
        ("static", 4, 4),
        ("static", 4, 2),
        ("dynamic", 4, 4),
        ("ar", 1, 1),
        ("static", 8, 3),
        ("sequential", 2, 2),
    ],
)
@pytest.mark.parametrize("prompt_len", [1, 5, 8])
def test_forwards_bound_is_never_exceeded_by_the_decoder(loaded, strategy, block, steps, prompt_len):
    s = DecodeSettings(block_length=block, steps=steps, strategy=strategy, threshold=0.9, max_new_tokens=13)
    gen = generate(loaded.model, [list(range(5, 5 + prompt_len))], stop_token_ids=[], **s.generate_kwargs())
    used = gen.stats.forwards + gen.stats.prefill_forwards
    assert used <= s.forwards_bound(prompt_len)
    if strategy in ("static", "ar"):  # tight: off by the prompt's partial block and a prefill at most
        assert s.forwards_bound(prompt_len) - used <= steps + 1


def test_budgets_are_read_from_the_environment_and_a_bad_one_is_named():
    assert Budgets.from_env({}) == Budgets(chat=2048, race=6144, sweep=6144)
    assert Budgets.from_env({"SDAR_RACE_BUDGET": "100", "SDAR_SWEEP_BUDGET": " 50 "}).race == 100
    for bad in ("0", "-3", "lots", "1.5"):
        with pytest.raises(ValueError, match="SDAR_CHAT_BUDGET must be a positive whole number"):
            Budgets.from_env({"SDAR_CHAT_BUDGET": bad})
    assert (
        runs_within(100, 10, 30, 5) == 3
        and runs_within(100, 10, 91, 5) == 0
        and runs_within(100, 0, 10, 2) == 2
    )
    b = Budget(3)
    assert [b.spend() for _ in range(4)] == [True, True, True, False] and b.exhausted


def test_a_job_is_held_to_its_budget_while_it_runs(loaded):
    scheduler = DecodeScheduler("test", lock=threading.Lock())
    updates = drain(scheduler.submit(job_for(loaded, "v", steps=4, max_new_tokens=32, budget=5)))
    assert sum(len(u.events) for u in updates if isinstance(u, Steps)) == 5
    assert updates[-1].stopped


@pytest.fixture
def studio_with(studio_checkpoints):
    """A Studio on the test checkpoints with the given budgets, its Race and Chat handlers: (race, chat, sdar)."""
    from app.chat import Chat
    from app.layout import layout
    from app.race import Race
    from app.studio import Studio

    sdar, _ = studio_checkpoints

    def make(**budgets):
        studio = Studio(registry=ModelRegistry(models_dir=sdar.parent), budgets=Budgets(**budgets))
        _, page = layout(str(sdar), [str(sdar)], "", None)
        return Race(studio), Chat(studio, page), page, str(sdar)

    return make


REQUEST = types.SimpleNamespace(session_hash="s", headers={}, client=types.SimpleNamespace(host="127.0.0.1"))


def race_args(model, **over):
    ui = dict(
        model_name=model,
        block_length=1,
        steps=1,
        strategy="static",
        threshold=0.9,
        temperature=0.0,
        top_p=1.0,
        max_new_tokens=16,
        seed=0,
        pace_ms=0,
        repeats=5,
    )
    ui.update(over)
    return ui


def test_finding2_a_race_over_its_budget_is_cut_to_the_runs_that_fit_and_says_so(studio_with):
    """Before: a race at the caps (5 runs, 1,024 tokens, block 1, twin) ran 201.8 s whatever it cost."""
    from app.race import SEQUENTIAL

    race, _, _, model = studio_with(race=60)  # two lanes of 17 forwards a run, warm-ups 3 each: one run fits
    outputs = list(race.race("Hi", SEQUENTIAL, False, REQUEST, **race_args(model)))
    table, headline = outputs[-1][3], outputs[-1][4]
    assert "Cut to 1 timed runs per lane (of 5)" in headline and "race budget of 60" in headline
    assert list(table["timed runs"]) == [1, 1]


def test_finding2_a_race_or_sweep_that_cannot_fit_one_run_is_refused_with_the_figures(studio_with):
    import gradio as gr

    from app.race import SEQUENTIAL

    race, _, _, model = studio_with(race=20, sweep=30)
    with pytest.raises(gr.Error) as refused:
        list(race.race("Hi", SEQUENTIAL, False, REQUEST, **race_args(model)))
    assert "up to 40 forwards with one timed run" in refused.value.message
    assert "at most 20 here" in refused.value.message
    with pytest.raises(gr.Error) as refused:
        list(race.sweep("Hi", model, [4, 8], [0.9, 0.5], 64, system="", request=REQUEST))
    assert (
        "This sweep may take up to 412 forwards" in refused.value.message
        and "at most 30 here" in refused.value.message
    )


def test_a_sweep_over_its_budget_runs_fewer_timed_runs_per_point_and_says_so(studio_with):
    race, _, _, model = studio_with(sweep=40)  # AR and one point: 18-22 forwards a run, 12-16 to warm up
    outputs = list(race.sweep("Hi", model, [4], [0.9], 8, request=REQUEST))
    assert "Cut to 1 timed runs per point (of 3)" in outputs[0][0] and "sweep budget of 40" in outputs[0][0]
    assert outputs[-1][0].startswith("_Cut to 1") and len(outputs[-1][3]) == 2


def test_a_chat_over_its_budget_is_refused_before_it_queues(studio_with):
    import gradio as gr

    _, chat, page, model = studio_with(chat=10)
    ui = race_args(model, max_new_tokens=64, block_length=4, steps=4)
    ui.pop("repeats")
    with pytest.raises(gr.Error) as refused:
        list(chat.respond("Hi", [], "", REQUEST, **ui))
    assert "may take up to 65 forwards" in refused.value.message and "at most 10" in refused.value.message


# --- finding 4: Stop always lands --------------------------------------------------------------------------------


def test_finding4_a_stop_flag_belongs_to_its_run_and_stays_reachable():
    """Before: pressing Load in the racing session re-armed the session's one flag (the race ran on after Stop), and
    1,100 fresh sessions pushed the victim's flag out of the table of the newest 1,024."""
    flags = StopFlags()
    race = flags.arm("victim")
    load = flags.arm("victim")  # Load pressed in the racing session
    assert race.run != load.run and not race.is_set()
    others = [flags.arm(f"fresh{i}") for i in range(2000)]  # other sessions' traffic
    assert flags.trigger("victim") and race.is_set() and load.is_set()
    assert not any(f.is_set() for f in others)
    del others, load
    gc.collect()
    assert len(flags) == 1  # only the race is still in flight: ended runs leave nothing behind
    del race
    gc.collect()
    assert len(flags) == 0 and not flags.trigger("victim")
    assert not flags.trigger(None) and not flags.arm(None).is_set()  # no session: a private flag


def test_finding4_stop_reaches_a_race_after_load_was_pressed_and_fresh_sessions_came(studio_with):
    from app.race import SEQUENTIAL

    race, _, _, model = studio_with()
    studio = race.studio
    steps = race.race("Hi", SEQUENTIAL, False, REQUEST, **race_args(model, max_new_tokens=64, repeats=3))
    next(steps)  # the race is under way: its flag is armed
    studio.arm_stop(REQUEST)  # Load in the same session
    for i in range(1100):
        studio.arm_stop(types.SimpleNamespace(session_hash=f"fresh{i}", headers={}, client=None))
    studio.stop(REQUEST)
    outputs = list(steps)
    assert outputs[-1][4] == "_Stopped._" and outputs[-1][3].empty  # no timed run after Stop


def test_finding2_a_timed_lane_gives_way_at_a_block_boundary_and_decodes_the_same_tokens(loaded):
    """A fresh visitor's chat that arrives while a race lane decodes (a plain runner: the CPU) is served at the lane's
    next block boundary, not after the lane: it never waits more than about one block beyond its turn. The lane
    then goes on and decodes exactly what it decodes alone."""
    from app.streaming import Lane, decode

    scheduler = DecodeScheduler("test", lock=threading.Lock())
    stop = threading.Event()
    settings = DecodeSettings(block_length=4, steps=4, strategy="static", max_new_tokens=32)
    lane = Lane(loaded, loaded.tokenizer(PROMPT)["input_ids"], settings)
    alone = decode(lane)
    scheduler.charge("racer", 10.0)  # the race has had the device for a while
    turn = SchedulerTurn(scheduler, "racer")
    chat, seen = [], []

    def on_step(event):
        if event.final and event.block == 1 and not chat:
            chat.append(scheduler.submit(job_for(loaded, "fresh")))  # a chat arrives during block 1
        elif chat and not seen:
            seen.append((event.block, chat[0].updates.qsize() > 0))

    assert turn.take(stop)
    try:
        gen = decode(lane, on_step, turn, stop)
    finally:
        turn.give_back()
    assert seen == [(2, True)]  # the chat was answered before the lane's next block began
    assert isinstance(drain(chat[0])[-1], Finished)
    assert gen.row_tokens(0) == alone.row_tokens(0)
    assert scheduler.turns == ["racer", "fresh", "racer"]


# --- finding 3: the watch replay holds no decode slot ------------------------------------------------------------


def test_finding3_a_paced_answer_is_replayed_by_the_page_and_its_handler_never_sleeps(
    studio_with, monkeypatch
):
    """Before: the watch replay ran on the server, holding a decode slot for the whole display (a fresh chat waited
    16.3 s behind 4 paced visitors). Now the handler ends with its decode: the pace travels to the page's player,
    no handler thread sleeps for display, and the scheduler holds nothing once the answer is sent."""
    import time as time_module

    _, chat, page, model = studio_with()
    slept = []
    real_sleep = time_module.sleep
    handler = threading.get_ident()
    monkeypatch.setattr(
        time_module,
        "sleep",
        lambda s: (slept.append(s) if threading.get_ident() == handler else None, real_sleep(s))[1],
    )
    ui = race_args(model, block_length=4, steps=4, max_new_tokens=24, pace_ms=1000)
    ui.pop("repeats")
    outputs = list(chat.respond("Tell me a story.", [], "", REQUEST, **ui))
    live = outputs[-1][page.live]
    assert live["pace"] == 1000 and live["status"] == "done"  # 24 tokens at 1 s a frame: the page's to play
    assert not [s for s in slept if s >= 0.05]
    assert all(s.load == 0 for s in chat.studio.schedulers.values())


def test_a_visitor_is_the_forwarded_client_address_else_its_own_address_else_its_session_on_loopback():
    from app.exposure import visitor_of

    def request(headers=None, host="127.0.0.1", session="s1"):
        return types.SimpleNamespace(
            headers=headers or {}, client=types.SimpleNamespace(host=host), session_hash=session
        )

    proxied = {"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}
    assert visitor_of(request(proxied)) == visitor_of(request(proxied, session="s2")) == "ip:203.0.113.7"
    assert visitor_of(request({"x-real-ip": "198.51.100.2", **proxied})) == "ip:198.51.100.2"
    assert visitor_of(request(host="192.0.2.5")) == visitor_of(
        request(host="192.0.2.5", session="s9")
    )  # fresh
    assert visitor_of(request()) != visitor_of(
        request(session="s2")
    )  # this machine's own tabs: one per session
    assert visitor_of(request({"Forwarded": 'for="[2001:db8::1]";proto=https'})) == "ip:2001:db8::1"
    assert (
        visitor_of(request({"X-Forwarded-Host": "studio.example"})) == "ip:127.0.0.1"
    )  # a proxy, not a session
    assert visitor_of(None) == ""


def test_finding2_a_long_answer_gives_way_to_a_fresh_chat_at_a_block_boundary(loaded):
    """A visitor's long answer decoding (a plain runner: the CPU) when a fresher visitor's chat arrives: the chat runs
    inside the paused batch at its next block boundary and is answered before the long answer's next block; the long
    answer then goes on and decodes exactly what it decodes alone."""
    lock = threading.Lock()
    scheduler = DecodeScheduler("test", lock=lock)
    scheduler.charge("heavy", 10.0)
    long = job_for(loaded, "heavy", max_new_tokens=48)
    fresh = job_for(loaded, "fresh")
    seen = []
    original = long.updates.put

    def put(update):  # the fresh chat arrives with the long answer's second block
        original(update)
        if isinstance(update, Steps) and update.events[-1].block == 1 and not seen:
            seen.append("submitted")
            scheduler.submit(fresh)
        elif isinstance(update, Steps) and seen == ["submitted"]:
            seen.append(("fresh answered before block", update.events[-1].block, fresh.updates.qsize() > 0))

    long.updates.put = put
    scheduler.submit(long)
    updates = drain(long)
    assert seen[1] == ("fresh answered before block", 2, True)
    assert isinstance(drain(fresh)[-1], Finished)
    alone = generate(loaded.model, [long.ids], long.params)
    assert updates[-1].tokens == alone.row_tokens(0) and not updates[-1].stopped
    assert scheduler.turns == ["heavy", "fresh"]
