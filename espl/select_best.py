"""``espl-bench select-best RUN``: pick a run's best committed iteration on its validation split.

The validation split is the first ``min(--validation-problems, train size // 2)`` problems of the
env's train split, which the run never trained on (:mod:`espl.loop` samples training problems
after them). Each committed iteration is scored as it would be deployed: its test-time program
(the run's ``--test-program`` rule) with that iteration's weights (the LoRA adapter kept in
``iterations/N/adapter/``; base weights for frozen methods). The test split is never read.

The result goes to ``RUN/selection.json`` (atomically) and a table on stdout; the best iteration is
the one with the highest validation success, ties going to the earlier (cheaper) iteration.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agents.rollout import EpisodeSpec, RolloutEngine
from agents.sampler import SamplingParams, TransformersSampler
from envs.registry import make_env
from espl.config import RunConfig
from espl.errors import ConfigError, RunDirError
from espl.models import resolve_model
from espl.program import Pool
from espl.rundir import RunDir, atomic_write, dump_json

log = logging.getLogger(__name__)


def _test_program(cfg: RunConfig, pool: Pool):
    if cfg.method == "gepa":
        return max(pool.programs, key=lambda p: p.mu)
    return pool.latest() if cfg.test_program == "latest" else pool.best()


class _Weights:
    """The policy of one iteration: base weights plus, for trained runs, that iteration's adapter."""

    def __init__(self, cfg: RunConfig):
        from espl.policy import load_frozen

        self.cfg = cfg
        self.model, self.tokenizer = load_frozen(resolve_model(cfg.model))
        self.peft = None

    def sampler(self, folder: Path) -> TransformersSampler:
        if not self.cfg.trains_weights:
            return TransformersSampler(self.model, self.tokenizer)
        adapter = folder / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise RunDirError(f"{adapter} is missing; fix: select-best needs a run committed by this version "
                              "(each iteration keeps its adapter)")
        from peft import PeftModel

        name = folder.name
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, adapter, adapter_name=name).eval()
        else:
            self.peft.load_adapter(adapter, adapter_name=name)
        self.peft.set_adapter(name)
        return TransformersSampler(self.peft, self.tokenizer)


def select_best(run: str, *, samples: int = 2) -> dict:
    rundir = RunDir(run)
    if not (rundir.root / "run.json").is_file():
        raise RunDirError(f"{run} holds no run; fix: pass a folder written by espl-bench run")
    cfg = RunConfig(**{**rundir.header()["config"], "resume": False})
    if cfg.sampler == "litellm":
        raise ConfigError("select-best scores local policies; fix: compare an API policy's runs by their test metrics")
    done = rundir.latest()
    if done == 0:
        raise RunDirError(f"{run} has no committed iteration yet; fix: run it first")
    env = make_env(cfg.env, **cfg.env_kwargs)
    size = min(cfg.validation_problems, env.split_size("train") // 2)
    if size == 0:
        raise ConfigError(f"the run in {run} has no validation split; fix: start it with --validation-problems N (N > 0)")
    weights = _Weights(cfg)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed * 1_000_003 + 17)
    rows = []
    for t in range(1, done + 1):
        folder = rundir.iterations / f"{t:06d}"
        program = _test_program(cfg, Pool.from_dict(rundir.load_iteration(t)["pool"]))
        engine = RolloutEngine(lambda: make_env(cfg.env, **cfg.env_kwargs), weights.sampler(folder))
        specs = [EpisodeSpec(program.render(), "train", i, {"problem": i}) for i in range(size) for _ in range(samples)]
        rollouts = engine.run(specs, params)
        rows.append({"iteration": t, "program": program.id,
                     "success": sum(r.success for r in rollouts) / len(rollouts),
                     "mean_reward": sum(r.reward for r in rollouts) / len(rollouts)})
        log.info("iteration %d (%s): validation success %.3f", t, program.id, rows[-1]["success"])
    best = max(rows, key=lambda r: (r["success"], r["mean_reward"], -r["iteration"]))
    result = {"split": "validation", "problems": size, "samples": samples, "iterations": rows, "best": best,
              "best_prompt": _test_program(cfg, Pool.from_dict(rundir.load_iteration(best["iteration"])["pool"])).render()}
    atomic_write(rundir.root / "selection.json", dump_json(result))
    return result


def render(result: dict) -> str:
    lines = [f"validation split: {result['problems']} problems x {result['samples']} samples (the test split is not used)",
             "iteration  program  success  mean reward"]
    for row in result["iterations"]:
        mark = "  <- best" if row is result["best"] or row == result["best"] else ""
        lines.append(f"{row['iteration']:>9}  {row['program']:>7}  {row['success']:.3f}    {row['mean_reward']:.3f}{mark}")
    return "\n".join(lines) + "\n"
