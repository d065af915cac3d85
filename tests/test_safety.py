"""Safety properties of the code base: no unsafe loading, no secrets leaking."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["envs", "agents", "espl", "leaderboards", "benchmarks"]
CANARY = "sk-canary-1b2c3d4e5f6a7b8c9d0e"


def python_files():
    for package in PACKAGES:
        yield from (ROOT / package).rglob("*.py")


def unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if owner in ("pickle", "cPickle", "dill", "marshal") and name in ("load", "loads"):
            found.append(f"{owner}.{name}")
        elif owner == "torch" and name == "load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append("torch.load without weights_only=True")
        elif owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
            found.append(f"yaml.{name}")
        elif isinstance(func, ast.Name) and func.id in ("eval", "exec"):
            found.append(func.id)
    return found


def test_no_unsafe_loading_or_eval_anywhere():
    offenders = {str(p.relative_to(ROOT)): unsafe_calls(ast.parse(p.read_text())) for p in python_files()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_scanner_catches_what_it_should():
    bad = "import pickle, torch, yaml\npickle.loads(b'')\ntorch.load('x')\nyaml.load(s)\neval('1')\nexec('x=1')\n"
    assert len(unsafe_calls(ast.parse(bad))) == 5
    good = "import torch, yaml\ntorch.load('x', weights_only=True)\nyaml.safe_load(s)\n"
    assert unsafe_calls(ast.parse(good)) == []


def test_hijacked_litellm_releases_are_excluded():
    text = (ROOT / "pyproject.toml").read_text()
    assert "!=1.82.7" in text and "!=1.82.8" in text


# A closed port on loopback: the keyed provider fails at once, and nothing leaves the machine.
CLOSED = "http://127.0.0.1:9/v1"


def test_api_key_canary_never_leaks(tmp_path, tiny_model):
    """A keyed reflector that fails, debug logging, a config dump: the key appears nowhere."""
    import os

    out = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": CANARY, "OPENAI_BASE_URL": CLOSED, "OPENAI_API_BASE": CLOSED,
           "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run(
        [sys.executable, "-m", "espl_bench", "--verbose", "run", "--env", "espl/Arithmetic-v0", "--method", "evolution",
         "--reflector", "openai/gpt-4o-mini", "--reflector-timeout", "3", "--model", str(tiny_model),
         "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "unreachable" in proc.stderr
    assert not (out / "run.json").exists()  # a run that cannot start leaves nothing to block the fixed command
    text = proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text += path.read_text(errors="replace")
    assert CANARY not in text
    assert "sk-canary" not in text


def test_reflector_error_messages_do_not_carry_keys(monkeypatch):
    from espl_bench.agents.reflector import LiteLLMReflector, ReflectorCallError

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_BASE_URL", CLOSED)
    monkeypatch.setenv("OPENAI_API_BASE", CLOSED)
    reflector = LiteLLMReflector("openai/gpt-4o-mini", num_retries=0, timeout=2)
    try:
        reflector.complete([{"role": "user", "content": "hi"}], purpose="probe")
    except ReflectorCallError as exc:
        assert CANARY not in str(exc) and exc.__cause__ is None
    else:
        raise AssertionError("the call should fail offline")
    assert CANARY not in json.dumps(vars(reflector), default=str)
