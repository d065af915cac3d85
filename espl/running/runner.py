"""Building a run from its config, running it iteration by iteration, committing each one.

This is the shell around :mod:`espl_bench.method.loop`: models, files, progress bars and resume live here.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable

from tqdm.auto import tqdm

from espl_bench.agents.rollout import RolloutEngine
from espl_bench.baselines.gepa import GepaLoop
from espl_bench.baselines.gepa import selection as gepa_selection
from espl_bench.config import RunConfig
from espl_bench.envs.splits import SplitPlan
from espl_bench.errors import RecordError, RunDirError
from espl_bench.locks import owned
from espl_bench.method.loop import EsplLoop, Parts
from espl_bench.method.program import Pool
from espl_bench.method.protocol import IterationResult, Loop
from espl_bench.method.reflection import template_hashes
from espl_bench.records import (
    Breakdown,
    Budget,
    CellResult,
    IterationMetrics,
    IterationState,
    Precision,
    Provenance,
    ReflectionCounts,
    RunHeader,
    RunSummary,
    TestProgram,
    Usage,
)
from espl_bench.rundir import IterationRecord, RunDir
from espl_bench.running.build import open_run
from espl_bench.running.provenance import provenance
from espl_bench.running.tracking import Tracker, log_iteration, open_tracker
from espl_bench.scoring.breakdown import breakdown

log = logging.getLogger(__name__)

# The loop each method runs (espl_bench.method_table names it).
LOOPS: dict[str, Callable[[RunConfig, Parts, Pool, random.Random], Loop]] = {"espl": EsplLoop, "gepa": GepaLoop}


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _restore_rng(state: list) -> random.Random:
    rng = random.Random()
    rng.setstate((state[0], tuple(state[1]), state[2]))
    return rng


def _header(cfg: RunConfig) -> RunHeader:
    return RunHeader(config=cfg.model_dump(exclude={"resume", "force"}), templates=template_hashes(),
                     precision=precision(cfg))


def precision(cfg: RunConfig) -> Precision:
    """The policy's precision in this process: ``--dtype`` and what it resolves to on this machine."""
    from espl_bench.agents.devices import resolve_dtype

    resolved = None if cfg.sampler == "litellm" else resolve_dtype(cfg.dtype)
    return Precision(dtype=cfg.dtype, resolved=resolved, attn_implementation=cfg.attn_implementation)


def _prepare(cfg: RunConfig, rundir: RunDir) -> tuple[Pool, random.Random, int, list[IterationMetrics]]:
    """A fresh run's start, or the state of the last committed iteration on --resume."""
    header = _header(cfg)
    if not cfg.resume:
        # run.json is written once the run's parts are built (run()), so a run that cannot start
        # (a typo in --env or --model) leaves nothing that blocks the corrected command.
        rundir.check_new()
        pool = Pool.with_root(preamble=cfg.preamble, max_size=cfg.max_pool_size)
        return pool, random.Random(cfg.seed), 0, []
    if not rundir.has_run():
        raise RunDirError(f"nothing to resume in {rundir.root}; fix: drop --resume to start a new run there")
    old = rundir.header()
    if not cfg.force:
        old_identity = RunConfig(**{**old.config, "resume": False}).identity()
        changed = sorted(k for k, v in cfg.identity().items() if old_identity.get(k) != v)
        if changed:
            raise RunDirError(f"the config changed since the run started ({', '.join(changed)}); fix: use the "
                              "original values, or pass --force to continue anyway")
        if old.templates != header.templates:
            raise RunDirError("the reflection prompt templates changed since the run started; fix: pass --force to continue anyway")
    rundir.clean_uncommitted()
    done = rundir.latest()
    if done == 0:
        return Pool.with_root(preamble=cfg.preamble, max_size=cfg.max_pool_size), random.Random(cfg.seed), 0, []
    last = rundir.load(done)
    return Pool.from_record(last.pool), _restore_rng(last.state.rng), done, rundir.history()


def budget(history: list[IterationMetrics], extra: Breakdown | None = None) -> Budget:
    """The run's budget ledger: what it spent on training, validation, evaluation and reflection."""
    evaluations = [m.test for m in history if m.test is not None]
    cells = [c for name, c in extra.cells.items() if name not in extra.reused] if extra is not None else []
    seconds: dict[str, float] = {}
    for m in history:
        for name, value in m.phase_seconds.items():
            seconds[name] = round(seconds.get(name, 0.0) + value, 2)
    reflector = Usage.total([m.usage["reflector"] for m in history if "reflector" in m.usage])
    validation = sum(m.validation_rollouts for m in history)
    return Budget(
        training_rollouts=sum(m.rollouts for m in history) - validation, validation_rollouts=validation,
        evaluation_rollouts=sum(e.rollouts for e in evaluations) + sum(c.rollouts for c in cells),
        generated_tokens={"training": sum(m.generated_tokens for m in history),
                          "evaluation": sum(e.generated_tokens for e in evaluations) + sum(c.generated_tokens for c in cells)},
        reflector={"calls": sum(m.reflection_calls for m in history),
                   "prompt_tokens": reflector.prompt_tokens, "completion_tokens": reflector.completion_tokens},
        seconds_by_phase=seconds)


def summary(cfg: RunConfig, loop: Loop, plan: SplitPlan, history: list[IterationMetrics], elapsed: float,
            extra: Breakdown | None = None) -> RunSummary:
    tests = [m.test for m in history if m.test is not None]
    program = loop.test_program()
    counts = [m.reflection_counts for m in history]
    return RunSummary(
        env=cfg.env, method=cfg.method, model=cfg.model, seed=cfg.seed,
        reflector=cfg.reflector if cfg.reflects else None,
        iterations_completed=len(history), iterations_planned=len(history) + len(loop.schedule(len(history))),
        train_reward=[round(m.train_reward, 4) for m in history],
        splits=plan.to_dict(),
        test=tests[-1] if tests else None,
        test_program=TestProgram(id=program.id, rule=cfg.test_rule, mu=program.mu, sigma=program.sigma,
                                 text=program.render()),
        breakdown=extra,
        pool_size=len(loop.pool),
        reflection=ReflectionCounts(
            children={k: sum(c.children.get(k, 0) for c in counts) for k in ("revision", "fallback", "crossover")},
            failed=sum(c.failed for c in counts), skipped=sum(c.skipped for c in counts),
            copied_edits_rejected=sum(c.copied_edits_rejected for c in counts),
            rejected_edits=_summed([c.rejected_edits or {} for c in counts]),
            edit_calls=_summed([c.edit_calls for c in counts])),
        reflection_failures=sum(m.reflection_failures for m in history),
        rollouts=sum(m.rollouts for m in history),
        generated_tokens=sum(m.generated_tokens for m in history),
        budget=budget(history, extra),
        # calls, tokens and dollars of each metered model (reflector, API policy), all sessions
        usage={name: Usage.total([m.usage[name] for m in history if name in m.usage])
               for name in sorted({n for m in history for n in m.usage})},
        seconds_this_session=round(elapsed, 1),
        provenance=provenance(),
        precision=precision(cfg),
        gepa=gepa_selection(history),
    )


def final_breakdown(cfg: RunConfig, loop: Loop, parts: Parts, history: list[IterationMetrics]) -> Breakdown:
    """The weights x prompt breakdown of the finished run (:mod:`espl_bench.scoring.breakdown`) on its test items."""
    program, root = loop.test_program(), loop.pool.root()
    same = program.render() == root.render()
    last = next((m.test for m in reversed(history) if m.test is not None), None)
    known = {}
    if last is not None and last.program == program.id:
        row = "trained" if cfg.trains_weights else "base"
        known[f"{row}/{'root' if same else 'program'}"] = last
    base_engines: list[RolloutEngine] = []  # built on first use, once

    def score(weights: str, prompts: list[str]) -> list[CellResult]:
        chosen = [root if prompt == "root" else program for prompt in prompts]
        engine = parts.engine
        if weights == "base" and cfg.trains_weights and parts.base_engine is not None:
            if not base_engines:
                base_engines.append(parts.base_engine())
            engine = base_engines[0]
        log.info("breakdown: %s weights, %s", weights, ", ".join(f"{p} prompt ({c.id})" for p, c in zip(prompts, chosen)))
        return loop.evaluator.score(engine, chosen, weights)

    return breakdown(score, trained=cfg.trains_weights and parts.base_engine is not None, root=root.id,
                     program=program.id, same_prompt=same, known=known)


def run(cfg: RunConfig) -> RunSummary:
    """Run (or resume) ``cfg`` to completion, owning its folder throughout (a second process on it
    gets one line naming this one); returns the summary written to ``summary.json``."""
    with owned(cfg.out, f"run folder {cfg.out}", "wait for that run to end (or stop it), then continue with --resume"):
        return _run(cfg)


def _run(cfg: RunConfig) -> RunSummary:
    started = time.monotonic()
    provenance()  # read now, at the code this process imported, not at a checkout changed mid-run
    rundir = RunDir(cfg.out)
    pool, rng, done, history = _prepare(cfg, rundir)
    tracker = open_tracker(cfg)  # before the learner: TRL's callback joins its run
    try:
        return _run_parts(cfg, rundir, pool, rng, done, history, started, tracker)
    finally:
        if tracker is not None:
            tracker.close()


def _run_parts(cfg: RunConfig, rundir: RunDir, pool: Pool, rng: random.Random, done: int,
               history: list[IterationMetrics], started: float, tracker: Tracker | None) -> RunSummary:
    with open_run(cfg, rundir, resume_step=done if cfg.trains_weights else 0) as parts:
        if not cfg.resume:
            rundir.create(_header(cfg))
        loop = LOOPS[cfg.spec.loop](cfg, parts, pool, rng)
        if done:  # --max-staleness: the batch the last commit prefetched
            loop.restore_pending(rundir.load(done).state.pending)
        planned = done + len(loop.schedule(done))
        if planned == done:
            log.info("the run in %s already has %d committed iterations", cfg.out, done)
        extra = _load_breakdown(rundir) if planned == done else None
        _iterate(cfg, rundir, loop, parts.plan, done, planned, history, started, tracker)
        if history and extra is None:
            extra = final_breakdown(cfg, loop, parts, history)
            rundir.write_breakdown(extra)
    final = summary(cfg, loop, parts.plan, history, time.monotonic() - started, extra)
    if history:
        if planned == done:
            final = _keep_session_record(final, rundir.summary_data())
        rundir.write_summary(final)
    return final


def _show_phase(bar: tqdm, t: int, name: str) -> None:
    bar.set_postfix_str(f"iter {t}: {name}")


def _iterate(cfg: RunConfig, rundir: RunDir, loop: Loop, plan: SplitPlan, done: int, planned: int,
             history: list[IterationMetrics], started: float, tracker: Tracker | None = None) -> None:
    """The iterations still to run, each committed as it ends, with a progress bar."""
    bar = tqdm(total=planned, initial=done, desc=cfg.method, unit="it", dynamic_ncols=True)
    try:
        for t in loop.schedule(done):
            result = loop.iteration(t, progress=functools.partial(_show_phase, bar, t))
            history.append(result.metrics)
            _commit(rundir, cfg, loop, plan, t, result, history, time.monotonic() - started)
            log_iteration(tracker, result.metrics)
            bar.update(t - bar.n)
            m = result.metrics
            left = f", left out {m.left_out_groups}" if cfg.skip_flat_groups else ""
            bar.set_postfix_str(f"train reward {m.train_reward:.3f}, flat groups {m.flat_groups}/{m.groups}{left}")
    finally:
        bar.close()


def _load_breakdown(rundir: RunDir) -> Breakdown | None:
    """The finished run's breakdown, when a session already computed it (else it is computed)."""
    try:
        return rundir.breakdown()
    except (RunDirError, RecordError) as exc:
        log.warning("%s; the breakdown is scored again", exc)
        return None


def _keep_session_record(final: RunSummary, previous: dict | None) -> RunSummary:
    """A session that ran nothing keeps the code, precision and time of the one that committed the last
    iteration (or none, for a run made before provenance was recorded): a finished run that a
    suite resumes must not claim the current checkout made it."""
    if previous is None:
        return final
    return final.model_copy(update={"seconds_this_session": float(previous.get("seconds_this_session", 0.0)),
                                    "provenance": _kept(Provenance, previous.get("provenance")),
                                    "precision": _kept(Precision, previous.get("precision"))})


def _kept(record, value):
    """``value`` read as ``record`` (None when absent or unreadable: an unreadable record is no record)."""
    try:
        return record.model_validate(value) if value else None
    except ValueError:  # pydantic's ValidationError
        return None


def _commit(rundir: RunDir, cfg: RunConfig, loop: Loop, plan: SplitPlan, t: int, result: IterationResult,
            history: list[IterationMetrics], elapsed: float) -> None:
    record = IterationRecord(
        iteration=t,
        state=IterationState(iteration=t, rng=_rng_state(loop.rng), learner_step=t if cfg.trains_weights else 0,
                             pending=loop.pending_record()),
        pool=loop.pool.to_record(),
        metrics=result.metrics,
        rollouts=tuple(r.to_record() for r in result.rollouts),
        reflections=tuple(o.to_record() for o in result.outcomes),
        adapter=rundir.checkpoint(t) if cfg.trains_weights else None,
    )
    rundir.commit(record, summary=summary(cfg, loop, plan, history, elapsed), best_prompt=loop.test_program().render())


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    """Counts by key added over iterations, keys sorted."""
    return {k: sum(c.get(k, 0) for c in counts) for k in sorted({k for c in counts for k in c})}
