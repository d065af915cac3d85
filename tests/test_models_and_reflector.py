import pytest

from espl_bench.agents.reflector import (
    LiteLLMReflector,
    LocalModels,
    ReflectorCallError,
)
from espl_bench.agents.sampler import SamplingParams, TransformersSampler
from espl_bench.errors import ModelNotFound, ReflectorUnavailable
from espl_bench.training.models import cache_root, resolve_model


def test_cache_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "espl-bench"


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFound, match="config.json"):
        resolve_model(str(tmp_path))


def test_missing_path_is_refused():
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model("./no-such-model")


def test_local_folder_and_hub_id_pass_through(tiny_model):
    assert resolve_model(str(tiny_model)) == str(tiny_model)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def tiny_sampler(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return TransformersSampler(AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model))


def test_sampler_returns_ids_and_logprobs_per_conversation(tiny_sampler):
    conversations = [[{"role": "user", "content": f"hello {i}"}] for i in range(3)]
    out = tiny_sampler.generate(conversations, SamplingParams(max_new_tokens=5, seed=1))
    assert len(out) == 3
    for conversation, completion in zip(conversations, out):
        assert completion.prompt_ids == tiny_sampler.encode(conversation)
        assert 1 <= len(completion.completion_ids) <= 5
        assert len(completion.logprobs) == len(completion.completion_ids)
        assert all(lp <= 0 for lp in completion.logprobs)
    again = tiny_sampler.generate(conversations, SamplingParams(max_new_tokens=5, seed=1))
    assert [c.completion_ids for c in again] == [c.completion_ids for c in out]  # seeded


def test_local_model_is_reachable_through_litellm_offline_and_scoped_to_its_run(tiny_sampler):
    import litellm

    before = list(litellm.custom_provider_map)
    first, second = LocalModels(), LocalModels()
    try:
        model = first.serve("tiny-test", tiny_sampler)
        other = second.serve("tiny-test", tiny_sampler)
        assert model != other  # two runs in one process never share a served model
        reflector = LiteLLMReflector(model, max_tokens=6)
        reflector.check()
        text = reflector.complete([{"role": "user", "content": "Say OK"}])
        assert isinstance(text, str) and reflector.calls == 2 and reflector.tokens > 0
    finally:
        first.close()
        second.close()
    assert litellm.custom_provider_map == before  # nothing of ours stays registered
    with pytest.raises(ReflectorCallError):
        LiteLLMReflector(model, max_tokens=6, num_retries=0).complete([{"role": "user", "content": "Say OK"}])


def test_unreachable_reflector_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    reflector = LiteLLMReflector("openai/gpt-4o-mini", num_retries=0, timeout=5)
    with pytest.raises(ReflectorUnavailable, match="fix"):
        reflector.check()


def test_reflector_dtype_auto_follows_the_cpu(monkeypatch):
    import torch

    from espl_bench.training.policy import reflector_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert reflector_dtype("auto") == "bfloat16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert reflector_dtype("auto") == "float32"  # emulated bfloat16 would be slower than float32
    assert reflector_dtype("bfloat16") == "bfloat16" and reflector_dtype("float32") == "float32"


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_local_reference_decodes_in_its_dtype_and_reuses_a_frozen_policy_of_that_dtype(tiny_model, tiny_sampler,
                                                                                            dtype):
    import torch

    from espl_bench.training.policy import _local_reference

    reference, closers = _local_reference(str(tiny_model), tiny_sampler, dtype)  # a float32 frozen policy
    try:
        model, _ = reference()
        served = closers[0].__self__.batcher("reference").sampler  # closers: [LocalModels.close]
        assert served.model.dtype == getattr(torch, dtype)
        assert (served is tiny_sampler) == (dtype == "float32")  # a copy only when the dtype differs
        reflector = LiteLLMReflector(model, max_tokens=4)
        reflector.complete([{"role": "user", "content": "Say OK"}])  # decodes through litellm in that dtype
        assert reflector.failures == 0 and reflector.usage.completion_tokens > 0
    finally:
        for close in closers:
            close()


def test_a_row_budget_gives_the_reply_a_call_of_that_budget_gives(tiny_sampler):
    conversations = [[{"role": "user", "content": f"Say something, {k}."}] for k in range(3)]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    seeds = [11, 12, 13]
    together = tiny_sampler.generate(conversations, params, seeds=seeds, budgets=[3, 12, 7])
    assert len(together[0].completion_ids) == 3 and together[0].finish_reason == "length"  # a random model runs on
    for conversation, seed, budget, completion in zip(conversations, seeds, [3, 12, 7], together):
        alone = tiny_sampler.generate([conversation], SamplingParams(max_new_tokens=budget, temperature=1.0, seed=3),
                                      seeds=[seed])[0]
        assert completion.completion_ids == alone.completion_ids and len(completion.completion_ids) <= budget
        assert completion.finish_reason == alone.finish_reason
        assert completion.logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_the_local_reflector_decodes_concurrent_requests_of_different_budgets_in_one_generate(tiny_sampler):
    import threading

    calls = []
    generate = tiny_sampler.generate

    def counting(*args, **kwargs):
        calls.append(kwargs.get("budgets"))
        return generate(*args, **kwargs)

    models = LocalModels()
    try:
        tiny_sampler.generate = counting
        model = models.serve("tiny-budgets", tiny_sampler)
        models.batcher("tiny-budgets").wait_s = 1.0  # both requests surely arrive in one batch
        replies = {}

        def ask(tokens):
            replies[tokens] = LiteLLMReflector(model, max_tokens=tokens).complete([{"role": "user", "content": "Hi"}])

        threads = [threading.Thread(target=ask, args=(n,)) for n in (4, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(replies) == {4, 9} and len(calls) == 1 and sorted(calls[0]) == [4, 9]
    finally:
        del tiny_sampler.generate
        models.close()
