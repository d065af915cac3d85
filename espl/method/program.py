"""Programs (system prompts as numbered principles), edit operations, and the pool.

A program's text is a preamble plus principles keyed ``G0..Gn``; children are made by applying
edit operations to a parent, so lineage and the exact edits are always on record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from espl_bench.records import PoolRecord

DEFAULT_PREAMBLE = "You are a careful problem solver."


class EditOp(BaseModel):
    """One edit to a program's principles, as the reflector proposes it.

    ``add`` appends ``text``; ``modify`` replaces principle ``id``; ``merge`` replaces the
    principles ``ids`` by one ``text``; ``remove`` deletes ``id`` (crossover only).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    op: Literal["add", "modify", "merge", "remove"]
    text: str = ""
    id: str | None = None
    ids: list[str] = Field(default_factory=list)


@dataclass
class Program:
    """A system prompt in the pool, with its rating and where it came from."""

    id: str
    principles: dict[str, str]
    preamble: str = DEFAULT_PREAMBLE
    parents: list[str] = field(default_factory=list)
    origin: str = "root"  # root | mutation | crossover
    iteration: int = 0  # the iteration that created it
    mu: float = 25.0
    sigma: float = 25.0 / 3.0
    edits: list[dict] = field(default_factory=list)

    def render(self) -> str:
        """The system prompt text the policy sees."""
        if not self.principles:
            return self.preamble
        lines = "\n".join(f"[{key}] {text}" for key, text in self.principles.items())
        return f"{self.preamble}\n\nFollow these principles:\n{lines}"

    @property
    def conservative(self) -> float:
        """TrueSkill's lower confidence bound mu - 2 sigma."""
        return self.mu - 2.0 * self.sigma

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Program:
        return cls(**data)


def apply_edits(principles: dict[str, str], ops: list[EditOp], *, max_words: int) -> dict[str, str]:
    """Apply ``ops`` in order and return new principles, renumbered ``G0..Gn``.

    Ids refer to the *parent's* keys; callers validate them first (see :mod:`espl_bench.method.edits`).
    Each principle is capped at ``max_words`` words, as in the paper.
    """
    items = dict(principles)
    for n, op in enumerate(ops):
        if op.op == "add":
            items[f"+{n}"] = op.text
        elif op.op == "modify" and op.id in items:
            items[op.id] = op.text
        elif op.op == "remove" and op.id in items:
            del items[op.id]
        elif op.op == "merge":
            present = list(dict.fromkeys(i for i in op.ids if i in items))  # an id named twice merges once
            if present:
                first = present[0]
                items[first] = op.text
                for other in present[1:]:
                    del items[other]
    capped = (" ".join(t.split()[:max_words]) for t in items.values())
    return {f"G{i}": text for i, text in enumerate(t for t in capped if t)}


class Pool:
    """The population: programs in creation order, FIFO-evicted past ``max_size``.

    The root is never evicted (a fixed-prompt method and the weights x prompt breakdown score it);
    evicted programs stay in ``lineage`` (id -> parents) so the evolutionary tree is complete.
    """

    def __init__(self, programs: list[Program], *, max_size: int = 100, next_index: int | None = None,
                 lineage: dict[str, list[str]] | None = None):
        if not programs:
            raise ValueError("a pool needs at least one program")
        self.max_size = max_size
        self.programs = list(programs)
        self.lineage = dict(lineage or {p.id: list(p.parents) for p in programs})
        self.next_index = next_index if next_index is not None else len(programs)

    @classmethod
    def with_root(cls, *, preamble: str = DEFAULT_PREAMBLE, principles: dict[str, str] | None = None,
                  max_size: int = 100) -> Pool:
        return cls([Program(id="p0", principles=dict(principles or {}), preamble=preamble)], max_size=max_size)

    def __len__(self) -> int:
        return len(self.programs)

    def __getitem__(self, program_id: str) -> Program:
        for program in self.programs:
            if program.id == program_id:
                return program
        raise KeyError(program_id)

    def window(self, k: int) -> list[Program]:
        """The ``k`` most recent programs (the paper's sliding window)."""
        return self.programs[-k:]

    def new_id(self) -> str:
        program_id = f"p{self.next_index}"
        self.next_index += 1
        return program_id

    def add(self, program: Program) -> Program:
        """Append ``program`` (giving it the next id when it has none), evicting the oldest past capacity."""
        if not program.id:
            program.id = self.new_id()
        self.programs.append(program)
        self.lineage[program.id] = list(program.parents)
        while len(self.programs) > max(self.max_size, 2):
            self.programs.pop(1 if self.programs[0].origin == "root" else 0)
        return program

    def best(self) -> Program:
        """The program with the highest conservative rating (ties: the newer one)."""
        return max(reversed(self.programs), key=lambda p: p.conservative)

    def latest(self) -> Program:
        return self.programs[-1]

    def root(self) -> Program:
        """The program the run started from."""
        return next((p for p in self.programs if p.origin == "root"), self.programs[0])

    def to_dict(self) -> dict:
        return {
            "max_size": self.max_size,
            "next_index": self.next_index,
            "programs": [p.to_dict() for p in self.programs],
            "lineage": self.lineage,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Pool:
        return cls([Program.from_dict(p) for p in data["programs"]], max_size=data["max_size"],
                   next_index=data["next_index"], lineage=data["lineage"])

    def to_record(self) -> PoolRecord:
        """The pool as the run folder keeps it (``espl_bench.rundir``)."""
        return PoolRecord.model_validate(self.to_dict())

    @classmethod
    def from_record(cls, record: PoolRecord) -> Pool:
        return cls.from_dict(record.model_dump())
