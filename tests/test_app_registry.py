"""app/registry.py: the model registry on the studio's test checkpoints (conftest.studio_checkpoints), which
these tests also check: stop tokens, chat template, the AR twin next to the SDAR folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sdar_core.paths import REPO


def test_fixture_checkpoints_load_with_their_stop_tokens_and_chat_template(studio_checkpoints):
    from app.registry import ModelRegistry, ar_twin_name

    sdar_path, ar_path = studio_checkpoints
    registry = ModelRegistry(models_dir=sdar_path.parent)
    m = registry.get(str(sdar_path))
    assert m.is_sdar and m.config.block_size == 4
    vocab = m.tokenizer.get_vocab()
    assert vocab["<|im_end|>"] in m.stop_token_ids and vocab["<|endoftext|>"] in m.stop_token_ids
    assert m.config.mask_token_id == vocab["<|MASK|>"] and m.config.mask_token_id not in m.stop_token_ids
    text = m.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert ar_twin_name(str(sdar_path)) == str(ar_path)
    assert sorted(Path(p).name for p in registry.available()) == ["ar-tiny", "sdar-tiny"]
    assert registry.get(str(sdar_path)) is m  # cached


def test_registry_names_a_missing_folder_and_the_missing_default_model(tmp_path):
    from app.registry import DEFAULT_MODEL, ModelRegistry, ModelUnavailable

    registry = ModelRegistry(models_dir=tmp_path, exposed=False)  # a private request may name any path
    with pytest.raises(ModelUnavailable, match="no checkpoint folder"):
        registry.get(str(tmp_path / "nope"))
    if not (REPO / DEFAULT_MODEL).exists():
        with pytest.raises(ModelUnavailable, match="not here yet"):
            registry.get(DEFAULT_MODEL)


# --- finding 1 of issue 33: a load never holds a caller; a download has a deadline and a minimum rate ---------


@pytest.fixture
def local_hub(tmp_path, monkeypatch, studio_checkpoints):
    """Returns a function starting a FakeHub on 127.0.0.1 that serves the studio's SDAR checkpoint as org/tiny,
    with HF_ENDPOINT and an empty hub cache pointed at it."""
    import huggingface_hub.constants
    from test_loading_hostile import FakeHub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    hubs = []

    def start(**kwargs):
        hubs.append(FakeHub(studio_checkpoints[0], **kwargs))
        monkeypatch.setenv("HF_ENDPOINT", hubs[-1].url)
        return hubs[-1]

    yield start
    for hub in hubs:
        hub.close()


def _wait_for_failure(registry, name: str, bound: float) -> str:
    from app.registry import LoadStatus, ModelUnavailable

    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            assert isinstance(registry.ready_or_status(name), LoadStatus)
        except ModelUnavailable as e:
            return str(e)
        time.sleep(0.2)
    raise AssertionError(f"the load of {name} was not given up within {bound} s")


def test_finding1_a_trickling_download_reports_progress_at_once_then_is_abandoned_and_cleared(
    local_hub, monkeypatch
):
    """Issue 33, finding 1: a download at a byte a second once kept visitors inside the decode slots for 900 s.
    ready_or_status answers at once with the load's status; below the minimum rate the child process downloading
    is killed, the reason is shown, and the next try starts a fresh load."""
    from app import registry as registry_module
    from app.downloads import DownloadLimits
    from app.registry import LoadStatus, ModelRegistry

    local_hub(trickle=1.0)
    limits = DownloadLimits(deadline=60, min_rate=1000, window=2, grace=2)
    registry = ModelRegistry(allow_any_model=True, device="cpu", limits=limits)
    t0 = time.monotonic()
    status = registry.ready_or_status("org/tiny")
    assert time.monotonic() - t0 < 1.0, "ready_or_status waited for the load"
    assert isinstance(status, LoadStatus) and status.name == "org/tiny" and status.phase == "downloading"
    assert "org/tiny is downloading" in status.message()
    first = registry.loading("org/tiny")
    reason = _wait_for_failure(registry, "org/tiny", bound=30)
    assert time.monotonic() - t0 < 30
    assert "abandoned" in reason and "MB/s" in reason and "org/tiny" in reason
    assert registry.loading("org/tiny") is None and first.done.is_set()  # cleared, not left "loading"
    monkeypatch.setattr(registry_module, "FAILURE_SHOWN", 0.0)
    assert isinstance(registry.ready_or_status("org/tiny"), LoadStatus)
    assert registry.loading("org/tiny") not in (None, first), "the next try did not start afresh"


def test_finding1_a_download_past_its_deadline_is_abandoned(local_hub):
    from app.downloads import DownloadLimits
    from app.registry import ModelRegistry

    local_hub(stall_files=True)
    registry = ModelRegistry(
        allow_any_model=True, device="cpu", limits=DownloadLimits(deadline=3, min_rate=0, window=1, grace=1)
    )
    t0 = time.monotonic()
    reason = _wait_for_failure(registry, "org/tiny", bound=20)
    assert "abandoned" in reason and "did not finish within 3 s" in reason
    assert time.monotonic() - t0 < 20


def test_finding1_a_healthy_download_becomes_the_loaded_model(local_hub):
    from app.registry import LoadedModel, ModelRegistry

    local_hub()
    registry = ModelRegistry(allow_any_model=True, device="cpu")
    assert not isinstance(registry.ready_or_status("org/tiny"), LoadedModel)
    m = registry.get("org/tiny", timeout=60)
    assert m.path == "org/tiny" and m.config.block_size == 4
    assert registry.ready_or_status("org/tiny") is m


def test_finding1_download_limits_come_from_the_environment():
    from app.downloads import DownloadLimits

    assert DownloadLimits.from_env({}) == DownloadLimits()
    limits = DownloadLimits.from_env({"SDAR_DOWNLOAD_DEADLINE": "600", "SDAR_DOWNLOAD_MIN_RATE": "0.5"})
    assert limits.deadline == 600 and limits.min_rate == 0.5e6
    for bad in ("-1", "nan", "inf", "fast"):
        with pytest.raises(ValueError, match=f"SDAR_DOWNLOAD_DEADLINE='{bad}': expected a number >= 0"):
            DownloadLimits.from_env({"SDAR_DOWNLOAD_DEADLINE": bad})
    from collections import deque

    slow = deque([(0.0, 0), (30.0, 10_000_000), (61.0, 20_000_000)])
    assert DownloadLimits().verdict(61.0, slow) is not None  # 0.33 MB/s < 1 MB/s over the last minute
    assert DownloadLimits().verdict(29.0, deque([(0.0, 0), (29.0, 0)])) is None  # within the grace period
    assert "within 1200 s" in DownloadLimits().verdict(1201.0, deque([(0.0, 0), (1201.0, 10**12)]))
