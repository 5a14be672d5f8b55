"""The GPU calls' scripts (benchmarks/device_*.sh), on the CPU: a device call is scarce, so a script that would fail
on the GPU machine for a reason visible here fails here first. Each parses (`bash -n`), names every mode it runs in
its header and runs every mode its header names, and every `python3 -m benchmarks.NAME` it runs is a module of the
repository.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from sdar_core.paths import REPO

SCRIPTS = ["device_kernels.sh", "device_studio.sh"]


def modes(script: str) -> tuple[set[str], set[str]]:
    """(the modes the header's `bash benchmarks/SCRIPT MODE` lines name, the labels of the script's case)."""
    text = (REPO / "benchmarks" / script).read_text()
    header = set(re.findall(rf"^#   bash benchmarks/{re.escape(script)} ([\w-]+)", text, re.M))
    labels = {m for line in re.findall(r"^  ([\w|-]+)\)", text, re.M) for m in line.split("|")}
    return header, labels


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_device_script_parses_and_its_header_names_exactly_the_modes_it_runs(script):
    run = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    header, labels = modes(script)
    assert header == labels, {
        "named, not run": sorted(header - labels),
        "run, not named": sorted(labels - header),
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_a_device_script_runs_is_in_the_repository(script):
    text = (REPO / "benchmarks" / script).read_text()
    modules = set(re.findall(r"python3 -m benchmarks\.(\w+)", text))
    assert modules, script
    assert not [m for m in modules if not (REPO / "benchmarks" / f"{m}.py").exists()], modules
