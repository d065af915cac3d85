"""Train, validation and test are disjoint by content for every built-in env, and the check catches overlap."""

import json

import gymnasium as gym
import pytest

from espl_bench.envs.base import TextEnv
from espl_bench.envs.check import check, split_overlap
from espl_bench.envs.registry import BUILTIN
from espl_bench.envs.splits import SPLITS, SplitPlan, content_split, draw

FAST = {"espl/SearchQA-v0": {"corpus_size": 300, "train_size": 60, "validation_size": 20, "test_size": 30},
        "espl/TwentyQuestions-v0": {"gamemaster": "never-called/model"}}
REASONING_GYM = ["rg/letter_counting-v0", "rg/chain_sum-v0", "rg/word_sorting-v0", "rg/sokoban-v0",
                 "rg/zebra_puzzles-v0", "rg/propositional_logic-v0", "rg/gsm_symbolic-v0", "rg/word_ladder-v0"]


@pytest.fixture
def math_files(tmp_path):
    rows = {"train": [f"What is {i} + {i}?" for i in range(30)] + ["What is 3 + 3?"],  # a repeat within train
            "test": [f"What is {i} * 7?" for i in range(10)] + ["What is 4 + 4?"]}  # a test problem also in train
    for split, problems in rows.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"problem": p, "answer": 1}) + "\n" for p in problems))
    return {"train_path": str(tmp_path / "train.jsonl"), "test_path": str(tmp_path / "test.jsonl")}


@pytest.mark.parametrize("env_id", [spec.id for spec in BUILTIN] + REASONING_GYM)
def test_every_builtin_env_has_disjoint_splits(env_id, math_files):
    kwargs = math_files if env_id == "espl/MathJSONL-v0" else FAST.get(env_id, {})
    slow = env_id in ("rg/zebra_puzzles-v0", "rg/sokoban-v0")  # ~0.2 s an item
    report = split_overlap(env_id, kwargs, limit=12 if slow else 60)
    assert report.ok, report.describe()
    assert all(report.checked[s] > 0 for s in SPLITS), report.describe()


def test_math_files_lose_repeats_and_test_problems_seen_in_train(math_files):
    from espl_bench.envs.registry import make_env

    env = make_env("espl/MathJSONL-v0", **math_files)
    assert env.unwrapped.split_size("train") == 30 and env.unwrapped.split_size("test") == 10
    report = split_overlap("espl/MathJSONL-v0", math_files, validation_problems=8)
    assert report.derived_validation and report.sizes == {"train": 22, "validation": 8, "test": 10} and report.ok


class Overlapping(TextEnv):
    """Its test split repeats train problems: the check must say so."""

    keyed = True

    def split_size(self, split):
        return {"train": 20, "test": 5}[split]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        split, index = self._pick(options)
        question = f"Spell word number {index % 10}."
        return question, {"problem_id": f"{split}/{index}", **({"content_key": question} if self.keyed else {})}

    def step(self, action):
        return "", 0.0, True, False, {"answer": "", "success": False, "valid": True, "metadata": {}}


def test_the_check_fails_on_an_env_whose_splits_overlap():
    gym.register(id="overlap_test/Overlapping-v0", entry_point=Overlapping, disable_env_checker=True)
    try:
        report = split_overlap("overlap_test/Overlapping-v0", validation_problems=4)
        assert not report.ok
        assert report.shared["train/test"] and report.shared["validation/test"] and report.derived_validation
        full = check("overlap_test/Overlapping-v0")
        assert not full.ok and any("share problems" in f for f in full.failures)
        # without content keys, equal first observations may hide different problems: a warning
        Overlapping.keyed = False
        unkeyed = check("overlap_test/Overlapping-v0")
        assert unkeyed.ok and any("share problems" in w and "gives no content_key" in w for w in unkeyed.warnings)
    finally:
        Overlapping.keyed = True
        gym.registry.pop("overlap_test/Overlapping-v0")


def test_content_decides_the_split_and_draws_are_pure_functions_of_their_coordinates():
    assert {content_split(f"question {i}") for i in range(100)} == set(SPLITS)
    assert content_split("same") == content_split("same")
    made = []

    def make(seed):
        made.append(seed)
        return f"item {seed % 997}"

    first = draw("test", 3, make, str, "tag")
    assert content_split(first) == "test" and draw("test", 3, make, str, "tag") == first
    other = next(split for split in SPLITS if split != content_split("the one problem"))
    with pytest.raises(ValueError, match="too small"):  # a content space of one problem cannot fill three splits
        draw(other, 0, lambda seed: "the one problem", str, "tiny")


def test_a_split_plan_holds_validation_out_of_train_only_when_the_env_has_none():
    plan = SplitPlan.of_sizes(100, 20, validation=16)
    assert plan.derived_validation and (plan.train.start, plan.train.size, plan.validation.size) == (16, 84, 16)
    assert SplitPlan.of_sizes(10, 5, validation=16).validation.size == 5  # at most half the train split


@pytest.mark.parametrize("env_id", ["rg/sokoban-v0", "rg/zebra_puzzles-v0"])
def test_the_first_reset_builds_a_few_items_not_the_split(env_id, monkeypatch):
    import espl_bench.envs.reasoning_gym_env as rg
    from espl_bench.envs.registry import make_env

    rg._entry.cache_clear()
    built = []
    dataset = rg._dataset(*make_env(env_id).unwrapped._key)
    original = type(dataset).__getitem__
    monkeypatch.setattr(type(dataset), "__getitem__", lambda self, idx: built.append(idx) or original(self, idx))
    env = make_env(env_id)
    env.reset(options={"split": "test", "index": 150})  # far into the split
    assert 1 <= len(built) <= 30  # a third of the items hash into a split: a few draws, not 1,400 items
