"""Fakes for tests and benchmarks: a tiny random model and a scripted reflector.

They exist so that the whole loop can be exercised in seconds, offline, with no real model.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from espl_bench.envs.base import TextEnv


def make_tiny_model(path: Path, *, seed: int = 0) -> Path:
    """A 2-layer randomly initialised Llama with the embedded model's tokenizer, saved at ``path``."""
    import torch
    from espl_bench.training.models import convert_embedded
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

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
    """Stands in for ``vllm.LLM`` and for TRL's ``VLLMClient``: its own Hugging Face copy of the weights,
    changed only by ``load_weights`` (colocate) or ``update_named_params`` (server), as TRL's
    ``VLLMGeneration.sync_weights`` calls them. Level-2 ``sleep`` discards the weights (zeroes them),
    as vLLM's does. With ``record``, every finished sync and every generate call saves the weights
    it ended with / sampled from as ``rank{RANK}-synced.pt`` / ``rank{RANK}-sampled.pt`` there."""

    def __init__(self, path: str, record: Path | None = None):
        import os
        from types import SimpleNamespace

        from espl_bench.agents.sampler import TransformersSampler
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(path).requires_grad_(False)
        self.sampler = TransformersSampler(self.model, AutoTokenizer.from_pretrained(path))
        # The attribute path TRL's colocate sync writes through.
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
            driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=self))))
        self.loads, self.record, self.rank = 0, record, os.environ.get("RANK", "0")
        self.sampled_from: list[dict] = []  # the weights at each generate call

    def load_weights(self, weights) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in weights:
            params[name].data.copy_(tensor)  # a name vLLM would not know fails here
            self.loads += 1

    def sleep(self, level: int = 1) -> None:
        if level == 2:
            for param in self.model.parameters():
                param.data.zero_()

    def wake_up(self, tags=None) -> None:
        return None

    def reset_prefix_cache(self) -> None:  # the last call of every TRL weight sync
        self._save("synced")

    def _save(self, what: str) -> None:
        import torch

        if self.record is not None:
            torch.save(self.model.state_dict(), self.record / f"rank{self.rank}-{what}.pt")

    def _sample(self, prompts: list[list[int]], max_tokens: int, temperature: float, top_p: float):
        from espl_bench.agents.sampler import SamplingParams

        self.sampled_from.append({k: v.clone() for k, v in self.model.state_dict().items()})
        self._save("sampled")
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p)
        return self.sampler.generate([[]] * len(prompts), params, prompts)

    def generate(self, prompts, sampling_params=None, use_tqdm=False, **request):
        from types import SimpleNamespace

        if sampling_params is None:  # VLLMClient.generate: token-id prompts, a dict back
            assert request["n"] == 1 and request["logprobs"] == 0
            done = self._sample(prompts, request["max_tokens"], request["temperature"], request["top_p"])
            return {"prompt_ids": prompts, "completion_ids": [c.completion_ids for c in done],
                    "logprobs": [[[lp] for lp in c.logprobs] for c in done]}
        done = self._sample([p["prompt_token_ids"] for p in prompts], sampling_params.max_tokens,
                            sampling_params.temperature, sampling_params.top_p)
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[SimpleNamespace(
            token_ids=c.completion_ids,
            logprobs=[{t: SimpleNamespace(logprob=lp, rank=1)} for t, lp in zip(c.completion_ids, c.logprobs)])])
            for p, c in zip(prompts, done)]

    # -- the VLLMClient side (server mode) --

    def get_server_info(self) -> dict:
        return {"model_config": {"logprobs_mode": "processed_logprobs"}}

    def update_named_params(self, metadata, params) -> None:
        self.load_weights(params)


def hf_generation(made: list, server_url: str | None = None, record: Path | None = None):
    """TRL's ``VLLMGeneration`` with :class:`HFEngine` in place of vLLM (everything else TRL's own)."""
    from trl.generation.vllm_generation import VLLMGeneration

    class HFGeneration(VLLMGeneration):
        def _init_vllm(self):
            engine = HFEngine(self.model.name_or_path, record)
            if self.mode == "server":
                assert server_url is None or self.server_base_url == server_url
                self.vllm_client = engine
            else:
                self.llm = engine
                if self.enable_sleep_mode:  # as TRL puts a fresh colocated engine to sleep
                    engine.sleep(level=2)
                self._llm_weights_sleeping = self.enable_sleep_mode
            made.append(engine)

    return HFGeneration


def install_fake_trl_vllm(record: Path) -> None:
    """In a launched process (tests/run_cli.py): TRL's vLLM is :class:`HFEngine`, recording into ``record``."""
    from types import SimpleNamespace

    from espl_bench.training import policy
    from trl.generation import vllm_generation
    from trl.trainer import grpo_trainer

    grpo_trainer.VLLMGeneration = hf_generation([], record=record)
    vllm_generation.SamplingParams = SimpleNamespace  # vLLM itself is not installed here
    policy._require_cuda_vllm = lambda: None  # the CUDA gate is what is faked
