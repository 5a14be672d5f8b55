"""Deploy the studio as a Hugging Face Space.

    python -m app.deploy --repo you/sdar-studio --dry-run    # the files a Space gets, and their size
    python -m app.deploy --repo you/sdar-studio              # create the Space if needed, upload them in one commit

Why `huggingface_hub.upload_folder` rather than git: the four weight files are 12-16 MB and the Hub refuses plain
files over 10 MiB; upload_folder stores them through Git LFS by itself, so nothing needs git-lfs or LFS rules, and
the Space receives exactly `space_files()` (a git push would send the repository's whole history, its tests and its
results with it). The upload is one commit; files of an earlier deploy that the set no longer holds are deleted
(the Space's `.gitattributes` is always kept).

The Space is configured by the front matter of README.md (`sdk: gradio`, `app_file: app.py`, `python_version`),
which `space_config()` reads and checks before anything is uploaded. The token is huggingface_hub's own: `hf auth
login`, or HF_TOKEN.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from sdar_core.paths import MODELS_DIR, REPO

# What a Space runs: the entry point, the dependency list it installs, its card (the front matter configures it),
# the licences that go with the shipped weights, and the one screenshot the card shows.
TOP_FILES = ("app.py", "requirements.txt", "README.md", "LICENSE", "NOTICE", "assets/screenshots/chat.png")
CODE = {"app": ("*.py", "player.js"), "sdar_core": ("*.py",)}
RESULTS = (
    REPO / "benchmarks" / "results"
)  # the race tab plots every results.json under it (app/benchmarks.py)
REQUIRED_FRONT_MATTER = {"sdk": "gradio", "app_file": "app.py"}


class DeployError(ValueError):
    """Something that stops a deploy before it starts, in words."""


def space_files(root: Path = REPO) -> list[str]:
    """The Space's files, relative to `root`, sorted: the studio's code, the library, the shipped models (every
    folder under assets/models/ with a config.json), the GPU results the race tab plots, and TOP_FILES. No tests,
    no training or benchmark code, no docs beyond the card, no caches."""
    root = Path(root)
    files = [name for name in TOP_FILES if (root / name).is_file()]
    for package, patterns in CODE.items():
        files += [str(p.relative_to(root)) for pattern in patterns for p in (root / package).glob(pattern)]
    models = root / MODELS_DIR.relative_to(REPO)
    for folder in sorted(p.parent for p in models.glob("*/config.json")):
        files += [str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file() and not _cache(p)]
    results = root / RESULTS.relative_to(REPO)
    files += [str(p.relative_to(root)) for p in results.rglob("results.json")]
    return sorted(set(files))


def _cache(path: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in path.parts) or path.suffix == ".pyc"


def space_config(root: Path = REPO) -> dict:
    """README.md's front matter, checked: what the Hub reads to build the Space."""
    text = (Path(root) / "README.md").read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise DeployError(
            "README.md has no front matter: a Space needs `sdk: gradio` and `app_file: app.py` there"
        )
    config = yaml.safe_load(text[4 : text.index("\n---", 4)])
    for key, value in REQUIRED_FRONT_MATTER.items():
        if config.get(key) != value:
            raise DeployError(
                f"README.md's front matter has {key}: {config.get(key)!r}; a Space of this studio "
                f"needs {key}: {value}"
            )
    if not str(config.get("python_version", "")).startswith("3."):
        raise DeployError('README.md\'s front matter needs python_version (e.g. "3.11")')
    return config


def stage(files: list[str], into: Path, root: Path = REPO) -> None:
    """Copy `files` from `root` into `into`, keeping their paths (hard links where the file system allows)."""
    for name in files:
        dest = into / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            dest.hardlink_to(root / name)
        except OSError:
            shutil.copy2(root / name, dest)


def deploy(repo_id: str, files: list[str], *, private: bool = False, token: str | None = None) -> str:
    """Create the Space (if it does not exist) and upload `files` as one commit; the Space's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdar-space-") as tmp:
        stage(files, Path(tmp))
        api.upload_folder(
            repo_id=repo_id,
            repo_type="space",
            folder_path=tmp,
            delete_patterns=["*"],
            commit_message="Deploy SDAR Studio (python -m app.deploy)",
        )
    return str(url)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.deploy", description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, help="the Space's id: your user or organisation / a name")
    p.add_argument("--dry-run", action="store_true", help="list the files and their size; upload nothing")
    p.add_argument("--private", action="store_true", help="create the Space private")
    args = p.parse_args(argv)
    if args.repo.count("/") != 1 or not all(args.repo.split("/")):
        p.error(f"--repo {args.repo!r}: a Space id is owner/name, e.g. you/sdar-studio")
    try:
        config = space_config()
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = space_files()
    total = sum((REPO / f).stat().st_size for f in files)
    if args.dry_run:
        for name in files:
            print(f"{(REPO / name).stat().st_size:>12,}  {name}")
        print(
            f"{len(files)} files, {total / 1e6:.1f} MB, for the Space {args.repo} (sdk {config['sdk']}, "
            f"app_file {config['app_file']}, Python {config['python_version']})"
        )
        return 0
    print(f"uploading {len(files)} files ({total / 1e6:.1f} MB) to the Space {args.repo} ...", flush=True)
    print(f"done: {deploy(args.repo, files, private=args.private)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
