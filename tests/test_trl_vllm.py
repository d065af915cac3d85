"""``--sampler trl-vllm``: TRL drives the vLLM engine and pushes whole weights into it every step.

vLLM's CUDA engine cannot run on these CPU machines, so these tests replace only the engine:
:class:`HFEngine` stands in for ``vllm.LLM`` (colocate) and for TRL's ``VLLMClient`` of a
``trl vllm-serve`` process (server). It is a separate Hugging Face copy of the model whose
weights change *only* through the calls TRL's own ``VLLMGeneration.sync_weights`` makes
(``load_weights`` in colocate mode, ``update_named_params`` in server mode). Everything else is
real: GRPOTrainer with ``use_vllm=True``, TRL's LoRA merge and sync code, the run loop, the
sampler. The tests check which weights every generate call sampled from.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from espl_bench.agents.sampler import SamplingParams, TransformersSampler
from espl_bench.agents.trl_vllm_sampler import (
    ColocateEngine,
    ServerEngine,
    TRLVLLMSampler,
)
from espl_bench.running.cli import main
from espl_bench.training import policy

from tests.fakes import DENSE_PLUGIN

FLAGS = ["run", "--env", "dense_plugin:Short-v0", "--method", "rl", "--sampler", "trl-vllm", "--programs", "1",
         "--batch-size", "2", "--group-size", "4", "--eval-problems", "1", "--eval-samples", "1",
         "--max-new-tokens", "16", "--learning-rate", "0.005", "--validation-problems", "0", "--seed", "3"]


class HFEngine:
    """Stands in for ``vllm.LLM`` and for TRL's ``VLLMClient``: its own copy of the weights, changed
    only by ``load_weights`` (colocate) or ``update_named_params`` (server)."""

    def __init__(self, path: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(path).requires_grad_(False)
        self.sampler = TransformersSampler(self.model, AutoTokenizer.from_pretrained(path))
        # The attribute path TRL's colocate sync writes through.
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
            driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=self))))
        self.loads = 0
        self.sampled_from: list[dict[str, torch.Tensor]] = []  # the weights at each generate call

    def load_weights(self, weights) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in weights:
            params[name].data.copy_(tensor)  # a name vLLM would not know fails here
            self.loads += 1

    def reset_prefix_cache(self) -> None:
        return None

    def _sample(self, prompts: list[list[int]], max_tokens: int, temperature: float, top_p: float):
        self.sampled_from.append({k: v.clone() for k, v in self.model.state_dict().items()})
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p)
        return self.sampler.generate([[]] * len(prompts), params, prompts)

    def generate(self, prompts, sampling_params=None, use_tqdm=False, **request):
        if sampling_params is None:  # VLLMClient.generate: token-id prompts, a dict back
            assert request["n"] == 1 and request["logprobs"] == 0
            done = self._sample(prompts, request["max_tokens"], request["temperature"], request["top_p"])
            return {"prompt_ids": prompts, "completion_ids": [c.completion_ids for c in done],
                    "logprobs": [[[lp] for lp in c.logprobs] for c in done]}
        done = self._sample([p["prompt_token_ids"] for p in prompts], sampling_params.max_tokens,
                            sampling_params.temperature, sampling_params.top_p)
        return [SimpleNamespace(outputs=[SimpleNamespace(
            token_ids=c.completion_ids,
            logprobs=[{t: SimpleNamespace(logprob=lp)} for t, lp in zip(c.completion_ids, c.logprobs)])])
            for c in done]

    # -- the VLLMClient side (server mode) --

    def get_server_info(self) -> dict:
        return {"model_config": {"logprobs_mode": "processed_logprobs"}}

    def update_named_params(self, metadata, params) -> None:
        self.load_weights(params)


@pytest.fixture
def dense_plugin(monkeypatch, tmp_path):
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "dense_plugin.py").write_text(DENSE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))


@pytest.fixture
def engines(monkeypatch, dense_plugin):
    """Runs in this process use :class:`HFEngine` for TRL's colocated vLLM; yields the engines made."""
    from trl.generation.vllm_generation import VLLMGeneration
    from trl.trainer import grpo_trainer

    made: list[HFEngine] = []

    class HFGeneration(VLLMGeneration):
        def _init_vllm(self):
            engine = HFEngine(self.model.name_or_path)
            if self.mode == "server":
                assert self.server_base_url == SERVER_URL
                self.vllm_client = engine
            else:
                self.llm, self._llm_weights_sleeping = engine, False
            made.append(engine)

    monkeypatch.setattr(grpo_trainer, "VLLMGeneration", HFGeneration)
    monkeypatch.setattr(policy, "_require_cuda_vllm", lambda: None)  # the CUDA gate is what is faked
    monkeypatch.setattr("espl_bench.agents.trl_vllm_sampler.vllm_sampling_params", SimpleNamespace)
    return made


def merged(model_path: Path, checkpoint: Path | None) -> dict[str, torch.Tensor]:
    """The whole weights the learner's step ``checkpoint`` stands for (base weights without one)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path)
    if checkpoint is not None:
        model = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    return model.state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


SERVER_URL = "http://127.0.0.1:8000"
MODES = {"colocate": [], "server": ["--trl-vllm-mode", "server", "--vllm-url", SERVER_URL]}


@pytest.mark.parametrize("mode", MODES)
def test_rollouts_and_evaluations_sample_the_last_finished_step(engines, tiny_model, tmp_path, mode):
    out = tmp_path / "run"
    assert main([*FLAGS, *MODES[mode], "--iterations", "2", "--model", str(tiny_model), "--out", str(out)]) == 0
    (engine,) = engines
    learner = out / "learner"
    base, step1, step2 = merged(tiny_model, None), merged(tiny_model, learner / "checkpoint-1"), merged(tiny_model, learner / "checkpoint-2")
    assert not same(step1, base) and not same(step2, step1)  # the dense reward moved the weights every step
    # Per iteration: rollouts, then (after the step) the evaluation.
    expected = [base, step1, step1, step2]
    assert len(engine.sampled_from) == len(expected)
    assert [same(got, want) for got, want in zip(engine.sampled_from, expected)] == [True] * 4
    assert engine.loads > 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["learner"]["synced_step"] for m in metrics] == [1.0, 2.0]
    assert all(m["learner"]["loss"] == m["learner"]["loss"] for m in metrics)  # TRL trained (a number, not NaN)


@pytest.mark.parametrize("mode", MODES)
def test_a_resumed_run_samples_its_committed_weights_from_its_first_rollout(engines, tiny_model, tmp_path, mode):
    out = tmp_path / "run"
    assert main([*FLAGS, *MODES[mode], "--iterations", "1", "--model", str(tiny_model), "--out", str(out)]) == 0
    assert main([*FLAGS, *MODES[mode], "--iterations", "2", "--model", str(tiny_model), "--out", str(out), "--resume"]) == 0
    resumed = engines[-1]
    first, last = resumed.sampled_from[0], resumed.sampled_from[-1]
    assert same(first, merged(tiny_model, out / "learner" / "checkpoint-1")), "the resumed rollouts used other weights"
    assert same(last, merged(tiny_model, out / "learner" / "checkpoint-2")), "the final evaluation used other weights"


class FakeClient:
    """TRL's ``VLLMClient.generate`` reply format: per sequence, per token, [sampled token's logprob]."""

    def __init__(self, replies):
        self.replies, self.requests = replies, []

    def generate(self, **request):
        self.requests.append(request)
        ids = [self.replies[tuple(p)] for p in request["prompts"]]
        return {"prompt_ids": request["prompts"], "completion_ids": ids,
                "logprobs": [[[-0.5 - i] for i in range(len(r))] for r in ids]}


def test_server_engine_sends_token_ids_and_keeps_ids_and_logprobs(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    eos = tokenizer.eos_token_id
    sampler = TRLVLLMSampler(None, tokenizer, {eos})
    first = sampler.encode([{"role": "user", "content": "2+2?"}])
    cont = [5, 6, 7]
    hello = tokenizer("4", add_special_tokens=False)["input_ids"]
    client = FakeClient({tuple(first): hello + [eos], tuple(cont): [9] * 8})
    sampler.engine = ServerEngine(client)
    done = sampler.generate([[{"role": "user", "content": "2+2?"}], []], SamplingParams(max_new_tokens=8, temperature=0.7),
                            [None, cont])
    (request,) = client.requests
    assert request["prompts"] == [first, cont] and request["n"] == 1 and request["logprobs"] == 0
    assert request["max_tokens"] == 8 and request["temperature"] == 0.7 and "seed" not in request
    assert [c.prompt_ids for c in done] == [first, cont]
    assert done[0].completion_ids == hello + [eos] and done[0].text == "4" and done[0].finish_reason == "stop"
    assert done[1].finish_reason == "length" and done[1].logprobs == [-0.5 - i for i in range(8)]


def test_colocate_engine_reads_the_sampled_tokens_logprobs():
    seen = {}

    class LLM:
        def generate(self, prompts, sampling_params, use_tqdm):
            seen.update(prompts=prompts, params=sampling_params)
            step = [{4: SimpleNamespace(logprob=-1.25)}, {2: SimpleNamespace(logprob=-0.5)}]
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[4, 2], logprobs=step)])]

    engine = ColocateEngine(LLM(), make_params=SimpleNamespace)
    assert engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=5, temperature=0.0)) == [([4, 2], [-1.25, -0.5])]
    assert seen["prompts"] == [{"prompt_token_ids": [1, 2, 3]}]
    assert (seen["params"].temperature, seen["params"].top_p, seen["params"].max_tokens) == (0.0, 1.0, 5)


@pytest.mark.parametrize("extra, message", [
    (["--method", "evolution"], "trains none"),
    (["--trl-vllm-mode", "server"], "--vllm-url"),
    (["--vllm-url", "http://127.0.0.1:8000"], "--vllm-url"),
    (["--trl-vllm-args", '{"vllm_mode": "server"}'], "set by the run"),
    (["--trl-vllm-args", '{"vllm_gpu_mem": 0.3}'], "GRPOConfig does not know"),
])
def test_trl_vllm_misuse_is_one_clear_error(dense_plugin, tiny_model, tmp_path, caplog, extra, message):
    assert main([*FLAGS, "--model", str(tiny_model), "--out", str(tmp_path / "run"), *extra]) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert message in error and "fix:" in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_trl_vllm_without_cuda_names_the_cpu_alternative(dense_plugin, tiny_model, tmp_path, caplog):
    assert main([*FLAGS, "--model", str(tiny_model), "--out", str(tmp_path / "run")]) == 2
    assert "needs CUDA GPUs; fix: on this machine use --sampler vllm" in caplog.text


def test_trl_vllm_options_need_the_trl_vllm_sampler(dense_plugin, tiny_model, tmp_path, caplog):
    args = [a for a in FLAGS if a not in ("trl-vllm", "--sampler")]
    assert main([*args, "--model", str(tiny_model), "--out", str(tmp_path / "run"), "--trl-vllm-mode", "server"]) == 2
    assert "need --sampler trl-vllm" in caplog.text
