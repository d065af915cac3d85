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
from agents.sampler import TransformersSampler
from envs.registry import make_env
from espl.config import RunConfig
from espl.errors import ConfigError, ModelNotFound, RunDirError
from espl.learner import FrozenLearner, LearnerSettings, TRLLearner
from espl.loop import EsplLoop, IterationResult, Parts
from espl.models import resolve_model
from espl.offline_reflectors import offline_reflector
from espl.program import Pool
from espl.reflection import Crossover, Mutation, template_hashes
from espl.reflector import DEFAULT_REFLECTOR, LiteLLMReflector, register_local_model
from espl.rundir import RunDir
from espl.selection import make_selector

log = logging.getLogger(__name__)


def _load_frozen(model_path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path)
    except OSError as exc:
        raise ModelNotFound(f"cannot load model {model_path!r} ({str(exc).splitlines()[0]}); fix: pass a local "
                            "model folder or a hub id already in the local cache") from None
    model.requires_grad_(False)
    return model, tokenizer


def _trl_learner(settings: LearnerSettings) -> TRLLearner:
    try:
        return TRLLearner(settings)
    except OSError as exc:
        raise ModelNotFound(f"cannot load model {settings.model_path!r} ({str(exc).splitlines()[0]}); fix: pass a local "
                            "model folder or a hub id already in the local cache") from None


def build_parts(cfg: RunConfig, rundir: RunDir, resume_step: int) -> Parts:
    env = make_env(cfg.env, **cfg.env_kwargs)
    train_size, test_size = env.split_size("train"), env.split_size("test")
    if train_size < 1 or test_size < 1:
        raise ConfigError(f"environment {cfg.env!r} has an empty split (train {train_size}, test {test_size}); fix: check its env_kwargs")
    model_path = resolve_model(cfg.model)
    reference = None
    if cfg.trains_weights:
        m = cfg.selected_programs
        learner = _trl_learner(LearnerSettings(
            model_path=model_path, output_dir=rundir.learner, rows_per_step=m * min(cfg.batch_size, train_size) * cfg.group_size,
            group_size=cfg.group_size if cfg.baseline == "normal" else m * cfg.group_size,
            total_steps=cfg.iterations, learning_rate=cfg.learning_rate, lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards,
            max_completion_length=cfg.max_new_tokens, micro_batch_size=cfg.micro_batch_size, seed=cfg.seed,
            resume_step=resume_step))
        sampler = TransformersSampler(learner.model, learner.tokenizer)
        tokenizer = learner.tokenizer
    else:
        model, tokenizer = _load_frozen(model_path)
        learner = FrozenLearner()
        sampler = TransformersSampler(model, tokenizer)
        reference = sampler  # frozen weights: the policy is the reference policy
    mutation = crossover = None
    if cfg.evolves:
        reflector = offline_reflector(cfg.reflector)
        if reflector is None and cfg.reflector == DEFAULT_REFLECTOR:
            if reference is None:
                # A separate frozen copy: the policy's LoRA is training concurrently with reflection.
                reference = TransformersSampler(*_load_frozen(model_path))
            register_local_model("reference", reference)
        if reflector is None:
            reflector = LiteLLMReflector(cfg.reflector, max_tokens=cfg.reflector_max_tokens, timeout=cfg.reflector_timeout,
                                         num_retries=cfg.reflector_retries)
            if cfg.reflector != DEFAULT_REFLECTOR:
                reflector.check()
        mutation = Mutation(reflector, max_ops=cfg.max_ops, max_words=cfg.max_words, inflation=cfg.sigma_inflation,
                            revision_fallback=cfg.revision_fallback, deadline_s=cfg.reflection_deadline)
        if cfg.method != "self-reflection" and cfg.crossover_prob > 0:
            crossover = Crossover(reflector, max_words=cfg.max_words, inflation=cfg.sigma_inflation,
                                  deadline_s=cfg.reflection_deadline)
    return Parts(engine=RolloutEngine(lambda: make_env(cfg.env, **cfg.env_kwargs), sampler), learner=learner,
                 selector=make_selector(cfg.selection, cfg.ucb_lambda), mutation=mutation, crossover=crossover,
                 train_size=train_size, test_size=test_size, eos_id=int(tokenizer.eos_token_id))


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
        "reflector": cfg.reflector if cfg.evolves else None,
        "iterations_completed": len(history), "iterations_planned": cfg.iterations,
        "train_reward": [round(m["train_reward"], 4) for m in history],
        "test": tests[-1] if tests else None,
        "test_program": {"id": program.id, "rule": cfg.test_program, "mu": program.mu, "sigma": program.sigma,
                         "text": program.render()},
        "pool_size": len(loop.pool),
        "reflection_failures": sum(m["reflection_failures"] for m in history),
        "rollouts": sum(m["rollouts"] for m in history),
        "generated_tokens": sum(m["generated_tokens"] for m in history),
        "seconds_this_session": round(elapsed, 1),
    }


def run(cfg: RunConfig) -> dict:
    """Run (or resume) ``cfg`` to completion; returns the summary written to ``summary.json``."""
    started = time.monotonic()
    rundir = RunDir(cfg.out)
    pool, rng, done, history = _prepare(cfg, rundir)
    if done >= cfg.iterations:
        log.info("the run in %s already has %d committed iterations", cfg.out, done)
    parts = build_parts(cfg, rundir, resume_step=done if cfg.trains_weights else 0)
    loop = EsplLoop(cfg, parts, pool, rng)
    bar = tqdm(total=cfg.iterations, initial=done, desc="E-SPL", unit="it", dynamic_ncols=True)
    try:
        for t in range(done + 1, cfg.iterations + 1):
            result = loop.iteration(t, progress=lambda name: bar.set_postfix_str(f"iter {t}: {name}"))
            history.append(result.metrics)
            _commit(rundir, cfg, loop, t, result, history, time.monotonic() - started)
            bar.update(1)
            bar.set_postfix_str(f"train reward {result.metrics['train_reward']:.3f}")
    finally:
        bar.close()
        parts.learner.close()
    final = summary(cfg, loop, history, time.monotonic() - started)
    if done >= cfg.iterations and history:
        from espl.rundir import atomic_write, dump_json

        atomic_write(Path(cfg.out) / "summary.json", dump_json(final))
    return final


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
    )
