"""The evaluation protocol: a (weights, prompt) pair scored on a fixed list of items.

Every score espl-bench reports comes from :func:`evaluate`: the loop's test evaluations, GEPA's
final one, ``select-best`` (on the validation split), ``espl-bench evaluate`` and the weights x
prompt breakdown. Its rules:

* The items are fixed by the run's split plan and sizes (:class:`EvalItems`): the first
  ``problems`` problems of the split, ``samples`` samples each. They never depend on the method.
* Each sample is seeded from its own coordinates, ``derive_seed("eval", seed, split, problem,
  sample)`` (and the rollout engine adds the turn): never from the method, the iteration, the
  run's training seed or what else shares the batch. With the in-process sampler, the same
  weights and the same prompt therefore give identical episodes, whichever method produced them.
* The result (:class:`CellResult`) keeps every problem's outcomes, so intervals and paired
  comparisons (:mod:`espl_bench.stats`) can treat the problem as the unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from espl_bench.agents.rollout import EpisodeSpec, Rollout, RolloutEngine
from espl_bench.agents.sampler import SamplingParams, derive_seed
from espl_bench import stats
from espl_bench.scoring.metrics import pass_at_k

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EvalItems:
    """What an evaluation scores: ``samples`` samples of each of ``indices`` of the env's ``split``."""

    split: str
    indices: tuple[int, ...]
    samples: int
    seed: int = 0
    placement: str = "system"

    @property
    def size(self) -> int:
        return len(self.indices) * self.samples

    def specs(self, prompt: str) -> list[EpisodeSpec]:
        return [EpisodeSpec(prompt, self.split, index, {"problem": index, "sample": n},
                            seed=derive_seed("eval", self.seed, self.split, index, n), placement=self.placement)
                for index in self.indices for n in range(self.samples)]

    def describe(self) -> str:
        return f"{self.split} split, {len(self.indices)} problems x {self.samples} samples"

    def to_dict(self) -> dict:
        return {"split": self.split, "indices": list(self.indices), "samples": self.samples, "seed": self.seed,
                "placement": self.placement}

    @classmethod
    def from_dict(cls, data: dict) -> EvalItems:
        return cls(str(data["split"]), tuple(int(i) for i in data["indices"]), int(data["samples"]),
                   int(data.get("seed", 0)), str(data.get("placement", "system")))


@dataclass(frozen=True)
class CellResult:
    """One (weights, prompt) pair on :class:`EvalItems`: per problem, each sample's success and reward."""

    items: EvalItems
    program: str  # the program's id (or a label such as "root")
    successes: tuple[tuple[int, ...], ...]  # [problem][sample] in 0/1
    rewards: tuple[tuple[float, ...], ...]
    problem_ids: tuple[str, ...] = ()
    invalid_actions: int = 0
    turns: int = 0
    generated_tokens: int = 0
    env_errors: int = 0
    weights: str = ""  # base | trained

    @property
    def rollouts(self) -> int:
        return sum(len(row) for row in self.successes)

    @property
    def per_problem(self) -> list[float]:
        """Each problem's success rate over its samples (the unit of every interval)."""
        return [sum(row) / len(row) for row in self.successes]

    @property
    def success(self) -> float:
        return sum(map(sum, self.successes)) / self.rollouts if self.rollouts else 0.0

    @property
    def interval(self) -> stats.Interval:
        return stats.interval(self.per_problem)

    @property
    def invalid_action_rate(self) -> float:
        return self.invalid_actions / self.turns if self.turns else 0.0

    def pass_at(self) -> dict[str, float]:
        n = self.items.samples
        return {f"pass@{k}": sum(pass_at_k(n, sum(row), k) for row in self.successes) / len(self.successes)
                for k in sorted({1, n})}

    def to_dict(self) -> dict:
        """The JSON form (``metrics["test"]``, the breakdown's cells): the headline numbers first."""
        return {
            "schema_version": SCHEMA_VERSION,
            "program": self.program,
            "weights": self.weights,
            "success": self.success,
            "interval": self.interval.to_dict(),
            **self.pass_at(),
            "invalid_action_rate": self.invalid_action_rate,
            "split": self.items.split,
            "problems": len(self.items.indices),
            "samples": self.items.samples,
            "items": self.items.to_dict(),
            "per_problem": {"ids": list(self.problem_ids), "successes": [list(r) for r in self.successes],
                            "rewards": [[round(x, 6) for x in r] for r in self.rewards]},
            "rollouts": self.rollouts,
            "turns": self.turns,
            "invalid_actions": self.invalid_actions,
            "generated_tokens": self.generated_tokens,
            "env_errors": self.env_errors,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CellResult:
        if "per_problem" not in data or "items" not in data:
            raise ValueError("an evaluation without per-problem outcomes (written before the evaluation protocol)")
        rows = data["per_problem"]
        return cls(EvalItems.from_dict(data["items"]), str(data.get("program", "")),
                   tuple(tuple(int(x) for x in r) for r in rows["successes"]),
                   tuple(tuple(float(x) for x in r) for r in rows["rewards"]), tuple(rows.get("ids", ())),
                   invalid_actions=int(data.get("invalid_actions", 0)), turns=int(data.get("turns", 0)),
                   generated_tokens=int(data.get("generated_tokens", 0)), env_errors=int(data.get("env_errors", 0)),
                   weights=str(data.get("weights", "")))


def evaluate(engine: RolloutEngine, prompt: str, program: str, items: EvalItems, params: SamplingParams,
             *, weights: str = "") -> CellResult:
    """Score ``prompt`` with the engine's current weights on ``items`` (see the module docstring)."""
    rollouts = engine.run(items.specs(prompt), params)
    return cell_from_rollouts(rollouts, items, program, weights=weights)


def cell_from_rollouts(rollouts: Sequence[Rollout], items: EvalItems, program: str, *, weights: str = "") -> CellResult:
    by_index: dict[int, list[Rollout]] = {index: [] for index in items.indices}
    for r in rollouts:
        by_index[r.spec.index].append(r)
    ordered = [sorted(by_index[i], key=lambda r: r.spec.tags["sample"]) for i in items.indices]
    return CellResult(
        items, program,
        successes=tuple(tuple(int(r.success) for r in row) for row in ordered),
        rewards=tuple(tuple(float(r.reward) for r in row) for row in ordered),
        problem_ids=tuple(row[0].problem_id if row else "" for row in ordered),
        invalid_actions=sum(r.invalid_actions for r in rollouts), turns=sum(r.turns for r in rollouts),
        generated_tokens=sum(r.generated_tokens for r in rollouts), env_errors=sum(r.error is not None for r in rollouts),
        weights=weights)


@dataclass
class Spent:
    """Evaluation rollouts and tokens a run spent (the budget ledger's evaluation line)."""

    rollouts: int = 0
    generated_tokens: int = 0
    by_split: dict[str, int] = field(default_factory=dict)

    def add(self, cell: CellResult) -> None:
        self.rollouts += cell.rollouts
        self.generated_tokens += cell.generated_tokens
        self.by_split[cell.items.split] = self.by_split.get(cell.items.split, 0) + cell.rollouts
