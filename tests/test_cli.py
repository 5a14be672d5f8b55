"""`python -m sdar_core` (sdar_core/cli.py) on the shipped SDAR model: text on stdout, stats on stderr, and every bad
input - a checkpoint, a config, a decoding option, a device - as one line on stderr with exit code 2."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sdar_core.cli import main
from sdar_core.paths import MODELS_DIR, REPO

SDAR = str(MODELS_DIR / "sdar-tiny")
ASK_47_PLUS_38 = ["--prompt", "What is 47 + 38?", "--chat", "--strategy", "dynamic", "--max-new-tokens", "64"]


def test_python_m_sdar_core_answers_a_chat_prompt_and_prints_stats():
    out = subprocess.run(
        [sys.executable, "-m", "sdar_core", "--model", SDAR, *ASK_47_PLUS_38, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Answer: 85" in out.stdout
    stats = json.loads(out.stderr.strip().splitlines()[-1])
    assert stats["forwards"] < stats["new_tokens"] and stats["tpf"] > 1.5
    assert "model of type" not in out.stderr  # no transformers noise about model_type sdar


def one_line_error(capsys, *args) -> str:
    """Run the CLI in-process on bad input; it must exit with 2 and print exactly one line, the error."""
    try:
        code = main(["--prompt", "hi", "--max-new-tokens", "8", *args])
    except SystemExit as e:  # argparse rejects malformed options by exiting
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def write_config(folder, *, tokenizer: bool = True, weights: bool = False, **changes):
    """sdar-tiny's config.json (with `changes`) and tokenizer files in `folder`, the weights only if asked."""
    src = MODELS_DIR / "sdar-tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(json.loads((src / "config.json").read_text()) | changes))
    names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja") if tokenizer else ()
    shards = tuple(f.name for f in src.glob("model*.safetensors*")) if weights else ()
    for name in names + shards:
        (folder / name).write_bytes((src / name).read_bytes())
    return str(folder)


def test_checkpoint_errors_are_one_line(tmp_path, capsys):
    assert "no checkpoint folder" in one_line_error(capsys, "--model", str(tmp_path / "nope"))
    assert "safetensors" in one_line_error(capsys, "--model", write_config(tmp_path / "no-weights"))
    # transformers' own message for a folder without tokenizer files spans several lines
    err = one_line_error(
        capsys, "--model", write_config(tmp_path / "no-tokenizer", tokenizer=False, weights=True)
    )
    assert "cannot load the tokenizer" in err


def test_config_errors_are_one_line(tmp_path, capsys):
    err = one_line_error(capsys, "--model", write_config(tmp_path / "a", num_hidden_layers="many"))
    assert "'num_hidden_layers' must be an integer, got 'many'" in err
    err = one_line_error(capsys, "--model", write_config(tmp_path / "b", hidden_size=-5))
    assert "'hidden_size' must be >= 1, got -5" in err


def test_generation_errors_are_one_line(capsys):
    err = one_line_error(capsys, "--model", SDAR, "--block-length", "4", "--steps", "9")
    assert "steps must be between 1 and block_length" in err
    assert "temperature must be >= 0" in one_line_error(capsys, "--model", SDAR, "--temperature", "-1")


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_non_finite_temperature_is_one_line(capsys, value):
    assert f"--temperature: '{value}' is not a finite number" in one_line_error(
        capsys, "--model", SDAR, "--temperature", value
    )


@pytest.mark.parametrize(
    "device, words",
    [
        ("bogus", "is not a device name"),
        ("cuda:x", "is not a device name"),
        ("meta", "not meta"),
        ("cuda", "no CUDA GPU"),
    ],
)
def test_bad_devices_are_one_line(capsys, monkeypatch, device, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    assert words in one_line_error(capsys, "--model", SDAR, "--device", device)


def test_a_gpu_index_the_machine_lacks_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "has 1 CUDA GPU(s)" in one_line_error(capsys, "--model", SDAR, "--device", "cuda:3")


def test_a_missing_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--prompt" in err, err


def test_the_command_runs_from_any_folder_on_the_embedded_model(tmp_path, monkeypatch, capsys):
    """Without --model, and with the repository-relative name a README gives, from a folder outside the checkout:
    the first as its own process, the second in-process (the same resolution, without a second start-up)."""
    ask = ["--prompt", "What is 4 + 5?", "--chat", "--max-new-tokens", "16"]
    out = subprocess.run(
        [sys.executable, "-m", "sdar_core", *ask],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.returncode == 0, out.stderr
    assert "9" in out.stdout
    monkeypatch.chdir(tmp_path)
    code = main(["--model", "assets/models/sdar-tiny", *ask])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "9" in out.out


def test_a_block_length_the_model_was_not_trained_with_is_a_one_line_warning_not_an_error(tmp_path, capsys):
    model = write_config(tmp_path / "trained", weights=True, trained_block_sizes=[2, 4])
    code = main(
        [
            "--model",
            model,
            "--prompt",
            "What is 4 + 5?",
            "--chat",
            "--max-new-tokens",
            "8",
            "--block-length",
            "8",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: block_length 8 is not among the block sizes this model was trained with (2, 4)" in err
    assert (
        main(
            [
                "--model",
                model,
                "--prompt",
                "What is 4 + 5?",
                "--chat",
                "--max-new-tokens",
                "8",
                "--block-length",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "warning" not in capsys.readouterr().err


def test_finding11_undecodable_bytes_in_the_prompt_are_one_line(capsys):
    """Issue 33, finding 11: bytes that are not UTF-8 on the command line reached the tokenizer as lone
    surrogates: a TypeError traceback. The prompt's case runs as its own process (the interpreter turns the byte
    into the surrogate, and all of stderr is one line); the system message's in-process, with the surrogate the
    interpreter would make."""
    command = [sys.executable, "-m", "sdar_core", "--model", SDAR, "--max-new-tokens", "4"]
    out = subprocess.run(
        [*command, "--prompt", "caf\udce9"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        errors="surrogateescape",
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "not UTF-8 text" in out.stderr
    assert "not UTF-8 text" in one_line_error(capsys, "--model", SDAR, "--chat", "--system", "\udcff")


def test_finding11_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    from sdar_core import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    assert main(["--model", SDAR, "--prompt", "hi"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_finding11_device_cpu_0_runs_on_the_cpu(capsys):
    """'--device cpu:0' once ended with 'not a valid safetensors file (device cpu:0 is invalid)'."""
    assert main(["--model", SDAR, "--prompt", "hi", "--max-new-tokens", "4", "--device", "cpu:0"]) == 0
    assert "error" not in capsys.readouterr().err


def test_fp8_weights_answer_the_same_arithmetic_and_a_bad_choice_is_one_line(capsys):
    """The shipped model with float8 projections (--weights fp8, in-process) still answers; argparse names the
    choices of a bad value."""
    code = main([*ASK_47_PLUS_38, "--weights", "fp8", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Answer: 85" in out.out
    err = one_line_error(capsys, "--weights", "int4")
    assert "invalid choice: 'int4'" in err and "fp8" in err
