"""The studio's example prompts, each with the answer the embedded sdar-tiny gives at the studio's default settings
after the default system prompt (the conversation every tab sends).

tests/test_app_examples.py decodes every one on the CPU and checks the reply: an example that the shipped model
gets wrong cannot be shipped. The model is a 14M-parameter demo (assets/models/README.md): worked arithmetic, unit
conversions, sequences and who it is are what it does well; the Python questions of its training set come out
right without a system prompt but wrong after one (they were trained without), and its definitions are fluent but
mostly wrong, so neither is offered as an example.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # a phrase the reply must contain


SUM = Example("What is 47 + 38?", "Answer: 85")
DIFFERENCE = Example("What is 305 - 178?", "Answer: 127")
MINUTES = Example("How many minutes are in 5 hours?", "Answer: 300")
SEQUENCE = Example("What comes next: 3, 7, 11, 15, 19, ?", "Answer: 23")
WHO = Example("Who are you?", "SDAR Studio Tiny")

CHAT = [SUM, MINUTES, SEQUENCE, DIFFERENCE, WHO]
VISUALIZER = [MINUTES, DIFFERENCE, SEQUENCE]
RACE = [SUM, DIFFERENCE, MINUTES]
ALL = list(dict.fromkeys(CHAT + VISUALIZER + RACE))


def prompts(examples: list[Example]) -> list[str]:
    return [e.prompt for e in examples]
