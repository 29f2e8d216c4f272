"""The report in a real headless Chromium (Debian's /usr/bin/chromium, driven with playwright over CDP):
no console errors, no request but the file itself, every panel present, and a screenshot of each panel
(and each figure) that is not blank. Without Chromium only the page-size check runs.

Runs: real training runs of the tiny model (`vimpo_bench.engines.native.run`: 2 algorithms x 2 seeds, 2 steps
each) in a fresh sqlite store. That completions are escaped is checked in test_report.py."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from vimpo_bench.report import build_report
from vimpo_bench.report.panels import PANELS
from vimpo_bench.report.render import PLOTLY_TRACES
from vimpo_bench.report.synthetic import fresh_store

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
STUDY = "browser-check"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# Small enough for 2 busy CPU cores (keys checked by vimpo_bench.config): an untrained tiny model
# (no warm start), a reference update every step for the Moving pi_ref panel, held-out eval at start
# and end, one torch thread each.
SMALL = ["optim.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=12",
         "eval.every=0", "eval.problems=4", "eval.samples=1", "ref.schedule=hard", "ref.every=1",
         "model.warm_start_steps=0", "run.threads=1"]


def _log_real_runs(uri: str) -> None:
    """2 algorithms x 2 seeds of the tiny model, each a real `vimpo-bench train` run."""
    from vimpo_bench.config import load_config
    from vimpo_bench.engines import run

    for algo in ("vimpo", "grpo"):
        for seed in (1, 2):
            config = load_config(overrides=[f"algo.name={algo}", f"run.seed={seed}", *SMALL])
            run(config, tracking_uri=uri, tags={"vimpo.study": STUDY})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    uri = fresh_store(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        _log_real_runs(uri)
        files = build_report(study=STUDY, out=root / "reports" / "check.html", tracking_uri=uri)
    assert files.failed_panels == []
    return files.page


@pytest.fixture(scope="module")
def page(report, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    url = report.resolve().as_uri()
    problems = {"console": [], "requests": []}
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900},
        )

        def route(r):
            if r.request.url == url:
                r.continue_()
            else:  # anything else is a network dependency: record it and refuse it
                problems["requests"].append(r.request.url)
                r.abort()

        context.route("**/*", route)
        pg = context.new_page()
        pg.on("console", lambda m: problems["console"].append(f"{m.type}: {m.text}") if m.type in ("error", "assert") else None)
        pg.on("pageerror", lambda e: problems["console"].append(f"pageerror: {e}"))
        pg.goto(url, wait_until="load")
        # newPlot runs inline while the page parses, so by "load" every figure should have its svg.
        pg.wait_for_function("[...document.querySelectorAll('.fig')].every(f => f.querySelector('.main-svg'))",
                             timeout=20_000)
        yield pg, problems, tmp_path_factory.mktemp("shots")
        context.close()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _inked(rgb: np.ndarray) -> float:
    """Fraction of pixels that differ visibly from white."""
    return float(((255 - rgb).sum(axis=2) > 40).mean())


def _coloured(rgb: np.ndarray) -> int:
    """Pixels with clear colour (lines, markers, bands), which grey axes, text and white never have."""
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())


def _colours(rgb: np.ndarray) -> int:
    """Number of distinct colours (a blank or flat panel has a handful)."""
    return len(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]))


def test_page_inlines_the_small_plotly_bundle_that_draws_its_traces(report):
    """plotly.js's basic bundle (1.2 MB), not the full library (4.8 MB): the whole page stays under 2 MB,
    and every trace of every figure is of a type that bundle draws."""
    html = report.read_text(encoding="utf-8")
    assert len(html.encode()) < 2_000_000, f"the page is {len(html.encode()):,} bytes"
    assert "plotly.js (basic - minified) v" in html and "Licensed under the MIT license" in html
    starts = [m.end() for m in re.finditer(r'Plotly\.newPlot\("[^"]+",', html)]
    assert len(starts) >= 7
    decode = json.JSONDecoder().raw_decode
    types = {trace.get("type", "scatter") for start in starts for trace in decode(html, start)[0]}
    assert types and types <= set(PLOTLY_TRACES), types


def test_no_console_errors_and_no_network(page):
    pg, problems, _ = page
    assert problems["console"] == []
    assert problems["requests"] == []


def test_every_panel_present_without_errors(page):
    pg, _, _ = page
    found = pg.eval_on_selector_all("section.panel", "els => els.map(e => e.dataset.panel)")
    assert found == [spec.id for spec in PANELS]
    assert pg.locator(".note.error").count() == 0


def test_each_panel_screenshot_is_not_blank(page):
    pg, _, shots = page
    for pid in (spec.id for spec in PANELS):
        panel = pg.locator(f"#panel-{pid}")
        rgb = _pixels(panel.screenshot(path=str(shots / f"{pid}.png")))
        # Judge the body only: below the title and the question every panel carries.
        top = panel.bounding_box()["y"]
        body = rgb[int(pg.locator(f"#panel-{pid} .question").bounding_box()["y"] - top) + 30 :]
        assert body.shape[0] > 30, f"panel {pid} has no body (see {shots / pid}.png)"
        assert _inked(body) > 0.01, f"panel {pid} is blank below its title (see {shots / pid}.png)"
        assert _colours(body) > 20, pid


def test_each_figure_draws_its_traces(page):
    pg, _, shots = page
    figs = pg.eval_on_selector_all(".fig", "els => els.map(e => e.id)")
    # curves x2, final eval, pi_ref windows and beta/value loss, advantage by position, value loss
    assert {"fig-curves-0", "fig-curves-1", "fig-final-0", "fig-ref-0", "fig-ref-1", "fig-diag-0", "fig-diag-1"} <= set(figs)
    for fig in figs:
        traces = pg.eval_on_selector(f"#{fig}", "e => e.querySelectorAll('.scatterlayer .trace').length")
        assert traces > 0, fig
        rgb = _pixels(pg.locator(f"#{fig}").screenshot(path=str(shots / f"{fig}.png")))
        assert _coloured(rgb) > 150, f"figure {fig} has no coloured marks (see {shots / fig}.png)"
