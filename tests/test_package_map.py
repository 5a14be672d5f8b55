"""Every package's docstring is its map: it names each of the package's modules, so a new module is placed on it."""

from __future__ import annotations

import ast
import re

import pytest

from sdar_core.paths import REPO

PACKAGES = ["sdar_core", "app", "training", "benchmarks"]


@pytest.mark.parametrize("package", PACKAGES)
def test_the_package_docstring_names_every_module(package):
    folder = REPO / package
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))) or ""
    modules = sorted(f.name for f in folder.glob("*.py") if f.name != "__init__.py")
    assert modules, folder
    missing = [
        m for m in modules if not re.search(rf"(?<![\w./]){re.escape(m)}", doc)
    ]  # attention.py is not decode_attention.py
    assert not missing, f"{package}/__init__.py does not name {', '.join(missing)}"
