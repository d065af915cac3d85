"""Multi-hop question answering over a generated, offline corpus, with search and open tools.

Mirrors the agentic search task of the E-SPL paper without a network or a real Wikipedia:

* A world of FICTIONAL entities (people, towns, rivers, lakes, mountains, companies, prizes) is
  generated from ``random.Random(data_seed)``; each entity has one document stating its facts.
  Every relation is functional (one birthplace, one river per town, ...), so answers are unique.
* A question follows exactly ``hops`` relations from a start entity, e.g. (hops=3) "What is the
  name of the lake that the river that flows past the birthplace of Mara Tolvenik flows into?";
  answering needs the ``hops`` documents recorded in ``Problem.metadata["chain"]``.
* ``distractors`` similar-name entities per question (same family name, or same first syllable)
  are added to the corpus; their documents mention the real entity, as Wikipedia's "not to be
  confused with" notes do, so a careless agent can follow the wrong entity.
* Train, validation and test questions start from different entities (so no two splits share a
  question); all three are a pure function of the constructor arguments. Tools: ``search(query)`` (BM25 via ``bm25s``, top 3 ids, titles and
  a snippet) and ``open(doc_id)`` (full text; an unknown id returns an error string).
* Reward: 1.0 for an exact match after normalisation (lowercase, no punctuation, no articles,
  single spaces), else token-level F1 capped below 1; ``info["success"]`` only on exact match.
  ``info["metadata"]`` carries ``exact_match`` and ``f1`` after an answer.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import bm25s

from espl_bench.envs.tool_env import Problem, Tool, ToolEnv

TOP_K = 3
_ONSETS = "b br d dr f g gr h k kr l m n p r s st t tr v z th sh".split()
_VOWELS = "a e i o u a e i o ei".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "k", "m", "nd"]
_STOP = frozenset("a an the of in on is was by and to that what which who name does do it its".split())
# (subject type, object type, fact sentence, question phrase); {x} is the phrase for the subject.
RELATIONS = {
    "born_in": ("person", "town", "{s} was born in {o}.", "the birthplace of {x}"),
    "works_for": ("person", "company", "{s} works for {o}.", "the company that employs {x}"),
    "won": ("person", "prize", "{s} won the {o}.", "the prize won by {x}"),
    "awarded_by": ("prize", "company", "The {s} is awarded by {o}.", "the company that awards {x}"),
    "based_in": ("company", "town", "{s} is headquartered in {o}.", "the town where {x} is headquartered"),
    "lies_on": ("town", "river", "{s} lies on the {o}.", "the river that flows past {x}"),
    "flows_into": ("river", "lake", "The {s} flows into {o}.", "the lake that {x} flows into"),
    "below": ("lake", "mountain", "{s} lies at the foot of {o}.", "the mountain that rises above {x}"),
}
# Share of the corpus per type; the later types are few so that chains converge and repeat.
_MIX = {"person": 0.36, "company": 0.14, "prize": 0.08, "town": 0.2, "river": 0.1, "lake": 0.07, "mountain": 0.05}
_NAMES = {"town": "{r}", "river": "{r} River", "lake": "Lake {r}", "mountain": "Mount {r}",
          "company": "{r} {k}", "prize": "{r} Prize"}
_INTRO = {"person": "{n} is a {w} born in {y}.", "town": "{n} is a market town of {p}00 people.",
          "river": "The {n} is a river {p} km long.", "lake": "{n} is a lake covering {p} square km.",
          "mountain": "{n} is a mountain {p}0 m high.", "company": "{n} is a {w} firm founded in {y}.",
          "prize": "The {n} is an award first given in {y}."}
_TRADES = "cartographer weaver chemist poet surveyor glassblower botanist painter".split()
_INDUSTRIES = "shipping textile mining printing brewing glass timber".split()
_SUFFIXES = "Holdings Works Trading Foundry Mills".split()


@dataclass
class _Entity:
    kind: str
    name: str
    root: str  # the invented word; for people the family name
    intro: str
    facts: dict  # relation -> object name


@dataclass(frozen=True)
class _World:
    docs: dict  # doc id -> (title, text)
    doc_ids: list  # BM25 row -> doc id
    index: bm25s.BM25
    splits: dict  # split -> list[Problem]


def tokens(text: str) -> list[str]:
    return [t for t in re.findall(r"[a-z0-9]+", text.lower()) if t not in _STOP]


def normalize(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(t for t in text.split() if t not in {"a", "an", "the"})


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _word(rng: random.Random, syllables: int, start: str = "") -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return (start + "".join(parts)).capitalize()


def _entity(rng: random.Random, kind: str, used: set, root: str = "", family: str = "") -> _Entity:
    while True:  # names must be unique so that every question has one answer
        if kind == "person":
            fam = family or _word(rng, 2)
            name, key = f"{_word(rng, 2)} {fam}", fam
        else:
            key = _word(rng, rng.randint(1, 2), start=root[:3].lower()) if root else _word(rng, 2)
            name = _NAMES[kind].format(r=key, k=rng.choice(_SUFFIXES))
        # A shared family name is allowed (a distractor's), a clash with a place's root is not.
        if name not in used and (key not in used or key == family):
            used.update({name, key})
            break
    intro = _INTRO[kind].format(n=name, w=rng.choice(_TRADES if kind == "person" else _INDUSTRIES),
                                y=rng.randint(1780, 1990), p=rng.randint(3, 900))
    return _Entity(kind, name, key, intro, {})


def _link(rng: random.Random, entity: _Entity, by_kind: dict) -> None:
    for rel, (subj, obj, _, _) in RELATIONS.items():
        if subj == entity.kind:
            entity.facts[rel] = rng.choice(by_kind[obj]).name


def _ref(e: _Entity) -> str:
    return f"the {e.name}" if e.kind in ("river", "prize") else e.name


def _text(e: _Entity, rng: random.Random, confused_with: str = "") -> str:
    facts = [RELATIONS[r][2].format(s=e.name, o=o) for r, o in e.facts.items()]
    rng.shuffle(facts)  # fact order carries no hint about which relation a question uses
    note = [f"Not to be confused with {confused_with}."] if confused_with else []
    return " ".join([e.intro, *note, *facts])


def _chains(start: _Entity, hops: int, by_name: dict) -> list[list[tuple[str, _Entity]]]:
    """Every path of exactly ``hops`` relations from ``start`` as [(relation, object), ...]."""
    if hops == 0:
        return [[]]
    return [[(rel, by_name[obj]), *rest] for rel, obj in start.facts.items()
            for rest in _chains(by_name[obj], hops - 1, by_name)]


@lru_cache(maxsize=16)
def build_world(hops: int, distractors: int, corpus_size: int, train_size: int, test_size: int,
                data_seed: int, validation_size: int = 0) -> _World:
    """Corpus, BM25 index and the splits; cached because every concurrent episode has its own env."""
    rng = random.Random(data_seed)
    used: set = set()
    by_kind = {k: [_entity(rng, k, used) for _ in range(max(3, round(corpus_size * share)))]
               for k, share in _MIX.items()}
    entities = [e for group in by_kind.values() for e in group]
    for e in entities:
        _link(rng, e, by_kind)
    by_name = {e.name: e for e in entities}
    starts = [(e, _chains(e, hops, by_name)) for e in entities]
    starts = [(e, chains) for e, chains in starts if chains]
    rng.shuffle(starts)
    total = train_size + validation_size + test_size
    if len(starts) < total:
        raise ValueError(f"only {len(starts)} entities start a {hops}-hop chain but the splits need {total}; "
                         "raise corpus_size or lower the split sizes")
    # Each split takes its own start entities (test first, so test questions do not depend on
    # the other sizes): no question of one split starts from an entity of another.
    validation_end = test_size + validation_size
    chosen = {"test": starts[:test_size], "validation": starts[test_size:validation_end],
              "train": starts[validation_end:validation_end + train_size]}
    texts = [(e.name, _text(e, rng)) for e in entities]
    picked: dict = {}
    for split, group in chosen.items():
        picked[split] = []
        for e, chains in group:
            chain = rng.choice(chains)
            picked[split].append((e, chain))
            for _ in range(distractors):
                twin = _entity(rng, e.kind, used, root=e.root, family=e.root if e.kind == "person" else "")
                _link(rng, twin, by_kind)
                texts.append((twin.name, _text(twin, rng, confused_with=_ref(e))))
    rng.shuffle(texts)
    docs = {f"doc-{i:04d}": doc for i, doc in enumerate(texts)}
    id_of = {title: doc_id for doc_id, (title, _) in docs.items()}
    index = bm25s.BM25()
    index.index([tokens(f"{title} {text}") for title, text in docs.values()], show_progress=False)
    splits = {split: [_problem(e, chain, id_of) for e, chain in group] for split, group in picked.items()}
    return _World(docs, list(docs), index, splits)


def _problem(start: _Entity, chain: list, id_of: dict) -> Problem:
    phrase = _ref(start)
    for rel, _ in chain:
        phrase = RELATIONS[rel][3].format(x=phrase)
    path = [start, *(obj for _, obj in chain[:-1])]  # the documents that state each hop's fact
    return Problem(question=f"Question: What is the name of {phrase}?", answer=chain[-1][1].name,
                   metadata={"hops": len(chain), "start": start.name, "relations": [r for r, _ in chain],
                             "chain": [id_of[e.name] for e in path]})


class SearchQAEnv(ToolEnv):
    """Multi-hop QA over a fictional corpus with ``search`` and ``open``; see the module docstring."""

    def __init__(self, hops: int = 2, distractors: int = 2, corpus_size: int = 600, train_size: int = 200,
                 test_size: int = 100, data_seed: int = 0, max_turns: int = 8, validation_size: int = 50):
        super().__init__(max_turns=max_turns)
        if not 2 <= hops <= 4:
            raise ValueError(f"hops must be 2, 3 or 4, got {hops}")
        self._world = build_world(hops, distractors, corpus_size, train_size, test_size, data_seed, validation_size)
        self._last: dict = {}

    def split_size(self, split: str) -> int:
        return len(self._world.splits[split])

    def problem(self, split: str, index: int) -> Problem:
        return self._world.splits[split][index]

    def tools(self) -> dict[str, Tool]:
        return {"search": Tool("search(query)", f"the top {TOP_K} documents for a query: id, title, snippet",
                               self.search),
                "open": Tool("open(doc_id)", "the full text of the document with this id", self.open)}

    def search(self, query: str) -> str:
        terms = tokens(str(query))
        if not terms:
            return "No results: the query has no searchable words."
        rows, scores = self._world.index.retrieve([terms], k=TOP_K, show_progress=False, n_threads=0)
        hits = [self._world.doc_ids[row] for row, score in zip(rows[0], scores[0]) if score > 0]
        if not hits:
            return f"No results for {query!r}."
        return "\n".join(f"[{d}] {self._world.docs[d][0]}: {self._world.docs[d][1].split('. ')[0]}."
                         for d in hits)

    def open(self, doc_id: str) -> str:
        doc = self._world.docs.get(str(doc_id).strip().strip("[]"))
        if doc is None:
            return f"Error: no document with id {doc_id!r}; use an id that search returned, like 'doc-0001'."
        return f"{doc[0]}\n{doc[1]}"

    def score(self, answer: str, problem: Problem) -> float:
        exact = normalize(answer) == normalize(problem.answer)
        # Reordered tokens can give F1 = 1 without an exact match; keep that below success.
        self._last = {"exact_match": exact, "f1": 1.0 if exact else f1(answer, problem.answer)}
        return 1.0 if exact else min(self._last["f1"], 0.99)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        self._last = {}
        observation, reward, terminated, truncated, info = super().step(action)
        info["metadata"].update(self._last)
        return observation, reward, terminated, truncated, info
