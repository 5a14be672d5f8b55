"""The licences agree with each other: LICENSE, pyproject.toml and the Space front matter for the code; the model
cards, NOTICE and the studio for the shipped weights; NOTICE and the model card for every training source that
training/corpus.py names."""

from __future__ import annotations

import shutil
import tomllib

import pytest
import yaml

from app.registry import ModelRegistry
from app.render import model_markdown
from sdar_core.loading import CheckpointError, model_card
from sdar_core.paths import REPO
from training import corpus

MODELS = REPO / "assets" / "models"
NOTICE = (REPO / "NOTICE").read_text(encoding="utf-8")
MODEL_CARD = (MODELS / "README.md").read_text(encoding="utf-8")
FIRST_LINE_TO_SPDX = {"MIT License": "MIT"}  # the licence file's title -> its SPDX id


def front_matter(path) -> dict:
    """The YAML between the leading '---' lines of a Markdown file (parsed here, independently of model_card)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "---", f"{path} has no front matter"
    end = lines.index("---", 1)
    return yaml.safe_load("\n".join(lines[1:end]))


def table_rows(text: str, key: str) -> list[str]:
    """The Markdown table rows of `text` that contain `key`."""
    return [line for line in text.splitlines() if line.startswith("|") and key in line]


def shipped_models() -> list[str]:
    return sorted(p.name for p in MODELS.iterdir() if (p / "config.json").is_file())


def test_code_licence_agrees_in_license_pyproject_and_space_front_matter():
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    spdx = FIRST_LINE_TO_SPDX[licence.splitlines()[0]]
    assert "Permission is hereby granted, free of charge" in licence
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == spdx
    assert "LICENSE" in project["license-files"] and "NOTICE" in project["license-files"]
    assert all((REPO / f).is_file() for f in project["license-files"])
    assert front_matter(REPO / "README.md")["license"] == spdx.lower()


def test_every_shipped_model_names_one_licence_everywhere():
    models = shipped_models()
    assert {"sdar-tiny", "ar-tiny"} <= set(models)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in models:
        rows = [row for row in table_rows(MODEL_CARD, name) if row.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"assets/models/README.md needs one licence row for {name}, found {rows}"
        licence = rows[0].split("|")[2].strip().strip("`")
        card = front_matter(MODELS / name / "README.md")
        assert card["license"] == licence, name
        assert f"assets/models/{name}" in NOTICE and licence in NOTICE
        if "-nc" in licence:  # non-commercial weights: every statement says so, and why
            assert "non-commercial" in card["license_note"] and "Alpaca" in card["license_note"]
            assert "non-commercial" in rows[0]
            assert f"assets/models/{name}" in readme and "non-commercial" in readme


def test_notice_and_model_card_list_every_training_source_with_its_licence():
    assert corpus.SOURCES
    for src in corpus.SOURCES:
        for package in src.packages:
            rows = table_rows(NOTICE, package)
            assert rows, f"NOTICE does not list package {package} of source {src.name}"
            assert any(src.licence in row for row in rows), (
                f"NOTICE: {package} without licence {src.licence!r}"
            )
        card_rows = table_rows(MODEL_CARD, f"`{src.packages[0]}`")
        assert any(src.licence.lower() in row.lower() for row in card_rows), f"model card: {src.name}"
    alpaca = str(corpus.ALPACA_PATH.relative_to(REPO))  # shipped, no longer trained on
    assert any(corpus.ALPACA_LICENCE in row for row in table_rows(NOTICE, alpaca))
    assert "training/synthetic.py" in NOTICE


def test_model_card_reads_the_front_matter_and_names_a_broken_card(tmp_path):
    assert model_card(tmp_path) == {}  # no README.md
    assert model_card("JetLM/SDAR-1.7B-Chat") == {}  # a hub id: nothing local to read
    (tmp_path / "README.md").write_text("# no front matter\n\nlicense: mit\n")
    assert model_card(tmp_path) == {}
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n  - a\n---\n\n# card\n---\n")
    assert model_card(tmp_path) == {"license": "apache-2.0", "tags": ["a"]}
    (tmp_path / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    with pytest.raises(CheckpointError, match="README.md.*not valid YAML"):
        model_card(tmp_path)
    for name in shipped_models():
        assert model_card(MODELS / name) == front_matter(MODELS / name / "README.md")


def test_studio_shows_the_licence_of_the_loaded_model(tmp_path):
    registry = ModelRegistry(device="cpu", allow_any_model=True)  # a local operator: any folder
    m = registry.get("assets/models/sdar-tiny")
    text = model_markdown(m.summary, name=m.name, context=m.context)
    note = front_matter(MODELS / "sdar-tiny" / "README.md")["license_note"]
    assert "licence **mit**" in text and note in text
    shutil.copytree(MODELS / "sdar-tiny", tmp_path / "plain", ignore=shutil.ignore_patterns("README.md"))
    m = registry.get(str(tmp_path / "plain"))  # the same weights without a model card
    assert "licence **" not in model_markdown(m.summary, name=m.name, context=m.context)
