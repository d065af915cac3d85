"""Reflectors that need no model: scripted answers and replay of a recorded run.

* ``script:FILE`` answers from a JSON list of rules ``{"contains": "...", "answer": "..."}``:
  the first rule whose text occurs in the prompt wins (``"contains": ""`` matches anything).
  Useful for dry runs and for deterministic tests, whatever order concurrent calls arrive in.
* ``replay:RUN_DIR`` answers each prompt with the answer recorded for the same prompt in a
  run's ``iterations/*/reflections.jsonl``; an unseen prompt is a failed call, never a guess.

Both implement the ``Reflector`` protocol of :mod:`espl_bench.agents.reflector`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from espl_bench.agents.reflector import ReflectorCallError
from espl_bench.errors import ConfigError
from espl_bench.rundir import RunDir


def _key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class ScriptReflector:
    def __init__(self, path: str):
        try:
            rules = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"reflector script {path!r} is unreadable ({exc}); fix: give a JSON list of "
                              '{"contains": ..., "answer": ...} rules') from None
        if not isinstance(rules, list) or not all(isinstance(r, dict) and "answer" in r for r in rules):
            raise ConfigError(f"reflector script {path!r} must be a JSON list of {{\"contains\", \"answer\"}} rules")
        self.rules = rules
        self.calls = 0

    honours_schema = False  # answers come from a script or a recording, as they are

    def complete(self, messages: list[dict], *, purpose: str = "", max_tokens: int | None = None,
                 schema: dict | None = None, stop: list[str] | None = None) -> str:
        self.calls += 1
        prompt = messages[-1]["content"]
        for rule in self.rules:
            if str(rule.get("contains", "")) in prompt:
                return str(rule["answer"])
        raise ReflectorCallError(f"{purpose or 'reflection'}: no scripted rule matches")


class ReplayReflector:
    def __init__(self, run_dir: str):
        run = RunDir(run_dir)
        if run.latest() == 0:
            raise ConfigError(f"nothing to replay in {run_dir!r}; fix: give the folder of a run with a committed iteration")
        self.answers: dict[str, str] = {}
        for entry in run.reflection_logs():
            if "prompt" in entry and "answer" in entry:
                self.answers.setdefault(_key(entry["prompt"]), entry["answer"])
        self.calls = 0

    honours_schema = False  # answers come from a script or a recording, as they are

    def complete(self, messages: list[dict], *, purpose: str = "", max_tokens: int | None = None,
                 schema: dict | None = None, stop: list[str] | None = None) -> str:
        self.calls += 1
        answer = self.answers.get(_key(messages[-1]["content"]))
        if answer is None:
            raise ReflectorCallError(f"{purpose or 'reflection'}: prompt not in the recording")
        return answer


def offline_reflector(spec: str):
    """``script:FILE`` or ``replay:RUN_DIR`` as a reflector; ``None`` for anything else."""
    kind, _, target = spec.partition(":")
    if kind == "script" and target:
        return ScriptReflector(target)
    if kind == "replay" and target:
        return ReplayReflector(target)
    return None
