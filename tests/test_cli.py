"""`python -m sdar_core.generate` on the shipped SDAR model: text on stdout, stats on stderr, errors in words."""
import json
import subprocess
import sys

from conftest import REPO



def run(*args):
    return subprocess.run([sys.executable, "-m", "sdar_core.generate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_answers_a_chat_prompt_and_prints_stats():
    out = run("--model", "assets/models/sdar-tiny", "--prompt", "What is 47 + 38?", "--chat", "--strategy", "dynamic",
              "--max-new-tokens", "64", "--json")
    assert out.returncode == 0, out.stderr
    assert "Answer: 85" in out.stdout
    stats = json.loads(out.stderr.strip().splitlines()[-1])
    assert stats["forwards"] < stats["new_tokens"] and stats["tpf"] > 1.5
    assert "model of type" not in out.stderr  # no transformers noise about model_type sdar


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    out = run("--model", str(tmp_path / "nope"), "--prompt", "hi")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "no checkpoint folder" in out.stderr
    out = run("--model", "assets/models/sdar-tiny", "--prompt", "hi", "--block-length", "4", "--steps", "9")
    assert out.returncode == 2 and "steps must be between 1 and block_length" in out.stderr


def test_importing_the_cli_module_keeps_the_generate_function_callable():
    import sdar_core
    import sdar_core.generate  # noqa: F401  (rebinds the package attribute to the module)
    from sdar_core import generate

    assert callable(generate)
