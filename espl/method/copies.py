"""Edits that copy the reflection prompts instead of saying something: rejected, and counted.

A small reflector asked for edit operations often answers with the prompt's own example
operation or its placeholder ("<new principle, at most 32 words>"). Such an edit is valid JSON
and would be "a successful mutation", but it carries no evidence from the rollouts. The
templates therefore show only placeholders, and :class:`CopyGuard` rejects an edit whose text is

* a placeholder (``<...>``, ``...``, a template variable such as ``$max_words``), or
* words lifted from a line of the templates (``your edits``), the text of any example in them,
  or any sentence of their instructions, or within a small edit of one (difflib ratio >= 0.85
  after lowercasing and dropping punctuation).

The examples and sentences are read from the templates themselves, so a new template is covered
without a second list to keep in step.

:class:`ProblemCopies` is the same question asked of the problems the reflector was shown: a
text holding five words in a row of one (a fragment of a letter-counting passage, a problem's
question) copies the rollouts instead of drawing advice from them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from string import Template

_TEXT_FIELD = re.compile(r'"text"\s*:\s*"([^"]*)"')
_PLACEHOLDER = re.compile(r"^\s*(<[^<>]*>|\.{2,}|…|\$\w+|\{\w+\})\s*$")
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.:;!?])\s+|\s*[({\[\]})]\s*")
SIMILARITY = 0.85


def _normal(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


class CopyGuard:
    """Decides whether an edit's text copies the templates; see the module docstring."""

    def __init__(self, templates: Iterable[Template | str]):
        sources = [t.template if isinstance(t, Template) else t for t in templates]
        examples = {_normal(text) for source in sources for text in _TEXT_FIELD.findall(source)}
        # every instruction sentence of three words or more (a small model echoes its instructions)
        sentences = {_normal(part) for source in sources for line in source.splitlines()
                     for part in _SENTENCE.split(line) if len(_normal(part).split()) >= 3}
        self.examples = sorted((examples | sentences) - {""})
        self.lines = [f" {_normal(line)} " for source in sources for line in source.splitlines() if _normal(line)]

    def copies(self, text: str) -> bool:
        if _PLACEHOLDER.match(text) or "$" in text and re.search(r"\$[a-z_]+", text):
            return True
        normal = _normal(text)
        if not normal or any(f" {normal} " in line for line in self.lines):  # words lifted from an instruction
            return True
        return any(normal == example or difflib.SequenceMatcher(None, normal, example).ratio() >= SIMILARITY
                   for example in self.examples)


# Words in a row that make a copy of a problem: a letter-counting passage runs 5-15 words, and the
# v8 letter-counting pools held 15 fragments of them ("He pressed a button After a few seconds");
# advice about a task restates its question in other words ("count how many times the letter
# appears" shares four with "how many times does the letter r appear").
PROBLEM_RUN = 5


class ProblemCopies:
    """Decides whether a text copies the problems shown to the reflector: it shares a run of
    :data:`PROBLEM_RUN` words with one of them. Runs that every problem shown holds (the env's own
    question and answer-format wording, when more than one problem is shown) are not copies of a
    problem; a single problem's every run counts."""

    def __init__(self, problems: Iterable[str]):
        runs = [set(_runs(_normal(p).split())) for p in problems]
        common = set.intersection(*runs) if len(runs) > 1 else set()
        self.runs = set().union(*runs) - common if runs else set()

    def copied(self, text: str) -> str:
        """The first copied run of words in ``text`` ('' when none)."""
        words = _normal(text).split()
        return next((" ".join(r) for r in _runs(words) if r in self.runs), "")


def _runs(words: list[str]) -> list[tuple[str, ...]]:
    """Every run of :data:`PROBLEM_RUN` words in ``words``, in order."""
    return [tuple(words[i:i + PROBLEM_RUN]) for i in range(len(words) - PROBLEM_RUN + 1)]
