"""The rendered site in a real headless Chromium: tables, plots, and every link followed.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped with the reason otherwise.
Chromium runs as a subprocess on ``file://`` URLs with networking features off; sockets in this
process stay blocked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest
from test_leaderboards import write_runs

from espl_bench.leaderboards.aggregate import build_leaderboard
from espl_bench.leaderboards.render import render_site

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")) if p
                 and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


_DOMS: dict[str, str] = {}


def dump_dom(profile: Path, url: str) -> str:
    """The DOM after load, serialised by Chromium (cached per URL within this module)."""
    if url not in _DOMS:
        _DOMS[url] = chromium(profile, "--dump-dom", url).stdout
    return _DOMS[url]


def hrefs(dom: str) -> list[str]:
    return re.findall(r'<a\b[^>]*\bhref="([^"]*)"', dom)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    index = render_site(build_leaderboard([write_runs(root / "runs")]), root / "site")
    return index, root / "profile"


def test_index_has_tables_and_plots(site):
    index, profile = site
    dom = dump_dom(profile, index.as_uri())
    assert "<title>espl-bench leaderboard</title>" in dom
    assert dom.count('<table class="leaderboard">') == 2
    assert len(re.findall(r'<figure class="curves"><svg\b', dom)) == 2
    assert "0.500 [" in dom and "cumulative rollouts" in dom and "test success" in dom
    assert dom.count('<table class="breakdown">') == 2
    assert len(re.findall(r'<a class="run-link" href="runs/[^"]+\.html">seed \d</a>', dom)) == 7


def test_every_link_opens_in_the_browser(site):
    index, profile = site
    start = index.as_uri()
    seen, todo, runs = set(), [start], 0
    while todo:
        url = todo.pop()
        page, _ = urldefrag(url)
        if page in seen:
            continue
        seen.add(page)
        dom = dump_dom(profile, page)
        assert "<body" in dom and "ERR_FILE_NOT_FOUND" not in dom, page
        if page.endswith(".md"):
            continue
        for href in hrefs(dom):
            assert not urlsplit(href).scheme, f"{page}: non-relative link {href}"
            target = urljoin(page, href)
            fragment = urldefrag(target)[1]
            if fragment:
                assert f'id="{fragment}"' in dump_dom(profile, urldefrag(target)[0]), f"{page}: no anchor for {href}"
            todo.append(target)
        if "/runs/" in page:
            runs += 1
            assert '<pre class="best-prompt">' in dom and '<ol class="lineage">' in dom
            assert re.search(r'<svg[^>]*class="tree-svg"', dom)
            assert 'class="node test-program" id="node-p3"' in dom
    assert runs == 7 and len(seen) == 9  # index, leaderboard.md, 7 run pages


def test_screenshot_is_not_blank(site, tmp_path):
    index, profile = site
    shot = tmp_path / "index.png"
    chromium(profile, "--window-size=1280,1600", f"--screenshot={shot}", index.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 0.05 and shot.stat().st_size > 20_000
