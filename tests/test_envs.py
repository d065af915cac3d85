import pytest
from gymnasium.utils.env_checker import check_env

from espl_bench.envs.answers import extract_answer
from espl_bench.envs.registry import make_env
from espl_bench.errors import EnvNotFound


def test_env_passes_gymnasium_checker():
    check_env(make_env("espl/Arithmetic-v0"), skip_render_check=True)


@pytest.mark.parametrize("env_id", ["espl/Arithmetic-v0", "rg/chain_sum-v0"])
def test_same_seed_same_episodes(env_id):
    a, b = make_env(env_id), make_env(env_id)
    for seed in range(10):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        assert (obs_a, info_a) == (obs_b, info_b)
        assert a.step("<answer>3</answer>") == b.step("<answer>3</answer>")


def test_train_and_test_splits_are_disjoint():
    env = make_env("espl/Arithmetic-v0")
    train = {env.reset(options={"split": "train", "index": i})[0] for i in range(env.unwrapped.split_size("train"))}
    test = {env.reset(options={"split": "test", "index": i})[0] for i in range(env.unwrapped.split_size("test"))}
    assert len(test) > 0 and not train & test


def test_reward_contract():
    env = make_env("espl/Arithmetic-v0")
    env.reset(options={"split": "test", "index": 0})
    answer = env.unwrapped._entry["answer"]
    obs, reward, terminated, truncated, info = env.step(f"so <answer>{answer}</answer>")
    assert (reward, terminated, truncated, info["success"], info["valid"]) == (1.0, True, False, True, True)
    assert info["answer"] == answer and info["metadata"]["format"] == "tag"
    env.reset(options={"split": "test", "index": 0})
    _, reward, _, _, info = env.step(f"<answer>{int(answer) + 1}</answer>")
    assert reward == 0.0 and not info["success"]  # no partial credit for a wrong answer
    env.reset(options={"split": "test", "index": 0})
    _, reward, _, _, info = env.step("I do not know")
    assert reward == 0.0 and not info["valid"]


def test_bad_index_and_split_are_clear_errors():
    env = make_env("espl/Arithmetic-v0")
    with pytest.raises(ValueError, match="outside"):
        env.reset(options={"split": "test", "index": 10_000})
    with pytest.raises(ValueError, match="unknown split"):
        env.reset(options={"split": "dev"})


def test_unknown_env_is_a_clear_error():
    with pytest.raises(EnvNotFound, match="fix"):
        make_env("espl/Nope-v0")


@pytest.mark.parametrize(("text", "expected"), [
    ("x <answer> 12 </answer>", ("12", "tag")), ("\\boxed{-3}", ("-3", "boxed")),
    ("it is 4, no 5", ("5", "last-number")), ("no idea", (None, "none")),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected
