"""Structured decoding that feeds the grammar's forced tokens in one forward (agents/fast_forward.py):
the same answers as token-by-token decoding, in fewer forward calls, independent of the batch."""

import json

import jsonschema
import pytest

from espl_bench.agents.sampler import SamplingParams, TransformersSampler
from espl_bench.method.edits import ops_schema

SCHEMA = ops_schema(allowed={"add", "modify"}, valid_ids={"G0", "G1"}, max_ops=2, max_words=4)
ASKS = [[{"role": "user", "content": "Propose edits."}],
        [{"role": "user", "content": "Propose edits for a much longer prompt that pads the batch: " + "more " * 30}],
        [{"role": "user", "content": "Another request."}]]


@pytest.fixture(scope="module")
def sampler(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return TransformersSampler(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                               AutoTokenizer.from_pretrained(tiny_model))


def _forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    return calls, handle


def _generate(sampler, fast: bool, asks, params, seeds):
    sampler.fast_forward = fast
    try:
        return sampler.generate(asks, params, seeds=seeds, schemas=[SCHEMA] * len(asks))
    finally:
        sampler.fast_forward = True


def test_greedy_answers_equal_token_by_token_decoding_in_fewer_forwards(sampler):
    params = SamplingParams(max_new_tokens=120, temperature=0.0, top_p=1.0, seed=0, repetition_penalty=1.2)
    calls, handle = _forwards(sampler.model)
    try:
        fast = _generate(sampler, True, ASKS, params, [1, 2, 3])
        fast_calls = len(calls)
        calls.clear()
        slow = _generate(sampler, False, ASKS, params, [1, 2, 3])
        slow_calls = len(calls)
    finally:
        handle.remove()
    for f, s in zip(fast, slow):
        assert f.text == s.text  # the same tokens: a forced token is the only one greedy could pick
        jsonschema.validate(json.loads(f.text), SCHEMA)
        assert len(f.completion_ids) == len(f.logprobs) and f.finish_reason == "stop"
    # token by token: a forward per token of the longest answer (plus its EOS); here far fewer
    assert slow_calls >= max(len(s.completion_ids) for s in slow)
    assert fast_calls < 0.8 * slow_calls


def test_a_sampled_answer_does_not_depend_on_its_batch(sampler):
    params = SamplingParams(max_new_tokens=120, temperature=1.0, top_p=0.95, seed=0)
    alone = _generate(sampler, True, ASKS[:1], params, [7])[0]
    batched = _generate(sampler, True, ASKS, params, [7, 8, 9])
    assert alone.text == batched[0].text and alone.completion_ids == batched[0].completion_ids
    for completion in batched:
        jsonschema.validate(json.loads(completion.text), SCHEMA)


def test_a_budget_ends_a_row_with_length_and_forced_tokens_count_toward_it(sampler):
    params = SamplingParams(max_new_tokens=120, temperature=1.0, top_p=0.95, seed=0)
    sampler.fast_forward = True
    out = sampler.generate(ASKS[:2], params, seeds=[3, 4], schemas=[SCHEMA, SCHEMA], budgets=[6, 120])
    assert len(out[0].completion_ids) == 6 and out[0].finish_reason == "length"
    assert out[0].text.startswith('{"ops": [')  # the forced opening, cut at the budget
    jsonschema.validate(json.loads(out[1].text), SCHEMA)
