"""The reflector's edit operations: the JSON schema they are asked for in, and their parsing.

:func:`ops_schema` is the schema of one answer, ``{"ops": [...]}``, with every limit a schema can
carry: how many operations, which kinds, the ids a ``modify``/``merge``/``remove`` may name (the
parent's), the length of a text. Reflectors that honour structured output (litellm's
``response_format``; a vLLM server; the in-process reflector through llguidance) can only write
answers of that shape.

:func:`parse_ops` reads an answer of any reflector: ``{"ops": [...]}``, a JSON list of
operations, either inside a ```json fence, any fence, or bare. Parsing never guesses: anything
malformed raises :class:`ReflectionParseError` with a reason that can be quoted back to the
model in one repair attempt.
"""

from __future__ import annotations

import json
import re

from pydantic import TypeAdapter, ValidationError

from espl_bench.method.program import EditOp

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_OPS = TypeAdapter(list[EditOp])


class ReflectionParseError(ValueError):
    """The reflector's answer is not a valid list of edit operations."""


CHARS_PER_WORD = 6  # a principle of max_words English words fits in max_words * 6 characters
# A principle is a sentence, not a word: shorter texts (an id, "op: ") are the small models'
# way of filling a required field. The schema forbids them and the parser refuses them.
MIN_TEXT_CHARS = 10
CHARS_PER_TOKEN = 3  # fewer than any tokenizer's average on text; the bound below rests on it


def ops_token_bound(max_ops: int, max_words: int) -> int:
    """Tokens enough for the longest answer :func:`ops_schema` admits: ``max_ops`` texts of the
    longest length at :data:`CHARS_PER_TOKEN`, and the JSON around each operation. A budget below
    it would let a long but valid answer be cut off mid-string."""
    return max_ops * (-(-max_words * CHARS_PER_WORD // CHARS_PER_TOKEN) + 16) + 24


def ops_schema(*, allowed: set[str], valid_ids: set[str], max_ops: int, max_words: int) -> dict:
    """The JSON schema of an answer with at most ``max_ops`` operations of the ``allowed`` kinds."""
    text = {"type": "string", "minLength": MIN_TEXT_CHARS, "maxLength": max_words * CHARS_PER_WORD}
    ids = sorted(valid_ids)
    shapes = {"add": {"op": {"const": "add"}, "text": text}}
    if ids:  # the kinds that name a principle need one to name
        shapes["modify"] = {"op": {"const": "modify"}, "id": {"enum": ids}, "text": text}
        shapes["remove"] = {"op": {"const": "remove"}, "id": {"enum": ids}}
        if len(ids) > 1:
            shapes["merge"] = {"op": {"const": "merge"}, "ids": {"type": "array", "items": {"enum": ids},
                                                                 "minItems": 2, "maxItems": len(ids)}, "text": text}
    kinds = [{"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
             for kind, props in shapes.items() if kind in allowed]
    return {"type": "object", "additionalProperties": False, "required": ["ops"],
            "properties": {"ops": {"type": "array", "minItems": 1, "maxItems": max_ops,
                                   "items": kinds[0] if len(kinds) == 1 else {"anyOf": kinds}}}}


def _json_candidates(text: str) -> list[str]:
    fenced = [block.strip() for block in _FENCE.findall(text)]
    if fenced:
        return fenced[::-1]  # the last fence is usually the final answer
    stripped = text.strip()
    if stripped.startswith("{"):  # a structured answer: {"ops": [...]}
        return [stripped]
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
            data = data["ops"] if isinstance(data.get("ops"), list) else [data]
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
        if op.op in ("add", "modify", "merge") and len(op.text.strip()) < MIN_TEXT_CHARS:
            raise ReflectionParseError(f"a {op.op!r} operation's text is not a principle ({op.text.strip()!r}); "
                                       "write a full sentence")
        if op.op in ("modify", "remove") and op.id not in valid_ids:
            raise ReflectionParseError(f"{op.op!r} refers to {op.id!r}, which does not exist (ids: {sorted(valid_ids)})")
        if op.op == "merge":
            missing = [i for i in op.ids if i not in valid_ids]
            if len(op.ids) < 2 or missing:
                raise ReflectionParseError(f"'merge' needs two or more existing ids, got {op.ids}")
    return ops
