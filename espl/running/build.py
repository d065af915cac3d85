"""The one place that builds a run's parts and closes what it opened.

:func:`open_run` is a context manager around everything a run holds: the env's split plan
(checked against the text contract before any model loads), the policy (sampler, learner,
servers), the reflector and its in-process models, the reflection operators. Leaving it closes
them in order (the learner, then servers and local models), whether the run ended, failed or was
interrupted. ``espl-bench run`` uses it through :mod:`espl_bench.running.runner`; ``select-best``
and ``evaluate`` re-score through :func:`open_rescoring`; tests use both.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from espl_bench.agents.offline_reflectors import offline_reflector
from espl_bench.agents.reflector import (
    DEFAULT_REFLECTOR,
    LOCAL_PROVIDER,
    LiteLLMReflector,
    Reflector,
)
from espl_bench.agents.rollout import RolloutEngine
from espl_bench.config import RunConfig
from espl_bench.envs.contract import require_text
from espl_bench.envs.registry import make_env
from espl_bench.envs.splits import SplitPlan
from espl_bench.errors import ConfigError
from espl_bench.locks import owned
from espl_bench.method.edits import ops_token_bound
from espl_bench.method.loop import Parts
from espl_bench.method.reflection import Crossover, Mutation
from espl_bench.method.selection import make_selector
from espl_bench.rundir import RunDir
from espl_bench.scoring.cells import CellStore
from espl_bench.training.policy import Policy, build_policy

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_run(cfg: RunConfig, rundir: RunDir, resume_step: int = 0) -> Iterator[Parts]:
    """The run's parts (:func:`build_parts`), closed on the way out."""
    parts = build_parts(cfg, rundir, resume_step)
    try:
        yield parts
    finally:
        parts.close()


@contextlib.contextmanager
def open_rescoring(run: str):
    """``(rundir, cfg, plan, weights)`` to score a finished run's folder again, owning the folder
    (:mod:`espl_bench.locks`) while it does; frees the model after."""
    from espl_bench.running.posthoc import RunWeights, load_run_config

    rundir, cfg = load_run_config(run)  # first: a folder that holds no run is an error, not created
    with owned(run, f"run folder {run}", "wait for the process that holds it to end (or stop it), then try again"):
        plan = split_plan(cfg)
        weights = RunWeights(cfg, plan)
        try:
            yield rundir, cfg, plan, weights
        finally:
            weights.close()


def split_plan(cfg: RunConfig) -> SplitPlan:
    """The run's train, validation and test problems (:class:`envs.splits.SplitPlan`), once the env
    is known to fit the text contract (checked before any model loads)."""
    env = make_env(cfg.env, **cfg.env_kwargs)
    plan = SplitPlan.for_env(env, cfg.validation_problems)
    if plan.train.size < 1 or plan.test.size < 1:
        raise ConfigError(f"environment {cfg.env!r} has an empty split (train {plan.train.size}, test {plan.test.size}); "
                          "fix: check its env_kwargs")
    require_text(cfg.env, env, plan)
    return plan


def build_parts(cfg: RunConfig, rundir: RunDir, resume_step: int) -> Parts:
    plan = split_plan(cfg)
    fits_memory(cfg)
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
    def engine(sampler) -> RolloutEngine:
        return RolloutEngine(env_factory, sampler, reset_args=plan.reset_args)

    return Parts(engine=engine(policy.sampler), learner=policy.learner, cells=cell_store(cfg),
                 selector=make_selector(cfg.selection, cfg.ucb_lambda), mutation=mutation, crossover=crossover,
                 plan=plan, eos_id=policy.eos_id, reflector=reflector, meters={**policy.meters, **meters},
                 closers=policy.closers, base_engine=(lambda: engine(base())) if base else None,
                 admit=policy.admit, samples_while_training=policy.samples_while_training)


def fits_memory(cfg: RunConfig) -> None:
    """Refuse a run that clearly cannot fit this machine's memory (:func:`espl_bench.training.memory.check_fits`)."""
    from espl_bench.training.memory import check_fits
    from espl_bench.training.placement import local_learner_processes

    check_fits(cfg, local_learner_processes())


def cell_store(cfg: RunConfig) -> CellStore | None:
    """The run's share of base-weights cells (:mod:`espl_bench.scoring.cells`), when it asked for one
    and its sampler is deterministic (the in-process one)."""
    if not cfg.cell_store:
        return None
    if cfg.sampler != "transformers":
        log.warning("--cell-store is ignored with --sampler %s: only the in-process sampler gives equal episodes "
                    "for equal weights and prompts", cfg.sampler)
        return None
    from espl_bench.running.provenance import provenance

    made = provenance()
    scope = {"model": cfg.model, "sampler": cfg.sampler, "env": cfg.env, "env_kwargs": cfg.env_kwargs,
             "code": [made["espl_bench"], made["git"]], "packages": made["packages"]}
    return CellStore(cfg.cell_store, scope)


def _reflector(cfg: RunConfig, policy: Policy) -> tuple[Reflector | None, dict]:
    """The run's reflector and its usage meter; the default is the policy's frozen reference model."""
    if not cfg.reflects:
        return None, {}
    reflector = offline_reflector(cfg.reflector)
    if reflector is not None:
        return reflector, {}
    model, params = policy.reference() if cfg.reflector == DEFAULT_REFLECTOR else (cfg.reflector, {})
    reflector = LiteLLMReflector(model, max_tokens=cfg.reflector_max_tokens, timeout=cfg.reflector_timeout,
                                 num_retries=cfg.reflector_retries, params=params)
    if not model.startswith(LOCAL_PROVIDER):  # an in-process model is there by construction
        reflector.check()
    return reflector, {"reflector": reflector.usage.as_dict}


def _operators(cfg: RunConfig, reflector) -> tuple[Mutation | None, Crossover | None]:
    if not cfg.spec.mutates:
        return None, None
    mutation = Mutation(reflector, max_ops=cfg.max_ops, max_words=cfg.max_words, inflation=cfg.sigma_inflation,
                        revision_fallback=cfg.revision_fallback, deadline_s=cfg.reflection_deadline,
                        language=cfg.principle_language)
    crossover = None
    if cfg.spec.crosses and cfg.crossover_prob > 0:
        crossover = Crossover(reflector, max_words=cfg.max_words, inflation=cfg.sigma_inflation,
                              deadline_s=cfg.reflection_deadline, language=cfg.principle_language)
    # A cap below what an edit call's schema admits cuts long but valid answers off mid-string.
    widest = max(mutation.max_ops, mutation.max_revision_ops, crossover.max_ops if crossover else 0)
    needed = ops_token_bound(widest, cfg.max_words)
    if cfg.reflector_max_tokens < needed:
        log.warning("--reflector-max-tokens %d is below the %d tokens an edit call of %d operations of %d words may "
                    "need: long answers will be cut off and count as failures; raise it to %d for full answers",
                    cfg.reflector_max_tokens, needed, widest, cfg.max_words, needed)
    return mutation, crossover


