"""The report's training-dynamics curves (policy/clip_frac, policy/grad_norm, rollout/truncation_rate) and
pass@k against k: the estimator by hand, and whole reports, HTML and Markdown, from a real MLflow sqlite store."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from vimpo_bench.evaluation.results import suite_metrics
from vimpo_bench.report import build_report, collect
from vimpo_bench.report import passk as K
from vimpo_bench.report.panels import CURVE_METRICS, build_panels
from vimpo_bench.report.synthetic import fresh_store, log_synthetic_study
from vimpo_bench.runs.tracking import MlflowTracker

DYNAMICS = {
    "policy/clip_frac": "clip fraction (tokens)",
    "policy/grad_norm": "gradient norm (before clipping)",
    "rollout/truncation_rate": "truncation rate (no EOS)",
}
N, PROBLEMS, SEEDS = 4, 6, (1, 2)


# --- the estimator, by hand ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 1 / 4),  # k = 1: the fraction right
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (4, 2, 2, 1 - 1 / 6),  # 1 - C(2,2)/C(4,2)
        (4, 1, 3, 1 - 1 / 4),  # 1 - C(3,3)/C(4,3)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (8, 3, 2, 1 - 10 / 28),  # 1 - C(5,2)/C(8,2)
        (8, 3, 6, 1.0),  # n - c < k: every draw of 6 holds a right one
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert K.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_pass_at_k_edge_cases(n):
    assert K.pass_at_k_curve(n, 0) == [0.0] * n  # c = 0: never
    assert K.pass_at_k_curve(n, n) == [1.0] * n  # c = n: always
    for c in range(n + 1):
        assert K.pass_at_k(n, c, n) == (1.0 if c else 0.0)  # k = n: some sample right
        assert K.pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
        curve = K.pass_at_k_curve(n, c)
        assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:], strict=False))  # never falls with k


def test_pass_at_k_is_stable_where_the_binomials_are_huge():
    # C(1000, 500) ~ 1e299: 1 - C(999, 500) / C(1000, 500) = 1 - 500/1000
    assert K.pass_at_k(1000, 1, 500) == pytest.approx(0.5, abs=1e-12)
    exact = 1 - math.comb(1000 - 37, 300) / math.comb(1000, 300)
    assert K.pass_at_k(1000, 37, 300) == pytest.approx(exact, rel=1e-12)


def test_run_pass_at_k_averages_over_problems_up_to_the_fewest_samples():
    rows = [("r", "s", "p1", i < 1) for i in range(4)] + [("r", "s", "p2", i < 2) for i in range(4)]
    rows += [("q", "s", "p1", i < 1) for i in range(4)] + [("q", "s", "p2", i < 1) for i in range(3)]
    samples = pd.DataFrame(rows, columns=["run_id", "suite", "problem_id", "correct"])
    out = K.run_pass_at_k(samples).set_index(["run_id", "k"])
    assert out.loc[("r", 1), "value"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert out.loc[("r", 2), "value"] == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert out.loc[("r", 4), "value"] == pytest.approx(1.0)
    # q's p2 has 3 samples: its k stops at 3
    assert out.loc["q"].index.max() == 3 and out.loc[("q", 3), "samples"] == 3
    assert out.loc[("q", 3), "value"] == pytest.approx((3 / 4 + 1) / 2)


def test_shown_ks():
    assert K.shown_ks(8) == [1, 2, 4, 8]
    assert K.shown_ks(6) == [1, 2, 4, 6]
    assert K.shown_ks(1) == [1]


# --- whole reports from a real MLflow store --------------------------------------------------------


def right_samples(algo: str, seed: int, problem: int) -> int:
    """How many of a problem's N samples are right: every count 0..N occurs over grpo's problems, one of them
    twice (which one depends on the seed); vimpo gets one more, up to N."""
    return min(N, (problem + seed) % (N + 1) + (algo == "vimpo"))


def _log_eval(uri: str, train_id: str, algo: str, seed: int) -> dict[str, float]:
    """An eval run nested under `train_id`, logged as `vimpo-bench eval` does: records/arith.jsonl with N graded
    samples per problem and the eval/arith/<metric> values `eval_results.suite_metrics` gives them."""
    records = []
    for i in range(PROBLEMS):
        c = right_samples(algo, seed, i)
        records += [
            {
                "suite": "arith",
                "problem_id": f"arith-{i}",
                "sample_index": j,
                "prompt": f"{i}+1=",
                "completion": f"#{i + 1 if j < c else i}",
                "extracted": str(i + 1 if j < c else i),
                "gold": str(i + 1),
                "correct": j < c,
            }
            for j in range(N)
        ]
    metrics = {
        k: v for k, v in suite_metrics(records, N).items() if not (isinstance(v, float) and math.isnan(v))
    }
    ev = MlflowTracker.start(
        f"eval-{algo}-{seed}",
        "vimpo-bench",
        {"vimpo.kind": "eval", "vimpo.study": "dyn"},
        parent_run_id=train_id,
        tracking_uri=uri,
    )
    ev.log_metrics({f"eval/arith/{k}": v for k, v in metrics.items()}, step=0)
    ev.log_text("".join(json.dumps(r) + "\n" for r in records), "records/arith.jsonl")
    ev.finish()
    return metrics


def _log_partial(uri: str) -> None:
    """Study "partial": training runs that logged a clean reward and the clip fraction, nothing else."""
    for seed in SEEDS:
        tr = MlflowTracker.start(
            f"partial-{seed}",
            "vimpo-bench",
            {"vimpo.kind": "train", "vimpo.algo": "grpo", "vimpo.seed": seed, "vimpo.study": "partial"},
            tracking_uri=uri,
        )
        tr.log_params({"algo": {"name": "grpo"}, "run": {"seed": seed}})
        for step in range(3):
            tr.log_metrics(
                {"reward/clean_mean": 0.1 * step + 0.01 * seed, "policy/clip_frac": 0.05 * seed}, step=step
            )
        tr.finish()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Study "dyn" (vimpo, grpo x 2 seeds of synthetic training runs, each with an eval run of N samples per
    problem) and study "partial" (see _log_partial)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = fresh_store(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MlflowTracker puts new experiments' artifacts under ./mlartifacts
        ids = log_synthetic_study(
            uri, study="dyn", seeds=SEEDS, steps=6, with_eval=False, with_sweep=False, with_artifacts=False
        )
        cells = [(algo, seed) for algo in ("vimpo", "grpo") for seed in SEEDS]  # log_synthetic_study's order
        logged = {
            cell: _log_eval(uri, train_id, *cell) for cell, train_id in zip(cells, ids["train"], strict=True)
        }
        _log_partial(uri)
    return {"uri": uri, "logged": logged}


@pytest.fixture(scope="module")
def reports(store, tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    html = build_report(study="dyn", out=root / "dyn.html", tracking_uri=store["uri"])
    md = build_report(study="dyn", out=root / "dyn.md", tracking_uri=store["uri"], format="markdown")
    return html, md


def expected_pass_at_k(algo: str, k: int) -> float:
    """Mean over seeds of the mean over problems of 1 - C(N-c, k) / C(N, k), from the binomials."""
    return sum(
        1 - math.comb(N - right_samples(algo, seed, i), k) / math.comb(N, k)
        for seed in SEEDS
        for i in range(PROBLEMS)
    ) / (len(SEEDS) * PROBLEMS)


def test_pass_at_k_table_from_the_final_eval_runs(store):
    data = collect(study="dyn", tracking_uri=store["uri"])
    panels, labels, _ = build_panels(data)
    table = K.pass_at_k_table(data, labels)
    assert set(table["arm"]) == {"vimpo", "grpo"} and set(table["suite"]) == {"arith"}
    assert sorted(table["k"].unique()) == list(range(1, N + 1))
    assert (
        (table["n"] == len(SEEDS)).all()
        and (table["problems"] == PROBLEMS).all()
        and (table["samples"] == N).all()
    )
    for r in table.itertuples():
        assert r.mean == pytest.approx(expected_pass_at_k(r.arm, r.k), abs=1e-12)
        assert 0 <= r.ci_low <= r.mean <= r.ci_high <= 1
        # the ends of the curve are the eval runs' own numbers: k = 1 is avg@N, k = N is pass_at_N
        logged = [store["logged"][(r.arm, seed)] for seed in SEEDS]
        if r.k in (1, N):
            name = f"avg_at_{N}" if r.k == 1 else f"pass_at_{N}"
            assert r.mean == pytest.approx(sum(m[name] for m in logged) / len(SEEDS), abs=1e-12)
    final = next(p for p in panels if p.id == "final-eval")
    assert final.error is None and final.tables["pass_at_k"].equals(table)


def test_the_html_page_draws_the_dynamics_curves_and_pass_at_k(reports):
    files, _ = reports
    assert files.failed_panels == []
    html = files.page.read_text(encoding="utf-8")
    curves = re.search(r'Plotly\.newPlot\("fig-curves-0",(.*?)\);</script>', html).group(1)
    for key, title in DYNAMICS.items():
        assert title in curves, key
    assert 'id="fig-passk-0"' in html and "pass@k against k" in html
    lc = pd.read_csv(files.folder / "learning_curves.csv")
    for key in DYNAMICS:
        rows = lc[lc["key"] == key]
        assert set(rows["arm"]) == {"vimpo", "grpo"} and (rows["n"] == len(SEEDS)).all(), key
    truncation = lc[lc["key"] == "rollout/truncation_rate"]
    # a rate: its band stays in [0, 1]
    assert ((truncation["ci_low"] >= 0) & (truncation["ci_high"] <= 1)).all()
    assert len(pd.read_csv(files.folder / "pass_at_k.csv")) == 2 * N


def test_the_markdown_page_draws_the_dynamics_curves_and_pass_at_k(reports):
    _, files = reports
    md = files.page.read_text(encoding="utf-8")
    names = {p.name for p in files.figures}
    for key in DYNAMICS:
        png = "curve_" + re.sub(r"[^A-Za-z0-9]+", "_", key) + ".png"
        assert png in names and f"dyn/{png}" in md, key
    assert "pass_at_k.png" in names and "### pass@k against k" in md and "dyn/pass_at_k.csv" in md
    for path in files.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = md.split("### pass@k against k", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^\| suite \| k \| vimpo \| grpo \|$", section, re.M)
    assert [int(k) for k in re.findall(r"^\| arith \| (\d+) \|", section, re.M)] == K.shown_ks(N)
    assert "Not drawn" not in md  # every curve metric was logged


def test_a_curve_no_run_logged_is_left_out(store, tmp_path):
    data = collect(study="partial", tracking_uri=store["uri"])
    panels, _, _ = build_panels(data)
    curves = next(p for p in panels if p.id == "curves")
    assert curves.error is None
    absent = [k for k, _ in CURVE_METRICS if k not in ("reward/clean_mean", "policy/clip_frac")]
    assert curves.meta["curves_absent"] == absent
    body = "".join(curves.body)
    assert DYNAMICS["policy/clip_frac"] in body
    for key in ("policy/grad_norm", "rollout/truncation_rate"):
        assert DYNAMICS[key] not in body and key in body  # not drawn, but named in the note
    assert body.count('"visible":false') == 2 * 2 * 2  # 2 figures x 2 spare cells x (x, y) of a 1 x 4 grid
    final = next(p for p in panels if p.id == "final-eval")
    assert "pass_at_k" not in final.tables  # no eval runs: no pass@k, and no empty figure
    files = build_report(
        study="partial", out=tmp_path / "partial.md", tracking_uri=store["uri"], format="markdown"
    )
    names = {p.name for p in files.figures}
    assert {"curve_reward_clean_mean.png", "curve_policy_clip_frac.png"} == {
        n for n in names if n.startswith("curve_")
    }
    md = files.page.read_text(encoding="utf-8")
    assert "`policy/grad_norm`" in md and "pass@k" not in md and "not logged." not in md


def test_the_html_and_markdown_pages_walk_one_topic_list():
    """One spec list (panels.PANELS): the Markdown page has a section only for a listed topic, titled as the
    panel, and writes them in the list's order."""
    from vimpo_bench.report import markdown
    from vimpo_bench.report.panels import PANELS

    ids = [spec.id for spec in PANELS]
    assert set(markdown.SECTIONS) <= set(ids)
    assert len(ids) == len(set(ids))
