"""One import root, and the layer contracts (import-linter, configured in pyproject.toml)."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def installed_copy(dest: Path) -> Path:
    """The package as pip lays it out (espl_bench/ with envs/, agents/, leaderboards/ inside),
    copied from the source folders pyproject.toml maps, with the contracts next to it."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        shutil.copytree(ROOT / folder, dest.joinpath(*package.split(".")), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmpl", "*.md"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "pyproject.toml", "--no-cache"], cwd=tree, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_install_provides_one_import_root(tmp_path):
    probe = ("import importlib.util as u; import json; print(json.dumps({n: u.find_spec(n) is not None for n in "
             "('agents', 'envs', 'leaderboards', 'espl', 'espl_bench', 'espl_bench.envs', 'espl_bench.agents', "
             "'espl_bench.leaderboards', 'espl_bench.method')}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    found = __import__("json").loads(out)
    assert not any(found[n] for n in ("agents", "envs", "leaderboards", "espl")), found  # nothing shadows openai-agents
    assert all(found[n] for n in ("espl_bench", "espl_bench.envs", "espl_bench.agents", "espl_bench.leaderboards",
                                  "espl_bench.method"))


def test_the_import_contracts_hold(tmp_path):
    result = lint(installed_copy(tmp_path / "tree"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    # a task importing the method: a layer imported from below (and a cycle between the packages)
    ("envs/base.py", "import espl_bench.method.loop", {"Layered imports", "No cycles between siblings"}),
    ("agents/rollout.py", "from espl_bench.leaderboards import suite", {"Layered imports", "No cycles between siblings"}),
    ("errors.py", "import espl_bench.envs", {"Layered imports", "No cycles between siblings"}),  # a leaf that is not one
    ("method/program.py", "import espl_bench.method.loop", {"No cycles between siblings"}),  # loop -> program -> loop
])
def test_the_contracts_fail_on_an_import_that_breaks_them(tmp_path, module, line, broken):
    tree = installed_copy(tmp_path / "tree")
    target = tree / "espl_bench" / module
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    result = lint(tree)
    assert result.returncode != 0, result.stdout[-2000:]
    verdicts = {ln.rsplit(" ", 1)[0]: ln.rsplit(" ", 1)[1] for ln in result.stdout.splitlines()
                if ln.endswith((" KEPT", " BROKEN"))}
    assert {name for name, verdict in verdicts.items() if verdict == "BROKEN"} == broken, result.stdout[-3000:]


# The layers a newcomer reads first: a function there reads at once (issue 24: under 60 lines).
SHORT_FUNCTIONS = ("espl/method", "espl/training", "agents")
LONGEST = 60


def long_functions(folder: Path, root: Path = ROOT) -> list[str]:
    import ast

    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_the_core_layers_runs_past_sixty_lines():
    assert [f for folder in SHORT_FUNCTIONS for f in long_functions(ROOT / folder)] == []


def test_the_length_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LONGEST))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path, root=tmp_path) == [f"m.py:5 long ({LONGEST + 1} lines)"]
