"""`vimpo-bench report`: statistics by hand, arm/condition labelling, and whole reports built from a real
MLflow sqlite store (synthetic runs shaped like docs/metrics.md). The browser checks are in
test_report_browser.py."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from vimpo_bench.report import analysis as A
from vimpo_bench.report import build_report, collect, stats
from vimpo_bench.report import grid as G
from vimpo_bench.report import records as P
from vimpo_bench.report import refs as R
from vimpo_bench.report.collect import ReportData
from vimpo_bench.report.panels import PANELS, steps_display
from vimpo_bench.report.synthetic import fresh_store, log_synthetic_study
from vimpo_bench.runs import tracking
from vimpo_bench.runs.tracking import MlflowTracker

T_2 = 4.302652729749464  # t_{0.975} with 2 degrees of freedom
T_1 = 12.706204736174707
GRID_BETAS = (0.005, 0.05, 0.5)  # synthetic.grid_shift: best at 0.05 for VIMPO, 0.005 for GRPO, 0.1 per decade


# --- statistics, by hand -------------------------------------------------------------------------


def test_t_interval_by_hand():
    mean, low, high, n = stats.t_interval([1.0, 2.0, 3.0])  # sd 1
    assert (mean, n) == (2.0, 3)
    assert low == pytest.approx(2 - T_2 / math.sqrt(3)) and high == pytest.approx(2 + T_2 / math.sqrt(3))


def test_t_interval_one_or_no_value_has_no_interval():
    mean, low, high, n = stats.t_interval([0.4, float("nan")])  # NaN is dropped, one value is left
    assert (mean, n) == (0.4, 1) and math.isnan(low) and math.isnan(high)
    mean, low, high, n = stats.t_interval([float("nan")])
    assert n == 0 and math.isnan(mean) and math.isnan(high)


def test_summarize_matches_t_interval_per_group():
    df = pd.DataFrame({"g": ["a", "a", "a", "b", "b", "c"], "value": [1.0, 2.0, 3.0, 5.0, 7.0, 9.0]})
    s = stats.summarize(df, ["g"]).set_index("g")
    assert s.loc["a", "ci_high"] == pytest.approx(2 + T_2 / math.sqrt(3))
    assert s.loc["b", "mean"] == 6.0 and s.loc["b", "ci_low"] == pytest.approx(6 - T_1 * math.sqrt(2) / math.sqrt(2))
    assert s.loc["c", "n"] == 1 and math.isnan(s.loc["c", "ci_low"])


def test_paired_difference_uses_only_matched_seeds():
    vimpo = {"1": 0.60, "2": 0.70, "3": 0.90}
    grpo = {"1": 0.50, "2": 0.55, "4": 0.10}
    d = stats.paired_difference(vimpo, grpo)
    assert d["keys"] == ["1", "2"] and d["n_pairs"] == 2
    diffs = [0.10, 0.15]  # mean 0.125, sd 0.0353553
    assert d["mean"] == pytest.approx(0.125)
    assert d["ci_high"] - d["mean"] == pytest.approx(T_1 * np.std(diffs, ddof=1) / math.sqrt(2))
    assert stats.paired_difference({"1": 1.0}, {"2": 0.0})["n_pairs"] == 0


def test_paired_interval_is_narrower_than_unpaired_when_seeds_share_variance():
    seed_effect = np.array([0.0, 0.3, -0.2, 0.1, 0.4])
    vimpo = dict(enumerate(0.5 + seed_effect + [0.05, 0.06, 0.04, 0.05, 0.05]))
    grpo = dict(enumerate(0.5 + seed_effect))
    paired = stats.paired_difference(vimpo, grpo)
    _, lo_v, hi_v, _ = stats.t_interval(vimpo.values())
    assert paired["ci_low"] > 0 and (paired["ci_high"] - paired["ci_low"]) < (hi_v - lo_v) / 5


def test_bootstrap_interval_brackets_the_mean():
    mean, low, high, n = stats.bootstrap_interval([0.1, 0.4, 0.35, 0.8, 0.5, 0.6, 0.2, 0.45, 0.55, 0.3])
    assert n == 10 and low < mean < high and 0.1 <= low and high <= 0.8


def test_format_interval():
    assert stats.format_interval(0.5, 0.4, 0.6, 3) == "0.500 [0.400, 0.600] n=3"
    assert stats.format_interval(0.5, float("nan"), float("nan"), 1) == "0.500 (n=1, no interval)"
    assert stats.format_interval(float("nan"), float("nan"), float("nan"), 0) == "—"


# --- arms and conditions, on hand-made frames -----------------------------------------------------


def _data(rows: list[dict], tags: list[dict] | None = None) -> ReportData:
    runs = pd.DataFrame([{"run_id": f"r{i}", "run_name": f"r{i}", "kind": "train", "algo": r["algo.name"],
                          "seed": str(r["run.seed"]), "status": "FINISHED"} for i, r in enumerate(rows)])
    params = pd.DataFrame([{k: str(v) for k, v in r.items()} for r in rows], index=runs["run_id"])
    empty = pd.DataFrame(index=runs["run_id"])
    tag_frame = empty if tags is None else pd.DataFrame(tags, index=runs["run_id"])
    return ReportData("t", "t", runs, params, tag_frame, empty,
                      pd.DataFrame(columns=["run_id", "key", "step", "value", "time_s"]))


def test_noise_rate_is_a_condition_and_algorithm_settings_are_not():
    rows = [{"algo.name": a, "run.seed": s, "reward.p": p, "algo.beta": 0.1 if a == "vimpo" else 0.04,
             "run.run_name": f"{a}-{s}-{p}"}
            for a in ("vimpo", "grpo") for s in (1, 2) for p in (0.0, 0.2)]
    labels = A.label_arms(_data(rows))
    assert set(labels["arm"]) == {"vimpo", "grpo"}
    assert set(labels["condition"]) == {"reward.p=0.0", "reward.p=0.2"}
    # run.run_name differs per run but is not a condition: it only names the run.
    assert labels.attrs["condition_keys"] == ["reward.p"]


def test_a_setting_varied_for_one_algorithm_only_splits_its_arm():
    rows = [{"algo.name": "vimpo", "run.seed": s, "algo.beta": b} for s in (1, 2) for b in (0.05, 0.1)]
    rows += [{"algo.name": "grpo", "run.seed": s, "algo.beta": 0.04} for s in (1, 2)]
    labels = A.label_arms(_data(rows))
    assert set(labels["arm"]) == {"vimpo[algo.beta=0.05]", "vimpo[algo.beta=0.1]", "grpo"}
    assert set(labels["condition"]) == {""}
    assert A.arm_order(labels["arm"]) == ["vimpo[algo.beta=0.05]", "vimpo[algo.beta=0.1]", "grpo"]


def test_bookkeeping_keys_never_define_arms_even_with_one_seed():
    """One seed, 2 algorithms x 3 noise rates, and a run name, output folder and thread count per cell: the
    one-seed study must still give one arm per algorithm (the bug: every cell was its own arm)."""
    rows = [{"algo.name": a, "run.seed": 1, "reward.p": p, "run.run_name": f"{a}-1-p{p}",
             "run.output_dir": f"runs/{a}-p{p}", "run.threads": 1 + i, "run.experiment": f"exp-{a}"}
            for a in ("vimpo", "grpo") for i, p in enumerate((0.0, 0.1, 0.2))]
    labels = A.label_arms(_data(rows))
    assert sorted(set(labels["arm"])) == ["grpo", "vimpo"]
    assert sorted(set(labels["condition"])) == ["reward.p=0.0", "reward.p=0.1", "reward.p=0.2"]
    assert labels.attrs["condition_keys"] == ["reward.p"] and labels.attrs["variant_keys"] == []
    # the noise panel's labelling leaves the rate out: one arm per algorithm, no condition
    noisy = A.label_arms(_data(rows), exclude=A.NOISE_RATE_KEYS)
    assert sorted(set(noisy["arm"])) == ["grpo", "vimpo"] and set(noisy["condition"]) == {""}


def test_asymmetric_noise_is_never_pooled_with_a_symmetric_rate():
    """A lenient verifier (fp 0.2, fn 0) sits at rate 0.1 on the x axis, like symmetric p = 0.1; the two are
    different conditions, so each is its own row (the bug: one mean over both, n = 6 from 3 seeds)."""
    noise = [{"reward.noise": "symmetric", "reward.p": 0.1, "reward.fp": 0.0, "reward.fn": 0.0},
             {"reward.noise": "asymmetric", "reward.p": 0.0, "reward.fp": 0.2, "reward.fn": 0.0}]
    rows = [{"algo.name": a, "run.seed": s, **n} for a in ("vimpo", "grpo") for s in (1, 2, 3) for n in noise]
    data = _data(rows)
    accuracy = [0.30 + 0.01 * i + (0.2 if r["reward.noise"] == "asymmetric" else 0.0) for i, r in enumerate(rows)]
    runs = data.runs.assign(parent_run_id=None, start_time=0)  # no eval runs: the accuracy is validation's
    data = ReportData(data.title, data.selection, runs, data.params, data.tags,
                      pd.DataFrame({"val/greedy_accuracy": accuracy}, index=data.runs["run_id"]), data.history)
    table, what = A.noisy_table(data)
    assert what == "final validation greedy accuracy"
    assert len(table) == 4 and set(table["n"]) == {3} and set(table["noise_rate"]) == {0.1}
    vimpo = table[table["arm"] == "vimpo"].set_index("noise_kind")["mean"]
    assert vimpo["symmetric"] == pytest.approx(np.mean([0.30, 0.32, 0.34]))
    assert vimpo["asymmetric fp=0.2, fn=0"] == pytest.approx(np.mean([0.51, 0.53, 0.55]))


def test_bookkeeping_keys_cover_what_config_hash_leaves_out():
    """Every run.* key whose value does not change Config.hash() is a bookkeeping key of the report."""
    import dataclasses

    from vimpo_bench.config import Config, RunConfig

    base = Config()
    ignored = [f"run.{f.name}" for f in dataclasses.fields(RunConfig)
               if dataclasses.replace(base, run=dataclasses.replace(base.run, **{f.name: "changed"})).hash() == base.hash()]
    assert ignored and set(ignored) <= set(A.BOOKKEEPING_KEYS), ignored


def _curve_case() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Arm a (runs r1, r2) and arm b (r3, r4), val/sampled_accuracy at steps 0, 10, 20; r1 and r3 take 2 s a
    step, r2 and r4 3 s. Seed-means: a 0.2, 0.5, 0.7; b 0.2, 0.3, 0.4."""
    values = {"r1": [0.2, 0.6, 0.7], "r2": [0.2, 0.4, 0.7], "r3": [0.2, 0.3, 0.5], "r4": [0.2, 0.3, 0.3]}
    history = pd.DataFrame([{"run_id": r, "key": A.THRESHOLD_KEY, "step": step, "value": v,
                             "time_s": step * (2.0 if r in ("r1", "r3") else 3.0)}
                            for r, vs in values.items() for step, v in zip((0, 10, 20), vs, strict=True)])
    labels = pd.DataFrame({"arm": ["a", "a", "b", "b"], "condition": "", "seed": ["1", "2", "1", "2"]},
                          index=pd.Index(["r1", "r2", "r3", "r4"], name="run_id"))
    return history, labels


def test_first_reach_by_hand():
    frame = pd.DataFrame({"g": ["x", "x", "x", "y", "y"], "step": [20, 0, 10, 0, 5], "time_s": [40, 0, 20, 0, 9],
                          "value": [0.9, 0.1, 0.6, 0.1, 0.2], "threshold": 0.5})
    hit = A.first_reach(frame, ["g"], value="value").set_index("g")
    assert (hit.loc["x", "step"], hit.loc["x", "time_s"]) == (10, 20)  # the first in step order, not in row order
    assert math.isnan(hit.loc["y", "step"]) and hit.loc["y", "points"] == 2


def test_steps_to_threshold_by_hand():
    history, labels = _curve_case()
    curve = A.curves(history, labels, [A.THRESHOLD_KEY])
    assert A.default_threshold(curve).to_dict() == {"": pytest.approx(0.45)}  # (0.2 start + 0.7 best end) / 2
    t = A.steps_to_threshold(curve, history, labels).set_index("arm")
    assert t.loc["a", "threshold"] == pytest.approx(0.45)
    assert (t.loc["a", "step"], t.loc["a", "time_s"]) == (10, 25)  # seed-mean 0.5 at step 10, seeds at 20 s and 30 s
    assert (t.loc["a", "seeds"], t.loc["a", "seeds_reached"]) == (2, 2)
    assert (t.loc["a", "median_seed_step"], t.loc["a", "median_seed_time_s"]) == (15, 40)  # r1: 10 (20 s), r2: 20 (60 s)
    assert math.isnan(t.loc["b", "step"]) and t.loc["b", "final_mean"] == pytest.approx(0.4)
    # r3 reaches at step 20, r4 never: half the seeds is not a median, so "not reached"
    assert t.loc["b", "seeds_reached"] == 1 and math.isnan(t.loc["b", "median_seed_step"])
    given = A.steps_to_threshold(curve, history, labels, threshold=0.35).set_index("arm")
    assert given.loc["b", "step"] == 20 and given.loc["b", "threshold"] == 0.35
    flat = history.assign(value=0.2)  # nobody improves: no default threshold, nobody "reaches" the start
    t_flat = A.steps_to_threshold(A.curves(flat, labels, [A.THRESHOLD_KEY]), flat, labels)
    assert t_flat["threshold"].isna().all() and t_flat["step"].isna().all() and (t_flat["seeds_reached"] == 0).all()
    shown = steps_display(t.reset_index())
    assert list(shown["step (seed-mean)"]) == ["10", "not reached"]
    assert list(shown["median step (per seed)"]) == ["15", "not reached"] and list(shown["seeds reached"]) == ["2/2", "1/2"]


def test_time_axis_only_where_every_seed_has_the_point():
    """r2 stopped after step 10 (a time budget): past it the seed-mean time would be r1's alone, 40 s at
    step 20 after 25 s at step 10, but with r2's slower 3 s a step it would have read 50 s; the mean over
    the seeds that remain must not stand in for the arm."""
    history, labels = _curve_case()
    history = history[~((history["run_id"] == "r2") & (history["step"] == 20))]
    curve = A.curves(history, labels, [A.THRESHOLD_KEY]).set_index(["arm", "step"])
    assert curve.loc[("a", 10), "time_s"] == pytest.approx(25) and math.isnan(curve.loc[("a", 20), "time_s"])
    assert curve.loc[("a", 20), "n"] == 1 and curve.loc[("b", 20), "time_s"] == pytest.approx(50)


def test_intervals_of_fractions_stay_inside_what_is_possible():
    """Two seeds at 0.0 and 1.0: the t interval is 0.5 +- 6.4; an accuracy is cut to [0, 1], a difference
    of accuracies to [-1, 1], and a metric that is not a fraction keeps its interval."""
    history = pd.DataFrame([{"run_id": r, "key": key, "step": 0, "value": v, "time_s": 0.0}
                            for key in ("val/sampled_accuracy", "policy/kl_k3") for r, v in (("r1", 0.0), ("r2", 1.0))])
    labels = pd.DataFrame({"arm": ["a", "a"], "condition": "", "seed": ["1", "2"]}, index=pd.Index(["r1", "r2"]))
    curve = A.curves(history, labels, ["val/sampled_accuracy", "policy/kl_k3"]).set_index("key")
    assert (curve.loc["val/sampled_accuracy", "ci_low"], curve.loc["val/sampled_accuracy", "ci_high"]) == (0.0, 1.0)
    assert curve.loc["policy/kl_k3", "ci_low"] < -5 and curve.loc["policy/kl_k3", "ci_high"] > 5
    long = pd.DataFrame({"condition": "", "arm": ["vimpo", "vimpo", "grpo", "grpo"], "algo": "", "seed": ["1", "2"] * 2,
                         "train_run_id": ["v1", "v2", "g1", "g2"], "suite": "arith", "metric": "avg_at_8",
                         "value": [0.0, 1.0, 1.0, 0.0], "run_ci_low": np.nan, "run_ci_high": np.nan})
    summary = A.final_eval_summary(long)
    assert summary["ci_low"].min() == 0.0 and summary["ci_high"].max() == 1.0
    paired = A.paired_table(long).iloc[0]
    assert (paired["mean_diff"], paired["ci_low"], paired["ci_high"]) == (0.0, -1.0, 1.0)
    assert paired["verdict"].startswith("not resolved")
    assert A.is_fraction("eval/aime24/pass_at_16") and A.is_fraction("reward/truncated_passed_rate")
    assert not A.is_fraction("policy/entropy") and not A.is_fraction("vimpo/value_loss")


def test_only_finished_training_runs_are_compared():
    rows = [{"algo.name": a, "run.seed": s} for a in ("vimpo", "grpo") for s in (1, 2)]
    data = _data(rows)
    data.runs.loc[data.runs["run_id"] == "r1", "status"] = "RUNNING"
    data.runs.loc[data.runs["run_id"] == "r2", "status"] = "FAILED"
    labels = A.label_arms(data)
    assert list(labels.index) == ["r0", "r3"]


def test_grader_versions_are_compared_within_a_task():
    """Training on arith grades with arith-exact, evaluation on math500 with math-verify: no warning; two
    math500 eval runs with different math graders: a warning that names the task."""
    runs = pd.DataFrame({"run_id": ["t1", "e1", "e2"], "run_name": ["t1", "e1", "e2"], "kind": ["train", "eval", "eval"],
                         "algo": "vimpo", "seed": "1", "status": "FINISHED"})
    tags = pd.DataFrame({"grader_version": ["arith-exact-v1", "math-1", "math-1"], "git_commit": ["abc", None, "abc"],
                         "vimpo.task": ["arith", None, None], "vimpo.suite": [None, "math500", "math500"]},
                        index=runs["run_id"])
    empty = pd.DataFrame(index=runs["run_id"])
    data = ReportData("t", "t", runs, empty, tags, empty, pd.DataFrame(columns=["run_id", "key", "step", "value", "time_s"]))
    _, notes = P.provenance(data)
    assert not any("disagree" in n for n in notes)
    assert "1 eval run(s) lack the git_commit tag" in notes
    tags.loc["e2", "grader_version"] = "math-2"
    _, notes = P.provenance(ReportData("t", "t", runs, empty, tags, empty, data.history))
    assert "runs on math500 disagree on grader_version: math-1, math-2" in notes


def test_pages_show_headline_metrics_and_the_csv_keeps_all():
    sampled = ["accuracy", "avg_at_8", "maj_at_8"] + [f"pass_at_{k}" for k in range(1, 9)]
    assert A.page_metrics(sampled) == {"avg_at_8", "maj_at_8", "pass_at_8"}
    assert A.page_metrics(["accuracy", "pass_at_1"]) == {"accuracy", "pass_at_1"}  # greedy: nothing repeats
    assert A.page_metrics(["greedy_accuracy", "sampled_accuracy"]) == {"greedy_accuracy", "sampled_accuracy"}
    frame = pd.DataFrame({"suite": ["arith"] * len(sampled) + ["validation"], "metric": sampled + ["greedy_accuracy"]})
    assert list(A.on_page(frame)["metric"]) == ["avg_at_8", "maj_at_8", "pass_at_8", "greedy_accuracy"]


def test_an_ablation_of_one_algorithm_compares_its_settings_with_the_defaults():
    """One algorithm, settings varied alike for every seed: the settings make the arms (there is nothing
    else to compare), and the paired table is each setting minus the arm at the algorithm's defaults."""
    rows = [{"algo.name": "vimpo", "run.seed": s, "algo.advantage": a, "algo.lam": lam}
            for s in (1, 2) for a, lam in (("residual", 1.0), ("none", 1.0), ("residual", 0.9))]
    labels = A.label_arms(_data(rows))
    assert labels.attrs["condition_keys"] == [] and set(labels["condition"]) == {""}
    assert labels.attrs["default_arm"] == "vimpo[algo.advantage=residual, algo.lam=1.0]"
    long = pd.DataFrame({"condition": "", "arm": labels["arm"], "algo": "vimpo", "seed": labels["seed"],
                         "train_run_id": labels.index, "suite": "arith", "metric": "avg_at_8",
                         "value": [0.40, 0.45, 0.38, 0.50, 0.55, 0.47], "run_ci_low": np.nan, "run_ci_high": np.nan})
    paired = A.paired_table(long, labels.attrs["default_arm"]).set_index("vimpo")
    assert set(paired["baseline"]) == {labels.attrs["default_arm"]} and len(paired) == 2
    assert paired.loc["vimpo[algo.advantage=none, algo.lam=1.0]", "mean_diff"] == pytest.approx(0.05)
    assert paired.loc["vimpo[algo.advantage=none, algo.lam=1.0]", "verdict"] == "variant higher"
    assert A.paired_title(labels).startswith("Each setting minus the defaults")


def test_labeled_study_axes_name_arms_and_conditions_and_the_config_defaults_make_the_reference():
    """A labeled axis that sets several keys names them by its label (ref=hard10, not four key=value pairs);
    an axis of plain values (beta) keeps key=value. With one algorithm the arm at the config's defaults
    (frozen pi_ref, constant beta: not algo.* keys) is the paired table's reference."""
    refs = {"frozen": {"ref.schedule": "frozen", "ref.every": 10, "beta_schedule.kind": "constant"},
            "hard10": {"ref.schedule": "hard", "ref.every": 10, "beta_schedule.kind": "constant"},
            "ema": {"ref.schedule": "ema", "ref.every": 1, "beta_schedule.kind": "constant"},
            "cosine": {"ref.schedule": "frozen", "ref.every": 10, "beta_schedule.kind": "cosine"}}
    rows = [{"algo.name": "vimpo", "run.seed": s, **keys} for s in (1, 2) for keys in refs.values()]
    tags = [{"vimpo.axis.ref": name, "vimpo.axis.run.seed": str(s)} for s in (1, 2) for name in refs]
    labels = A.label_arms(_data(rows, tags))
    assert set(labels["arm"]) == {f"vimpo[ref={name}]" for name in refs}
    assert labels.attrs["default_arm"] == "vimpo[ref=frozen]"
    assert A.paired_title(labels).startswith("Each setting minus the defaults (vimpo[ref=frozen])")

    noise = {"clean": {"reward.noise": "none", "reward.p": 0.0}, "flip0.2": {"reward.noise": "symmetric", "reward.p": 0.2}}
    rows = [{"algo.name": a, "run.seed": s, "algo.beta": b, **keys}
            for a in ("vimpo", "grpo") for s in (1, 2) for b in (0.05, 0.1) for keys in noise.values()]
    tags = [{"vimpo.axis.noise": name, "vimpo.axis.algo.beta": str(b)}
            for a in ("vimpo", "grpo") for s in (1, 2) for b in (0.05, 0.1) for name in noise]
    labels = A.label_arms(_data(rows, tags))
    assert set(labels["condition"]) == {"algo.beta=0.05, noise=clean", "algo.beta=0.05, noise=flip0.2",
                                        "algo.beta=0.1, noise=clean", "algo.beta=0.1, noise=flip0.2"}
    assert set(labels["arm"]) == {"vimpo", "grpo"} and labels.attrs["default_arm"] is None

    # A label that does not tell the keys' values apart (two settings under one label) is not used.
    rows = [{"algo.name": "vimpo", "run.seed": s, "algo.lam": lam} for s in (1, 2) for lam in (1.0, 0.9, 0.8)]
    tags = [{"vimpo.axis.variant": "a" if lam == 1.0 else "b"} for s in (1, 2) for lam in (1.0, 0.9, 0.8)]
    assert set(A.label_arms(_data(rows, tags))["arm"]) == {"vimpo[algo.lam=1.0]", "vimpo[algo.lam=0.9]",
                                                           "vimpo[algo.lam=0.8]"}


def test_a_grid_is_chosen_per_arm_on_validation_never_on_test():
    """Two algorithms x 3 betas x 2 seeds. On validation VIMPO is best at 0.05 and GRPO at 0.01; on test both
    would be best at 0.2 (a choice made on test would pick it). The arms are compared at their own choices."""
    val = {("vimpo", 0.01): (0.30, 0.34), ("vimpo", 0.05): (0.50, 0.44), ("vimpo", 0.2): (0.40, 0.40),
           ("grpo", 0.01): (0.45, 0.47), ("grpo", 0.05): (0.41, 0.43), ("grpo", 0.2): (0.30, 0.30)}
    rows = []
    for (algo, beta), seeds in val.items():
        for seed, v in zip((1, 2), seeds, strict=True):
            run = f"{algo}-{beta}-{seed}"
            rows.append([algo, seed, run, A.TRAIN_SUITE, G.SELECT_METRIC, v, beta])
            test = 0.9 if beta == 0.2 else v - 0.05 * seed  # test is never looked at by the choice
            rows.append([algo, seed, run, "arith", "avg_at_8", test, beta])
    long = pd.DataFrame(rows, columns=["arm", "seed", "train_run_id", "suite", "metric", "value", "grid"])
    long = long.assign(condition="", algo=long["arm"], run_ci_low=np.nan, run_ci_high=np.nan)
    choice = G.grid_choice(long).set_index("arm")
    assert choice.loc["vimpo", "grid"] == 0.05 and choice.loc["grpo", "grid"] == 0.01
    assert choice.loc["vimpo", "selection_mean"] == pytest.approx(0.47) and choice.loc["vimpo", "values_tried"] == 3
    chosen = G.at_choice(long, G.grid_choice(long))
    assert set(zip(chosen["arm"], chosen["grid"], strict=True)) == {("vimpo", 0.05), ("grpo", 0.01)} and len(chosen) == 8
    paired = A.paired_table(chosen).query("suite == 'arith'").iloc[0]
    # test at the choices: vimpo 0.45, 0.34; grpo 0.40, 0.37 -> differences +0.05, -0.03
    assert paired["mean_diff"] == pytest.approx(0.01)
    assert paired["ci_low"] == pytest.approx(0.01 - T_1 * np.std([0.05, -0.03], ddof=1) / math.sqrt(2))
    # a tie goes to the smaller value
    tie = long.assign(value=np.where(long["suite"] == A.TRAIN_SUITE, 0.5, long["value"]))
    assert set(G.grid_choice(tie)["grid"]) == {0.01}


def test_each_run_aligns_its_own_window_around_pi_ref_updates():
    """A hard reset every 10 steps and an EMA every step in one study: the hard arm keeps +-5 steps (the bug:
    one median gap over all runs, 1, cut every arm to +-1) and the EMA arm gets +-1. Offset 0 is the first
    step with the new reference: the step after the one logged with vimpo/ref_update = 1 (a moving_ref run
    had its KL restart there, one step after the window's old offset 0)."""
    rows = []
    for run, every in (("hard", 10), ("ema", 1)):
        for step in range(40):
            rows.append([run, "vimpo/ref_update", step, float(step > 0 and step % every == 0), 0.0])
            rows.append([run, "loss/value", step, float((step - 1) % 10), 0.0])  # restarts after each move
    history = pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "time_s"])
    events = R.ref_update_steps(history)
    assert R.ref_update_windows(events).to_dict() == {"ema": 1, "hard": 5}
    labels = pd.DataFrame({"arm": ["vimpo[hard]", "vimpo[ema]"], "condition": ""}, index=["hard", "ema"])
    w = R.ref_windows(history, labels, ["loss/value"])
    assert sorted(w.loc[w["arm"] == "vimpo[hard]", "offset"]) == list(range(-5, 6))
    assert sorted(w.loc[w["arm"] == "vimpo[ema]", "offset"]) == [-1, 0, 1]
    hard = w[w["arm"] == "vimpo[hard]"].set_index("offset")["mean"]
    assert hard[0] == 0.0 and hard[-1] == 9.0 and hard[5] == 5.0  # the value loss restarts at each reset


def test_machine_reads_run_tags_else_this_machine():
    tags = pd.DataFrame({"versions.torch": ["2.13.0", "2.13.0"], "machine.platform": [None, "Linux-x"]})
    m = A.machine(tags, {"platform": "here", "CPUs": 2, "torch": "9.9"}).set_index("item")
    assert m.loc["torch", "value"] == "2.13.0" and m.loc["torch", "source"].startswith("run tag versions.torch")
    assert m.loc["platform", "value"] == "Linux-x" and "1 of 2 runs" in m.loc["platform", "source"]
    assert (m.loc["CPUs", "value"], m.loc["CPUs", "source"]) == ("2", "the reporting machine")


def test_wall_times_sum_and_span():
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    runs = pd.DataFrame({"kind": ["train", "train", "eval"], "study": ["s", "s", "s"], "wall_s": [10.0, 20.0, 99.0],
                         "start_time": [t0, t0 + pd.Timedelta(seconds=100), t0],
                         "end_time": [t0 + pd.Timedelta(seconds=10), pd.NaT, t0]})  # the second is still running
    w = A.wall_times(runs).set_index("study")
    assert list(w.index) == ["all"] and w.loc["all", "runs"] == 2
    assert w.loc["all", "wall_s_sum"] == 30 and w.loc["all", "span_s"] == 120


# --- whole reports from a real MLflow store -------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store: study "full" (2 algos x 2 seeds x 2 noise rates, eval runs, a sweep, artifacts,
    a completion with HTML in it), study "bare" (one algorithm, no eval, sweep or artifacts) and study
    "oneseed" (2 algos x 1 seed x 3 noise rates, each cell with its own run name and output folder)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = fresh_store(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MlflowTracker puts new experiments' artifacts under ./mlartifacts
        full = log_synthetic_study(uri, study="full", noise_ps=(0.0, 0.2), steps=24, ref_every=8, sweep_trials=8,
                                   evil_text=True)
        bare = log_synthetic_study(uri, study="bare", algos=("grpo",), seeds=(1,), steps=12, with_eval=False,
                                   with_sweep=False, with_artifacts=False)
        oneseed = log_synthetic_study(uri, study="oneseed", seeds=(1,), noise_ps=(0.0, 0.1, 0.2), steps=6,
                                      with_sweep=False, with_artifacts=False)
        grid = log_synthetic_study(uri, study="grid", seeds=(1, 2, 3), betas=GRID_BETAS, steps=12,
                                   with_sweep=False, with_artifacts=False)
        evalfmt = _log_eval_like_vimpo_bench_eval(uri)
    return {"uri": uri, "root": root, "full": full, "bare": bare, "oneseed": oneseed, "grid": grid,
            "evalfmt": evalfmt}


def _log_eval_like_vimpo_bench_eval(uri: str) -> dict[str, str]:
    """Study "evalfmt": one unfinished training run and an eval run nested under it, logged the way
    `vimpo_bench.evaluation.evaluate.log_result` does (records/<suite>.jsonl, per-subject and bookkeeping metrics),
    plus a stand-alone eval run with no algorithm tag."""
    train = MlflowTracker.start("vimpo-running", tags={"vimpo.kind": "train", "vimpo.algo": "vimpo",
                                                       "vimpo.seed": 3, "vimpo.study": "evalfmt"}, tracking_uri=uri)
    train.log_params({"algo": {"name": "vimpo"}, "train": {"seed": 3}})
    for step in range(3):
        train.log_metrics({"reward/clean_mean": 0.1 * step, "val/greedy_accuracy": 0.2 + 0.1 * step}, step=step)
    records = "".join(json.dumps({"suite": "math500", "problem_id": f"p{i}", "sample_index": 0, "prompt": f"q{i}",
                                  "completion": f"a{i}", "extracted": str(i), "gold": str(i), "correct": i % 2 == 0})
                      + "\n" for i in range(6))
    ids = {"train": train.run_id}
    for name, parent in (("nested", train.run_id), ("alone", None)):
        ev = MlflowTracker.start(f"eval-{name}", tags={"vimpo.kind": "eval", "vimpo.study": "evalfmt",
                                                       "grader_version": "1"}, parent_run_id=parent, tracking_uri=uri)
        ev.log_params({"data.math500.sha256": "ab" * 32})
        ev.log_metrics({"eval/math500/accuracy": 0.5, "eval/math500/accuracy_ci_low": 0.2,
                        "eval/math500/accuracy_ci_high": 0.8, "eval/math500/n_problems": 6,
                        "eval/math500/grader_timeouts": 0, "eval/math500/subject/algebra/accuracy": 0.4}, step=0)
        ev.log_text(records, "records/math500.jsonl")
        ev.finish()
        ids[name] = ev.run_id
    return ids  # the training run stays RUNNING


@pytest.fixture(scope="module")
def full_report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "full.html"
    files = build_report(study="full", out=out, tracking_uri=store["uri"])
    return files, out.read_text(encoding="utf-8")


def test_collect_selects_the_study_and_its_nested_runs(store):
    data = collect(study="full", tracking_uri=store["uri"])
    kinds = data.runs["kind"].value_counts().to_dict()
    assert kinds == {"train": 8, "eval": 8, "sweep": 8, "study": 1}
    assert set(data.history["run_id"]) == set(store["full"]["train"])
    assert data.history.groupby("run_id")["step"].max().eq(23).all()
    assert (data.history["time_s"] >= 0).all()
    assert len(data.adv) and len(data.samples)


def test_runs_selected_by_id_bring_their_eval_children(store):
    ids = store["full"]["train"][:2]
    data = collect(run_ids=ids, tracking_uri=store["uri"])
    assert set(data.of_kind("train")["run_id"]) == set(ids)
    assert set(data.of_kind("eval")["parent_run_id"]) == set(ids)


def test_sql_history_equals_mlflow_public_api(store):
    """The fast path (MLflow's private SqlAlchemyStore and SqlMetric) is taken on a sqlite store, and gives
    exactly what MLflow's public get_metric_history gives."""
    import mlflow

    ids = store["full"]["train"][:2]
    keys = ["reward/clean_mean", "vimpo/ref_update", "val/greedy_accuracy"]
    client = tracking._client(store["uri"])
    assert tracking.sql_metric_store(client) is not None, (
        f"MLflow {mlflow.__version__} moved the internals tracking.metric_histories reads (client._tracking_client"
        f".store as a SqlAlchemyStore with an engine; SqlMetric with columns {tracking.METRIC_COLUMNS}): the report "
        "now reads histories through the public API, ~20x slower; adapt sql_metric_store or keep mlflow "
        f"{tracking.MLFLOW_TESTED}")
    fast = sorted(tracking.metric_histories(ids, keys, store["uri"]))
    slow = sorted(tracking._metric_histories_api(client, ids, keys))
    assert len(fast) > 50 and fast == slow


def test_installed_mlflow_is_the_range_the_history_fast_path_was_checked_in():
    """pyproject.toml pins mlflow to tracking.MLFLOW_TESTED, and the installed MLflow is inside it."""
    from importlib.metadata import version
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (pin,) = [Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "mlflow"]
    assert pin.specifier == SpecifierSet(tracking.MLFLOW_TESTED), (str(pin.specifier), tracking.MLFLOW_TESTED)
    assert version("mlflow") in pin.specifier, (
        f"mlflow {version('mlflow')} is installed but tracking.metric_histories was checked against "
        f"{tracking.MLFLOW_TESTED}: run tests/test_report.py::test_sql_history_equals_mlflow_public_api on it, "
        "then widen MLFLOW_TESTED and pyproject.toml together")


def test_history_falls_back_to_the_public_api_when_mlflow_internals_move(store, monkeypatch):
    """An MLflow whose metrics-table model lost a column the fast path selects: the public API answers,
    with the same rows, instead of an AttributeError."""
    import mlflow.store.tracking.dbmodels.models as models

    ids, keys = store["full"]["train"][:2], ["reward/clean_mean", "val/greedy_accuracy"]
    expected = sorted(tracking.metric_histories(ids, keys, store["uri"]))

    class Moved:  # SqlMetric without its is_nan column
        run_uuid = key = step = timestamp = value = None

    monkeypatch.setattr(models, "SqlMetric", Moved)
    assert tracking.sql_metric_store(tracking._client(store["uri"])) is None
    assert sorted(tracking.metric_histories(ids, keys, store["uri"])) == expected and expected


def test_full_report_has_every_panel_and_no_errors(full_report):
    files, html = full_report
    assert files.failed_panels == []
    for pid in (spec.id for spec in PANELS):
        assert f'data-panel="{pid}"' in html
    assert 'class="note error"' not in html
    # every panel with data drew at least one figure
    for fig in ("fig-curves-0", "fig-curves-1", "fig-final-0", "fig-noisy-0", "fig-sweep-0", "fig-ref-0",
                "fig-ref-1", "fig-diag-0", "fig-diag-1"):
        assert f'id="{fig}"' in html


def test_page_is_self_contained_with_plotly_inlined_once(full_report):
    _, html = full_report
    assert html.count("Plotly.newPlot(") >= 9
    assert len(re.findall(r"plotly\.js v\d", html)) == 1  # the library's banner: inlined exactly once
    assert not re.search(r"<script[^>]+src=", html) and "<link" not in html and "@import" not in html


def test_completions_are_escaped_not_executed(full_report):
    _, html = full_report
    assert "console.error('unescaped completion')</script>" not in html
    assert "&lt;script&gt;console.error(&#x27;unescaped completion&#x27;)&lt;/script&gt;" in html


def test_tables_are_written_as_csv(full_report):
    files, _ = full_report
    names = {p.name for p in files.tables}
    assert {"overview.csv", "learning_curves.csv", "final_eval.csv", "paired_diff.csv", "noisy_rewards.csv",
            "beta_sweep.csv", "ref_update_windows.csv", "adv_by_position.csv", "drilldown.csv",
            "provenance.csv"} <= names
    assert all(p.parent == files.folder for p in files.tables)
    final = pd.read_csv(files.folder / "final_eval.csv")
    math500 = final[(final["suite"] == "math500") & (final["metric"] == "accuracy")]
    assert set(math500["arm"]) == {"vimpo", "grpo"} and (math500["n"] == 2).all()
    assert (math500["ci_low"] <= math500["mean"]).all() and (math500["mean"] <= math500["ci_high"]).all()
    paired = pd.read_csv(files.folder / "paired_diff.csv")
    row = paired[(paired["suite"] == "math500") & paired["condition"].str.contains("reward.p=0.0")].iloc[0]
    assert (row["vimpo"], row["baseline"], row["n_pairs"], str(row["seeds"])) == ("vimpo", "grpo", 2, "1,2")
    sweep = pd.read_csv(files.folder / "beta_sweep.csv")
    assert set(sweep["state"]) == {"COMPLETE", "PRUNED", "FAIL"} and len(sweep) == 8


def test_final_eval_paired_difference_by_hand(store):
    data = collect(study="full", tracking_uri=store["uri"])
    labels = A.label_arms(data)
    long = A.final_eval_long(data, labels)
    cond = "reward.noise=symmetric, reward.p=0.2"  # both keys vary together, so both name the condition
    sel = long[(long["suite"] == "math500") & (long["metric"] == "accuracy") & (long["condition"] == cond)]
    assert len(sel) == 4
    v = sel[sel["arm"] == "vimpo"].set_index("seed")["value"]
    g = sel[sel["arm"] == "grpo"].set_index("seed")["value"]
    expected = stats.t_interval((v - g).to_numpy())
    row = A.paired_table(long).query("suite == 'math500' and metric == 'accuracy' and condition == @cond").iloc[0]
    assert row["mean_diff"] == pytest.approx(expected[0]) and row["ci_low"] == pytest.approx(expected[1])


def test_missing_data_gives_panels_that_say_so(store, tmp_path):
    files = build_report(study="bare", out=tmp_path / "bare.html", tracking_uri=store["uri"])
    html = files.page.read_text(encoding="utf-8")
    assert files.failed_panels == []
    for text in ("no beta-sweep trials in these runs", "no pi_ref updates in these runs",
                 "no diagnostics/adv_by_position*.jsonl artifacts", "no graded completions",
                 "all training runs used one noise rate", "no paired difference", "one seed per arm"):
        assert text in html, text


def test_eval_runs_as_vimpo_bench_eval_logs_them(store, tmp_path):
    data = collect(study="evalfmt", tracking_uri=store["uri"])
    labels = A.label_arms(data)
    long = A.final_eval_long(data, labels)
    ev = long[long["suite"] == "math500"]
    # headline metrics only (no n_problems, grader_timeouts or per-subject breakdown), one row per eval run;
    # the training run is still RUNNING, so neither it nor the eval run nested under it is compared
    assert labels.empty
    assert set(ev["metric"]) == {"accuracy"} and len(ev) == 1
    assert set(ev["arm"]) == {"eval-alone"}  # the stand-alone run is named by its run name
    summary = A.final_eval_summary(long).set_index(["suite", "arm"])
    assert summary.loc[("math500", "eval-alone"), "interval"] == "within run (problems)"
    assert summary.loc[("math500", "eval-alone"), "ci_low"] == pytest.approx(0.2)
    assert set(data.samples["suite"]) == {"math500"} and len(data.samples) == 12
    run = data.runs.set_index("run_id").loc[store["evalfmt"]["train"]]
    assert run["status"] == "RUNNING" and run["wall_s"] >= 0
    files = build_report(study="evalfmt", out=tmp_path / "evalfmt.html", tracking_uri=store["uri"])
    html = files.page.read_text(encoding="utf-8")
    assert files.failed_panels == [] and "left out of every comparison" in html and "RUNNING (1)" in html
    prov = pd.read_csv(tmp_path / "evalfmt" / "provenance.csv")
    assert "data.math500.sha256" in prov.columns


@pytest.mark.parametrize("kind", ["study", "eval"])
def test_selections_without_training_runs_render(store, tmp_path, kind):
    """A sweep alone (its parent study run) or one eval run: no training run, still no failed panel."""
    data = collect(study="full", tracking_uri=store["uri"])
    run_id = data.of_kind(kind)["run_id"].iloc[0]
    files = build_report(run_ids=[run_id], out=tmp_path / f"{kind}.html", tracking_uri=store["uri"])
    html = files.page.read_text(encoding="utf-8")
    assert files.failed_panels == [] and "no training runs" in html
    assert ("fig-sweep-0" in html) == (kind == "study")


def test_no_matching_runs_is_a_one_line_value_error(store, tmp_path):
    with pytest.raises(ValueError, match="no MLflow runs match study 'nope'"):
        collect(study="nope", tracking_uri=store["uri"])
    with pytest.raises(ValueError, match="exactly one of"):
        collect(study="full", experiment="vimpo-bench", tracking_uri=store["uri"])
    with pytest.raises(ValueError, match="no MLflow run with id"):
        collect(run_ids=["0" * 32], tracking_uri=store["uri"])
    missing = tmp_path / "absent.db"
    with pytest.raises(ValueError, match="no MLflow store at"):
        collect(study="full", tracking_uri=f"sqlite:///{missing}")
    assert not missing.exists()  # reading never creates a store


def test_cli_report_and_its_errors(store, tmp_path):
    from typer.testing import CliRunner

    import vimpo_bench.cli.report  # noqa: F401  (registers the command)
    from vimpo_bench.cli import app

    runner = CliRunner()
    ids = store["full"]["train"][:2]
    out = tmp_path / "two.html"
    ok = runner.invoke(app, ["report", "--runs", *ids, "--out", str(out), "--tracking-uri", store["uri"]])
    assert ok.exit_code == 0, ok.output
    assert out.is_file() and (tmp_path / "two" / "overview.csv").is_file()
    bad = runner.invoke(app, ["report", "--study", "nope", "--tracking-uri", store["uri"]])
    assert bad.exit_code != 0
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert lines == [f"error: no MLflow runs match study 'nope' in {store['uri']}"]
    loose = runner.invoke(app, ["report", ids[0], "--tracking-uri", store["uri"]])
    assert loose.exit_code != 0 and "--runs" in loose.output


def test_default_output_is_reports_name_html(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = build_report(study="bare", tracking_uri=store["uri"])
    assert files.page.resolve() == (tmp_path / "reports" / "bare.html").resolve()
    assert (tmp_path / "reports" / "bare" / "overview.csv").is_file()


def test_one_seed_noise_study_gives_one_line_per_algorithm(store, tmp_path):
    files = build_report(study="oneseed", out=tmp_path / "oneseed.html", tracking_uri=store["uri"])
    assert files.failed_panels == []
    noisy = pd.read_csv(files.folder / "noisy_rewards.csv")
    assert sorted(set(noisy["arm"])) == ["grpo", "vimpo"]
    assert noisy.groupby("arm")["noise_rate"].apply(sorted).to_dict() == {"grpo": [0, 0.1, 0.2], "vimpo": [0, 0.1, 0.2]}
    final = pd.read_csv(files.folder / "final_eval.csv")
    assert sorted(set(final["arm"])) == ["grpo", "vimpo"] and final["condition"].nunique() == 3


# --- the Markdown results page --------------------------------------------------------------------

READING = "VIMPO is ahead on math500 at every noise rate; the gap is **not resolved** with 2 seeds."


@pytest.fixture(scope="module")
def markdown_report(store, tmp_path_factory):
    root = tmp_path_factory.mktemp("md")
    reading = root / "reading.md"
    reading.write_text(READING + "\n", encoding="utf-8")
    files = build_report(study="full", out=root / "full.md", tracking_uri=store["uri"], format="markdown",
                         reading=reading)
    return files, files.page.read_text(encoding="utf-8")


def _links(md: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", md)


def test_a_grid_study_page_chooses_each_algorithms_beta_on_validation(store, tmp_path):
    """The synthetic grid (best beta 0.05 for VIMPO, 0.005 for GRPO, 0.1 accuracy per decade away): the page
    picks those, shows validation and test against beta, and compares the arms at their own choices."""
    from urllib.parse import unquote

    files = build_report(study="grid", out=tmp_path / "grid.md", tracking_uri=store["uri"], format="markdown")
    md = files.page.read_text(encoding="utf-8")
    assert files.failed_panels == []
    assert "### algo.beta: a grid over training runs, chosen per arm on validation" in md
    choice = pd.read_csv(files.page.with_suffix("") / "grid_choice.csv").set_index("arm")
    assert choice.loc["vimpo", "grid"] == 0.05 and choice.loc["grpo", "grid"] == 0.005
    assert (choice["values_tried"] == 3).all() and (choice["seeds"] == 3).all()
    # the chosen arms' test accuracy is the mean of those runs' eval results
    data = collect(study="grid", tracking_uri=store["uri"])
    long = G.grid_long(data, "algo.beta")
    vimpo = long.query("arm == 'vimpo' and grid == 0.05 and suite == 'math500' and metric == 'accuracy'")["value"]
    final = pd.read_csv(files.page.with_suffix("") / "grid_final.csv")
    row = final.query("arm == 'vimpo' and suite == 'math500' and metric == 'accuracy'").iloc[0]
    assert len(vimpo) == 3 and row["mean"] == pytest.approx(vimpo.mean())
    paired = pd.read_csv(files.page.with_suffix("") / "grid_paired.csv")
    assert set(paired["vimpo"]) == {"vimpo"} and set(paired["baseline"]) == {"grpo"} and (paired["n_pairs"] == 3).all()
    assert "vimpo (algo.beta=0.05)" in md and "grpo (algo.beta=0.005)" in md
    # The final-evaluation section pairs the algorithms at equal beta (beta is a condition here: both ran the
    # same grid) and says that the page's comparison is the one at the validation choices.
    final_section = md.split("## Final evaluation")[1].split("\n## ")[0]
    assert "the value chosen on validation: the beta sweep section below" in final_section
    paired_all = pd.read_csv(files.page.with_suffix("") / "paired_diff.csv")
    assert set(paired_all["condition"]) == {"algo.beta=0.005", "algo.beta=0.05", "algo.beta=0.5"}
    grid_png = [link for link in _links(md) if link.endswith("grid.png")]
    assert len(grid_png) == 1 and (files.page.parent / unquote(grid_png[0])).stat().st_size > 5000
    html = build_report(study="grid", out=tmp_path / "grid.html", tracking_uri=store["uri"])
    assert html.failed_panels == [] and "fig-grid-0" in (tmp_path / "grid.html").read_text(encoding="utf-8")


def test_markdown_page_links_real_pngs_and_csvs(markdown_report):
    from urllib.parse import unquote

    from PIL import Image

    files, md = markdown_report
    assert files.failed_panels == [] and files.page.suffix == ".md"
    links = _links(md)
    images = [link for link in links if link.endswith(".png")]
    csvs = [link for link in links if link.endswith(".csv")]
    assert len(images) >= 11 and len(csvs) >= 10
    for link in images:
        path = files.page.parent / unquote(link)
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0, link
    for link in csvs:
        assert len(pd.read_csv(files.page.parent / unquote(link))) > 0, link
    assert {p.name for p in files.figures} == {link.rsplit("/", 1)[-1] for link in images}
    for section in ("## Settings", "## Runs, time and machine", "## Final evaluation", "## Learning curves",
                    "## Steps (and seconds) to reach a fixed accuracy", "## Noisy rewards", "## beta sweep",
                    "## Moving pi_ref", "## VIMPO diagnostics", "## Provenance summary", "## Reading"):
        assert section in md, section


def test_markdown_final_eval_numbers_equal_the_csv(markdown_report):
    files, md = markdown_report
    final = pd.read_csv(files.folder / "final_eval.csv", keep_default_na=False)
    section = md.split("## Final evaluation", 1)[1].split("###", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert header[:3] == ["condition", "suite", "metric"] and header[3:] == ["vimpo", "grpo"]
    checked = 0
    for row in body:
        for arm, cell in zip(header[3:], row[3:], strict=True):
            m = re.fullmatch(r"(-?[\d.]+) \[(-?[\d.]+), (-?[\d.]+)\] n=(\d+)", cell)
            assert m, cell
            want = final[(final["condition"] == row[0]) & (final["suite"] == row[1]) & (final["metric"] == row[2])
                         & (final["arm"] == arm)].iloc[0]
            assert [float(x) for x in m.groups()[:3]] == [round(want[c], 3) for c in ("mean", "ci_low", "ci_high")]
            assert int(m.group(4)) == want["n"]
            checked += 1
    assert checked == len(A.on_page(final)) == len(final) == 16  # 2 conditions x 4 suite/metric x 2 arms


def test_markdown_has_the_command_settings_and_the_reading(markdown_report, store):
    files, md = markdown_report
    assert f"vimpo-bench report --study full --format markdown --tracking-uri {store['uri']}" in md
    assert READING in md and "<!-- reading:" not in md
    assert md.rstrip().endswith(READING)
    settings = md.split("## Settings", 1)[1].split("## Runs", 1)[0]
    assert "| optim.steps | 24 |" in settings  # shared by all runs
    assert "| vimpo | reward.noise=none, reward.p=0.0 | 2 |" in settings  # per arm: 2 runs, then the keys
    assert "run.run_name" not in settings.split("left out:", 1)[0]
    steps = pd.read_csv(files.folder / "steps_to_threshold.csv")
    assert set(steps["arm"]) == {"vimpo", "grpo"} and (steps["seeds"] == 2).all()
    assert "torch | 2.13.0 | run tag versions.torch" in md


def test_cli_markdown_without_reading_leaves_a_placeholder_and_leaves_out_empty_sections(store, tmp_path):
    from typer.testing import CliRunner

    import vimpo_bench.cli.report  # noqa: F401  (registers the command)
    from vimpo_bench.cli import app

    out = tmp_path / "bare.md"
    res = CliRunner().invoke(app, ["report", "--study", "bare", "--format", "markdown", "--out", str(out),
                                   "--tracking-uri", store["uri"], "--threshold", "0.3"])
    assert res.exit_code == 0, res.output
    md = out.read_text(encoding="utf-8")
    assert md.rstrip().endswith("## Reading\n\n<!-- reading: written by a person from the numbers above -->")
    assert "--threshold 0.3" in md and "Threshold: given (--threshold 0.3)" in md
    # a panel with nothing to show is left out, heading and all, not printed with an excuse
    for heading in ("## beta sweep", "## Moving pi_ref", "## Noisy rewards"):
        assert heading not in md, heading
    assert "## Learning curves" in md and "## Settings" in md
    assert all((tmp_path / "bare" / p).is_file() for p in ("overview.csv", "learning_curves.csv"))


@pytest.mark.parametrize("args, message", [
    (["--format", "pdf"], "error: unknown format 'pdf': choose one of html, markdown"),
    (["--reading", "nowhere.md"], "error: a reading file goes into Markdown pages only: add --format markdown"),
    (["--format", "markdown", "--reading", "nowhere.md"], "error: reading file not found: nowhere.md"),
])
def test_cli_bad_format_or_reading_is_one_line(store, args, message):
    from typer.testing import CliRunner

    import vimpo_bench.cli.report  # noqa: F401  (registers the command)
    from vimpo_bench.cli import app

    res = CliRunner().invoke(app, ["report", "--study", "bare", "--tracking-uri", store["uri"], *args])
    assert res.exit_code != 0
    assert [line for line in res.output.splitlines() if line.strip()] == [message]


def test_runs_that_shared_their_machine_are_counted_and_drop_wall_clock_columns():
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    sec = pd.Timedelta(seconds=1)
    runs = pd.DataFrame({"kind": ["train"] * 4 + ["eval"], "wall_s": [10.0, 10.0, 10.0, 5.0, 50.0],
                         "start_time": [t0, t0 + 5 * sec, t0 + 30 * sec, t0 + 60 * sec, t0 + 61 * sec],
                         "end_time": [t0 + 10 * sec, t0 + 15 * sec, t0 + 40 * sec, pd.NaT, t0 + 111 * sec]})
    assert A.overlapping(runs) == 2  # the first two overlap; the third ran alone; the eval run is not counted
    assert A.overlapping(runs.iloc[[0, 2, 3]]) == 0
    from vimpo_bench.report.panels import steps_display

    steps = pd.DataFrame({"arm": ["a"], "condition": [""], "threshold": [0.5], "step": [10.0], "time_s": [3.0],
                          "final_mean": [0.6], "seeds_reached": [2], "seeds": [2], "median_seed_step": [10.0],
                          "median_seed_time_s": [3.0]})
    assert "seconds (seed-mean)" in steps_display(steps) and "seconds (seed-mean)" not in steps_display(steps, wall=False)


def test_eval_runs_with_different_backends_or_dtypes_are_not_pooled():
    tags = pd.DataFrame({"vimpo.backend": ["hf", "vllm"], "vimpo.dtype": ["float32", "bfloat16"]})
    with pytest.raises(ValueError, match=r"differ in vimpo.backend \(hf, vllm\)"):
        A.refuse_mixed_runtimes(tags)
    A.refuse_mixed_runtimes(pd.DataFrame({"vimpo.backend": ["hf", None]}))  # an old run counts as hf: no refusal
    with pytest.raises(ValueError, match="vimpo.dtype"):
        A.refuse_mixed_runtimes(pd.DataFrame({"vimpo.dtype": ["bfloat16", None]}))
