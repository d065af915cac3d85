""":class:`TRLLearner`, the ``Learner`` seam (:mod:`espl_bench.method.learning`) on TRL.

It drives TRL's ``GRPOTrainer`` (its loss, optimizer, scheduler, LoRA through peft,
checkpointing and resume). The trainer owns its loop, so it runs in a worker thread and pulls
each iteration's batch through ``rollout_func``: that is how the paper's weight update runs
concurrently with the reflection calls, while the E-SPL loop stays in charge of the iteration.

What the policy uses from it (:mod:`espl_bench.training.policy`): ``model`` and ``tokenizer`` (the
in-process sampler generates with the very model object TRL trains), ``trainer`` (TRL's own vLLM
sync), ``checkpoint_dir(step)`` (the LoRA adapter a vLLM server loads), and the seam's
``submit``/``wait``/``close``.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from espl_bench.adapters import trl as trl_internals
from espl_bench.method.learning import TrainingSample

if TYPE_CHECKING:
    from espl_bench.config import RunConfig

log = logging.getLogger(__name__)

TRACKER_PROJECT = "espl-bench"


@dataclass(frozen=True)
class LearnerSettings:
    """The TRL learner's input: the run's own options, read as the run set them (``run``; only
    :func:`grpo_config` and the LoRA config turn them into TRL's and peft's), and what the runner
    derives from the run (sizes, paths, what the sampler needs). Nothing of ``run`` is copied here,
    so the config is translated once."""

    run: RunConfig  # learning rate, LoRA, loss, micro-batches, checkpointing, seed, temperature, tracker
    model_path: str
    output_dir: Path
    rows_per_step: int  # programs x problems x samples of one step, over all processes
    group_size: int  # rows sharing one advantage baseline (programs x samples under --baseline marginalize)
    # The run's --dtype resolved on the leader's machine; under accelerate launch it also decides
    # the mixed precision, whatever the launch config says.
    dtype: str = "float32"
    resume_step: int = 0  # optimizer steps already committed; 0 starts fresh
    # The samples come from another engine (a vLLM server): apply TRL's importance-sampling
    # correction with the sampler's logprobs, for the numeric mismatch between the two engines.
    correct_sampler_logprobs: bool = False
    # TRL's vllm_importance_sampling_mode for that correction (None: TRL's default); a batch sampled
    # by weights a step older (--max-staleness) uses truncated importance sampling per token.
    importance_sampling_mode: str | None = None
    # TRL drives vLLM itself (--sampler trl-vllm, CUDA): GRPOConfig's vllm_* options, e.g.
    # {"vllm_mode": "colocate"}. TRL then pushes the whole weights into that engine every step.
    trl_vllm: dict | None = None
    logging_dir: str | None = None  # TensorBoard's event files (RUN/tracking)
    run_name: str | None = None

    def payload(self) -> dict:
        """These settings as JSON values (the handshake that builds a follower's learner)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "run": self.run.model_dump(mode="json"),
                "output_dir": str(self.output_dir)}

    @classmethod
    def from_payload(cls, payload: dict) -> LearnerSettings:
        from espl_bench.config import RunConfig

        return cls(**{**payload, "run": RunConfig.model_validate(payload["run"]),
                      "output_dir": Path(payload["output_dir"])})

    def rows_per_device(self) -> int:
        """This process's share of a step's rows (all of them without ``accelerate launch``)."""
        from espl_bench.errors import ConfigError
        from espl_bench.training import distributed

        world = distributed.world_size()
        if self.rows_per_step % self.group_size:
            raise ConfigError(f"rows per step ({self.rows_per_step}) must be a multiple of the group size ({self.group_size})")
        if self.rows_per_step % world:
            raise ConfigError(f"a step has {self.rows_per_step} rows (programs x batch size x group size), which "
                              f"{world} processes cannot share evenly; fix: launch a divisor of {self.rows_per_step} "
                              "processes or change --batch-size/--group-size")
        return self.rows_per_step // world


def grpo_precision(dtype: str, attn_implementation: str | None = None) -> dict:
    """GRPOConfig's precision options for a policy in ``dtype`` (concrete): TRL loads the model in
    that dtype (``model_init_kwargs``; TRL's own default is float32) and the trainer autocasts to it
    (``bf16``/``fp16``), so the trainer computes in the same precision as the sampler that shares
    its model."""
    from espl_bench.agents.devices import model_kwargs

    return {"bf16": dtype == "bfloat16", "fp16": dtype == "float16",
            "model_init_kwargs": model_kwargs(dtype, attn_implementation)}


class _Stop(Exception):
    """Raised inside ``rollout_func`` to end the trainer's loop early on close()."""


def grpo_config(settings: LearnerSettings):
    """The run's options and the runner's sizes as TRL's GRPOConfig: the one place the run's
    training options become TRL's."""
    from trl import GRPOConfig

    run = settings.run
    rows = settings.rows_per_device()
    micro = _largest_divisor_at_most(rows, run.micro_batch_size)
    return GRPOConfig(
        output_dir=str(settings.output_dir),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=rows // micro,
        num_generations=settings.group_size,
        temperature=run.temperature,
        max_steps=run.iterations,
        learning_rate=run.learning_rate,
        adam_beta1=0.9,
        adam_beta2=0.95,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.0,
        loss_type=run.loss_type,
        scale_rewards=run.scale_rewards,
        max_completion_length=run.max_new_tokens,
        **checkpointing_option(GRPOConfig, run.gradient_checkpointing),
        use_cpu=not _cuda_available(),
        **grpo_precision(settings.dtype, run.attn_implementation),
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        save_only_model=False,
        logging_steps=1,
        report_to=[] if run.report_to == "none" else [run.report_to],
        run_name=settings.run_name,
        project=TRACKER_PROJECT,
        disable_tqdm=True,
        shuffle_dataset=False,
        seed=run.seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every forward
        **trl_vllm_options(settings),
        **importance_sampling_options(settings),
    )


class TRLLearner:
    """GRPO weight updates through TRL with a LoRA adapter; see the module docstring."""

    trainable = True
    # A step whose rows are all left out skips its forward and backward (one process only); off,
    # it computes them as any step does (the tests compare the two).
    skips_left_out_steps = True

    def __init__(self, settings: LearnerSettings, follower: bool = False):
        from espl_bench.training import distributed

        self.settings = settings
        distributed.align_mixed_precision(settings.dtype)
        # Under accelerate launch: rank 0 gets its batches from the loop and forwards them, the
        # other ranks (followers) receive them; see espl_bench.training.distributed.
        self.follower = follower
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self._inbox: queue.Queue = queue.Queue(maxsize=1)
        # submitted/completed count optimizer steps; a step is complete when the trainer comes
        # back for the next batch (its checkpoint is on disk by then) or its loop has ended.
        self._cond = threading.Condition()
        self._submitted = 0
        self._completed = 0
        self._in_step = False
        self._finished = False
        self._error: BaseException | None = None
        self._last_logs: dict[str, float] = {}
        self._left_out_step = False
        self._skip_compute = False  # this step's rows are all left out: no forward, no backward
        self.trainer = self._trainer(grpo_config(settings))
        if settings.correct_sampler_logprobs:
            # TRL's importance-sampling correction for samples from a vLLM server TRL does not drive
            trl_internals.use_external_vllm(self.trainer)
        self._skip_compute_of_left_out_steps()
        self._importance = ImportanceTally()
        if settings.correct_sampler_logprobs:
            self._tally_importance_weights()
        self.model = self.trainer.model
        self._load_committed_adapter()
        if settings.trl_vllm and settings.resume_step:
            # TRL pushes weights only when a step's batch is requested, after the resumed
            # iteration's rollouts; those must come from the committed weights too.
            trl_internals.push_weights(self.trainer)
        if self.world > 1 and not follower:
            kind = self.trainer.accelerator.distributed_type.value
            log.info("learner: %d processes (%s), %d rows each per step", self.world, kind, settings.rows_per_device())
            if kind == "MULTI_CPU" and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
                log.warning("accelerate shards parameters (FSDP) on GPUs only; on CPUs the processes run as plain "
                            "data parallel")
        self.tokenizer = self.trainer.processing_class
        self._thread: threading.Thread | None = None
        self.cores = None  # a CoreShare once share_cores() is called

    def _trainer(self, args):
        """TRL's GRPOTrainer on the policy with a LoRA adapter, fed by :meth:`_rollout_func`."""
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from transformers.trainer_callback import PrinterCallback
        from trl import GRPOTrainer

        settings = self.settings
        slots = settings.rows_per_step // settings.group_size
        placeholder = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"slot {i}"}] for i in range(slots)]})
        peft_config = LoraConfig(r=settings.run.lora_rank, lora_alpha=settings.run.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
        learner = self

        class _Logs(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    learner._last_logs = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        # TRL and peft still call transformers' old checkpointing names; nothing a user can act on.
        warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning)
        trainer = GRPOTrainer(model=settings.model_path, reward_funcs=[_reward_from_rollout], args=args,
                              train_dataset=placeholder, peft_config=peft_config, rollout_func=self._rollout_func,
                              callbacks=[_Logs()])
        trainer.remove_callback(PrinterCallback)  # metrics go to our logs, not stdout
        if settings.run.report_to == "tensorboard" and settings.logging_dir:
            _log_into(trainer, settings.logging_dir)
        return trainer

    def share_cores(self, share) -> None:
        """Run each step on its share of the CPU's cores while the in-process reflector decodes
        beside it (:mod:`espl_bench.agents.cores`)."""
        from espl_bench.agents.cores import share_cores

        share_cores(self.model, share, "learner")
        self.cores = share

    # -- the trainer's side (worker thread) ------------------------------------------------------

    def _rollout_func(self, prompts, trainer) -> dict:
        self._mark_step_done()
        batch = self._next_batch()
        if batch is None:
            raise _Stop()
        with self._cond:
            self._in_step = True
        if self.cores is not None:
            self.cores.start("learner")
        if len(batch) != len(prompts) * self.world:
            raise RuntimeError(f"the trainer asked for {len(prompts)} rows on each of {self.world} processes, "
                               f"the iteration produced {len(batch)}")
        left_out = bool(batch) and all(s.left_out for s in batch)
        if left_out:
            batch = self._no_update(batch)
        # Read by _skip_compute_of_left_out_steps for each micro-batch of this step. Only a single
        # process skips: several processes all-reduce (DDP) or gather and reduce-scatter (FSDP,
        # ZeRO-3) parameters and gradients from hooks on the forward and backward, and every rank
        # must enter the same collectives; a step with no forward is not one those engines expect.
        self._skip_compute = left_out and self.world == 1 and self.skips_left_out_steps
        self._importance = ImportanceTally()
        mine = batch[self.rank * len(prompts):(self.rank + 1) * len(prompts)]
        return self._rollout_func_output(mine)

    def _no_update(self, batch: list[TrainingSample]) -> list[TrainingSample]:
        """A step of left-out rows only (every group flat, --skip-flat-groups) changes no weight.

        TRL's loop takes a step per batch, and Adam moves the weights on a zero gradient too (its
        first moment remembers the last step), so this step runs at learning rate 0 (the
        scheduler sets the rate again after it; Adam's moments decay by one step), and a single
        process skips its forward and backward (:meth:`_skip_compute_of_left_out_steps`). The rows are
        unmasked: a loss over no tokens at all divides by zero in the token-normalised losses,
        and their rewards are equal, so their gradient is zero anyway. Every process sees the
        whole batch, so all of them take the same decision."""
        trl_internals.freeze_learning_rate(self.trainer)
        self._left_out_step = True
        return [TrainingSample(s.prompt_ids, s.completion_ids, s.logprobs, 0.0, None, left_out=True) for s in batch]

    def _skip_compute_of_left_out_steps(self) -> None:
        """A step of left-out rows only gets a zero loss from no model call (Trainer.compute_loss,
        its documented override point, wrapped on this trainer).

        Everything else of the step stays: its backward gives every trainable weight an exact
        zero gradient, as the full pass did (zero advantages times anything), so the optimizer
        step at learning rate 0 (:meth:`_no_update`) updates Adam's moments and step count as
        before, and the scheduler, ``global_step``, logging and the checkpoint run as usual. The
        step logs no loss-side metrics (entropy, clip ratios): nothing computed them. With the
        sampler-logprob correction (a vLLM sampler) TRL still runs its no-grad forward for the old
        log-probabilities while it prepares the batch, over one-token placeholder rows."""
        full = self.trainer.compute_loss

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._skip_compute and not return_outputs:
                return _zero_loss(model)
            return full(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

        self.trainer.compute_loss = compute_loss

    def _tally_importance_weights(self) -> None:
        """Count the step's importance weights as each micro-batch reaches the loss (wrapping
        compute_loss again): TRL logs their mean and max after its truncation, not how many it
        truncated, and the metric wanted is the weights before it."""
        inner, args = self.trainer.compute_loss, cast(Any, self.trainer.args)  # a GRPOConfig
        sequence = args.vllm_importance_sampling_mode.startswith("sequence")

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self._skip_compute:
                self._importance.add(inputs, args.vllm_importance_sampling_clip_max,
                                     args.vllm_importance_sampling_clip_min, sequence)
            return inner(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

        self.trainer.compute_loss = compute_loss

    def _next_batch(self) -> list[TrainingSample] | None:
        if self.world == 1:
            return self._inbox.get()
        from espl_bench.training import distributed

        if self.follower:
            rows = distributed.broadcast_json()
            return None if rows is None else [TrainingSample(**row) for row in rows]
        batch = self._inbox.get()
        distributed.broadcast_json(None if batch is None else [asdict(s) for s in batch])
        return batch

    @staticmethod
    def _rollout_func_output(batch: list[TrainingSample]) -> dict:
        output = {
            "prompt_ids": [s.prompt_ids for s in batch],
            "completion_ids": [s.completion_ids for s in batch],
            "logprobs": [s.logprobs for s in batch],
            "espl_reward": [s.reward for s in batch],
        }
        if any(s.env_mask is not None and 0 in s.env_mask for s in batch):
            # TRL masks env_mask == 0 tokens out of the loss: only model-written tokens are trained.
            output["env_mask"] = [s.env_mask if s.env_mask is not None else [1] * len(s.completion_ids) for s in batch]
        return output

    def _train(self, checkpoint: str | None) -> None:
        try:
            self.trainer.train(resume_from_checkpoint=checkpoint)
            self.sync_final_weights()
        except _Stop:
            pass
        except BaseException as exc:  # surfaced to the loop by wait()
            self._error = exc
        finally:
            self._mark_step_done(finished=True)

    def sync_final_weights(self) -> None:
        """Push the last step's weights into TRL's vLLM engine, as TRL does only before a next step.

        Every process runs this as its trainer ends (the leader before its last ``wait()``
        returns): gathering sharded weights (FSDP, ZeRO-3) is a collective, so every rank must take
        part before the followers leave."""
        if self.settings.trl_vllm:
            trl_internals.push_weights_if_stale(self.trainer)

    def _mark_step_done(self, finished: bool = False) -> None:
        with self._cond:
            if self._in_step:
                self._completed += 1
                self._in_step = False
                if self.cores is not None:
                    self.cores.stop("learner")
            self._finished = self._finished or finished
            self._cond.notify_all()

    def follow(self) -> None:
        """Follower: train in this thread until the leader stops (see :mod:`espl_bench.training.distributed`)."""
        self._train(self._resume_checkpoint())
        if self._error is not None:
            raise self._error

    # -- the loop's side ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the trainer thread, resuming from the committed checkpoint when there is one."""
        checkpoint = self._resume_checkpoint()
        self._drop_uncommitted_checkpoints(self.settings.resume_step)
        self._thread = threading.Thread(target=self._train, args=(checkpoint,), name="trl-learner", daemon=True)
        self._thread.start()

    def submit(self, batch: list[TrainingSample]) -> None:
        if self._thread is None:
            self.start()
        if self._error is not None:
            raise self._error
        with self._cond:
            if self._finished:
                raise RuntimeError("the trainer has already run all its steps; raise --iterations to train further")
            self._submitted += 1
        self._inbox.put(list(batch))

    def wait(self) -> dict[str, float]:
        with self._cond:
            self._cond.wait_for(lambda: self._completed >= self._submitted or self._finished)
        if self._error is not None:
            raise self._error
        logs = {**self._last_logs, **self._importance.metrics()}
        if self._left_out_step:  # TRL logs the configured rate; this step ran at 0
            logs["learning_rate"] = 0.0
            self._left_out_step = False
        return logs

    def _resume_checkpoint(self) -> str | None:
        if not self.settings.resume_step:
            return None
        checkpoint = self.checkpoint_dir(self.settings.resume_step)
        if not checkpoint.is_dir():
            from espl_bench.errors import RunDirError

            raise RunDirError(f"the learner checkpoint {checkpoint} is missing; fix: resume from a complete run folder or start a new run")
        return str(checkpoint)

    def _load_committed_adapter(self) -> None:
        # The trainer restores the checkpoint only when it starts, after the resumed iteration's
        # rollouts; those must already come from the committed weights, not a fresh adapter.
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        checkpoint = self._resume_checkpoint()
        if checkpoint:
            set_peft_model_state_dict(self.model, load_file(Path(checkpoint) / "adapter_model.safetensors"))

    def checkpoint_dir(self, step: int) -> Path:
        return self.settings.output_dir / f"checkpoint-{step}"

    def close(self) -> None:
        """Stop the trainer thread if it is still waiting for batches (never blocks for long)."""
        if self._thread is None and self.world > 1 and self._error is None:
            # The followers entered their trainer at the handshake; ours must reach its first
            # batch request to tell them to stop (a run that had nothing left to train).
            self.start()
        if self._thread is not None and self._thread.is_alive():
            try:
                self._inbox.put_nowait(None)
            except queue.Full:  # interrupted with a batch pending: the daemon thread dies with us
                return
            self._thread.join(timeout=10 if self.world == 1 else 600)

    def _drop_uncommitted_checkpoints(self, committed: int) -> None:
        # A checkpoint newer than the last committed iteration belongs to a step whose iteration
        # was never committed; it will be redone, so it must not be mistaken for progress.
        if not self.settings.output_dir.is_dir():
            return
        for path in self.settings.output_dir.glob("checkpoint-*"):
            step = path.name.split("-", 1)[1]
            if step.isdigit() and int(step) > committed:
                shutil.rmtree(path, ignore_errors=True)


@dataclass
class ImportanceTally:
    """One step's importance weights pi_theta / pi_sampler before truncation, over the tokens that
    carry loss (per sequence in TRL's sequence modes), as TRL computes them from the inputs it
    hands compute_loss (old_per_token_logps: the step's weights; sampling_per_token_logps: ours)."""

    total: float = 0.0
    count: int = 0
    largest: float = 0.0
    truncated: int = 0
    cap: float = 0.0

    def add(self, inputs: dict, cap: float | None, floor: float | None, sequence: bool) -> None:
        import torch

        old, sampled = inputs.get("old_per_token_logps"), inputs.get("sampling_per_token_logps")
        if old is None or sampled is None:
            return
        mask = inputs["completion_mask"] * inputs["tool_mask"] if "tool_mask" in inputs else inputs["completion_mask"]
        diff = torch.nan_to_num((old - sampled).float() * mask, nan=0.0)
        ratio = diff.sum(-1).exp()[mask.sum(-1) > 0] if sequence else diff.exp()[mask.bool()]
        if not ratio.numel():
            return
        outside = (ratio > cap) if cap is not None else torch.zeros_like(ratio, dtype=torch.bool)
        if floor is not None:
            outside |= ratio < floor
        self.total += float(ratio.sum())
        self.count += int(ratio.numel())
        self.largest = max(self.largest, float(ratio.max()))
        self.truncated += int(outside.sum())
        self.cap = float(cap) if cap is not None else float("inf")

    def metrics(self) -> dict[str, float]:
        """``importance/*`` for the loop's record (none when nothing was counted)."""
        if not self.count:
            return {}
        return {"importance/mean": self.total / self.count, "importance/max": self.largest,
                "importance/truncated_share": self.truncated / self.count, "importance/cap": self.cap}


def checkpointing_option(config_class: type, enabled: bool) -> dict:
    """The ``TrainingArguments`` field that switches activation checkpointing in this transformers.

    transformers 5.17 (the floor, and the GPU machines') knows only ``gradient_checkpointing``;
    later 5.x add ``activation_checkpointing`` and keep the old name as a deprecated alias. TRL's
    config defaults the old one to True, so whichever field exists must be set explicitly.
    """
    from dataclasses import fields

    names = {f.name for f in fields(config_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def trl_vllm_options(settings: LearnerSettings) -> dict:
    """GRPOConfig options for a vLLM engine that TRL drives itself (none without one)."""
    if not settings.trl_vllm:
        return {}
    # TRL's importance-sampling correction (on by default with use_vllm) covers the numeric
    # mismatch between vLLM's sampling logprobs and the trainer's.
    return {"use_vllm": True, **settings.trl_vllm}


def importance_sampling_options(settings: LearnerSettings) -> dict:
    """GRPOConfig's importance-sampling mode when the settings name one (TRL's default otherwise)."""
    mode = settings.importance_sampling_mode
    return {"vllm_importance_sampling_mode": mode} if mode else {}


def _log_into(trainer, folder: str) -> None:
    # TensorBoardCallback's logging_dir (a public attribute) is where its writer opens: the run's
    # tracking folder, shared with the loop's writer, instead of OUTPUT_DIR/runs/<time>.
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = folder


def _zero_loss(model):
    """0 with a zero gradient for every trainable weight, without running ``model``."""
    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0


def _reward_from_rollout(prompts, completions, espl_reward, **kwargs) -> list[float]:
    """The environment already scored each rollout; TRL just reads the score."""
    return [float(r) for r in espl_reward]


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, max(cap, 1)) + 1) if n % d == 0)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def follow_leader() -> int:
    """A follower rank under ``accelerate launch``: build the leader's learner from its handshake
    and train on the slices of its batches until told to stop (see :mod:`espl_bench.training.distributed`)."""
    from espl_bench.training import distributed

    payload = distributed.broadcast_json()
    if payload is None:
        log.debug("rank %d: the leader trains no weights; nothing to do", distributed.rank())
        return 0
    settings = LearnerSettings.from_payload(payload)
    log.debug("rank %d: training with %s", distributed.rank(), settings)
    TRLLearner(settings, follower=True).follow()
    return 0
