import random
import re

import litellm
import pytest
from gymnasium.utils.env_checker import check_env

from espl_bench.envs.games import TextArenaEnv
from espl_bench.envs.splits import SPLITS

GAMES = ["GuessTheNumber-v0", "TowerOfHanoi-v0", "Sudoku-v0", "Minesweeper-v0"]
SCRIPT = ["[10]", "[A C]", "[1 1 1]", "[3 3]", "no move here", "[5]", "[A B]", "[2 2 5]", "[0 0]",
          "Is it a person?", "[7]"]


class FakeGameMaster(litellm.CustomLLM):
    """Answers 'Yes' when the question names the secret word, else 'No'; records each call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def completion(self, *args, **kwargs):
        self.calls.append(kwargs)
        prompt = kwargs["messages"][-1]["content"]
        word = re.search(r"target word: (.+)\n", prompt).group(1)
        question = prompt.rsplit("Q: ", 1)[1].split("\nOptions:")[0]
        answer = "Yes" if word in question.lower() else "No"
        return litellm.completion(model="gpt-4o-mini", messages=kwargs["messages"], mock_response=answer)


@pytest.fixture
def gamemaster(monkeypatch):
    fake = FakeGameMaster()
    monkeypatch.setattr(litellm, "custom_provider_map", [{"provider": "fakegm", "custom_handler": fake}])
    return fake


def make(game, **kwargs):
    if game.startswith("TwentyQuestions"):
        kwargs = {"gamemaster": "fakegm/judge", **kwargs}
    return TextArenaEnv(game=game, **kwargs)


def play(env, split, index, script):
    out = [env.reset(options={"split": split, "index": index})]
    for action in script:
        out.append(env.step(action))
        if out[-1][2] or out[-1][3]:
            break
    return out


@pytest.mark.parametrize("game", GAMES + ["TwentyQuestions-v0"])
def test_passes_gymnasium_checker(game, gamemaster):
    check_env(make(game), skip_render_check=True)


@pytest.mark.parametrize("game", GAMES + ["TwentyQuestions-v0"])
def test_same_problem_same_episode_and_global_random_untouched(game, gamemaster):
    random.seed(99)
    before = random.getstate()
    for split, index in [("train", 3), ("test", 0)]:
        index %= make(game).split_size(split)
        a = play(make(game), split, index, SCRIPT)
        random.random()  # other code drawing in between must not change the game
        b = play(make(game), split, index, SCRIPT)
        assert a == b and len(a) > 1
        random.setstate(before)
    play(make(game), "train", 1 % make(game).split_size("train"), SCRIPT)
    assert random.getstate() == before


def _keys(env, split, n=None):
    size = env.split_size(split) if n is None else min(n, env.split_size(split))
    return {env.reset(options={"split": split, "index": i})[1]["content_key"] for i in range(size)}


@pytest.mark.parametrize("game", ["GuessTheNumber-v0", "TowerOfHanoi-v0", "Sudoku-v0", "Minesweeper-v0"])
def test_splits_are_disjoint_by_configuration(game):
    env = make(game, train_size=6, validation_size=4, test_size=4)
    keys = {split: _keys(env, split) for split in SPLITS}
    assert all(keys.values())
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not keys[a] & keys[b], (game, a, b)


def test_guess_the_number_deals_its_secrets_and_hanoi_its_disk_counts():
    guess = make("GuessTheNumber-v0", max_number=50)
    secrets = {split: {int(k.split()[1]) for k in _keys(guess, split)} for split in SPLITS}
    assert set().union(*secrets.values()) == set(range(1, 51)) and sum(map(len, secrets.values())) == 50
    env = make("TowerOfHanoi-v0")
    assert [env.split_size(s) for s in SPLITS] == [1, 1, 1]
    assert "4 disks" in env.reset(options={"split": "test", "index": 0})[0]
    assert "6 disks" in make("TowerOfHanoi-v0", num_disks=5).reset(options={"split": "test", "index": 0})[0]
    with pytest.raises(ValueError, match="split_disks"):
        make("TowerOfHanoi-v0", split_disks={"train": [3], "validation": [3], "test": [4]})
    custom = make("TowerOfHanoi-v0", split_disks={"train": [2, 3], "validation": [4], "test": [5]})
    assert custom.split_size("train") == 2 and "5 disks" in custom.reset(options={"split": "test", "index": 0})[0]


@pytest.mark.parametrize(("split", "index"), [("train", 0), ("train", 3), ("test", 4)])
def test_binary_search_wins_guess_the_number(split, index):
    env = make("GuessTheNumber-v0")
    obs, _ = env.reset(options={"split": split, "index": index})
    assert "[5]" in obs  # the prompt explains the move format
    low, high = 1, 20
    for _ in range(env.max_turns):
        guess = (low + high) // 2
        obs, reward, terminated, truncated, info = env.step(f"I guess [{guess}]")
        if terminated:
            break
        assert reward == 0.0 and info["valid"] and not truncated
        low, high = (guess + 1, high) if "higher" in obs else (low, guess - 1)
    assert (reward, terminated, info["success"], info["answer"]) == (1.0, True, True, str(guess))


def test_scripted_policies_win_hanoi_sudoku_minesweeper():
    hanoi = make("TowerOfHanoi-v0")
    hanoi.reset(options={"split": "train", "index": 0})  # 3 disks
    moves = ["A C", "A B", "C B", "A C", "B A", "B C", "A C"]
    results = [hanoi.step(f"[{m}]") for m in moves]
    assert all(r[1:4] == (0.0, False, False) for r in results[:-1])
    assert results[-1][1:4] == (1.0, True, False) and results[-1][4]["success"]

    sudoku = make("Sudoku-v0")
    obs, _ = sudoku.reset(options={"split": "train", "index": 2})
    board = [[int(c) if c.isdigit() else 0 for c in re.sub(r"^R\d|[ |]", "", line)]
             for line in obs.splitlines() if re.match(r"R\d ", line)][-9:]
    solution = sudoku.step("[0 0 0]")[4]["answer"].splitlines()  # out of range: invalid, not fatal
    empty = [(r, c) for r in range(9) for c in range(9) if board[r][c] == 0]
    for n, (r, c) in enumerate(empty, 1):
        obs, reward, terminated, truncated, info = sudoku.step(f"[{r + 1} {c + 1} {solution[r][c]}]")
        assert info["valid"] and terminated == (n == len(empty)) and not truncated
    assert (reward, info["success"]) == (1.0, True)

    mines = make("Minesweeper-v0")
    mines.reset(options={"split": "test", "index": 3})
    info = mines.step("[4 4]")[4]  # mines are laid after the first, always safe, move
    bombs = set(re.findall(r"\[\d+ \d+\]", info["answer"]))
    assert len(bombs) == 10
    for cell in (f"[{r} {c}]" for r in range(8) for c in range(8)):
        if cell not in bombs and not mines._game.revealed[int(cell[1])][int(cell[3])]:
            obs, reward, terminated, truncated, info = mines.step(cell)
            assert info["valid"]
            if terminated:
                break
    assert (reward, terminated, info["success"]) == (1.0, True, True)


@pytest.mark.parametrize(("game", "move"), [("GuessTheNumber-v0", "[99]"), ("TowerOfHanoi-v0", "[B C]"),
                                            ("Sudoku-v0", "no digits"), ("Minesweeper-v0", "[9 9]")])
def test_invalid_move_gets_no_reward_and_feedback(game, move):
    env = make(game)
    env.reset(options={"split": "train", "index": 0})
    obs, reward, terminated, truncated, info = env.step(move)
    assert (reward, terminated, truncated, info["valid"], info["success"]) == (0.0, False, False, False, False)
    assert "invalid move" in obs.lower() and "Reason:" in obs
    obs, reward, terminated, truncated, info = env.step(move)  # a second in a row ends the game
    assert (reward, terminated, info["valid"], info["success"]) == (0.0, True, False, False)
    assert "Game over. Invalid Move" in obs and info["metadata"]["invalid_moves"] == 2
    with pytest.raises(RuntimeError, match="over"):
        env.step(move)


def test_truncation_at_max_turns_with_and_without_partial_credit():
    for partial, expected in [(True, 2 / 21), (False, 0.0)]:
        env = make("Sudoku-v0", max_turns=3, partial_credit=partial)
        env.reset(options={"split": "train", "index": 0})
        solution = env.step("bad")[4]["answer"].splitlines()
        cells = [(r, c) for r in range(9) for c in range(9) if env._game.game_board[r][c] == 0][:2]
        steps = [env.step(f"[{r + 1} {c + 1} {solution[r][c]}]") for r, c in cells]
        assert [s[2:4] for s in steps] == [(False, False), (False, True)]
        _, reward, _, _, info = steps[-1]
        assert reward == pytest.approx(expected) and not info["success"] and "turn limit" in steps[-1][0]
    env = make("GuessTheNumber-v0", max_turns=2)
    env.reset(options={"split": "train", "index": 0})
    answer = int(env.step("[0]")[4]["answer"])
    last = env.step("[1]" if answer != 1 else "[2]")
    assert last[2:4] == (False, True) and 0 < last[1] < 1 and last[4]["valid"]
    invalid_last = make("TowerOfHanoi-v0", max_turns=1)
    invalid_last.reset(options={"split": "train", "index": 0})
    assert invalid_last.step("[C A]")[1:4] == (0.0, False, True)  # no partial credit for an invalid move


def test_twenty_questions_with_a_fake_gamemaster(gamemaster):
    env = make("TwentyQuestions-v0")
    obs, _ = env.reset(options={"split": "test", "index": 5})
    assert "square brackets" in obs
    _, reward, terminated, _, info = env.step("Is it a kind of animal?")
    word = info["answer"]
    assert (reward, terminated, info["valid"]) == (0.0, False, True)
    assert env.step(f"Is it a {word}?")[0] == "Yes" and env.step("Is it bigger than a car?")[0] == "No"
    obs, reward, terminated, truncated, info = env.step(f"My guess: [{word}]")
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    assert len(gamemaster.calls) == 3 and all(call.get("api_key") is None for call in gamemaster.calls)
    assert word in gamemaster.calls[0]["messages"][-1]["content"]


def test_twenty_questions_truncates_and_wrong_guess_loses(gamemaster):
    env = make("TwentyQuestions-v0", max_turns=3)
    env.reset(options={"split": "train", "index": 0})
    steps = [env.step("Is it alive?") for _ in range(3)]
    assert [s[1:4] for s in steps] == [(0.0, False, False)] * 2 + [(0.0, False, True)]
    env.reset(options={"split": "train", "index": 0})
    _, reward, terminated, _, info = env.step("[zzz]")
    assert (reward, terminated, info["success"], info["valid"]) == (0.0, True, False, True)


def test_mock_response_gamemaster_variants_and_bad_arguments():
    env = make("TwentyQuestions-v0-hardcore", gamemaster="openai/gpt-4o-mini",
               gamemaster_kwargs={"mock_response": "I don't know"})
    assert "Hardcore" in env.reset(options={"split": "train", "index": 0})[0]
    assert env.step("Is it big?")[0] == "I don't know"
    hanoi = make("TowerOfHanoi-v0-medium")
    assert hanoi.max_turns == 30 and "4 disks" in hanoi.reset()[0]
    assert "2 disks" in make("TowerOfHanoi-v0", num_disks=2).reset()[0]
    with pytest.raises(ValueError, match="needs gamemaster"):
        TextArenaEnv(game="TwentyQuestions-v0")
    with pytest.raises(ValueError, match="no game master"):
        TextArenaEnv(game="Sudoku-v0", gamemaster="openai/gpt-4o-mini")
    with pytest.raises(ValueError, match="unknown"):
        TextArenaEnv(game="Nope-v0")
