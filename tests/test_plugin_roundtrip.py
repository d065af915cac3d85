"""The plugin round trip: scaffold a package, install it, list it, check it, run it (offline)."""

import json
import subprocess
import sys


def cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "espl_bench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_scaffold_install_list_check_run(tmp_path, tiny_model):
    code, out = cli("init-env", "reverse_words", "--dest", str(tmp_path))
    assert code == 0, out
    package = tmp_path / "reverse_words"
    # --no-build-isolation --no-index: the install uses only what is already here, no network
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(package)]
    assert subprocess.run(pip, capture_output=True, text=True, timeout=600).returncode == 0
    try:
        code, out = cli("envs", "--json")
        listed = {row["id"]: row for row in json.loads(out[out.index("["):])}
        assert "ReverseWords-v0" in listed and listed["ReverseWords-v0"]["source"] == "plugin:reverse_words"

        code, out = cli("envs", "check", "reverse_words:ReverseWords-v0")
        assert code == 0 and "ok" in out

        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
                               capture_output=True, text=True, cwd=package, timeout=600)
        assert tests.returncode == 0, tests.stdout[-2000:]

        code, out = cli("run", "--env", "reverse_words:ReverseWords-v0", "--method", "evolution", "--model",
                        str(tiny_model), "--iterations", "1", "--programs", "2", "--batch-size", "2", "--group-size",
                        "2", "--max-new-tokens", "8", "--reflector-max-tokens", "16", "--eval-problems", "1",
                        "--out", str(tmp_path / "run"))
        assert code == 0, out[-2000:]
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["env"] == "reverse_words:ReverseWords-v0"
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "reverse-words"], capture_output=True)
