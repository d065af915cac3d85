"""Leaderboard aggregation and rendering on synthetic run folders written here."""

from __future__ import annotations

import json
import logging
import math
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from espl.program import Pool, Program
from leaderboards.aggregate import aggregate, ancestors, build_leaderboard, load_run, load_runs, load_tree, row_curve
from leaderboards.render import render_markdown, render_site

ENV = "espl/Arithmetic-v0"
ROOT = Path(__file__).resolve().parents[1]


def synthetic_pool() -> Pool:
    """p0 (root, evicted) -> p1 -> p2; p3 = crossover(p1, p2); p4 <- p2. p3 has the best lower bound."""
    programs = [
        Program("p1", {"G0": "Check the arithmetic."}, parents=["p0"], origin="mutation", iteration=1, mu=26.0, sigma=6.0),
        Program("p2", {"G0": "Show each step."}, parents=["p1"], origin="mutation", iteration=2, mu=27.0, sigma=5.0),
        Program("p3", {"G0": "Check the arithmetic.", "G1": "Answer as <answer>N</answer>."}, parents=["p1", "p2"],
                origin="crossover", iteration=2, mu=30.0, sigma=3.0),
        Program("p4", {"G0": "Be brief."}, parents=["p2"], origin="mutation", iteration=3, mu=24.0, sigma=7.0),
    ]
    pool = Pool(programs, max_size=4, next_index=5)
    pool.lineage["p0"] = []
    return pool


def write_run(folder: Path, *, env: str = ENV, method: str = "espl", model: str = "tiny", seed: int = 0,
              train: tuple[float, ...] = (0.1, 0.3, 0.5), test: tuple[float, ...] = (0.2, 0.3, 0.4),
              rollouts: int = 8, calls: int = 4, jsonl: bool = True, provenance: dict | None = None) -> Path:
    """A run folder in the format espl.runner writes (summary.json has no seed; run.json does)."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"schema_version": 1, "config": {"env": env, "method": method,
                                                                                 "model": model, "seed": seed}}))
    pool = synthetic_pool()
    history = []
    for t, (tr, te) in enumerate(zip(train, test), 1):
        m = {"iteration": t, "train_reward": tr, "train_success": tr, "invalid_action_rate": 0.1,
             "reflection_calls": calls, "reflection_failures": 0, "rollouts": rollouts, "generated_tokens": 10 * rollouts,
             "test": {"program": "p3", "success": te, "invalid_action_rate": 0.25, "pass@1": te, "pass@2": min(1, 2 * te),
                      "problems": 4, "samples": 2}}
        history.append(m)
        it = folder / "iterations" / f"{t:06d}"
        it.mkdir(parents=True)
        (it / "metrics.json").write_text(json.dumps(m))
        (it / "pool.json").write_text(json.dumps(pool.to_dict()))
    if jsonl:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    best = pool["p3"]
    summary = {"env": env, "method": method, "model": model, "reflector": "espl-local/reference",
               "iterations_completed": len(history), "iterations_planned": len(history),
               "train_reward": list(train), "test": history[-1]["test"],
               "test_program": {"id": "p3", "rule": "lcb", "mu": best.mu, "sigma": best.sigma, "text": best.render()},
               "pool_size": len(pool), "reflection_failures": 0, "rollouts": rollouts * len(history),
               "generated_tokens": 10 * rollouts * len(history), "seconds_this_session": 1.0,
               "usage": {"reflector": {"calls": calls * len(history), "prompt_tokens": 100 * calls * len(history),
                                       "completion_tokens": 0, "cost_usd": 0.001 * calls * len(history)}}}
    if provenance is not None:
        summary["provenance"] = provenance
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "best_prompt.txt").write_text(best.render())
    (folder / "LATEST").write_text(str(len(history)))
    return folder


def write_runs(root: Path) -> Path:
    """Three espl seeds (final test 0.2, 0.4, 0.9), two rl seeds, one evolution run, one run in a second env."""
    for seed, final in enumerate((0.2, 0.4, 0.9)):
        write_run(root / f"espl-s{seed}", seed=seed, test=(0.1, 0.1, final), train=(0.1 * seed, 0.2, 0.3))
    for seed, final in enumerate((0.5, 0.7)):
        write_run(root / "rl" / f"s{seed}", method="rl", seed=seed, test=(0.5, final), train=(0.4, 0.6), calls=0)
    write_run(root / "evo", method="evolution", seed=3, test=(0.05,), train=(0.1,), jsonl=False)
    write_run(root / "tool", env="espl/ToolUse-v0", method="espl", model="other/model", seed=0)
    return root


def test_mean_and_standard_error_over_seeds(tmp_path):
    root = write_runs(tmp_path / "runs")
    leftover = root / "evo" / "iterations" / "000002"  # uncommitted (LATEST is 1): ignored
    leftover.mkdir()
    (leftover / "metrics.json").write_text("{half-writ")
    ahead = root / "rl" / "s1" / "metrics.jsonl"  # a kill inside commit 3 wrote metrics.jsonl past LATEST (2)
    ahead.write_text(ahead.read_text() + json.dumps({"iteration": 3, "train_success": 1.0, "rollouts": 8}) + "\n")
    boards = build_leaderboard([root])
    assert [b.env for b in boards] == ["espl/Arithmetic-v0", "espl/ToolUse-v0"]
    rows = {r.method: r for r in boards[0].rows}
    espl = rows["espl"]
    assert espl.seeds == [0, 1, 2] and espl.n_seeds == 3
    assert espl.success_mean == pytest.approx(0.5)
    sample_var = ((0.2 - 0.5) ** 2 + (0.4 - 0.5) ** 2 + (0.9 - 0.5) ** 2) / 2  # = 0.13
    assert espl.success_se == pytest.approx(math.sqrt(sample_var / 3))
    assert espl.pass_at["pass@1"] == pytest.approx(0.5)
    assert espl.pass_at["pass@2"] == pytest.approx((0.4 + 0.8 + 1.0) / 3)
    assert espl.invalid_action_rate == pytest.approx(0.25)
    assert (espl.rollouts, espl.generated_tokens, espl.reflection_calls) == (72, 720, 36)
    assert rows["rl"].success_mean == pytest.approx(0.6)
    assert rows["rl"].success_se == pytest.approx(0.1)  # |0.7 - 0.5| / 2
    assert rows["rl"].reflection_calls == 0
    assert row_curve(rows["rl"]).iterations == [1, 2]
    evo = rows["evolution"]  # metrics only in iterations/*/metrics.json
    assert evo.n_seeds == 1 and evo.success_se is None and evo.reflection_calls == 4
    assert [r.method for r in boards[0].rows] == ["rl", "espl", "evolution"]  # by mean success
    assert boards[1].rows[0].model == "other/model"


def test_curves_average_over_seeds(tmp_path):
    boards = build_leaderboard([write_runs(tmp_path / "runs")])
    espl = next(r for r in boards[0].rows if r.method == "espl")
    curve = row_curve(espl)
    assert curve.iterations == [1, 2, 3]
    assert curve.train_success == pytest.approx([0.1, 0.2, 0.3])
    assert curve.cum_rollouts == pytest.approx([8, 16, 24])
    assert curve.test_success[-1] == pytest.approx(0.5)


def test_corrupt_and_incomplete_folders_are_skipped_with_a_warning(tmp_path, caplog):
    root = write_runs(tmp_path / "runs")
    bad = write_run(root / "bad", seed=7)
    (bad / "summary.json").write_text("{not json")
    crashed = root / "crashed"
    crashed.mkdir()
    (crashed / "run.json").write_text(json.dumps({"config": {"seed": 1}}))
    headless = write_run(root / "headless", seed=8)
    (headless / "run.json").unlink()
    broken_metrics = write_run(root / "broken-metrics", seed=9)
    (broken_metrics / "metrics.jsonl").write_text('{"iteration": 1}\n{oops\n')
    with caplog.at_level(logging.WARNING, logger="leaderboards"):
        runs = load_runs([root])
    assert len(runs) == 7
    assert {r.seed for r in runs if r.method == "espl" and r.env == ENV} == {0, 1, 2}
    text = caplog.text
    for folder in (bad, crashed, headless, broken_metrics):
        assert str(folder) in text
    assert "summary.json is corrupt" in text and "summary.json is missing" in text and "run.json is missing" in text


def test_tree_and_lineage(tmp_path):
    run = load_run(write_run(tmp_path / "r"))
    nodes = {n.id: n for n in load_tree(run)}
    assert set(nodes) == {"p0", "p1", "p2", "p3", "p4"}
    assert not nodes["p0"].in_pool and nodes["p0"].origin == "evicted"
    assert nodes["p3"].parents == ("p1", "p2") and nodes["p3"].mu == 30.0
    assert [n.id for n in ancestors(list(nodes.values()), "p3")] == ["p3", "p1", "p2", "p0"]
    assert "Answer as <answer>N</answer>." in run.best_prompt


def test_markdown_tables(tmp_path):
    md = render_markdown(build_leaderboard([write_runs(tmp_path / "runs")]))
    assert "## espl/Arithmetic-v0" in md and "## espl/ToolUse-v0" in md
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| # | method | model | test success (mean ± se) | pass@1 | pass@2 |")
    body = [line for line in lines if line[2].isdigit()]
    assert [line.split(" | ")[1] for line in body[:3]] == ["rl", "espl", "evolution"]
    espl = next(line for line in body if "| espl |" in line)
    assert "0.500 ± 0.208" in espl and "| 72 | 720 | 36 | 3600 | 0.0360 | 3 |" in espl
    assert "0.050 ± –" in md
    assert sum(line.startswith("|---|") for line in md.splitlines()) == 2


def test_every_run_names_the_code_that_made_it(tmp_path):
    made = {"espl_bench": "0.3.0", "git": {"commit": "0123456789abcdef" * 2 + "01234567", "dirty": True},
            "python": "3.11.7", "platform": "Linux-6", "cuda": None, "packages": {"trl": "1.16.0", "gepa": None}}
    write_run(tmp_path / "runs" / "a", seed=0, provenance=made)
    write_run(tmp_path / "runs" / "b", seed=1)  # written before runs recorded their code
    boards = build_leaderboard([tmp_path / "runs"])
    md = render_markdown(boards)
    assert "Runs by code version: espl-bench 0.3.0 @ 0123456789+dirty (1), not recorded (1)." in md
    index = render_site(boards, tmp_path / "site")
    assert "espl-bench 0.3.0 @ 0123456789+dirty (1)" in index.read_text()
    (page,) = [p for p in (tmp_path / "site" / "runs").glob("*.html") if "s0" in p.name]
    text = page.read_text()
    assert "espl-bench 0.3.0 @ 0123456789+dirty" in text and "1.16.0" in text and "3.11.7" in text
    assert "gepa" not in text.split("Best prompt")[0]  # an absent library is not listed


def test_provenance_names_this_checkout_and_its_libraries():
    import subprocess
    from importlib import metadata

    from espl.provenance import provenance

    made = provenance()
    assert made["espl_bench"] == metadata.version("espl-bench")
    assert made["packages"]["trl"] == metadata.version("trl") and made["packages"]["torch"] == metadata.version("torch")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert made["git"]["commit"] == head and isinstance(made["git"]["dirty"], bool)


class Links(HTMLParser):
    """Every href/src in a page, and every element id."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src", "xlink:href") and value is not None:
                self.links.append(value)
            if name == "id" and value:
                self.ids.add(value)


def parse(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def check_links(start: Path) -> set[Path]:
    """Follow relative links from ``start``; assert each resolves (file and #fragment). Returns pages seen."""
    seen, todo = set(), [start.resolve()]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        if page.suffix != ".html":
            continue
        info = parse(page)
        for link in info.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, f"{page.name}: absolute or external link {link}"
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            assert target.is_file(), f"{page.name}: broken link {link}"
            if parts.fragment:
                assert parts.fragment in parse(target).ids, f"{page.name}: missing anchor {link}"
            todo.append(target)
    return seen


def test_site_files_and_relative_links(tmp_path):
    boards = build_leaderboard([write_runs(tmp_path / "runs")])
    index = render_site(boards, tmp_path / "site")
    assert index == tmp_path / "site" / "index.html" and index.is_file()
    pages = check_links(index)
    run_pages = sorted((tmp_path / "site" / "runs").glob("*.html"))
    assert len(run_pages) == 7 and set(run_pages) <= pages
    html = index.read_text()
    assert html.count('<table class="leaderboard">') == 2 and html.count('<figure class="curves"><svg') == 2
    assert "0.500 ± 0.208" in html and "cumulative rollouts" in html
    page = next(p for p in run_pages if "-espl-tiny-s2-" in p.name).read_text()
    assert 'class="node test-program" id="node-p3"' in page
    assert page.count('class="edge"') == 5  # p0->p1, p1->p2, p1->p3, p2->p3, p2->p4
    assert "Answer as &lt;answer&gt;N&lt;/answer&gt;." in page
    assert (tmp_path / "site" / "leaderboard.md").read_text() == render_markdown(boards)


def test_the_committed_leaderboards_links_resolve_in_the_repository():
    """Every run page the committed board links to is committed with it (not git-ignored)."""
    board = ROOT / "leaderboards" / "board"
    pages = check_links(board / "index.html")
    results = json.loads((board / "results.json").read_text())
    assert len([p for p in pages if p.parent.name == "runs"]) == len(results)


def test_package_exports_lazily():
    import leaderboards

    assert leaderboards.build_leaderboard is build_leaderboard and leaderboards.render_site is render_site
    assert leaderboards.get_suite("smoke").version == leaderboards.SUITE_VERSION
    with pytest.raises(AttributeError):
        leaderboards.nope  # noqa: B018


def test_empty_site(tmp_path):
    index = render_site(aggregate([]), tmp_path / "site")
    assert "No runs found." in index.read_text()
    check_links(index)


def test_an_unfinished_run_is_left_out_with_a_warning(tmp_path, caplog):
    folder = write_run(tmp_path / "runs" / "partial", train=(0.1,), test=(0.2,))
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "iterations_planned": 3}))
    assert build_leaderboard([tmp_path / "runs"]) == []
    assert "unfinished (1 of 3 iterations)" in caplog.text
