import json
import re

import pytest
from gymnasium.envs.registration import load_env_creator
from gymnasium.utils.env_checker import check_env

from espl_bench.envs.search_qa import RELATIONS, SearchQAEnv, build_world

SMALL = {"corpus_size": 300, "train_size": 60, "test_size": 30}


def call(name: str, **arguments) -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


def doc_ids(search_output: str) -> list[str]:
    return re.findall(r"\[(doc-\d+)\]", search_output)


def test_entry_point_loads_and_env_passes_gymnasium_checker():
    assert load_env_creator("espl_bench.envs.search_qa:SearchQAEnv") is SearchQAEnv
    check_env(SearchQAEnv(), skip_render_check=True)


def test_same_seed_same_episodes():
    a, b = SearchQAEnv(**SMALL), SearchQAEnv(**SMALL)
    for seed in range(5):
        assert a.reset(seed=seed) == b.reset(seed=seed)
        start = a._problem.metadata["start"]
        for action in (call("search", query=start), call("open", doc_id="doc-0003"), "hmm", "<answer>x</answer>"):
            assert a.step(action) == b.step(action)


def test_generator_is_deterministic_per_seed_and_differs_across_seeds():
    build = build_world.__wrapped__  # bypass the cache so the world is really rebuilt
    one, again, other = build(2, 2, 300, 60, 30, 0), build(2, 2, 300, 60, 30, 0), build(2, 2, 300, 60, 30, 1)
    assert one.docs == again.docs and one.splits == again.splits
    assert one.docs != other.docs and one.splits["test"] != other.splits["test"]


@pytest.mark.parametrize("hops", [2, 3, 4])
def test_train_and_test_are_disjoint(hops):
    env = SearchQAEnv(hops=hops, **SMALL)
    train = [env.problem("train", i) for i in range(env.split_size("train"))]
    test = [env.problem("test", i) for i in range(env.split_size("test"))]
    assert (len(train), len(test)) == (60, 30)
    assert not {p.metadata["start"] for p in train} & {p.metadata["start"] for p in test}
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(p.metadata["hops"] == hops == len(p.metadata["chain"]) for p in train + test)


@pytest.mark.parametrize("hops", [2, 3])
def test_oracle_following_the_chain_solves_every_test_question(hops):
    """The oracle reads each hop's fact from the opened text, so the corpus alone answers it."""
    env = SearchQAEnv(hops=hops, **SMALL)
    for index in range(30):
        env.reset(options={"split": "test", "index": index})
        meta, current = env._problem.metadata, env._problem.metadata["start"]
        env.step(call("search", query=current))
        for doc_id, relation in zip(meta["chain"], meta["relations"]):
            text, reward, terminated, _, info = env.step(call("open", doc_id=doc_id))
            assert (reward, terminated, info["valid"]) == (0.0, False, True)
            prefix = RELATIONS[relation][2].split("{o}")[0].format(s=current)
            current = re.search(re.escape(prefix) + r"(.+?)\.", text).group(1)
        _, reward, terminated, truncated, info = env.step(f"<answer>{current}</answer>")
        assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
        assert info["metadata"]["exact_match"] is True and info["metadata"]["f1"] == 1.0


def test_search_for_the_key_entity_finds_the_first_hop_doc():
    env = SearchQAEnv()
    hits = []
    for index in range(env.split_size("test")):
        problem = env.problem("test", index)
        found = doc_ids(env.search(problem.metadata["start"]))
        assert 1 <= len(found) <= 3
        hits.append(problem.metadata["chain"][0] in found)
    assert sum(hits) / len(hits) >= 0.8


def test_open_unknown_id_and_empty_search_are_error_strings():
    env = SearchQAEnv(**SMALL)
    env.reset(options={"split": "test", "index": 0})
    obs, reward, terminated, _, info = env.step(call("open", doc_id="doc-9999"))
    assert obs.startswith("Error: no document") and reward == 0.0 and not terminated and info["valid"]
    assert env.search("?!").startswith("No results") and env.search("zzqqxx").startswith("No results")
    assert env.open("[doc-0000]") == env.open("doc-0000") and not env.open("doc-0000").startswith("Error")


def test_invalid_actions_earn_nothing_and_the_turn_limit_truncates():
    env = SearchQAEnv(max_turns=3, **SMALL)
    env.reset(options={"split": "test", "index": 0})
    for turn in range(1, 4):
        obs, reward, terminated, truncated, info = env.step("I believe it is somewhere north.")
        assert (reward, terminated, info["valid"], info["success"]) == (0.0, False, False, False)
        assert obs.startswith("Invalid action") and truncated == (turn == 3)


def test_partial_answers_get_f1_credit_below_one_without_success():
    env = SearchQAEnv(**SMALL)
    index = next(i for i in range(30) if len(env.problem("test", i).answer.split()) == 2)
    gold = env.problem("test", index).answer
    first, second = gold.split()
    for answer, expected in ((second, 2 / 3), (f"{second} {first}", 0.99), (f"{gold} town", 0.8)):
        env.reset(options={"split": "test", "index": index})
        _, reward, terminated, _, info = env.step(f"<answer>{answer}</answer>")
        assert 0.0 < reward < 1.0 and reward == pytest.approx(expected) and terminated
        assert info["success"] is False and info["metadata"]["exact_match"] is False
    env.reset(options={"split": "test", "index": index})
    _, reward, _, _, info = env.step(f"<answer>The {gold.upper()}!</answer>")  # case, article, punctuation
    assert reward == 1.0 and info["success"]
    env.reset(options={"split": "test", "index": index})
    assert env.step("<answer>Nobody</answer>")[1] == 0.0


def test_hops_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="hops"):
        SearchQAEnv(hops=5)
    with pytest.raises(ValueError, match="corpus_size"):
        SearchQAEnv(corpus_size=20, train_size=500, test_size=100)
