"""Where the learner and the vLLM server we start run, and how the server shares its GPUs.

One rule, :func:`place_vllm`, from the run's flags and the GPUs this machine shows:

* No GPU: the server runs on the CPU (vLLM's CPU build), in the policy's dtype for a CPU.
* The learner's processes use the first visible GPUs (one per process on this machine, as
  ``accelerate launch`` places them). The server gets ``--vllm-devices``, else the GPUs left over,
  else it shares the learner's first GPU (*colocated*).
* Its memory share (``--gpu-memory-utilization``) is ``--vllm-gpu-memory``, else
  :data:`OWN_GPU_SHARE` on GPUs of its own and :data:`COLOCATED_SHARE` on a shared one (the learner
  keeps the rest; TRL colocates at 0.3, verl and OpenRLHF at 0.3-0.5).
* Tensor parallelism is ``--vllm-tensor-parallel``, else the most of its GPUs that divide the
  model's attention heads (vLLM refuses a split that does not).

GPU ids are the machine's own (``nvidia-smi``'s numbers, or the entries of the parent's
``CUDA_VISIBLE_DEVICES``): the server's ``CUDA_VISIBLE_DEVICES`` is set to them, so a
restriction meant for the server never restricts the learner too.

Error policy: a placement that cannot work (server GPUs on a machine without any, a tensor split
larger than the server's GPUs) raises :class:`~espl_bench.errors.ConfigError` naming the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from espl_bench.agents.devices import resolve_dtype
from espl_bench.config import RunConfig
from espl_bench.errors import ConfigError

COLOCATED_SHARE = 0.4
OWN_GPU_SHARE = 0.9  # vLLM's own default


@dataclass(frozen=True)
class VLLMPlacement:
    """The vLLM server's devices and limits, and the learner's devices beside it."""

    devices: tuple[str, ...]  # the server's CUDA_VISIBLE_DEVICES; empty: on the CPU
    learner_devices: tuple[str, ...]
    gpu_memory: float | None  # --gpu-memory-utilization; None on the CPU
    tensor_parallel: int
    dtype: str
    max_model_len: int | None  # None: the model's own context

    @property
    def colocated(self) -> bool:
        """Whether the server shares a GPU with the learner."""
        return bool(set(self.devices) & set(self.learner_devices))

    def describe(self) -> str:
        if not self.devices:
            return f"vLLM server on the CPU in {self.dtype}"
        where = "shared with the learner" if self.colocated else f"its own; learner on {','.join(self.learner_devices)}"
        return (f"vLLM server on GPU {','.join(self.devices)} ({where}), {self.gpu_memory:.0%} of each, tensor parallel "
                f"{self.tensor_parallel}, {self.dtype}")


def visible_gpus() -> list[str]:
    """This process's GPUs by their machine ids: ``CUDA_VISIBLE_DEVICES``'s entries, else 0..N-1."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def local_learner_processes() -> int:
    """Learner processes on this machine (``accelerate launch`` sets LOCAL_WORLD_SIZE)."""
    from espl_bench.training import distributed

    return int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))


def place_vllm(cfg: RunConfig, gpus: Sequence[str], learner_processes: int = 1, heads: int = 1) -> VLLMPlacement:
    """The placement of the server ``cfg`` asks for on a machine showing ``gpus``, beside
    ``learner_processes`` learner processes (0 for frozen weights); ``heads`` is the model's
    attention-head count. See the module docstring."""
    if not gpus:
        if cfg.vllm_devices or cfg.vllm_gpu_memory or (cfg.vllm_tensor_parallel or 1) > 1:
            raise ConfigError("--vllm-devices/--vllm-gpu-memory/--vllm-tensor-parallel place the server on GPUs, and "
                              "torch sees none here; fix: drop them (the server runs on the CPU)")
        return VLLMPlacement((), (), None, 1, resolve_dtype(cfg.dtype, "cpu"), cfg.max_context)
    learner = tuple(gpus[:learner_processes])
    spare = [g for g in gpus if g not in learner]
    if cfg.vllm_devices:
        devices = tuple(d.strip() for d in cfg.vllm_devices.split(","))
        tp = cfg.vllm_tensor_parallel or _split(len(devices), heads)
    else:
        pool = spare or [gpus[0]]
        tp = cfg.vllm_tensor_parallel or _split(len(pool), heads)
        devices = tuple(pool[:tp])
    if tp > len(devices):
        raise ConfigError(f"--vllm-tensor-parallel {tp} needs as many GPUs, and the server has {len(devices)} "
                          f"({','.join(devices)}); fix: name {tp} GPUs in --vllm-devices or lower --vllm-tensor-parallel")
    colocated = bool(set(devices) & set(learner))
    share = cfg.vllm_gpu_memory or (COLOCATED_SHARE if colocated else OWN_GPU_SHARE)
    return VLLMPlacement(devices, learner, share, tp, resolve_dtype(cfg.dtype, "cuda"), cfg.max_context)


def _split(gpus: int, heads: int) -> int:
    """The most of ``gpus`` that divide ``heads`` (vLLM splits attention heads evenly)."""
    return max(d for d in range(1, gpus + 1) if heads % d == 0)
