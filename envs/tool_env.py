"""Multi-turn tool-using tasks on the text protocol of :mod:`envs.protocol`.

A subclass supplies problems, tools and a scorer; this base runs the turns:

* a tool call runs the tool and returns its (capped) output as the next observation;
* an ``<answer>`` ends the episode with the subclass's score in [0, 1];
* anything unreadable is an invalid action: reward 0, ``info["valid"] = False``, and the next
  observation says what went wrong and how to write it, so the model can recover;
* after ``max_turns`` replies without an answer the episode is truncated with reward 0.

A tool that raises returns its error text to the model (a bad call is data, not a crash).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from espl_bench.envs.base import TextEnv
from espl_bench.envs.protocol import format_instructions, parse_action

MAX_TOOL_OUTPUT = 2000


@dataclass(frozen=True)
class Tool:
    signature: str  # as the model reads it, e.g. "search(query)"
    description: str
    fn: Callable[..., str]


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    metadata: dict = field(default_factory=dict)


class ToolEnv(TextEnv):
    """Base for multi-turn tool tasks; see the module docstring."""

    metadata = {"render_modes": [], "kind": "agentic"}

    def __init__(self, max_turns: int = 8):
        super().__init__(max_turns=max_turns)
        self._problem: Problem | None = None

    # -- what a task defines -----------------------------------------------------------------

    def problem(self, split: str, index: int) -> Problem:
        raise NotImplementedError

    def tools(self) -> dict[str, Tool]:
        raise NotImplementedError

    def score(self, answer: str, problem: Problem) -> float:
        raise NotImplementedError

    # -- the turn loop ---------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        split, index = self._pick(options)
        self._problem = self.problem(split, index)
        self._problem_id = f"{self.spec.id if self.spec else type(self).__name__}/{split}/{index}"
        self._turn = 0
        self._tool_calls = 0
        self._invalid = 0
        tools = {t.signature: t.description for t in self.tools().values()}
        return f"{self._problem.question}\n\n{format_instructions(tools)}", {
            "problem_id": self._problem_id, "split": split, "index": index, "content_key": self._problem.question}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._problem is None:
            raise RuntimeError("call reset() before step()")
        self._turn += 1
        tools = self.tools()
        parsed = parse_action(action, set(tools))
        reward, terminated, valid = 0.0, False, parsed.kind != "invalid"
        if parsed.kind == "answer":
            reward = min(1.0, max(0.0, float(self.score(parsed.text, self._problem))))
            terminated = True
            observation = ""
        elif parsed.kind == "tool":
            self._tool_calls += 1
            observation = self._run_tool(tools[parsed.name], parsed.arguments)
        else:
            self._invalid += 1
            observation = f"Invalid action: {parsed.text}."
        truncated = not terminated and self._turn >= self.max_turns
        info = {
            "answer": self._problem.answer,
            "success": reward >= 1.0,
            "valid": valid,
            "metadata": {"problem_id": self._problem_id, "turn": self._turn, "tool_calls": self._tool_calls,
                         "invalid_actions": self._invalid, **self._problem.metadata},
        }
        return observation, reward, terminated, truncated, info

    @staticmethod
    def _run_tool(tool: Tool, arguments: dict) -> str:
        positional = arguments.pop("_", None)
        try:
            result = tool.fn(positional, **arguments) if positional is not None else tool.fn(**arguments)
        except Exception as exc:  # the model called it wrongly: tell it, do not crash
            return f"Tool error: {type(exc).__name__}: {exc}"
        text = str(result)
        return text if len(text) <= MAX_TOOL_OUTPUT else text[:MAX_TOOL_OUTPUT] + " [...]"
