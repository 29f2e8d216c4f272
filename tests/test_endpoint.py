"""The pre-declared endpoint's statistics (report/endpoint.py) against independent references, and the page that
opens with it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vimpo_bench.report import collect
from vimpo_bench.report import endpoint as E
from vimpo_bench.report.markdown import write_markdown
from vimpo_bench.report.synthetic import fresh_store, log_synthetic_study


def test_paired_t_matches_scipy():
    d = np.array([0.02, -0.01, 0.035, 0.0, 0.015, 0.05, -0.02])
    mine = E.paired_t(d)
    ref = stats.ttest_1samp(d, 0.0)
    assert mine["t"] == pytest.approx(ref.statistic) and mine["p"] == pytest.approx(ref.pvalue)
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (mine["ci_low"], mine["ci_high"]) == (pytest.approx(low), pytest.approx(high))


def test_minimum_detectable_effect_has_the_declared_power():
    """At the MDE, the noncentral t gives the paired test about the declared power (the formula is the usual
    approximation: within two points of power)."""
    sd, n = 0.022, 20
    mde = E.minimum_detectable_effect(sd, n, 0.05, 0.8)
    crit = stats.t.ppf(0.975, n - 1)
    ncp = mde / (sd / math.sqrt(n))
    power = stats.nct.sf(crit, n - 1, ncp) + stats.nct.cdf(-crit, n - 1, ncp)
    assert power == pytest.approx(0.8, abs=0.02)
    assert E.seeds_for_effect(sd, mde) == n


def test_holm_by_hand():
    assert E.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert E.holm([0.5]) == [0.5]


def test_hierarchical_bootstrap_brackets_the_mean_and_sees_problem_noise():
    rng = np.random.default_rng(1)
    seeds = [rng.normal(0.01 * s, 0.3, size=200) for s in range(8)]  # problem-level noise dominates
    low, high = E.hierarchical_bootstrap(seeds, draws=2000, seed=0)
    mean = float(np.mean([s.mean() for s in seeds]))
    assert low < mean < high
    seed_means = np.array([s.mean() for s in seeds])
    t_low, t_high = E.paired_t(seed_means)["ci_low"], E.paired_t(seed_means)["ci_high"]
    assert high - low == pytest.approx(t_high - t_low, rel=0.5)  # the same order as the seeds' own spread
    constant = [np.full(50, 0.02) for _ in range(5)]
    assert E.hierarchical_bootstrap(constant, draws=200) == (pytest.approx(0.02), pytest.approx(0.02))


def test_evaluation_noise_sd_by_hand():
    # two problems, 4 samples each: q = 0.5 and 1.0 -> var of a 4-sample mean 0.25/3 and 0
    rows = pd.DataFrame({"problem_id": ["a"] * 4 + ["b"] * 4, "correct": [1, 0, 1, 0, 1, 1, 1, 1]})
    assert E.evaluation_noise_sd(rows) == pytest.approx(math.sqrt(0.25 / 3) / 2)


def test_parse_endpoint_refuses_a_comparison_without_its_fields():
    with pytest.raises(ValueError, match="primary: a mapping with exactly"):
        E.parse_endpoint({"primary": {"arm": "vimpo"}})
    with pytest.raises(ValueError, match="unknown key"):
        E.parse_endpoint({"primary": {"arm": "a", "baseline": "b", "suite": "s", "metric": "m"}, "alfa": 0.1})
    assert E.parse_endpoint({}) is None


def test_a_page_with_a_declared_endpoint_opens_with_its_estimate(tmp_path, monkeypatch):
    uri = fresh_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    log_synthetic_study(uri, study="ep", seeds=(1, 2, 3, 4), steps=8, with_sweep=False)
    data = collect(study="ep", tracking_uri=uri)
    suite = data.samples.loc[data.samples["source"] == "eval", "suite"].iloc[0]
    data.endpoint = {"question": "Does VIMPO beat GRPO?",
                     "primary": {"arm": "vimpo", "baseline": "grpo", "suite": suite, "metric": "accuracy"},
                     "secondary": [{"arm": "vimpo", "baseline": "grpo", "suite": "validation",
                                    "metric": "sampled_accuracy"}]}
    files = write_markdown(data, tmp_path / "ep.md", "vimpo-bench report ...")
    text = files.page.read_text(encoding="utf-8")
    assert text.index("## Answer") < text.index("## Settings")
    assert "**Question.** Does VIMPO beat GRPO?" in text and "**Verdict:" in text
    table = pd.read_csv(tmp_path / "ep" / "endpoints.csv")
    seeds = pd.read_csv(tmp_path / "ep" / "endpoint_seeds.csv")
    primary = seeds[seeds["endpoint"] == "primary"]
    # the estimate is the mean of the per-seed differences of the runs' own logged values
    runs = pd.read_csv(tmp_path / "ep" / "final_eval_runs.csv")
    runs = runs[(runs["suite"] == suite) & (runs["metric"] == "accuracy")]
    by_arm = runs.pivot_table(index="seed", columns="arm", values="value")
    assert len(primary) == 4
    assert table.loc[0, "mean_diff"] == pytest.approx((by_arm["vimpo"] - by_arm["grpo"]).mean())
    assert (tmp_path / "ep" / "endpoint.png").is_file() and table.loc[1, "p_holm"] == pytest.approx(table.loc[1, "p"])


def test_an_untestable_secondary_stays_out_of_the_holm_family():
    """A secondary with one paired seed has no p: it gets no adjusted p, and the others are corrected among
    themselves only."""
    table = pd.DataFrame({"endpoint": ["primary", "S1", "S2", "S3"], "p": [0.01, np.nan, 0.02, 0.04]})
    testable = (table["endpoint"] != "primary") & table["p"].notna()
    assert E.holm(table.loc[testable, "p"].tolist()) == pytest.approx([0.04, 0.04])
