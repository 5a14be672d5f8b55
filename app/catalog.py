"""The SDAR family the studio offers by name, with the AR models they were trained from: one home for the list
(the registry's allow-list for a public studio reads it) and for what the model picker says about each one
before it is downloaded: parameters, memory, block size, download size.

Each entry is a shape (the config.json fields that size the weights); its parameters come from
sdar_core's ModelConfig.num_parameters, and the download is the bf16 weights (2 bytes a parameter). The shapes are
sdar_core.config.PUBLIC_SHAPES (one home with the benchmarks'); SDAR-4B-Chat and SDAR-8B-Chat match the configs
stored in tests/fixtures/ (tests/test_app_catalog.py checks the count and the download against their safetensors
index). SDAR models were trained at block 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sdar_core.config import PUBLIC_SHAPES, ModelConfig

SDAR_BLOCK = 4  # the block size the SDAR chat models were trained at (their config.json block_size)
RUNTIME_OVERHEAD = 1.2  # weights x this: the KV cache of a few thousand positions and the activations


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the hub id
    model_type: str  # sdar | sdar_moe | qwen3 | qwen3_moe
    shape: dict = field(repr=False)  # config.json's size fields (sdar_core.config.PUBLIC_SHAPES)

    @cached_property
    def config(self) -> ModelConfig:
        return ModelConfig(
            model_type=self.model_type, block_size=SDAR_BLOCK if self.is_sdar else 1, **self.shape
        )

    @property
    def is_sdar(self) -> bool:
        return self.model_type.startswith("sdar")

    @property
    def parameters(self) -> int:
        return self.config.num_parameters()

    @property
    def download_bytes(self) -> int:
        return self.parameters * 2  # bf16 safetensors

    def memory_bytes(self, bytes_per_parameter: int = 2) -> int:
        """Memory the studio needs to run it: the weights (bf16 by default) and the runtime's share."""
        return int(self.parameters * bytes_per_parameter * RUNTIME_OVERHEAD)

    @property
    def block_size(self) -> int:
        return self.config.block_size


TIED = dict(
    tie_word_embeddings=True
)  # Qwen3-1.7B and -4B share their embedding and lm_head; SDAR-4B does not
CATALOG = (
    ModelSpec("JetLM/SDAR-1.7B-Chat", "sdar", PUBLIC_SHAPES["1.7b"]),
    ModelSpec("JetLM/SDAR-4B-Chat", "sdar", PUBLIC_SHAPES["4b"]),
    ModelSpec("JetLM/SDAR-8B-Chat", "sdar", PUBLIC_SHAPES["8b"]),
    ModelSpec("JetLM/SDAR-30B-A3B-Chat", "sdar_moe", PUBLIC_SHAPES["30b-a3b"]),
    ModelSpec("Qwen/Qwen3-1.7B", "qwen3", PUBLIC_SHAPES["1.7b"] | TIED),
    ModelSpec("Qwen/Qwen3-4B", "qwen3", PUBLIC_SHAPES["4b"] | TIED),
    ModelSpec("Qwen/Qwen3-8B", "qwen3", PUBLIC_SHAPES["8b"]),
    ModelSpec("Qwen/Qwen3-30B-A3B", "qwen3_moe", PUBLIC_SHAPES["30b-a3b"]),
)
BY_NAME = {spec.name: spec for spec in CATALOG}
NAMES = tuple(BY_NAME)


def spec_for(name) -> ModelSpec | None:
    return BY_NAME.get(name.strip()) if isinstance(name, str) else None


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def spec_markdown(spec: ModelSpec) -> str:
    """What the picker says about a catalog model before it is downloaded."""
    c = spec.config
    kind = (
        "SDAR (block diffusion), trained at block size " + str(spec.block_size)
        if spec.is_sdar
        else "autoregressive (the AR model an SDAR model was trained from)"
    )
    experts = f" · {c.num_experts} experts, {c.num_experts_per_tok} active" if c.num_experts else ""
    return (
        f"**{spec.name}** — {kind}  \n"
        f"{spec.parameters / 1e9:.2f} B parameters · {c.num_hidden_layers} layers × {c.hidden_size}{experts}  \n"
        f"needs about **{gigabytes(spec.memory_bytes())}** of memory in bf16 · download "
        f"**{gigabytes(spec.download_bytes)}**"
    )
