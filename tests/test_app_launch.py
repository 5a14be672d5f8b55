"""app/launch.py's SDAR_KERNEL_CACHE: the kernel caches' variables point under the folder (their own settings win),
an unset variable changes nothing, and a folder that cannot be written is refused with its reason; `python app.py`
with a bad folder stops with that message, not a stack trace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import app.interpreter
import app.registry
from app.launch import use_kernel_cache

REPO = Path(__file__).resolve().parent.parent


def test_the_kernel_caches_go_under_the_folder_and_their_own_variables_win(tmp_path):
    env = {"SDAR_KERNEL_CACHE": str(tmp_path / "kernels")}
    assert use_kernel_cache(env) == str(tmp_path / "kernels")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "kernels" / "triton")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "kernels" / "inductor")
    assert (tmp_path / "kernels" / "triton").is_dir() and not list((tmp_path / "kernels").glob(".write-test"))
    env = {"SDAR_KERNEL_CACHE": str(tmp_path / "k2"), "TRITON_CACHE_DIR": "/elsewhere"}
    use_kernel_cache(env)
    assert env["TRITON_CACHE_DIR"] == "/elsewhere"
    assert use_kernel_cache({}) is None and use_kernel_cache({"SDAR_KERNEL_CACHE": " "}) is None


def test_a_folder_that_cannot_hold_the_caches_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {"SDAR_KERNEL_CACHE": str(blocker)}
    with pytest.raises(ValueError, match="SDAR_KERNEL_CACHE=.*cannot hold the kernel caches"):
        use_kernel_cache(env)
    assert "TRITON_CACHE_DIR" not in env


def test_the_studio_stops_with_the_reason_on_a_bad_kernel_cache(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert "cannot hold the kernel caches" in refused_start(SDAR_KERNEL_CACHE=str(blocker))


def refused_start(**env: str) -> str:
    """`python app.py` with `env` added: it must stop with exit code 2 and a reason, no traceback; its stderr."""
    run = subprocess.run(
        [sys.executable, "app.py", "--port", "1"],
        cwd=REPO,
        env={**os.environ, **env, "GRADIO_ANALYTICS_ENABLED": "False"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    return run.stderr


def test_fp8_weights_are_the_operators_switch_and_a_bad_value_stops_with_its_reason(
    studio_checkpoints, monkeypatch
):
    """--weights fp8 (or SDAR_WEIGHTS=fp8) loads the studio's models with float8 projections, and the model card
    says so; a bad SDAR_WEIGHTS stops the studio with a usage line, not a stack trace."""
    from app import launch
    from app.registry import ModelRegistry
    from app.render import model_markdown

    sdar, _ = studio_checkpoints
    loaded = ModelRegistry(models_dir=sdar.parent, weights="fp8").get(str(sdar))
    assert loaded.model.weights == "fp8" and "float8 projections" in model_markdown(
        loaded.summary, name="m", context=512
    )
    plain = ModelRegistry(models_dir=sdar.parent).get(str(sdar))
    assert plain.model.weights == "float32" and "float8" not in model_markdown(
        plain.summary, name="m", context=512
    )
    seen = {}

    class Stop(Exception):
        pass

    def registry(**kw):
        seen.update(kw)
        raise Stop  # the switch reached the registry: the rest of the start-up is not this test's

    # main imports these when it runs (after the early workers' spawn): patched where they live
    monkeypatch.setattr(app.registry, "ModelRegistry", registry)
    monkeypatch.setattr(
        app.interpreter, "set_switch_interval", lambda: 0.005
    )  # this test process keeps its own
    monkeypatch.setattr(app.interpreter, "watch_from_env", lambda: None)
    for argv, env, want in (
        ([], {}, None),
        (["--weights", "fp8"], {}, "fp8"),
        ([], {"SDAR_WEIGHTS": "fp8"}, "fp8"),
    ):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(Stop):
            launch.main(["--model", str(sdar), *argv])
        assert seen["weights"] == want
        monkeypatch.delenv("SDAR_WEIGHTS", raising=False)
    assert "SDAR_WEIGHTS='int4': use dtype or fp8" in refused_start(SDAR_WEIGHTS="int4")
