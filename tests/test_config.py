"""ModelConfig from the real SDAR configs, a Qwen3-30B-A3B style MoE config, and transformers' own configs.

Independent references: the byte size of the real SDAR checkpoints (their safetensors index `total_size`, all
bfloat16, 2 bytes a parameter), the parameter count of an instantiated model, transformers' config classes,
and the Qwen3-MoE layer rule written out as explicit lists.
"""

from __future__ import annotations

import json

import pytest
from transformers import Qwen3Config, Qwen3MoeConfig

from sdar_core.config import INT_BOUNDS, MAX_EXPERT_MLPS, ConfigError, ModelConfig, sparse_layer_count

from helpers import FIXTURES, random_model, tiny_config

SDAR_4B = json.loads((FIXTURES / "sdar-4b-chat" / "config.json").read_text())
SDAR_8B = json.loads((FIXTURES / "sdar-8b-chat-config.json").read_text())
# metadata.total_size of the published model.safetensors.index.json files (bf16: 2 bytes per parameter)
SDAR_4B_BYTES = json.loads((FIXTURES / "sdar-4b-chat-index.json").read_text())["metadata"]["total_size"]
SDAR_8B_BYTES = 16_381_470_720  # SDAR-8B-Chat/model.safetensors.index.json

QWEN3_30B_A3B = {  # the layout of Qwen/Qwen3-30B-A3B's config.json
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "use_sliding_window": False,
    "sliding_window": None,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "bfloat16",
    "output_router_logits": False,
    "router_aux_loss_coef": 0.001,
}
SDAR_30B_A3B = {
    **QWEN3_30B_A3B,
    "model_type": "sdar_moe",
    "architectures": ["SDARMoeForCausalLM"],
    "block_size": 4,
    "mask_token_id": 151669,
    "eos_token_id": 151643,
}


def model_parameter_count(config: ModelConfig) -> int:
    return sum(p.numel() for p in random_model(config).parameters())  # tied weights counted once


# --- the real configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, hidden, inter, expected_bytes",
    [(SDAR_4B, 2560, 9728, SDAR_4B_BYTES), (SDAR_8B, 4096, 12288, SDAR_8B_BYTES)],
    ids=["SDAR-4B-Chat", "SDAR-8B-Chat"],
)
def test_sdar_chat_configs_parse_to_the_published_shapes_and_parameter_count(
    raw, hidden, inter, expected_bytes
):
    c = ModelConfig.from_dict(raw)
    assert (c.model_type, c.vocab_size, c.hidden_size, c.intermediate_size) == ("sdar", 151936, hidden, inter)
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (36, 32, 8, 128)
    assert c.block_size == 4 and c.mask_token_id == 151669 and c.eos_token_ids == [151643]
    assert c.rope_theta == 1_000_000 and c.rms_norm_eps == 1e-6 and c.tie_word_embeddings is False
    assert c.is_sdar and not c.is_moe and not any(c.layer_is_sparse(i) for i in range(36))
    assert c.torch_dtype == "bfloat16"
    assert c.num_parameters() == expected_bytes // 2  # every tensor of the checkpoint is bf16
    assert (
        c.extra["auto_map"]["AutoModelForCausalLM"] == "modeling_sdar.SDARForCausalLM"
    )  # kept, not modelled


def test_sdar_4b_has_about_4_4_billion_parameters_untied():
    c = ModelConfig.from_dict(SDAR_4B)
    assert round(c.num_parameters() / 1e9, 2) == 4.41
    # The same network with tied embeddings is Qwen3-4B's published 4.02B.
    tied = ModelConfig.from_dict({**SDAR_4B, "tie_word_embeddings": True})
    assert round(tied.num_parameters() / 1e9, 2) == 4.02


def test_qwen3_30b_a3b_config_parses_as_moe_with_every_layer_sparse():
    c = ModelConfig.from_dict(QWEN3_30B_A3B)
    assert c.model_type == "qwen3_moe" and c.is_moe and not c.is_sdar and c.block_size == 1
    assert (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (128, 8, 768)
    assert c.norm_topk_prob is True and c.mlp_only_layers == []
    assert all(c.layer_is_sparse(i) for i in range(48))
    assert round(c.num_parameters() / 1e9, 1) == 30.5  # the model card's "30.5B total"


def test_sdar_moe_config_is_both_sdar_and_moe():
    c = ModelConfig.from_dict(SDAR_30B_A3B)
    assert c.is_sdar and c.is_moe and c.block_size == 4 and c.mask_token_id == 151669
    assert c.num_parameters() == ModelConfig.from_dict(QWEN3_30B_A3B).num_parameters()


def test_ar_configs_default_to_block_size_1():
    raw = {k: v for k, v in SDAR_4B.items() if k not in ("block_size", "mask_token_id")}
    c = ModelConfig.from_dict({**raw, "model_type": "qwen3"})
    assert c.block_size == 1 and not c.is_sdar and c.mask_token_id is None


# --- transformers' own config classes ------------------------------------------------------------------


def test_transformers_qwen3_config_dict_parses_with_rope_parameters():
    hf = Qwen3Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=12345.0,
        tie_word_embeddings=True,
    ).to_dict()
    c = ModelConfig.from_dict(hf)
    assert (c.model_type, c.vocab_size, c.hidden_size, c.head_dim, c.num_key_value_heads) == (
        "qwen3",
        128,
        64,
        16,
        2,
    )
    assert c.rope_theta == 12345.0 and c.tie_word_embeddings is True and c.block_size == 1


def test_transformers_qwen3_moe_config_dict_parses_num_local_experts():
    hf = Qwen3MoeConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=8,
        num_experts_per_tok=2,
        decoder_sparse_step=2,
        mlp_only_layers=[3],
        norm_topk_prob=False,
    ).to_dict()
    c = ModelConfig.from_dict(hf)
    assert (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (8, 2, 32)
    assert c.norm_topk_prob is False and c.mlp_only_layers == [3] and c.decoder_sparse_step == 2
    assert [c.layer_is_sparse(i) for i in range(4)] == [False, True, False, False]


# --- parameter counts against instantiated models ------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        tiny_config("sdar"),
        tiny_config("qwen3", tie_word_embeddings=True),
        tiny_config("qwen3", attention_bias=True),
        tiny_config("qwen3_moe", layers=3),
        tiny_config("qwen3_moe", layers=4, decoder_sparse_step=2, mlp_only_layers=[1]),
        tiny_config("sdar_moe", layers=3, mlp_only_layers=[0], tie_word_embeddings=True),
    ],
    ids=["sdar", "qwen3-tied", "qwen3-attention-bias", "qwen3-moe", "moe-step2-mlp-only", "sdar-moe-tied"],
)
def test_num_parameters_equals_instantiated_model_parameter_count(config):
    assert config.num_parameters() == model_parameter_count(config)


# --- the Qwen3-MoE layer rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, mlp_only, expected",
    [
        (1, [], [True] * 6),
        (2, [], [False, True, False, True, False, True]),
        (3, [], [False, False, True, False, False, True]),
        (1, [0, 4], [False, True, True, True, False, True]),
        (2, [3], [False, True, False, False, False, True]),
    ],
)
def test_layer_is_sparse_follows_decoder_sparse_step_and_mlp_only_layers(step, mlp_only, expected):
    c = tiny_config("qwen3_moe", layers=6, decoder_sparse_step=step, mlp_only_layers=mlp_only)
    assert [c.layer_is_sparse(i) for i in range(6)] == expected


def test_dense_config_has_no_sparse_layer():
    c = tiny_config("sdar", layers=4)
    assert not c.is_moe and not any(c.layer_is_sparse(i) for i in range(4))


# --- round trip ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [SDAR_4B, QWEN3_30B_A3B, SDAR_30B_A3B], ids=["sdar", "qwen3_moe", "sdar_moe"])
def test_to_dict_round_trips_and_keeps_unmodelled_keys(raw):
    c = ModelConfig.from_dict(raw)
    again = ModelConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.extra == c.extra
    assert {k for k in raw if raw[k] is not None} <= set(c.to_dict()) | {"rope_scaling"}


def test_dense_to_dict_writes_no_moe_fields():
    d = ModelConfig.from_dict(SDAR_4B).to_dict()
    assert not {"num_experts", "num_experts_per_tok", "moe_intermediate_size", "mlp_only_layers"} & set(d)


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"]
)
def test_dense_config_missing_field_error_names_the_field(field):
    raw = {k: v for k, v in SDAR_4B.items() if k != field}
    with pytest.raises(ConfigError, match=repr(field)):
        ModelConfig.from_dict(raw)


@pytest.mark.parametrize("field", ["moe_intermediate_size", "num_experts", "num_experts_per_tok"])
def test_moe_config_missing_field_error_names_the_field(field):
    raw = {k: v for k, v in QWEN3_30B_A3B.items() if k != field}
    with pytest.raises(ConfigError, match=repr(field)):
        ModelConfig.from_dict(raw)


def test_moe_config_without_dense_layers_does_not_need_intermediate_size():
    raw = {k: v for k, v in QWEN3_30B_A3B.items() if k != "intermediate_size"}
    assert ModelConfig.from_dict(raw).is_moe


@pytest.mark.parametrize(
    "changes",
    [{"mlp_only_layers": [5]}, {"decoder_sparse_step": 2}],
    ids=["mlp_only_layers", "decoder_sparse_step"],
)
def test_moe_config_with_dense_layers_needs_intermediate_size(changes):
    raw = {k: v for k, v in QWEN3_30B_A3B.items() if k != "intermediate_size"}
    with pytest.raises(ConfigError, match="'intermediate_size'"):
        ModelConfig.from_dict({**raw, **changes})


def test_missing_model_type_is_named():
    with pytest.raises(ConfigError, match="'model_type'"):
        ModelConfig.from_dict({k: v for k, v in SDAR_4B.items() if k != "model_type"})


def test_unknown_model_type_lists_the_supported_ones():
    with pytest.raises(
        ConfigError, match=r"unknown model_type 'llama'; supported: sdar, sdar_moe, qwen3, qwen3_moe"
    ):
        ModelConfig.from_dict({**SDAR_4B, "model_type": "llama"})


@pytest.mark.parametrize("field, value", [("hidden_size", 0), ("block_size", 0), ("num_key_value_heads", -1)])
def test_non_positive_size_error_names_the_field_and_value(field, value):
    with pytest.raises(ConfigError, match=rf"'{field}' must be >= 1, got {value}"):
        ModelConfig.from_dict({**SDAR_4B, field: value})


@pytest.mark.parametrize("field", ["hidden_size", "block_size", "num_attention_heads"])
def test_wrong_type_error_names_the_field(field):
    with pytest.raises(ConfigError, match=repr(field)):
        ModelConfig.from_dict({**SDAR_4B, field: "4"})


def test_heads_not_a_multiple_of_kv_heads_names_both():
    with pytest.raises(ConfigError, match=r"num_attention_heads \(32\).*num_key_value_heads \(6\)"):
        ModelConfig.from_dict({**SDAR_4B, "num_key_value_heads": 6})


def test_top_k_above_expert_count_names_both():
    with pytest.raises(ConfigError, match=r"num_experts_per_tok \(200\).*num_experts \(128\)"):
        ModelConfig.from_dict({**QWEN3_30B_A3B, "num_experts_per_tok": 200})


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}}, "rope_parameters"),
        ({"use_sliding_window": True}, "use_sliding_window"),
    ],
)
def test_unsupported_features_are_refused_by_name(changes, words):
    with pytest.raises(ConfigError, match=words):
        ModelConfig.from_dict({**SDAR_4B, **changes})


def test_from_json_errors_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match="no config.json at"):
        ModelConfig.from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        ModelConfig.from_json(tmp_path / "config.json")


# --- bounds: every field refused by name, the public shapes accepted ----------------------------------

QWEN3_235B_A22B = {
    **QWEN3_30B_A3B,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "moe_intermediate_size": 1536,
    "num_hidden_layers": 94,
    "num_attention_heads": 64,
    "num_key_value_heads": 4,
}


def test_largest_public_qwen3_moe_is_within_bounds_at_its_published_235b_parameters():
    c = ModelConfig.from_dict(QWEN3_235B_A22B)
    assert abs(c.num_parameters() / 235.09e9 - 1) < 0.005  # the model card's 235B total
    assert c.num_sparse_layers() * c.num_experts <= MAX_EXPERT_MLPS


def _valid_for(field: str) -> dict:
    """A config where `field` is read (an MoE one for the MoE fields)."""
    return (
        dict(QWEN3_30B_A3B)
        if field in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step")
        else dict(SDAR_4B)
    )


@pytest.mark.parametrize("field", sorted(INT_BOUNDS))
@pytest.mark.parametrize("bad", ["too-large", "float", "string", "bool", "below"])
def test_every_integer_field_out_of_range_or_of_the_wrong_type_is_named(field, bad):
    low, high = INT_BOUNDS[field]
    value = {
        "too-large": high + 1,
        "float": float(low + 2),
        "string": str(low + 2),
        "bool": True,
        "below": low - 1,
    }[bad]
    with pytest.raises(ConfigError, match=repr(field)):
        ModelConfig.from_dict({**_valid_for(field), field: value})


@pytest.mark.parametrize(
    "field, value",
    [
        ("rope_theta", 0),
        ("rope_theta", -1.0),
        ("rope_theta", float("nan")),
        ("rope_theta", float("inf")),
        ("rope_theta", "1e6"),
        ("rms_norm_eps", 0),
        ("rms_norm_eps", float("nan")),
        ("rms_norm_eps", float("inf")),
        ("rms_norm_eps", -1e-6),
        ("rms_norm_eps", 1.5),
        ("tie_word_embeddings", 1),
        ("attention_bias", "false"),
        ("norm_topk_prob", None),
        ("torch_dtype", 16),
        ("mask_token_id", 151936),
        ("mask_token_id", 1.0),
        ("eos_token_id", [1, "2"]),
        ("bos_token_id", "<s>"),
        ("mlp_only_layers", [0.5]),
    ],
)
def test_every_other_field_with_a_bad_value_is_named(field, value):
    with pytest.raises(ConfigError, match=repr(field)):
        ModelConfig.from_dict(
            {**QWEN3_30B_A3B, "model_type": "sdar_moe", "mask_token_id": 151669, field: value}
        )


def test_experts_over_all_layers_are_bounded():
    with pytest.raises(ConfigError, match=r"'num_experts' \(1024\) x sparse layers \(48"):
        ModelConfig.from_dict({**QWEN3_30B_A3B, "num_experts": 1024})


@pytest.mark.parametrize("n_layers", [0, 1, 5, 12])
@pytest.mark.parametrize("step", [1, 2, 3, 7])
@pytest.mark.parametrize("mlp_only", [[], [0], [1, 3, 5], [5, 5, 11, 40, -1]])
def test_sparse_layer_count_matches_the_layer_rule_layer_by_layer(n_layers, step, mlp_only):
    brute = sum(1 for i in range(n_layers) if (i + 1) % step == 0 and i not in mlp_only)
    assert sparse_layer_count(n_layers, step, mlp_only) == brute


def test_trained_block_sizes_round_trip_and_are_absent_when_unknown():
    from helpers import tiny_config

    config = tiny_config()
    assert config.trained_block_sizes is None and "trained_block_sizes" not in config.to_dict()
    raw = {**config.to_dict(), "trained_block_sizes": [1, 2, 4, 8, 16]}
    assert ModelConfig.from_dict(raw).trained_block_sizes == [1, 2, 4, 8, 16]
    assert ModelConfig.from_dict(raw).to_dict()["trained_block_sizes"] == [1, 2, 4, 8, 16]
    with pytest.raises(
        ConfigError, match=r"'trained_block_sizes' must be a non-empty list of integers >= 1, got \[0\]"
    ):
        ModelConfig.from_dict({**raw, "trained_block_sizes": [0]})


def test_trained_blocks_is_the_list_else_the_block_size_and_empty_for_an_ar_model():
    """The one rule for "which block sizes was this trained at" (the studio, generate and the CLI all read it)."""
    config = tiny_config("sdar", block_size=4)
    assert config.trained_blocks == [4]
    config.trained_block_sizes = [16, 2, 4]
    assert config.trained_blocks == [2, 4, 16]
    assert tiny_config("qwen3").trained_blocks == []
