"""Single-turn reasoning tasks from reasoning-gym behind the :mod:`envs.base` contract.

Problems are built on demand: problem ``index`` of a split is the first item of one
reasoning-gym dataset (seed ``data_seed``), at positions derived from (split, index, attempt),
whose question hashes into that split (:func:`envs.splits.draw`). Equal questions therefore
always share a split, so train, validation and test are disjoint by content, and the first reset
costs a few items, not the whole split (reasoning-gym items are a pure function of seed and
index). The reward is reasoning-gym's own ``score_answer`` on the extracted answer.
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from typing import Any

from espl_bench.envs.answers import extract_answer
from espl_bench.envs.base import TextEnv
from espl_bench.envs.splits import draw

ANSWER_FORMAT = "Think step by step, then give only the final answer inside <answer></answer> tags."
# Positions of the dataset the draws index into; a dataset may keep a list of this length
# (list_functions, gsm_symbolic), so it is large enough for distinct items, not astronomical.
# A dataset that refuses a size that large (word_ladder) gets the next one it accepts.
STREAM_SIZES = (100_000, 10_000, 2_000, 500)


class ReasoningGymEnv(TextEnv):
    """One reasoning-gym dataset as a single-turn text environment."""

    metadata = {"render_modes": [], "kind": "reasoning"}

    def __init__(
        self,
        task: str = "basic_arithmetic",
        *,
        train_size: int = 1000,
        validation_size: int = 200,
        test_size: int = 200,
        data_seed: int = 0,
        success_threshold: float = 1.0,
        **task_config: Any,
    ):
        super().__init__(max_turns=1)
        self.task = task
        self.sizes = {"train": train_size, "validation": validation_size, "test": test_size}
        for split, size in self.sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size < (0 if split == "validation" else 1):
                raise ValueError(f"{split}_size must be a whole number of problems (at least "
                                 f"{0 if split == 'validation' else 1}), got {size!r}")
        self.data_seed = data_seed
        self.success_threshold = success_threshold
        self.task_config = task_config
        try:  # a bad config fails here, not at the first episode (building the dataset builds no item)
            _dataset(*self._key)
        except (AssertionError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"reasoning-gym rejects the config of {task!r}: {type(exc).__name__}: {exc}") from None
        self._entry: dict | None = None
        self._problem_id = ""

    @cached_property
    def _key(self) -> tuple:
        return self.task, self.data_seed, json.dumps(self.task_config, sort_keys=True)

    @property
    def _scorer(self) -> Any:
        return _dataset(*self._key)

    def split_size(self, split: str) -> int:
        return self.sizes[split]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        split, index = self._pick(options)
        self._entry = _entry(*self._key, split, index)
        self._problem_id = f"{self.task}/{split}/{index}"
        observation = f"{self._entry['question']}\n\n{ANSWER_FORMAT}"
        return observation, {"problem_id": self._problem_id, "split": split, "index": index,
                             "content_key": self._entry["question"]}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._entry is None:
            raise RuntimeError("call reset() before step()")
        answer, rule = extract_answer(action)
        valid = answer is not None
        error = None
        try:
            reward = float(self._scorer.score_answer(answer=answer, entry=self._entry)) if valid else 0.0
        except Exception as exc:  # some scorers crash on malformed answers: that answer is invalid
            reward, valid, error = 0.0, False, f"{type(exc).__name__}: {exc}"[:200]
        success = reward >= self.success_threshold
        if not success:
            reward = 0.0  # reasoning-gym gives small partial credit for wrong answers; we do not
        info = {
            "answer": str(self._entry["answer"]),
            "success": success,
            "valid": valid,
            "metadata": {"problem_id": self._problem_id, "extracted": answer, "format": rule, "score_error": error},
        }
        return "", reward, True, False, info


@lru_cache(maxsize=32)
def _dataset(task: str, seed: int, config_json: str) -> Any:
    """The dataset draws index into (cheap: reasoning-gym builds items when they are indexed)."""
    import reasoning_gym

    for size in STREAM_SIZES:
        try:
            return reasoning_gym.create_dataset(task, size=size, seed=seed, **json.loads(config_json))
        except ValueError as exc:
            if "size" not in str(exc).lower() or size == STREAM_SIZES[-1]:
                raise
    raise AssertionError("unreachable")


@lru_cache(maxsize=65536)
def _entry(task: str, seed: int, config_json: str, split: str, index: int) -> dict:
    """Problem ``index`` of ``split``; cached because every concurrent episode has its own env."""
    dataset = _dataset(task, seed, config_json)
    return draw(split, index, lambda position: dataset[position % len(dataset)], lambda e: str(e["question"]),
                "reasoning-gym", task, seed, config_json)
