"""One owner per run folder: a second process gets one line naming the first and changes nothing;
the lock dies with its holder, so a run killed with -9 resumes at once."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from espl_bench.errors import FolderBusy
from espl_bench.locks import owned
from tests.test_resume_kill import child_env, command, run, state

# What differs between two equal runs: wall-clock times, the folder's own path (and its cell
# store's), and whether the checkout had local changes; training_args.bin is TRL's pickled
# config, which holds the path.
VOLATILE = {"seconds", "phase_seconds", "seconds_this_session", "seconds_by_phase", "step_time", "out", "cell_store",
            "dirty"}
PATH_BOUND = {"training_args.bin"}


def _scrub(value):
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def files(folder) -> dict:
    """Every file of a run folder: its JSON with the volatile fields left out, else its bytes' hash."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in PATH_BOUND):
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".json":
            out[rel] = _scrub(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            out[rel] = [_scrub(json.loads(line)) for line in path.read_text().splitlines()]
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def paused(tiny_model, out, script, at: str, tmp_path) -> tuple[subprocess.Popen, str]:
    """A run started in the background and held at point ``at`` (it owns its folder there)."""
    faults, release = tmp_path / f"faults-{out.name}.json", str(tmp_path / f"release-{out.name}")
    faults.write_text(json.dumps([{"at": at, "action": "wait", "release": release}]))
    proc = subprocess.Popen(command(tiny_model, out, script), env=child_env(faults=faults),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not os.path.exists(release + ".reached"):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached its pause point"
        time.sleep(0.2)
    return proc, release


def test_a_second_process_gets_one_line_and_the_first_ends_as_a_run_alone(alone, tiny_model, tmp_path):
    script, reference = alone
    out = tmp_path / "run"
    first, release = paused(tiny_model, out, script, "1:learn + reflect", tmp_path)
    second = run(tiny_model, out, script, "--resume")  # a retried job, started while the first is alive
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"run folder {out} is in use by pid {first.pid} on host {socket.gethostname()} since " in errors[0]
    assert "; fix: wait for that run to end" in errors[0]
    open(release, "w").close()
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    assert files(out) == files(reference)
    assert not (out / ".owner").exists()


def test_after_kill_9_of_the_holder_a_resume_starts_at_once(alone, tiny_model, tmp_path):
    script, reference = alone
    out = tmp_path / "run"
    holder, _ = paused(tiny_model, out, script, "2:rollouts", tmp_path)
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=60) == -signal.SIGKILL
    assert (out / ".owner").is_file()  # its note stays behind; the lock went with the process
    resumed = run(tiny_model, out, script, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert state(out) == state(reference)


def test_evaluate_and_select_best_hold_the_folder_too(alone, tmp_path, caplog):
    from espl_bench.running.cli import main

    _, reference = alone
    with owned(reference, "run folder x", "wait"):  # as a run resuming in it would
        for argv in (["evaluate", str(reference)], ["select-best", str(reference)]):
            caplog.clear()
            assert main(argv) == 2
            assert f"run folder {reference} is in use by pid {os.getpid()}" in caplog.text
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2 and not (tmp_path / "nothing").exists()


def test_a_held_folder_is_refused_in_process_and_free_after(tmp_path):
    with owned(tmp_path / "f", "folder f", "wait for it"):
        with pytest.raises(FolderBusy, match=r"^folder f is in use by pid \d+ on host .+ since .+; fix: wait for it$"):
            with owned(tmp_path / "f", "folder f", "wait for it"):
                pass
    with owned(tmp_path / "f", "folder f", "wait for it"):  # released: the next owner gets it
        assert json.loads((tmp_path / "f" / ".owner").read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_two_processes_on_a_fresh_cache_convert_the_embedded_model_once(tmp_path):
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "from espl_bench.training.models import convert_embedded; print(convert_embedded())")
    env = {**child_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("converting the embedded model" in out for out in outputs) == 1, outputs
    target = tmp_path / "cache" / "espl-bench" / "models" / "SmolLM2-135M-Instruct"
    assert all(out.strip().endswith(str(target)) for out in outputs)
    assert (target / "config.json").is_file() and not list(target.parent.glob(".tmp-*"))
