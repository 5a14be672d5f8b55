"""The README and docs/ stay true: their Python snippets and command-line example run and print what the page says
(`...` stands for what depends on the machine), their commands write outside the committed files, their links
lead somewhere, and the facts they quote (a memory table, a count) match the code."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdar_core.paths import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = (
    "# Not run by the tests"  # the first line of a snippet that needs a GPU, a download or a running studio
)
ENV = {
    **os.environ,
    "CUDA_VISIBLE_DEVICES": "",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONPATH": str(REPO),
}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    code: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    found, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)", lines[i])
        if m:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append(Block(page, i + 1, m.group(1), "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        i += 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def expected_after(block: Block) -> str | None:
    """The text block right after `block` on its page: what it prints."""
    same = [b for b in ALL if b.page == block.page]
    nxt = same[same.index(block) + 1] if same.index(block) + 1 < len(same) else None
    return nxt.code if nxt is not None and nxt.lang == "text" else None


def matches(expected: str, printed: str) -> bool:
    """Line by line; `...` inside a line stands for any text (a speed, a time)."""
    pattern = "".join(
        ".*?".join(re.escape(part) for part in line.split("...")) + r"\n"
        for line in expected.strip("\n").splitlines()
    )
    return re.fullmatch(pattern, printed.strip("\n") + "\n") is not None


def shell_lines() -> list[tuple[Block, str]]:
    """Every command of the pages' shell blocks (continuation lines joined, comments dropped)."""
    out = []
    for b in (b for b in ALL if b.lang == "bash"):
        for command in b.code.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            if command and not command.startswith("#"):
                out.append((b, command))
    return out


def inline_commands() -> list[str]:
    """The `python -m ...` commands quoted inside the pages' sentences."""
    return [
        " ".join(c.split())
        for page in PAGES
        for c in re.findall(r"`(python -m [^`]+)`", page.read_text(encoding="utf-8"))
    ]


def run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


RUNNABLE = [
    b for b in ALL if b.lang == "python" and not b.code.startswith(NOT_RUN) and "gradio_client" not in b.code
]


def test_the_pages_have_runnable_snippets_and_expected_outputs():
    assert RUNNABLE and all(expected_after(b) is not None for b in RUNNABLE[:1])


@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_a_python_snippet_runs_from_any_folder_and_prints_what_the_page_says(block, tmp_path):
    done = run([sys.executable, "-c", block.code], cwd=tmp_path)
    assert done.returncode == 0, f"{block}:\n{done.stderr[-3000:]}"
    expected = expected_after(block)
    if expected is not None:
        assert matches(expected, done.stdout), f"{block} printed:\n{done.stdout}\nthe page says:\n{expected}"


@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "python" and b not in RUNNABLE], ids=str)
def test_a_snippet_not_run_here_still_compiles_and_imports_what_exists(block):
    compile(block.code, str(block), "exec")
    for module, names in re.findall(r"^from (sdar_core\S*) import (.+)$", block.code, re.M):
        imported = __import__(module, fromlist=["_"])
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(imported, name), f"{block}: {module} has no {name}"


def test_the_command_line_example_prints_what_the_python_example_prints(tmp_path):
    """The README's CLI line prints the same lines as the Generate snippet (text on stdout, stats on stderr)."""
    [(block, command)] = [(b, c) for b, c in shell_lines() if c.startswith("python -m sdar_core")]
    same = [b for b in ALL if b.page == block.page]
    expected = next(b for b in reversed(same[: same.index(block)]) if b.lang == "text").code
    args = shlex.split(command)
    done = run([sys.executable, *args[1:]], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = done.stdout + "\n".join(line for line in done.stderr.splitlines() if "tokens/s" in line)
    assert matches(expected, printed), f"{command} printed:\n{printed}\n{block.page.name} says:\n{expected}"


def test_the_training_example_takes_lr_1e_4(tmp_path):
    """The override example (lr=1e-4: YAML 1.1 reads it as text) trains, with its output folder moved to tmp."""
    [command] = [c for _, c in shell_lines() if c.startswith("python -m training.train") and "lr=1e-4" in c]
    args = [re.sub(r"^output_dir=.*", f"output_dir={tmp_path / 'run'}", a) for a in shlex.split(command)]
    done = run([sys.executable, *args[1:], "--no-progress"], cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "config.json").is_file()


OUTPUT_FLAGS = re.compile(r"(?:--out|--runs|--workdir|output_dir=)[ =]?(\S+)")


def tracked(path: str) -> bool:
    return (
        subprocess.run(["git", "ls-files", "--error-unmatch", path], cwd=REPO, capture_output=True).returncode
        == 0
    )


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs the git checkout (which files are committed)")
def test_every_command_in_the_pages_writes_outside_the_committed_files():
    commands = [c for _, c in shell_lines()] + inline_commands()
    outputs = [(c, m) for c in commands for m in OUTPUT_FLAGS.findall(c)]
    assert len(outputs) >= 8, outputs
    for command, path in outputs:
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0
        assert not tracked(path) and (ignored or path.startswith("/tmp")), f"{command!r} writes to {path}"
    for command in (c for c in commands if c.startswith("python -m ") and not c.split()[2].endswith("...")):
        assert importlib.util.find_spec(command.split()[2]) is not None, command


def test_a_documented_default_output_is_git_ignored():
    """The defaults of the commands the pages show, when no folder is named."""
    from benchmarks import evaluate, latency, mutation  # noqa: F401  (they must import)
    from training import build_embedded, tokenizer

    defaults = [mutation.OUT]
    for module in (tokenizer, build_embedded, evaluate, latency):
        source = Path(module.__file__).read_text()
        defaults += re.findall(r'"--out",\s*default="([^"]+)"', source)
    assert len(defaults) == 5, defaults
    for path in defaults:
        assert path.startswith("out/") and not tracked(path), path


def test_bench_report_reads_a_committed_folder_and_writes_nothing_there(tmp_path, capsys):
    from benchmarks import bench

    folder = REPO / "benchmarks" / "results" / "h200-sdar-1.7b-fused"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert bench.main(["--report", str(folder)]) == 0
    assert "Measured by" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert bench.main(["--report", str(folder), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.json").is_file()


def test_the_performance_page_prints_the_report_of_the_folder_it_names():
    """docs/performance.md's summary and tables are `bench --report` of the committed folder its mark names, word for
    word: writing them again (`--page`) changes nothing."""
    from benchmarks.bench import page_with_report

    page = (REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    (folder,) = re.findall(
        r"<!-- written by `python -m benchmarks.bench --report (\S+) --page docs/performance.md`", page
    )
    assert folder.startswith("benchmarks/results/")
    assert page_with_report(page, folder, "docs/performance.md", root=REPO) == page


def test_links_between_the_pages_lead_to_files():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_no_page_refers_to_issue_numbers():
    for page in PAGES:
        assert not re.search(r"\bissues? \d+", page.read_text(encoding="utf-8"), re.I), page.name


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 160


def test_the_memory_table_is_the_catalogs():
    from app.catalog import spec_for

    rows = re.findall(
        r"^\| `(JetLM/[^`]+)`[^|]* \| ([\d.]+) B \| ([\d.]+) GB \| ([\d.]+) GB \|$",
        (REPO / "README.md").read_text(encoding="utf-8"),
        re.M,
    )
    assert len(rows) == 4
    for name, params, download, memory in rows:
        spec = spec_for(name)
        assert (params, download, memory) == (
            f"{spec.parameters / 1e9:.1f}",
            f"{spec.download_bytes / 1e9:.1f}",
            f"{spec.memory_bytes() / 1e9:.1f}",
        ), name


def test_the_hostile_folder_count_is_the_tests():
    import test_loading_hostile

    text = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    [count] = re.findall(r"builds (\d+) hostile checkpoint folders", text)
    assert int(count) == len(test_loading_hostile.CASES)


def test_the_multi_gpu_launch_lines_are_the_ones_the_page_names():
    from benchmarks import multi_gpu

    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    gpu, cpu = multi_gpu.gpu_plan().launcher(2, 29500), multi_gpu.cpu_plan().launcher(2, 29500)
    assert gpu[:2] == ["accelerate", "launch"] and "`accelerate launch` on GPUs" in text
    assert cpu[1:3] == ["-m", "torch.distributed.run"] and "`torch.distributed.run`" in text
