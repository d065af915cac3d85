"""Base-weights test cells shared between runs: the evaluation protocol's identity, used to save work.

The protocol (:mod:`espl_bench.scoring.evaluation`) seeds every sample from its coordinates, so
the same weights and the same prompt give the same episodes, whichever run scores them. Every run
of a suite scores the base weights with the root prompt in its weights x prompt breakdown, and a
frozen-weight run often ends on the root; :class:`CellStore` lets the second of those runs read
the first's cell instead of decoding it again.

A cell is reused only when everything that makes it is equal: the scope (model, sampler, env and
its arguments, the code's version and commit, given by the run) and the items, sampling and
prompt text. Only base weights are stored: trained weights are a run's own. A stored file that
cannot be read, or holds other items, is a miss (and is overwritten), never an error. A cell being
scored is claimed (:meth:`CellStore.claimed`, a lock per cell), so that parallel runs score it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from espl_bench.agents.sampler import SamplingParams
from espl_bench.errors import FolderBusy
from espl_bench.locks import waited
from espl_bench.records import CellResult, EvalItems

log = logging.getLogger(__name__)

CLAIM_WAIT = 3600.0  # seconds: a 300-problem cell decodes in about 2.5 minutes on 2 cores


class CellStore:
    """A folder of base-weights cells keyed by what makes them (see the module docstring)."""

    def __init__(self, root: str | Path, scope: dict):
        self.root = Path(root)
        self.scope = scope
        self.hits = 0
        self.misses = 0

    def _path(self, prompt: str, items: EvalItems, params: SamplingParams) -> Path:
        key = {"scope": self.scope, "items": items.to_dict(), "prompt": prompt,
               "sampling": {"max_new_tokens": params.max_new_tokens, "temperature": params.temperature,
                            "top_p": params.top_p}}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
        return self.root / f"{digest}.json"

    @contextlib.contextmanager
    def claimed(self, prompts: list[str], items: EvalItems, params: SamplingParams) -> Iterator[None]:
        """Hold these cells' locks while this run scores them: a run that wants one of them meanwhile
        (parallel runs of a grid end on the same base/root cell) waits, then reads it with :meth:`get`
        instead of decoding it again. Locks are taken in one order, so two runs never wait on each
        other; one not had within :data:`CLAIM_WAIT` seconds is gone without (the cell is scored twice)."""
        with contextlib.ExitStack() as stack:
            for path in sorted({self._path(p, items, params) for p in prompts}):
                try:
                    stack.enter_context(waited(path.with_suffix(".lock"), f"cell {path.name}", CLAIM_WAIT))
                except (FolderBusy, OSError) as exc:
                    log.warning("cell store: %s; scoring the cell here too", exc)
            yield

    def get(self, prompt: str, program: str, items: EvalItems, params: SamplingParams) -> CellResult | None:
        path = self._path(prompt, items, params)
        try:
            cell = CellResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            cell = None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cell store: %s is unreadable (%s); scoring the cell again", path, type(exc).__name__)
            cell = None
        if cell is None or cell.items != items:
            self.misses += 1
            return None
        self.hits += 1
        return replace(cell, program=program, weights="base")

    def put(self, prompt: str, cell: CellResult, params: SamplingParams) -> None:
        """Store ``cell``; a folder that cannot be written costs later runs a recomputation, never this run."""
        path = self._path(prompt, cell.items, params)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(cell.to_dict(), f)
            os.replace(tmp, path)  # runs on other processes may read it at once: never half-written
        except OSError as exc:
            log.warning("cell store: cannot write %s (%s); the cell is not shared", path, exc.strerror or exc)
