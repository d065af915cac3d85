"""Fakes for tests and benchmarks: a tiny random model and a scripted reflector.

They exist so that the whole loop can be exercised in seconds, offline, with no real model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path


def make_tiny_model(path: Path, *, seed: int = 0) -> Path:
    """A 2-layer randomly initialised Llama with the embedded model's tokenizer, saved at ``path``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from espl.models import convert_embedded

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

    def complete(self, messages: list[dict], *, purpose: str = "") -> str:
        self.calls.append(messages)
        return self._fn(messages)


def vllm_python_or_skip() -> str:
    """The vLLM venv's python for a test; skips without one, or fails where ``ESPL_REQUIRE_VLLM``
    is set (CI must exercise the real server, not skip it)."""
    import os

    import pytest

    from agents.vllm_server import SETUP_HINT, find_vllm_python

    python = find_vllm_python()
    if python is None:
        missing = f"no vLLM environment: {SETUP_HINT}"
        if os.environ.get("ESPL_REQUIRE_VLLM"):
            pytest.fail(missing)
        pytest.skip(missing)
    return python
