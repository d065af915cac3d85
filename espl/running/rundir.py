"""The run folder: atomic, committed iterations and resume.

Layout::

    run.json              schema version, config, prompt-template hashes (written at start)
    iterations/000003/    one folder per committed iteration: state.json, pool.json,
                          rollouts.jsonl, reflections.jsonl, metrics.json
    learner/              TRL checkpoints (checkpoint-N = after iteration N)
    metrics.jsonl         one line per committed iteration
    summary.json          the run at a glance
    best_prompt.txt       the test-time program's text, ready to copy
    LATEST                the last committed iteration; written last, so it is the commit marker

An iteration folder is written under ``.tmp-*`` and renamed into place; files are fsynced
before the rename. Anything newer than ``LATEST`` is an uncommitted leftover and is removed on
resume.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from espl_bench.errors import RunDirError

SCHEMA_VERSION = 1


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


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.iterations = self.root / "iterations"
        self.learner = self.root / "learner"

    # -- start and resume ------------------------------------------------------------------------

    def check_new(self) -> None:
        """Refuse a folder that already holds a run (before anything is built or written)."""
        if (self.root / "LATEST").exists() or (self.root / "run.json").exists():
            raise RunDirError(f"{self.root} already holds a run; fix: pass --resume to continue it or choose another --out")

    def create(self, header: dict) -> None:
        self.check_new()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / "run.json", dump_json({"schema_version": SCHEMA_VERSION, **header}))

    def header(self) -> dict:
        return self._read_json(self.root / "run.json", "the run header")

    def latest(self) -> int:
        """The last committed iteration (0 when none is)."""
        path = self.root / "LATEST"
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
        atomic_write(self.root / "metrics.jsonl", dump_jsonl(self.all_metrics_upto(committed)))

    def load_iteration(self, iteration: int) -> dict[str, Any]:
        folder = self.iterations / f"{iteration:06d}"
        return {
            "state": self._read_json(folder / "state.json", f"iteration {iteration} state"),
            "pool": self._read_json(folder / "pool.json", f"iteration {iteration} pool"),
            "metrics": self._read_json(folder / "metrics.json", f"iteration {iteration} metrics"),
        }

    # -- commit ----------------------------------------------------------------------------------

    def commit(self, iteration: int, *, state: dict, pool: dict, rollouts: list[dict], reflections: list[dict],
               metrics: dict, summary: dict, best_prompt: str, adapter: Path | None = None) -> None:
        """Write iteration ``iteration`` and make it the committed one (see the module docstring)."""
        self.iterations.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.iterations))
        files = {
            "state.json": dump_json(state),
            "pool.json": dump_json(pool),
            "rollouts.jsonl": dump_jsonl(rollouts),
            "reflections.jsonl": dump_jsonl(reflections),
            "metrics.json": dump_json(metrics),
        }
        for name, text in files.items():
            with open(tmp / name, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        if adapter is not None:  # this iteration's LoRA weights, kept for select-best (the learner prunes old checkpoints)
            (tmp / "adapter").mkdir()
            for name in ADAPTER_FILES:
                shutil.copyfile(adapter / name, tmp / "adapter" / name)
                with open(tmp / "adapter" / name, "rb") as f:
                    os.fsync(f.fileno())
        final = self.iterations / f"{iteration:06d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        history = [*self.all_metrics_upto(iteration - 1), metrics]
        atomic_write(self.root / "metrics.jsonl", dump_jsonl(history))
        atomic_write(self.root / "summary.json", dump_json(summary))
        atomic_write(self.root / "best_prompt.txt", best_prompt.rstrip() + "\n")
        sys.audit("espl_bench.point", iteration, "commit")  # between the folder and LATEST
        atomic_write(self.root / "LATEST", f"{iteration}\n")

    def all_metrics_upto(self, iteration: int) -> list[dict]:
        return [self._read_json(self.iterations / f"{i:06d}" / "metrics.json", f"iteration {i} metrics")
                for i in range(1, iteration + 1)]

    @staticmethod
    def _read_json(path: Path, what: str) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{what} is missing ({path}); fix: resume from a complete run folder or start a new run") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunDirError(f"{what} is corrupt ({path}); fix: restore the file or start a new run") from None
