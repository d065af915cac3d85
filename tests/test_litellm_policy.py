"""--sampler litellm: hosted API policies for evolution, self-reflection and evaluation, metered.

litellm's ``mock_response`` answers without any network call (sockets are blocked in tests), and
litellm prices a mocked ``openai/gpt-4o-mini`` call from its local cost map.
"""

import json

import litellm
import pytest

from espl_bench.agents.litellm_sampler import LiteLLMSampler, PolicyUnavailable
from espl_bench.agents.sampler import SamplingParams
from espl_bench.running.cli import main

MODEL = "openai/gpt-4o-mini"
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def test_an_api_policy_run_records_tokens_and_cost_of_policy_and_reflector(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-policy-0123456789")
    out = tmp_path / "api"
    code = main(["run", "--env", "espl/Arithmetic-v0", "--method", "evolution", "--sampler", "litellm",
                 "--model", MODEL, "--policy-kwargs", json.dumps({"mock_response": "<answer>4</answer>"}),
                 "--iterations", "2", "--programs", "2", "--batch-size", "2", "--group-size", "2",
                 "--eval-problems", "2", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    policy, reflector = summary["usage"]["policy"], summary["usage"]["reflector"]
    # 2 iterations x 2 programs x 2 problems x 2 samples, plus 2 evaluations x 2 problems x 2 samples
    assert policy["calls"] == 16 + 8 and policy["completion_tokens"] > 0 and policy["cost_usd"] > 0
    assert reflector["calls"] > 0 and reflector["cost_usd"] > 0  # the same hosted model reflects
    assert summary["generated_tokens"] > 0  # counted from the provider's usage, without token ids
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(m["usage"]["policy"]["calls"] for m in metrics) == policy["calls"]  # per iteration, resumable
    for path in out.rglob("*"):
        if path.is_file():
            assert "sk-canary-policy" not in path.read_text(errors="replace"), path


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "rl"], "--sampler litellm cannot train weights"),
    (["--method", "espl"], "fix: use --method evolution or self-reflection"),
    (["--method", "evolution", "--policy-kwargs", '{"api_key": "x"}'], "must not hold API keys"),
    (["--method", "evolution", "--vllm-url", "http://127.0.0.1:1"], "need --sampler vllm"),
])
def test_impossible_api_policy_configs_are_one_clear_error(args, message, tmp_path, caplog):
    code = main(["run", "--env", "espl/Arithmetic-v0", "--sampler", "litellm", "--model", MODEL,
                 "--out", str(tmp_path / "x"), *args])
    assert code == 2 and message in caplog.text


def failing(error):
    """A sampler whose provider raises ``error`` after the retry layer."""
    sampler = LiteLLMSampler(MODEL, num_retries=0)

    async def raise_it(**kwargs):
        raise error

    sampler._router.acompletion = raise_it
    return sampler


def test_a_request_the_provider_rejects_is_one_empty_completion():
    sampler = failing(litellm.ContextWindowExceededError(message="too long", model=MODEL, llm_provider="openai"))
    [completion] = sampler.generate([QUESTION], SamplingParams(max_new_tokens=8))
    assert completion.text == "" and completion.metadata["error"] == "ContextWindowExceededError"
    assert sampler.usage.failures == 1


def test_a_broken_account_stops_the_run_with_the_fix():
    sampler = failing(litellm.AuthenticationError(message="bad key sk-leaked-123", model=MODEL, llm_provider="openai"))
    with pytest.raises(PolicyUnavailable, match="set its API key in the environment") as failure:
        sampler.generate([QUESTION], SamplingParams(max_new_tokens=8))
    assert "sk-leaked" not in str(failure.value)


def test_every_request_of_a_call_is_answered_in_order():
    sampler = LiteLLMSampler(MODEL, params={"mock_response": "fine"}, max_concurrency=3)
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(10)]
    completions = sampler.generate(conversations, SamplingParams(max_new_tokens=8))
    assert [c.text for c in completions] == ["fine"] * 10 and sampler.usage.calls == 10
