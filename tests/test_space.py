"""A Hugging Face Space of the studio (app/deploy.py): the files it gets are the ones the studio needs and nothing
else, the README's front matter configures it, the deploy is one upload_folder commit, and a fresh virtual
environment with `requirements.txt` alone runs those files and answers the README's gradio_client example."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from app import deploy
from sdar_core.paths import REPO

from helpers import free_port

FILES = deploy.space_files()
LOCAL = ("app", "sdar_core", "training", "benchmarks", "tests", "conftest")


def module_file(name: str) -> str | None:
    """The file of a local module name (`app.ui` -> app/ui.py), or None when it is not a local module."""
    if name.split(".")[0] not in LOCAL:
        return None
    path = name.replace(".", "/")
    return path + ".py" if (REPO / (path + ".py")).is_file() else path + "/__init__.py"


def local_imports(path: str) -> set[str]:
    """The local files that `path` imports (absolute and relative imports)."""
    tree, package = (
        ast.parse((REPO / path).read_text(encoding="utf-8")),
        path.rsplit("/", 1)[0].replace("/", "."),
    )
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names |= {
                f"{module}.{alias.name}"
                for alias in node.names
                if (REPO / (module.replace(".", "/") + f"/{alias.name}.py")).is_file()
            }
    return {f for f in map(module_file, names) if f is not None}


def test_the_space_gets_every_file_the_studio_imports():
    python = [f for f in FILES if f.endswith(".py")]
    assert "app.py" in python and "app/ui.py" in python and "sdar_core/decoding.py" in python
    for path in python:
        missing = local_imports(path) - set(FILES)
        assert not missing, f"{path} imports {missing}, which the Space would not get"
    assert "app/player.js" in FILES  # read by app/player.py
    for model in ("sdar-tiny", "ar-tiny"):
        folder = REPO / "assets" / "models" / model
        assert {f"assets/models/{model}/{p.name}" for p in folder.iterdir()} <= set(FILES)


def test_the_space_gets_no_tests_results_caches_or_development_files():
    for name in FILES:
        assert not name.startswith(("tests/", "training/", "docs/", ".")), name
        assert "__pycache__" not in name and not name.endswith((".pyc", ".pyi")), name
        if name.startswith("benchmarks/"):  # only the GPU measurements the race tab plots
            assert name.startswith("benchmarks/results/") and name.endswith("/results.json"), name
        assert not name.startswith("assets/models/eval") and not name.startswith(
            "assets/models/training-logs"
        )
    assert "requirements-dev.txt" not in FILES and "pyproject.toml" not in FILES
    requirements = (REPO / "requirements.txt").read_text()
    assert not re.search(r"^(pytest|playwright|psutil|mutmut)\b", requirements, re.M)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git checkout")
def test_every_file_of_the_space_is_committed():
    tracked = set(
        subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split("\n")
    )
    assert set(FILES) <= tracked, set(FILES) - tracked


def test_the_front_matter_makes_a_gradio_space_of_this_app():
    import gradio

    config = deploy.space_config()
    assert config["sdk"] == "gradio" and config["app_file"] == "app.py" and config["python_version"] == "3.11"
    assert (
        str(config["sdk_version"]).split(".")[0] == gradio.__version__.split(".")[0]
    )  # requirements: gradio 6
    assert config["license"] == "mit"


def test_the_dry_run_lists_the_files_and_uploads_nothing(capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any use of the Hub would fail
    assert deploy.main(["--repo", "you/sdar-studio", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in out[:-1]] == FILES
    assert re.match(rf"{len(FILES)} files, [\d.]+ MB, for the Space you/sdar-studio \(sdk gradio", out[-1])


@pytest.mark.parametrize("repo", ["sdar-studio", "a/b/c", "/x"])
def test_a_space_id_is_owner_slash_name(repo, capsys):
    with pytest.raises(SystemExit) as exit_:
        deploy.main(["--repo", repo, "--dry-run"])
    assert exit_.value.code == 2 and "owner/name" in capsys.readouterr().err


def test_the_deploy_is_one_upload_of_exactly_the_file_set(monkeypatch):
    """HfApi replaced by a recorder: a gradio Space is created (or kept), and one upload_folder call sends a folder
    holding the file set, byte for byte, deleting what an earlier deploy left."""
    import huggingface_hub

    calls = []

    class Recorder:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/spaces/{repo_id}"

        def upload_folder(self, *, folder_path, **kwargs):
            root = Path(folder_path)
            sent = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            same = all(
                (root / f).read_bytes() == (REPO / f).read_bytes() for f in ("app.py", "requirements.txt")
            )
            calls.append(("upload_folder", sent, same, kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    assert deploy.main(["--repo", "you/sdar-studio"]) == 0
    (create, repo_id, created), (upload, sent, same, uploaded) = calls
    assert create == "create_repo" and repo_id == "you/sdar-studio"
    assert created["repo_type"] == "space" and created["space_sdk"] == "gradio" and created["exist_ok"]
    assert upload == "upload_folder" and sent == FILES and same
    assert uploaded["repo_type"] == "space" and uploaded["repo_id"] == "you/sdar-studio"
    assert uploaded["delete_patterns"] == ["*"]


def readme_client_example() -> tuple[str, str]:
    """The README's gradio_client snippet and the text block after it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    code, printed = re.search(
        r"```python\n(from gradio_client[^`]*)```\n\n```text\n([^`]*)```", text
    ).groups()
    return code, printed


@pytest.mark.slow
@pytest.mark.skipif(
    not (REPO / "assets" / "models" / "sdar-tiny" / "config.json").is_file(),
    reason="the embedded model is not in this checkout",
)
def test_a_fresh_venv_with_requirements_txt_alone_serves_the_space(tmp_path):
    """The Space's own install: the file set copied out of the checkout, a new virtual environment (no system
    packages, no PYTHONPATH) with torch and then requirements.txt only, `python app.py` as the Space runs it, and
    the README's gradio_client example against it, on the CPU."""
    space, venv = tmp_path / "space", tmp_path / "venv"
    try:
        serve_the_space(space, venv, tmp_path)
    finally:  # 1.5 GB: pytest keeps the temporary folders of its last runs
        shutil.rmtree(venv, ignore_errors=True)


def serve_the_space(space: Path, venv: Path, tmp_path: Path) -> None:
    deploy.stage(FILES, space)
    # Without pip of its own (ensurepip took 4 s): this interpreter's pip installs into it (--python).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    # --no-compile: compiling the .pyc files (torch's above all) took 17 of the test's 75 s
    def pip(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile", *args],
            cwd=space,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    # As .ci/run and the README do: the CPU build of torch first (this torch's release, which pip finds on this
    # machine's disk, else PyTorch's CPU index), so that requirements.txt's torch>=2.5 takes no CUDA build.
    release = torch.__version__.split("+")[0]
    if pip(f"torch=={release}").returncode != 0:
        done = pip(f"torch=={release}", "--index-url", "https://download.pytorch.org/whl/cpu")
        assert done.returncode == 0, done.stderr[-3000:]
    done = pip("-r", "requirements.txt")
    assert done.returncode == 0, done.stderr[-3000:]
    assert subprocess.run([python, "-c", "import pytest"], env=env, capture_output=True).returncode != 0

    port, log = free_port(), tmp_path / "space.log"
    # SPACE_ID, as the Hub sets it: the studio serves as a public one (app/exposure.py), offline and on the CPU.
    env |= {
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
        "SPACE_ID": "you/sdar-studio",
    }
    with open(log, "w") as out:
        app = subprocess.Popen(
            [python, "app.py", "--port", str(port)], cwd=space, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.time() + 180
        while "is running at" not in log.read_text():
            assert app.poll() is None and time.time() < deadline, (
                f"the Space did not start:\n{log.read_text()}"
            )
            time.sleep(0.5)
        assert "Traceback" not in log.read_text(), log.read_text()
        code, printed = readme_client_example()
        code = code.replace("http://127.0.0.1:7860/", f"http://127.0.0.1:{port}/")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout == printed, done.stdout
    finally:
        app.terminate()
        try:
            app.wait(timeout=20)
        except subprocess.TimeoutExpired:
            app.kill()

    # `pip install -e .` on top: the two commands, run from a folder outside the checkout, find the shipped model.
    done = pip("--no-deps", "-e", str(REPO))
    assert done.returncode == 0, done.stderr[-3000:]

    def command(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / name), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    with ThreadPoolExecutor() as pool:  # the two at once: each is its own process, mostly imports
        chat = pool.submit(command, "sdar", "--chat", "--prompt", "What is 4 + 5?", "--max-new-tokens", "24")
        studio = pool.submit(command, "sdar-studio", "--help")
    done = chat.result()
    assert done.returncode == 0 and "9" in done.stdout, done.stderr[-3000:]
    done = studio.result()
    assert done.returncode == 0 and "--allow-any-model" in done.stdout, done.stderr[-3000:]
