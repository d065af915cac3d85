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
