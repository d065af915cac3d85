"""The policy of a run, per sampler backend: who samples, who trains, and how the two stay in sync.

One builder per ``--sampler`` value (:data:`BUILDERS`), each returning a :class:`Policy`:

* ``transformers``: in-process; the sampler reads the very model object TRL trains, so every
  call already uses the current weights. Deterministic with a seed.
* ``vllm``: a vLLM server (started here, or ``--vllm-url``). The learner still trains with TRL in
  this process; after every optimizer step :class:`AdapterSync` loads that step's LoRA
  checkpoint into the server, so the next rollouts sample from the updated policy. The server's
  logprobs feed TRL's importance-sampling correction. The default reflector is the server's own
  base model (the frozen reference policy) through litellm.
* ``litellm``: a hosted model by its litellm name; frozen weights, metered calls.
* ``trl-vllm`` (CUDA): TRL's own vLLM integration (``use_vllm``, colocate or ``trl vllm-serve``
  server): TRL pushes the whole weights into the engine every step (:class:`EngineSync`) and
  applies its importance-sampling correction; reflection uses a frozen in-process copy.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espl_bench.adapters import trl as trl_internals
from espl_bench.agents.sampler import AdapterDisabled, Sampler, TransformersSampler, model_context
from espl_bench.config import RunConfig
from espl_bench.errors import ConfigError, ModelNotFound, RunDirError
from espl_bench.method.learning import FrozenLearner, Learner, TrainingSample
from espl_bench.training.models import resolve_model
from espl_bench.training.trl_learner import LearnerSettings, TRLLearner

log = logging.getLogger(__name__)


# How TRL corrects a batch sampled by older weights (--max-staleness > 0): truncated importance
# sampling per token (TIS), each token's ratio pi_theta / pi_sampler capped at
# vllm_importance_sampling_clip_max (3). TRL's default for engine mismatch (sequence_mask) drops
# whole sequences past the cap, too coarse once the weights themselves differ by a step.
STALE_IS_MODE = "token_truncate"

# A program longer than this (rendered with the chat template) leaves small models no context.
MAX_PROGRAM_TOKENS = 1536
MAX_PROGRAM_CHARS = 20_000


@dataclass
class Policy:
    """A run's policy: its sampler, its learner, and the frozen reference model for reflection."""

    sampler: Sampler
    learner: Learner
    eos_id: int
    # The default reflector: () -> (litellm model string, extra litellm params). Lazy, because
    # the transformers backend loads a second frozen copy only when reflection needs it.
    reference: Callable[[], tuple[str, dict]]
    meters: dict[str, Callable[[], dict]] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)
    # () -> a sampler of the base weights (the weights x prompt breakdown); None for frozen weights
    base_sampler: Callable[[], Sampler] | None = None
    # The sampler may generate while the learner trains (a server on devices of its own); False: it
    # shares the model object TRL trains (in-process), so a prefetched batch is sampled before the step.
    samples_while_training: bool = False

    def admit(self, program) -> str | None:
        """Why ``program`` cannot be a prompt of this policy (None when it can): its text must be
        UTF-8, within :data:`MAX_PROGRAM_CHARS`, and render through the chat template into at most
        :data:`MAX_PROGRAM_TOKENS` tokens."""
        text = program.render()
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "its text is not valid UTF-8"
        if len(text) > MAX_PROGRAM_CHARS:
            return f"{len(text)} characters, more than {MAX_PROGRAM_CHARS}"
        encode = getattr(self.sampler, "encode", None)
        if encode is None:
            return None
        try:
            tokens = len(encode([{"role": "system", "content": text}]))
        except Exception as exc:  # a template that cannot render the text
            return f"the chat template cannot render it ({type(exc).__name__})"
        return f"{tokens} tokens, more than {MAX_PROGRAM_TOKENS}" if tokens > MAX_PROGRAM_TOKENS else None


class AdapterSync:
    """A learner whose every finished step is loaded into a vLLM server as the LoRA adapter ``policy``.

    Same contract as :class:`~espl_bench.training.trl_learner.Learner`. ``wait()`` returns once the step's
    checkpoint is on disk *and* the server samples from it; ``metrics["synced_step"]`` says which.
    A failed load raises (a server that cannot take the weights would silently train off-policy).
    """

    trainable = True

    def __init__(self, learner: TRLLearner, sampler, step: int = 0, name: str = "policy"):
        self.learner, self.sampler, self.step, self.name = learner, sampler, step, name
        if step:  # a resumed run samples from its last committed weights from the first rollout on
            self._load(step)
        else:
            check_adapter_sync(sampler, learner.model, learner.settings.output_dir, name)

    def submit(self, batch: list[TrainingSample]) -> None:
        self.learner.submit(batch)
        self.step += 1

    def wait(self) -> dict[str, float]:
        stats = self.learner.wait()
        self._load(self.step)
        return {**stats, "synced_step": float(self.step)}

    def close(self) -> None:
        self.learner.close()

    def _load(self, step: int) -> None:
        path = self.learner.checkpoint_dir(step)
        if not (path / "adapter_config.json").is_file():
            raise RunDirError(f"the learner checkpoint {path} has no LoRA adapter to serve; fix: resume from a complete "
                              "run folder or start a new run")
        self.sampler.load_adapter(path, self.name)
        log.info("vLLM now samples from the step-%d adapter", step)


def check_adapter_sync(sampler, model, folder: Path, name: str = "policy") -> None:
    """Load the learner's initial (step-0) adapter into the server once, before any rollout.

    The per-step sync posts folder paths, so the server must read this machine's files and load
    adapters at run time. A server that cannot (on another machine, started without
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) fails here, in one line naming the fix, instead of after
    the first step. The folder's name is new, so no other filesystem can hold it by chance; the
    server must then list the adapter from exactly that folder.
    """
    from espl_bench.agents.vllm_sampler import SamplerRequestError

    probe = Path(folder) / f"sync-check-{uuid.uuid4().hex[:12]}"
    model.save_pretrained(probe)
    try:
        sampler.load_adapter(probe, name)
        served = sampler.adapter_root(name)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if served is None or Path(served).resolve() != probe.resolve():
        raise SamplerRequestError(f"the vLLM server at {sampler.url} accepted the adapter {probe} but serves "
                                  f"{name!r} from {served}; fix: use a vLLM server (>= 0.10) started with --enable-lora")
    sampler.use_base()  # the step-0 adapter is the base policy: sample the base weights until step 1
    log.info("vLLM server at %s loads this run's adapters from %s", sampler.url, folder)


class EngineSync:
    """A learner whose TRL-driven vLLM engine samples from every finished step (``--sampler trl-vllm``).

    Same contract as :class:`~espl_bench.training.trl_learner.Learner`; ``metrics["synced_step"]`` says which step's
    weights the engine holds. TRL pushes the weights when it requests the next step's batch; the
    last step's push is made by every learner process as its trainer ends
    (:meth:`~espl_bench.training.trl_learner.TRLLearner.sync_final_weights`), so the final evaluation
    samples from the final weights under FSDP and ZeRO-3 too.
    """

    trainable = True

    def __init__(self, learner: TRLLearner):
        self.learner = learner

    def submit(self, batch: list[TrainingSample]) -> None:
        self.learner.submit(batch)

    def wait(self) -> dict[str, float]:
        stats = self.learner.wait()
        # TRL's own record of the step whose weights it last pushed (a private attribute).
        return {**stats, "synced_step": float(trl_internals.synced_step(self.learner.trainer))}

    def close(self) -> None:
        self.learner.close()


def _settings(cfg: RunConfig, model_path: str, rundir, train_size: int, resume_step: int,
              correct_sampler_logprobs: bool, trl_vllm: dict | None = None) -> LearnerSettings:
    from espl_bench.agents.devices import resolve_dtype
    from espl_bench.training import distributed

    m = cfg.selected_programs
    problems = min(cfg.batch_size, train_size)
    wrong = distributed.split_error(m, problems, cfg.group_size, distributed.world_size(), train_size)
    if wrong:  # before any model loads, on the leader (the followers wait for its handshake)
        raise ConfigError(wrong)
    return LearnerSettings(
        run=cfg, model_path=model_path, output_dir=rundir.learner,
        rows_per_step=m * min(cfg.batch_size, train_size) * cfg.group_size,
        group_size=cfg.group_size if cfg.baseline == "normal" else m * cfg.group_size, dtype=resolve_dtype(cfg.dtype),
        resume_step=resume_step, correct_sampler_logprobs=correct_sampler_logprobs or cfg.max_staleness > 0,
        trl_vllm=trl_vllm, importance_sampling_mode=STALE_IS_MODE if cfg.max_staleness else None,
        logging_dir=str(rundir.tracking), run_name=rundir.root.resolve().name)


def _cannot_load(model_path: str, exc: OSError) -> ModelNotFound:
    return ModelNotFound(f"cannot load model {model_path!r} ({str(exc).splitlines()[0]}); fix: pass a local "
                         "model folder or a hub id already in the local cache")


def load_frozen(model_path: str, dtype: str | None = None, attn_implementation: str | None = None):
    """The model at ``model_path`` with its gradients off (in ``dtype`` when given, with
    ``attn_implementation``), and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from espl_bench.agents.devices import check_attention, model_kwargs

    check_attention(attn_implementation)
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(model_path)
        # no dtype: the checkpoint's own (transformers' "auto")
        model: Any = AutoModelForCausalLM.from_pretrained(model_path, **model_kwargs(dtype or "auto", attn_implementation))
    except OSError as exc:
        raise _cannot_load(model_path, exc) from None
    model.requires_grad_(False)
    if torch.cuda.is_available():  # the frozen copy samples (reflection) next to the policy
        model.to("cuda")
    return model, tokenizer


def _trl_learner(settings: LearnerSettings) -> TRLLearner:
    from espl_bench.agents.devices import check_attention
    from espl_bench.training import distributed

    settings.rows_per_device()  # a layout the processes cannot share fails before they start
    check_attention(settings.run.attn_implementation)
    distributed.announce(settings)
    try:
        return TRLLearner(settings)
    except OSError as exc:
        raise _cannot_load(settings.model_path, exc) from None


def transformers_policy(cfg: RunConfig, rundir, train_size: int, resume_step: int) -> Policy:
    from espl_bench.agents.devices import resolve_dtype
    from espl_bench.training import distributed

    model_path = resolve_model(cfg.model)
    if cfg.trains_weights and distributed.world_size() > 1 and distributed.sharded_parameters():
        raise ConfigError("the accelerate config shards the policy across processes (FSDP or ZeRO-3), so the "
                          "in-process sampler cannot generate on rank 0 alone; fix: add --sampler vllm, or "
                          "launch with configs/accelerate/ddp.yaml or deepspeed_zero2.yaml")
    learner: Learner
    if cfg.trains_weights:
        trl_learner = _trl_learner(_settings(cfg, model_path, rundir, train_size, resume_step, False))
        learner, model, tokenizer = trl_learner, trl_learner.model, trl_learner.tokenizer
    else:
        model, tokenizer = load_frozen(model_path, resolve_dtype(cfg.dtype), cfg.attn_implementation)
        learner = FrozenLearner()
    # The policy's prompts are checked against its context (frozen reflector copies are not: a
    # too-long reflection prompt is the reflection's own failure).
    sampler = TransformersSampler(model, tokenizer, max_context=cfg.max_context or model_context(model))
    frozen = None if cfg.trains_weights else sampler  # frozen weights: the policy is the reference policy

    cores = _core_share(cfg, learner)
    reference, closers = _local_reference(model_path, frozen, cfg.reflector_dtype, cores)
    base = (lambda: AdapterDisabled(sampler)) if cfg.trains_weights else None
    return Policy(sampler, learner, int(tokenizer.eos_token_id), reference, closers=closers, base_sampler=base)


def reflector_dtype(setting: str) -> str:
    """The dtype ``--reflector-dtype`` means on this machine (``auto``: see the config field)."""
    from espl_bench.agents.devices import resolve_dtype

    return resolve_dtype(setting)


def _core_share(cfg: RunConfig, learner):
    """A CoreShare between a CPU learner and the in-process reflector (``--share-cores``), else None."""
    import torch

    if not (cfg.share_cores and cfg.trains_weights and hasattr(learner, "share_cores")) or torch.cuda.is_available():
        return None
    from espl_bench.agents.cores import CoreShare

    share = CoreShare(torch.get_num_threads())
    learner.share_cores(share)
    return share


def _local_reference(model_path: str, frozen: TransformersSampler | None = None,
                     dtype: str = "auto", cores=None) -> tuple[Callable[[], tuple[str, dict]], list]:
    """The default reflector: the frozen reference policy in-process (``frozen`` when its weights are
    already in ``dtype``, else a copy in ``dtype`` loaded on demand), served to litellm by this
    run's own :class:`~espl_bench.agents.reflector.LocalModels` (on ``cores``' reflector share,
    a CoreShare, when given)."""
    from espl_bench.agents.reflector import LocalModels

    models = LocalModels()
    wanted = reflector_dtype(dtype)

    def reference() -> tuple[str, dict]:
        # A separate frozen copy when training (the policy's weights move while reflection runs)
        # or when the reflector decodes in another dtype than the policy.
        reuse = frozen if frozen is not None and str(frozen.model.dtype).removeprefix("torch.") == wanted else None
        if reuse is None:
            log.info("reflector: the frozen reference model in %s, in-process", wanted)
        sampler = reuse or TransformersSampler(*load_frozen(model_path, wanted))
        if cores is not None and reuse is None:
            from espl_bench.agents.cores import share_cores

            share_cores(sampler.model, cores, "reflector")
        return models.serve("reference", sampler, cores=cores if reuse is None else None), {}

    return reference, [models.close]


def vllm_policy(cfg: RunConfig, rundir, train_size: int, resume_step: int) -> Policy:
    from espl_bench.agents.vllm_sampler import VLLMSampler
    from espl_bench.agents.vllm_server import VLLMServer

    model_path = resolve_model(cfg.model)
    server = VLLMServer.connect(cfg.vllm_url) if cfg.vllm_url else own_server(cfg, model_path, rundir).start()
    try:
        sampler = VLLMSampler(server, model_path, max_concurrency=cfg.max_concurrency)
        if not server.owned and Path(sampler.base_model_name).name != Path(model_path).name:
            # The learner trains adapters for --model; a server with other base weights would
            # sample from a policy the learner never sees.
            log.warning("the vLLM server at %s serves %r but --model is %s; make sure they are the same weights",
                        server.url, sampler.base_model_name, model_path)
        learner: Learner = FrozenLearner()
        if cfg.trains_weights:
            learner = AdapterSync(_trl_learner(_settings(cfg, model_path, rundir, train_size, resume_step, True)),
                                  sampler, step=resume_step)
    except BaseException:
        server.stop() if server.owned else None
        raise
    closers = [server.stop] if server.owned else []
    return Policy(sampler, learner, int(sampler.tokenizer.eos_token_id),
                  lambda: (sampler.litellm_model, {"api_base": sampler.api_base}), closers=closers,
                  base_sampler=sampler.base_view if cfg.trains_weights else None, samples_while_training=True)


def own_server(cfg: RunConfig, model_path: str, rundir):
    """The vLLM server a ``--sampler vllm`` run starts, placed by :func:`~espl_bench.training.placement.place_vllm`."""
    from espl_bench.agents.vllm_server import VLLMServer
    from espl_bench.training.placement import local_learner_processes, place_vllm, visible_gpus

    gpus = visible_gpus()
    heads = _attention_heads(model_path) if gpus else 1
    placed = place_vllm(cfg, gpus, local_learner_processes() if cfg.trains_weights else 0, heads)
    log.info("%s", placed.describe())
    return VLLMServer(model_path, python=cfg.vllm_python, max_lora_rank=_lora_slot(cfg.lora_rank), dtype=placed.dtype,
                      max_model_len=placed.max_model_len, devices=placed.devices, gpu_memory=placed.gpu_memory,
                      tensor_parallel=placed.tensor_parallel, startup_timeout=cfg.vllm_startup_timeout,
                      log_path=rundir.vllm_log, extra_args=tuple(cfg.vllm_args))


def _attention_heads(model_path: str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    return int(getattr(config.get_text_config(), "num_attention_heads", 1))


def litellm_policy(cfg: RunConfig, rundir, train_size: int, resume_step: int) -> Policy:
    from espl_bench.agents.litellm_sampler import LiteLLMSampler

    sampler = LiteLLMSampler(cfg.model, params=cfg.policy_kwargs, max_concurrency=cfg.max_concurrency,
                             timeout=cfg.reflector_timeout, num_retries=cfg.reflector_retries)
    # Self-reflection by the same hosted model, as the frozen-reference default means locally.
    return Policy(sampler, FrozenLearner(), -1, lambda: (cfg.model, dict(cfg.policy_kwargs)),
                  meters={"policy": sampler.usage.as_dict})


def trl_vllm_policy(cfg: RunConfig, rundir, train_size: int, resume_step: int) -> Policy:
    from espl_bench.agents.sampler import eos_ids
    from espl_bench.agents.trl_vllm_sampler import TRLVLLMSampler, engine_of
    from espl_bench.training import distributed

    _check_trl_vllm_options(cfg.trl_vllm_args)
    _check_trl_generation(cfg, distributed.world_size(), distributed.sharded_parameters())
    _require_cuda_vllm()
    model_path = resolve_model(cfg.model)
    context = {"vllm_max_model_length": cfg.max_context} if cfg.max_context else {}
    options = {"vllm_mode": cfg.trl_vllm_mode, **context, **cfg.trl_vllm_args}
    if cfg.vllm_url:
        options["vllm_server_base_url"] = cfg.vllm_url
    # TRL's own importance-sampling correction is on with its vLLM (correct_sampler_logprobs
    # is for samples from an engine TRL does not know about).
    learner = _trl_learner(_settings(cfg, model_path, rundir, train_size, resume_step, False, trl_vllm=options))
    sampler = TRLVLLMSampler(engine_of(trl_internals.vllm_generation(learner.trainer), distributed.world_size()), learner.tokenizer,
                             eos_ids(learner.model, learner.tokenizer))
    # The engine holds the trained weights, so reflection gets its own frozen reference copy.
    reference, closers = _local_reference(model_path, dtype=cfg.reflector_dtype)
    return Policy(sampler, EngineSync(learner), int(learner.tokenizer.eos_token_id), reference, closers=closers,
                  base_sampler=lambda: TransformersSampler(*load_frozen(model_path, learner.settings.dtype,
                                                                        cfg.attn_implementation)))


def _check_trl_vllm_options(options: dict) -> None:
    from dataclasses import fields

    from trl import GRPOConfig

    unknown = sorted(set(options) - {f.name for f in fields(GRPOConfig)})
    if unknown:
        raise ConfigError(f"--trl-vllm-args has options TRL's GRPOConfig does not know: {unknown}; fix: use its "
                          "vllm_* field names (e.g. vllm_gpu_memory_utilization, vllm_tensor_parallel_size)")


def _check_trl_generation(cfg: RunConfig, processes: int, sharded: bool) -> None:
    """Refuse the TRL vLLM settings whose generation needs every learner process: only the leader
    samples here (the other processes wait inside their trainer for its batch)."""
    options = cfg.trl_vllm_args
    if cfg.trl_vllm_mode == "colocate" and int(options.get("vllm_tensor_parallel_size", 1)) > 1:
        raise ConfigError("vllm_tensor_parallel_size > 1 in colocate mode splits each engine over a group of learner "
                          "processes that must all generate together, and only rank 0 samples here; fix: --trl-vllm-mode "
                          "server with `trl vllm-serve --tensor-parallel-size N` on GPUs of its own")
    if options.get("vllm_enable_sleep_mode") and processes > 1 and sharded:
        raise ConfigError("vllm_enable_sleep_mode with sharded parameters (FSDP, ZeRO-3) re-gathers the weights on "
                          "every wake-up, which needs every learner process, and only rank 0 samples here; fix: drop "
                          "vllm_enable_sleep_mode or launch with ddp.yaml or deepspeed_zero2.yaml")


def _require_cuda_vllm() -> None:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--sampler trl-vllm lets TRL drive vLLM, and TRL's weight sync into vLLM needs CUDA GPUs; "
                          "fix: on this machine use --sampler vllm (a vLLM server, LoRA synced every RL step)")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("--sampler trl-vllm needs vLLM in this Python environment; fix: pip install -e '.[vllm]'")


def _lora_slot(rank: int) -> int:
    # vLLM accepts only these --max-lora-rank values.
    return next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank), rank)


BUILDERS: dict[str, Callable[[RunConfig, object, int, int], Policy]] = {
    "transformers": transformers_policy,
    "vllm": vllm_policy,
    "litellm": litellm_policy,
    "trl-vllm": trl_vllm_policy,
}


def build_policy(cfg: RunConfig, rundir, train_size: int, resume_step: int) -> Policy:
    return BUILDERS[cfg.sampler](cfg, rundir, train_size, resume_step)
