"""One E-SPL iteration, in the order of the paper's Algorithm 1.

The loop only orchestrates: sampling, rating, reflection, learning and storage sit behind their
seams (``RolloutEngine``, :mod:`espl.rating`, ``Mutation``/``Crossover``, ``Learner``,
``RunDir``), so it runs the same with fakes in tests and with real models in a run.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.llm_router import usage_delta
from agents.rollout import EpisodeSpec, Rollout, RolloutEngine
from agents.sampler import SamplingParams
from espl.advantage import training_batch
from espl.config import RunConfig
from espl.faults import maybe_kill
from espl.learner import Learner
from espl.metrics import pass_at_k
from espl.program import Pool, Program
from espl.rating import update_ratings
from espl.reflection import Crossover, Mutation, ReflectionOutcome, win_matrix
from espl.selection import Selector

log = logging.getLogger(__name__)

# What the learner reports per step that a run keeps (plus TRL's sampling/* importance-sampling
# statistics when the samples come from another engine); synced_step: weights a server now serves.
LEARNER_METRICS = ("loss", "grad_norm", "learning_rate", "entropy", "synced_step")


@dataclass
class Parts:
    """The seams one run is built from (real or fake)."""

    engine: RolloutEngine
    learner: Learner
    selector: Selector
    mutation: Mutation | None
    crossover: Crossover | None
    train_size: int  # the env's train split; its first ``validation_size`` problems are the validation split
    test_size: int
    eos_id: int
    validation_size: int = 0
    reflector: object | None = None  # the Reflector behind mutation and crossover (GEPA calls it directly)
    # name -> cumulative usage snapshot (calls, tokens, dollars) of a metered model (reflector, API policy)
    meters: dict[str, Callable[[], dict]] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)  # servers to stop, in order

    def close(self) -> None:
        self.learner.close()
        for close in self.closers:
            close()


@dataclass
class IterationResult:
    rollouts: list[Rollout]
    outcomes: list[ReflectionOutcome]
    metrics: dict


class EsplLoop:
    def __init__(self, cfg: RunConfig, parts: Parts, pool: Pool, rng: random.Random):
        self.cfg = cfg
        self.parts = parts
        self.pool = pool
        self.rng = rng

    def schedule(self, done: int) -> range:
        """The iterations still to run after ``done`` committed ones."""
        return range(done + 1, self.cfg.iterations + 1)

    def sampling(self, iteration: int, salt: int = 0) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                              top_p=self.cfg.top_p, seed=(self.cfg.seed * 1_000_003 + iteration * 7919 + salt) % 2**31)

    def iteration(self, t: int, progress: Callable[[str], None] = lambda name: None) -> IterationResult:
        cfg, parts = self.cfg, self.parts
        started = time.monotonic()
        spent_before = {name: meter() for name, meter in parts.meters.items()}
        timings: dict[str, float] = {}
        clock = [started, ""]

        def phase(name: str) -> None:
            now = time.monotonic()
            if clock[1]:
                timings[clock[1]] = round(now - clock[0], 2)
            clock[0], clock[1] = now, name
            progress(name)
            maybe_kill(t, name)

        # 1. select M programs from the K most recent
        window = self.pool.window(1 if cfg.method == "self-reflection" else cfg.window)
        programs = parts.selector.select(window, cfg.selected_programs, self.rng)
        trainable = range(parts.validation_size, parts.train_size)
        problems = self.rng.sample(trainable, min(cfg.batch_size, len(trainable)))
        # 2-3. rollouts of every (program, problem) pair, N samples each, generated together
        phase("rollouts")
        specs = [EpisodeSpec(p.render(), "train", q, {"program": p.id, "slot": s, "problem": j, "sample": n})
                 for s, p in enumerate(programs) for j, q in enumerate(problems) for n in range(cfg.group_size)]
        rollouts = parts.engine.run(specs, self.sampling(t))
        # 6. rank programs by mean reward and update their TrueSkill ratings
        scores = _mean_by(rollouts, "program")
        rated = update_ratings(programs, scores, tolerance=cfg.tie_tolerance) if cfg.evolves else {}
        # 4-5. the RL step on r - V (grouped by the chosen baseline); runs while we reflect
        phase("learn + reflect")
        if parts.learner.trainable:
            parts.learner.submit(training_batch(rollouts, cfg.baseline, parts.eos_id))
        # 7-8. evolve: mutate the iteration's best program; crossover with probability p
        outcomes = self.evolve(programs, scores, rollouts, t)
        phase("learn (after reflection)")
        train_stats = parts.learner.wait()
        for outcome in outcomes:
            if outcome.child is not None:
                self.pool.add(outcome.child)
        metrics = {
            "iteration": t,
            "train_reward": sum(scores.values()) / len(scores) if scores else 0.0,
            "train_success": _rate(rollouts, "success"),
            "valid_rate": _rate(rollouts, "valid"),
            "invalid_action_rate": _invalid_rate(rollouts),
            "env_errors": sum(r.error is not None for r in rollouts),
            "program_scores": scores,
            "ratings": {k: {"mu": mu, "sigma": sd} for k, (mu, sd) in rated.items()},
            "reflections": {o.kind: o.status for o in outcomes},
            "reflection_calls": sum(o.calls for o in outcomes),
            "reflection_failures": sum(o.status == "failed" for o in outcomes),
            "children": [o.child.id for o in outcomes if o.child],
            "rollouts": len(rollouts),
            "generated_tokens": sum(r.generated_tokens for r in rollouts),
            "learner": {k: v for k, v in train_stats.items() if k in LEARNER_METRICS or k.startswith("sampling/")},
        }
        if cfg.eval_every and t % cfg.eval_every == 0 or t == cfg.iterations:
            phase("eval")
            metrics["test"] = self.evaluate(t)
        phase("")
        metrics["usage"] = {name: usage_delta(meter(), spent_before[name]) for name, meter in parts.meters.items()}
        metrics["seconds"] = round(time.monotonic() - started, 2)
        metrics["phase_seconds"] = timings
        return IterationResult(rollouts, outcomes, metrics)

    def evolve(self, programs: list[Program], scores: dict[str, float], rollouts: list[Rollout],
               t: int) -> list[ReflectionOutcome]:
        if not self.cfg.evolves or self.parts.mutation is None:
            return []
        unique = list({p.id: p for p in programs}.values())
        best = max(unique, key=lambda p: (scores.get(p.id, 0.0), p.mu))
        mine = [r for r in rollouts if r.spec.tags["program"] == best.id and r.spec.tags["slot"] == programs.index(best)]
        outcomes = [self.parts.mutation(best, mine, t)]
        if self.parts.crossover is not None and len(unique) > 1 and self.rng.random() < self.cfg.crossover_prob:
            _, wins = win_matrix(rollouts)
            problem_text = {r.problem_id: r.messages[1]["content"] for r in rollouts if len(r.messages) > 1}
            outcomes.append(self.parts.crossover(best, unique, wins, problem_text, t))
        for outcome in outcomes:
            log.info("%s of %s: %s %s", outcome.kind, best.id, outcome.status, outcome.reason)
        return outcomes

    def test_program(self) -> Program:
        """lcb: best mu - 2 sigma, rated on training rollouts only; latest: the newest program."""
        return self.pool.latest() if self.cfg.test_program == "latest" else self.pool.best()

    def evaluate(self, t: int) -> dict:
        program = self.test_program()
        return evaluate_prompt(self.parts.engine, program.render(), program.id, self.cfg, self.parts.test_size,
                               self.sampling(t, salt=1))


def evaluate_prompt(engine: RolloutEngine, prompt: str, program_id: str, cfg: RunConfig, test_size: int,
                    params: SamplingParams) -> dict:
    """Success, invalid-action rate and pass@k of ``prompt`` on the first test problems."""
    n = cfg.eval_samples
    specs = [EpisodeSpec(prompt, "test", q, {"problem": q, "sample": s})
             for q in range(min(cfg.eval_problems, test_size)) for s in range(n)]
    rollouts = engine.run(specs, params)
    correct: dict[int, int] = {}
    for r in rollouts:
        correct[r.spec.tags["problem"]] = correct.get(r.spec.tags["problem"], 0) + int(r.success)
    ks = sorted({1, n})
    return {
        "program": program_id,
        "success": _rate(rollouts, "success"),
        "invalid_action_rate": _invalid_rate(rollouts),
        **{f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct.values()) / len(correct) for k in ks},
        "problems": len(correct),
        "samples": n,
    }


def _mean_by(rollouts: list[Rollout], tag: str) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for r in rollouts:
        sums.setdefault(r.spec.tags[tag], []).append(r.reward)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def _rate(rollouts: list[Rollout], attribute: str) -> float:
    return sum(bool(getattr(r, attribute)) for r in rollouts) / len(rollouts) if rollouts else 0.0


def _invalid_rate(rollouts: list[Rollout]) -> float:
    """Invalid actions per action taken, reported apart from success (an invalid action scores 0)."""
    turns = sum(r.turns for r in rollouts)
    return sum(r.invalid_actions for r in rollouts) / turns if turns else 0.0
