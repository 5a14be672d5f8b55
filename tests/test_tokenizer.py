"""The committed tokenizer in assets/tokenizer (loaded as users load it, with AutoTokenizer) and its trainer."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from training.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer

DIGITS = "0123456789"  # ASCII only: byte-level symbols such as "²" (byte 0xB2) are not digits
TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def test_folder_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in TOKENIZER_DIR.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(files)
    assert sum(files.values()) < 1_000_000


def test_vocabulary_is_4096(tok):
    assert len(tok) == 4096


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "Q: 47 + 38 = ?\nA: 7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8, write 8.\nAnswer: 85",
        "  leading and trailing spaces  \n\n\ttabs\r\nand CRLF\n",
        "naïve café, Straße, Ελληνικά, русский, 東京, 🙂👍🏽, ½ ² ٣ ४",
        "def f(x):\n    return {'a': [1, 2.5e-3, None]}  # comment\n",
        "",
    ],
)
def test_round_trips_arbitrary_text(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_special_tokens_are_single_ids(tok):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.encode(t, add_special_tokens=False) == [i]
        assert tok.encode(f"a{t}b", add_special_tokens=False)[1:-1] == [i]
    assert (tok.pad_token, tok.eos_token, tok.mask_token) == ("<|endoftext|>", "<|im_end|>", "<|MASK|>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 2, 3)


def test_special_tokens_are_skipped_on_request(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|><|MASK|><|endoftext|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


@pytest.mark.parametrize("number", ["0", "7", "85", "1234567890", "000123", "3.14159", "-42"])
def test_digits_are_one_token_each(tok, number):
    for text in (number, f"x = {number}", f"({number})", f"abc{number}def"):
        tokens = tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))
        digit_tokens = [t for t in tokens if any(ch in DIGITS for ch in t)]
        assert digit_tokens == [ch for ch in text if ch in DIGITS], (text, tokens)


def test_chat_template_renders_chatml(tok):
    user = [{"role": "user", "content": "hi"}]
    assert (
        tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "Answer: 4"},
    ]
    assert tok.apply_chat_template(conversation, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\nAnswer: 4<|im_end|>\n"
    )


def test_chat_template_tokenizes_markers_as_single_ids(tok):
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids.count(1) == 2 and ids.count(2) == 1  # two <|im_start|>, one <|im_end|>
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_saved_template_is_the_trainers(tok):
    assert (TOKENIZER_DIR / "chat_template.jinja").read_text() == CHAT_TEMPLATE


def test_training_is_deterministic_and_keeps_digits_apart():
    texts = [
        f"The {w} costs {n} coins, said {w}s friend in {n * 7} words."
        for n, w in zip(range(0, 3000, 7), ["cat", "dog", "bird", "horse", "mouse"] * 200)
    ]
    a, b = train_tokenizer(texts, vocab_size=400), train_tokenizer(texts, vocab_size=400)
    assert a.to_str() == b.to_str()
    assert all(not (len(t) > 1 and any(ch in DIGITS for ch in t)) for t in a.get_vocab())


def test_training_rejects_a_vocabulary_too_small_for_bytes():
    with pytest.raises(ValueError, match="at least 260"):
        train_tokenizer(["abc"], vocab_size=100)
