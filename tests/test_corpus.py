"""The data set's generators and cleaning functions, on small inline inputs (no download, no data/ folder)."""

import operator
import random
import re

import pytest

from training import corpus, synthetic
from training.synthetic import Problem

PY_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _parse_expression(text: str) -> tuple[int, str, int]:
    m = re.search(r"(\d+) ([-+*]) (\d+)", text)
    return int(m[1]), m[2], int(m[3])


# --------------------------------------------------------------------------------------------------------------
# synthetic


def test_generators_are_deterministic_for_a_seed():
    assert synthetic.pretrain_documents(200, 100, seed=3) == synthetic.pretrain_documents(200, 100, seed=3)
    assert synthetic.sft_chats(100, 50, seed=3) == synthetic.sft_chats(100, 50, seed=3)
    assert synthetic.eval_arith_set(50, seed=3) == synthetic.eval_arith_set(50, seed=3)
    assert synthetic.pretrain_documents(200, 100, seed=3) != synthetic.pretrain_documents(200, 100, seed=4)


def test_worked_addition_spells_out_carries_as_in_the_brief():
    assert synthetic.arith_text(Problem(47, "+", 38)) == (
        "Q: 47 + 38 = ?\nA: 7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8, write 8.\nSo 47 + 38 = 85.\nAnswer: 85"
    )


def test_worked_solution_final_answer_equals_python_arithmetic():
    rng = random.Random(0)
    edge = [
        Problem(999, "+", 1),
        Problem(1000, "-", 1),
        Problem(100, "-", 99),
        Problem(0, "*", 7),
        Problem(99, "*", 99),
        Problem(5, "-", 5),
        Problem(7, "+", 0),
    ]
    for p in edge + [synthetic.random_problem(rng) for _ in range(3000)]:
        text = synthetic.worked_solution(p)
        expected = PY_OPS[p.op](p.a, p.b)
        assert synthetic.final_answer(text) == str(expected), text
        assert f"So {p.a} {p.op} {p.b} = {expected}." in text


def test_column_steps_write_the_digits_of_the_result():
    """Reading the written digits right to left (and the last carry) gives the result: the steps are right."""
    rng = random.Random(1)
    for _ in range(2000):
        a, b = rng.randint(0, 99999), rng.randint(0, 99999)
        a, b = max(a, b), min(a, b)
        add = synthetic.worked_addition(a, b)
        written = re.findall(r"write (?:the last carry )?(\d)\b", add)
        assert int("".join(reversed(written))) == a + b, add
        sub = synthetic.worked_subtraction(a, b)
        written = re.findall(r"write (\d)\b", sub)
        assert int("".join(reversed(written))) == a - b, sub


def test_long_multiplication_partial_products_add_up():
    rng = random.Random(2)
    for _ in range(1000):
        a, b = rng.randint(0, 999), rng.randint(10, 99)
        text = synthetic.worked_multiplication(a, b)
        partials = re.search(r"add the partial products: ([\d +]+) = (\d+)", text)
        assert sum(int(x) for x in partials[1].split(" + ")) == int(partials[2]) == a * b


def test_subtraction_rejects_negative_results():
    with pytest.raises(ValueError, match="a >= b"):
        synthetic.worked_subtraction(3, 5)


def test_eval_set_is_disjoint_from_all_training_problems():
    train = synthetic.train_arith_problems(8_000, seed=0) + synthetic.train_arith_problems(
        2_000, seed=1_000_003
    )
    train_keys = {p.key for p in train}
    evalset = synthetic.eval_arith_set(500, seed=0)
    eval_keys = {Problem(*_parse_expression(r["prompt"])).key for r in evalset}
    assert len(eval_keys) == 500
    assert not eval_keys & train_keys
    # and no eval problem appears, in either operand order, in the generated pretraining text
    text = "\n".join(synthetic.pretrain_documents(2_000, 0, seed=0))
    for a, op, b in eval_keys:
        assert f"Q: {a} {op} {b} = ?" not in text and f"Q: {b} {op} {a} = ?" not in text


def test_eval_records_are_prompts_with_exact_answers():
    for row in synthetic.eval_arith_set(300, seed=5):
        a, op, b = _parse_expression(row["prompt"])
        assert row["prompt"] == f"What is {a} {op} {b}?"
        assert row["answer"] == str(PY_OPS[op](a, b))


def test_final_answer_reads_the_last_answer_line():
    assert synthetic.final_answer("7 + 8 = 15\nAnswer: 15\nmore\nAnswer: 85") == "85"
    assert synthetic.final_answer("Answer:  -3 ") == "-3"
    assert synthetic.final_answer("the answer is 85") is None


def test_formula_and_chat_items_end_with_a_correct_answer():
    rng = random.Random(3)
    for _ in range(500):
        q, a = rng.choice(synthetic.FORMULA_KINDS)(rng)
        assert q and synthetic.final_answer(a) is not None
    chats = synthetic.sft_chats(50, 50, seed=0)
    assert all(c[-1]["role"] == "assistant" and c[-2]["role"] == "user" for c in chats)
    for c in chats:
        m = re.fullmatch(r"(?:What is|Compute|Calculate) (\d+) ([-+*]) (\d+)[?.]", c[-2]["content"])
        if m:
            assert synthetic.final_answer(c[-1]["content"]) == str(PY_OPS[m[2]](int(m[1]), int(m[3])))


def test_linear_equation_answer_solves_the_equation():
    rng = random.Random(4)
    for _ in range(300):
        q, a = synthetic.linear_equation(rng)
        x = int(synthetic.final_answer(a))
        lhs, rhs = re.search(r"Solve (.+) = (-?\d+) for x", q).groups()
        assert eval(lhs.replace("x", f"*{x}" if lhs[0].isdigit() else str(x))) == int(rhs)


# --------------------------------------------------------------------------------------------------------------
# cleaning


def test_html_to_text_strips_tags_scripts_and_entities():
    page = (
        "<html><head><title>T</title><style>p {color: red}</style><script>var x = 1;</script></head>"
        '<body><nav>Menu</nav><h1>Title<a class="headerlink" href="#t">¶</a></h1>'
        "<p>Hello&nbsp;<b>bold</b> &amp; <i>you</i> &lt;3</p><ul><li>one</li><li>two</li></ul></body></html>"
    )
    assert corpus.html_to_text(page) == "Title\n\nHello bold & you <3\n\none\ntwo"


def test_html_to_text_keeps_only_the_main_part_and_code_layout():
    page = (
        "<div class='sidebar'>Navigation</div><div role=\"main\"><p>Intro   text\n spread</p>"
        "<pre>def f(x):\n    return  x</pre></div><div class='footer'>Copyright</div>"
    )
    assert corpus.html_to_text(page) == "Intro text spread\n\ndef f(x):\n    return  x"


def test_normalize_whitespace():
    raw = "  Line\tone  \r\nline two\u00a0 x\x07\n\n\n\n\nPara\u200b two  "
    assert corpus.normalize_whitespace(raw) == "Line one\nline two x\n\nPara two"


def test_reflow_joins_wrapped_lines_but_keeps_paragraphs():
    assert corpus.reflow("A hard\n   wrapped line.\n\n  Next\n para.") == "A hard wrapped line.\n\nNext para."


def test_split_documents_respects_the_limit_and_keeps_the_text():
    paras = [f"Paragraph {i}. " + "word " * random.Random(i).randint(1, 120) for i in range(60)]
    paras = [p.strip() for p in paras] + [f"Long sentence number {i}." for i in range(300)]
    text = "\n\n".join(paras[:60]) + "\n\n" + " ".join(paras[60:])
    docs = corpus.split_documents(text, max_chars=500)
    assert all(len(d) <= 500 for d in docs)
    assert re.sub(r"\s+", "", "".join(docs)) == re.sub(r"\s+", "", text)


def test_clean_gcide_entry():
    entry = (
        'Affect \\Af*fect"\\, v. t. [L. affectus. See\n   {Fact}.]\n   1. To act upon; to produce '
        "an effect.\n   [1913 Webster] Stray\n\n   2. To love. [Obs.]\n   [1913 Webster]\n   Caf['e] and "
        "Ch[ae]topoda."
    )
    assert corpus.clean_gcide_entry(entry) == (
        "Affect, v. t. [L. affectus. See Fact.] 1. To act upon; to produce an effect.\n\n"
        "2. To love. [Obs.] Café and Chætopoda."
    )


def test_looks_like_prose_drops_tables_and_fragments():
    assert corpus.looks_like_prose("This is an ordinary sentence of English prose, long enough.")
    assert not corpus.looks_like_prose("short")
    assert not corpus.looks_like_prose("+----+----+\n| 12 | 34 |\n+----+----+\n| 56 | 78 |\n+----+----+")


def test_fair_share_gives_small_sources_all_and_splits_the_rest():
    alloc = corpus.fair_share({"a": 10, "b": 100, "c": 1000, "d": 50}, budget=400)
    assert alloc == {"a": 10, "d": 50, "b": 100, "c": 240}
    assert corpus.fair_share({"a": 10, "b": 20}, budget=1000) == {"a": 10, "b": 20}


def test_missing_package_is_skipped_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "fetch_deb", lambda package, cache: (None, "no network in tests"))
    docs, rec = corpus.load_debian_source(corpus.SOURCES[0], tmp_path)
    assert docs == [] and rec.status == "missing" and "no network in tests" in rec.reason


# --------------------------------------------------------------------------------------------------------------
# qa: chats generated from the pretraining text

from training import qa  # noqa: E402

WORDNET_DOC = "\n".join(
    [
        "harbor, seaport, haven (noun): a sheltered port where ships can take on or discharge cargo",
        'harbor, harbour (verb): maintain (a theory, thoughts, or feelings); "bear a grudge"',
        'kitten (noun): young domestic cat; "the kitten played with a ball"',
        'quickly, rapidly (adverb): with rapid movements; "he works quickly"',
        "Sea Dog (noun): a capitalised name is not a plain word",
    ]
)


def test_wordnet_entries_take_the_noun_sense_and_drop_the_examples():
    entries = qa.wordnet_entries([WORDNET_DOC])
    assert entries == [
        ("harbor", "noun", "a sheltered port where ships can take on or discharge cargo"),
        ("kitten", "noun", "young domestic cat"),
        ("quickly", "adverb", "with rapid movements"),
    ]
    assert (
        qa.definition_answer("quickly", "adverb", "with rapid movements")
        == "Quickly is an adverb: with rapid movements."
    )


def test_definition_chats_never_ask_a_held_out_word_and_the_eval_set_asks_only_those():
    words = [f"word{chr(97 + i)}{chr(97 + j)}" for i in range(26) for j in range(26)]
    entries = [(w, "noun", f"the gloss of {w}") for w in words]
    held = {w for w in words if qa.is_heldout_word(w)}
    assert 0.02 < len(held) / len(words) < 0.09  # about 1/20
    chats = qa.definition_chats(entries, 10_000, seed=0)
    asked = {re.search(r"word ([a-z]+)|meaning of ([a-z]+)", c[0]["content"]).group(1, 2) for c in chats}
    asked = {a or b for a, b in asked}
    assert asked == set(words) - held
    evals = qa.heldout_definitions(entries, 10_000, seed=0)
    assert {e["word"] for e in evals} == held and all(
        e["gloss"] == f"the gloss of {e['word']}" for e in evals
    )
    assert qa.definition_chats(entries, 50, seed=0) == qa.definition_chats(entries, 50, seed=0)
    assert qa.definition_chats(entries, 50, seed=0) != qa.definition_chats(entries, 50, seed=1)


def test_studio_words_are_always_among_the_definition_chats():
    entries = [(w, "noun", "a gloss") for w in ("apple", "harbor", "zebra", "volcano", "telescope")]
    questions = [c[0]["content"] for c in qa.definition_chats(entries, 3, seed=0)]
    assert all(any(w in q for q in questions) for w in qa.STUDIO_WORDS)


def test_howto_chats_turn_a_documented_callable_into_a_question_and_its_answer():
    doc = (
        "array.reverse()\n\nReverse the order of the items in the array.\n\n"
        "str.isupper()\n\nReturns True if all cased characters are uppercase.\n\n"
        "array.reverse()\n\nReverse it again, a duplicate name."
    )
    chats = qa.howto_chats([doc], 10, seed=0)
    assert chats == [
        [
            {"role": "user", "content": "How do I reverse the order of the items in the array in Python?"},
            {
                "role": "assistant",
                "content": "Use array.reverse(). Reverse the order of the items in the array.",
            },
        ]
    ]
