"""The GEPA baseline (``--method gepa``): the ``gepa`` library's optimizer on our envs and policy.

:class:`EnvAdapter` is a ``gepa.GEPAAdapter`` with one text component, the system prompt: it
evaluates a candidate with the same :class:`~agents.rollout.RolloutEngine` (and so the same
policy, envs and scoring) as every other method, and turns rollouts into GEPA's reflective
dataset (the problem, the reply, and feedback naming the reward and the reference answer). The
reflection LM is the run's reflector, so its calls and tokens are metered like E-SPL's.

Equal budget, exactly: GEPA may spend :attr:`~espl_bench.config.RunConfig.rollout_budget` rollouts,
the training rollouts E-SPL spends on the same config, and its validation evaluations count
against them (its validation set: :func:`valset_size` problems of the run's validation split,
one sample each). GEPA checks its budget only between its iterations, so one iteration could overrun it
by a minibatch and a validation pass. Here an evaluation that does not fit runs only the
rollouts left in the budget (they are spent, so every method spends the same training rollouts),
then the search stops at once: GEPA never sees that partial evaluation, and a candidate whose
validation pass did not fit is not adopted. The test split stays unseen until the final evaluation, which is the
evaluation protocol's, as for every method.

GEPA's proposals pass the admission rule (:func:`~espl_bench.method.admission.admit_prompt`,
the rule every method's edits pass): :class:`ScreenedReflection` is GEPA's own stateless
reflection with a refused text dropped, so that proposal is skipped before any rollout is spent
on it (GEPA skips a proposal with no new text) and counted by reason in the iteration's
``reflection_counts``, as E-SPL's refused edits are.

One search is one committed step: :class:`GepaLoop` runs the whole search as the run's only
iteration (GEPA keeps its own state; its on-disk checkpoints are pickles, which this project never
loads). A run killed mid-search restarts the search on ``--resume``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from espl_bench.agents.llm_router import usage_delta
from espl_bench.agents.reflector import ReflectorCallError
from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, Rollout
from espl_bench.agents.sampler import derive_seed
from espl_bench.config import RunConfig
from espl_bench.method.admission import admit_prompt, copy_guard_share
from espl_bench.method.copies import CopyGuard, ProblemCopies
from espl_bench.method.loop import Parts
from espl_bench.method.program import Pool, Program
from espl_bench.method.protocol import IterationResult
from espl_bench.method.rollout_stats import invalid_rate, rate
from espl_bench.method.scored_program import scored_program
from espl_bench.records import CellResult, GepaSelection, IterationMetrics, PendingBatch, ReflectionCounts
from espl_bench.scoring.evaluator import Evaluator, sampling

if TYPE_CHECKING:
    from gepa import GEPAResult
    from gepa.core.adapter import ProposalFn
    from gepa.proposer.reflective_mutation.base import LanguageModel

log = logging.getLogger(__name__)

COMPONENT = "system_prompt"

# GEPA's own guidance on sizing (gepa-ai/gepa, docs/docs/guides/budget.md, "Choosing
# max_metric_calls"): a search costs ``len(valset) + N x (reflection_minibatch_size + len(valset))``
# metric calls for N proposal attempts, and N = 15 is its recommended minimum ("at least
# 16 x len(valset)"); its FAQ (docs/docs/guides/faq.md) asks for a validation set "small but
# truly representative" and 30-300 examples in all. On this project's budgets (128 rollouts for
# the calibrated suite) that formula leaves 4 problems, whose means move in steps of 0.25 and tie
# with the root in most seeds (issue 23); so at least MIN_VALSET, which costs proposals instead.
PROPOSALS = 15
MIN_VALSET = 10


def valset_size(cfg: RunConfig, available: int, minibatch: int) -> int:
    """Validation problems GEPA gets: ``--gepa-validation-problems`` when given, else the most GEPA's
    budget formula allows for :data:`PROPOSALS` attempts, at least :data:`MIN_VALSET`, at most a
    quarter of the budget (room for the search itself); never more than ``available``."""
    if cfg.gepa_validation_problems is not None:
        return min(cfg.gepa_validation_problems, available)
    budget = cfg.rollout_budget
    by_formula = (budget - PROPOSALS * minibatch) // (PROPOSALS + 1)
    return max(1, min(available, max(MIN_VALSET, by_formula), budget // 4))


def selection(history: list[IterationMetrics]) -> GepaSelection | None:
    """Which candidate GEPA's search ended on, from its iteration's account (None: not a GEPA run,
    or one made before runs recorded their validation set)."""
    account = next((m.gepa for m in reversed(history) if m.gepa), None)
    if not account or "validation_problems" not in account:
        return None
    scores = account["val_scores"]
    best = int(account["best"].removeprefix("p"))
    return GepaSelection(winner=account["best"], root=best == 0, candidates=account["candidates"],
                         validation_problems=account["validation_problems"], winner_score=scores[best],
                         root_score=scores[0])


class BudgetSpent(Exception):
    """An evaluation GEPA asked for does not fit in what is left of the rollout budget."""


class EnvAdapter:
    """Our env and policy as a GEPA system; see the module docstring.

    A data instance is ``(split, index)`` of the env. Every rollout is seeded from the run's seed
    and its position in the sequence GEPA paid for.
    """

    propose_new_texts: ProposalFn | None = None  # GEPA's own reflective proposer

    def __init__(self, parts: Parts, cfg: RunConfig, on_spent: Callable[[int], None] = lambda rollouts: None):
        self.parts, self.cfg, self.on_spent = parts, cfg, on_spent
        self.budget = cfg.rollout_budget
        self.rollouts: list[Rollout] = []  # every rollout GEPA paid for
        self.refused = False  # an evaluation did not fit: the search must stop

    def evaluate(self, batch: list[tuple[str, int]], candidate: dict[str, str], capture_traces: bool = False):
        from gepa import EvaluationBatch

        left = self.budget - len(self.rollouts)
        if len(batch) > left:
            self.refused = True
            self._run(batch[:left], candidate)  # the budget's last rollouts, which GEPA never sees
            raise BudgetSpent(f"{len(batch)} rollouts asked, {left} left of {self.budget}")
        rollouts = self._run(batch, candidate)
        return EvaluationBatch(outputs=[r.response for r in rollouts], scores=[r.reward for r in rollouts],
                               trajectories=rollouts if capture_traces else None)

    def _run(self, batch: list[tuple[str, int]], candidate: dict[str, str]) -> list[Rollout]:
        if not batch:
            return []
        start = len(self.rollouts)
        specs = [EpisodeSpec(candidate[COMPONENT], split, index, EpisodeId(problem=index),
                             seed=derive_seed("gepa", self.cfg.seed, start + n), placement=self.cfg.prompt_placement)
                 for n, (split, index) in enumerate(batch)]
        rollouts = self.parts.engine.run(specs, sampling(self.cfg))
        self.rollouts += rollouts
        self.on_spent(len(self.rollouts))
        return rollouts

    def make_reflective_dataset(self, candidate: dict[str, str], eval_batch, components_to_update: list[str]) -> dict:
        records = [{"Inputs": r.observation,
                    "Generated Outputs": "\n---\n".join(m["content"] for m in r.turns_after_prompt),
                    "Feedback": feedback(r)} for r in eval_batch.trajectories or []]
        return {name: records for name in components_to_update}


def template_guard() -> CopyGuard:
    """What a proposal must not echo: the instructions GEPA's reflector is shown (its default template)."""
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    return CopyGuard([InstructionProposalSignature.default_prompt_template])


class ScreenedReflection:
    """GEPA's default reflection (a ``gepa`` ``ReflectionLM``) whose proposed texts must pass the
    admission rule; a refused text is dropped and counted in :attr:`refused` by reason."""

    def __init__(self, reflection_lm: LanguageModel, language: str):
        from gepa.proposer.reflective_mutation.reflection_lm import StatelessReflectionLM

        self.inner = StatelessReflectionLM(reflection_lm)
        self.language = language
        self.guard = template_guard()
        self.refused: dict[str, int] = {}

    def reflect(self, candidate: dict[str, str], reflective_dataset, components_to_update: list[str]):
        proposal, _ = self.inner.reflect(candidate, reflective_dataset, components_to_update)
        # the problems GEPA's reflector was shown (make_reflective_dataset's "Inputs"): not to be copied
        problems = ProblemCopies({str(r.get("Inputs", "")) for records in reflective_dataset.values() for r in records})
        for name, text in list(proposal.new_texts.items()):
            verdict = admit_prompt(text, language=self.language, guard=self.guard, problems=problems)
            if not verdict.admitted:
                self.refused[verdict.why] = self.refused.get(verdict.why, 0) + 1
                log.info("gepa: a proposal refused by the admission rule (%s)", verdict.describe())
                del proposal.new_texts[name]
        return proposal, self


def feedback(rollout: Rollout) -> str:
    """What went right or wrong in one episode, as GEPA's reflection prompt shows it."""
    if rollout.error:
        return f"The episode failed: {rollout.error}."
    verdict = "correct" if rollout.success else "incorrect"
    parts = [f"The answer was {verdict} (reward {rollout.reward:.2f})."]
    if not rollout.valid:
        parts.append("The reply did not follow the required answer format.")
    if rollout.answer:
        parts.append(f"The reference answer is: {rollout.answer}.")
    if rollout.truncated:
        parts.append("The episode hit its turn limit.")
    return " ".join(parts)


class GepaLoop:
    """One GEPA search as the run's single committed step (a :class:`~espl_bench.method.protocol.Loop`)."""

    def __init__(self, cfg: RunConfig, parts: Parts, pool: Pool, rng: random.Random):
        self.cfg, self.parts, self.pool, self.rng = cfg, parts, pool, rng
        self.evaluator = Evaluator(cfg, parts.plan, parts.cells)

    def test_program(self) -> Program:
        """The program the run is scored with: its test-time rule (GEPA's best by validation mean)."""
        return scored_program(self.cfg.test_rule, self.pool)

    def score_test_program(self) -> CellResult:
        return self.evaluator.score(self.parts.engine, [self.test_program()])[0]

    def pending_record(self) -> PendingBatch | None:
        return None  # the search samples inside its one step: nothing is sampled ahead

    def restore_pending(self, record: PendingBatch | None) -> None:
        pass

    def schedule(self, done: int) -> range:
        return range(done + 1, 2)

    def iteration(self, t: int, progress: Callable[[str], None] = lambda name: None) -> IterationResult:
        import gepa

        cfg, parts = self.cfg, self.parts
        train = parts.plan.train
        trainset = [(train.split, i) for i in train.indices]
        # GEPA selects candidates on a validation set: the run's validation split when it has one,
        # sized by valset_size; every validation pass is paid from the rollout budget.
        minibatch = min(cfg.batch_size, len(trainset))
        validation = parts.plan.validation
        available = len(validation.indices) or len(trainset)
        cap = valset_size(cfg, available, minibatch)
        valset = ([(validation.split, i) for i in validation.indices[:cap]]
                  or self.rng.sample(trainset, cap))
        # A search is one long step: the progress bar shows the rollout budget it has spent.
        adapter = EnvAdapter(parts, cfg, lambda spent: progress(f"gepa search, {spent}/{cfg.rollout_budget} rollouts"))
        reflector = parts.reflector
        if reflector is None:
            raise RuntimeError("the gepa loop was built without a reflector (build_parts gives it one)")
        calls = [0, 0]  # reflector calls, failures

        def reflection_lm(prompt) -> str:
            calls[0] += 1
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            try:
                return reflector.complete(messages, purpose="GEPA reflection")
            except ReflectorCallError as exc:  # a failed proposal, not a failed run
                calls[1] += 1
                log.warning("%s", exc)
                return ""

        screened = ScreenedReflection(reflection_lm, cfg.principle_language)
        started = time.monotonic()
        spent_before = {name: meter() for name, meter in parts.meters.items()}
        progress("gepa search")
        result: GEPAResult = gepa.optimize(
            seed_candidate={COMPONENT: self.pool.programs[0].render()}, trainset=trainset, valset=valset,
            adapter=adapter, reflection_strategy=screened, max_metric_calls=cfg.rollout_budget,
            stop_callbacks=[lambda state: adapter.refused],
            reflection_minibatch_size=minibatch, seed=cfg.seed,
            raise_on_exception=False, logger=_GepaLog(), display_progress_bar=False)
        self._adopt(result, t)
        searched = time.monotonic()
        progress("eval")
        test = self.score_test_program()
        rollouts = adapter.rollouts
        metrics = IterationMetrics(
            iteration=t,
            train_reward=sum(r.reward for r in rollouts) / len(rollouts) if rollouts else 0.0,
            train_success=rate(rollouts, "success"),
            valid_rate=rate(rollouts, "valid"),
            invalid_action_rate=invalid_rate(rollouts),
            env_errors=sum(r.error is not None for r in rollouts),
            reflection_calls=calls[0],
            reflection_failures=calls[1],
            reflection_counts=ReflectionCounts(rejected_edits=dict(sorted(screened.refused.items())),
                                               copied_edits_rejected=copy_guard_share(screened.refused)),
            children=[p.id for p in self.pool.programs[1:]],
            rollouts=len(rollouts),
            validation_rollouts=sum((r.spec.split, r.spec.index) in set(valset) for r in rollouts),
            generated_tokens=sum(r.generated_tokens for r in rollouts),
            gepa={"candidates": len(result.candidates), "best": f"p{result.best_idx}",
                  "val_scores": [round(x, 4) for x in result.val_aggregate_scores],
                  "metric_calls": result.total_metric_calls, "budget": cfg.rollout_budget,
                  "stopped_by_budget": adapter.refused, "validation_problems": len(valset),
                  "validation_samples": 1, "winner_is_root": result.best_idx == 0},
            test=test,
            usage={name: usage_delta(meter(), spent_before[name]) for name, meter in parts.meters.items()},
            seconds=round(time.monotonic() - started, 2),
            phase_seconds={"gepa search": round(searched - started, 2), "eval": round(time.monotonic() - searched, 2)},
        )
        return IterationResult(rollouts, [], metrics)

    def _adopt(self, result, t: int) -> None:
        """GEPA's candidates become the pool (ratings: GEPA's validation means, sigma 0)."""
        programs = []
        for i, candidate in enumerate(result.candidates):
            parents = [f"p{j}" for j in result.parents[i] if j is not None]
            origin = "root" if not parents else "crossover" if len(parents) > 1 else "mutation"
            programs.append(Program(id=f"p{i}", principles={}, preamble=candidate[COMPONENT], parents=parents,
                                    origin=origin, iteration=0 if i == 0 else t,
                                    mu=float(result.val_aggregate_scores[i]), sigma=0.0))
        self.pool = Pool(programs, max_size=max(self.pool.max_size, len(programs)))


class _GepaLog:
    """GEPA's logger protocol, onto ours (it prints to stdout otherwise)."""

    def log(self, message: str, *args, **kwargs) -> None:
        log.debug("gepa: %s", message)
