"""Building a run from its config, running it iteration by iteration, committing each one.

This is the shell around :mod:`espl.loop`: models, files, progress bars and resume live here.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from tqdm.auto import tqdm

from agents.rollout import RolloutEngine
from envs.registry import make_env
from espl.config import RunConfig
from agents.llm_router import sum_usage
from espl.errors import ConfigError, RunDirError
from espl.gepa_method import GepaLoop
from espl.loop import EsplLoop, IterationResult, Parts
from espl.offline_reflectors import offline_reflector
from espl.program import Pool
from espl.provenance import provenance
from espl.reflection import Crossover, Mutation, template_hashes
from espl.policy import Policy, build_policy
from espl.reflector import DEFAULT_REFLECTOR, LiteLLMReflector
from espl.rundir import RunDir
from espl.selection import make_selector

log = logging.getLogger(__name__)

# Methods with a loop of their own (the rest run the E-SPL loop with their switches).
LOOPS = {"gepa": GepaLoop}


def build_parts(cfg: RunConfig, rundir: RunDir, resume_step: int) -> Parts:
    env = make_env(cfg.env, **cfg.env_kwargs)
    train_size, test_size = env.split_size("train"), env.split_size("test")
    if train_size < 1 or test_size < 1:
        raise ConfigError(f"environment {cfg.env!r} has an empty split (train {train_size}, test {test_size}); fix: check its env_kwargs")
    validation_size = min(cfg.validation_problems, train_size // 2)
    policy = build_policy(cfg, rundir, train_size - validation_size, resume_step)
    try:
        reflector, meters = _reflector(cfg, policy)
        mutation, crossover = _operators(cfg, reflector)
    except BaseException:
        for close in policy.closers:
            close()
        raise
    return Parts(engine=RolloutEngine(lambda: make_env(cfg.env, **cfg.env_kwargs), policy.sampler), learner=policy.learner,
                 selector=make_selector(cfg.selection, cfg.ucb_lambda), mutation=mutation, crossover=crossover,
                 train_size=train_size, test_size=test_size, validation_size=validation_size, eos_id=policy.eos_id,
                 reflector=reflector,
                 meters={**policy.meters, **meters}, closers=policy.closers)


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
    if not cfg.evolves:
        return None, None
    mutation = Mutation(reflector, max_ops=cfg.max_ops, max_words=cfg.max_words, inflation=cfg.sigma_inflation,
                        revision_fallback=cfg.revision_fallback, deadline_s=cfg.reflection_deadline)
    crossover = None
    if cfg.method != "self-reflection" and cfg.crossover_prob > 0:
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


def _prepare(cfg: RunConfig, rundir: RunDir) -> tuple[Pool, random.Random, int, list[dict]]:
    """A fresh run's start, or the state of the last committed iteration on --resume."""
    header = {"config": cfg.model_dump(exclude={"resume", "force"}), "templates": template_hashes()}
    if not cfg.resume:
        rundir.create(header)
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


def summary(cfg: RunConfig, loop: EsplLoop, history: list[dict], elapsed: float) -> dict:
    tests = [m["test"] for m in history if "test" in m]
    program = loop.test_program()
    return {
        "env": cfg.env, "method": cfg.method, "model": cfg.model,
        "reflector": cfg.reflector if cfg.reflects else None,
        "iterations_completed": len(history), "iterations_planned": len(history) + len(loop.schedule(len(history))),
        "train_reward": [round(m["train_reward"], 4) for m in history],
        "test": tests[-1] if tests else None,
        "test_program": {"id": program.id, "rule": cfg.test_program, "mu": program.mu, "sigma": program.sigma,
                         "text": program.render()},
        "pool_size": len(loop.pool),
        "reflection_failures": sum(m["reflection_failures"] for m in history),
        "rollouts": sum(m["rollouts"] for m in history),
        "generated_tokens": sum(m["generated_tokens"] for m in history),
        # calls, tokens and dollars of each metered model (reflector, API policy), all sessions
        "usage": {name: sum_usage([m["usage"][name] for m in history if name in m.get("usage", {})])
                  for name in sorted({n for m in history for n in m.get("usage", {})})},
        "seconds_this_session": round(elapsed, 1),
        "provenance": provenance(),
    }


def run(cfg: RunConfig) -> dict:
    """Run (or resume) ``cfg`` to completion; returns the summary written to ``summary.json``."""
    started = time.monotonic()
    provenance()  # read now, at the code this process imported, not at a checkout changed mid-run
    rundir = RunDir(cfg.out)
    pool, rng, done, history = _prepare(cfg, rundir)
    parts = build_parts(cfg, rundir, resume_step=done if cfg.trains_weights else 0)
    loop = LOOPS.get(cfg.method, EsplLoop)(cfg, parts, pool, rng)
    planned = done + len(loop.schedule(done))
    if planned == done:
        log.info("the run in %s already has %d committed iterations", cfg.out, done)
    bar = tqdm(total=planned, initial=done, desc=cfg.method, unit="it", dynamic_ncols=True)
    try:
        for t in loop.schedule(done):
            result = loop.iteration(t, progress=lambda name: bar.set_postfix_str(f"iter {t}: {name}"))
            history.append(result.metrics)
            _commit(rundir, cfg, loop, t, result, history, time.monotonic() - started)
            bar.update(t - bar.n)
            bar.set_postfix_str(f"train reward {result.metrics['train_reward']:.3f}")
    finally:
        bar.close()
        parts.close()
    final = summary(cfg, loop, history, time.monotonic() - started)
    if planned == done and history:
        from espl.rundir import atomic_write, dump_json

        final = _keep_session_record(final, Path(cfg.out) / "summary.json")
        atomic_write(Path(cfg.out) / "summary.json", dump_json(final))
    return final


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
