"""A bounded load/soak run on the loopback interface: a few gradio_client visitors chat with the embedded model at
the same time for a fixed while. Every chat must answer, and the server's resident memory must stay flat. The
figures (visitors, chats, failures, latency percentiles, memory) go to stdout: `pytest -s` shows them."""
from __future__ import annotations

import gc
import statistics
import threading
import time

import pytest

from helpers import free_port, text_of

VISITORS = 4
SECONDS = 12.0
MAX_NEW_TOKENS = 8
RSS_GROWTH_BOUND = 300 << 20  # bytes: generous; a leak per chat (a 10 MB message once kept 0.75 GB) shows well above
QUESTIONS = ["What is 47 + 38?", "How many minutes are in 5 hours?", "What is 305 - 178?",
             "What comes next: 3, 7, 11, 15, 19, ?"]


@pytest.fixture(scope="module")
def embedded_studio():
    """The studio on 127.0.0.1 with the embedded default model loaded: yields (url, model name)."""
    import torch

    from app.layout import LAUNCH_KWARGS
    from app.registry import DEFAULT_MODEL, ModelRegistry, default_missing
    from app.ui import build_app

    if default_missing(DEFAULT_MODEL):
        pytest.skip(f"the embedded model {DEFAULT_MODEL} is not here")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    registry = ModelRegistry()
    registry.get(DEFAULT_MODEL)
    demo = build_app(default_model=DEFAULT_MODEL, registry=registry)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_KWARGS)
    try:
        yield f"http://127.0.0.1:{port}/", DEFAULT_MODEL
    finally:
        demo.close()


def chat_once(client, model: str, question: str) -> str:
    """One visitor's chat turn through the public /chat endpoint, then Clear (each turn starts a new conversation,
    so every turn costs the same); the answer's text."""
    chatbot, *_ = client.predict(question, "", model, 4, 4, "dynamic", 0.9, 0.0, 1.0, MAX_NEW_TOKENS, 0, 0,
                                 api_name="/chat")
    client.predict(api_name="/clear")
    return text_of(chatbot[-1])


def visit(url: str, model: str, index: int, deadline: float, latencies: list, failures: list) -> None:
    """Chat until the deadline (a turn under way then is finished), recording (visitor, seconds) for each turn
    answered, or the turn's failure."""
    from gradio_client import Client

    client, turn = Client(url, verbose=False), 0
    while time.monotonic() < deadline:
        question = QUESTIONS[(index + turn) % len(QUESTIONS)]
        t0 = time.monotonic()
        try:
            answer = chat_once(client, model, question)
            if not answer.strip() or "▒" in answer:
                raise AssertionError(f"an empty or unfinished answer to {question!r}: {answer!r}")
            latencies.append((index, time.monotonic() - t0))
        except Exception as e:  # every kind of failure counts: a refusal, a timeout, a dropped connection
            failures.append(f"visitor {index}: {type(e).__name__}: {e}"[:300])
        turn += 1


def test_concurrent_visitors_chat_for_a_while_without_failures_or_growing_memory(embedded_studio):
    import psutil

    url, model = embedded_studio
    server = psutil.Process()  # the studio runs in this process
    from gradio_client import Client

    chat_once(Client(url, verbose=False), model, QUESTIONS[0])  # warm: first-use allocations are not a leak
    gc.collect()
    rss_start = server.memory_info().rss
    latencies, failures = [], []
    deadline = time.monotonic() + SECONDS
    threads = [threading.Thread(target=visit, args=(url, model, i, deadline, latencies, failures))
               for i in range(VISITORS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 60)
    wall = time.monotonic() - t0
    gc.collect()
    rss_end = server.memory_info().rss
    seconds = [s for _, s in latencies]
    p50, p95 = (statistics.quantiles(seconds, n=100)[i] for i in (49, 94)) if len(seconds) > 1 else (0, 0)
    print(f"\nsoak: {VISITORS} visitors, {wall:.1f} s, {len(latencies)} chats of {MAX_NEW_TOKENS} new tokens, "
          f"{len(failures)} failures, latency p50 {p50:.2f} s p95 {p95:.2f} s, "
          f"server RSS {rss_start / 2**20:.0f} MB -> {rss_end / 2**20:.0f} MB")
    assert not any(t.is_alive() for t in threads), "a visitor never came back"
    assert not failures, "\n".join(failures)
    assert {i for i, _ in latencies} == set(range(VISITORS)), "a visitor's chats were never answered"
    assert rss_end - rss_start < RSS_GROWTH_BOUND
