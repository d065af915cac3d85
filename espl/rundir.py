"""The run folder: the one module that knows its file and iteration-folder names; typed records in and out.

Layout (each file's record in :mod:`espl_bench.records`)::

    run.json              RunHeader: schema version, config, prompt-template hashes, precision (written at start)
    iterations/000003/    one folder per committed iteration (an IterationRecord):
        state.json          IterationState: the loop's RNG and the learner's step, for resume
        pool.json           PoolRecord: the programs, their ratings and the lineage
        rollouts.jsonl      one rollout a line (espl_bench.agents.rollout's record)
        reflections.jsonl   one ReflectionRecord a line: every reflector prompt and answer
        metrics.json        IterationMetrics
        adapter/            that iteration's LoRA weights (trained methods; select-best and evaluate read them)
    learner/              TRL checkpoints (checkpoint-N = after iteration N)
    metrics.jsonl         one IterationMetrics a line, per committed iteration
    summary.json          RunSummary: the run at a glance
    best_prompt.txt       the test-time program's text, ready to copy
    breakdown.json        Breakdown: the finished run's weights x prompt cells (written once, kept on resume)
    selection.json        ``espl-bench select-best``'s result
    evaluation-PxS.json   ``espl-bench evaluate``'s breakdown on P test problems x S samples
    suite.json            the identity ``bench`` started the run under (espl_bench.leaderboards.identity)
    tracking/             the trackers' files (--report-to)
    vllm-server.log       the output of the run's own vLLM server
    LATEST                the last committed iteration; written last, so it is the commit marker

An iteration folder is written under ``.tmp-*`` and renamed into place; files are fsynced
before the rename. Anything newer than ``LATEST`` is an uncommitted leftover: resume removes it
and every reader ignores it.

A compact copy of a finished run (``bench --keep``, the committed board's ``records/``) holds
:data:`COMPACT` and the last iteration's ``pool.json`` only; :meth:`RunDir.history` and
:meth:`RunDir.last_pool` read both kinds of folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from espl_bench.errors import RecordError, RunDirError
from espl_bench.records import (
    Breakdown,
    IterationMetrics,
    IterationState,
    PoolRecord,
    ReflectionRecord,
    RunHeader,
    RunSummary,
)

# The file and folder names: nothing outside this module spells them (tests/test_rundir.py checks).
HEADER = "run.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
BEST_PROMPT = "best_prompt.txt"
BREAKDOWN = "breakdown.json"
SELECTION = "selection.json"
IDENTITY = "suite.json"
TRACKING = "tracking"
VLLM_LOG = "vllm-server.log"
MARKER = "LATEST"
ITERATIONS = "iterations"
LEARNER = "learner"
STATE = "state.json"
POOL = "pool.json"
ROLLOUTS = "rollouts.jsonl"
REFLECTIONS = "reflections.jsonl"
ITERATION_METRICS = "metrics.json"
ADAPTER = "adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What the board needs from a finished run (leaderboards.aggregate and its tree): its records, not
# its weights, rollouts or reflector transcripts (summary.json holds the breakdown).
COMPACT = (HEADER, SUMMARY, METRICS, BEST_PROMPT, MARKER, IDENTITY)
# The file names tests/test_rundir.py finds nowhere else in the package. Not in it: the folder
# names (common words: "iterations" is also a flag), and ADAPTER_FILES, PEFT's own names, which
# the learner reads in its checkpoints too.
NAMES = (HEADER, SUMMARY, METRICS, BEST_PROMPT, BREAKDOWN, SELECTION, IDENTITY, VLLM_LOG, MARKER, STATE, POOL,
         ROLLOUTS, REFLECTIONS, ITERATION_METRICS, "evaluation-")


def iteration_name(t: int) -> str:
    """Iteration ``t``'s folder name: zero-padded, so names sort as numbers."""
    return f"{t:06d}"


def evaluation_name(problems: int, samples: int) -> str:
    return f"evaluation-{problems}x{samples}.json"


# -- writing --------------------------------------------------------------------------------------


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# Characters str.splitlines() breaks on besides \n and \r: written raw inside a JSON string, they
# would split one JSONL record into two for every reader that splits lines (a fuzzed reflector
# answer found it). JSON only holds them inside strings, where their escapes mean the same.
_LINE_BREAKS = {c: f"\\u{ord(c):04x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_LINE_BREAK_TABLE = str.maketrans(_LINE_BREAKS)


def _dumps(data: Any, **kwargs) -> str:
    text = json.dumps(data, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (a model's broken unicode): escaped, so the file stays valid UTF-8
        text = json.dumps(data, ensure_ascii=True, **kwargs)
    return text.translate(_LINE_BREAK_TABLE)


def dump_json(data: Any) -> str:
    return _dumps(data, indent=1, sort_keys=False) + "\n"


def dump_jsonl(rows: list[dict]) -> str:
    return "".join(_dumps(r) + "\n" for r in rows)


# -- the records of one iteration -------------------------------------------------------------------


@dataclass(frozen=True)
class IterationRecord:
    """One committed iteration's folder. ``rollouts`` and ``reflections`` are written by
    :meth:`RunDir.commit`; :meth:`RunDir.load` reads them back only when asked (they are large)."""

    iteration: int
    state: IterationState
    pool: PoolRecord
    metrics: IterationMetrics
    rollouts: tuple[dict[str, Any], ...] = ()
    reflections: tuple[ReflectionRecord, ...] = ()
    adapter: Path | None = None  # the LoRA weights kept with it (a learner checkpoint when committing)


R = TypeVar("R")


class RunDir:
    """One run folder (see the module docstring); every read raises :class:`RunDirError` or
    :class:`RecordError` with one line naming the file and the fix."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.iterations = self.root / ITERATIONS
        self.learner = self.root / LEARNER

    # -- paths -------------------------------------------------------------------------------------

    def folder(self, t: int) -> Path:
        return self.iterations / iteration_name(t)

    def adapter(self, t: int) -> Path:
        """Iteration ``t``'s LoRA weights (trained methods)."""
        return self.folder(t) / ADAPTER

    def checkpoint(self, t: int) -> Path:
        """The learner's checkpoint after iteration ``t`` (TRL's own name for step ``t``)."""
        return self.learner / f"checkpoint-{t}"

    @property
    def vllm_log(self) -> Path:
        return self.root / VLLM_LOG

    @property
    def tracking(self) -> Path:
        """Every tracker's files (espl_bench.running.tracking)."""
        return self.root / TRACKING

    @property
    def header_path(self) -> Path:
        return self.root / HEADER

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY

    @property
    def selection_path(self) -> Path:
        return self.root / SELECTION

    @property
    def identity_path(self) -> Path:
        """Where ``bench`` keeps the identity the run was started under (its own record)."""
        return self.root / IDENTITY

    def evaluation_path(self, problems: int, samples: int) -> Path:
        return self.root / evaluation_name(problems, samples)

    # -- start and resume --------------------------------------------------------------------------

    def has_run(self) -> bool:
        """Whether a run started here (its header is written)."""
        return (self.root / HEADER).is_file()

    def has_summary(self) -> bool:
        return (self.root / SUMMARY).is_file()

    def check_new(self) -> None:
        """Refuse a folder that already holds a run (before anything is built or written)."""
        if (self.root / MARKER).exists() or (self.root / HEADER).exists():
            raise RunDirError(f"{self.root} already holds a run; fix: pass --resume to continue it or choose another --out")

    def create(self, header: RunHeader) -> None:
        self.check_new()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / HEADER, dump_json(header.to_dict()))

    def header_data(self) -> dict:
        """``run.json`` as written (a dict), for readers that tolerate any version of it."""
        return self._read_json(self.root / HEADER, HEADER)

    def header(self) -> RunHeader:
        return RunHeader.from_dict(self.header_data(), str(self.root / HEADER))

    def latest(self) -> int:
        """The last committed iteration (0 when none is)."""
        path = self.root / MARKER
        if not path.exists():
            return 0
        text = path.read_text().strip()
        if not text.isdigit():
            raise RunDirError(f"{path} is corrupt ({text[:20]!r}); fix: restore it or start a new run")
        return int(text)

    def clean_uncommitted(self) -> None:
        committed = self.latest()
        if not self.iterations.is_dir():
            return
        for path in self.iterations.iterdir():
            if path.name.startswith(".tmp-") or (path.name.isdigit() and int(path.name) > committed):
                shutil.rmtree(path, ignore_errors=True)
        # metrics.jsonl is derived from the committed iterations; a kill inside a commit may have
        # written it one iteration ahead of LATEST.
        atomic_write(self.root / METRICS, dump_jsonl(self._metrics_rows(committed)))

    # -- iterations ----------------------------------------------------------------------------------

    def commit(self, record: IterationRecord, *, summary: RunSummary, best_prompt: str) -> None:
        """Write ``record`` and make it the committed iteration (see the module docstring)."""
        t = record.iteration
        self.iterations.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.iterations))
        metrics = record.metrics.to_dict()
        files = {
            STATE: dump_json(_state_json(record.state)),
            POOL: dump_json(record.pool.model_dump(mode="json")),
            ROLLOUTS: dump_jsonl(list(record.rollouts)),
            REFLECTIONS: dump_jsonl([r.to_dict() for r in record.reflections]),
            ITERATION_METRICS: dump_json(metrics),
        }
        for name, text in files.items():
            with open(tmp / name, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        if record.adapter is not None:  # this iteration's LoRA weights, kept for select-best (the learner prunes old checkpoints)
            (tmp / ADAPTER).mkdir()
            for name in ADAPTER_FILES:
                shutil.copyfile(record.adapter / name, tmp / ADAPTER / name)
                with open(tmp / ADAPTER / name, "rb") as f:
                    os.fsync(f.fileno())
        final = self.folder(t)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write(self.root / METRICS, dump_jsonl([*self._metrics_rows(t - 1), metrics]))
        self.write_summary(summary)
        atomic_write(self.root / BEST_PROMPT, best_prompt.rstrip() + "\n")
        sys.audit("espl_bench.point", t, "commit")  # between the folder and LATEST
        atomic_write(self.root / MARKER, f"{t}\n")

    def load(self, t: int, *, transcripts: bool = False) -> IterationRecord:
        """Committed iteration ``t``; its rollouts and reflections too with ``transcripts``."""
        folder = self.folder(t)
        where = f"iteration {t}"
        record = IterationRecord(
            iteration=t,
            state=self._read(folder / STATE, where, IterationState.model_validate),
            pool=self.pool(t),
            metrics=self._read(folder / ITERATION_METRICS, where,
                               lambda data: IterationMetrics.from_dict(data, str(folder / ITERATION_METRICS))),
            adapter=self.adapter(t) if (self.adapter(t) / ADAPTER_FILES[0]).is_file() else None)
        if not transcripts:
            return record
        return replace(record, rollouts=tuple(self._read_jsonl(folder / ROLLOUTS, where)),
                       reflections=tuple(self.reflections(t)))

    def pool(self, t: int) -> PoolRecord:
        """The pool after iteration ``t``."""
        return self._read(self.folder(t) / POOL, f"iteration {t}", PoolRecord.model_validate)

    def last_pool(self) -> PoolRecord | None:
        """The pool of the newest committed iteration that kept one (a compact copy keeps the last
        only); None when there is none."""
        for t in reversed(self._committed()):
            if (self.folder(t) / POOL).is_file():
                return self.pool(t)
        return None

    def reflections(self, t: int) -> list[ReflectionRecord]:
        path = self.folder(t) / REFLECTIONS
        return [ReflectionRecord.from_dict(row, f"{path} line {n}")
                for n, row in enumerate(self._read_jsonl(path, f"iteration {t}"), 1)]

    def reflection_logs(self) -> list[dict[str, Any]]:
        """Every reflector call of every committed iteration, oldest first, as recorded (prompt,
        answer): what ``--reflector replay:RUN`` answers from, whatever version wrote it."""
        return [entry for t in self._committed()
                for row in self._read_jsonl(self.folder(t) / REFLECTIONS, f"iteration {t}") for entry in row.get("log", [])]

    def history(self) -> list[IterationMetrics]:
        """Every committed iteration's metrics, oldest first: from ``metrics.jsonl`` (a compact copy
        has no iteration folders), else from the folders; never past ``LATEST`` (a kill inside a
        commit can leave ``metrics.jsonl`` one ahead)."""
        path = self.root / METRICS
        if path.exists():
            rows = self._read_jsonl(path, "the run")
            wheres = [f"{path} line {n}" for n in range(1, len(rows) + 1)]
        else:
            ts = self._committed()
            rows = self._metrics_rows_of(ts)
            wheres = [str(self.folder(t) / ITERATION_METRICS) for t in ts]
        latest = self.latest() if (self.root / MARKER).exists() else None
        history = [IterationMetrics.from_dict(row, where) for row, where in zip(rows, wheres)]
        return [m for m in history if latest is None or m.iteration <= latest]

    def _committed(self) -> list[int]:
        """The committed iterations with a folder, oldest first (leftovers past ``LATEST`` ignored)."""
        ts = sorted(int(p.name) for p in self.iterations.glob("*") if p.is_dir() and p.name.isdigit())
        if not (self.root / MARKER).exists():
            return ts
        latest = self.latest()
        return [t for t in ts if t <= latest]

    def _metrics_rows(self, upto: int) -> list[dict]:
        return self._metrics_rows_of(range(1, upto + 1))

    def _metrics_rows_of(self, ts) -> list[dict]:
        return [self._read_json(self.folder(t) / ITERATION_METRICS, f"iteration {t}") for t in ts]

    # -- run-level records ------------------------------------------------------------------------------

    def summary(self) -> RunSummary:
        return RunSummary.from_dict(self._read_json(self.root / SUMMARY, SUMMARY), str(self.root / SUMMARY))

    def summary_data(self) -> dict | None:
        """``summary.json`` as written (None when absent or unreadable): a session that ran nothing keeps
        what the last one recorded."""
        try:
            data = json.loads((self.root / SUMMARY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_summary(self, summary: RunSummary) -> None:
        atomic_write(self.root / SUMMARY, dump_json(summary.to_dict()))

    def breakdown(self) -> Breakdown | None:
        """The finished run's breakdown (None when no session computed it yet)."""
        path = self.root / BREAKDOWN
        if not path.is_file():
            return None
        return Breakdown.from_dict(self._read_json(path, BREAKDOWN))

    def write_breakdown(self, breakdown: Breakdown) -> None:
        atomic_write(self.root / BREAKDOWN, dump_json(breakdown.to_dict()))

    def write_selection(self, selection: dict) -> Path:
        """``select-best``'s result (its own record: :func:`espl_bench.running.select_best.select_best`)."""
        atomic_write(self.selection_path, dump_json(selection))
        return self.selection_path

    def write_evaluation(self, iteration: int, breakdown: Breakdown) -> Path:
        """``evaluate``'s breakdown of ``iteration`` on more test items; returns its path."""
        path = self.evaluation_path(len(breakdown.items.indices), breakdown.items.samples)
        atomic_write(path, dump_json({"iteration": iteration, **breakdown.to_dict()}))
        return path

    def compact_files(self) -> dict[str, str]:
        """The records of :data:`COMPACT` and the last iteration's pool, as relative path -> text."""
        files = {name: (self.root / name).read_text(encoding="utf-8") for name in COMPACT if (self.root / name).is_file()}
        latest = files.get(MARKER, "").strip()
        if latest.isdigit():
            pool = f"{ITERATIONS}/{iteration_name(int(latest))}/{POOL}"
            if (self.root / pool).is_file():
                files[pool] = (self.root / pool).read_text(encoding="utf-8")
        return files

    # -- reading -------------------------------------------------------------------------------------

    def _read(self, path: Path, where: str, parse: Callable[[Any], R]) -> R:
        data = self._read_json(path, where)
        try:
            return parse(data)
        except RecordError:
            raise
        except ValueError as exc:  # pydantic's ValidationError
            raise RecordError(f"{path} is malformed ({str(exc).splitlines()[0]}); fix: restore the file or start a new run") from None

    @staticmethod
    def _read_json(path: Path, where: str) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{where}: {path.name} is missing ({path}); fix: resume from a complete run folder "
                              "or start a new run") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{where}: {path.name} is corrupt ({path}: {type(exc).__name__}); fix: restore the file "
                              "or start a new run") from None

    @staticmethod
    def _read_jsonl(path: Path, where: str) -> list[Any]:
        try:
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            raise RunDirError(f"{where}: {path.name} is missing ({path}); fix: resume from a complete run folder "
                              "or start a new run") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{where}: {path.name} is corrupt ({path}: {exc}); fix: restore the file "
                              "or start a new run") from None


def find_runs(roots: list[Path]) -> set[Path]:
    """Every folder under ``roots`` holding a run's summary or header (a root may itself be one)."""
    return {p.parent for root in roots for name in (SUMMARY, HEADER) for p in root.rglob(name) if p.is_file()}


def _state_json(state: IterationState) -> dict:
    """``state.json``'s content: without a ``pending`` key when nothing was prefetched, as before
    ``--max-staleness`` existed (K=0 runs stay byte-identical)."""
    data = state.model_dump(mode="json")
    if data.get("pending") is None:
        data.pop("pending", None)
    return data
