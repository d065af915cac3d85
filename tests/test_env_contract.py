"""Every registered environment passes Gymnasium's checker and the same-seed determinism check."""

import json

import pytest

from espl_bench.envs.check import check
from espl_bench.envs.registry import list_env_ids


def kwargs_for(env_id: str, tmp_path) -> dict:
    if env_id.startswith("rg/"):
        return {"train_size": 4, "test_size": 2}
    if env_id == "espl/MathJSONL-v0":
        paths = {}
        for split, rows in {"train": [("1+1", "2"), ("2*3", "6")], "test": [("10/4", "5/2")]}.items():
            path = tmp_path / f"{split}.jsonl"
            path.write_text("".join(json.dumps({"problem": f"Compute {p}.", "answer": a}) + "\n" for p, a in rows))
            paths[f"{split}_path"] = str(path)
        return paths
    if env_id == "espl/TwentyQuestions-v0":
        return {"gamemaster": "openai/offline-fake", "gamemaster_kwargs": {"mock_response": "No"}}
    if env_id in ("espl/SearchQA-v0",):
        return {"corpus_size": 120, "train_size": 20, "test_size": 10}
    return {}


@pytest.mark.parametrize("env_id", list_env_ids())
def test_registered_env_passes_checker_and_determinism(env_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a few reasoning-gym tasks write scratch files into the working directory
    report = check(env_id, kwargs_for(env_id, tmp_path), seeds=2, max_steps=6)
    assert report.ok, report.failures
