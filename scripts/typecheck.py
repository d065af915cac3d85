"""Type-check the package as it is installed: ``python scripts/typecheck.py [mypy options]``.

The package's folders are not laid out under its import name (pyproject.toml's package-dir maps
``espl_bench`` to ``espl/`` and ``espl_bench.agents`` to ``agents/``, ...), and mypy finds modules
by folder. So this builds ``build/typecheck/espl_bench``, a tree of links in the installed layout,
and runs mypy on it with pyproject.toml's ``[tool.mypy]`` settings. Exit status: mypy's.
"""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def link_tree() -> Path:
    """``TREE/espl_bench`` with a link per entry of each mapped folder; returns the package folder."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    for package, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):
        target = TREE.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for entry in (ROOT / folder).iterdir():
            if entry.name != "__pycache__" and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return TREE / "espl_bench"


def main(argv: list[str]) -> int:
    from mypy import api

    package = link_tree()
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), *argv, str(package)])
    sys.stdout.write(re.sub(r"^(\S+?\.py)(?=:)", _source, out, flags=re.M))
    sys.stderr.write(err)
    return status


def _source(match: re.Match) -> str:
    """A path in the link tree as the file it links to, relative to the checkout (where it is edited)."""
    path = Path(match.group(1))
    try:
        return str((ROOT / path if not path.is_absolute() else path).resolve().relative_to(ROOT))
    except ValueError:
        return match.group(1)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
