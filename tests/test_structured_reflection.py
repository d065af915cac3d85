"""Edit operations as structured output: the schema reaches litellm, the in-process reflector
honours it with a grammar, and providers without support fall back to parse-and-repair, counted."""

import json
from types import SimpleNamespace

import jsonschema
import litellm
import pytest

from espl_bench.agents.reflector import LiteLLMReflector, LocalModels
from espl_bench.agents.rollout import EpisodeId, EpisodeSpec, Rollout
from espl_bench.method.edits import CHARS_PER_WORD, ops_schema, ops_token_bound, parse_ops
from espl_bench.method.program import Program
from espl_bench.method.reflection import SUMMARY_STOP, SUMMARY_TOKENS, Mutation


def rollouts():
    def one(problem, sample, reward):
        spec = EpisodeSpec("sys", "train", problem, EpisodeId(program="p0", slot=0, problem=problem, sample=sample))
        return Rollout(spec=spec, problem_id=f"q{problem}", observation=f"What is {problem} + 2?", reward=reward,
                       messages=[*spec.first_messages(f"What is {problem} + 2?"), {"role": "assistant", "content": "5. " + "I added the units first and then the tens, carrying one. " * 6}],
                       success=reward >= 1, answer=str(problem + 2), turns=1)

    return [one(0, 0, 1.0), one(0, 1, 0.0), one(1, 0, 0.0), one(1, 1, 1.0)]


PARENT = Program("p0", {"G0": "Add carefully.", "G1": "Check the units digit."}, mu=26, sigma=4)


class Recording:
    """A litellm Router stand-in: records each request and answers from ``answer(request)``."""

    def __init__(self, answer):
        self.requests, self.answer = [], answer

    def completion(self, **request):
        self.requests.append(request)
        text = self.answer(request)
        if isinstance(text, Exception):
            raise text
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))],
                               usage=SimpleNamespace(prompt_tokens=10, completion_tokens=5), _hidden_params={})


def answer(request):
    if "Summarise" in request["messages"][-1]["content"]:
        return "It added the digits."
    return json.dumps({"ops": [{"op": "add", "text": "Line the digits up by place value before adding."}]})


def test_the_schema_reaches_litellm_for_an_api_reflector(monkeypatch):
    reflector = LiteLLMReflector("openai/gpt-4o-mini")  # litellm's model map: supports response_format
    router = Recording(answer)
    monkeypatch.setattr(reflector, "_router", lambda retries: router)
    assert reflector.honours_schema
    outcome = Mutation(reflector, max_ops=2, max_words=12)(PARENT, rollouts(), iteration=1)
    assert outcome.label == "revision" and outcome.paths == {"schema": 3}  # two critiques, one revision
    edits = [r for r in router.requests if "response_format" in r]
    # each edit call's budget is what its schema admits: two critique ops, four revision ops
    assert sorted(r["max_tokens"] for r in edits) == [ops_token_bound(2, 12)] * 2 + [ops_token_bound(4, 12)]
    summaries = [r for r in router.requests if "response_format" not in r]
    assert summaries and all(r["max_tokens"] == SUMMARY_TOKENS and r.get("stop") == SUMMARY_STOP for r in summaries)  # a summary's own budget
    critique = edits[0]["response_format"]
    assert critique["type"] == "json_schema" and critique["json_schema"]["strict"] is True
    schema = critique["json_schema"]["schema"]
    assert schema == ops_schema(allowed={"add", "modify"}, valid_ids={"G0", "G1"}, max_ops=2, max_words=12)
    items = schema["properties"]["ops"]
    assert items["maxItems"] == 2 and {k["properties"]["op"]["const"] for k in items["items"]["anyOf"]} == {"add", "modify"}
    modify = next(k for k in items["items"]["anyOf"] if k["properties"]["op"]["const"] == "modify")
    assert modify["properties"]["id"] == {"enum": ["G0", "G1"]}  # only the parent's ids can be named
    assert modify["properties"]["text"]["maxLength"] == 12 * CHARS_PER_WORD


def test_a_provider_without_structured_output_falls_back_and_is_counted(monkeypatch):
    reflector = LiteLLMReflector("mock-provider/model")  # unknown to litellm's map: no response_format
    router = Recording(lambda r: "```json\n" + json.dumps([{"op": "add", "text": "Carry the ten."}]) + "\n```"
                       if "Summarise" not in r["messages"][-1]["content"] else "summary")
    monkeypatch.setattr(reflector, "_router", lambda retries: router)
    assert not reflector.honours_schema
    outcome = Mutation(reflector, max_ops=2)(PARENT, rollouts(), iteration=1)
    assert outcome.label == "revision" and outcome.paths == {"fallback": 3}
    assert not any("response_format" in r for r in router.requests)


def test_a_provider_that_refuses_the_schema_is_asked_again_without_it(monkeypatch):
    reflector = LiteLLMReflector("openai/gpt-4o-mini")
    refusal = litellm.UnsupportedParamsError(message="response_format is not supported", model="x", llm_provider="x")
    router = Recording(lambda r: refusal if "response_format" in r else answer(r))
    monkeypatch.setattr(reflector, "_router", lambda retries: router)
    outcome = Mutation(reflector, max_ops=2, concurrency=1)(PARENT, rollouts(), iteration=1)
    assert outcome.label == "revision" and not reflector.honours_schema
    assert sum(outcome.paths.values()) == 3 and outcome.paths.get("fallback", 0) >= 2


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: --reflector-dtype auto on this CPU
def test_the_local_reflector_writes_schema_valid_json_even_from_a_random_model(tiny_model, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from espl_bench.agents.sampler import TransformersSampler

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=getattr(torch, dtype))
    sampler = TransformersSampler(model, AutoTokenizer.from_pretrained(tiny_model))
    models = LocalModels()
    try:
        reflector = LiteLLMReflector(models.serve("tiny", sampler), max_tokens=300, temperature=1.0)
        assert reflector.honours_schema
        schema = ops_schema(allowed={"add", "modify", "merge"}, valid_ids={"G0", "G1"}, max_ops=2, max_words=4)
        for k in range(6):
            text = reflector.complete([{"role": "user", "content": f"Propose edits, attempt {k}."}], schema=schema,
                                      max_tokens=300)
            data = json.loads(text)  # a random model's tokens, yet JSON of the schema
            jsonschema.validate(data, schema)
            assert parse_ops(text, allowed={"add", "modify", "merge"}, valid_ids={"G0", "G1"}, max_ops=2)
        outcome = Mutation(reflector, max_ops=2, max_words=4)(PARENT, rollouts(), iteration=1)
        edit_calls = [e for e in outcome.log if "path" in e]
        # every answer parses; a random model's texts are not advice, so the admission rule may
        # refuse them (counted by reason), never the parser
        assert edit_calls and all(e["path"] == "schema" and (e["valid"] or e.get("refused")) for e in edit_calls)
        assert outcome.paths == {"schema": len(edit_calls)}
        assert sum(outcome.rejected.values()) == sum(len(e.get("refused", [])) for e in outcome.log)
    finally:
        models.close()


@pytest.mark.parametrize("ids", [set(), {"G0"}, {"G0", "G1", "G2"}])
def test_the_schema_offers_only_kinds_the_parent_can_take(ids):
    schema = ops_schema(allowed={"add", "modify", "merge", "remove"}, valid_ids=ids, max_ops=3, max_words=10)
    items = schema["properties"]["ops"]["items"]
    kinds = {k["properties"]["op"]["const"] for k in items.get("anyOf", [items])}
    assert kinds == ({"add"} if not ids else {"add", "modify", "remove"} if len(ids) == 1 else {"add", "modify", "merge", "remove"})
    jsonschema.validate({"ops": [{"op": "add", "text": "Carry every ten."}]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"ops": [{"op": "add", "text": "Carry every ten."}] * 4}, schema)  # more than max_ops


def test_under_a_schema_a_refused_answer_is_retried_afresh_not_shown_back(monkeypatch):
    """A well-formed answer that copies the instructions is retried as a new attempt with the
    reason appended: a small model shown its own answer writes it again."""
    def copy_first(request):
        content = request["messages"][-1]["content"]
        if "Summarise" in content:
            return "It added the digits."
        if "could not be used" in content:
            return answer(request)
        return json.dumps({"ops": [{"op": "add", "text": "your edits"}]})

    reflector = LiteLLMReflector("openai/gpt-4o-mini")
    router = Recording(copy_first)
    monkeypatch.setattr(reflector, "_router", lambda retries: router)
    outcome = Mutation(reflector, max_ops=2, max_words=12)(PARENT, rollouts(), iteration=1)
    assert outcome.label == "revision" and outcome.copies >= 1 and outcome.repairs >= 1
    retries = [r for r in router.requests if "could not be used" in r["messages"][-1]["content"]]
    assert retries and all(len(r["messages"]) == 1 and "copies the example" in r["messages"][0]["content"]
                           and "response_format" in r for r in retries)
