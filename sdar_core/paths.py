"""Where this checkout keeps its own files (the embedded models, the committed results), found from the package."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "assets" / "models"
DEFAULT_MODEL = MODELS_DIR / "sdar-tiny"


def in_checkout(name: str) -> str:
    """`name` as typed when it exists from the working directory; else, when it is a relative path that exists in this
    checkout (`assets/models/sdar-tiny`), that path: the shipped files are found from any folder."""
    try:
        path = Path(name)
        if path.is_absolute() or path.exists() or not (REPO / path).exists():
            return name
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: the caller refuses it
        return name
    return str(REPO / path)
