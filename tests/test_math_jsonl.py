import json
import threading
from dataclasses import replace

import pytest
from gymnasium.utils.env_checker import check_env

import espl_bench.envs.math_jsonl as mj
from espl_bench.envs.math_jsonl import (
    PRESETS,
    SOURCES,
    DatasetUnavailable,
    HubSource,
    MathJSONLEnv,
    extract_final,
    load_preset,
    load_source,
    score_answer,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def paths(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"problem": f"What is {i} + {i}?", "answer": 2 * i} for i in range(8)])
    test = write_jsonl(tmp_path / "test.jsonl", [
        {"problem": "What is 1/4 + 1/4?", "answer": "\\frac{1}{2}"},
        {"problem": "What is 3/6?", "answer": 0.5},
        {"problem": "What is the square root of 2, squared, plus 1?", "answer": "3"},
    ])
    return train, test


@pytest.fixture(autouse=True)
def fresh_preset_cache():
    load_preset.cache_clear()
    yield
    load_preset.cache_clear()


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keep the datasets library's cache of local test files inside tmp_path."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_passes_gymnasium_checker(paths):
    check_env(MathJSONLEnv(*paths), skip_render_check=True)


def test_same_seed_same_episodes(paths):
    a, b = MathJSONLEnv(*paths), MathJSONLEnv(*paths)
    for seed in range(6):
        assert a.reset(seed=seed) == b.reset(seed=seed)
        assert a.step("so \\boxed{4}") == b.step("so \\boxed{4}")


@pytest.mark.parametrize(("reply", "reference", "reward"), [
    ("\\boxed{1/2}", "0.5", 1.0),
    ("the answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}", 1.0),
    ("<answer>0.50</answer>", "1/2", 1.0),
    ("<answer>\\boxed{34}</answer>", "34", 1.0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\sqrt{3}/2", 1.0),
    ("\\boxed{2}", "0.5", 0.0),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0.0),
    ("\\boxed{35}", "34", 0.0),
])
def test_math_verify_scoring(reply, reference, reward):
    assert score_answer(reply, reference)[:2] == (reward, True)


def test_extraction_takes_the_last_answer_and_balances_braces():
    assert extract_final("\\boxed{\\frac{1}{2}} no wait <answer>3</answer>") == ("3", "tag")
    assert extract_final("<answer>3</answer> no wait \\boxed{\\frac{1}{\\sqrt{2}}}") == ("\\frac{1}{\\sqrt{2}}", "boxed")
    assert extract_final("the answer is 5") == (None, "none")


def test_env_reward_contract(paths):
    env = MathJSONLEnv(*paths)
    observation, info = env.reset(options={"split": "test", "index": 1})
    assert "3/6" in observation and "\\boxed{}" in observation and info["problem_id"] == "jsonl/test/1"
    _, reward, terminated, truncated, info = env.step("Halving: \\boxed{\\frac{1}{2}}")
    assert (reward, terminated, truncated, info["success"], info["valid"]) == (1.0, True, False, True, True)
    assert info["answer"] == "0.5" and info["metadata"]["format"] == "boxed"
    env.reset(options={"split": "test", "index": 1})
    assert env.step("\\boxed{0.25}")[1] == 0.0
    env.reset(options={"split": "test", "index": 1})
    _, reward, _, _, info = env.step("it is 0.5")  # a bare number is not an extracted answer here
    assert reward == 0.0 and not info["valid"]


def test_scoring_errors_are_invalid_not_crashes(monkeypatch):
    reward, valid, details = score_answer("\\boxed{9^{9^{9^{9}}}}", "5", timeout_seconds=1)  # math-verify times out
    assert (reward, valid) == (0.0, False) and "Timeout" in details["error"]
    monkeypatch.setattr(mj, "_equivalent", lambda *a: (_ for _ in ()).throw(RecursionError("sympy blew up")))
    reward, valid, details = score_answer("\\boxed{1}", "1")
    assert (reward, valid) == (0.0, False) and "sympy blew up" in details["error"]


def test_scoring_works_off_the_main_thread():
    # math-verify's signal.alarm timeouts fail outside the main thread; the env must still score.
    results = []
    worker = threading.Thread(target=lambda: results.append(score_answer("\\boxed{1/2}", "0.5")))
    worker.start()
    worker.join()
    assert results[0][:2] == (1.0, True)


@pytest.mark.parametrize(("line", "message"), [
    ('{"problem": "1+1?"}', "line 2: missing field 'answer'"),
    ('{"answer": "2"}', "line 2: missing field 'problem'"),
    ('{"problem": "1+1?", "answer": ""}', "line 2: missing field 'answer'"),
    ('{"problem": "1+1?", "answer": 2', "line 2: not valid JSON"),
    ('["1+1?", 2]', "line 2: expected a JSON object"),
])
def test_bad_jsonl_is_a_clear_error(tmp_path, paths, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "2+2?", "answer": 4}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl, {message}"):
        MathJSONLEnv(str(bad), paths[1])


def test_bad_arguments_are_clear_errors(tmp_path, paths):
    with pytest.raises(ValueError, match="no such file"):
        MathJSONLEnv(str(tmp_path / "nope.jsonl"), paths[1])
    with pytest.raises(ValueError, match="both train_path and test_path"):
        MathJSONLEnv(train_path=paths[0])
    with pytest.raises(ValueError, match="unknown preset"):
        MathJSONLEnv(preset="gsm8k")
    with pytest.raises(ValueError, match="not both"):
        MathJSONLEnv(*paths, preset="hmmt")


def test_presets_name_known_sources():
    assert {"dapo100-aime25", "hmmt", "aime-beyondaime"} <= set(PRESETS)
    for preset in PRESETS.values():
        assert all(key in SOURCES for key in preset.train + preset.test)


def test_dapo_source_maps_columns_from_a_local_parquet(tmp_path, datasets_cache):
    import datasets

    rows = [{"prompt": "Find $x$ if $2x = 6$.", "solution": "3", "data_source": "math_dapo",
             "reward_model": {"ground_truth": "3", "style": "rule"}},
            {"prompt": "Compute $7 \\cdot 6$.", "solution": "42", "data_source": "math_dapo",
             "reward_model": {"ground_truth": "42", "style": "rule"}}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "dapo.parquet"))
    local = replace(SOURCES["dapo-math-17k"], path="parquet", name=None, data_files=str(tmp_path / "dapo.parquet"))
    assert load_source(local) == [{"problem": "Find $x$ if $2x = 6$.", "answer": "3"},
                                  {"problem": "Compute $7 \\cdot 6$.", "answer": "42"}]


def test_nested_columns_and_numeric_answers_from_a_local_json(tmp_path, datasets_cache):
    write_jsonl(tmp_path / "raw.jsonl", [{"prompt": [{"role": "user", "content": " Solve 1+1. "}],
                                          "reward_model": {"ground_truth": 2.0}}])
    source = HubSource("json", "train", problem="prompt.0.content", answer="reward_model.ground_truth",
                       data_files=str(tmp_path / "raw.jsonl"))
    assert load_source(source) == [{"problem": "Solve 1+1.", "answer": "2"}]
    with pytest.raises(ValueError, match="no column 'question'.*SOURCES"):
        load_source(replace(source, problem="question"))


def fake_hub(tables):
    import datasets

    def load(path, name, *, split, data_files):
        return datasets.Dataset.from_list(tables[path])
    return load


def test_preset_takes_a_seeded_shuffle_and_keeps_test_problems_out_of_train(monkeypatch):
    aime = [{"id": i, "problem": f"AIME 2025 problem {i}", "answer": str(i)} for i in range(30)]
    dapo = [{"prompt": f"DAPO problem {i}", "solution": str(i)} for i in range(150)]
    dapo += [dapo[0], {"prompt": "AIME 2025 problem 3", "solution": "3"}]  # a duplicate and a leaked test item
    monkeypatch.setattr(mj, "_load_dataset", fake_hub({"math-ai/aime25": aime, "open-r1/DAPO-Math-17k-Processed": dapo}))
    env = MathJSONLEnv(preset="dapo100-aime25")
    assert (env.split_size("train"), env.split_size("test")) == (100, 30)
    train = [env.reset(options={"split": "train", "index": i})[0] for i in range(100)]
    assert len(set(train)) == 100 and all(t.startswith("DAPO problem") for t in train)
    assert train[:5] != [f"DAPO problem {i}" for i in range(5)]  # shuffled, not the first 100
    assert train == [MathJSONLEnv(preset="dapo100-aime25").reset(options={"split": "train", "index": i})[0]
                     for i in range(100)]
    other_seed = load_preset("dapo100-aime25", 1)["train"]
    assert [r["problem"] for r in other_seed] != [t.split("\n")[0] for t in train]
    env.reset(options={"split": "test", "index": 7})
    assert env.step("\\boxed{7}")[1] == 1.0


def test_unreachable_hub_is_one_clear_error(monkeypatch):
    def offline(path, name, *, split, data_files):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(mj, "_load_dataset", offline)
    env = MathJSONLEnv(preset="aime-beyondaime")  # construction never touches the hub
    with pytest.raises(DatasetUnavailable, match="ByteDance-Seed/BeyondAIME.*unreachable.*train_path=.*test_path="):
        env.reset()
