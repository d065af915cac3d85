import ast
import json
from pathlib import Path

import pytest

import espl_bench
from espl_bench import rundir as rundir_module
from espl_bench.errors import RecordError, RunDirError
from espl_bench.method.program import Pool, Program
from espl_bench.records import (
    IterationMetrics,
    IterationState,
    ReflectionRecord,
    RunHeader,
    RunSummary,
    TestProgram,
)
from espl_bench.rundir import IterationRecord, RunDir, atomic_write

BOARD = Path(__file__).resolve().parent.parent / "leaderboards" / "calibrated-v6" / "records"


def summary(t: int) -> RunSummary:
    return RunSummary(env="espl/Arithmetic-v0", method="espl", model="m", seed=0, iterations_completed=t,
                      iterations_planned=2, test_program=TestProgram(id="p0", rule="best", mu=25.0, sigma=8.0, text="x"))


def record(t: int, pool: Pool | None = None) -> IterationRecord:
    pool = pool or Pool.with_root()
    return IterationRecord(
        iteration=t, state=IterationState(iteration=t, rng=[3, [1, 2, 3], None], learner_step=t),
        pool=pool.to_record(), metrics=IterationMetrics(iteration=t, train_reward=0.5, train_success=0.25, rollouts=4),
        rollouts=({"r": t, "text": "a\u2028b"},),
        reflections=(ReflectionRecord(kind="mutation", status="ok", label="revision", log=[{"prompt": "q", "answer": "a"}]),))


def commit(rd: RunDir, t: int, pool: Pool | None = None) -> IterationRecord:
    rec = record(t, pool)
    rd.commit(rec, summary=summary(t), best_prompt=f"prompt {t}")
    return rec


def test_commits_are_ordered_and_latest_is_the_marker(tmp_path):
    rd = RunDir(tmp_path)
    rd.create(RunHeader(config={}))
    assert rd.latest() == 0
    commit(rd, 1)
    commit(rd, 2)
    assert rd.latest() == 2
    assert [m.iteration for m in rd.history()] == [1, 2]
    assert (tmp_path / "best_prompt.txt").read_text() == "prompt 2\n"
    assert rd.load(2).state == IterationState(iteration=2, rng=[3, [1, 2, 3], None], learner_step=2)
    assert rd.summary().iterations_completed == 2


def test_a_committed_iteration_loads_back_as_the_record_it_was(tmp_path):
    pool = Pool.with_root()
    pool.add(Program(id="", principles={"G0": "Check the sum."}, parents=["p0"], origin="mutation", iteration=1,
                     mu=26.5, sigma=7.25, edits=[{"op": "add", "text": "Check the sum."}]))
    rd = RunDir(tmp_path)
    rd.create(RunHeader(config={"env": "e"}, templates={"t": "h"}))
    written = commit(rd, 1, pool)
    loaded = rd.load(1, transcripts=True)
    assert loaded == written
    assert rd.header() == RunHeader(config={"env": "e"}, templates={"t": "h"})
    assert Pool.from_record(loaded.pool).to_dict() == pool.to_dict()
    assert rd.reflection_logs() == [{"prompt": "q", "answer": "a"}]
    # the file is the JSON the pool has always been written as (old folders and the board read it)
    on_disk = json.loads((rd.folder(1) / "pool.json").read_text())
    assert on_disk == json.loads(json.dumps(pool.to_dict()))
    assert list(on_disk["programs"][1]) == list(pool.to_dict()["programs"][1])  # same key order


def test_uncommitted_leftovers_are_removed(tmp_path):
    rd = RunDir(tmp_path)
    rd.create(RunHeader(config={}))
    commit(rd, 1)
    commit(rd, 2)
    atomic_write(tmp_path / "LATEST", "1\n")  # as if killed before the marker of iteration 2
    assert [m.iteration for m in rd.history()] == [1]  # readers never go past the marker
    (rd.iterations / ".tmp-abc").mkdir()
    rd.clean_uncommitted()
    assert sorted(p.name for p in rd.iterations.iterdir()) == ["000001"]


def test_existing_run_is_not_overwritten(tmp_path):
    RunDir(tmp_path).create(RunHeader(config={}))
    with pytest.raises(RunDirError, match="--resume"):
        RunDir(tmp_path).create(RunHeader(config={}))


@pytest.mark.parametrize("damage", ["truncate", "delete", "malformed"])
def test_corrupt_iteration_is_a_clear_error(tmp_path, damage):
    rd = RunDir(tmp_path)
    rd.create(RunHeader(config={}))
    commit(rd, 1)
    path = rd.iterations / "000001" / "pool.json"
    if damage == "truncate":
        path.write_text('{"progr')
    elif damage == "malformed":
        path.write_text('{"programs": 3}')
    else:
        path.unlink()
    with pytest.raises((RunDirError, RecordError), match="pool.json.*fix"):
        rd.load(1)


def test_corrupt_latest_is_a_clear_error(tmp_path):
    (tmp_path / "LATEST").write_text("garbage")
    with pytest.raises(RunDirError, match="corrupt"):
        RunDir(tmp_path).latest()


def test_atomic_write_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_write(target, "old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary file left behind


def test_the_committed_board_runs_load_through_the_typed_records(tmp_path):
    """Run folders written by earlier versions (the board's compact copies) read as they are, and a
    commit writes their pool back byte for byte."""
    folders = sorted(p for p in BOARD.iterdir() if p.is_dir())
    assert folders
    for folder in folders:
        rd = RunDir(folder)
        assert rd.summary().finished and rd.header().config
        assert [m.iteration for m in rd.history()] == list(range(1, rd.latest() + 1))
        pool = rd.last_pool()
        assert pool is not None and pool == rd.pool(rd.latest())
        text = (rd.folder(rd.latest()) / "pool.json").read_text(encoding="utf-8")
        copy = RunDir(tmp_path / folder.name)  # written again by this version: the same bytes
        copy.commit(IterationRecord(iteration=1, state=IterationState(iteration=1), pool=Pool.from_record(pool).to_record(),
                                    metrics=rd.history()[0]),
                    summary=rd.summary(), best_prompt=(folder / "best_prompt.txt").read_text(encoding="utf-8"))
        assert (copy.folder(1) / "pool.json").read_text(encoding="utf-8") == text
        # (summary.json and metrics.jsonl are not compared: an older version's records gain this
        # version's new fields and recomputed intervals; the layout and the pool are unchanged)
        assert (copy.root / "best_prompt.txt").read_text(encoding="utf-8") == (folder / "best_prompt.txt").read_text(encoding="utf-8")


def _string_constants(tree: ast.AST) -> list[str]:
    """The string literals of a module, its docstrings left out (prose may name files)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _package_modules() -> list[Path]:
    """Every module of the installed package (its folders map envs/, agents/, leaderboards/ too)."""
    roots = {Path(espl_bench.__file__).parent}
    for name in ("envs", "agents", "leaderboards"):
        roots.add(Path(__import__(f"espl_bench.{name}", fromlist=["_"]).__file__).parent)
    return sorted({p for root in roots for p in root.rglob("*.py")})


def test_only_the_run_folder_module_names_run_folder_files():
    """Exactly one module spells a run-folder file name or an iteration folder's name; every other
    reader and writer goes through it."""
    owner = Path(rundir_module.__file__).resolve()
    names = rundir_module.NAMES
    where: dict[str, set[str]] = {name: set() for name in names}
    padded = set()
    for path in _package_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for text in _string_constants(tree):
            for name in names:
                if name in text:
                    where[name].add(str(path.resolve()))
        for node in ast.walk(tree):  # f"{t:06d}": an iteration folder named by hand
            if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
                spec = "".join(v.value for v in node.format_spec.values if isinstance(v, ast.Constant))
                if spec == "06d":
                    padded.add(str(path.resolve()))
    assert {name: sorted(paths) for name, paths in where.items() if paths != {str(owner)}} == {}
    assert padded == {str(owner)}
