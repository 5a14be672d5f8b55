"""sdar_core: SDAR (Synergistic Diffusion-AutoRegression) models, loading, and block-diffusion decoding."""

from .config import ConfigError, ModelConfig
from .decode_params import DecodeParams
from .decoding import GenerationError, generate
from .loading import CheckpointError, load_pretrained, save_pretrained
from .model import SDARForCausalLM
from .prompting import encode_prompt, stop_ids_for
from .trace import Generation, Stats, StepEvent

__all__ = [
    "ModelConfig",
    "ConfigError",
    "CheckpointError",
    "SDARForCausalLM",
    "load_pretrained",
    "save_pretrained",
    "Generation",
    "Stats",
    "StepEvent",
    "generate",
    "DecodeParams",
    "GenerationError",
    "encode_prompt",
    "stop_ids_for",
]
