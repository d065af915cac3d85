"""Leaderboard aggregation and rendering on synthetic run folders written here."""

from __future__ import annotations

import json
import logging
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from espl_bench.leaderboards.aggregate import (
    aggregate,
    ancestors,
    build_leaderboard,
    load_run,
    load_runs,
    load_tree,
    row_curve,
)
from espl_bench.leaderboards.render import refused_rows, render_markdown, render_site
from espl_bench.method.program import Pool, Program
from espl_bench.records import (
    Breakdown,
    Budget,
    CellResult,
    EvalItems,
    IterationMetrics,
    ReflectionCounts,
    RunHeader,
    RunSummary,
    TestProgram,
)

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


PROBLEMS, SAMPLES = 8, 5


def cell(success: float, program: str = "p3", weights: str = "trained", shift: int = 0) -> CellResult:
    """A test result of ``success`` on 8 problems x 5 samples (``shift`` moves the hits across problems)."""
    hits = round(success * PROBLEMS * SAMPLES)
    flat = [int((k + shift) % (PROBLEMS * SAMPLES) < hits) for k in range(PROBLEMS * SAMPLES)]
    rows = tuple(tuple(flat[p::PROBLEMS]) for p in range(PROBLEMS))
    return CellResult(EvalItems("test", tuple(range(PROBLEMS)), SAMPLES), program, rows,
                      tuple(tuple(float(x) for x in r) for r in rows), tuple(f"test/{p}" for p in range(PROBLEMS)),
                      invalid_actions=10, turns=40, generated_tokens=100, weights=weights)


def write_run(folder: Path, *, env: str = ENV, method: str = "espl", model: str = "tiny", seed: int = 0,
              train: tuple[float, ...] = (0.1, 0.3, 0.5), test: tuple[float, ...] = (0.2, 0.3, 0.4),
              rollouts: int = 8, calls: int = 4, jsonl: bool = True, provenance: dict | None = None,
              breakdown: bool = False, env_kwargs: dict | None = None, shift: int | None = None,
              refused: dict[str, int] | None = None) -> Path:
    """A run folder in the format espl_bench.running.runner writes (schema 2: per-problem test results;
    ``shift``, default the seed, moves the test hits across problems)."""
    shift = seed if shift is None else shift
    folder.mkdir(parents=True)
    header = RunHeader(config={"env": env, "method": method, "model": model, "seed": seed, "env_kwargs": env_kwargs or {}})
    (folder / "run.json").write_text(json.dumps(header.to_dict()))
    pool = synthetic_pool()
    history = []
    for t, (tr, te) in enumerate(zip(train, test), 1):
        m = IterationMetrics(iteration=t, train_reward=tr, train_success=tr, invalid_action_rate=0.1,
                             reflection_calls=calls, rollouts=rollouts, generated_tokens=10 * rollouts,
                             test=cell(te, shift=shift), phase_seconds={"rollouts": 1.0, "eval": 0.5}).to_dict()
        history.append(m)
        it = folder / "iterations" / f"{t:06d}"
        it.mkdir(parents=True)
        (it / "metrics.json").write_text(json.dumps(m))
        (it / "pool.json").write_text(json.dumps(pool.to_dict()))
    if jsonl:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    best = pool["p3"]
    split = None
    last = cell(test[-1], shift=shift)
    if breakdown:
        cells = {"base/root": cell(0.1, "p0", "base"), "base/program": cell(0.3, "p3", "base"),
                 "trained/root": cell(0.2, "p0"), "trained/program": last}
        split = Breakdown(last.items, "p0", "p3", cells, {})
    n = len(history)
    summary = RunSummary(
        env=env, method=method, model=model, seed=seed, reflector="espl-local/reference", iterations_completed=n,
        iterations_planned=n, train_reward=list(train), test=last, breakdown=split,
        test_program=TestProgram(id="p3", rule="lcb", mu=best.mu, sigma=best.sigma, text=best.render()),
        pool_size=len(pool), rollouts=rollouts * n,
        reflection=ReflectionCounts(children={"revision": 2, "fallback": 1, "crossover": 0}, failed=1,
                                    rejected_edits=refused),
        budget=Budget(training_rollouts=rollouts * n, evaluation_rollouts=40 * n,
                      generated_tokens={"training": 10 * rollouts * n, "evaluation": 100 * n},
                      seconds_by_phase={"rollouts": 1.0 * n, "eval": 0.5 * n}),
        generated_tokens=10 * rollouts * n, seconds_this_session=1.0,
        usage={"reflector": {"calls": calls * n, "prompt_tokens": 100 * calls * n, "completion_tokens": 0,
                             "cost_usd": 0.001 * calls * n}},
        provenance=provenance)
    (folder / "summary.json").write_text(json.dumps(summary.to_dict()))
    (folder / "best_prompt.txt").write_text(best.render())
    (folder / "LATEST").write_text(str(len(history)))
    return folder


def write_runs(root: Path) -> Path:
    """Three espl seeds (final test 0.2, 0.4, 0.9), two rl seeds, one evolution run, one run in a second env."""
    for seed, final in enumerate((0.2, 0.4, 0.9)):
        write_run(root / f"espl-s{seed}", seed=seed, test=(0.1, 0.1, final), train=(0.1 * seed, 0.2, 0.3),
                  breakdown=True)
    for seed, final in enumerate((0.5, 0.7)):
        write_run(root / "rl" / f"s{seed}", method="rl", seed=seed, test=(0.5, final), train=(0.4, 0.6), calls=0)
    write_run(root / "evo", method="evolution", seed=3, test=(0.05,), train=(0.1,), jsonl=False)
    write_run(root / "tool", env="espl/ToolUse-v0", method="espl", model="other/model", seed=0)
    return root


def test_intervals_tiers_and_budgets_over_seeds_on_the_shared_problems(tmp_path):
    from espl_bench import stats

    root = write_runs(tmp_path / "runs")
    leftover = root / "evo" / "iterations" / "000002"  # uncommitted (LATEST is 1): ignored
    leftover.mkdir()
    (leftover / "metrics.json").write_text("{half-writ")
    ahead = root / "rl" / "s1" / "metrics.jsonl"  # a kill inside commit 3 wrote metrics.jsonl past LATEST (2)
    ahead_line = IterationMetrics(iteration=3, train_reward=1.0, train_success=1.0, rollouts=8).to_dict()
    ahead.write_text(ahead.read_text() + json.dumps(ahead_line) + "\n")
    boards = build_leaderboard([root])
    assert [b.env for b in boards] == ["espl/Arithmetic-v0", "espl/ToolUse-v0"]
    board = boards[0]
    assert board.measured_on == "test split, 8 problems x 5 samples, seeds 0, 1, 2, 3" and board.problems == 8
    assert 0 < board.detectable[0] <= board.detectable[1]
    rows = {r.method: r for r in board.rows}
    espl = rows["espl"]
    assert espl.seeds == [0, 1, 2] and espl.n_seeds == 3 and espl.matrix.shape == (3, 8)
    assert espl.success.estimate == pytest.approx(0.5)
    assert espl.success == stats.interval(espl.matrix) and espl.success.low < 0.5 < espl.success.high
    assert espl.pass_at["pass@1"] == pytest.approx(0.5)
    assert espl.invalid_action_rate == pytest.approx(0.25)
    assert espl.per_run["training rollouts"] == 24 and espl.per_run["evaluation rollouts"] == 120  # per run, not summed
    assert espl.per_run["reflector calls"] == 12 and espl.children == {"revision": 2, "fallback": 1, "crossover": 0}
    assert set(espl.cells) == {"base/root", "base/program", "trained/root", "trained/program"}
    assert espl.effects["prompt (base weights)"].estimate == pytest.approx(0.2)
    assert espl.effects["interaction"].estimate == pytest.approx(0.5 - 0.2 - 0.3 + 0.1)
    assert rows["rl"].success.estimate == pytest.approx(0.6) and rows["rl"].cells == {}
    assert row_curve(rows["rl"]).iterations == [1, 2]
    evo = rows["evolution"]  # metrics only in iterations/*/metrics.json
    assert evo.n_seeds == 1 and evo.per_run["reflector calls"] == 4
    # 0.6, 0.5 and 0.05 on 8 problems: nothing is separated after the adjustment over three pairs
    assert [(r.method, r.letters) for r in board.rows] == [("rl", "a"), ("espl", "a"), ("evolution", "a")]
    assert board.pair_alpha == pytest.approx(0.05 / 3)
    assert boards[1].rows[0].model == "other/model"


def test_a_run_written_before_the_evaluation_protocol_is_left_out_with_the_fix(tmp_path, caplog):
    folder = write_run(tmp_path / "runs" / "old")
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "schema_version": 1}))
    with caplog.at_level(logging.WARNING, logger="espl_bench.leaderboards"):
        assert load_runs([tmp_path / "runs"]) == []
    assert "before the evaluation protocol" in caplog.text and "fix: re-run it" in caplog.text


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
    with caplog.at_level(logging.WARNING, logger="espl_bench.leaderboards"):
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
    boards = build_leaderboard([write_runs(tmp_path / "runs")])
    md = render_markdown(boards)
    assert "## espl/Arithmetic-v0" in md and "## espl/ToolUse-v0" in md
    assert "Measured on the test split, 8 problems x 5 samples, seeds 0, 1, 2, 3." in md
    low, high = boards[0].detectable
    assert (f"could detect, per pair, at the groups' level (80% power, two-sided 0.0167 = 5%/3, Holm's first step; "
            f"paired on its 8 problems): {low:.3f} to {high:.3f}.") in md
    assert "| a | b | a - b [95% CI] | p (Holm) | separated | detectable at the groups' level |" in md
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| group | method | model | test success [95% CI] | pass@1 | pass@5 |")
    body = [line for line in lines if line[2:4] in ("a ", "b ", "ab", "– ")]
    assert [line.split(" | ")[1] for line in body[:3]] == ["rl", "espl", "evolution"]
    espl = next(line for line in body if "| espl |" in line)
    assert f"| {boards[0].rows[1].success.estimate:.3f} [{boards[0].rows[1].success.low:.3f}, " in espl
    assert "| 2 / 1 / 0 | – (runs before the admission rule) | 3 |" in espl  # children by source, refusals, seeds
    assert "| espl | 0.100 [" in md and "| rl | – | – |" in md  # the weights x prompt table
    assert "| espl | 24 | 120 | 540 | 12 | 1200 | 4.5 | 0.0120 |" in md  # budget per run
    # per board: results, weights x prompt, budgets; the pairs where a board has two methods or more
    assert sum(line.startswith("|---|") for line in md.splitlines()) == 7


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

    from espl_bench.running.provenance import provenance

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
    assert f"{boards[0].rows[1].success.estimate:.3f} [" in html and "cumulative rollouts" in html
    assert html.count('<table class="breakdown">') == 2 and "smallest difference" in html.lower()
    assert html.count('<table class="pairs">') == 1  # the env with more than one method
    page = next(p for p in run_pages if "-espl-tiny-s2-" in p.name).read_text()
    assert 'class="node test-program" id="node-p3"' in page
    assert page.count('class="edge"') == 5  # p0->p1, p1->p2, p1->p3, p2->p3, p2->p4
    assert "Answer as &lt;answer&gt;N&lt;/answer&gt;." in page
    assert (tmp_path / "site" / "leaderboard.md").read_text() == render_markdown(boards)


def test_the_committed_leaderboards_links_resolve_in_the_repository():
    """Every run page the committed board links to is committed with it (not git-ignored)."""
    board = ROOT / "leaderboards" / "calibrated-v8"
    pages = check_links(board / "index.html")
    results = json.loads((board / "results.json").read_text())
    assert len([p for p in pages if p.parent.name == "runs"]) == len(results)


def test_package_exports_lazily():
    from espl_bench import leaderboards

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


def test_each_pair_of_methods_gets_a_paired_test_and_what_it_could_detect(tmp_path):
    from espl_bench import stats

    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root / f"rl{seed}", method="rl", seed=seed, test=(0.6,))
        write_run(root / f"evo{seed}", method="evolution", seed=seed, test=(0.3,))
    board = build_leaderboard([root])[0]
    (pair,) = board.pairs
    rows = {r.method: r for r in board.rows}
    (tested,) = stats.tiers({"rl": rows["rl"].matrix, "evolution": rows["evolution"].matrix}).pairs
    assert (pair.a, pair.b) == ("rl", "evolution") and pair.shared is None
    assert pair.difference == stats.difference(rows["rl"].matrix, rows["evolution"].matrix) == tested.difference
    assert (pair.adjusted, pair.separated, pair.detectable) == (tested.adjusted, tested.separated, tested.detectable)
    assert board.detectable == (pair.detectable, pair.detectable) and board.pair_alpha == 0.05


def test_runs_that_end_on_the_same_cell_are_reported_as_identical_programs(tmp_path):
    """Two methods that both keep the root with base weights score the same cell (the protocol's
    shared sample seeds): the pair says so instead of a detectable difference."""
    root = tmp_path / "runs"
    for seed in range(3):  # gepa keeps the root in seeds 0-2, evolution in seeds 0-1
        write_run(root / f"gepa{seed}", method="gepa", seed=seed, test=(0.3,), shift=0)
        write_run(root / f"evo{seed}", method="evolution", seed=seed, test=(0.3 if seed < 2 else 0.5,),
                  shift=0 if seed < 2 else seed)
        write_run(root / f"rl{seed}", method="rl", seed=seed, test=(0.6,))
    for folder in root.iterdir():
        if not folder.name.startswith("rl"):
            summary = json.loads((folder / "summary.json").read_text())
            summary["test"]["weights"] = "base"
            (folder / "summary.json").write_text(json.dumps(summary))
    board = build_leaderboard([root])[0]
    pairs = {(p.a, p.b): p for p in board.pairs}
    shared = pairs[("evolution", "gepa")].shared
    assert (shared.a, shared.a_runs, shared.b, shared.b_runs) == (2, 3, 3, 3)
    assert str(shared) == "identical programs in 2 of a's 3 seeds and 3 of b's 3"
    assert all(p.shared is None for key, p in pairs.items() if "rl" in key)  # trained weights: other cells
    md = render_markdown([board])
    assert "| evolution | gepa |" in md and "identical programs in 2 of a's 3 seeds and 3 of b's 3 |" in md
    assert "not counting 1 pair(s) whose runs ended on identical programs" in md
    assert board.detectable == (min(p.detectable for k, p in pairs.items() if "rl" in k),
                                max(p.detectable for k, p in pairs.items() if "rl" in k))


def test_runs_with_env_arguments_are_another_board(tmp_path):
    from espl_bench.leaderboards.aggregate import env_label

    assert env_label(ENV, {}) == ENV and env_label(ENV, None) == ENV
    assert env_label(ENV, {"max_terms": 2, "a": 1}) == ENV + ' {"a":1,"max_terms":2}'
    write_run(tmp_path / "plain", seed=0)
    write_run(tmp_path / "easy", seed=0, env_kwargs={"max_terms": 2})
    assert [b.env for b in build_leaderboard([tmp_path])] == [ENV, ENV + ' {"max_terms":2}']


def test_a_learning_curve_has_a_band_and_its_change_an_interval_over_problem_clusters(tmp_path):
    from espl_bench import stats
    from espl_bench.leaderboards.aggregate import curve_change

    folder = write_run(tmp_path / "rl", method="rl", train=(0.0,) * 6, test=(0.5,) * 6)
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    per_problem = [[0.0, 0.0, 0.25, 0.0]] * 3 + [[0.5, 0.75, 0.25, 1.0]] * 3
    for m, problems in zip(lines, per_problem):
        m["train_problem_success"], m["train_success"] = problems, sum(problems) / 4
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (row,) = build_leaderboard([tmp_path])[0].rows
    curve = row_curve(row)
    assert all(lo <= mid <= hi for lo, mid, hi in zip(curve.train_low, curve.train_success, curve.train_high))
    change = curve_change(row)
    assert change == stats.change([x for p in per_problem[:3] for x in p], [x for p in per_problem[3:] for x in p])
    assert change.low > 0  # it rose beyond noise
    assert "Training success, last iterations minus first" in render_markdown(build_leaderboard([tmp_path]))
    assert curve_change(row, edge=1) == stats.change(per_problem[0], per_problem[-1])


def test_edits_the_admission_rule_refused_are_counted_per_run_and_by_reason(tmp_path):
    from espl_bench.leaderboards.render import run_page

    root = tmp_path / "runs"
    write_run(root / "a", seed=0, refused={"placeholder": 3, "markup or code": 1})
    write_run(root / "b", seed=1, refused={"placeholder": 1})
    write_run(root / "rl", method="rl", seed=0, refused={})  # no reflection: nothing to refuse
    write_run(root / "old", method="evolution", seed=0)  # written before the rule: not recorded
    (board,) = build_leaderboard([root])
    rows = {row.method: row for row in board.rows}
    assert (rows["espl"].refused, rows["rl"].refused, rows["evolution"].refused) == (2.5, 0.0, None)
    espl = next(line for line in render_markdown([board]).splitlines() if line.startswith("| ") and "| espl |" in line)
    assert "| 2 / 1 / 0 | 2.5 | 2 |" in espl
    page = run_page(rows["espl"].runs[0] if rows["espl"].runs[0].seed == 0 else rows["espl"].runs[1], "b")
    assert "4 (placeholder 3, markup or code 1)" in page
    assert "not recorded (the run predates the admission rule" in run_page(rows["evolution"].runs[0], "b")
    # the board sums them per method: rl refused nothing, evolution's run predates the rule
    assert refused_rows(board) == [["espl", "2", "5 (placeholder 4, markup or code 1)"]]
    assert "| espl | 2 | 5 (placeholder 4, markup or code 1) |" in render_markdown([board])
    assert refused_rows(build_leaderboard([root / "rl", root / "old"])[0]) == []

