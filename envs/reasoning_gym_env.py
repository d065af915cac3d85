"""Single-turn reasoning tasks from reasoning-gym behind the :mod:`envs.base` contract.

Train and test splits are built from two reasoning-gym datasets with different seeds; test items
whose question also occurs in train are dropped, so the splits are disjoint by construction.
The reward is reasoning-gym's own ``score_answer`` on the extracted answer.
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from typing import Any

from envs.answers import extract_answer
from envs.base import TextEnv

ANSWER_FORMAT = "Think step by step, then give only the final answer inside <answer></answer> tags."
_TEST_SEED_OFFSET = 1_000_003


class ReasoningGymEnv(TextEnv):
    """One reasoning-gym dataset as a single-turn text environment."""

    metadata = {"render_modes": [], "kind": "reasoning"}

    def __init__(
        self,
        task: str = "basic_arithmetic",
        *,
        train_size: int = 1000,
        test_size: int = 200,
        data_seed: int = 0,
        success_threshold: float = 1.0,
        **task_config: Any,
    ):
        super().__init__(max_turns=1)
        self.task = task
        self.train_size = train_size
        self.test_size = test_size
        self.data_seed = data_seed
        self.success_threshold = success_threshold
        self.task_config = task_config
        self._entry: dict | None = None
        self._problem_id = ""

    @cached_property
    def _data(self) -> tuple[dict[str, list[dict]], Any]:
        return _build_splits(self.task, self.train_size, self.test_size, self.data_seed,
                             json.dumps(self.task_config, sort_keys=True))

    @property
    def _splits(self) -> dict[str, list[dict]]:
        return self._data[0]

    @property
    def _scorer(self) -> Any:
        return self._data[1]

    def split_size(self, split: str) -> int:
        return len(self._splits[split])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        split, index = self._pick(options)
        self._entry = self._splits[split][index]
        self._problem_id = f"{self.task}/{split}/{index}"
        observation = f"{self._entry['question']}\n\n{ANSWER_FORMAT}"
        return observation, {"problem_id": self._problem_id, "split": split, "index": index}

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
def _build_splits(task: str, train_size: int, test_size: int, seed: int, config_json: str) -> tuple[dict, Any]:
    """Both splits and the scoring dataset; cached because every concurrent episode has its own env."""
    import reasoning_gym

    config = json.loads(config_json)
    train = list(reasoning_gym.create_dataset(task, size=train_size, seed=seed, **config))
    seen = {e["question"] for e in train}
    # Oversample the test set so that removing overlaps still leaves test_size items.
    pool = reasoning_gym.create_dataset(task, size=test_size + max(5, test_size // 2), seed=seed + _TEST_SEED_OFFSET,
                                        **config)
    test = [e for e in pool if e["question"] not in seen][:test_size]
    return {"train": train, "test": test}, pool
