"""Parsing the reflector's edit operations: typed, validated, capped, or a clear failure.

The reflector's answer must contain a JSON list of operations (a ```json fence, any fence, or a
bare list). Parsing never guesses: anything malformed raises :class:`ReflectionParseError` with
a reason that can be quoted back to the model in one repair attempt.
"""

from __future__ import annotations

import json
import re

from espl_bench.method.program import EditOp
from pydantic import TypeAdapter, ValidationError

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_OPS = TypeAdapter(list[EditOp])


class ReflectionParseError(ValueError):
    """The reflector's answer is not a valid list of edit operations."""


def _json_candidates(text: str) -> list[str]:
    fenced = [block.strip() for block in _FENCE.findall(text)]
    if fenced:
        return fenced[::-1]  # the last fence is usually the final answer
    start, end = text.find("["), text.rfind("]")
    if start != -1 and end > start:
        return [text[start : end + 1]]
    return []


def parse_ops(text: str, *, allowed: set[str], valid_ids: set[str], max_ops: int) -> list[EditOp]:
    """Extract and validate edit operations from ``text``; see the module docstring."""
    if not isinstance(text, str) or not text.strip():
        raise ReflectionParseError("the answer is empty")
    candidates = _json_candidates(text)
    if not candidates:
        raise ReflectionParseError("no JSON list found")
    last_error = ""
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError as exc:
            last_error = f"invalid JSON ({exc.msg} at position {exc.pos})"
            continue
        if isinstance(data, dict):
            data = [data]
        try:
            ops = _OPS.validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            last_error = f"not a list of edit operations ({first['msg']} at {list(first['loc'])})"
            continue
        return _check(ops, allowed=allowed, valid_ids=valid_ids, max_ops=max_ops)
    raise ReflectionParseError(last_error)


def _check(ops: list[EditOp], *, allowed: set[str], valid_ids: set[str], max_ops: int) -> list[EditOp]:
    if not ops:
        raise ReflectionParseError("the list of operations is empty")
    if len(ops) > max_ops:
        raise ReflectionParseError(f"{len(ops)} operations, at most {max_ops} allowed")
    for op in ops:
        if op.op not in allowed:
            raise ReflectionParseError(f"operation {op.op!r} is not allowed here (allowed: {sorted(allowed)})")
        if op.op in ("add", "modify", "merge") and not op.text.strip():
            raise ReflectionParseError(f"a {op.op!r} operation has no text")
        if op.op in ("modify", "remove") and op.id not in valid_ids:
            raise ReflectionParseError(f"{op.op!r} refers to {op.id!r}, which does not exist (ids: {sorted(valid_ids)})")
        if op.op == "merge":
            missing = [i for i in op.ids if i not in valid_ids]
            if len(op.ids) < 2 or missing:
                raise ReflectionParseError(f"'merge' needs two or more existing ids, got {op.ids}")
    return ops
