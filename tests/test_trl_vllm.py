"""``--sampler trl-vllm``: TRL drives the vLLM engine and pushes whole weights into it every step.

vLLM's CUDA engine cannot run on these CPU machines, so these tests replace only what TRL 1.16's
``trl.generation.vllm_generation`` imports from vLLM and its NCCL client:
:class:`~tests.fakes.FakeLLM` stands in for ``vllm.LLM`` (colocate) and
:class:`~tests.fakes.FakeVLLMClient` for TRL's ``VLLMClient`` of a ``trl vllm-serve`` process
(server), each with the constructor and methods TRL calls. Each is a separate Hugging Face copy of
the model whose weights change *only* through the calls TRL's own ``VLLMGeneration.sync_weights``
makes (``load_weights`` in colocate mode, ``update_named_params`` in server mode), and whose
level-2 sleep drops them. Everything else is real: GRPOTrainer with ``use_vllm=True``, TRL's
``VLLMGeneration`` itself (``_init_vllm``, LoRA merge, sync, ``generate`` with sleep and wake-up),
the run loop, the sampler. The tests check which weights every generate call sampled from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from espl_bench.agents.sampler import SamplingParams
from espl_bench.agents.trl_vllm_sampler import (
    GenerationEngine,
    ServerEngine,
    TRLVLLMSampler,
)
from espl_bench.running.cli import main
from espl_bench.training import policy
from tests.fakes import DENSE_PLUGIN, HFEngine, fake_vllm, launch_espl

FLAGS = ["run", "--env", "dense_plugin:Short-v0", "--method", "rl", "--sampler", "trl-vllm", "--programs", "1",
         "--batch-size", "2", "--group-size", "4", "--eval-problems", "1", "--eval-samples", "1",
         "--max-new-tokens", "16", "--learning-rate", "0.005", "--validation-problems", "0", "--seed", "3",
         "--dtype", "float32"]  # weights are compared exactly: not bfloat16, which auto picks on a CPU that has it


@pytest.fixture
def dense_plugin(monkeypatch, tmp_path):
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "dense_plugin.py").write_text(DENSE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))


@pytest.fixture
def engines(monkeypatch, dense_plugin, tiny_model):
    """Runs in this process drive :mod:`tests.fakes`' vLLM through TRL's own ``VLLMGeneration``
    (the server serves the tiny model); yields the engines made."""
    from trl.generation import vllm_generation

    made: list[HFEngine] = []
    for name, value in fake_vllm(made, served=str(tiny_model)).items():
        monkeypatch.setattr(vllm_generation, name, value, raising=False)  # vLLM itself is not installed here
    monkeypatch.setattr(policy, "_require_cuda_vllm", lambda: None)  # the CUDA gate is what is faked
    forget_launcher_variables(monkeypatch)
    return made


def forget_launcher_variables(monkeypatch) -> None:
    """As in a new process: TRL's colocate set-up writes the launcher's variables into os.environ
    (a later run in this process would read them as a one-process launch); put them back afterwards."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MASTER_PORT", "29500")  # else TRL binds a socket to find a free port


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
    if mode == "server":  # TRL's client of the `trl vllm-serve` at --vllm-url, its NCCL group joined
        assert engine.base_url == SERVER_URL and engine.communicator is not None
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
def test_a_resumed_run_samples_its_committed_weights_from_its_first_rollout(engines, tiny_model, tmp_path, mode,
                                                                           monkeypatch):
    out = tmp_path / "run"
    assert main([*FLAGS, *MODES[mode], "--iterations", "1", "--model", str(tiny_model), "--out", str(out)]) == 0
    forget_launcher_variables(monkeypatch)
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


def test_the_generation_engine_samples_each_call_with_its_own_settings_through_trl():
    """TRL's generate reads its sampling settings from its own attributes: each call sets the
    loop's, and TRL's configured ones are back afterwards."""
    seen = {}

    class Generation:
        temperature, top_p, top_k, min_p, repetition_penalty, max_completion_length, logprobs = 1.0, 0.9, 5, 0.1, 1.2, 99, 3

        def generate(self, prompts, images, num_generations):
            seen.update(prompts=prompts, images=images, n=num_generations,
                        settings=(self.temperature, self.top_p, self.top_k, self.max_completion_length, self.logprobs))
            return prompts, [[4, 2]], [[[-1.25], [None]]], None

    generation = Generation()
    engine = GenerationEngine(generation)
    assert engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=5, temperature=0.0)) == [([4, 2], [-1.25, 0.0])]
    assert seen == {"prompts": [[1, 2, 3]], "images": None, "n": 1, "settings": (0.0, 1.0, 0, 5, 0)}
    assert (generation.temperature, generation.top_k, generation.max_completion_length) == (1.0, 5, 99)


def test_sleep_mode_goes_through_trls_wake_up_and_weight_push(engines, tiny_model, tmp_path):
    """With vllm_enable_sleep_mode the engine drops its weights after every generation (level 2);
    TRL's generate pushes the current ones back, so every call still samples the right step."""
    out = tmp_path / "run"
    sleep = ["--trl-vllm-args", json.dumps({"vllm_enable_sleep_mode": True}), "--max-context", "512"]
    assert main([*FLAGS, *sleep, "--iterations", "2", "--model", str(tiny_model), "--out", str(out)]) == 0
    (engine,) = engines
    # The engine TRL built from the run's flags: its context is --max-context, its logprobs processed.
    assert engine.options["enable_sleep_mode"] and engine.options["max_model_len"] == 512
    assert engine.options["logprobs_mode"] == "processed_logprobs"
    learner = out / "learner"
    expected = [merged(tiny_model, None), *[merged(tiny_model, learner / f"checkpoint-{s}") for s in (1, 1, 2)]]
    assert [same(got, want) for got, want in zip(engine.sampled_from, expected, strict=True)] == [True] * 4


@pytest.mark.allow_hosts(["127.0.0.1"])  # the launcher's rendezvous, on loopback
def test_every_learner_process_pushes_the_last_steps_weights(dense_plugin, tiny_model, tmp_path):
    """Two learner processes (ddp.yaml, gloo): gathering sharded weights (FSDP, ZeRO-3) needs every
    rank, so each takes part in the final push before it leaves. Here each process holds its own
    colocated engine, so rank 1's engine shows whether rank 1 pushed the last step's weights."""
    plugin, record, out = tmp_path / "plugin", tmp_path / "engines", tmp_path / "run"
    record.mkdir()
    proc = launch_espl([*FLAGS[1:], "--iterations", "2", "--model", str(tiny_model), "--out", str(out)], plugin=plugin,
                       processes=2, env={"ESPL_TEST_FAKE_TRL_VLLM": str(record)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = merged(tiny_model, out / "learner" / "checkpoint-2")
    assert not same(final, merged(tiny_model, out / "learner" / "checkpoint-1"))
    for rank in (0, 1):
        assert same(torch.load(record / f"rank{rank}-synced.pt"), final), f"rank {rank} missed the final push"
    assert same(torch.load(record / "rank0-sampled.pt"), final), "the final evaluation sampled other weights"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["learner"]["synced_step"] for m in metrics] == [1.0, 2.0]


@pytest.mark.allow_hosts(["127.0.0.1"])  # the process group's rendezvous, on loopback
@pytest.mark.parametrize("scheme", ["fsdp2", "zero3"])
def test_sharded_parameters_reach_vllm_when_every_process_pushes(scheme, tiny_model, tmp_path):
    """FSDP2 and DeepSpeed ZeRO-3 over two gloo processes (tests/sharded_sync.py): no rank holds a
    whole weight, and the final push every rank makes as its trainer ends (TRL's own gather, merge
    and sync) leaves every colocated engine, and the server, with the whole merged weights."""
    import subprocess
    import sys

    from espl_bench.agents.vllm_server import free_port

    if scheme == "zero3":
        pytest.importorskip("deepspeed", reason="ZeRO-3 needs DeepSpeed: pip install --no-build-isolation deepspeed")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "tests.sharded_sync", scheme, str(tiny_model), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = torch.load(tmp_path / "expected.pt")
    assert not same(expected, merged(tiny_model, None)), "the LoRA merges to the base weights: nothing to check"
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["held"]["local"] < report["held"]["full"], f"rank {rank} held a whole weight: not sharded"
        assert report["pushed"] == {"colocate": 2, "server": 2}
        assert same(torch.load(tmp_path / "colocate" / f"rank{rank}-synced.pt"), expected), f"rank {rank}'s engine"
    assert same(torch.load(tmp_path / "server" / "rank0-synced.pt"), expected), "the server's weights"
    assert not (tmp_path / "server" / "rank1-synced.pt").exists()  # only rank 0 talks to the server


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
