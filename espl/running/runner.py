"""Building a run from its config, running it iteration by iteration, committing each one.

This is the shell around :mod:`espl_bench.method.loop`: models, files, progress bars and resume live here.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from tqdm.auto import tqdm

from espl_bench.agents.llm_router import sum_usage
from espl_bench.agents.rollout import RolloutEngine
from espl_bench.envs.registry import make_env
from espl_bench.envs.splits import SplitPlan
from espl_bench.scoring.breakdown import Breakdown, breakdown
from espl_bench.config import RunConfig
from espl_bench.errors import ConfigError, RunDirError
from espl_bench.scoring.evaluation import CellResult
from espl_bench.baselines.gepa import GepaLoop
from espl_bench.method.loop import EsplLoop, IterationResult, Parts, reflection_counts
from espl_bench.agents.offline_reflectors import offline_reflector
from espl_bench.method.program import Pool
from espl_bench.running.provenance import provenance
from espl_bench.method.reflection import Crossover, Mutation, template_hashes
from espl_bench.training.policy import Policy, build_policy
from espl_bench.agents.reflector import DEFAULT_REFLECTOR, LiteLLMReflector
from espl_bench.running.rundir import RunDir
from espl_bench.method.selection import make_selector

log = logging.getLogger(__name__)

SUMMARY_SCHEMA_VERSION = 2
# The loop each method runs (espl_bench.methods names it).
LOOPS = {"espl": EsplLoop, "gepa": GepaLoop}


def split_plan(cfg: RunConfig) -> SplitPlan:
    """The run's train, validation and test problems (:class:`envs.splits.SplitPlan`)."""
    env = make_env(cfg.env, **cfg.env_kwargs)
    plan = SplitPlan.for_env(env, cfg.validation_problems)
    if plan.train.size < 1 or plan.test.size < 1:
        raise ConfigError(f"environment {cfg.env!r} has an empty split (train {plan.train.size}, test {plan.test.size}); "
                          "fix: check its env_kwargs")
    return plan


def build_parts(cfg: RunConfig, rundir: RunDir, resume_step: int) -> Parts:
    plan = split_plan(cfg)
    policy = build_policy(cfg, rundir, plan.train.size, resume_step)
    try:
        reflector, meters = _reflector(cfg, policy)
        mutation, crossover = _operators(cfg, reflector)
    except BaseException:
        for close in policy.closers:
            close()
        raise

    def env_factory():
        return make_env(cfg.env, **cfg.env_kwargs)

    base = policy.base_sampler
    return Parts(engine=RolloutEngine(env_factory, policy.sampler), learner=policy.learner,
                 selector=make_selector(cfg.selection, cfg.ucb_lambda), mutation=mutation, crossover=crossover,
                 plan=plan, eos_id=policy.eos_id, reflector=reflector, meters={**policy.meters, **meters},
                 closers=policy.closers, base_engine=(lambda: RolloutEngine(env_factory, base())) if base else None,
                 admit=policy.admit)


def _reflector(cfg: RunConfig, policy: Policy) -> tuple[object | None, dict]:
    """The run's reflector and its usage meter; the default is the policy's frozen reference model."""
    if not cfg.reflects:
        return None, {}
    reflector = offline_reflector(cfg.reflector)
    if reflector is not None:
        return reflector, {}
    model, params = policy.reference() if cfg.reflector == DEFAULT_REFLECTOR else (cfg.reflector, {})
    reflector = LiteLLMReflector(model, max_tokens=cfg.reflector_max_tokens, timeout=cfg.reflector_timeout,
                                 num_retries=cfg.reflector_retries, params=params)
    if model != DEFAULT_REFLECTOR:
        reflector.check()
    return reflector, {"reflector": reflector.usage.as_dict}


def _operators(cfg: RunConfig, reflector) -> tuple[Mutation | None, Crossover | None]:
    if not cfg.spec.mutates:
        return None, None
    mutation = Mutation(reflector, max_ops=cfg.max_ops, max_words=cfg.max_words, inflation=cfg.sigma_inflation,
                        revision_fallback=cfg.revision_fallback, deadline_s=cfg.reflection_deadline)
    crossover = None
    if cfg.spec.crosses and cfg.crossover_prob > 0:
        crossover = Crossover(reflector, max_words=cfg.max_words, inflation=cfg.sigma_inflation,
                              deadline_s=cfg.reflection_deadline)
    return mutation, crossover


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _restore_rng(state: list) -> random.Random:
    rng = random.Random()
    rng.setstate((state[0], tuple(state[1]), state[2]))
    return rng


def _header(cfg: RunConfig) -> dict:
    return {"config": cfg.model_dump(exclude={"resume", "force"}), "templates": template_hashes()}


def _prepare(cfg: RunConfig, rundir: RunDir) -> tuple[Pool, random.Random, int, list[dict]]:
    """A fresh run's start, or the state of the last committed iteration on --resume."""
    header = _header(cfg)
    if not cfg.resume:
        # run.json is written once the run's parts are built (run()), so a run that cannot start
        # (a typo in --env or --model) leaves nothing that blocks the corrected command.
        rundir.check_new()
        pool = Pool.with_root(preamble=cfg.preamble, max_size=cfg.max_pool_size)
        return pool, random.Random(cfg.seed), 0, []
    if not (rundir.root / "run.json").exists():
        raise RunDirError(f"nothing to resume in {rundir.root}; fix: drop --resume to start a new run there")
    old = rundir.header()
    if not cfg.force:
        old_identity = RunConfig(**{**old["config"], "resume": False}).identity()
        changed = sorted(k for k, v in cfg.identity().items() if old_identity.get(k) != v)
        if changed:
            raise RunDirError(f"the config changed since the run started ({', '.join(changed)}); fix: use the "
                              "original values, or pass --force to continue anyway")
        if old.get("templates") != header["templates"]:
            raise RunDirError("the reflection prompt templates changed since the run started; fix: pass --force to continue anyway")
    rundir.clean_uncommitted()
    done = rundir.latest()
    if done == 0:
        return Pool.with_root(preamble=cfg.preamble, max_size=cfg.max_pool_size), random.Random(cfg.seed), 0, []
    last = rundir.load_iteration(done)
    history = rundir.all_metrics_upto(done)
    return Pool.from_dict(last["pool"]), _restore_rng(last["state"]["rng"]), done, history


def budget(history: list[dict], extra: Breakdown | None = None) -> dict:
    """The run's budget ledger: what it spent on training, validation, evaluation and reflection."""
    evaluations = [m["test"] for m in history if "test" in m]
    cells = [c for name, c in (extra.cells.items() if extra else ()) if name not in extra.reused]
    seconds: dict[str, float] = {}
    for m in history:
        for name, value in m.get("phase_seconds", {}).items():
            seconds[name] = round(seconds.get(name, 0.0) + value, 2)
    reflector = sum_usage([m["usage"]["reflector"] for m in history if "reflector" in m.get("usage", {})])
    return {
        "training_rollouts": sum(m["rollouts"] for m in history) - sum(m.get("validation_rollouts", 0) for m in history),
        "validation_rollouts": sum(m.get("validation_rollouts", 0) for m in history),
        "evaluation_rollouts": sum(e.get("rollouts", 0) for e in evaluations) + sum(c.rollouts for c in cells),
        "generated_tokens": {"training": sum(m["generated_tokens"] for m in history),
                             "evaluation": sum(e.get("generated_tokens", 0) for e in evaluations)
                             + sum(c.generated_tokens for c in cells)},
        "reflector": {"calls": sum(m.get("reflection_calls", 0) for m in history),
                      "prompt_tokens": int(reflector.get("prompt_tokens", 0)),
                      "completion_tokens": int(reflector.get("completion_tokens", 0))},
        "seconds_by_phase": seconds,
    }


def summary(cfg: RunConfig, loop: EsplLoop, history: list[dict], elapsed: float,
            extra: Breakdown | None = None) -> dict:
    tests = [m["test"] for m in history if "test" in m]
    program = loop.test_program()
    counts = [m["reflection_counts"] for m in history if "reflection_counts" in m]
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "env": cfg.env, "method": cfg.method, "model": cfg.model, "seed": cfg.seed,
        "reflector": cfg.reflector if cfg.reflects else None,
        "iterations_completed": len(history), "iterations_planned": len(history) + len(loop.schedule(len(history))),
        "train_reward": [round(m["train_reward"], 4) for m in history],
        "splits": loop.parts.plan.to_dict(),
        "test": tests[-1] if tests else None,
        "test_program": {"id": program.id, "rule": cfg.test_rule, "mu": program.mu, "sigma": program.sigma,
                         "text": program.render()},
        "breakdown": extra.to_dict() if extra else None,
        "pool_size": len(loop.pool),
        "reflection": {"children": {k: sum(c["children"][k] for c in counts) for k in ("revision", "fallback", "crossover")},
                       "failed": sum(c["failed"] for c in counts), "skipped": sum(c["skipped"] for c in counts),
                       "copied_edits_rejected": sum(c["copied_edits_rejected"] for c in counts)},
        "reflection_failures": sum(m["reflection_failures"] for m in history),
        "rollouts": sum(m["rollouts"] for m in history),
        "generated_tokens": sum(m["generated_tokens"] for m in history),
        "budget": budget(history, extra),
        # calls, tokens and dollars of each metered model (reflector, API policy), all sessions
        "usage": {name: sum_usage([m["usage"][name] for m in history if name in m.get("usage", {})])
                  for name in sorted({n for m in history for n in m.get("usage", {})})},
        "seconds_this_session": round(elapsed, 1),
        "provenance": provenance(),
    }


def final_breakdown(cfg: RunConfig, loop: EsplLoop, history: list[dict]) -> Breakdown:
    """The weights x prompt breakdown of the finished run (:mod:`espl_bench.scoring.breakdown`) on its test items."""
    parts = loop.parts
    program, root = loop.test_program(), loop.pool.root()
    same = program.render() == root.render()
    last = next((m["test"] for m in reversed(history) if "test" in m), None)
    known = {}
    if last is not None and last.get("program") == program.id and "per_problem" in last:
        row = "trained" if cfg.trains_weights else "base"
        known[f"{row}/{'root' if same else 'program'}"] = CellResult.from_dict(last)
    base_engine = [None]

    def score(weights: str, prompt: str) -> CellResult:
        chosen = root if prompt == "root" else program
        engine = parts.engine
        if weights == "base" and cfg.trains_weights:
            if base_engine[0] is None:
                base_engine[0] = parts.base_engine()
            engine = base_engine[0]
        log.info("breakdown: %s weights, %s prompt (%s)", weights, prompt, chosen.id)
        return loop.evaluate(engine, chosen, weights=weights)

    return breakdown(score, trained=cfg.trains_weights and parts.base_engine is not None, root=root.id,
                     program=program.id, same_prompt=same, known=known)


def run(cfg: RunConfig) -> dict:
    """Run (or resume) ``cfg`` to completion; returns the summary written to ``summary.json``."""
    started = time.monotonic()
    provenance()  # read now, at the code this process imported, not at a checkout changed mid-run
    rundir = RunDir(cfg.out)
    pool, rng, done, history = _prepare(cfg, rundir)
    parts = build_parts(cfg, rundir, resume_step=done if cfg.trains_weights else 0)
    if not cfg.resume:
        try:
            rundir.create(_header(cfg))
        except BaseException:
            parts.close()
            raise
    loop = LOOPS[cfg.spec.loop](cfg, parts, pool, rng)
    planned = done + len(loop.schedule(done))
    if planned == done:
        log.info("the run in %s already has %d committed iterations", cfg.out, done)
    bar = tqdm(total=planned, initial=done, desc=cfg.method, unit="it", dynamic_ncols=True)
    extra = _load_breakdown(rundir) if planned == done else None
    try:
        for t in loop.schedule(done):
            result = loop.iteration(t, progress=lambda name: bar.set_postfix_str(f"iter {t}: {name}"))
            history.append(result.metrics)
            _commit(rundir, cfg, loop, t, result, history, time.monotonic() - started)
            bar.update(t - bar.n)
            bar.set_postfix_str(f"train reward {result.metrics['train_reward']:.3f}")
        if history and extra is None:
            bar.set_postfix_str("weights x prompt breakdown")
            extra = final_breakdown(cfg, loop, history)
            _store_breakdown(rundir, extra)
    finally:
        bar.close()
        parts.close()
    final = summary(cfg, loop, history, time.monotonic() - started, extra)
    if history:
        from espl_bench.running.rundir import atomic_write, dump_json

        if planned == done:
            final = _keep_session_record(final, Path(cfg.out) / "summary.json")
        atomic_write(Path(cfg.out) / "summary.json", dump_json(final))
    return final


def _store_breakdown(rundir: RunDir, result: Breakdown) -> None:
    from espl_bench.running.rundir import atomic_write, dump_json

    atomic_write(rundir.root / "breakdown.json", dump_json(result.to_dict()))


def _load_breakdown(rundir: RunDir) -> Breakdown | None:
    """The finished run's breakdown, when a session already computed it (else it is computed)."""
    import json

    from espl_bench import stats
    from espl_bench.scoring.evaluation import EvalItems

    path = rundir.root / "breakdown.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = EvalItems.from_dict(data["items"])
        cells = {name: CellResult.from_dict({**cell, "items": data["items"]}) for name, cell in data["cells"].items()}
        effects = {name: stats.Interval.from_dict(i) for name, i in data["effects"].items()}
        return Breakdown(items, data["root_program"], data["test_program"], cells, effects,
                         tuple(data.get("reused", ())))
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; the breakdown is scored again", path)
        return None


def _keep_session_record(final: dict, path: Path) -> dict:
    """A session that ran nothing keeps the code and time of the one that committed the last
    iteration (or none, for a run made before provenance was recorded): a finished run that a
    suite resumes must not claim the current checkout made it."""
    import json

    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return final
    kept = {k: v for k, v in final.items() if k not in ("provenance", "seconds_this_session")}
    return {**kept, **{k: previous[k] for k in ("seconds_this_session", "provenance") if k in previous}}


def _commit(rundir: RunDir, cfg: RunConfig, loop: EsplLoop, t: int, result: IterationResult, history: list[dict],
            elapsed: float) -> None:
    rundir.commit(
        t,
        state={"iteration": t, "rng": _rng_state(loop.rng), "learner_step": t if cfg.trains_weights else 0},
        pool=loop.pool.to_dict(),
        rollouts=[r.to_record() for r in result.rollouts],
        reflections=[o.to_record() for o in result.outcomes],
        metrics=result.metrics,
        summary=summary(cfg, loop, history, elapsed),
        best_prompt=loop.test_program().render(),
        adapter=rundir.learner / f"checkpoint-{t}" if cfg.trains_weights else None,
    )
