"""The fixed, versioned benchmark suite that ``espl-bench bench`` runs and scores.

A suite is a list of :class:`SuiteConfig` (env, method, model, seed, budget). Its identity for
score regression is :class:`SuiteId`, where the budget is named, not spelled out: changing what a
budget means, or the list itself, must bump :data:`SUITE_VERSION`, because stored baselines are
only comparable within one version.

Contract:

* ``SUITES[name]`` is a :class:`Suite`; ``get_suite(name)`` raises ``KeyError`` naming the
  known suites otherwise.
* ``SuiteConfig.run_args(out)`` is the ``espl-bench run`` argument list for that configuration
  (every flag exists in :class:`espl_bench.config.RunConfig`).
* ``SuiteConfig.suite_id`` is hashable and round-trips through ``SuiteId.to_dict`` /
  ``SuiteId.from_obj`` (the JSON form used in results and baseline files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from espl_bench.method_table import METHODS as _SPECS

SUITE_VERSION = "9"  # 2: gepa joined the methods; 3: the evaluation protocol, disjoint content splits; 4: structured reflection;
# 5: the in-process reflector decodes in bfloat16 where the CPU has it; a reply of at most 64 tokens is not summarised;
# 6: the in-process reflector's structured answers skip the tokens the grammar forces (other draws, other answers);
# 7: every edit passes the admission rule (espl/method/admission.py): junk principles no longer become children
# 8: GEPA's validation set sized from its own guidance (espl/baselines/gepa.py valset_size: 10 problems at the
#    calibrated budget, where it had batch_size = 4); from d5154db's successor on, GEPA's proposals pass the admission
#    rule as whole prompts (the two GEPA runs made at 8 before it, leaderboards/calibrated-v8, were discarded); later
#    commits close holes in the rule ("the answer is: 24", "as follows...", "this is just an example"), so each env of a
#    board at 8 names the commit its runs were made at;
# 9: each evaluation cell is decoded in a call of its own (espl/scoring/evaluation.py): in bfloat16 a cell scored beside
#    another prompt's is not bit for bit the cell scored alone (at 8 the arithmetic base/root cell differed by a problem);
#    the admission rule refuses five words in a row of a problem shown and a named letter's count (15 of the 48 distinct
#    principles in the v8 letter-counting pools were fragments of its passages), before any run at 9 was made

METHODS = tuple(_SPECS)  # the one method table's names
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class RunSizes:
    """How much compute one suite run gets: the sizes passed to ``espl-bench run`` (what a run then
    spent is its :class:`espl_bench.records.Budget`)."""

    name: str
    iterations: int
    programs: int
    batch_size: int
    group_size: int
    eval_problems: int
    eval_samples: int
    max_new_tokens: int
    extra: tuple[str, ...] = ()  # further run flags (cheaper evaluation or reflection)

    def run_args(self) -> list[str]:
        return ["--iterations", str(self.iterations), "--programs", str(self.programs),
                "--batch-size", str(self.batch_size), "--group-size", str(self.group_size),
                "--eval-problems", str(self.eval_problems), "--eval-samples", str(self.eval_samples),
                "--max-new-tokens", str(self.max_new_tokens), *self.extra]


BUDGETS: dict[str, RunSizes] = {
    "smoke": RunSizes("smoke", iterations=2, programs=2, batch_size=2, group_size=2, eval_problems=4,
                    eval_samples=2, max_new_tokens=64),
    # the committed leaderboard (leaderboards/README.md): every method, three envs, three seeds
    "board": RunSizes("board", iterations=2, programs=2, batch_size=2, group_size=2, eval_problems=8,
                    eval_samples=2, max_new_tokens=64, extra=("--eval-every", "0")),
    "small": RunSizes("small", iterations=4, programs=3, batch_size=4, group_size=4, eval_problems=16,
                    eval_samples=2, max_new_tokens=128),
    # the calibrated experiment (leaderboards/calibrated-v8/README.md): groups of 4 as calibrated, the
    # final evaluation only, one sample on each of 300 problems (sized by scripts/power.py for a
    # detectable difference of 5 points; problems, not samples, buy power);
    # flat groups left out of the step (with dr_grpo the gradient is the same, the compute is not);
    # a LoRA learning rate 5x the paper's, so that four steps move a 135M policy at all
    "calibrated": RunSizes("calibrated", iterations=4, programs=2, batch_size=4, group_size=4, eval_problems=300,
                         eval_samples=1, max_new_tokens=64,
                         extra=("--eval-every", "0", "--skip-flat-groups", "--learning-rate", "2e-4",
                                "--micro-batch-size", "8", "--no-gradient-checkpointing")),
    # issue 23's long runs: the calibrated sizes for 30 iterations, to see whether RL's training
    # success rises beyond noise over the steps (the learning curve is the train side, per iteration)
    "long": RunSizes("long", iterations=30, programs=2, batch_size=4, group_size=4, eval_problems=300,
                     eval_samples=1, max_new_tokens=64,
                     extra=("--eval-every", "0", "--skip-flat-groups", "--learning-rate", "2e-4",
                            "--micro-batch-size", "8", "--no-gradient-checkpointing")),
}

# The settings `espl-bench calibrate` chose for the embedded model (calibration/<env>/config.yaml,
# committed; tests/test_calibrate.py keeps the two equal).
CALIBRATED: dict[str, dict[str, Any]] = {
    "rg/letter_counting-v0": {"min_words": 5, "max_words": 15, "test_size": 300},
    # 1-digit pairs are a small content space: its first 100 test problems hold 87 distinct
    # questions, its first 300 only 215, so its test split stops at 100
    "espl/Arithmetic-v0": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "test_size": 100},
}


@dataclass(frozen=True)
class SuiteId:
    """The key a score is stored under: (env, method, model, seed, budget name)."""

    env: str
    method: str
    model: str
    seed: int
    budget: str

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "method": self.method, "model": self.model, "seed": self.seed, "budget": self.budget}

    @classmethod
    def from_obj(cls, obj: Any) -> SuiteId:
        """From the JSON form: an object with the five keys, or a list in field order."""
        if isinstance(obj, dict):
            missing = [k for k in ("env", "method", "model", "seed", "budget") if k not in obj]
            if missing:
                raise ValueError(f"suite_id lacks {', '.join(missing)}")
            obj = [obj["env"], obj["method"], obj["model"], obj["seed"], obj["budget"]]
        if not isinstance(obj, (list, tuple)) or len(obj) != 5:
            raise ValueError("suite_id must be an object {env, method, model, seed, budget} or a list of those five")
        env, method, model, seed, budget = obj
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"suite_id seed must be an integer, got {seed!r}")
        return cls(str(env), str(method), str(model), seed, str(budget))

    def label(self) -> str:
        return f"{self.env} {self.method} {self.model} seed={self.seed} budget={self.budget}"


@dataclass(frozen=True)
class SuiteConfig:
    """One run of the suite."""

    env: str
    method: str
    model: str
    seed: int
    budget: RunSizes
    env_kwargs: str = ""  # JSON: the env's calibrated setting (the board shows runs with it apart)

    @property
    def suite_id(self) -> SuiteId:
        return SuiteId(self.env, self.method, self.model, self.seed, self.budget.name)

    def run_args(self, out: str) -> list[str]:
        """Arguments for ``espl-bench run`` writing its run folder to ``out``."""
        return ["--env", self.env, *(["--env-kwargs", self.env_kwargs] if self.env_kwargs else []),
                "--method", self.method, "--model", self.model, "--seed", str(self.seed),
                *self.budget.run_args(), "--out", out]


@dataclass(frozen=True)
class Suite:
    """A named, versioned list of configurations."""

    name: str
    version: str
    configs: tuple[SuiteConfig, ...]


def _seed_major(envs: tuple[str, ...], seeds: tuple[int, ...], budget: RunSizes) -> tuple[SuiteConfig, ...]:
    # Seed-major: a suite stopped part-way still covers every env and method with its first seeds.
    return tuple(SuiteConfig(env, method, DEFAULT_MODEL, seed, budget)
                 for seed in seeds for env in envs for method in METHODS)


def _calibrated(seeds: tuple[int, ...], budget: RunSizes) -> tuple[SuiteConfig, ...]:
    return tuple(SuiteConfig(env, method, DEFAULT_MODEL, seed, budget, json.dumps(kwargs, sort_keys=True))
                 for seed in seeds for env, kwargs in CALIBRATED.items() for method in METHODS)


def _grid(envs: tuple[str, ...], seeds: tuple[int, ...], budget: RunSizes) -> tuple[SuiteConfig, ...]:
    return tuple(SuiteConfig(env, method, DEFAULT_MODEL, seed, budget)
                 for env in envs for method in METHODS for seed in seeds)


SUITES: dict[str, Suite] = {
    # every method once on the quickest env: minutes on a laptop CPU
    "smoke": Suite("smoke", SUITE_VERSION, _grid(("espl/Arithmetic-v0",), (0,), BUDGETS["smoke"])),
    # three seeds per method on a single-turn, a tool-use and a game env
    "standard": Suite("standard", SUITE_VERSION, _grid(
        ("espl/Arithmetic-v0", "espl/ToolUse-v0", "espl/GuessTheNumber-v0"), (0, 1, 2), BUDGETS["small"])),
    # a quick board (hours on a 2-core CPU; not the committed one, leaderboards/calibrated-v8/): a reasoning
    # task, a multi-turn tool-use task and a reasoning-gym task, every method, seeds in order
    "board": Suite("board", SUITE_VERSION, _seed_major(
        ("espl/Arithmetic-v0", "espl/ToolUse-v0", "rg/letter_counting-v0"), (0, 1, 2), BUDGETS["board"])),
    # the experiment on leaderboards/calibrated-v8/: every calibrated env, every method, seeds in order
    "calibrated": Suite("calibrated", SUITE_VERSION, _calibrated((0, 1, 2, 3, 4), BUDGETS["calibrated"])),
    # long runs on the calibrated letter counting: rl's three seeds first, then espl's
    "long": Suite("long", SUITE_VERSION, tuple(
        SuiteConfig("rg/letter_counting-v0", method, DEFAULT_MODEL, seed, BUDGETS["long"],
                    json.dumps(CALIBRATED["rg/letter_counting-v0"], sort_keys=True))
        for method in ("rl", "espl") for seed in (0, 1, 2))),
}


def get_suite(name: str) -> Suite:
    """The suite called ``name``; ``KeyError`` lists the known names."""
    try:
        return SUITES[name]
    except KeyError:
        raise KeyError(f"unknown suite {name!r}; known: {', '.join(sorted(SUITES))}") from None
