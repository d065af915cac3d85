"""One E-SPL iteration, in the order of the paper's Algorithm 1.

The loop only orchestrates: sampling, rating, reflection, learning and storage sit behind their
seams (``RolloutEngine``, :mod:`espl_bench.method.rating`, ``Mutation``/``Crossover``, ``Learner``,
``RunDir``), so it runs the same with fakes in tests and with real models in a run. What a method
switches on or off comes from its spec (:mod:`espl_bench.method_table`); test scores come from the
evaluation protocol (:mod:`espl_bench.scoring.evaluation`).
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from espl_bench.agents.llm_router import usage_delta
from espl_bench.agents.reflector import Reflector
from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, Rollout, RolloutEngine
from espl_bench.agents.sampler import derive_seed
from espl_bench.config import RunConfig
from espl_bench.envs.splits import SplitPlan
from espl_bench.method.advantage import group_size, training_batch
from espl_bench.method.learning import Learner
from espl_bench.method.program import Pool, Program
from espl_bench.method.protocol import IterationResult
from espl_bench.method.rating import update_ratings
from espl_bench.method.reflection import (
    SOURCES,
    Crossover,
    Mutation,
    ReflectionOutcome,
    win_matrix,
)
from espl_bench.method.rollout_stats import invalid_rate as _invalid_rate
from espl_bench.method.rollout_stats import rate as _rate
from espl_bench.method.scored_program import scored_program
from espl_bench.method.selection import Selector
from espl_bench.records import (
    CellResult,
    ImportanceWeights,
    IterationMetrics,
    PendingBatch,
    PhaseSpan,
    Rating,
    ReflectionCounts,
    Staleness,
)
from espl_bench.scoring.cells import CellStore
from espl_bench.scoring.evaluator import Evaluator, sampling

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
    plan: SplitPlan  # where train, validation and test problems come from
    eos_id: int
    reflector: Reflector | None = None  # the reflector behind mutation and crossover (GEPA calls it directly)
    # name -> cumulative usage snapshot (calls, tokens, dollars) of a metered model (reflector, API policy)
    meters: dict[str, Callable[[], dict]] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)  # servers to stop, in order
    # the engine sampling the base weights, for the weights x prompt breakdown (None: frozen weights)
    base_engine: Callable[[], RolloutEngine] | None = None
    # why a program cannot enter the pool (its text cannot be rendered or tokenized), or None
    admit: Callable[[Program], str | None] = lambda program: None
    # base-weights test cells shared with other runs (espl_bench.scoring.cells), or None
    cells: CellStore | None = None
    # the engine may sample while the learner trains (a server); False: it shares the trained model
    # object (in-process), so under --max-staleness the next batch is sampled just before the step
    samples_while_training: bool = False

    def close(self) -> None:
        self.learner.close()
        for close in self.closers:
            close()


@dataclass
class Batch:
    """One iteration's selection and rollouts, with the weights and the time that sampled them."""

    t: int
    programs: list[Program]
    problems: list[int]
    rollouts: list[Rollout]
    sampled_with: int  # optimizer steps applied to the weights that sampled it
    span: PhaseSpan
    prefetched: bool = False  # sampled during the previous iteration (--max-staleness)

    def to_record(self) -> PendingBatch:
        return PendingBatch(iteration=self.t, programs=[p.to_dict() for p in self.programs], problems=self.problems,
                            rollouts=[r.to_record(with_tokens=True) for r in self.rollouts],
                            sampled_with=self.sampled_with, span=self.span)

    @classmethod
    def from_record(cls, record: PendingBatch, pool: Pool) -> Batch:
        """The batch a committed iteration prefetched; its programs are the pool's own objects (their
        ratings move with the pool's), or detached copies of those the pool has evicted since."""
        programs = [_in_pool(pool, Program.from_dict(p)) for p in record.programs]
        return cls(record.iteration, programs, list(record.problems), [Rollout.from_record(r) for r in record.rollouts],
                   record.sampled_with, record.span, prefetched=True)


@dataclass
class Staled:
    """What taking an iteration's batch under --max-staleness cost: batches found too old."""

    regenerated: int = 0
    discarded_rollouts: int = 0
    discarded_tokens: int = 0


def reflection_counts(outcomes: list[ReflectionOutcome]) -> ReflectionCounts:
    """How many children an iteration really produced, by source, how many attempts did not, and
    the edits the admission rule refused, by reason (a child exists only when its edits passed)."""
    labels = [o.label for o in outcomes]
    paths = _sum_counts(o.paths for o in outcomes)
    return ReflectionCounts(children={source: labels.count(source) for source in SOURCES},
                            failed=labels.count("failed"), skipped=labels.count("skipped"),
                            copied_edits_rejected=sum(o.copies for o in outcomes),
                            rejected_edits=dict(sorted(_sum_counts(o.rejected for o in outcomes).items())),
                            edit_calls=paths)


def _sum_counts(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, n in count.items():
            total[key] = total.get(key, 0) + n
    return total


class EsplLoop:
    """E-SPL's iteration in the order of Algorithm 1 (a :class:`~espl_bench.method.protocol.Loop`)."""

    def __init__(self, cfg: RunConfig, parts: Parts, pool: Pool, rng: random.Random):
        self.cfg = cfg
        self.parts = parts
        self.pool = pool
        self.rng = rng
        # --max-staleness: the next iteration's batch, sampled during this iteration's step and
        # committed with it (pending_record); restored on resume (restore_pending)
        self.pending: Batch | None = None
        self.evaluator = Evaluator(cfg, parts.plan, parts.cells)

    def schedule(self, done: int) -> range:
        """The iterations still to run after ``done`` committed ones."""
        return range(done + 1, self.cfg.iterations + 1)

    def iteration(self, t: int, progress: Callable[[str], None] = lambda name: None) -> IterationResult:
        cfg, parts, spec = self.cfg, self.parts, self.cfg.spec
        started = time.monotonic()
        spent_before = {name: meter() for name, meter in parts.meters.items()}
        phase = PhaseClock(t, progress, started)
        # 1-3. select M programs from the K most recent, then sample (or take the batch sampled
        # during the previous step under --max-staleness)
        drawn, staled = self._batch(t, phase)
        programs, rollouts = drawn.programs, drawn.rollouts
        # 6. rank programs by mean reward and update their TrueSkill ratings
        scores = _mean_by_program(rollouts)
        rated = update_ratings(programs, scores, tolerance=cfg.tie_tolerance) if spec.rated else {}
        # 4-5. the RL step on r - V (grouped by the chosen baseline); runs while we reflect
        phase("learn + reflect")
        # groups are counted for every method (a frozen one too: the count is the RL signal it had)
        batch = training_batch(rollouts, cfg.baseline, parts.eos_id,
                               group_size(cfg.baseline, cfg.selected_programs, cfg.group_size), cfg.skip_flat_groups)
        upcoming = self._prefetch(t + 1, phase) if self._prefetches(t) else None
        step_start = time.time()
        if parts.learner.trainable:
            parts.learner.submit(batch.samples)
        # 7-8. evolve: mutate the iteration's best program; crossover with probability p
        outcomes = self.evolve(programs, scores, rollouts, t)
        phase("learn (after reflection)")
        # the next batch is in before the step's weights reach the sampler (a server loads them in wait())
        self.pending = upcoming.result() if upcoming is not None else None
        train_stats = parts.learner.wait()
        step = PhaseSpan(start=step_start, end=time.time())
        self._admit(outcomes)
        test = None
        if cfg.eval_every and t % cfg.eval_every == 0 or t == cfg.iterations:
            phase("eval")
            test = self.score_test_program()
        phase("")
        metrics = IterationMetrics(
            iteration=t,
            **_reward_metrics(scores, rollouts, drawn.problems),
            groups=batch.groups,
            flat_groups=batch.flat,
            left_out_groups=batch.left_out,
            ratings={k: Rating(mu=mu, sigma=sd) for k, (mu, sd) in rated.items()},
            **_reflection_metrics(outcomes),
            rollouts=len(rollouts) + staled.discarded_rollouts,
            generated_tokens=sum(r.generated_tokens for r in rollouts) + staled.discarded_tokens,
            learner={k: v for k, v in train_stats.items() if k in LEARNER_METRICS or k.startswith("sampling/")},
            test=test,
            usage={name: usage_delta(meter(), spent_before[name]) for name, meter in parts.meters.items()},
            seconds=round(time.monotonic() - started, 2),
            phase_seconds=phase.timings,
            staleness=self._staleness(t, drawn, staled, step) if cfg.max_staleness or staled.regenerated else None,
            importance=_importance(train_stats),
        )
        return IterationResult(rollouts, outcomes, metrics)

    def _admit(self, outcomes: list[ReflectionOutcome]) -> None:
        """The children that can be used as prompts join the pool; the others are refused, with why."""
        for outcome in outcomes:
            if outcome.child is not None:
                refused = self.parts.admit(outcome.child)
                if refused:
                    outcome.reject(f"the child cannot be used as a prompt: {refused}")
                    log.warning("%s child refused: %s", outcome.kind, refused)
                else:
                    self.pool.add(outcome.child)

    # -- --max-staleness: the next iteration's batch sampled during this one's step ----------------

    def _select(self) -> tuple[list[Program], list[int]]:
        """Step 1: M programs from the K most recent, and the batch's problems (the rng's order is fixed)."""
        cfg = self.cfg
        window = self.pool.window(cfg.spec.window or cfg.window)
        programs = self.parts.selector.select(window, cfg.selected_programs, self.rng)
        trainable = self.parts.plan.train.indices
        return programs, self.rng.sample(trainable, min(cfg.batch_size, len(trainable)))

    def _sample(self, t: int, programs: list[Program], problems: list[int], prefetched: bool = False) -> Batch:
        """Steps 2-3: rollouts of every (program, problem) pair, N samples each, generated together;
        each seeded from its coordinates in the run (seed, iteration, slot, problem, sample)."""
        cfg, split = self.cfg, self.parts.plan.train.split
        start = time.time()
        weights = t - 1 - int(prefetched) if cfg.trains_weights else 0  # steps applied before it samples
        specs = [EpisodeSpec(p.render(), split, q, EpisodeId(program=p.id, slot=s, problem=j, sample=n),
                             seed=derive_seed("train", cfg.seed, t, s, split, q, n), placement=cfg.prompt_placement)
                 for s, p in enumerate(programs) for j, q in enumerate(problems) for n in range(cfg.group_size)]
        rollouts = self.parts.engine.run(specs, sampling(cfg))
        return Batch(t, programs, problems, rollouts, weights, PhaseSpan(start=start, end=time.time()), prefetched)

    def _batch(self, t: int, phase: Callable[[str], None]) -> tuple[Batch, Staled]:
        """Iteration ``t``'s batch: the one prefetched for it, when its weights are at most
        ``--max-staleness`` steps older than the step's; otherwise selected (or, too old, the same
        selection regenerated with the current weights, counted) and sampled now."""
        pending, self.pending, staled = self.pending, None, Staled()
        if pending is not None and pending.t == t:
            if (t - 1) - pending.sampled_with <= self.cfg.max_staleness:
                phase("rollouts")
                return pending, staled
            log.warning("iteration %d: the batch sampled with step-%d weights is %d steps stale (at most %d); "
                        "sampling it again", t, pending.sampled_with, t - 1 - pending.sampled_with, self.cfg.max_staleness)
            staled = Staled(1, len(pending.rollouts), sum(r.generated_tokens for r in pending.rollouts))
            programs, problems = pending.programs, pending.problems
        else:
            programs, problems = self._select()
        phase("rollouts")
        return self._sample(t, programs, problems), staled

    def _prefetches(self, t: int) -> bool:
        return bool(self.cfg.max_staleness) and self.parts.learner.trainable and t < self.cfg.iterations

    def _prefetch(self, t: int, phase: Callable[[str], None]) -> Future:
        """Select iteration ``t``'s programs now (before ``t - 1``'s children exist: they join the
        next selection that can see them) and sample its batch with the weights of before the step
        about to be submitted: in a thread while that step trains when the engine allows it, else
        here, before the step (the in-process sampler shares the model object TRL trains)."""
        programs, problems = self._select()
        sys.audit("espl_bench.point", t - 1, "prefetch")  # tests hook points here (tests/faults.py)
        if self.parts.samples_while_training:
            worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
            future = worker.submit(self._sample, t, programs, problems, True)
            worker.shutdown(wait=False)
            return future
        phase("rollouts (next iteration)")
        done: Future = Future()
        done.set_result(self._sample(t, programs, problems, prefetched=True))
        return done

    def _staleness(self, t: int, drawn: Batch, staled: Staled, step: PhaseSpan) -> Staleness:
        return Staleness(max_staleness=self.cfg.max_staleness, staleness=(t - 1) - drawn.sampled_with,
                         sampled_with=drawn.sampled_with, prefetched=drawn.prefetched, regenerated=staled.regenerated,
                         discarded_rollouts=staled.discarded_rollouts, phases={"rollouts": drawn.span, "step": step})

    def pending_record(self) -> PendingBatch | None:
        """The prefetched batch, for the commit of the iteration that sampled it (None: none)."""
        return self.pending.to_record() if self.pending is not None else None

    def restore_pending(self, record: PendingBatch | None) -> None:
        """On resume: the batch the last committed iteration prefetched (its commit holds it)."""
        self.pending = Batch.from_record(record, self.pool) if record is not None else None

    def evolve(self, programs: list[Program], scores: dict[str, float], rollouts: list[Rollout],
               t: int) -> list[ReflectionOutcome]:
        spec = self.cfg.spec
        if not spec.mutates or self.parts.mutation is None:
            return []
        unique = list({p.id: p for p in programs}.values())
        best = max(unique, key=lambda p: (scores.get(p.id, 0.0), p.mu))
        mine = [r for r in rollouts if r.spec.id.program == best.id and r.spec.id.slot == programs.index(best)]
        crossing = (spec.crosses and self.parts.crossover is not None and len(unique) > 1
                    and self.rng.random() < self.cfg.crossover_prob)  # drawn first: the rng's order is fixed
        # Mutation and crossover are independent: their calls are in flight together (with a
        # hosted reflector an iteration's reflection then costs its longest chain of calls).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="reflect") as pool:
            mutation = pool.submit(self.parts.mutation, best, mine, t)
            crossover = pool.submit(self._crossover, best, unique, rollouts, t) if crossing else None
            outcomes = [_settled(mutation, "mutation"), *([_settled(crossover, "crossover")] if crossover else [])]
        for outcome in outcomes:
            log.info("%s of %s: %s %s", outcome.kind, best.id, outcome.label, outcome.reason)
        return outcomes

    def _crossover(self, best: Program, unique: list[Program], rollouts: list[Rollout], t: int) -> ReflectionOutcome:
        _, wins = win_matrix(rollouts)
        if self.cfg.crossover_requires_win and not wins.get(best.id):
            # The reference code recombines only around a best program that won a problem outright.
            return ReflectionOutcome(kind="crossover", status="skipped", reason="the best program won no problem outright")
        problem_text = {r.problem_id: r.observation for r in rollouts if r.observation}
        assert self.parts.crossover is not None  # evolve() crosses only when there is an operator
        return self.parts.crossover(best, unique, wins, problem_text, t)

    def test_program(self) -> Program:
        """The program the run is scored with: its test-time rule (:func:`espl_bench.method_table.test_program`)."""
        return scored_program(self.cfg.test_rule, self.pool)

    def score_test_program(self) -> CellResult:
        """The evaluation protocol on the run's test items, for the program the run is scored with."""
        return self.evaluator.score(self.parts.engine, [self.test_program()])[0]


def _in_pool(pool: Pool, program: Program) -> Program:
    try:
        return pool[program.id]
    except KeyError:
        return program


def _importance(stats: dict[str, float]) -> ImportanceWeights | None:
    """The step's importance weights, when the learner applied a sampler-logprob correction."""
    if "importance/mean" not in stats:
        return None
    return ImportanceWeights(mean=stats["importance/mean"], max=stats["importance/max"],
                             truncated_share=stats["importance/truncated_share"], cap=stats["importance/cap"])


class PhaseClock:
    """Called with each phase's name as an iteration enters it: times the phase that ended,
    reports progress, and marks the point for the kill tests (tests/faults.py)."""

    def __init__(self, t: int, progress: Callable[[str], None], started: float):
        self.t, self.progress = t, progress
        self.timings: dict[str, float] = {}
        self._since, self._name = started, ""

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        if self._name:
            self.timings[self._name] = round(now - self._since, 2)
        self._since, self._name = now, name
        self.progress(name)
        sys.audit("espl_bench.point", self.t, name)  # tests hook points here (tests/faults.py)


def _reward_metrics(scores: dict[str, float], rollouts: list[Rollout], problems: list[int]) -> dict:
    """The iteration's train-side rates (IterationMetrics fields)."""
    return {"train_reward": sum(scores.values()) / len(scores) if scores else 0.0,
            "train_success": _rate(rollouts, "success"),
            "train_problem_success": _problem_success(rollouts, problems),
            "valid_rate": _rate(rollouts, "valid"),
            "invalid_action_rate": _invalid_rate(rollouts),
            "env_errors": sum(r.error is not None for r in rollouts),
            "program_scores": scores}


def _reflection_metrics(outcomes: list[ReflectionOutcome]) -> dict:
    """What reflection did this iteration (IterationMetrics fields)."""
    counts = reflection_counts(outcomes)
    return {"reflections": {o.kind: o.label for o in outcomes},
            "reflection_counts": counts,
            "reflection_calls": sum(o.calls for o in outcomes),
            "reflection_failures": counts.failed,
            "children": [o.child.id for o in outcomes if o.child]}


def _mean_by_program(rollouts: list[Rollout]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for r in rollouts:
        sums.setdefault(r.spec.id.program or "", []).append(r.reward)  # the loop names every episode's program
    return {k: sum(v) / len(v) for k, v in sums.items()}


def _problem_success(rollouts: list[Rollout], problems: list[int]) -> list[float]:
    """Each training problem's success over its programs and samples, in the iteration's order
    (the unit a learning curve's interval resamples: samples of one problem are not independent)."""
    by_problem: dict[int | None, list[bool]] = {}
    for r in rollouts:
        by_problem.setdefault(r.spec.id.problem, []).append(bool(r.success))
    return [round(sum(v) / len(v), 6) for j in range(len(problems)) if (v := by_problem.get(j))]


def _settled(future, kind: str) -> ReflectionOutcome:
    """An operator's outcome; an exception it raised (an answer it did not foresee, a bug) is a
    failed outcome, counted as such, not a crashed run: the parent stays and the run goes on."""
    try:
        return future.result()
    except Exception as exc:
        log.error("%s raised %s: %s; the parent stays", kind, type(exc).__name__, exc)
        return ReflectionOutcome(kind=kind, status="failed", reason=f"operator error: {type(exc).__name__}: {exc}")
