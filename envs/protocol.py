"""The text protocol for tool calls and final answers, for models with or without tool support.

Many small local chat templates (SmolLM2's included) have no tool role, so agents act in text:

* a tool call: ``<tool_call>{"name": "search", "arguments": {"query": "Voss Prize"}}</tool_call>``
  (the Hermes/Qwen convention most instruction-tuned models have seen), or the short form
  ``<tool_call>search("Voss Prize")</tool_call>`` / ``search(query="Voss Prize")``;
* a final answer: ``<answer>...</answer>``.

Parsing is forgiving about whitespace, quotes and code fences, strict about names and arguments:
anything it cannot read becomes an :class:`Action` with ``kind="invalid"`` and a message that
tells the model what to write instead. Models whose template has native tool calls can emit the
JSON form unchanged.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL | re.IGNORECASE)
_CALL = re.compile(r"^\s*([A-Za-z_][\w]*)\s*\((.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Action:
    """What one model reply asks for."""

    kind: str  # "tool", "answer" or "invalid"
    name: str = ""
    arguments: dict = field(default_factory=dict)
    text: str = ""  # the answer, or the reason the action is invalid


def format_instructions(tools: dict[str, str]) -> str:
    """The protocol as the model reads it: ``tools`` maps a tool's signature to its description."""
    lines = "\n".join(f"- {signature}: {description}" for signature, description in tools.items())
    return (
        "You can use these tools, one call per reply:\n"
        f"{lines}\n"
        'Call a tool by writing <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>, '
        'for example <tool_call>{"name": "search", "arguments": {"query": "some words"}}</tool_call>. '
        "When you know the final answer, write it as <answer>...</answer>."
    )


def parse_action(text: str, tool_names: set[str]) -> Action:
    """Read one reply; a tool call wins over an answer only if it comes first."""
    text = text or ""
    answer = _ANSWER.search(text)
    call = _TOOL_CALL.search(text)
    if call and (not answer or call.start() < answer.start()):
        return _parse_call(call.group(1), tool_names)
    if answer:
        return Action(kind="answer", text=answer.group(1).strip())
    bare = _CALL.match(text.strip().strip("`"))
    if bare and bare.group(1) in tool_names:
        return _parse_call(text.strip().strip("`"), tool_names)
    return Action(kind="invalid", text="no <tool_call> and no <answer> found; use one of the two formats")


def _parse_call(body: str, tool_names: set[str]) -> Action:
    body = body.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    if body.startswith("{"):
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            return Action(kind="invalid", text=f"the tool call is not valid JSON ({exc.msg})")
        if not isinstance(data, dict):
            return Action(kind="invalid", text="the tool call must be a JSON object with name and arguments")
        name, arguments = data.get("name"), data.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = {"_": arguments}
    else:
        match = _CALL.match(body)
        if not match:
            return Action(kind="invalid", text='write the call as {"name": ..., "arguments": {...}}')
        name, arguments = match.group(1), _call_arguments(match.group(2))
        if arguments is None:
            return Action(kind="invalid", text=f"cannot read the arguments of {name}(...); quote text arguments")
    if name not in tool_names:
        return Action(kind="invalid", text=f"unknown tool {name!r}; the tools are {sorted(tool_names)}")
    if not isinstance(arguments, dict):
        return Action(kind="invalid", text="arguments must be a JSON object")
    return Action(kind="tool", name=name, arguments=arguments)


def _call_arguments(source: str) -> dict | None:
    """``"x"`` or ``query="x", k=3`` as a dict; positional arguments go under ``"_"``."""
    if not source.strip():
        return {}
    try:
        call = ast.parse(f"f({source})", mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call):
        return None
    try:
        positional = [ast.literal_eval(a) for a in call.args]
        named = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except ValueError:
        return None
    if positional:
        named["_"] = positional[0] if len(positional) == 1 else positional
    return named
