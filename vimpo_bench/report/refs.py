"""The moving-pi_ref and VIMPO-diagnostics panels' numbers: windows around reference updates, advantage by position."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vimpo_bench.report.stats import summarize

# --- Moving pi_ref --------------------------------------------------------------------------------


def ref_update_steps(history: pd.DataFrame) -> pd.DataFrame:
    """run_id, update_step: the steps logged with vimpo/ref_update = 1. pi_ref moves at the end of such a
    step (its own losses still used the old reference); the first step with the new one is update_step + 1."""
    upd = history[(history["key"] == "vimpo/ref_update") & (history["value"] >= 0.5)]
    return upd[["run_id", "step"]].rename(columns={"step": "update_step"}).reset_index(drop=True)


def ref_update_windows(events: pd.DataFrame, most: int = 5) -> pd.Series:
    """Per run, how many steps either side of an update to show: half its median gap between updates, at
    least 1 and at most `most` (a run that moves pi_ref every step gets +-1, one every 10 steps +-5; a single
    update, `most`). Per run, so an EMA arm does not shrink a hard-reset arm's window."""
    gaps = events.sort_values(["run_id", "update_step"]).groupby("run_id")["update_step"].diff()
    median = gaps.groupby(events["run_id"]).median()
    return (median // 2).clip(lower=1, upper=most).fillna(most).astype(int)


def ref_windows(history: pd.DataFrame, labels: pd.DataFrame, keys, widths: pd.Series | None = None) -> pd.DataFrame:
    """Metrics at steps u-w..u+w around every pi_ref update u, averaged over a run's updates and then
    summarized over runs (seeds) per arm: offset 0 is the first step with the new reference (u + 1, see
    `ref_update_steps`), offset -1 the step that ended with the move. `w` is the run's entry in `widths`
    (default: `ref_update_windows`)."""
    events = ref_update_steps(history)
    cols = ["arm", "condition", "key", "offset", "mean", "n", "ci_low", "ci_high"]
    if events.empty:
        return pd.DataFrame(columns=cols)
    widths = ref_update_windows(events) if widths is None else widths
    offsets = pd.DataFrame({"offset": np.arange(-int(widths.max()), int(widths.max()) + 1)})
    grid = events.merge(offsets, how="cross")
    grid = grid[grid["offset"].abs() <= grid["run_id"].map(widths)]
    grid["step"] = grid["update_step"] + 1 + grid["offset"]
    vals = history[history["key"].isin(list(keys))]
    per_event = grid.merge(vals, on=["run_id", "step"])
    per_run = per_event.groupby(["run_id", "key", "offset"])["value"].mean().reset_index()
    per_run = per_run.merge(labels[["arm", "condition"]], left_on="run_id", right_index=True)
    return summarize(per_run, ["arm", "condition", "key", "offset"])[cols]


def ref_update_table(history: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Per run: number of pi_ref updates and the mean value loss / residual just before and after one."""
    keys = {"vimpo/value_loss_pre_ref_update": "value_loss_pre", "vimpo/value_loss_post_ref_update": "value_loss_post",
            "vimpo/residual_pre_ref_update": "residual_pre", "vimpo/residual_post_ref_update": "residual_post"}
    events = ref_update_steps(history)
    if events.empty:
        return pd.DataFrame()
    out = events.groupby("run_id").agg(updates=("update_step", "size"), first_update=("update_step", "min"))
    pre_post = history[history["key"].isin(keys)].pivot_table(index="run_id", columns="key", values="value", aggfunc="mean")
    out = out.join(pre_post.rename(columns=keys))
    out = labels[["arm", "condition", "seed"]].join(out, how="inner")
    return out.reset_index()


# --- VIMPO diagnostics ----------------------------------------------------------------------------


def adv_by_position(adv: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Count-weighted mean advantage by token position for right and wrong responses, per arm, at each
    run's last diagnosed step (the trained policy)."""
    cols = ["arm", "correct", "position", "mean_adv", "count", "runs"]
    if adv.empty:
        return pd.DataFrame(columns=cols)
    last = adv[adv["step"] == adv.groupby("run_id")["step"].transform("max")]
    last = last.merge(labels[["arm"]], left_on="run_id", right_index=True)
    last = last.assign(weighted=last["mean_adv"] * last["count"], correct=last["correct"].astype(bool))
    g = last.groupby(["arm", "correct", "position"])
    out = g.agg(weighted=("weighted", "sum"), count=("count", "sum"), runs=("run_id", "nunique")).reset_index()
    out["mean_adv"] = out["weighted"] / out["count"].where(out["count"] > 0)
    return out[cols]
