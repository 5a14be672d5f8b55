"""app/launch.py's SDAR_KERNEL_CACHE: the kernel caches' variables point under the folder (their own settings win),
an unset variable changes nothing, and a folder that cannot be written is refused with its reason; `python app.py`
with a bad folder stops with that message, not a stack trace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    env = {**os.environ, "SDAR_KERNEL_CACHE": str(blocker), "GRADIO_ANALYTICS_ENABLED": "False"}
    run = subprocess.run(
        [sys.executable, "app.py", "--port", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "cannot hold the kernel caches" in run.stderr
    assert "Traceback" not in run.stderr
