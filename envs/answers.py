"""Pulling a final answer out of free-form model text.

Small local models rarely follow a format exactly, so the extraction is layered: an
``<answer>...</answer>`` tag, then ``\\boxed{...}``, then the last number in the text. Which rule
matched is reported, so a format-following rate can be tracked apart from correctness.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer(text: str) -> tuple[str | None, str]:
    """Return ``(answer, rule)`` where rule is ``tag``, ``boxed``, ``last-number`` or ``none``."""
    tags = _TAG.findall(text)
    if tags:
        return tags[-1].strip(), "tag"
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip(), "boxed"
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1], "last-number"
    return None, "none"
