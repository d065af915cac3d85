"""Sampling throughput: generated tokens/s through the rollout engine vs the raw backend.

The same batch (16 arithmetic problems under one system prompt, 32 new tokens, T=0.7) goes once
straight to ``Sampler.generate`` and once through ``RolloutEngine.run`` (env reset, chat
rendering, env step, bookkeeping). ``extra_info`` records both rates and their ratio
(engine / raw; 1.0 means the engine adds no overhead). The vLLM case needs the vLLM venv
(``ESPL_VLLM_PYTHON``, see scripts/setup-vllm-env.sh) and is skipped without it.

Run: python -m pytest benchmarks/test_throughput.py --benchmark-autosave
(minutes on 2 CPU cores, most of it the vLLM server's startup).
"""

from __future__ import annotations

import os
import time

import pytest
import urllib3.util.connection  # noqa: F401  (probes IPv6 with a socket at import: do it before sockets are blocked)

from espl_bench.agents.rollout import EpisodeSpec, RolloutEngine
from espl_bench.agents.sampler import SamplingParams
from espl_bench.envs.registry import make_env

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENV = "espl/Arithmetic-v0"
BATCH, NEW_TOKENS, ROUNDS = 16, 32, 2
SYSTEM = "Solve the problem. Think briefly, then give the final answer as <answer>N</answer>."
PARAMS = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.7, top_p=0.95, seed=0)


@pytest.fixture(scope="module")
def model_dir():
    from espl_bench.training.models import convert_embedded

    return convert_embedded()


def first_turn_conversations(specs: list[EpisodeSpec]) -> list[list[dict]]:
    """The exact first-turn conversations the engine builds for ``specs``."""
    env = make_env(ENV)
    conversations = []
    for spec in specs:
        observation, _ = env.reset(seed=PARAMS.seed, options={"split": spec.split, "index": spec.index})
        conversations.append([{"role": "system", "content": spec.system_prompt}, {"role": "user", "content": observation}])
    return conversations


def compare(benchmark, sampler, backend: str) -> None:
    specs = [EpisodeSpec(SYSTEM, "train", i) for i in range(BATCH)]
    conversations = first_turn_conversations(specs)
    # The engine samples turn 1 with seed + 1: the raw call does the same, so both do the same work.
    raw_params = SamplingParams(PARAMS.max_new_tokens, PARAMS.temperature, PARAMS.top_p, PARAMS.seed + 1)
    sampler.generate(conversations[:2], SamplingParams(max_new_tokens=4))  # one-off warm-up, not timed

    raw_tokens = raw_seconds = 0.0
    for _ in range(ROUNDS):
        began = time.perf_counter()
        completions = sampler.generate(conversations, raw_params)
        raw_seconds += time.perf_counter() - began
        raw_tokens += sum(len(c.completion_ids) for c in completions)

    engine = RolloutEngine(lambda: make_env(ENV), sampler)
    engine_rounds: list[tuple[int, float]] = []

    def engine_round():
        began = time.perf_counter()
        rollouts = engine.run(specs, PARAMS)
        engine_rounds.append((sum(sum(r.env_mask) for r in rollouts), time.perf_counter() - began))
        return rollouts

    rollouts = benchmark.pedantic(engine_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    assert len(rollouts) == BATCH and all(r.error is None for r in rollouts)
    engine_tokens = sum(n for n, _ in engine_rounds)
    engine_seconds = sum(s for _, s in engine_rounds)
    raw_rate, engine_rate = raw_tokens / raw_seconds, engine_tokens / engine_seconds
    benchmark.extra_info.update({
        "backend": backend, "batch": BATCH, "max_new_tokens": NEW_TOKENS, "rounds": len(engine_rounds),
        "raw_tokens": int(raw_tokens), "engine_tokens": int(engine_tokens),
        "raw_tokens_per_s": round(raw_rate, 1), "engine_tokens_per_s": round(engine_rate, 1),
        "ratio_engine_over_raw": round(engine_rate / raw_rate, 3),
        "load_average_1m": round(os.getloadavg()[0], 2),  # 2 shared cores: say how busy they were
    })


def test_transformers_sampler_throughput(benchmark, model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from espl_bench.agents.sampler import TransformersSampler

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).requires_grad_(False)  # as the runner loads it
    compare(benchmark, TransformersSampler(model, tokenizer), "transformers")


@pytest.mark.vllm
@pytest.mark.allow_hosts(["127.0.0.1"])  # the local server only; the suite's sockets stay blocked
def test_vllm_sampler_throughput(benchmark, model_dir, tmp_path):
    from espl_bench.agents.vllm_sampler import VLLMSampler
    from espl_bench.agents.vllm_server import VLLMServer
    from tests.fakes import vllm_python_or_skip

    python = vllm_python_or_skip()
    with VLLMServer(model_dir, python=python, log_path=tmp_path / "server.log") as server:
        compare(benchmark, VLLMSampler(server, model_dir), "vllm")
        benchmark.extra_info["server_startup_s"] = round(server.startup_s, 1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reflector_decoding_by_dtype(benchmark, model_dir, dtype):
    """The in-process reflector's decoding speed in each ``--reflector-dtype``, and what the dtype
    costs in likelihood: the mean token loss on the first 1,024 tokens of this repository's README."""
    from pathlib import Path

    import torch

    from espl_bench.agents.sampler import TransformersSampler
    from espl_bench.training.policy import load_frozen

    model, tokenizer = load_frozen(model_dir, dtype)
    sampler = TransformersSampler(model, tokenizer)
    request = [[{"role": "user", "content": "Critique this attempt and propose one principle. " * 20}]] * 2
    params = SamplingParams(max_new_tokens=48, temperature=0.7, top_p=0.95, seed=0)
    sampler.generate(request, SamplingParams(max_new_tokens=4))  # warm-up, not timed
    tokens: list[int] = []

    def decode():
        completions = sampler.generate(request, params)
        tokens.append(max(len(c.completion_ids) for c in completions))

    benchmark.pedantic(decode, rounds=2, iterations=1, warmup_rounds=0)
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :1024]
    with torch.no_grad():
        loss = float(model(ids, labels=ids).loss)
    benchmark.extra_info.update({
        "dtype": dtype, "ms_per_token": round(1000 * benchmark.stats.stats.mean / max(1, sum(tokens) / len(tokens)), 1),
        "mean_token_loss": round(loss, 3), "load_average_1m": round(os.getloadavg()[0], 2),
    })
    assert tokens and loss < 10  # a dtype that broke the model would show here as noise


@pytest.mark.parametrize("fast_forward", [False, True], ids=["token-by-token", "fast-forward"])
def test_reflector_structured_decoding(benchmark, model_dir, fast_forward):
    """The in-process reflector's edit calls (a batch of two critique-sized requests under the
    critique's schema, greedy: both paths write the same answers up to bfloat16 rounding): token by
    token through ``generate``, or with the grammar's forced tokens fed in one forward
    (agents/fast_forward.py).
    ``extra_info`` has the forward passes, the tokens and the seconds per token."""
    import torch

    from espl_bench.agents.sampler import TransformersSampler
    from espl_bench.method.edits import ops_schema, ops_token_bound
    from espl_bench.method.reflection import load_templates
    from espl_bench.training.policy import load_frozen

    model, tokenizer = load_frozen(model_dir, "bfloat16" if torch.cpu._is_avx512_bf16_supported() else "float32")
    sampler = TransformersSampler(model, tokenizer)
    sampler.fast_forward = fast_forward
    critique = load_templates()["critique"]
    requests = [[{"role": "user", "content": critique.safe_substitute(
        principles="G0: Work step by step.\nG1: Give the final answer as <answer>N</answer>.",
        problem=f"What is {a} + {b} * 3?", answer=str(a + b * 3), max_ops=2, max_words=32,
        summaries=f"- reward 0: the attempt itself: {a} + {b} = {a + b}, times 3 is {3 * (a + b)}.")}]
        for a, b in ((17, 4), (52, 9))]
    schema = ops_schema(allowed={"add", "modify"}, valid_ids={"G0", "G1"}, max_ops=2, max_words=32)
    params = SamplingParams(max_new_tokens=ops_token_bound(2, 32), temperature=0.0, top_p=1.0, seed=0,
                            repetition_penalty=1.2)
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    completions: list = []

    def decode():
        completions[:] = sampler.generate(requests, params, seeds=[1, 2], schemas=[schema, schema])

    try:
        benchmark.pedantic(decode, rounds=2, iterations=1, warmup_rounds=1)
    finally:
        handle.remove()
    tokens = max(len(c.completion_ids) for c in completions)
    benchmark.extra_info.update({
        "fast_forward": fast_forward, "forwards_per_call": len(forwards) // 3, "longest_answer_tokens": tokens,
        "ms_per_answer_token": round(1000 * benchmark.stats.stats.mean / max(1, tokens), 1),
        "answers": [c.text for c in completions], "load_average_1m": round(os.getloadavg()[0], 2),
    })
    assert all(c.text.startswith('{"ops": [') for c in completions) and len(forwards) > 0
