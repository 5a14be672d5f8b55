"""Training data: packing keeps per-sample boundaries, chat data trains the assistant turns only."""

from __future__ import annotations

import json

import pytest
import torch

from sdar_core.paths import REPO
from training.byte_tokenizer import byte_tokenizer
from training.data import (
    RowOrder,
    build_rows,
    chat_spans,
    encode_chats,
    pack_examples,
    pack_stream,
    read_documents,
    split_eval,
)

ASSET_TOKENIZER = REPO / "assets" / "tokenizer"


@pytest.fixture(scope="module", params=["builtin", "assets"])
def tokenizer(request):
    """The built-in byte-level tokenizer, and the embedded model's tokenizer when it has been built."""
    if request.param == "builtin":
        return byte_tokenizer()
    if not (ASSET_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip("assets/tokenizer not built (python -m training.tokenizer)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSET_TOKENIZER))


def test_pack_stream_restarts_positions_at_each_document():
    rows = pack_stream([[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]], seq_len=4, pad_id=0)
    assert rows.input_ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the partial last row is dropped
    assert rows.segment_ids.tolist() == [[0, 0, 0, 1], [0, 1, 1, 1]]
    assert rows.positions.tolist() == [
        [0, 1, 2, 0],
        [0, 0, 1, 2],
    ]  # a cut document continues as a new segment
    assert rows.loss_mask.all()


def test_pack_examples_keeps_examples_whole_and_pads():
    examples = [([1, 2, 3], [False, True, True]), ([4, 5, 6], [False, False, True]), ([7, 8], [True, True])]
    rows, truncated = pack_examples(examples, seq_len=5, pad_id=0)
    assert truncated == 0
    assert rows.input_ids.tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]
    assert rows.segment_ids.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]  # padding: a segment of its own
    assert rows.positions.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1]]
    assert rows.loss_mask.tolist() == [[False, True, True, False, False], [False, False, True, True, True]]


def test_chat_trains_assistant_turns_only(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "Answer: 4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "Answer: 6"},
    ]
    [(ids, trained)] = encode_chats(tokenizer, [messages])
    text_trained = tokenizer.decode([i for i, t in zip(ids, trained) if t])
    assert text_trained == "Answer: 4<|im_end|>\nAnswer: 6<|im_end|>\n"
    first = trained.index(True)
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")  # the header is prompt
    full, spans = chat_spans(tokenizer, messages)
    assert [full[a:b] for a, b in spans] == ["Answer: 4<|im_end|>\n", "Answer: 6<|im_end|>\n"]


def test_chat_without_response_only_trains_everything(tokenizer):
    [(ids, trained)] = encode_chats(
        tokenizer,
        [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]],
        response_only=False,
    )
    assert all(trained) and len(ids) == len(trained)


def test_read_documents_detects_text_messages_and_alpaca(tmp_path):
    text = tmp_path / "t.jsonl"
    text.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(3)))
    chat = tmp_path / "c.jsonl"
    chat.write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    )
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "Add.", "input": "1 + 1", "output": "2"}]))
    assert read_documents(str(text)) == ("text", ["doc 0", "doc 1", "doc 2"])
    assert read_documents(str(chat))[0] == "chat"
    kind, [msgs] = read_documents(str(alpaca))
    assert kind == "chat" and msgs == [
        {"role": "user", "content": "Add.\n\n1 + 1"},
        {"role": "assistant", "content": "2"},
    ]


def test_build_rows_mixes_text_and_chat_files(tmp_path, tokenizer):
    chat = tmp_path / "c.jsonl"
    chat.write_text(
        "\n".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": f"a{i}"},
                    ]
                }
            )
            for i in range(10)
        )
    )
    rows = build_rows(["builtin:tiny-text", str(chat)], tokenizer, seq_len=32, log=lambda *a: None)
    assert rows.input_ids.shape[1] == 32 and len(rows) > 2
    assert not rows.loss_mask.all()  # chat prompts are not trained


def test_row_order_depends_only_on_the_sample_index():
    order = RowOrder(7, seed=3)
    whole = order.rows(0, 21)
    assert RowOrder(7, seed=3).rows(5, 9) == whole[5:14]
    assert sorted(whole[7:14]) == list(range(7))  # each epoch is a permutation


def test_split_eval_is_disjoint_and_seeded():
    rows = pack_stream([list(range(100))], seq_len=10, pad_id=0)
    train, held = split_eval(rows, 0.2, seed=0)
    assert len(held) == 2 and len(train) == 8
    seen = {tuple(r) for r in train.input_ids.tolist()} & {tuple(r) for r in held.input_ids.tolist()}
    assert not seen
    assert torch.equal(split_eval(rows, 0.2, seed=0)[1].input_ids, held.input_ids)


def test_mixed_order_draws_each_file_to_its_weight_and_walks_each_file_in_epochs():
    from training.data import MixedOrder

    order = MixedOrder([30, 5], [0.75, 0.25], seed=1)
    drawn = order.rows(0, 2000)
    from_second = [r for r in drawn if r >= 30]
    assert len(from_second) == 500  # exactly the weight's share of every chunk of 1000
    assert all(0 <= r < 35 for r in drawn)
    # the small file is repeated whole, epoch by epoch: every 5 of its visits are a permutation of its rows
    assert all(sorted(from_second[i : i + 5]) == list(range(30, 35)) for i in range(0, 500, 5))
    first = [r for r in drawn if r < 30]
    assert sorted(first[:30]) == list(range(30))


def test_mixed_order_is_a_pure_function_of_the_sample_index_and_the_seed():
    from training.data import MixedOrder

    whole = MixedOrder([11, 7, 3], [0.5, 0.3, 0.2], seed=4).rows(0, 2600)
    assert MixedOrder([11, 7, 3], [0.5, 0.3, 0.2], seed=4).rows(1990, 25) == whole[1990:2015]
    assert MixedOrder([11, 7, 3], [0.5, 0.3, 0.2], seed=5).rows(0, 2600) != whole
