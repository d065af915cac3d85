"""Scoring a finished run folder again: its weights, its programs, the evaluation protocol.

``espl-bench select-best`` and ``espl-bench evaluate`` load a run the same way: the run's
config from its header, the base model, and for trained methods the LoRA adapter an iteration
kept in its folder (:mod:`espl_bench.rundir`). Scoring always uses the in-process transformers sampler (a
run made with vLLM is re-scored in-process, so its numbers can differ from the run's own within
the engines' numeric mismatch).
"""

from __future__ import annotations

import logging
from typing import Any

from espl_bench.agents.rollout import RolloutEngine
from espl_bench.agents.sampler import AdapterDisabled, TransformersSampler
from espl_bench.config import RunConfig
from espl_bench.envs.registry import make_env
from espl_bench.errors import ConfigError, RunDirError
from espl_bench.rundir import ADAPTER_FILES, RunDir
from espl_bench.training.models import resolve_model

log = logging.getLogger(__name__)


def load_run_config(run: str) -> tuple[RunDir, RunConfig]:
    """The run folder and its config; one clear error when it is not a committed run."""
    rundir = RunDir(run)
    if not rundir.has_run():
        raise RunDirError(f"{run} holds no run; fix: pass a folder written by espl-bench run")
    header = rundir.header()
    try:
        cfg = RunConfig(**{**header.config, "resume": False})
    except (TypeError, ValueError, KeyError) as exc:
        raise RunDirError(f"{rundir.header_path} does not hold a config this version reads ({type(exc).__name__}); "
                          "fix: re-run it with this version") from None
    if cfg.sampler == "litellm":
        raise ConfigError("re-scoring needs local weights; fix: compare an API policy's runs by their own test metrics")
    if rundir.latest() == 0:
        raise RunDirError(f"{run} has no committed iteration yet; fix: run it first")
    return rundir, cfg


class RunWeights:
    """The policy of one iteration: base weights plus, for trained runs, that iteration's adapter."""

    def __init__(self, cfg: RunConfig, plan):
        from espl_bench.agents.devices import resolve_dtype
        from espl_bench.training.policy import load_frozen

        self.cfg, self.plan = cfg, plan
        # the precision the run trained and sampled in (its --dtype on this machine)
        self.model, self.tokenizer = load_frozen(resolve_model(cfg.model), resolve_dtype(cfg.dtype), cfg.attn_implementation)
        self.peft: Any = None  # a PeftModel once the first adapter is loaded

    def close(self) -> None:
        """Drop the models (a long session re-scoring many runs must not keep them all)."""
        import gc

        self.model = self.peft = None
        gc.collect()

    def _env(self):
        return make_env(self.cfg.env, **self.cfg.env_kwargs)

    def base(self) -> RolloutEngine:
        sampler = TransformersSampler(self.peft or self.model, self.tokenizer)
        return RolloutEngine(self._env, AdapterDisabled(sampler) if self.peft is not None else sampler,
                             reset_args=self.plan.reset_args)

    def trained(self, rundir: RunDir, t: int) -> RolloutEngine:
        """The engine of iteration ``t`` of ``rundir`` (base weights for frozen methods)."""
        if not self.cfg.trains_weights:
            return RolloutEngine(self._env, TransformersSampler(self.model, self.tokenizer), reset_args=self.plan.reset_args)
        adapter = rundir.adapter(t)
        if not (adapter / ADAPTER_FILES[0]).is_file():
            raise RunDirError(f"{adapter} is missing; fix: re-score a run committed by this version "
                              "(each iteration keeps its adapter)")
        from peft import PeftModel

        name = f"iteration-{t}"
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, adapter, adapter_name=name).eval()
        elif name not in self.peft.peft_config:
            self.peft.load_adapter(adapter, adapter_name=name)
        self.peft.set_adapter(name)
        return RolloutEngine(self._env, TransformersSampler(self.peft, self.tokenizer), reset_args=self.plan.reset_args)
