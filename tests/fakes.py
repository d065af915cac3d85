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
                env: dict[str, str] | None = None, timeout: float = 900):
    """``espl-bench ARGS`` in a subprocess, under ``accelerate launch`` when ``processes`` > 1.

    ``plugin`` is a folder on the subprocess's path (write :data:`DENSE_PLUGIN` there as
    ``dense_plugin.py`` for the env ``dense_plugin:Short-v0``).
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
        "--num_processes", str(processes), "--main_process_port", str(free_port())]
    return subprocess.run([sys.executable, *launcher, "-m", "tests.run_cli", "run", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=root)
