"""Plain Gymnasium environments, written as a user would (no espl-bench import), run end to end.

A package that registers text envs with ``gym.register`` is installed offline next to espl-bench
and driven through ``espl-bench envs``, ``envs check`` and ``run``: its splits come from disjoint
reset-seed ranges, its ``max_episode_steps`` is the turn limit, and an env that does not fit the
text contract is one clear line before any model loads.
"""

import json
import subprocess
import sys
import textwrap

import pytest

PACKAGE = '''
"""Text tasks for Gymnasium; they know nothing of espl-bench."""
import string

import gymnasium as gym
from gymnasium import spaces


def text():
    return spaces.Text(max_length=100_000, charset=string.printable)


class Echo(gym.Env):
    """Say a number back (one turn)."""

    def __init__(self):
        self.observation_space, self.action_space = text(), text()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n = int(self.np_random.integers(10_000))
        return f"Reply with the number {self.n}.", {}

    def step(self, action):
        return "", float(str(self.n) in action), True, False, {}


class Walk(gym.Env):
    """Walk on forever; the registration's max_episode_steps ends it."""

    def __init__(self):
        self.observation_space, self.action_space = text(), text()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return "You are at step 0. Say where to go.", {}

    def step(self, action):
        self.steps += 1
        return f"You are at step {self.steps}.", 0.1, False, False, {}


class Pixels(Echo):
    """Not a text env."""

    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Box(0, 1, shape=(2,))


class Broken(Echo):
    def reset(self, *, seed=None, options=None):
        raise RuntimeError("the level file is missing")


gym.register(id="Echo-v0", entry_point=Echo)
gym.register(id="Walk-v0", entry_point=Walk, max_episode_steps=3)
gym.register(id="Pixels-v0", entry_point=Pixels)
gym.register(id="Broken-v0", entry_point=Broken)
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "plain-text-tasks"
version = "0.1.0"
dependencies = ["gymnasium>=1.0"]

# metadata only (nothing here imports espl-bench): `espl-bench envs` lists what the module registers
[project.entry-points."espl_bench.envs"]
plain_text_tasks = "plain_text_tasks"

[tool.setuptools]
packages = ["plain_text_tasks"]
'''


def cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "espl_bench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def plain_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain") / "plain-text-tasks"
    (root / "plain_text_tasks").mkdir(parents=True)
    (root / "plain_text_tasks" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    (root / "pyproject.toml").write_text(PYPROJECT)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(root)]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    yield root
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "plain-text-tasks"], capture_output=True)


SMALL = ["--iterations", "1", "--programs", "2", "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "6",
         "--reflector-max-tokens", "16", "--eval-problems", "2", "--eval-samples", "1"]


def test_plain_envs_are_listed_and_checked(plain_package):
    code, out, _ = cli("envs", "--json")
    listed = {row["id"]: row for row in json.loads(out)}
    assert listed["Echo-v0"]["source"] == "plugin:plain_text_tasks" and listed["Walk-v0"]["max_turns"] == 3
    code, out, err = cli("envs", "check", "plain_text_tasks:Echo-v0")
    assert code == 0 and "ok" in out, err[-2000:]
    assert "from its own seed range" in out and "train 10000" in out


def test_a_plain_single_turn_env_runs_end_to_end(plain_package, tiny_model, tmp_path):
    out = tmp_path / "echo"
    code, stdout, err = cli("run", "--env", "plain_text_tasks:Echo-v0", "--method", "rl", "--model", str(tiny_model),
                            "--out", str(out), *SMALL)
    assert code == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["problems"] == "seeds" and summary["splits"]["test"]["size"] == 1000
    assert summary["test"]["problems"] == 2 and summary["breakdown"]["cells"]
    rollouts = [json.loads(line) for line in (out / "iterations" / "000001" / "rollouts.jsonl").read_text().splitlines()]
    assert {r["spec"]["split"] for r in rollouts} == {"train"} and all(r["turns"] == 1 for r in rollouts)


def test_a_plain_multi_turn_env_ends_at_its_max_episode_steps(plain_package, tiny_model, tmp_path):
    out = tmp_path / "walk"
    script = tmp_path / "script.json"
    script.write_text('[{"contains": "", "answer": "no edits"}]')
    code, _, err = cli("run", "--env", "plain_text_tasks:Walk-v0", "--method", "evolution", "--model", str(tiny_model),
                       "--reflector", f"script:{script}", "--out", str(out), *SMALL)
    assert code == 0, err[-3000:]
    rollouts = [json.loads(line) for line in (out / "iterations" / "000001" / "rollouts.jsonl").read_text().splitlines()]
    assert rollouts and all(r["turns"] == 3 and r["truncated"] for r in rollouts)
    assert all(r["reward"] == pytest.approx(0.1) for r in rollouts)


@pytest.mark.parametrize("env_id, says", [("plain_text_tasks:Pixels-v0", "observation_space Box"),
                                          ("plain_text_tasks:Broken-v0", "failed to reset to its first train problem")])
def test_an_env_that_does_not_fit_is_one_clear_line_before_any_model_loads(plain_package, tmp_path, env_id, says):
    out = tmp_path / "unfit"
    code, _, err = cli("run", "--env", env_id, "--model", "no/such-model", "--out", str(out))
    assert code == 2 and says in err and "fix:" in err and "Traceback" not in err
    assert "no/such-model" not in err  # refused before the model was looked up
    assert not (out / "run.json").exists()
    code, stdout, err = cli("envs", "check", env_id)
    assert code == 1 and "FAILED" in stdout and says in err and "Traceback" not in err
