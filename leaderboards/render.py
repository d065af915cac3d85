"""Leaderboards as markdown and as a static, self-contained HTML site.

Contract:

* :func:`render_markdown` gives one table per env (rows as :func:`~leaderboards.aggregate.aggregate`
  sorted them, by mean, with their letters; success as ``mean [95% interval]``; ``–`` where a value
  is unknown), preceded by what the board was measured on, how its letters were made and the
  smallest difference it could detect, and followed by the paired tests, the weights x prompt
  table, the per-run budgets, the admission rule's refusals per method by reason (when some run
  refused an edit) and, when some GEPA run recorded it, each GEPA run's winning
  candidate and whether it is the root (older runs: "not recorded"). The columns of the leaderboard and of the pairs are declared
  once (:func:`row_columns`, :data:`PAIR_COLUMNS`) for both renderings: a new column is one entry.
* :func:`render_site` writes into ``out_dir``: ``index.html`` (per env: the table, then an inline
  SVG of mean train and test success against iteration and against cumulative rollouts, one line
  per (method, model)), ``runs/<slug>.html`` per run (its best prompt, its lineage, and the pool's
  evolutionary tree as inline SVG with the test-time program highlighted) and ``leaderboard.md``;
  other ``runs/*.html`` left by an earlier render are removed.
  Every link is relative and resolves to a written file; nothing is loaded from outside.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections import Counter
from collections.abc import Callable
from html import escape
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from espl_bench.leaderboards.aggregate import (
    CURVE_EDGE,
    EnvBoard,
    LeaderboardRow,
    PairComparison,
    RunRecord,
    TreeNode,
    ancestors,
    curve_change,
    load_tree,
    row_curve,
)

log = logging.getLogger(__name__)
BOLD = ' font-weight="bold"'

CSS = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:78rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3}td.t{text-align:left}figure svg{max-width:100%;height:auto}
pre{background:#f7f7f7;padding:1rem;white-space:pre-wrap}.tree{overflow:auto;border:1px solid #ddd}"""


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(interval) -> str:
    return "–" if interval is None else f"{interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _signed(interval) -> str:
    return "–" if interval is None else f"{interval.estimate:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"


def _pass_keys(board: EnvBoard) -> list[str]:
    keys = {k for row in board.rows for k in row.pass_at}
    return sorted(keys, key=lambda k: int(k[5:]) if k[5:].isdigit() else 0)


CELL_COLUMNS = ("base/root", "base/program", "trained/root", "trained/program")
EFFECT_COLUMNS = ("prompt (base weights)", "weights (root prompt)", "interaction", "total")


RowCell = Callable[[LeaderboardRow], str]


def row_columns(board: EnvBoard) -> list[tuple[str, RowCell]]:
    """The leaderboard's columns, (header, cell of a row), in order; ``method`` is a link in HTML."""
    return [("group", lambda r: r.letters or "–"), ("method", lambda r: r.method), ("model", lambda r: r.model),
            ("test success [95% CI]", lambda r: _ci(r.success)),
            *((k, lambda r, k=k: _num(r.pass_at.get(k))) for k in _pass_keys(board)),
            ("invalid action rate", lambda r: _num(r.invalid_action_rate)),
            ("children per run (revision / fallback / crossover)",
             lambda r: " / ".join(f"{r.children.get(k, 0):g}" for k in ("revision", "fallback", "crossover"))),
            ("edits refused per run", lambda r: "– (runs before the admission rule)" if r.refused is None
             else f"{r.refused:g}"),
            ("seeds", lambda r: str(r.n_seeds))]


def _detectable_cell(p: PairComparison) -> str:
    if p.shared is not None:
        return str(p.shared)
    return "– (no variation)" if p.detectable is None else f"{p.detectable:.3f}"


PAIR_COLUMNS: list[tuple[str, Callable[[PairComparison], str]]] = [
    ("a", lambda p: p.a), ("b", lambda p: p.b), ("a - b [95% CI]", lambda p: _signed(p.difference)),
    ("p (Holm)", lambda p: f"{p.adjusted:.3f}"), ("separated", lambda p: "yes" if p.separated else "no"),
    ("detectable at the groups' level", _detectable_cell)]


def _breakdown_cells(row: LeaderboardRow) -> list[str]:
    return [*(_ci(row.cells.get(c)) for c in CELL_COLUMNS), *(_signed(row.effects.get(e)) for e in EFFECT_COLUMNS)]


def _budget_cells(row: LeaderboardRow) -> list[str]:
    from espl_bench.leaderboards.aggregate import BUDGET_KEYS

    return [f"{row.per_run[k]:.4f}" if k == "cost $" else f"{row.per_run[k]:g}" for k in BUDGET_KEYS]


def board_notes(board: EnvBoard) -> list[str]:
    """What a board's numbers are measured on, how its letters are made and what it can detect."""
    notes = [f"Measured on the {board.measured_on}." if board.measured_on else "No test results."]
    if not board.pairs:
        return notes
    pairs = len(board.pairs)
    notes.append(f"Groups: every pair of methods is tested, paired on the problems (t interval from the seeds x "
                 f"problems variance components, Satterthwaite degrees of freedom), Holm-adjusted over the {pairs} "
                 f"pairs so that the chance of separating any two equal methods is at most {board.alpha:.0%}. "
                 "Methods that share a letter are not separated; no order is claimed among them.")
    shared = [p for p in board.pairs if p.shared is not None]
    if board.detectable is not None:
        low, high = board.detectable
        notes.append(f"Smallest difference in test success this board could detect, per pair, at the groups' level "
                     f"(80% power, two-sided {board.pair_alpha:.4f} = {board.alpha:.0%}/{pairs}, Holm's first step; "
                     f"paired on its {board.problems} problems): {low:.3f} to {high:.3f}"
                     + (f", not counting {len(shared)} pair(s) whose runs ended on identical programs (their shared "
                        "cells cancel in the difference, so it says nothing about what the pair could detect)."
                        if shared else "."))
    return notes


GEPA_COLUMNS = ("seed", "winner", "root?", "winner's validation mean", "root's", "candidates", "validation problems")


def gepa_rows(board: EnvBoard) -> list[list[str]]:
    """Per GEPA run of ``board``: the candidate its search ended on and whether it is the root; none
    (no section at all) unless some run recorded it, so a board of older runs renders as before."""
    runs = [run for row in board.rows if row.method == "gepa" for run in row.runs]
    if not any(run.gepa for run in runs):
        return []
    return [[str(run.seed), *(["not recorded"] + [""] * 5 if run.gepa is None else
                              [run.gepa.winner, "yes" if run.gepa.root else "no", f"{run.gepa.winner_score:.3f}",
                               f"{run.gepa.root_score:.3f}", str(run.gepa.candidates),
                               str(run.gepa.validation_problems)])] for run in runs]


GEPA_NOTE = ("GEPA's selection per run: the candidate its search ended on (its validation best, scored at test "
             "time) and whether it is the root, which wins GEPA's ties:")


REFUSED_COLUMNS = ("method", "runs", "refused in all (by reason)")
REFUSED_NOTE = ("Edits the admission rule refused, over all runs of a method (GEPA's: whole proposals), by reason; "
                "a method whose runs refused none, or predate the rule, is not listed:")


def refused_rows(board: EnvBoard) -> list[list[str]]:
    """Per method, the admission rule's refusals summed over its runs, by reason (the run pages give
    each run's); none (no section) when no run refused anything, so older boards render as before."""
    rows = []
    for row in board.rows:
        if any(run.refused is None for run in row.runs):
            continue
        total: Counter[str] = Counter()
        for run in row.runs:
            total.update(run.refused or {})
        if total:
            rows.append([row.method, str(len(row.runs)), _refused(dict(total))])
    return rows


def render_markdown(boards: list[EnvBoard]) -> str:
    """One ``##`` section per env: notes, the table, the weights x prompt table, the budgets."""
    from espl_bench.leaderboards.aggregate import BUDGET_KEYS

    def md(text: str) -> str:
        return text.replace("|", "\\|")

    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                *("| " + " | ".join(md(c) for c in r) + " |" for r in rows), ""]

    out = ["# espl-bench leaderboard", ""]
    for board in boards:
        out += [f"## {board.env}", "", *board_notes(board), ""]
        columns = row_columns(board)
        out += table([h for h, _ in columns], [[cell(row) for _, cell in columns] for row in board.rows])
        if board.pairs:
            out += ["Paired differences in test success (95% interval, not adjusted; p-values Holm-adjusted over "
                    "all pairs) and what each pair could detect at the groups' level:", ""]
            out += table([h for h, _ in PAIR_COLUMNS], [[cell(p) for _, cell in PAIR_COLUMNS] for p in board.pairs])
        changes = [(row.method, curve_change(row)) for row in board.rows]
        if any(c is not None for _, c in changes):
            out += [f"Training success, last iterations minus first (up to {CURVE_EDGE} each, at most half of a "
                    "run's; 95% interval over (seed, problem) clusters; above zero: it rose beyond noise):", ""]
            out += table(["method", "change [95% CI]"], [[m, _signed(c)] for m, c in changes if c is not None])
        out += ["Weights x prompt (cells: test success; effects: paired differences, 95% intervals):", ""]
        out += table(["method", *CELL_COLUMNS, *EFFECT_COLUMNS], [[row.method, *_breakdown_cells(row)] for row in board.rows])
        out += ["Budget per run (mean over seeds):", ""]
        out += table(["method", *BUDGET_KEYS], [[row.method, *_budget_cells(row)] for row in board.rows])
        if refused_rows(board):
            out += [REFUSED_NOTE, ""]
            out += table(list(REFUSED_COLUMNS), refused_rows(board))
        if gepa_rows(board):
            out += [GEPA_NOTE, ""]
            out += table(list(GEPA_COLUMNS), gepa_rows(board))
    if boards:
        out += [md(_code_versions(boards)), ""]
    return "\n".join(out)


def _code_versions(boards: list[EnvBoard]) -> str:
    """Which code produced the board's runs (a board mixing versions says so)."""
    codes = Counter(run.code for board in boards for row in board.rows for run in row.runs)
    return "Runs by code version: " + ", ".join(f"{code} ({n})" for code, n in sorted(codes.items())) + "."


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def run_slug(run: RunRecord) -> str:
    """A file-name-safe name for a run's page, the same wherever the board is checked out (the digest
    is of the run folder's name and its parent's, not of the absolute path)."""
    digest = hashlib.sha1("/".join(run.path.resolve().parts[-2:]).encode()).hexdigest()[:8]
    return slug(f"{run.env}-{run.method}-{Path(run.model).name}-s{run.seed}") + f"-{digest}"


def _svg_of(fig: Figure, salt: str) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def curves_svg(board: EnvBoard) -> str | None:
    """Inline SVG: train and test success vs iteration and vs cumulative rollouts (``None``: no data)."""
    models = {row.model for row in board.rows}
    curves = [row_curve(row, row.method if len(models) == 1 else f"{row.method} · {Path(row.model).name}")
              for row in board.rows]
    if not any(c.iterations for c in curves):
        return None
    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharey=True)
    for c in curves:
        line, = axes[0][0].plot(c.iterations, c.train_success, marker="o", label=c.label)
        if c.train_low:
            axes[0][0].fill_between(c.iterations, c.train_low, c.train_high, color=line.get_color(), alpha=0.12)
        axes[0][1].plot(c.test_iterations, c.test_success, marker="o", label=c.label)
        axes[1][0].plot(c.cum_rollouts, c.train_success, marker="o", label=c.label)
        axes[1][1].plot(c.test_cum_rollouts, c.test_success, marker="o", label=c.label)
    for (i, j), title in {(0, 0): "train success", (0, 1): "test success", (1, 0): "train success",
                          (1, 1): "test success"}.items():
        ax = axes[i][j]
        ax.set_title(title)
        ax.set_xlabel("iteration" if i == 0 else "cumulative rollouts")
        ax.set_ylim(-0.05, 1.05)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{board.env}: mean over seeds (train success: 95% band over (seed, problem) clusters)")
    return _svg_of(fig, board.env)


def _depths(nodes: list[TreeNode]) -> dict[str, int]:
    index, depth = {n.id: n for n in nodes}, {}

    def visit(pid: str, stack: frozenset) -> int:
        if pid not in depth:
            parents = [p for p in index[pid].parents if p in index and p not in stack]
            depth[pid] = 1 + max((visit(p, stack | {pid}) for p in parents), default=-1)
        return depth[pid]

    for n in nodes:
        visit(n.id, frozenset())
    return depth


def _id_key(pid: str) -> tuple:
    return (int(pid[1:]) if pid[1:].isdigit() else 10**9, pid)


def tree_svg(nodes: list[TreeNode], highlight: str | None) -> str:
    """The evolutionary tree as SVG: layers by generation, edges parent -> child, ``highlight`` in gold."""
    w, h, gx, gy = 150, 58, 24, 46
    depth = _depths(nodes)
    layers: dict[int, list[TreeNode]] = {}
    for n in sorted(nodes, key=lambda n: _id_key(n.id)):
        layers.setdefault(depth[n.id], []).append(n)
    pos: dict[str, tuple[float, float]] = {}

    def centre(n: TreeNode) -> float:
        xs = [pos[p][0] for p in n.parents if p in pos]
        return sum(xs) / len(xs) if xs else 0.0

    for d in sorted(layers):  # order each layer by the mean position of its parents (fewer crossings)
        for i, n in enumerate(sorted(layers[d], key=centre)):
            pos[n.id] = (gx + i * (w + gx), gy / 2 + d * (h + gy))
    width = gx + max(len(ns) for ns in layers.values()) * (w + gx)
    height = gy + len(layers) * (h + gy)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="tree-svg" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto"><path d="M0,0L10,5L0,10z" fill="#666"/></marker></defs>']
    for n in nodes:
        for p in n.parents:
            if p in pos:
                x1, y1, x2, y2 = pos[p][0] + w / 2, pos[p][1] + h, pos[n.id][0] + w / 2, pos[n.id][1]
                bend = 0.0 if depth[n.id] - depth[p] <= 1 else 0.75 * w  # skip-layer edges curve around
                parts.append(f'<path class="edge" data-from="{escape(p)}" data-to="{escape(n.id)}" fill="none" '
                             f'd="M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1 + gy:.0f} {x2 + bend:.0f},{y2 - gy:.0f} '
                             f'{x2:.0f},{y2:.0f}" stroke="#666" marker-end="url(#arrow)"/>')
    fills = {"root": "#e8e8e8", "mutation": "#dbe9ff", "crossover": "#ffe3c7", "evicted": "#ffffff"}
    for n in nodes:
        x, y = pos[n.id]
        hot = n.id == highlight
        stroke = 'stroke="#c00" stroke-width="3"' if hot else 'stroke="#555"' + (
            ' stroke-dasharray="4 3"' if not n.in_pool else "")
        rating = f"μ {n.mu:.1f} ± {n.sigma:.1f}" if n.mu is not None and n.sigma is not None else "not in pool"
        origin = n.origin + (f" @ it {n.iteration}" if n.iteration is not None else "")
        parts.append(f'<g class="node{" test-program" if hot else ""}" id="node-{escape(n.id)}">'
                     f'<title>{escape(n.text or n.id)}</title>'
                     f'<rect x="{x:.0f}" y="{y:.0f}" width="{w}" height="{h}" rx="6" '
                     f'fill="{"#ffe680" if hot else fills.get(n.origin, "#eee")}" {stroke}/>'
                     + "".join(f'<text x="{x + w / 2:.0f}" y="{y + 16 + 15 * k:.0f}" text-anchor="middle"'
                               f'{BOLD if k == 0 else ""}>{escape(t)}</text>'
                               for k, t in enumerate([n.id + (" (test)" if hot else ""), rating, origin]))
                     + "</g>")
    parts.append("</svg>")
    return "".join(parts)


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _rating(n: TreeNode) -> str:
    return "–" if n.mu is None or n.sigma is None else f"{n.mu:.2f} ± {n.sigma:.2f}"


def _gepa_fact(run: RunRecord) -> list[tuple[str, str]]:
    """A GEPA run's winner for its page; nothing where it was not recorded (the page as before)."""
    g = run.gepa
    if g is None:
        return []
    text = (f"{g.winner} ({'the root' if g.root else 'not the root'}; validation mean {g.winner_score:.3f}, "
            f"root {g.root_score:.3f}, on {g.validation_problems} problems)")
    return [("GEPA's winner", text)]


def _refused(refused: dict[str, int] | None) -> str:
    if refused is None:
        return "not recorded (the run predates the admission rule, suite version 7)"
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{sum(refused.values())} ({reasons})" if reasons else "0"


def run_page(run: RunRecord, board_anchor: str) -> str:
    """The page of one run: facts, best prompt, lineage and evolutionary tree."""
    nodes = load_tree(run)
    chain = ancestors(nodes, run.test_program_id) if run.test_program_id else []
    facts = [("env", run.env), ("method", run.method), ("model", run.model), ("seed", str(run.seed)),
             ("iterations", str(run.iterations_completed)),
             ("test success [95% CI]", _ci(run.test.interval) if run.test else "–"),
             ("measured on", run.test.items.describe() if run.test else "–"),
             *((k, _num(v)) for k, v in run.pass_at.items()), ("test-time program", run.test_program_id or "–"),
             *_gepa_fact(run),
             *((f"weights x prompt: {name}", _ci(cell.interval)) for name, cell in run.cells.items()),
             ("children (revision / fallback / crossover)",
              " / ".join(str(run.children.get(k, 0)) for k in ("revision", "fallback", "crossover"))),
             ("edits refused by the admission rule", _refused(run.refused)),
             *((f"budget: {k}", str(v)) for k, v in run.budget.model_dump().items() if not isinstance(v, dict)),
             ("run folder", str(run.path)), ("code", run.code),
             *((k, str(getattr(run.provenance, k))) for k in ("python", "platform", "cuda")
               if run.provenance is not None and getattr(run.provenance, k)),
             *((name, version) for name, version in (run.provenance.packages if run.provenance else {}).items() if version)]
    body = [f'<p><a href="../index.html#{board_anchor}">← leaderboard</a></p>',
            f"<h1>{escape(run.env)} · {escape(run.method)} · seed {run.seed}</h1>",
            '<table class="facts">' + "".join(f'<tr><th>{escape(k)}</th><td class="t">{escape(v)}</td></tr>'
                                               for k, v in facts) + "</table>",
            f'<h2 id="best-prompt">Best prompt ({escape(run.test_program_id or "?")})</h2>',
            f'<pre class="best-prompt">{escape(run.best_prompt)}</pre>', '<h2 id="lineage">Lineage</h2>']
    if chain:
        body.append('<ol class="lineage">' + "".join(
            f'<li><b>{escape(n.id)}</b> — {escape(n.origin)}'
            f'{f", iteration {n.iteration}" if n.iteration is not None else ""}, μ ± σ {_rating(n)}, parents: '
            f'{escape(", ".join(n.parents) or "none")}'
            + (f"<details><summary>prompt</summary><pre>{escape(n.text)}</pre></details>" if n.text else "")
            + "</li>" for n in chain) + "</ol>")
    else:
        body.append("<p>No pool on record for this run.</p>")
    body.append('<h2 id="tree">Evolutionary tree</h2><p>Edges run parent → child. Grey: root, blue: mutation, '
                'orange: crossover, dashed: evicted from the pool, gold with a red border: the test-time program.</p>')
    body.append(f'<div class="tree">{tree_svg(nodes, run.test_program_id)}</div>' if nodes else "<p>No pool.</p>")
    return _page(f"{run.env} {run.method} seed {run.seed}", "\n".join(body))


def _html_table(css: str, head: list[str], rows: list[list[str]]) -> str:
    """A table of already escaped cells; a cell starting with ``<a`` or holding text is left-aligned."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td class="t">{c}</td>' if c.startswith("<a") or c[:1].isalpha() else f"<td>{c}</td>"
                                    for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _board_html(board: EnvBoard, anchor: str, pages: dict[int, str]) -> str:
    from espl_bench.leaderboards.aggregate import BUDGET_KEYS

    columns = row_columns(board)
    rows = []
    for row in board.rows:
        best = max(row.runs, key=lambda r: -1.0 if r.test_success is None else r.test_success)
        cells = [f'<a class="best-run" href="{pages[id(best)]}">{escape(cell(row))}</a>' if head == "method"
                 else escape(cell(row)) for head, cell in columns]
        rows.append([*cells, " ".join(f'<a class="run-link" href="{pages[id(r)]}">seed {r.seed}</a>' for r in row.runs)])
    svg = curves_svg(board)
    plot = f'<figure class="curves">{svg}</figure>' if svg else "<p>No per-iteration metrics.</p>"
    notes = "".join(f"<p class=\"note\">{escape(n)}</p>" for n in board_notes(board))
    pairs = ("<h3>Paired differences</h3>" + _html_table("pairs", [h for h, _ in PAIR_COLUMNS],
                                                         [[escape(c(p)) for _, c in PAIR_COLUMNS] for p in board.pairs])
             if board.pairs else "")
    return (f'<section id="{anchor}"><h2>{escape(board.env)}</h2>{notes}'
            + _html_table("leaderboard", [*(h for h, _ in columns), "runs"], rows) + pairs
            + "<h3>Weights x prompt</h3>"
            + _html_table("breakdown", ["method", *CELL_COLUMNS, *EFFECT_COLUMNS],
                          [[escape(row.method), *map(escape, _breakdown_cells(row))] for row in board.rows])
            + "<h3>Budget per run (mean over seeds)</h3>"
            + _html_table("budget", ["method", *BUDGET_KEYS],
                          [[escape(row.method), *map(escape, _budget_cells(row))] for row in board.rows])
            + (f"<h3>Edits refused by the admission rule</h3><p>{escape(REFUSED_NOTE)}</p>"
               + _html_table("refused", list(REFUSED_COLUMNS), [[escape(c) for c in r] for r in refused_rows(board)])
               if refused_rows(board) else "")
            + (f"<h3>GEPA's selection</h3><p>{escape(GEPA_NOTE)}</p>"
               + _html_table("gepa", list(GEPA_COLUMNS), [[escape(c) for c in r] for r in gepa_rows(board)])
               if gepa_rows(board) else "")
            + f"{plot}</section>")


def render_site(boards: list[EnvBoard], out_dir: str | Path) -> Path:
    """Write the site (see the module docstring) and return the path of ``index.html``."""
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.md").write_text(render_markdown(boards), encoding="utf-8")
    sections, nav, written = [], [], set()
    for board in boards:
        anchor = "env-" + slug(board.env)
        pages = {}
        for row in board.rows:
            for run in row.runs:
                name = run_slug(run)
                if f"runs/{name}.html" in written:  # two roots with alike folder names
                    name += "-" + hashlib.sha1(str(run.path.resolve()).encode()).hexdigest()[:8]
                (out / "runs" / f"{name}.html").write_text(run_page(run, anchor), encoding="utf-8")
                pages[id(run)] = f"runs/{name}.html"
                written.add(pages[id(run)])
        sections.append(_board_html(board, anchor, pages))
        nav.append(f'<li><a href="#{anchor}">{escape(board.env)}</a></li>')
    body = ("<h1>espl-bench leaderboard</h1><p>Test success is the mean over seeds and test problems with a 95% "
            "interval over both (episodes of one problem are not independent). Methods that share a letter are not "
            "separated by the paired tests of all pairs. Click a method for its best run, or a seed for that run. "
            '<a href="leaderboard.md">Markdown</a></p>'
            + (f"<ul>{''.join(nav)}</ul>" if nav else "<p>No runs found.</p>") + "\n" + "\n".join(sections)
            + (f'<p class="code-versions">{escape(_code_versions(boards))}</p>' if boards else ""))
    for stale in (out / "runs").glob("*.html"):  # pages of runs no longer on the board
        if f"runs/{stale.name}" not in written:
            stale.unlink()
    index = out / "index.html"
    index.write_text(_page("espl-bench leaderboard", body), encoding="utf-8")
    log.info("leaderboard: wrote %s (%d envs)", index, len(boards))
    return index
