import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from espl_bench.method.edits import ReflectionParseError, parse_ops
from espl_bench.method.program import EditOp, apply_edits

IDS = {"G0", "G1", "G2"}
ALL = {"add", "modify", "merge", "remove"}


def parse(text, allowed=ALL, max_ops=5):
    return parse_ops(text, allowed=allowed, valid_ids=IDS, max_ops=max_ops)


def test_parses_fenced_list():
    ops = parse('Sure!\n```json\n[{"op": "add", "text": "Check signs."}, {"op": "modify", "id": "G1", "text": "Carry every ten."}]\n```')
    assert ops == [EditOp(op="add", text="Check signs."), EditOp(op="modify", id="G1", text="Carry every ten.")]


def test_parses_bare_list_and_single_object():
    assert parse('[{"op": "remove", "id": "G2"}]') == [EditOp(op="remove", id="G2")]
    assert parse('```json\n{"op": "add", "text": "Show each step."}\n```') == [EditOp(op="add", text="Show each step.")]


def test_last_valid_fence_wins():
    text = '```json\n[{"op": "add", "text": "a first draft"}]\n```\nFinal:\n```json\n[{"op": "add", "text": "the final version"}]\n```'
    assert parse(text)[0].text == "the final version"


MALFORMED = {
    "empty": "",
    "whitespace": "   \n ",
    "no json": "I think the prompt is fine as it is.",
    "truncated json": '```json\n[{"op": "add", "text": "Check the',
    "not a list of ops": '```json\n["add a principle"]\n```',
    "unknown operation": '[{"op": "delete", "id": "G0"}]',
    "missing id": '[{"op": "modify", "id": "G9", "text": "x"}]',
    "modify without id": '[{"op": "modify", "text": "x"}]',
    "merge of one": '[{"op": "merge", "ids": ["G0"], "text": "x"}]',
    "merge of missing": '[{"op": "merge", "ids": ["G0", "G7"], "text": "x"}]',
    "empty add": '[{"op": "add", "text": "  "}]',
    "a word, not a principle": '[{"op": "add", "text": "G0"}]',
    "empty list": "```json\n[]\n```",
    "thousands of ops": json.dumps([{"op": "add", "text": f"p{i}"} for i in range(5000)]),
    "several broken fences": "```json\n[{\n```\n```json\n{]\n```",
    "non-utf8 garbage": b"\xff\xfe[{\x00".decode("utf-8", errors="replace"),
    "not a string": None,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_answers_raise_parse_error(name):
    with pytest.raises(ReflectionParseError):
        parse(MALFORMED[name])


def test_disallowed_operation_is_rejected():
    with pytest.raises(ReflectionParseError, match="not allowed"):
        parse('[{"op": "remove", "id": "G0"}]', allowed={"add", "modify"})


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_fuzzed_text_gives_valid_ops_or_parse_error(text):
    try:
        ops = parse(text)
    except ReflectionParseError:
        return
    assert 1 <= len(ops) <= 5
    assert all(op.op in ALL for op in ops)


def test_apply_edits_add_modify_merge_remove_and_renumber():
    principles = {"G0": "a", "G1": "b", "G2": "c", "G3": "d"}
    ops = [EditOp(op="modify", id="G0", text="A"), EditOp(op="merge", ids=["G1", "G2"], text="BC"),
           EditOp(op="remove", id="G3"), EditOp(op="add", text="E")]
    assert apply_edits(principles, ops, max_words=32) == {"G0": "A", "G1": "BC", "G2": "E"}
    assert principles == {"G0": "a", "G1": "b", "G2": "c", "G3": "d"}  # the parent is untouched


def test_apply_edits_caps_words():
    out = apply_edits({}, [EditOp(op="add", text=" ".join(["w"] * 50))], max_words=32)
    assert len(out["G0"].split()) == 32


def test_a_merge_that_names_an_id_twice_merges_it_once():
    # seen from a real reflector (vLLM sampler run in CI): {"op": "merge", "ids": ["G1", "G2", "G2"], ...}
    principles = {"G0": "a", "G1": "b", "G2": "c"}
    ops = [EditOp(op="merge", ids=["G1", "G2", "G2"], text="BC")]
    assert apply_edits(principles, ops, max_words=32) == {"G0": "a", "G1": "BC"}


_IDS = st.sampled_from(["G0", "G1", "G2", "G9"])
_OPS = st.one_of(
    st.builds(EditOp, op=st.just("add"), text=st.text(min_size=1, max_size=12)),
    st.builds(EditOp, op=st.sampled_from(["modify", "remove"]), id=_IDS, text=st.text(min_size=1, max_size=12)),
    st.builds(EditOp, op=st.just("merge"), ids=st.lists(_IDS, min_size=2, max_size=4), text=st.text(min_size=1, max_size=12)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_OPS, max_size=6))
def test_apply_edits_never_raises_on_ops_over_the_parents_ids(ops):
    out = apply_edits({"G0": "a", "G1": "b", "G2": "c"}, ops, max_words=32)
    assert list(out) == [f"G{i}" for i in range(len(out))]
