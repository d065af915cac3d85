"""The run folder's typed records: every file a run writes and every reader reads goes through these.

Each record has a ``schema_version`` and ``to_dict``/``from_dict``; the runner writes them, and
the leaderboard, ``bench``, ``select-best`` and ``evaluate`` read them, so a field is defined once.
:mod:`espl_bench.rundir` is the one module that knows which file holds which record.
A file this version cannot read (an older schema, a missing field) raises
:class:`~espl_bench.errors.RecordError` with one line naming the file and the fix.

* :class:`EvalItems`, :class:`CellResult`: what an evaluation scored and its per-problem outcomes
  (:mod:`espl_bench.scoring.evaluation` makes them).
* :class:`Breakdown`: the weights x prompt cells and effects (:mod:`espl_bench.scoring.breakdown`).
* :class:`IterationMetrics`: one committed iteration (``iterations/N/metrics.json``, a line of
  ``metrics.jsonl``).
* :class:`ReflectionRecord`: one mutation or crossover (a line of ``reflections.jsonl``).
* :class:`PoolRecord`, :class:`IterationState`: the pool and the resume state of a committed iteration.
* :class:`Usage`: one metered model's calls, tokens and dollars; :class:`Budget`: what a run spent.
* :class:`RunSummary`: the run at a glance (``summary.json``), with the budget ledger (and for a
  GEPA run its :class:`GepaSelection`).
* :class:`RunHeader`: the config, template hashes and precision a run started with (``run.json``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)

from espl_bench import stats
from espl_bench.errors import RecordError

SCHEMA_VERSION = 2  # 2: the evaluation protocol (per-problem results, breakdown, budget ledger)


# -- evaluations -----------------------------------------------------------------------------------


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
        return {f"pass@{k}": sum(stats.pass_at_k(n, sum(row), k) for row in self.successes) / len(self.successes)
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
        if not isinstance(data, dict) or "per_problem" not in data or "items" not in data:
            raise RecordError("an evaluation without per-problem outcomes (written before the evaluation protocol); "
                              "fix: re-run it with this version")
        try:
            rows = data["per_problem"]
            return cls(EvalItems.from_dict(data["items"]), str(data.get("program", "")),
                       tuple(tuple(int(x) for x in r) for r in rows["successes"]),
                       tuple(tuple(float(x) for x in r) for r in rows["rewards"]), tuple(rows.get("ids", ())),
                       invalid_actions=int(data.get("invalid_actions", 0)), turns=int(data.get("turns", 0)),
                       generated_tokens=int(data.get("generated_tokens", 0)), env_errors=int(data.get("env_errors", 0)),
                       weights=str(data.get("weights", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"an evaluation result is malformed ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class Breakdown:
    """The weights x prompt cells a run scored and the effects they support (:mod:`espl_bench.scoring.breakdown`)."""

    items: EvalItems
    root: str  # program ids
    program: str
    cells: dict[str, CellResult]  # "weights/prompt" -> result
    effects: dict[str, stats.Interval]
    reused: tuple[str, ...] = ()  # cells taken from an earlier evaluation (not spent again)

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "measured_on": self.items.describe(), "items": self.items.to_dict(),
                "root_program": self.root, "test_program": self.program, "reused": list(self.reused),
                "cells": {name: {k: v for k, v in cell.to_dict().items() if k != "items"}
                          for name, cell in self.cells.items()},
                "effects": {name: i.to_dict() for name, i in self.effects.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> Breakdown:
        try:
            items = data["items"]
            return cls(EvalItems.from_dict(items), str(data["root_program"]), str(data["test_program"]),
                       {name: CellResult.from_dict({**cell, "items": items}) for name, cell in data["cells"].items()},
                       {name: stats.Interval.from_dict(i) for name, i in data["effects"].items()},
                       tuple(data.get("reused", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"a weights x prompt breakdown is malformed ({type(exc).__name__}: {exc})") from None


# -- run-folder files --------------------------------------------------------------------------------


class Record(BaseModel):
    """A versioned JSON record of the run folder."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any, where: str = ""):
        """The record in ``data``; :class:`RecordError` (one line, with the fix) when it cannot be read."""
        name = where or cls.__name__
        if not isinstance(data, dict):
            raise RecordError(f"{name} is not a JSON object; fix: restore the file or re-run")
        version = data.get("schema_version", 1)
        if version != SCHEMA_VERSION:
            raise RecordError(f"{name} has schema version {version}, this espl-bench reads {SCHEMA_VERSION} (written "
                              f"{'before' if isinstance(version, int) and version < SCHEMA_VERSION else 'after'} the "
                              "evaluation protocol); fix: re-run it with this version")
        try:
            return cls.model_validate(data)
        except (ValidationError, RecordError) as exc:
            first = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
            loc = ".".join(str(x) for x in first["loc"]) or "record"
            raise RecordError(f"{name}: {loc}: {first['msg']}; fix: restore the file or re-run") from None


def _cell(value):
    return value if value is None or isinstance(value, CellResult) else CellResult.from_dict(value)


class Rating(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mu: float
    sigma: float


class ReflectionCounts(BaseModel):
    """How many children an iteration's reflection really produced, by source, and what did not."""

    model_config = ConfigDict(extra="forbid")
    children: dict[str, int] = Field(default_factory=lambda: {"revision": 0, "fallback": 0, "crossover": 0})
    failed: int = 0
    skipped: int = 0
    copied_edits_rejected: int = 0  # edits refused as a copy of the templates or a placeholder
    # every edit the admission rule refused (espl_bench.method.admission), by reason; copies
    # included. None: written before the rule (suite version 7), so nothing was refused by it.
    rejected_edits: dict[str, int] | None = None
    edit_calls: dict[str, int] = Field(default_factory=dict)  # by path: schema (structured output) | fallback


class PhaseSpan(BaseModel):
    """When a phase ran: wall-clock seconds (``time.time()``), so phases of two iterations compare."""

    model_config = ConfigDict(extra="forbid")
    start: float
    end: float


class Staleness(BaseModel):
    """How off-policy an iteration's batch was under ``--max-staleness`` K > 0 (None with K = 0).

    ``staleness``: optimizer steps between the weights that sampled the batch (``sampled_with``
    steps applied) and the weights its step starts from (``iteration - 1`` steps applied).
    ``phases``: ``rollouts`` (this batch's sampling, possibly during the previous step) and
    ``step`` (this iteration's RL step, submit to applied). ``regenerated``: batches sampled for
    this iteration but found more than K steps old and sampled again; ``discarded_rollouts``:
    their rollouts (the budget counts them in ``rollouts`` too)."""

    model_config = ConfigDict(extra="forbid")
    max_staleness: int
    staleness: int
    sampled_with: int
    prefetched: bool  # sampled during the previous iteration's step (not after it)
    regenerated: int = 0
    discarded_rollouts: int = 0
    phases: dict[str, PhaseSpan] = Field(default_factory=dict)


class PendingBatch(BaseModel):
    """The next iteration's batch, sampled during this iteration's step (``--max-staleness``) and
    committed with it (``state.json``'s ``pending``), so a resumed run trains on the very rollouts
    an uninterrupted one would. Programs and rollouts as their own ``to_dict``/``to_record`` write them."""

    model_config = ConfigDict(extra="forbid")
    iteration: int
    programs: list[dict[str, Any]]
    problems: list[int]
    rollouts: list[dict[str, Any]]
    sampled_with: int
    span: PhaseSpan


class ImportanceWeights(BaseModel):
    """TRL's truncated importance-sampling correction of one step (sampler's log-probabilities as
    the behaviour policy): the weights before truncation, over the tokens (or sequences, in TRL's
    sequence modes) that carry loss, and the share above the cap that truncation changed."""

    model_config = ConfigDict(extra="forbid")
    mean: float
    max: float
    truncated_share: float
    cap: float


class IterationMetrics(Record):
    """One committed iteration: rewards, ratings, reflection outcomes, learning, evaluation, timing."""

    iteration: int
    train_reward: float
    train_success: float
    train_problem_success: list[float] = Field(default_factory=list)  # per training problem, over programs x samples
    groups: int = 0  # baseline groups of the RL batch
    flat_groups: int = 0  # groups whose rewards are all equal (no advantage; learning.is_flat)
    left_out_groups: int = 0  # flat groups left out of the RL step (--skip-flat-groups)
    valid_rate: float = 0.0
    invalid_action_rate: float = 0.0
    env_errors: int = 0
    program_scores: dict[str, float] = Field(default_factory=dict)
    ratings: dict[str, Rating] = Field(default_factory=dict)
    reflections: dict[str, str] = Field(default_factory=dict)  # kind -> label
    reflection_counts: ReflectionCounts = Field(default_factory=ReflectionCounts)
    reflection_calls: int = 0
    reflection_failures: int = 0
    children: list[str] = Field(default_factory=list)
    rollouts: int  # the rollouts the method paid for this iteration (validation passes included)
    validation_rollouts: int = 0
    generated_tokens: int = 0
    learner: dict[str, float] = Field(default_factory=dict)
    test: CellResult | None = None
    usage: dict[str, Usage] = Field(default_factory=dict)
    seconds: float = 0.0
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    gepa: dict[str, Any] | None = None  # GEPA's own account of its search
    staleness: Staleness | None = None  # --max-staleness > 0: how old the batch was, when phases ran
    importance: ImportanceWeights | None = None  # the step's importance weights (a correction was applied)  # GEPA's own account of its search

    @field_validator("test", mode="before")
    @classmethod
    def _test(cls, value):
        return _cell(value)

    @field_serializer("test")
    def _dump_test(self, value: CellResult | None):
        return None if value is None else value.to_dict()


class ReflectionRecord(Record):
    """One mutation or crossover, with every reflector prompt and answer (for audit and replay)."""

    kind: str
    status: str
    label: str
    reason: str = ""
    child: str | None = None
    calls: int = 0
    repairs: int = 0
    fallback: bool = False
    copies: int = 0  # edits refused as a copy of the templates or a placeholder
    rejected: dict[str, int] = Field(default_factory=dict)  # edits the admission rule refused, by reason
    paths: dict[str, int] = Field(default_factory=dict)  # edit calls by path: schema | fallback
    log: list[dict[str, Any]] = Field(default_factory=list)


class ProgramRecord(BaseModel):
    """One program of the pool as ``pool.json`` keeps it (:class:`espl_bench.method.program.Program`)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    principles: dict[str, str]
    preamble: str
    parents: list[str] = Field(default_factory=list)
    origin: str = "root"  # root | mutation | crossover
    iteration: int = 0  # the iteration that created it
    mu: float = 25.0
    sigma: float = 25.0 / 3.0
    edits: list[dict[str, Any]] = Field(default_factory=list)


class PoolRecord(BaseModel):
    """The pool after an iteration (``pool.json``): programs in creation order, and the lineage of
    every program ever made (evicted ones included)."""

    model_config = ConfigDict(extra="forbid")
    max_size: int
    next_index: int
    programs: list[ProgramRecord]
    lineage: dict[str, list[str]]


class IterationState(BaseModel):
    """What resume needs besides the pool (``state.json``): the loop's RNG state, the learner's step and
    the batch prefetched for the next iteration (``--max-staleness``; absent when none)."""

    model_config = ConfigDict(extra="forbid")
    iteration: int
    rng: list[Any] = Field(default_factory=list)  # random.Random.getstate() as JSON lists ([] when unrecorded)
    learner_step: int = 0
    pending: PendingBatch | None = None  # --max-staleness: the next iteration's batch, sampled during this step


class Usage(BaseModel):
    """Calls, tokens and dollars of one metered model (the reflector, an API policy); ``cost_usd`` is 0
    where litellm has no price.

    The one usage record: a live meter (``called``, ``failed``, ``add``; calls run from many threads,
    so each update takes a lock) and the per-iteration and per-run totals of the run folder.
    """

    model_config = ConfigDict(extra="forbid")
    calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def called(self) -> None:
        with _USAGE_LOCK:
            self.calls += 1

    def failed(self) -> None:
        with _USAGE_LOCK:
            self.failures += 1

    def add(self, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        with _USAGE_LOCK:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cost_usd += cost_usd

    def as_dict(self) -> dict:
        """A consistent snapshot (dollars rounded to 6 places, as the run folder keeps them)."""
        with _USAGE_LOCK:
            return {"calls": self.calls, "failures": self.failures, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6)}

    @classmethod
    def total(cls, items: list[Usage]) -> Usage:
        """The sum of ``items`` (a run's total, also across resumed sessions)."""
        return cls(calls=sum(u.calls for u in items), failures=sum(u.failures for u in items),
                   prompt_tokens=sum(u.prompt_tokens for u in items),
                   completion_tokens=sum(u.completion_tokens for u in items),
                   cost_usd=round(sum(u.cost_usd for u in items), 6))


# One lock for every meter: updates are rare (one per model call), and a lock kept on the record
# itself would make two equal records compare unequal (pydantic compares private attributes).
_USAGE_LOCK = threading.Lock()


class GitState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    commit: str | None = None
    dirty: bool = False


class Provenance(BaseModel):
    """The code that made a run: espl-bench's version and commit, Python, platform, CUDA, libraries."""

    model_config = ConfigDict(extra="forbid")
    espl_bench: str | None = None
    git: GitState | None = None
    python: str | None = None
    platform: str | None = None
    cuda: str | None = None
    packages: dict[str, str | None] = Field(default_factory=dict)

    def describe(self) -> str:
        """``espl-bench VERSION @ COMMIT`` (``+dirty`` with local changes)."""
        at = ""
        if self.git is not None and self.git.commit:
            at = f" @ {self.git.commit[:10]}{'+dirty' if self.git.dirty else ''}"
        return f"espl-bench {self.espl_bench or '?'}{at}"


class TestProgram(BaseModel):
    """The program a run is scored with, and the rule that chose it."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(extra="forbid")
    id: str
    rule: str
    mu: float
    sigma: float
    text: str


class Budget(BaseModel):
    """What a run spent: rollouts by purpose, tokens, reflector calls and tokens, seconds by phase."""

    model_config = ConfigDict(extra="forbid")
    training_rollouts: int = 0
    validation_rollouts: int = 0
    evaluation_rollouts: int = 0
    generated_tokens: dict[str, int] = Field(default_factory=lambda: {"training": 0, "evaluation": 0})
    reflector: dict[str, int] = Field(default_factory=lambda: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
    seconds_by_phase: dict[str, float] = Field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.seconds_by_phase.values())


class Precision(BaseModel):
    """The policy's precision: ``--dtype`` as given, the dtype it meant on the machine that wrote the
    record (None for a hosted policy, whose precision is its provider's), the attention kernels."""

    model_config = ConfigDict(extra="forbid")
    dtype: str
    resolved: str | None = None
    attn_implementation: str | None = None  # None: transformers' own choice


class GepaSelection(BaseModel):
    """The candidate a GEPA search ended on (its validation best, the test-time program) and
    whether it is the root: the seed prompt, which wins GEPA's ties."""

    model_config = ConfigDict(extra="forbid")
    winner: str  # program id, p<GEPA's best_idx>
    root: bool
    candidates: int
    validation_problems: int  # one sample each
    winner_score: float  # validation means
    root_score: float


class RunSummary(Record):
    """The run at a glance (``summary.json``)."""

    env: str
    method: str
    model: str
    seed: int
    reflector: str | None = None
    iterations_completed: int
    iterations_planned: int
    train_reward: list[float] = Field(default_factory=list)
    splits: dict[str, Any] = Field(default_factory=dict)
    test: CellResult | None = None
    test_program: TestProgram
    breakdown: Breakdown | None = None
    pool_size: int = 1
    reflection: ReflectionCounts = Field(default_factory=ReflectionCounts)
    reflection_failures: int = 0
    rollouts: int = 0
    generated_tokens: int = 0
    budget: Budget = Field(default_factory=Budget)
    usage: dict[str, Usage] = Field(default_factory=dict)  # by model: reflector, policy
    seconds_this_session: float = 0.0
    provenance: Provenance | None = None  # None: made before runs recorded their code
    precision: Precision | None = None  # None: made before runs recorded it
    gepa: GepaSelection | None = None  # GEPA runs: which candidate won; None otherwise or made before it was recorded

    @field_validator("test", mode="before")
    @classmethod
    def _test(cls, value):
        return _cell(value)

    @field_validator("breakdown", mode="before")
    @classmethod
    def _breakdown(cls, value):
        return value if value is None or isinstance(value, Breakdown) else Breakdown.from_dict(value)

    @field_serializer("test")
    def _dump_test(self, value: CellResult | None):
        return None if value is None else value.to_dict()

    @field_serializer("breakdown")
    def _dump_breakdown(self, value: Breakdown | None):
        return None if value is None else value.to_dict()

    @property
    def finished(self) -> bool:
        return self.iterations_completed >= self.iterations_planned

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.usage.values())

    @property
    def reflector_usage(self) -> Usage:
        return self.usage.get("reflector") or Usage()


class RunHeader(Record):
    """What a run started with (``run.json``): its config (a RunConfig dump) and template hashes."""

    config: dict[str, Any]
    templates: dict[str, str] = Field(default_factory=dict)
    precision: Precision | None = None  # None: made before runs recorded it
    gepa: GepaSelection | None = None  # GEPA runs: which candidate won; None otherwise or made before it was recorded

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """The env's keyword arguments the run was made with ({} when none were given)."""
        return dict(self.config.get("env_kwargs") or {})
