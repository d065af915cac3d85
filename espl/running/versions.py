"""The ML stack's installed versions against the bounds espl-bench declares.

The bounds are written once, in ``pyproject.toml``'s dependencies; this module reads them back
from the installed package's metadata (``importlib.metadata``), so the check and the install
can never disagree. The lower bounds are the versions the floors CI step installs and tests
(``scripts/setup-floors-env.sh``, README "Tested versions"); older ones fail at import or mid-run
(e.g. peft 0.17 imports ``HybridCache``, which transformers 5.x no longer has), so the CLI
refuses them at start with one line instead of a traceback minutes later.

    python -m espl_bench.running.versions pins   # the floors, one ``name==version`` a line
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from espl_bench.errors import EsplError

DISTRIBUTION = "espl-bench"
CHECKED = ("torch", "transformers", "trl", "peft", "accelerate")


class UnsupportedVersion(EsplError):
    """An installed package lies outside the versions espl-bench declares (and was tested at)."""


@dataclass(frozen=True)
class Mismatch:
    """One package whose installed version (None: not installed) the declared specifier rejects."""

    package: str
    found: str | None
    needed: SpecifierSet

    def requirement(self) -> str:
        lower_first = sorted(map(str, self.needed), key=lambda clause: not clause.startswith(">"))
        return self.package + ",".join(lower_first)

    def describe(self) -> str:
        have = "is not installed" if self.found is None else f"{self.found} is installed"
        return f"{self.package} {have} but espl-bench needs {self.requirement()}"


def refusal(bad: list[Mismatch]) -> str:
    """One line: each package, what was found and what is needed, then the one pip command that fixes all."""
    wanted = " ".join(f"'{m.requirement()}'" for m in bad)
    return "; ".join(m.describe() for m in bad) + f"; fix: python -m pip install {wanted}"


def declared(distribution: str = DISTRIBUTION) -> dict[str, SpecifierSet]:
    """The installed ``distribution``'s specifiers for :data:`CHECKED` (its core dependencies only)."""
    try:
        lines = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:  # a source tree that was never installed declares nothing
        return {}
    specs = {}
    for line in lines:
        req = Requirement(line)
        if req.name in CHECKED and req.marker is None:  # extras carry an `extra == ...` marker
            specs[req.name] = req.specifier
    return specs


def installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def mismatches(specs: dict[str, SpecifierSet], version_of: Callable[[str], str | None] = installed) -> list[Mismatch]:
    """The packages whose installed version ``specs`` rejects, in :data:`CHECKED` order."""
    found = {name: version_of(name) for name in specs}
    # prereleases=True: a nightly inside the bounds (2.13.0.dev...) is the user's informed choice
    return [Mismatch(name, found[name], specs[name]) for name in CHECKED
            if name in specs and ((v := found[name]) is None or not specs[name].contains(v, prereleases=True))]


def check(version_of: Callable[[str], str | None] = installed) -> None:
    """Raise :class:`UnsupportedVersion` naming every package outside its declared bounds."""
    bad = mismatches(declared(), version_of)
    if bad:
        raise UnsupportedVersion(refusal(bad))


def floor(spec: SpecifierSet) -> str | None:
    """The lowest version ``spec`` allows by a ``>=`` clause (None when it has none)."""
    lows = [s.version for s in spec if s.operator == ">="]
    return lows[0] if len(lows) == 1 else None


def pins(specs: dict[str, SpecifierSet]) -> list[str]:
    """``name==floor`` for every declared package that has a floor: what the floors venv installs."""
    return [f"{name}=={floor(specs[name])}" for name in CHECKED if name in specs and floor(specs[name])]


if __name__ == "__main__":
    if sys.argv[1:] != ["pins"]:
        sys.exit("usage: python -m espl_bench.running.versions pins")
    sys.stdout.write("".join(pin + "\n" for pin in pins(declared())))
