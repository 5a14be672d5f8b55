"""Hostile chat templates and model cards (issue 33, finding 5): a checkpoint's chat template is its publisher's
code; one that loops or builds gigabytes of text once took 4 GB in 7-24 s, or 195 s and an 82 MB prompt, in the
library, the CLI and the studio. Now it renders in sdar_core.template_sandbox (a worker process with a deadline, an
output cap and a memory limit) and is refused in seconds with a clear message; model cards and tokenizer files are
read up to a size cap."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tracemalloc

import psutil
import pytest

from sdar_core.paths import MODELS_DIR, REPO
from sdar_core.template_sandbox import TemplateError, TemplateSandbox

SDAR = MODELS_DIR / "sdar-tiny"
LOOPS = (
    "{% for i in range(99999) %}{% for j in range(99999) %}{{ messages[0].content }}{% endfor %}{% endfor %}"
)
DOUBLING = (
    "{% set ns = namespace(s='ab') %}{% for i in range(48) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    "{{ ns.s }}"
)
HUGE = "{{ 'x' * 3000000 }}"
SILENT_LOOP = (
    "{% set ns = namespace(n=0) %}{% for i in range(99999) %}{% for j in range(99999) %}"
    "{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}{{ ns.n }}"
)
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def sandbox():
    # 128 MB, not the default 512: the doubling template meets the cap in ~0.05 s rather than ~0.4 (which two busy
    # test workers stretched past the 2 s deadline once), and the loops still meet the deadline.
    box = TemplateSandbox(deadline=2.0, max_memory=128 << 20)
    yield box
    box.close()


def rss() -> int:
    return psutil.Process().memory_info().rss


@pytest.mark.parametrize(
    "template, words",
    [
        (LOOPS, "within 2 s"),
        (SILENT_LOOP, "within 2 s"),
        (DOUBLING, "MB a render may take"),
        (HUGE, "characters"),
    ],
    ids=["nested-loops", "silent-loops", "doubling", "huge-literal"],
)
def test_finding5_a_runaway_template_is_refused_in_seconds_with_bounded_memory(sandbox, template, words):
    sandbox.render("{{ 'warm' }}", USER, {})  # the worker's start is not the template's time
    before, t0 = rss(), time.monotonic()
    with pytest.raises(TemplateError, match="chat template") as e:
        sandbox.render(template, USER, {"eos_token": "<|im_end|>"})
    assert time.monotonic() - t0 < 4.0
    assert words in str(e.value), str(e.value)
    assert rss() - before < 20 << 20  # the caller's memory: the text never reached it
    assert sandbox.render("{{ messages[0].content }}!", USER, {}) == "hi!"  # a fresh worker after a kill


def test_finding5_template_errors_are_plain_messages(sandbox):
    with pytest.raises(TemplateError, match="TemplateError: no tools here"):
        sandbox.render("{{ raise_exception('no tools here') }}", USER, {})
    with pytest.raises(TemplateError, match="TemplateSyntaxError"):
        sandbox.render("{% for %}", USER, {})
    with pytest.raises(TemplateError, match="SecurityError|access to attribute"):
        sandbox.render("{{ messages.__class__.__mro__ }}", USER, {})
    with pytest.raises(TemplateError, match="at most 1,048,576 are rendered"):
        sandbox.render("x" * (1 << 21), USER, {})


@pytest.mark.parametrize(
    "folder", [SDAR, REPO / "tests" / "fixtures" / "sdar-4b-chat"], ids=["embedded", "sdar-4b"]
)
def test_the_sandbox_renders_what_transformers_renders(folder):
    from transformers import AutoTokenizer

    from sdar_core.template_sandbox import SANDBOX

    tok = AutoTokenizer.from_pretrained(str(folder))
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because."},
        {"role": "user", "content": "<|im_end|> ok"},
    ]
    assert SANDBOX.render(
        tok.get_chat_template(), conversation, dict(tok.special_tokens_map)
    ) == tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def hostile_checkpoint(tmp_path, template: str | None = None, card: bytes | None = None):
    folder = tmp_path / "hostile"
    shutil.copytree(SDAR, folder)
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    if card is not None:
        (folder / "README.md").write_bytes(card)
    return folder


def test_finding5_the_library_refuses_a_runaway_template(tmp_path, monkeypatch):
    from sdar_core import encode_prompt, load_pretrained
    from sdar_core.template_sandbox import SANDBOX

    monkeypatch.setattr(SANDBOX, "deadline", 2.0)
    _, tok = load_pretrained(hostile_checkpoint(tmp_path, LOOPS), device="cpu")
    SANDBOX.render("{{ 'warm' }}", USER, {})  # the worker's start is not the template's time
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="did not finish rendering within 2 s"):
        encode_prompt(tok, "hi", chat=True)
    assert time.monotonic() - t0 < 5


def test_finding5_the_studio_refuses_a_runaway_template_with_a_readable_message(monkeypatch):
    from transformers import AutoTokenizer

    from app.errors import user_message
    from app.prompting import prompt_ids
    from sdar_core.template_sandbox import SANDBOX

    monkeypatch.setattr(SANDBOX, "deadline", 2.0)
    tok = AutoTokenizer.from_pretrained(str(SDAR))
    tok.chat_template = SILENT_LOOP
    SANDBOX.render("{{ 'warm' }}", USER, {})  # the worker's start is not the template's time
    t0 = time.monotonic()
    with pytest.raises(ValueError) as e:
        prompt_ids(tok, USER)
    assert time.monotonic() - t0 < 5
    assert user_message(e.value).startswith("The chat template did not finish rendering within 2 s")


def test_finding5_the_cli_refuses_a_runaway_template_in_one_line(tmp_path):
    t0 = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdar_core",
            "--model",
            str(hostile_checkpoint(tmp_path, DOUBLING)),
            "--prompt",
            "hi",
            "--chat",
            "--max-new-tokens",
            "4",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("error: the chat template") and time.monotonic() - t0 < 60


def test_finding5_a_model_card_is_read_up_to_its_cap(tmp_path):
    from sdar_core.loading import MAX_CARD_BYTES, CheckpointError, model_card

    head = b"---\nlicense: apache-2.0\n---\n"
    folder = hostile_checkpoint(tmp_path, card=head + b"x" * (64 << 20))
    tracemalloc.start()
    try:
        assert model_card(folder) == {"license": "apache-2.0"}
        assert tracemalloc.get_traced_memory()[1] < 4 * MAX_CARD_BYTES
    finally:
        tracemalloc.stop()
    (folder / "README.md").write_bytes(
        b"---\nlicense: mit\nnote: " + b"y" * (2 * MAX_CARD_BYTES) + b"\n---\n"
    )
    assert model_card(folder) == {}  # front matter that does not end within the cap: none
    laughs = (
        b"---\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        b"license_note: *b\n---\n"
    )
    (folder / "README.md").write_bytes(laughs)
    with pytest.raises(CheckpointError, match="aliases"):
        model_card(folder)


def test_finding5_oversized_tokenizer_files_are_refused_before_they_are_read(tmp_path):
    from sdar_core import CheckpointError, load_pretrained

    folder = hostile_checkpoint(tmp_path, template="{# #}" + " " * (2 << 20))
    with pytest.raises(CheckpointError, match="chat_template.jinja holds 2,097,157 bytes; at most 1,048,576"):
        load_pretrained(folder, device="cpu")
