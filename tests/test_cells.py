"""Base-weights cells shared between runs: read back only when everything that makes them is equal."""

import json

from espl_bench.agents.sampler import SamplingParams
from espl_bench.records import CellResult, EvalItems
from espl_bench.running.cli import main
from espl_bench.scoring.cells import CellStore

ITEMS = EvalItems("test", (0, 1), 2)
PARAMS = SamplingParams(max_new_tokens=8)
CELL = CellResult(ITEMS, "p0", ((1, 0), (0, 0)), ((1.0, 0.0), (0.0, 0.0)), ("t/0", "t/1"), weights="base")
SCOPE = {"model": "m", "env": "e", "env_kwargs": {}, "code": ["0.1", None]}


def test_a_stored_cell_is_read_only_for_the_same_scope_items_sampling_and_prompt(tmp_path):
    store = CellStore(tmp_path, SCOPE)
    store.put("You are careful.", CELL, PARAMS)
    again = store.get("You are careful.", "p7", ITEMS, PARAMS)
    assert again.successes == CELL.successes and again.program == "p7" and again.weights == "base"
    assert store.get("You are careless.", "p0", ITEMS, PARAMS) is None
    assert store.get("You are careful.", "p0", EvalItems("test", (0, 1), 1), PARAMS) is None
    assert store.get("You are careful.", "p0", ITEMS, SamplingParams(max_new_tokens=9)) is None
    assert CellStore(tmp_path, {**SCOPE, "env_kwargs": {"max_terms": 2}}).get("You are careful.", "p0", ITEMS, PARAMS) is None
    assert (store.hits, store.misses) == (1, 3)


def test_an_unreadable_stored_cell_is_a_miss_not_an_error(tmp_path, caplog):
    store = CellStore(tmp_path, SCOPE)
    store.put("x", CELL, PARAMS)
    (path,) = tmp_path.glob("*.json")
    path.write_text("{half")
    assert store.get("x", "p0", ITEMS, PARAMS) is None and "unreadable" in caplog.text


SMALL = ["--env", "espl/Arithmetic-v0", "--iterations", "1", "--programs", "2", "--batch-size", "2", "--group-size", "2",
         "--max-new-tokens", "6", "--eval-problems", "3", "--eval-samples", "1", "--validation-problems", "0",
         "--micro-batch-size", "4"]


def test_a_frozen_run_reads_the_base_root_cell_a_trained_run_scored_and_it_equals_a_fresh_one(tiny_model, tmp_path):
    """The protocol's promise the store rests on: the trained run's base weights (its adapter
    disabled) and a frozen run's model give the same episodes for the same prompt."""
    store = tmp_path / "cells"
    assert main(["run", *SMALL, "--method", "rl", "--model", str(tiny_model), "--out", str(tmp_path / "rl"),
                 "--cell-store", str(store)]) == 0
    base_root = json.loads((tmp_path / "rl" / "breakdown.json").read_text())["cells"]["base/root"]
    (stored,) = store.glob("*.json")
    written = stored.stat().st_mtime_ns
    frozen = ["--method", "evolution", "--test-program", "root", "--reflector", "script:" + str(tmp_path / "none.txt"),
              "--model", str(tiny_model)]
    (tmp_path / "none.txt").write_text(json.dumps([{"contains": "", "answer": "no"}]))
    for out, extra in (("shared", ["--cell-store", str(store)]), ("fresh", [])):
        assert main(["run", *SMALL, *frozen, "--out", str(tmp_path / out), *extra]) == 0
    shared = json.loads((tmp_path / "shared" / "summary.json").read_text())["test"]
    fresh = json.loads((tmp_path / "fresh" / "summary.json").read_text())["test"]
    assert stored.stat().st_mtime_ns == written and len(list(store.glob("*.json"))) == 1  # read, not scored again
    assert shared["per_problem"] == fresh["per_problem"] == base_root["per_problem"]
    assert shared["generated_tokens"] == fresh["generated_tokens"] == base_root["generated_tokens"] > 0


def test_a_store_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    store = CellStore(blocked / "cells", SCOPE)
    store.put("x", CELL, PARAMS)
    assert "cannot write" in caplog.text and store.get("x", "p0", ITEMS, PARAMS) is None
