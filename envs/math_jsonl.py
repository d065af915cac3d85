"""Competition math as a single-turn text environment, scored with math-verify.

Data comes from either

* ``train_path`` and ``test_path`` (and optionally ``validation_path``): JSONL files, one
  ``{"problem": str, "answer": str | number}`` object a line (blank lines skipped; a bad line is a
  ``ValueError`` naming file, line and field). Splits are made disjoint by problem text: repeats
  within train are dropped, and so are validation and test problems that occur in an earlier
  split (a warning counts them). Without ``validation_path`` a run holds out the first train
  problems as its validation split (:class:`envs.splits.SplitPlan`);
* ``preset``: one of the E-SPL paper's train -> test pairs in :data:`PRESETS`, loaded from the
  Hugging Face Hub through ``datasets.load_dataset`` on first use (never at construction). The
  hub ids and column names live in :data:`SOURCES`, one line each, so a renamed dataset is a
  one-line fix. When the hub cannot be reached the load raises :class:`DatasetUnavailable`,
  which says to pass local JSONL files instead. With neither, the preset is ``dapo100-aime25``.

Problems carrying DAPO's own answer-format wrapper ("Solve the following math problem step by
step. The last line of your response should be of the form Answer: $Answer ..." and "Remember
to put your answer on its own line after "Answer:".") lose it on loading, as in the E-SPL
reference code: the env asks for ``\boxed{}`` instead, and two format instructions would
contradict each other.

The observation is the problem plus an instruction to put the final answer in ``\\boxed{}``.
The answer is the last ``\\boxed{...}`` (nested braces allowed) or ``<answer>...</answer>``,
whichever comes later in the reply; ``valid`` means one was found. Reward is 1.0 when
math-verify finds it equivalent to the reference (``1/2``, ``0.5`` and ``\\frac{1}{2}`` all
match), else 0.0, with no partial credit. A math-verify error or timeout scores 0 with
``valid=False`` and the reason in ``info["metadata"]["error"]``; it never raises.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from espl_bench.envs.base import TextEnv
from espl_bench.errors import EsplError

log = logging.getLogger(__name__)

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_PRESET = "dapo100-aime25"
MAX_ANSWER_CHARS = 300  # longer "answers" are essays, and sympy can take very long on them


class DatasetUnavailable(EsplError):
    """A preset's dataset could not be loaded from the Hugging Face Hub."""


@dataclass(frozen=True)
class HubSource:
    """One dataset on the hub; a dotted column such as ``prompt.0.content`` walks into nested rows."""

    path: str
    split: str
    problem: str = "problem"
    answer: str = "answer"
    name: str | None = None  # the dataset config
    data_files: str | None = None  # for local files (``path="json"``/``"parquet"``), as in the tests


SOURCES = {
    "dapo-math-17k": HubSource("open-r1/DAPO-Math-17k-Processed", "train", "prompt", "solution", name="en"),
    "aime22-24": HubSource("AI-MO/aimo-validation-aime", "train"),
    "aime25": HubSource("math-ai/aime25", "test"),
    "beyondaime": HubSource("ByteDance-Seed/BeyondAIME", "test"),
    "hmmt-feb-2023": HubSource("MathArena/hmmt_feb_2023", "train"),
    "hmmt-feb-2024": HubSource("MathArena/hmmt_feb_2024", "train"),
    "hmmt-feb-2025": HubSource("MathArena/hmmt_feb_2025", "train"),
    "hmmt-nov-2025": HubSource("MathArena/hmmt_nov_2025", "train"),
}


@dataclass(frozen=True)
class Preset:
    train: tuple[str, ...]  # keys of SOURCES, concatenated
    test: tuple[str, ...]
    train_limit: int | None = None  # keep the first N train problems after a shuffle seeded by data_seed


PRESETS = {
    "dapo100-aime25": Preset(("dapo-math-17k",), ("aime25",), train_limit=100),
    "hmmt": Preset(("hmmt-feb-2023", "hmmt-feb-2024", "hmmt-feb-2025"), ("hmmt-nov-2025",)),
    "aime-beyondaime": Preset(("aime22-24",), ("beyondaime",)),
    "aime25": Preset(("aime22-24",), ("aime25",)),  # GEPA's AIME setup: AIME 2022-24 -> AIME 2025
}


class MathJSONLEnv(TextEnv):
    """Math problems from JSONL files or a paper preset, one reply each, scored with math-verify."""

    metadata = {"render_modes": [], "kind": "reasoning"}

    def __init__(self, train_path: str | None = None, test_path: str | None = None, *,
                 preset: str | None = None, data_seed: int = 0, timeout_seconds: int = 5,
                 validation_path: str | None = None):
        super().__init__(max_turns=1)
        if (train_path is None) != (test_path is None):
            raise ValueError("pass both train_path and test_path (JSONL files), or neither and a preset")
        if train_path is not None and preset is not None:
            raise ValueError("pass either train_path/test_path or preset, not both")
        if validation_path is not None and train_path is None:
            raise ValueError("validation_path goes with train_path and test_path; a preset's run holds out train problems")
        if train_path is None:
            preset = preset or DEFAULT_PRESET
            if preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)} or train_path/test_path")
        self.train_path, self.test_path, self.preset = train_path, test_path, preset
        self.data_seed, self.timeout_seconds = data_seed, timeout_seconds
        self._name = preset or "jsonl"
        self._splits: dict[str, tuple[dict, ...]] | None = None
        if train_path is not None:  # local files are cheap: report a bad file at construction
            files = {"train": train_path, "validation": validation_path, "test": test_path}
            self._splits = disjoint({split: read_jsonl(path) if path else () for split, path in files.items()})
        self._entry: dict | None = None
        self._problem_id = ""

    def _data(self) -> dict[str, tuple[dict, ...]]:
        if self._splits is None:
            self._splits = load_preset(self.preset, self.data_seed)
        return self._splits

    def split_size(self, split: str) -> int:
        return len(self._data().get(split, ()))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        split, index = self._pick(options)
        self._entry = self._data()[split][index]
        self._problem_id = f"{self._name}/{split}/{index}"
        observation = f"{self._entry['problem']}\n\n{INSTRUCTION}"
        return observation, {"problem_id": self._problem_id, "split": split, "index": index,
                             "content_key": self._entry["problem"]}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._entry is None:
            raise RuntimeError("call reset() before step()")
        reward, valid, details = score_answer(action, self._entry["answer"], self.timeout_seconds)
        info = {"answer": self._entry["answer"], "success": reward >= 1.0, "valid": valid,
                "metadata": {"problem_id": self._problem_id, **details}}
        return "", reward, True, False, info


# -- data --------------------------------------------------------------------------------------

def disjoint(splits: dict[str, tuple[dict, ...]]) -> dict[str, tuple[dict, ...]]:
    """The splits with repeats removed: within train, and every problem of an earlier split
    (train, validation, test, in that order) removed from the later ones."""
    seen: set[str] = set()
    out = {}
    for split in ("train", "validation", "test"):
        kept = []
        for record in splits.get(split, ()):
            if record["problem"] not in seen:
                seen.add(record["problem"])
                kept.append(record)
        if len(kept) < len(splits.get(split, ())):
            log.warning("math: dropped %d %s problems that repeat an earlier problem (splits stay disjoint)",
                        len(splits[split]) - len(kept), split)
        out[split] = tuple(kept)
    return out


_DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should be of the "
                "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.")
_DAPO_REMINDER = 'Remember to put your answer on its own line after "Answer:".'


def strip_wrapper(problem: str) -> str:
    """``problem`` without DAPO's answer-format prefix and reminder (see the module docstring)."""
    text = problem.strip()
    if text.startswith(_DAPO_PREFIX):
        text = text[len(_DAPO_PREFIX):].lstrip()
    if text.endswith(_DAPO_REMINDER):
        text = text[: -len(_DAPO_REMINDER)].rstrip()
    return text


def read_jsonl(path: str | Path) -> tuple[dict, ...]:
    """``{"problem", "answer"}`` records of a JSONL file; a ValueError names file, line and field."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file; pass a JSONL file with 'problem' and 'answer' fields")
    return _read_jsonl(str(path), Path(path).stat().st_mtime_ns)


@lru_cache(maxsize=16)  # every concurrent episode builds its own env; the mtime key sees edits
def _read_jsonl(path: str, _mtime_ns: int) -> tuple[dict, ...]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object with 'problem' and 'answer'")
            for key in ("problem", "answer"):
                if row.get(key) is None or str(row[key]).strip() == "":
                    raise ValueError(f"{path}, line {number}: missing field {key!r} (fields present: {sorted(row)})")
            records.append({"problem": str(row["problem"]).strip(), "answer": _answer_text(row["answer"])})
    if not records:
        raise ValueError(f"{path}: no problems in the file")
    return tuple(records)


def _load_dataset(path: str, name: str | None, *, split: str, data_files: str | None):
    """The one place that touches the hub; tests replace it."""
    import datasets

    return datasets.load_dataset(path, name, split=split, data_files=data_files)


def load_source(source: HubSource) -> list[dict]:
    """``{"problem", "answer"}`` records of one dataset, mapped through its column names."""
    try:
        rows = _load_dataset(source.path, source.name, split=source.split, data_files=source.data_files)
    except Exception as exc:
        raise DatasetUnavailable(
            f"cannot load dataset {source.path!r} (split {source.split!r}) from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}); the hub may be unreachable from here. Fix: pass "
            "train_path=... and test_path=... JSONL files with 'problem' and 'answer' fields instead of a preset"
        ) from exc
    records = []
    for number, row in enumerate(rows):
        problem, answer = _column(row, source.problem), _column(row, source.answer)
        if problem is None or answer is None:
            missing = source.problem if problem is None else source.answer
            raise ValueError(f"{source.path} row {number}: no column {missing!r} (columns: {sorted(row)}); "
                             "fix its entry in envs.math_jsonl.SOURCES")
        records.append({"problem": strip_wrapper(str(problem)), "answer": _answer_text(answer)})
    return records


@lru_cache(maxsize=8)
def load_preset(preset: str, data_seed: int = 0) -> dict[str, tuple[dict, ...]]:
    """Both splits of a preset; train loses duplicates and any problem that is also a test problem."""
    spec = PRESETS[preset]
    test = [r for key in spec.test for r in load_source(SOURCES[key])]
    seen = {r["problem"] for r in test}
    train = []
    for record in (r for key in spec.train for r in load_source(SOURCES[key])):
        if record["problem"] not in seen:
            seen.add(record["problem"])
            train.append(record)
    if spec.train_limit is not None:
        random.Random(data_seed).shuffle(train)
        train = train[:spec.train_limit]
    return {"train": tuple(train), "test": tuple(test)}


def _column(row: dict, dotted: str):
    value = row
    for part in dotted.split("."):
        try:
            value = value[int(part)] if isinstance(value, (list, tuple)) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
    return value


def _answer_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 34.0 from a numeric column is the answer 34
    return str(value).strip().strip("$").strip()


# -- scoring -----------------------------------------------------------------------------------

_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = {"{": 1, "}": -1}


def extract_final(text: str) -> tuple[str | None, str]:
    """``(answer, rule)``: the later of the last ``\\boxed{}`` and the last ``<answer>`` tag."""
    text = text or ""
    boxed = None
    for match in _BOXED.finditer(text):  # the regex cannot balance braces; count them by hand
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += _BRACE.get(text[i], 0)
            if depth == 0:
                boxed = (match.start(), text[start:i].strip())
                break
    tags = list(_TAG.finditer(text))
    tag = (tags[-1].start(), tags[-1].group(1).strip()) if tags else None
    if tag and (boxed is None or tag[0] > boxed[0]):  # a \boxed{} inside the tag starts later and wins
        return (tag[1] or None), "tag"
    if boxed:
        return (boxed[1] or None), "boxed"
    return None, "none"


def score_answer(response: str, reference: str, timeout_seconds: int = 5) -> tuple[float, bool, dict]:
    """``(reward, valid, details)`` for one reply; never raises."""
    answer, rule = extract_final(response)
    details = {"extracted": answer, "format": rule, "error": None}
    if answer is None:
        return 0.0, False, details
    if len(answer) > MAX_ANSWER_CHARS:
        details["error"] = f"answer longer than {MAX_ANSWER_CHARS} characters"
        return 0.0, False, details
    from math_verify.errors import TimeoutException  # a BaseException, so name it

    try:
        equal = _with_deadline(lambda timeout: _equivalent(reference, answer, timeout), timeout_seconds)
    except (Exception, TimeoutException) as exc:
        details["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return 0.0, False, details
    return (1.0 if equal else 0.0), True, details


def _equivalent(reference: str, answer: str, timeout: int | None) -> bool:
    from math_verify import parse, verify

    # Wrapping both in \boxed{} makes math-verify read exactly the extracted text.
    gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=timeout, raise_on_error=True)
    if not gold:
        raise ValueError(f"math-verify cannot read the reference answer {reference!r}")
    predicted = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout, raise_on_error=True)
    return bool(predicted) and bool(verify(gold, predicted, timeout_seconds=timeout, raise_on_error=True))


def _with_deadline(fn, seconds: int):
    """math-verify's timeouts use signal.alarm, which only works in the main thread; elsewhere
    run without them in a helper thread and stop waiting at the deadline (the helper is a daemon
    and is abandoned, since Python cannot kill a thread)."""
    if threading.current_thread() is threading.main_thread():
        return fn(seconds)
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = fn(None)
        except BaseException as exc:  # handed back to the caller below
            outcome["error"] = exc

    helper = threading.Thread(target=run, name="math-verify", daemon=True)
    helper.start()
    helper.join(3 * seconds)  # two parses and a comparison, as each has its own budget in the main thread
    if helper.is_alive():
        raise TimeoutError(f"math-verify took longer than {3 * seconds}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
