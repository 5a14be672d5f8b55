"""Where this checkout keeps its own files (the embedded models, the committed results), found from the package."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "assets" / "models"
