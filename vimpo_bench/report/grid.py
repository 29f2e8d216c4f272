"""The beta-sweep and grid panels' numbers: Optuna trials, and a hyperparameter grid chosen per arm on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vimpo_bench.report.analysis import (
    by_condition_and_arm,
    clip_to_range,
    compared,
    final_eval_long,
    label_arms,
    on_page,
)
from vimpo_bench.report.collect import TRAIN_SUITE, ReportData
from vimpo_bench.report.stats import natural_sorted, summarize

# --- beta sweep -----------------------------------------------------------------------------------


def sweep_table(data: ReportData) -> pd.DataFrame:
    sw = data.of_kind("sweep").set_index("run_id")
    tags = data.tags.reindex(sw.index)
    params = data.params.reindex(sw.index)
    final = data.final.reindex(sw.index)
    state = tags["optuna.state"] if "optuna.state" in tags else pd.Series(np.nan, index=sw.index, dtype=object)
    fallback = sw["status"].map({"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "FAIL", "RUNNING": "RUNNING"})
    out = pd.DataFrame({
        "trial": pd.to_numeric(tags["optuna.trial"], errors="coerce") if "optuna.trial" in tags else np.nan,
        "run_name": sw["run_name"], "algo": sw["algo"],
        # the Optuna study a trial belongs to: trial runs are named "<optuna study>#<trial>"
        "sweep": sw["run_name"].astype(str).str.rsplit("#", n=1).str[0],
        "state": state.fillna(fallback).fillna("UNKNOWN").str.upper(),
        "beta": pd.to_numeric(params["algo.beta"], errors="coerce") if "algo.beta" in params else np.nan,
        "objective": final["sweep/objective"] if "sweep/objective" in final else np.nan,
    }, index=sw.index)
    for tag in sorted(c for c in tags.columns if c.startswith("sweep.") and c != "sweep.beta"):
        out[tag.removeprefix("sweep.")] = pd.to_numeric(tags[tag], errors="coerce")  # the other searched params
    return out.sort_values(["sweep", "trial", "run_name"]).reset_index()


def best_per_sweep(table: pd.DataFrame) -> pd.DataFrame:
    """The best complete trial of each Optuna study in a sweep_table (max objective; ties: the earlier trial)."""
    done = table[(table["state"] == "COMPLETE") & table["objective"].notna()]
    if done.empty:
        return done
    done = done.sort_values(["sweep", "objective", "trial"], ascending=[True, False, True])
    best = done.groupby("sweep", sort=True).head(1)
    return best.assign(trials=best["sweep"].map(table.groupby("sweep").size()))


# --- A grid of a hyperparameter, chosen on validation ----------------------------------------------

GRID_KEYS = ("algo.beta",)  # hyperparameters a grid study varies and a page tunes per algorithm
SELECT_METRIC = "sampled_accuracy"  # chosen on the validation split's sampled accuracy, as sweeps are
GRID_COLUMNS = ["condition", "arm", "grid", "suite", "metric", "mean", "n", "ci_low", "ci_high"]


def grid_key(data: ReportData) -> str | None:
    """The first of GRID_KEYS that takes two or more values within one algorithm's finished training
    runs (a grid study over it), else None."""
    train = compared(data.of_kind("train"))
    for key in GRID_KEYS:
        if key in data.params and len(train):
            values = pd.to_numeric(data.params.reindex(train["run_id"])[key], errors="coerce").to_numpy()
            if pd.Series(values).groupby(train["algo"].to_numpy()).nunique().max() >= 2:
                return key
    return None


def grid_long(data: ReportData, key: str) -> pd.DataFrame:
    """`final_eval_long` with the grid key left out of the arm and condition labels (it is the x axis
    here) and its value per training run in column `grid`."""
    labels = label_arms(data, exclude=(key,))
    long = final_eval_long(data, labels)
    value = pd.to_numeric(data.params.reindex(labels.index)[key], errors="coerce")
    return long.assign(grid=long["train_run_id"].map(value)).dropna(subset=["grid"])


def grid_summary(long: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds [95% t interval] per condition, arm, grid value, suite and metric."""
    if long.empty:
        return pd.DataFrame(columns=GRID_COLUMNS)
    return clip_to_range(summarize(long, ["condition", "arm", "grid", "suite", "metric"]), "metric")[GRID_COLUMNS]


def grid_choice(long: pd.DataFrame) -> pd.DataFrame:
    """Per condition and arm, the grid value whose mean over seeds of the validation split's sampled
    accuracy is highest (a tie goes to the smaller value). Test sets play no part in the choice, so the
    test numbers at the chosen value are not tuned on test. The chosen value's validation mean is
    optimistic (the best of several noisy means); its test numbers are not."""
    cols = ["condition", "arm", "grid", "selection_mean", "seeds", "values_tried"]
    sel = long[(long["suite"] == TRAIN_SUITE) & (long["metric"] == SELECT_METRIC)]
    if sel.empty:
        return pd.DataFrame(columns=cols)
    means = sel.groupby(["condition", "arm", "grid"])["value"].agg(["mean", "count"]).reset_index()
    tried = means.groupby(["condition", "arm"])["grid"].transform("nunique")
    means = means.assign(values_tried=tried).sort_values(["condition", "arm", "mean", "grid"],
                                                         ascending=[True, True, False, True])
    best = means.groupby(["condition", "arm"], sort=False).head(1)
    best = best.rename(columns={"mean": "selection_mean", "count": "seeds"})[cols]
    return by_condition_and_arm(best.reset_index(drop=True))


def at_choice(long: pd.DataFrame, choice: pd.DataFrame) -> pd.DataFrame:
    """The rows of `long` (or of a grid summary) at each arm's chosen grid value (its other values left out)."""
    if choice.empty:  # nothing chosen: an empty choice's object columns would not merge with the float grid
        return long[:0]
    return long.merge(choice[["condition", "arm", "grid"]], on=["condition", "arm", "grid"])


def log_axis(values) -> bool:
    """Whether an axis over these values reads better on a log scale: all positive, spanning more than 20x."""
    values = pd.Series(values, dtype=float).dropna()
    return len(values) > 0 and values.min() > 0 and values.max() / values.min() > 20


def grid_test_metric(summary: pd.DataFrame) -> tuple[str, str] | None:
    """(suite, metric) of the test number a grid figure plots: the most common test suite's avg@k (the
    largest k), else its accuracy, else its first metric shown on pages; None without test suites."""
    test = on_page(summary[summary["suite"] != TRAIN_SUITE])
    if test.empty:
        return None
    suite = test["suite"].value_counts().index[0]
    metrics = natural_sorted(set(test.loc[test["suite"] == suite, "metric"]))
    avg = [m for m in metrics if m.startswith("avg_at_")]
    return suite, (avg[-1] if avg else "accuracy" if "accuracy" in metrics else metrics[0])
