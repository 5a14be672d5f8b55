"""Generated training text for the embedded demo model: worked arithmetic, formula-like text, chat Q&A.

Everything here is a pure function of a seed (a `random.Random` is passed in or built from it), so the data set is
rebuilt byte for byte by `python -m training.corpus`.

Arithmetic is written the way a child is taught: column by column from the right, carries and borrows spelled out,
and the result on a last line of its own, `Answer: 85`, so that an evaluator checks the final answer by exact match
(`final_answer`). A fixed slice of all problems (by a hash of the problem, `is_reserved_for_eval`) never appears in
training text; the held-out evaluation set (`eval_arith_set`) is drawn only from that slice, so the two are disjoint
whatever the seeds and sizes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

OPS = ("+", "-", "*")
EVAL_SLICE = 20  # one problem in EVAL_SLICE (by hash) is reserved for the held-out evaluation set
ANSWER_PREFIX = "Answer: "

MODEL_NAME = "SDAR Studio Tiny"


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem `a op b` with non-negative integer operands (for "-", a >= b)."""

    a: int
    op: str
    b: int

    @property
    def key(self) -> tuple[int, str, int]:
        """Identity of the problem; `+` and `*` are commutative, so 38 + 47 is the same problem as 47 + 38."""
        if self.op in "+*":
            return (min(self.a, self.b), self.op, max(self.a, self.b))
        return (self.a, self.op, self.b)

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def result(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op]


def is_reserved_for_eval(problem: Problem) -> bool:
    """True for the fixed 1/EVAL_SLICE of all problems that only the held-out evaluation set may use."""
    digest = hashlib.sha256(repr(problem.key).encode()).digest()
    return digest[0] % EVAL_SLICE == 0


def final_answer(text: str) -> str | None:
    """The final answer of a worked solution: what follows `Answer: ` on its last such line, or None."""
    found = re.findall(r"^Answer: *(.+?) *$", text, flags=re.MULTILINE)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------------------------
# Worked arithmetic


def worked_addition(a: int, b: int) -> str:
    """Column addition from the right with carries, e.g. `7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8, write 8.`"""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
        carry, digit = divmod(total, 10)
        steps.append(f"{terms} = {total}, write {digit}" + (f" carry {carry}" if carry else ""))
    if carry:
        steps.append(f"write the last carry {carry}")
    return "; ".join(steps) + "."


def worked_subtraction(a: int, b: int) -> str:
    """Column subtraction from the right with borrows, for a >= b >= 0."""
    if a < b:
        raise ValueError(f"worked_subtraction needs a >= b, got a={a}, b={b}")
    da, db = str(a)[::-1], str(b)[::-1]
    steps, borrow = [], 0
    for i in range(len(da)):
        x = int(da[i]) - borrow
        y = int(db[i]) if i < len(db) else 0
        top = f"{da[i]} - {borrow}" if borrow else da[i]
        if x < y:
            steps.append(
                f"{top} is less than {y}, borrow 1: {x + 10} - {y} = {x + 10 - y}, write {x + 10 - y}"
            )
            borrow = 1
        else:
            steps.append(f"{top} - {y} = {x - y}, write {x - y}")
            borrow = 0
    return "; ".join(steps) + "."


def worked_short_multiplication(a: int, d: int) -> str:
    """Multiply a by one digit d from the right with carries: `8 * 7 = 56, write 6 carry 5; ...`."""
    steps, carry = [], 0
    digits = str(a)[::-1]
    for i, ch in enumerate(digits):
        total = d * int(ch) + carry
        terms = f"{d} * {ch}" + (f" + {carry}" if carry else "")
        if i == len(digits) - 1:
            steps.append(f"{terms} = {total}, write {total}")
        else:
            carry, digit = divmod(total, 10)
            steps.append(f"{terms} = {total}, write {digit}" + (f" carry {carry}" if carry else ""))
    return "; ".join(steps) + "."


def worked_multiplication(a: int, b: int) -> str:
    """Long multiplication: one partial product per digit of b (worked out when b has one digit), then their sum."""
    if b < 10:
        return worked_short_multiplication(a, b)
    parts = []
    for i, ch in enumerate(str(b)[::-1]):
        partial = a * int(ch) * 10**i
        shift = f", shifted {i} place{'s' if i > 1 else ''}: {partial}" if i else ""
        parts.append((f"{a} * {ch} = {a * int(ch)}{shift}", partial))
    lines = "; ".join(text for text, _ in parts)
    total = " + ".join(str(p) for _, p in parts)
    return f"{lines}; add the partial products: {total} = {a * b}."


def worked_solution(problem: Problem) -> str:
    """The worked steps, the sentence `so a op b = r.`, and the last line `Answer: r`."""
    work = {"+": worked_addition, "-": worked_subtraction, "*": worked_multiplication}[problem.op]
    steps = work(problem.a, problem.b)
    return f"{steps}\nSo {problem.expression} = {problem.result}.\n{ANSWER_PREFIX}{problem.result}"


def random_problem(rng: random.Random) -> Problem:
    """A problem with operands of 1..4 digits (multiplication: at most 3 by 2 digits)."""
    op = rng.choice(OPS)
    if op == "*":
        a = _random_number(rng, rng.randint(1, 3))
        b = _random_number(rng, rng.randint(1, 2))
    else:
        a = _random_number(rng, rng.randint(1, 4))
        b = _random_number(rng, rng.randint(1, 4))
        if op == "-" and a < b:
            a, b = b, a
    return Problem(a, op, b)


def _random_number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def train_arith_problems(n: int, seed: int) -> list[Problem]:
    """n distinct training problems; none is reserved for evaluation."""
    rng = random.Random(f"train-arith-{seed}")
    seen, out = set(), []
    while len(out) < n:
        p = random_problem(rng)
        if p.key in seen or is_reserved_for_eval(p):
            continue
        seen.add(p.key)
        out.append(p)
    return out


def eval_arith_set(n: int, seed: int) -> list[dict]:
    """The held-out set: n distinct reserved problems as {"prompt", "answer", "op", "digits"} records.

    `prompt` is the user message (as in the chat data), `answer` the exact string after `Answer: ` that a correct
    reply ends with. Only problems reserved by the hash split are drawn, and `train_arith_problems` never draws
    one, so no training problem (pretraining or SFT, any seed) can be in the set.
    """
    rng = random.Random(f"eval-arith-{seed}")
    seen, out = set(), []
    while len(out) < n:
        p = random_problem(rng)
        if p.key in seen or not is_reserved_for_eval(p):
            continue
        seen.add(p.key)
        out.append(
            {
                "prompt": arith_question(p, 0),
                "answer": str(p.result),
                "op": p.op,
                "digits": max(len(str(p.a)), len(str(p.b))),
            }
        )
    return out


_QUESTIONS = ("What is {e}?", "Compute {e}.", "Calculate {e}.", "{e} = ?", "What is {e}? Show your work.")


def arith_question(problem: Problem, style: int) -> str:
    """The user's question; style 0 ("What is a op b?") is the one the evaluation set uses."""
    return _QUESTIONS[style % len(_QUESTIONS)].format(e=problem.expression)


def arith_text(problem: Problem) -> str:
    """Pretraining form: `Q: 47 + 38 = ?` then `A: ` and the worked solution."""
    return f"Q: {problem.expression} = ?\nA: {worked_solution(problem)}"


# ---------------------------------------------------------------------------------------------------------------
# Formula-like text: unit conversions, small algebra, sequences, key/value records

_UNITS = [  # (big unit, small unit, factor)
    ("kilometre", "metres", 1000),
    ("metre", "centimetres", 100),
    ("centimetre", "millimetres", 10),
    ("kilogram", "grams", 1000),
    ("litre", "millilitres", 1000),
    ("hour", "minutes", 60),
    ("minute", "seconds", 60),
    ("day", "hours", 24),
    ("week", "days", 7),
    ("foot", "inches", 12),
    ("yard", "feet", 3),
    ("dozen", "items", 12),
    ("year", "months", 12),
    ("euro", "cents", 100),
]


def conversion(rng: random.Random) -> tuple[str, str]:
    """(question, worked answer) for converting a whole number of a big unit to a small one."""
    big, small, factor = rng.choice(_UNITS)
    n = rng.randint(2, 60)
    plural = "feet" if big == "foot" else big + "s"
    q = f"How many {small} are in {n} {plural}?"
    a = (
        f"1 {big} = {factor} {small}, so {n} {plural} = {n} * {factor} = {n * factor} {small}.\n"
        f"{ANSWER_PREFIX}{n * factor}"
    )
    return q, a


def linear_equation(rng: random.Random) -> tuple[str, str]:
    """(question, worked answer) for x + b = c, x - b = c or k * x = c with a whole-number solution."""
    x, kind = rng.randint(0, 99), rng.randrange(3)
    if kind == 0:
        b = rng.randint(1, 99)
        q, a = f"x + {b} = {x + b}", f"x = {x + b} - {b} = {x}"
    elif kind == 1:
        b = rng.randint(1, 99)
        q, a = f"x - {b} = {x - b}", f"x = {x - b} + {b} = {x}"
    else:
        k = rng.randint(2, 12)
        q, a = f"{k}x = {k * x}", f"x = {k * x} / {k} = {x}"
    return f"Solve {q} for x.", f"If {q}, then {a}.\n{ANSWER_PREFIX}{x}"


def sequence(rng: random.Random) -> tuple[str, str]:
    """(question, worked answer) for the next term of an arithmetic or geometric sequence."""
    start = rng.randint(1, 20)
    if rng.random() < 0.7:
        step = rng.randint(1, 15)
        terms = [start + i * step for i in range(6)]
        rule = f"each term adds {step}"
    else:
        ratio = rng.randint(2, 3)
        terms = [start * ratio**i for i in range(6)]
        rule = f"each term is {ratio} times the one before"
    shown = ", ".join(str(t) for t in terms[:5])
    return (
        f"What comes next: {shown}, ?",
        f"In {shown}, {rule}, so the next term is {terms[5]}.\n{ANSWER_PREFIX}{terms[5]}",
    )


_NAMES = [
    "Alice",
    "Bob",
    "Carla",
    "Deng",
    "Emma",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Luca",
    "Mira",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Uma",
    "Victor",
    "Wen",
    "Yara",
    "Zoe",
]
_CITIES = [
    "Paris",
    "Lima",
    "Oslo",
    "Cairo",
    "Delhi",
    "Tokyo",
    "Quito",
    "Rome",
    "Accra",
    "Seoul",
    "Berlin",
    "Lagos",
]
_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


def record(rng: random.Random) -> tuple[str, str]:
    """(question, answer) asking for one field of a small JSON record."""
    rec = {
        "name": rng.choice(_NAMES),
        "age": rng.randint(3, 90),
        "city": rng.choice(_CITIES),
        "colour": rng.choice(_COLOURS),
    }
    field = rng.choice(list(rec))
    return (
        f'Here is a record: {json.dumps(rec)}\nWhat is the value of "{field}"?',
        f'The record has "{field}": {json.dumps(rec[field])}.\n{ANSWER_PREFIX}{rec[field]}',
    )


def comparison(rng: random.Random) -> tuple[str, str]:
    """(question, answer) for the larger of two different numbers."""
    a, b = rng.sample(range(0, 10000), 2)
    big = max(a, b)
    return f"Which is larger, {a} or {b}?", f"{big} is larger than {min(a, b)}.\n{ANSWER_PREFIX}{big}"


FORMULA_KINDS = (conversion, linear_equation, sequence, record, comparison)


# ---------------------------------------------------------------------------------------------------------------
# Chat Q&A

SYSTEM_PROMPT = "You are a helpful assistant."

_IDENTITY = [
    (
        "Who are you?",
        f"I am {MODEL_NAME}, a very small language model that writes text by block diffusion. "
        "I was trained for a few minutes to demonstrate SDAR Studio.",
    ),
    ("What is your name?", f"My name is {MODEL_NAME}."),
    (
        "What are you?",
        f"I am {MODEL_NAME}, a tiny block-diffusion language model made for the SDAR Studio demo.",
    ),
    ("Who made you?", "I was trained by the SDAR Studio project as a small demonstration model."),
    (
        "How do you generate text?",
        "I write a block of tokens at a time. Each block starts as masked positions, and I fill them in over a few "
        "denoising steps, most confident positions first. Then I move on to the next block.",
    ),
    (
        "What can you do?",
        "I can do simple arithmetic step by step, answer short questions and follow simple "
        "instructions. I am very small, so I often make mistakes.",
    ),
    ("Are you ChatGPT?", f"No. I am {MODEL_NAME}, a tiny demonstration model of SDAR Studio."),
    (
        "How big are you?",
        "I am a very small model with a few million parameters and a vocabulary of 4096 tokens.",
    ),
    ("Can I trust your answers?", "Please check them. I am a tiny demo model and I make many mistakes."),
    ("Hello!", f"Hello! I am {MODEL_NAME}. How can I help you?"),
    ("Hi", "Hi! What would you like to know?"),
    ("Thank you!", "You are welcome!"),
]
_IDENTITY_VARIANTS = ("{q}", "{q_lower}", "Please tell me: {q_lower}", "{q} Answer briefly.")


def identity_chats() -> list[list[dict]]:
    """Short fixed Q&A about the model itself, each question in a few wordings."""
    chats = []
    for q, a in _IDENTITY:
        for form in _IDENTITY_VARIANTS:
            text = form.format(q=q, q_lower=q[0].lower() + q[1:])
            chats.append([{"role": "user", "content": text}, {"role": "assistant", "content": a}])
    return chats


def chat(user: str, assistant: str, system: bool = False) -> list[dict]:
    """A one-turn conversation in messages format, with the default system prompt if asked."""
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def pretrain_documents(n_arith: int, n_formula: int, seed: int) -> list[str]:
    """Generated pretraining text: n_arith worked problems and n_formula formula items, grouped a few per document.

    Arithmetic problems here come from `train_arith_problems(n_arith, seed)`; none is in the evaluation slice.
    """
    rng = random.Random(f"pretrain-{seed}")
    items = [arith_text(p) for p in train_arith_problems(n_arith, seed)]
    for _ in range(n_formula):
        q, a = rng.choice(FORMULA_KINDS)(rng)
        items.append(f"Q: {q}\nA: {a}")
    rng.shuffle(items)
    docs, i = [], 0
    while i < len(items):  # 1-4 items per document, so the model sees several in one context
        k = rng.randint(1, 4)
        docs.append("\n\n".join(items[i : i + k]))
        i += k
    return docs


def sft_chats(n_arith: int, n_formula: int, seed: int) -> list[list[dict]]:
    """Generated chats: worked arithmetic (problems disjoint from pretraining's), formula Q&A, identity Q&A."""
    rng = random.Random(f"sft-{seed}")
    problems = train_arith_problems(n_arith, seed + 1_000_003)
    chats = [
        chat(arith_question(p, rng.randrange(len(_QUESTIONS))), worked_solution(p), rng.random() < 0.3)
        for p in problems
    ]
    for _ in range(n_formula):
        q, a = rng.choice(FORMULA_KINDS)(rng)
        chats.append(chat(q, a, rng.random() < 0.3))
    chats += identity_chats()
    rng.shuffle(chats)
    return chats
