"""Chats generated from the pretraining text itself, so that SFT teaches answers the model already has the
knowledge for (assets/models/README.md, "Data sources"):

- WordNet lines `word, synonym (noun): gloss; "example"` -> "What does the word X mean?" / "Define the word X."
  answered with the gloss;
- Python documentation entries `name(args)` followed by a paragraph `Return ...` -> "How do I return ... in
  Python?" answered with the call and its first sentence.

Everything is a pure function of the pretraining documents and the seed. A fixed 1/20 of the words (by a hash of
the word) is held out: their glosses stay in the pretraining text, but no chat asks for them; they are the held-out
definitions the evaluation scores (`eval_define.jsonl`).
"""

from __future__ import annotations

import hashlib
import random
import re

WORDNET_LINE = re.compile(r"^([^()\n]+) \((noun|verb|adjective|adverb)\): ([^\n]+)$", re.MULTILINE)
PYDOC_ENTRY = re.compile(
    r"^([A-Za-z_][\w.]*)\(([^()\n]{0,60})\)\n\n((Return|Remove|Add|Sort|Reverse|Convert|"
    r"Create|Split|Join|Read|Write|Open|Close|Insert|Delete|Count|Find|Copy|Append|Extend|"
    r"Replace|Format|Print|Compare|Encode|Decode|Round|Raise|Set|Get|Make|Test|Check|Start|"
    r"Stop|Wait|Run|Load|Dump|Parse) [^\n]{8,200}?\.)(?:\s|$)",
    re.MULTILINE,
)
DEFINE_TEMPLATES = ("What does the word {w} mean?", "Define the word {w}.", "What is the meaning of {w}?")
HOWTO_TEMPLATE = "How do I {task} in Python?"
HELDOUT_MODULUS = 20
STUDIO_WORDS = (
    "harbor",
    "volcano",
    "telescope",
)  # the studio's example definitions: always among the SFT chats


def is_heldout_word(word: str) -> bool:
    """The fixed 1/20 of words never asked in SFT (a hash of the lower-cased word, independent of the seed)."""
    return int(hashlib.sha256(word.lower().encode()).hexdigest(), 16) % HELDOUT_MODULUS == 0


def gloss_definition(gloss: str) -> str:
    """The definition part of a WordNet gloss: examples in quotes (after ';') dropped."""
    parts = [p.strip() for p in gloss.split(";")]
    kept = [p for p in parts if p and not p.startswith('"')]
    return "; ".join(kept) if kept else parts[0]


def wordnet_entries(texts: list[str]) -> list[tuple[str, str, str]]:
    """(word, part of speech, definition) for the first word of every WordNet line of the given documents, one sense
    per word: its first noun sense, else its first verb, adjective or adverb sense (in document order)."""
    senses: dict[str, dict[str, str]] = {}
    for text in texts:
        for m in WORDNET_LINE.finditer(text):
            word = m[1].split(",")[0].strip()
            if re.fullmatch(r"[a-z][a-z -]{2,24}", word):
                senses.setdefault(word, {}).setdefault(m[2], gloss_definition(m[3]))
    order = ("noun", "verb", "adjective", "adverb")
    return [
        (w, pos, by_pos[pos])
        for w, by_pos in senses.items()
        for pos in [next(p for p in order if p in by_pos)]
    ]


def definition_answer(word: str, pos: str, definition: str) -> str:
    article = "an" if pos[0] in "aeiou" else "a"
    return f"{word.capitalize()} is {article} {pos}: {definition}."


def definition_chats(entries: list[tuple[str, str, str]], n: int, seed: int) -> list[list[dict]]:
    """Up to n definition chats over the words that are not held out, in a seeded order."""
    rng = random.Random(f"define-{seed}")
    pool = [e for e in entries if not is_heldout_word(e[0])]
    rng.shuffle(pool)
    first = [e for e in pool if e[0] in STUDIO_WORDS]
    pool = first + [e for e in pool if e[0] not in STUDIO_WORDS]
    chats = []
    for word, pos, definition in pool[:n]:
        question = rng.choice(DEFINE_TEMPLATES).format(w=word)
        chats.append(
            [
                {"role": "user", "content": question},
                {"role": "assistant", "content": definition_answer(word, pos, definition)},
            ]
        )
    return chats


def heldout_definitions(entries: list[tuple[str, str, str]], n: int, seed: int) -> list[dict]:
    """Up to n held-out words as {"word", "prompt", "pos", "gloss"} (the evaluation's definitions set)."""
    pool = [e for e in entries if is_heldout_word(e[0])]
    random.Random(f"define-eval-{seed}").shuffle(pool)
    return [
        {"word": w, "prompt": DEFINE_TEMPLATES[1].format(w=w), "pos": pos, "gloss": d}
        for w, pos, d in pool[:n]
    ]


def howto_chats(texts: list[str], n: int, seed: int) -> list[list[dict]]:
    """Up to n "How do I ...?" chats from documented callables whose description starts with a verb."""
    seen, chats = set(), []
    for text in texts:
        for m in PYDOC_ENTRY.finditer(text):
            name, args, sentence = m[1], m[2], m[3]
            if name in seen:
                continue
            seen.add(name)
            task = sentence[0].lower() + sentence[1:-1]
            answer = f"Use {name}({args}). {sentence}"
            chats.append(
                [
                    {"role": "user", "content": HOWTO_TEMPLATE.format(task=task)},
                    {"role": "assistant", "content": answer},
                ]
            )
    random.Random(f"howto-{seed}").shuffle(chats)
    return chats[:n]
