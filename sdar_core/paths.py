"""Where this checkout keeps its own files (the embedded models, the committed results), found from the package."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "assets" / "models"


def in_repo(path: str | Path) -> Path:
    """A path as the checkout's tools write it (relative to the repository root), wherever they run from;
    an absolute path is itself."""
    return REPO / path
