"""Train, validation and test: disjoint by content, and how a run maps them onto an env.

Two rules live here, once:

* :func:`content_split` assigns a problem to a split by a hash of its *content* (its question,
  secret, board), never by its seed or index: two problems with the same content always land in
  the same split, so no test problem can also be a train problem. :func:`draw` builds problem
  ``index`` of a split on demand from a seeded generator, keeping the first candidate whose
  content hashes into that split (reasoning-gym's rule that an item is a pure function of seed
  and index, plus a content filter).
* :class:`SplitPlan` is where a run takes each split from, and how an episode resets to a
  problem (:meth:`SplitPlan.reset_args`):

  - an env with ``split_size`` (espl-bench's contract, :mod:`espl_bench.envs.base`) is
    *indexed*: ``reset(seed=episode seed, options={"split": s, "index": i})``. If it offers a
    ``validation`` split (``split_size("validation") > 0``) that is the run's validation split;
    otherwise the first ``validation_problems`` train problems (at most half) are held out and
    never trained on. The test split is the env's own.
  - a plain Gymnasium env (no ``split_size``) is *seeded*: problem ``i`` of a split is
    ``reset(seed=SEEDED[split].start + i)``, from disjoint seed ranges (train from 0, validation
    from 1,000,000, test from 2,000,000; :data:`SEEDED` has their sizes). Disjoint seeds are
    not disjoint content: an env whose problems repeat across seeds should offer splits (or
    ``info["content_key"]`` so that ``espl-bench envs check`` can show the overlap).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

SPLITS = ("train", "validation", "test")
# A plain Gymnasium env's splits: problems per split, and the first reset seed of each range.
SEEDED = {"train": 10_000, "validation": 1_000, "test": 1_000}
SEED_BASE = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
MAX_DRAWS = 10_000  # candidates tried for one problem before giving up (a tiny content space)

T = TypeVar("T")


def content_split(content: str) -> str:
    """The split a problem with this content belongs to: a third of the hash space each."""
    digest = hashlib.sha256(content.encode("utf-8")).digest()
    return SPLITS[int.from_bytes(digest[:8], "big") % len(SPLITS)]


def derive(*coordinates) -> int:
    """A 63-bit integer that is a pure function of ``coordinates``."""
    text = "/".join(str(c) for c in coordinates)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def draw(split: str, index: int, make: Callable[[int], T], key: Callable[[T], str], *tag) -> T:
    """Problem ``index`` of ``split``: the first ``make(seed)`` whose ``key`` hashes into ``split``.

    Seeds are ``derive(*tag, split, index, attempt)``: the result depends on nothing but these.
    Raises ``ValueError`` when no candidate lands in the split (a content space too small to
    hold three disjoint splits).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    for attempt in itertools.count():
        if attempt == MAX_DRAWS:
            raise ValueError(f"no {split} problem found in {MAX_DRAWS} draws: the task's content space is too small "
                             "for disjoint splits; widen its configuration")
        item = make(derive(*tag, split, index, attempt))
        if content_split(key(item)) == split:
            return item
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class SplitRange:
    """A run's split as a range of one env split's indices."""

    split: str  # the env's split name
    start: int
    size: int

    @property
    def indices(self) -> range:
        return range(self.start, self.start + self.size)

    def to_dict(self) -> dict:
        return {"split": self.split, "start": self.start, "size": self.size}


@dataclass(frozen=True)
class SplitPlan:
    """Where a run's train, validation and test problems come from; see the module docstring."""

    train: SplitRange
    validation: SplitRange
    test: SplitRange
    seeded: bool = False  # a plain Gymnasium env: problems are reset seeds

    def reset_args(self, split: str, index: int, episode_seed: int) -> tuple[int, dict | None]:
        """``(seed, options)`` for ``env.reset`` to start problem ``index`` of the env's ``split``."""
        if self.seeded:
            return SEED_BASE[split] + index, None
        return episode_seed, {"split": split, "index": index}

    @property
    def derived_validation(self) -> bool:
        """Whether validation is held out of the env's train split (the env offers none)."""
        return self.validation.split == "train"

    def of(self, name: str) -> SplitRange:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def to_dict(self) -> dict:
        return {**{name: self.of(name).to_dict() for name in SPLITS}, "problems": "seeds" if self.seeded else "indices"}

    @classmethod
    def of_sizes(cls, train: int, test: int, validation: int = 0) -> SplitPlan:
        """The plan of an env with these split sizes (validation held out of train when 0)."""

        class _Sizes:
            def split_size(self, split: str) -> int:
                return {"train": train, "validation": 0, "test": test}[split]

        plan = cls.for_env(_Sizes(), validation)
        return plan

    @classmethod
    def for_env(cls, env, validation_problems: int) -> SplitPlan:
        if not hasattr(getattr(env, "unwrapped", env), "split_size"):
            seeded = [SplitRange(name, 0, SEEDED[name] if name != "validation" else min(validation_problems, SEEDED[name]))
                      for name in SPLITS]
            return cls(seeded[0], seeded[1], seeded[2], seeded=True)
        train, test = split_size(env, "train"), split_size(env, "test")
        offered = split_size(env, "validation")
        if offered > 0:
            return cls(SplitRange("train", 0, train), SplitRange("validation", 0, min(validation_problems, offered)),
                       SplitRange("test", 0, test))
        held = min(validation_problems, train // 2)
        return cls(SplitRange("train", held, train - held), SplitRange("train", 0, held), SplitRange("test", 0, test))


def split_size(env, split: str) -> int:
    """``env.split_size(split)`` (through any wrappers), 0 for a split the env does not know (a
    plugin with train and test only) or an env with no splits at all."""
    size = getattr(getattr(env, "unwrapped", env), "split_size", None)
    if size is None:
        return 0
    try:
        return int(size(split))
    except (KeyError, ValueError, IndexError):
        return 0
