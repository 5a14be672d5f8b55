"""sdar_core: SDAR (Synergistic Diffusion-AutoRegression) models, loading, and block-diffusion decoding."""
from .config import ConfigError, ModelConfig
from .loading import CheckpointError, load_pretrained, save_pretrained
from .model import SDARForCausalLM
from .trace import Generation, Stats, StepEvent

__all__ = ["ModelConfig", "ConfigError", "CheckpointError", "SDARForCausalLM", "load_pretrained",
           "save_pretrained", "Generation", "Stats", "StepEvent"]
from .decoding import GenerationError, generate  # noqa: E402

from .prompting import encode_prompt, stop_ids_for  # noqa: E402

__all__ += ["generate", "GenerationError", "encode_prompt", "stop_ids_for"]
