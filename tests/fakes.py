"""Fakes for tests and benchmarks: a tiny random model and a scripted reflector.

They exist so that the whole loop can be exercised in seconds, offline, with no real model.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from espl_bench.envs.base import TextEnv


def make_tiny_model(path: Path, *, seed: int = 0) -> Path:
    """A 2-layer randomly initialised Llama with the embedded model's tokenizer, saved at ``path``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from espl_bench.training.models import convert_embedded

    if (path / "config.json").is_file():
        return path
    tokenizer = AutoTokenizer.from_pretrained(convert_embedded())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class ScriptedReflector:
    """A reflector that answers from a script instead of a model.

    ``responses`` is either an iterable of strings (consumed in order, the last one repeated) or a
    function ``(messages) -> str``. Every call is recorded in ``calls``.
    """

    def __init__(self, responses: Iterable[str] | Callable[[list[dict]], str]):
        self.calls: list[list[dict]] = []
        if callable(responses):
            self._fn = responses
        else:
            items = list(responses)
            tail = itertools.chain(items, itertools.repeat(items[-1] if items else ""))
            self._fn = lambda messages: next(tail)

    honours_schema = False  # answers come from a script or a recording, as they are

    def complete(self, messages: list[dict], *, purpose: str = "", max_tokens: int | None = None,
                 schema: dict | None = None, stop: list[str] | None = None) -> str:
        self.calls.append(messages)
        return self._fn(messages)


def vllm_python_or_skip() -> str:
    """The vLLM venv's python for a test; skips without one, or fails where ``ESPL_REQUIRE_VLLM``
    is set (CI must exercise the real server, not skip it)."""
    import os

    import pytest

    from espl_bench.agents.vllm_server import SETUP_HINT, find_vllm_python

    python = find_vllm_python()
    if python is None:
        missing = f"no vLLM environment: {SETUP_HINT}"
        if os.environ.get("ESPL_REQUIRE_VLLM"):
            pytest.fail(missing)
        pytest.skip(missing)
    return python


class ShortReplies(TextEnv):
    """Reward = how short the reply is: dense, so every GRPO group has a spread of rewards."""

    def split_size(self, split: str) -> int:
        return 8

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        split, index = self._pick(options)
        return f"Say something about the number {index}.", {"problem_id": f"{split}/{index}"}

    def step(self, action: str):
        # 32 tokens stay well under 400 characters; the checksum term splits replies of equal
        # length, so a group is flat only when its replies are identical.
        reward = max(0.0, 1.0 - len(action) / 400) - (zlib.crc32(action.encode()) % 1000) * 1e-6
        return "", reward, True, False, {"answer": "", "success": reward > 0.8, "valid": True, "metadata": {}}


DENSE_PLUGIN = ("import gymnasium as gym\n"
                "gym.register(id='Short-v0', entry_point='tests.fakes:ShortReplies', disable_env_checker=True)\n")


def launch_espl(args: list[str], *, plugin: Path, processes: int = 1, accelerate_config: Path | None = None,
                env: dict[str, str] | None = None, timeout: float = 900, port: int | None = None,
                launcher_args: tuple[str, ...] = ()):
    """``espl-bench ARGS`` in a subprocess, under ``accelerate launch`` when ``processes`` > 1.

    ``plugin`` is a folder on the subprocess's path (write :data:`DENSE_PLUGIN` there as
    ``dense_plugin.py`` for the env ``dense_plugin:Short-v0``). ``port`` is the rendezvous port
    (default: a free one); ``launcher_args`` go to ``accelerate launch`` (e.g. ``--machine_rank``).
    """
    import os
    import subprocess
    import sys

    from espl_bench.agents.vllm_server import free_port

    root = Path(__file__).resolve().parents[1]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(root)]), "OMP_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0", **(env or {})}
    launcher = [] if processes == 1 else [
        "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config or root / "configs/accelerate/ddp.yaml"),
        "--num_processes", str(processes), "--main_process_port", str(port or free_port()), *launcher_args]
    return subprocess.run([sys.executable, *launcher, "-m", "tests.run_cli", "run", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=root)


class HFEngine:
    """A vLLM engine's stand-in: its own Hugging Face copy of the weights, changed only by
    ``load_weights`` (what TRL's ``VLLMGeneration.sync_weights`` ends in, both modes), sampled by
    :class:`~espl_bench.agents.sampler.TransformersSampler`. With ``record``, every finished sync and
    every generate call saves the weights it ended with / sampled from as ``rank{RANK}-synced.pt`` /
    ``rank{RANK}-sampled.pt`` there. :class:`FakeLLM` and :class:`FakeVLLMClient` give it the two
    interfaces TRL 1.16 drives (``vllm.LLM`` in colocate mode, its own ``VLLMClient`` in server mode)."""

    def __init__(self, path: str, made: list | None = None, record: Path | None = None):
        import os

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from espl_bench.agents.sampler import TransformersSampler

        self.path = path
        self.model = AutoModelForCausalLM.from_pretrained(path).requires_grad_(False)
        self.sampler = TransformersSampler(self.model, AutoTokenizer.from_pretrained(path))
        self.loads, self.record, self.rank = 0, record, os.environ.get("RANK", "0")
        self.sampled_from: list[dict] = []  # the weights at each generate call
        if made is not None:
            made.append(self)

    def load_weights(self, weights) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in weights:
            params[name].data.copy_(tensor)  # a name vLLM would not know fails here
            self.loads += 1

    def _save(self, what: str) -> None:
        import torch

        if self.record is not None:
            torch.save(self.model.state_dict(), self.record / f"rank{self.rank}-{what}.pt")

    def _sample(self, prompts: list[list[int]], n: int, max_tokens: int, temperature: float, top_p: float,
                top_k: int = 0, min_p: float | None = 0.0, repetition_penalty: float = 1.0):
        """``n`` completions per prompt, prompt-major. Settings the stand-in cannot honour must be off."""
        from espl_bench.agents.sampler import SamplingParams

        assert top_k in (0, -1) and not min_p and repetition_penalty == 1.0, "the stand-in samples without these"
        self.sampled_from.append({k: v.clone() for k, v in self.model.state_dict().items()})
        self._save("sampled")
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p)
        rows = [p for p in prompts for _ in range(n)]
        return self.sampler.generate([[]] * len(rows), params, rows)


@dataclass
class FakeSamplingParams:
    """``vllm.SamplingParams`` with the fields TRL 1.16 sets (an unknown one is a TypeError, as in vLLM)."""

    n: int = 1
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    structured_outputs: object = None


class FakeLLM(HFEngine):
    """``vllm.LLM`` as TRL 1.16's ``VLLMGeneration`` builds it (its keyword arguments, kept in
    ``options``) and calls it in colocate mode: ``generate`` with token-id prompts and
    :class:`FakeSamplingParams`, ``llm_engine...model_runner.model.load_weights``, ``sleep``/``wake_up``
    and ``reset_prefix_cache``. Level-2 sleep discards the weights (zeroes them) and the KV cache, as
    vLLM's does: generating before waking the KV cache, or loading weights before waking them, fails."""

    def __init__(self, model: str, *, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, max_num_seqs: int | None = None, enable_sleep_mode: bool = False,
                 model_impl: str = "auto", distributed_executor_backend: str | None = None, seed: int = 0,
                 max_num_batched_tokens: int | None = None, logprobs_mode: str = "raw_logprobs", quantization=None,
                 trust_remote_code: bool = False, made: list | None = None, record: Path | None = None):
        from types import SimpleNamespace

        super().__init__(model, made, record)
        self.options = {"tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
                        "max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
                        "enable_sleep_mode": enable_sleep_mode, "distributed_executor_backend": distributed_executor_backend,
                        "seed": seed, "logprobs_mode": logprobs_mode, "quantization": quantization}
        self.asleep: set[str] = set()
        # The attribute paths TRL reads the context from and writes the weights through.
        context = max_model_len or self.model.config.max_position_embeddings
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=context), model_executor=SimpleNamespace(
            driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=self))))

    def load_weights(self, weights) -> None:
        assert "weights" not in self.asleep, "weights loaded into a sleeping engine (vLLM: unmapped memory)"
        super().load_weights(weights)

    def sleep(self, level: int = 1) -> None:
        assert self.options["enable_sleep_mode"], "vLLM refuses sleep() without enable_sleep_mode"
        self.asleep = {"weights", "kv_cache"}
        if level == 2:
            for param in self.model.parameters():
                param.data.zero_()

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.asleep -= set(tags or ("weights", "kv_cache"))

    def reset_prefix_cache(self) -> bool:  # the last call of every TRL weight sync
        self._save("synced")
        return True

    def generate(self, prompts, sampling_params: FakeSamplingParams | None = None, use_tqdm: bool = True):
        from types import SimpleNamespace

        assert "kv_cache" not in self.asleep, "generate() on a sleeping engine"
        params = sampling_params or FakeSamplingParams()
        assert params.logprobs == 0, "the stand-in returns only the sampled token's logprob (logprobs=0)"
        ids = [p["prompt_token_ids"] for p in prompts]
        done = self._sample(ids, params.n, params.max_tokens, params.temperature, params.top_p, params.top_k,
                            params.min_p, params.repetition_penalty)
        # RequestOutput: per prompt, its n CompletionOutputs; logprobs per token {token id: Logprob}.
        return [SimpleNamespace(prompt_token_ids=prompt, outputs=[
            SimpleNamespace(token_ids=c.completion_ids, logprobs=[{t: SimpleNamespace(logprob=lp, rank=1, decoded_token=None)}
                                                                  for t, lp in zip(c.completion_ids, c.logprobs)])
            for c in done[i * params.n:(i + 1) * params.n]]) for i, prompt in enumerate(ids)]


class FakeVLLMClient(HFEngine):
    """TRL 1.16's ``VLLMClient`` (its constructor and the methods ``VLLMGeneration`` and
    ``GRPOTrainer`` call) talking to a ``trl vllm-serve --model served`` process: ``generate``
    returns its dict (unique prompts in, ``n`` completions each, per-token ``[logprob]``),
    ``update_named_params`` receives the tensors its ``metadata`` announced, in order (what the
    NCCL stream would carry), and needs ``init_communicator`` first."""

    def __init__(self, base_url: str | None = None, host: str = "0.0.0.0", server_port: int = 8000,
                 group_port: int = 51216, connection_timeout: float = 0.0, *, served: str = "",
                 made: list | None = None, record: Path | None = None):
        super().__init__(served, made, record)
        self.base_url = base_url or f"http://{host}:{server_port}"
        self.communicator = None

    def get_server_info(self) -> dict:
        return {"model_config": {"logprobs_mode": "processed_logprobs"}, "weight_transfer_config": {"backend": "nccl"}}

    def init_communicator(self, device=0) -> None:
        self.communicator = device  # the real one joins the server's NCCL group: what cannot run here

    def close_communicator(self) -> None:
        self.communicator = None

    def update_named_params(self, metadata, named_params) -> None:
        assert self.communicator is not None, "update_named_params before init_communicator"
        # Copied as they stream (as the broadcast would): TRL unmerges the LoRA in place afterwards.
        sent = [(name, tensor.detach().clone()) for name, tensor in named_params]
        announced = [(n, d, list(s)) for n, d, s in metadata]
        assert [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in sent] == announced, \
            "the stream does not match its metadata"
        self.load_weights(sent)

    def reset_prefix_cache(self) -> None:
        self._save("synced")

    def generate(self, prompts, features=None, n: int = 1, repetition_penalty: float = 1.0, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, max_tokens: int = 16, logprobs: int | None = 0,
                 structured_outputs_regex: str | None = None, generation_kwargs: dict | None = None) -> dict:
        assert features is None and structured_outputs_regex is None and not generation_kwargs and logprobs == 0
        done = self._sample(prompts, n, max_tokens, temperature, top_p, top_k, min_p, repetition_penalty)
        return {"prompt_ids": list(prompts), "completion_ids": [c.completion_ids for c in done],
                "logprobs": [[[lp] for lp in c.logprobs] for c in done],
                "logprob_token_ids": [[[t] for t in c.completion_ids] for c in done]}


def fake_vllm(made: list, served: str | None = None, record: Path | None = None) -> dict:
    """What to put in ``trl.generation.vllm_generation`` so that TRL's own ``VLLMGeneration`` (its
    ``_init_vllm``, sync and generate code, unchanged) drives :class:`FakeLLM` / :class:`FakeVLLMClient`
    (serving ``served``) instead of vLLM. Engines made are appended to ``made``."""
    from functools import partial

    return {"LLM": partial(FakeLLM, made=made, record=record),
            "VLLMClient": partial(FakeVLLMClient, served=served or "", made=made, record=record),
            "SamplingParams": FakeSamplingParams, "is_vllm_available": lambda: True}


def install_fake_trl_vllm(record: Path) -> None:
    """In a launched process (tests/run_cli.py): TRL's vLLM is :class:`FakeLLM`, recording into ``record``."""
    from trl.generation import vllm_generation

    from espl_bench.training import policy

    for name, value in fake_vllm([], record=record).items():
        setattr(vllm_generation, name, value)
    policy._require_cuda_vllm = lambda: None  # the CUDA gate is what is faked


def learner_settings(model: Path, output_dir: Path, *, rows_per_step: int, group_size: int, dtype: str = "float32",
                     correct_sampler_logprobs: bool = False, **run):
    """The TRL learner's settings for a tiny model: a run config with a small LoRA, a high learning
    rate and one step (``run`` overrides any of its options)."""
    from espl_bench.config import RunConfig
    from espl_bench.training.trl_learner import LearnerSettings

    options = {"iterations": 1, "learning_rate": 1e-2, "lora_rank": 4, "lora_alpha": 8, "loss_type": "dr_grpo",
               "scale_rewards": "none", "micro_batch_size": 4, "temperature": 0.7, **run}
    return LearnerSettings(run=RunConfig(env="espl/Arithmetic-v0", model=str(model), **options),
                           model_path=str(model), output_dir=output_dir, rows_per_step=rows_per_step,
                           group_size=group_size, dtype=dtype, correct_sampler_logprobs=correct_sampler_logprobs)
