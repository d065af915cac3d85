"""Reflection operators: mutation of the iteration's best program, and crossover of winners.

Mutation (paper, steps 7a-c): summarise each rollout of the best program on the problems it
neither always solved nor always failed; critique each such problem with at most ``max_ops``
add/modify edits; then one batch revision turns all proposals into the child's edits.
Crossover (step 8): from the per-problem win matrix, the best program is edited with the
principles of programs that alone solved some problems.

Any malformed answer gets one repair attempt that quotes the error; if that fails too the
reflection is recorded as failed, no child is made, and the run goes on. An edit whose text the
admission rule refuses (:mod:`espl_bench.method.admission`: a placeholder, an echo of the
templates, markup or code, talk about the edits, an answer to one problem, not words) is dropped
and counted by reason; an answer left with no edit is malformed. Every principle a child adds or
changes is admitted (the fallback's edits passed the rule in their critique; a text cut at
``max_words`` is judged again), else there is no child. A child whose principles equal its
parent's is no child. Operators never touch the pool: a child gets its id when the loop admits it.

Outcomes are counted apart (:attr:`ReflectionOutcome.label`): a child from the batch revision
(``revision``), from the critiques' edits when the revision was unusable (``fallback``), from
crossover (``crossover``); or ``failed`` / ``skipped``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from string import Template

from espl_bench.agents.reflector import Reflector, ReflectorCallError
from espl_bench.agents.rollout import Rollout
from espl_bench.method.admission import LANGUAGE, Reason, Verdict, admit, copy_guard_share
from espl_bench.method.copies import CopyGuard, ProblemCopies
from espl_bench.method.edits import ReflectionParseError, ops_schema, ops_token_bound, parse_ops
from espl_bench.method.program import EditOp, Program, apply_edits
from espl_bench.method.rating import crossover_prior, mutation_prior
from espl_bench.records import ReflectionRecord

log = logging.getLogger(__name__)

TEMPLATE_NAMES = ("summarize", "critique", "revise", "crossover", "repair")
_MAX_TEXT = 3000  # characters of a problem or response shown to the reflector


def load_templates() -> dict[str, Template]:
    root = resources.files("espl_bench.method") / "prompts"
    return {name: Template((root / f"{name}.md").read_text(encoding="utf-8")) for name in TEMPLATE_NAMES}


def template_hashes() -> dict[str, str]:
    """sha256 of each prompt template, recorded in the run so a changed template is detectable."""
    root = resources.files("espl_bench.method") / "prompts"
    return {name: hashlib.sha256((root / f"{name}.md").read_bytes()).hexdigest() for name in TEMPLATE_NAMES}


SOURCES = ("revision", "fallback", "crossover")  # where an admitted child came from


@dataclass
class ReflectionOutcome:
    """What one mutation or crossover produced: a child, or why not."""

    kind: str  # mutation | crossover
    status: str  # ok | failed | skipped
    reason: str = ""
    child: Program | None = None
    calls: int = 0
    repairs: int = 0
    fallback: bool = False  # the batch revision failed and the critiques' edits were applied
    rejected: dict[str, int] = field(default_factory=dict)  # edits the admission rule refused, by reason
    paths: dict[str, int] = field(default_factory=dict)  # edit calls by path: schema | fallback
    log: list[dict] = field(default_factory=list)  # every prompt and answer, for audit and replay

    @property
    def label(self) -> str:
        """``revision``, ``fallback`` or ``crossover`` for a child; else ``failed`` or ``skipped``."""
        if self.status != "ok" or self.child is None:
            return self.status
        return "crossover" if self.kind == "crossover" else "fallback" if self.fallback else "revision"

    @property
    def copies(self) -> int:
        """Edits refused for copying the templates' text or a placeholder (the copy guard's share)."""
        return copy_guard_share(self.rejected)

    def refuse(self, verdict: Verdict) -> None:
        """Count an edit the admission rule refused."""
        self.rejected[verdict.why] = self.rejected.get(verdict.why, 0) + 1

    def reject(self, reason: str) -> None:
        """No child after all (the loop refused it): the outcome becomes a failure."""
        self.status, self.reason, self.child = "failed", reason, None

    def to_record(self) -> ReflectionRecord:
        return ReflectionRecord(kind=self.kind, status=self.status, label=self.label, reason=self.reason,
                                child=self.child.id if self.child else None, calls=self.calls, repairs=self.repairs,
                                fallback=self.fallback, copies=self.copies, rejected=self.rejected, paths=self.paths,
                                log=self.log)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT // 2] + "\n[...]\n" + text[-_MAX_TEXT // 2 :]


def _principles_text(program: Program) -> str:
    return "\n".join(f"{k}: {v}" for k, v in program.principles.items()) or "(none yet)"


def render_trajectory(rollout: Rollout, budget: int = _MAX_TEXT) -> str:
    """The episode as the reflector reads it: every reply and environment message, in order.

    Single-turn episodes are just the reply. Multi-turn ones list each turn's action and the
    observation it got (tool output, game feedback), then the outcome; each message is clipped
    and, past ``budget`` characters, the middle turns are elided so the start (the approach) and
    the end (how it finished) stay visible within the reflector's context.
    """
    turns = rollout.turns_after_prompt
    if len(turns) <= 1:
        return _clip(rollout.response)
    per_message = max(200, budget // max(1, len(turns)))
    lines = []
    for n, message in enumerate(turns):
        who = "ACTION" if message["role"] == "assistant" else "OBSERVATION"
        text = message["content"]
        text = text if len(text) <= per_message else text[: per_message - 20] + " [...]"
        lines.append(f"[{n // 2 + 1}] {who}: {text}")
    outcome = f"OUTCOME: reward {rollout.reward:g} after {rollout.turns} turns" + (
        ", cut off by the turn limit" if rollout.truncated else "") + (
        f", {rollout.invalid_actions} invalid actions" if rollout.invalid_actions else "")
    text = "\n".join(lines)
    if len(text) > budget:
        head, tail = lines[: len(lines) // 3], lines[-len(lines) // 3 :]
        text = "\n".join([*head, f"[... {len(lines) - len(head) - len(tail)} messages elided ...]", *tail])[:budget * 2]
    return f"{text}\n{outcome}"


def _problem_text(rollout: Rollout) -> str:
    return _clip(rollout.observation)


# Tokens a summary may write ("at most five short lines"); an edit call's budget is its schema's
# bound (edits.ops_token_bound), and a structured answer ends as soon as its JSON is whole.
SUMMARY_TOKENS = 64
SUMMARY_STOP = ["\n\n"]  # the summary is a few lines; a blank line means it has moved on
# An attempt no longer than a summary would be is shown as it is: summarising it costs a call
# and compresses nothing (short single-turn replies, the common case on small models).
VERBATIM_CHARS = 4 * SUMMARY_TOKENS


def shown_verbatim(rollout: Rollout, attempt: str) -> bool:
    """Whether the reflector reads ``attempt`` (the rendered ``rollout``) as it is, not summarised:
    it is at most a summary's characters, or a single reply of at most a summary's tokens (a reply
    cut at --max-new-tokens 64 has ~300 characters, and its summary would have as many tokens)."""
    single = len(rollout.turns_after_prompt) <= 1
    return len(attempt) <= VERBATIM_CHARS or (single and 0 < rollout.generated_tokens <= SUMMARY_TOKENS)


class _Session:
    """Calls the reflector for one operator, recording every exchange.

    ``deadline`` (a ``time.monotonic()`` value) bounds the whole reflection of an iteration: past
    it no new call starts, so a slow or hanging reflector delays an iteration by at most the
    deadline plus one call's own timeout. Edit calls ask for :func:`~espl_bench.method.edits.ops_schema`
    when the reflector honours structured output (``path`` "schema" in the log), and fall back
    to parse-and-repair otherwise ("fallback"); each logged call says which, and whether it gave
    usable edits.
    """

    def __init__(self, reflector: Reflector, templates: dict[str, Template], outcome: ReflectionOutcome,
                 deadline: float | None = None, max_words: int = 32, language: str = LANGUAGE,
                 problems: Iterable[str] = ()):
        self.reflector = reflector
        self.language = language
        self.templates = templates
        self.outcome = outcome
        self.deadline = deadline
        self.max_words = max_words
        self.guard = CopyGuard(templates.values())
        self.problems = ProblemCopies(problems)  # what the reflector is shown: an edit must not copy it
        self._lock = threading.Lock()  # critiques and summaries run in threads and share the counters

    def record(self, entry: dict) -> None:
        """Log an entry that is not a call (a summary shown as it is, a skipped critique)."""
        with self._lock:
            self.outcome.log.append(entry)

    def ask(self, template: str, purpose: str, *, max_tokens: int | None = None, stop: list[str] | None = None,
            **values) -> str:
        prompt = self.templates[template].safe_substitute(**values)
        return self.chat([{"role": "user", "content": prompt}], purpose, max_tokens=max_tokens, stop=stop)

    def chat(self, messages: list[dict], purpose: str, *, max_tokens: int | None = None,
             schema: dict | None = None, stop: list[str] | None = None) -> str:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ReflectorCallError(f"{purpose}: the iteration's reflection deadline has passed")
        with self._lock:
            self.outcome.calls += 1
        try:
            answer = self.reflector.complete(messages, purpose=purpose, max_tokens=max_tokens, schema=schema, stop=stop)
        except ReflectorCallError as exc:
            self.outcome.log.append({"purpose": purpose, "error": str(exc)})
            raise
        entry = {"purpose": purpose, "prompt": messages[-1]["content"], "answer": answer}
        if schema is not None:
            entry["path"] = "schema" if self.reflector.honours_schema else "fallback"
            with self._lock:
                self.outcome.paths[entry["path"]] = self.outcome.paths.get(entry["path"], 0) + 1
        self.outcome.log.append(entry)
        return answer

    def ask_ops(self, template: str, purpose: str, *, allowed: set[str], valid_ids: set[str], max_ops: int,
                max_tokens: int | None = None, **values) -> list[EditOp]:
        """Ask for edit operations; on a parse error, one repair attempt that quotes the error."""
        schema = ops_schema(allowed=allowed, valid_ids=valid_ids, max_ops=max_ops, max_words=self.max_words)
        prompt = self.templates[template].safe_substitute(max_ops=max_ops, **values)
        messages = [{"role": "user", "content": prompt}]
        max_tokens = max_tokens or ops_token_bound(max_ops, self.max_words)
        answer = self.chat(messages, purpose, max_tokens=max_tokens, schema=schema)
        try:
            return self._usable(answer, allowed, valid_ids, max_ops)
        except ReflectionParseError as exc:
            with self._lock:
                self.outcome.repairs += 1
            repair = self.templates["repair"].safe_substitute(error=str(exc))
            if self.reflector.honours_schema:
                # The answer had the right shape but said nothing usable; shown its own answer, a
                # small model writes it again. A fresh attempt with the reason appended does not.
                messages = [{"role": "user", "content": f"{prompt}\n\n{repair}"}]
            else:
                messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": repair}]
            answer = self.chat(messages, f"{purpose} (repair)", max_tokens=max_tokens, schema=schema)
            return self._usable(answer, allowed, valid_ids, max_ops)

    def _usable(self, answer: str, allowed: set[str], valid_ids: set[str], max_ops: int) -> list[EditOp]:
        """The answer's valid edits minus those the admission rule refuses (at least one must
        remain); the log entry of the call says whether it was usable and why edits were refused."""
        entry: dict = next((e for e in reversed(self.outcome.log) if e.get("answer") is answer), {})
        try:
            ops = parse_ops(answer, allowed=allowed, valid_ids=valid_ids, max_ops=max_ops)
            verdicts = [None if op.op == "remove" else self.admit(op.text) for op in ops]
            refused = [v for v in verdicts if v is not None and not v.admitted]
            kept = [op for op, v in zip(ops, verdicts) if v is None or v.admitted]
            if refused:
                entry["refused"] = [{"text": v.text, "reason": v.why, "detail": v.detail} for v in refused]
                with self._lock:
                    for verdict in refused:
                        self.outcome.refuse(verdict)
            if not kept:
                echo = all(v.reason in (Reason.ECHO, Reason.PLACEHOLDER) for v in refused)
                raise ReflectionParseError(
                    ("every edit copies the example or placeholder of the instructions" if echo else
                     "no edit is plain advice (" + "; ".join(sorted({v.why for v in refused})) + ")")
                    + "; write principles of your own, drawn from the attempts, as plain sentences")
        except ReflectionParseError as exc:
            entry["valid"], entry["parse_error"] = False, str(exc)
            raise
        entry["valid"] = True
        return kept

    def admit(self, text: str) -> Verdict:
        return admit(text, language=self.language, guard=self.guard, problems=self.problems)

    def refused_principle(self, parent: dict[str, str], principles: dict[str, str]) -> str:
        """Why a child's principles cannot stand ('' when every new or changed text is admitted):
        the edits were admitted before :func:`apply_edits` cut them at ``max_words``."""
        old = set(parent.values())
        for text in principles.values():
            verdict = self.admit(text) if text not in old else None
            if verdict is not None and not verdict.admitted:
                self.record({"purpose": "child", "refused": [
                    {"text": text, "reason": verdict.why, "detail": verdict.detail}]})
                with self._lock:
                    self.outcome.refuse(verdict)
                return f"a principle of the child is not admitted ({verdict.describe()}): {text!r}"
        return ""


class Mutation:
    """Reflective mutation of one program from its rollouts (paper step 7)."""

    def __init__(self, reflector: Reflector, *, max_ops: int = 2, max_words: int = 32, inflation: float = 1.0,
                 max_revision_ops: int = 4, concurrency: int = 16, revision_fallback: bool = True,
                 deadline_s: float | None = None, templates: dict[str, Template] | None = None,
                 language: str = LANGUAGE):
        self.language = language
        self.revision_fallback = revision_fallback
        self.deadline_s = deadline_s
        self.reflector = reflector
        self.max_ops = max_ops
        self.max_words = max_words
        self.inflation = inflation
        self.max_revision_ops = max_revision_ops
        self.concurrency = concurrency
        self.templates = templates or load_templates()

    def __call__(self, parent: Program, rollouts: list[Rollout], iteration: int) -> ReflectionOutcome:
        outcome = ReflectionOutcome(kind="mutation", status="ok")
        by_problem: dict[str, list[Rollout]] = {}
        for rollout in rollouts:
            by_problem.setdefault(rollout.problem_id, []).append(rollout)
        mixed = {p: rs for p, rs in by_problem.items() if 0 < _mean(rs) < 1}
        # With no mixed-outcome problem (common for small models), reflect on the failures instead.
        chosen = mixed or {p: rs for p, rs in by_problem.items() if _mean(rs) < 1}
        if not chosen:
            outcome.status, outcome.reason = "skipped", "every rollout succeeded: nothing to learn from"
            return outcome
        session = _Session(self.reflector, self.templates, outcome, _deadline(self.deadline_s), self.max_words,
                           self.language, problems={r.problem_id: r.observation for r in rollouts}.values())
        valid_ids = set(parent.principles)
        try:
            summaries = self._summaries(session, parent, chosen)
            proposals = self._critiques(session, parent, chosen, summaries)
            if not proposals:
                outcome.status, outcome.reason = "failed", "no critique produced a valid edit"
                return outcome
            try:
                ops = session.ask_ops("revise", "batch revision", allowed={"add", "modify", "merge"},
                                      valid_ids=valid_ids, max_ops=self.max_revision_ops,
                                      principles=_principles_text(parent), proposals=json.dumps(proposals, indent=1),
                                      max_words=self.max_words)
            except ReflectionParseError as exc:
                if not self.revision_fallback:
                    raise
                # Small reflectors often manage a one-problem critique but not the batch revision;
                # the critiques' own validated edits are then better than no child at all.
                outcome.reason = f"batch revision unusable ({exc}); applied the critiques' edits"
                outcome.fallback = True
                ops = [EditOp(**p) for p in proposals[: self.max_revision_ops]]
        except ReflectionParseError as exc:
            outcome.status, outcome.reason = "failed", f"revision unusable after one repair: {exc}"
            return outcome
        except ReflectorCallError as exc:
            outcome.status, outcome.reason = "failed", str(exc)
            return outcome
        principles = apply_edits(parent.principles, ops, max_words=self.max_words)
        if principles == apply_edits(parent.principles, [], max_words=self.max_words):
            outcome.status, outcome.reason = "failed", "the edits leave the program unchanged"
            return outcome
        if refused := session.refused_principle(parent.principles, principles):
            outcome.status, outcome.reason = "failed", refused
            return outcome
        mu, sigma = mutation_prior(parent, self.inflation)
        outcome.child = Program(
            id="", principles=principles, preamble=parent.preamble, parents=[parent.id], origin="mutation",
            iteration=iteration, mu=mu, sigma=sigma, edits=[op.model_dump(exclude_defaults=True) for op in ops])
        return outcome

    def _critiques(self, session: _Session, parent: Program, chosen: dict[str, list[Rollout]],
                   summaries: dict[str, str]) -> list[dict]:
        """Per-problem critiques, asked concurrently; an unusable one is logged and skipped."""

        def critique(item: tuple[str, list[Rollout]]) -> list[dict]:
            problem_id, rs = item
            try:
                ops = session.ask_ops("critique", f"critique {problem_id}", allowed={"add", "modify"},
                                      valid_ids=set(parent.principles), max_ops=self.max_ops,
                                      principles=_principles_text(parent), problem=_problem_text(rs[0]),
                                      answer=rs[0].answer, summaries=summaries[problem_id], max_words=self.max_words)
            except ReflectionParseError as exc:
                session.record({"purpose": f"critique {problem_id}", "parse_error": str(exc)})
                return []
            return [op.model_dump(exclude_defaults=True) for op in ops]

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(chosen)))) as executor:
            results = list(executor.map(critique, chosen.items()))
        unique: dict[str, dict] = {}
        for proposal in (p for ops in results for p in ops):
            unique.setdefault(json.dumps(proposal, sort_keys=True), proposal)
        return list(unique.values())

    def _summaries(self, session: _Session, parent: Program, chosen: dict[str, list[Rollout]]) -> dict[str, str]:
        jobs = [(p, r) for p, rs in chosen.items() for r in rs]

        def summarise(job: tuple[str, Rollout]) -> str:
            problem_id, rollout = job
            attempt = render_trajectory(rollout)
            if shown_verbatim(rollout, attempt):
                session.record({"purpose": f"summary {problem_id}", "verbatim": attempt})
                return "the attempt itself: " + " ".join(attempt.split())
            return session.ask("summarize", f"summary {problem_id}", max_tokens=SUMMARY_TOKENS, stop=SUMMARY_STOP,
                               system_prompt=parent.render(),
                               problem=_problem_text(rollout), response=attempt,
                               reward=f"{rollout.reward:g}", answer=rollout.answer)

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(jobs)))) as executor:
            texts = list(executor.map(summarise, jobs))
        out: dict[str, list[str]] = {}
        for (problem_id, rollout), text in zip(jobs, texts):
            out.setdefault(problem_id, []).append(f"- reward {rollout.reward:g}: {text.strip()}")
        return {p: "\n".join(lines) for p, lines in out.items()}


class Crossover:
    """Recombination of the best program with programs that alone won some problems (step 8)."""

    def __init__(self, reflector: Reflector, *, max_ops: int = 4, max_words: int = 32, inflation: float = 1.0,
                 deadline_s: float | None = None, templates: dict[str, Template] | None = None,
                 language: str = LANGUAGE):
        self.language = language
        self.deadline_s = deadline_s
        self.reflector = reflector
        self.max_ops = max_ops
        self.max_words = max_words
        self.inflation = inflation
        self.templates = templates or load_templates()

    def __call__(self, best: Program, programs: list[Program], wins: dict[str, list[str]],
                 problems: dict[str, str], iteration: int) -> ReflectionOutcome:
        outcome = ReflectionOutcome(kind="crossover", status="ok")
        others = [p for p in programs if p.id != best.id and wins.get(p.id)]
        if not others:
            outcome.status, outcome.reason = "skipped", "no other program won a problem outright"
            return outcome
        winners = "\n\n".join(
            f"### Prompt {p.id}\n{_principles_text(p)}\nSolved only by it:\n"
            + "\n".join(f"- {_clip(problems.get(q, q))}" for q in wins[p.id])
            for p in others)
        session = _Session(self.reflector, self.templates, outcome, _deadline(self.deadline_s), self.max_words,
                           self.language, problems=problems.values())
        try:
            ops = session.ask_ops("crossover", "crossover", allowed={"add", "modify", "remove"},
                                  valid_ids=set(best.principles), max_ops=self.max_ops,
                                  principles=_principles_text(best), winners=winners, max_words=self.max_words)
        except ReflectionParseError as exc:
            outcome.status, outcome.reason = "failed", f"crossover unusable after one repair: {exc}"
            return outcome
        except ReflectorCallError as exc:
            outcome.status, outcome.reason = "failed", str(exc)
            return outcome
        principles = apply_edits(best.principles, ops, max_words=self.max_words)
        if principles == apply_edits(best.principles, [], max_words=self.max_words):
            outcome.status, outcome.reason = "failed", "the edits leave the program unchanged"
            return outcome
        if refused := session.refused_principle(best.principles, principles):
            outcome.status, outcome.reason = "failed", refused
            return outcome
        parents = [best, *others]
        mu, sigma = crossover_prior(parents, self.inflation)
        outcome.child = Program(
            id="", principles=principles, preamble=best.preamble, parents=[p.id for p in parents], origin="crossover",
            iteration=iteration, mu=mu, sigma=sigma, edits=[op.model_dump(exclude_defaults=True) for op in ops])
        return outcome


def win_matrix(rollouts: list[Rollout]) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """Per-program, per-problem mean reward (the paper's Phi) and the problems each program won outright."""
    sums: dict[str, dict[str, list[float]]] = {}
    for r in rollouts:
        sums.setdefault(r.spec.id.program or "", {}).setdefault(r.problem_id, []).append(r.reward)
    phi = {p: {q: sum(v) / len(v) for q, v in row.items()} for p, row in sums.items()}
    problems = sorted({q for row in phi.values() for q in row})
    wins: dict[str, list[str]] = {p: [] for p in phi}
    for q in problems:
        scores = sorted(((row.get(q, 0.0), p) for p, row in phi.items()), reverse=True)
        if len(scores) > 1 and scores[0][0] > scores[1][0]:
            wins[scores[0][1]].append(q)
    return phi, wins


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _mean(rollouts: list[Rollout]) -> float:
    return sum(r.reward for r in rollouts) / len(rollouts)
