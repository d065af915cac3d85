"""pytest-benchmark as a regression gate: a stored run, then an injected slowdown fails the compare."""

import os
import subprocess
import sys

BENCH = '''
import os
import time


def work():
    time.sleep(float(os.environ.get("INJECTED_DELAY", "0")))
    return sum(range(2000))


def test_work(benchmark):
    assert benchmark(work) == sum(range(2000))
'''


def bench(tmp_path, delay, *flags):
    env = {**os.environ, "INJECTED_DELAY": str(delay)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path / "bench_work.py"),
           f"--benchmark-storage=file://{tmp_path / 'store'}", "--benchmark-min-rounds=5", "--benchmark-max-time=0.2",
           *flags]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_compare_fails_on_injected_slowdown_and_passes_without(tmp_path):
    (tmp_path / "bench_work.py").write_text(BENCH)
    saved = bench(tmp_path, 0, "--benchmark-autosave")
    assert saved.returncode == 0, saved.stdout[-2000:]
    same = bench(tmp_path, 0, "--benchmark-compare", "--benchmark-compare-fail=mean:400%")
    assert same.returncode == 0, same.stdout[-2000:]
    slow = bench(tmp_path, 0.01, "--benchmark-compare", "--benchmark-compare-fail=mean:400%")
    assert slow.returncode != 0
    assert "Performance has regressed" in slow.stdout + slow.stderr
