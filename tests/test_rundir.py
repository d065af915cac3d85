import json

import pytest
from espl_bench.errors import RunDirError
from espl_bench.running.rundir import RunDir, atomic_write


def commit(rd, t):
    rd.commit(t, state={"iteration": t}, pool={"programs": []}, rollouts=[{"r": t}], reflections=[],
              metrics={"iteration": t}, summary={"iterations_completed": t}, best_prompt=f"prompt {t}")


def test_commits_are_ordered_and_latest_is_the_marker(tmp_path):
    rd = RunDir(tmp_path)
    rd.create({"config": {}})
    assert rd.latest() == 0
    commit(rd, 1)
    commit(rd, 2)
    assert rd.latest() == 2
    assert [json.loads(x)["iteration"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (tmp_path / "best_prompt.txt").read_text() == "prompt 2\n"
    assert rd.load_iteration(2)["state"] == {"iteration": 2}


def test_uncommitted_leftovers_are_removed(tmp_path):
    rd = RunDir(tmp_path)
    rd.create({})
    commit(rd, 1)
    commit(rd, 2)
    atomic_write(tmp_path / "LATEST", "1\n")  # as if killed before the marker of iteration 2
    (rd.iterations / ".tmp-abc").mkdir()
    rd.clean_uncommitted()
    assert sorted(p.name for p in rd.iterations.iterdir()) == ["000001"]


def test_existing_run_is_not_overwritten(tmp_path):
    RunDir(tmp_path).create({})
    with pytest.raises(RunDirError, match="--resume"):
        RunDir(tmp_path).create({})


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_corrupt_iteration_is_a_clear_error(tmp_path, damage):
    rd = RunDir(tmp_path)
    rd.create({})
    commit(rd, 1)
    path = rd.iterations / "000001" / "pool.json"
    if damage == "truncate":
        path.write_text('{"progr')
    else:
        path.unlink()
    with pytest.raises(RunDirError, match="fix"):
        rd.load_iteration(1)


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
