"""The checkpoints the app tests run on: a tiny random SDAR model and its AR twin, written in the real
checkpoint format with a real tokenizer (assets/tokenizer/ when it exists, else a small byte-level BPE built
here with the same special tokens and a ChatML chat template). The tests below check the fixture itself."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, random_model, tiny_config
from sdar_core import save_pretrained

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = """The sky is blue because air scatters short wavelengths of sunlight more than long ones.
A block diffusion model writes a block of tokens at once and refines it over a few denoising steps.
Autoregressive decoding writes one token per forward pass; SDAR commits several tokens per forward.
Once upon a time there was a small model that learned to answer questions about the world.
The quick brown fox jumps over the lazy dog. Numbers: 1 2 3 4 5 6 7 8 9 10. Hello, how are you today?
""" * 4


def build_tokenizer():
    """A small byte-level BPE (about 400 tokens) with SDAR's special tokens and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   mask_token="<|MASK|>", additional_special_tokens=["<|im_start|>"],
                                   chat_template=CHATML)


def load_tokenizer():
    folder = REPO / "assets" / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        if all(t in tok.get_vocab() for t in SPECIALS) and tok.chat_template:
            return tok
    return build_tokenizer()


def write_checkpoints(root: Path, *, context: int = 512) -> tuple[Path, Path]:
    """root/sdar-tiny (block size 4) and its AR twin root/ar-tiny (model_type qwen3), same tokenizer."""
    tok = load_tokenizer()
    vocab = tok.get_vocab()
    vocab_size = max(len(tok), max(vocab.values()) + 1)
    common = dict(vocab_size=vocab_size, eos_token_id=vocab["<|im_end|>"], max_position_embeddings=context,
                  pad_token_id=vocab["<|endoftext|>"])
    sdar = random_model(tiny_config("sdar", block_size=4, mask_token_id=vocab["<|MASK|>"], **common), seed=1)
    ar = random_model(tiny_config("qwen3", **common), seed=2)
    return save_pretrained(sdar, tok, root / "sdar-tiny"), save_pretrained(ar, tok, root / "ar-tiny")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp("models"))


def test_fixture_checkpoints_load_with_their_stop_tokens_and_chat_template(checkpoints):
    from app.registry import ModelRegistry, ar_twin_name

    sdar_path, ar_path = checkpoints
    registry = ModelRegistry(models_dir=sdar_path.parent)
    m = registry.get(str(sdar_path))
    assert m.is_sdar and m.config.block_size == 4
    vocab = m.tokenizer.get_vocab()
    assert vocab["<|im_end|>"] in m.stop_token_ids and vocab["<|endoftext|>"] in m.stop_token_ids
    assert m.config.mask_token_id == vocab["<|MASK|>"] and m.config.mask_token_id not in m.stop_token_ids
    text = m.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert ar_twin_name(str(sdar_path)) == str(ar_path)
    assert sorted(Path(p).name for p in registry.available()) == ["ar-tiny", "sdar-tiny"]
    assert registry.get(str(sdar_path)) is m  # cached


def test_registry_names_a_missing_folder_and_the_missing_default_model(tmp_path):
    from app.registry import DEFAULT_MODEL, ModelRegistry, ModelUnavailable

    registry = ModelRegistry(models_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="no checkpoint folder"):
        registry.get(str(tmp_path / "nope"))
    if not (REPO / DEFAULT_MODEL).exists():
        with pytest.raises(ModelUnavailable, match="not here yet"):
            registry.get(DEFAULT_MODEL)
