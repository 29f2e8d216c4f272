"""The per-problem drill-down and the provenance panel's numbers: which problems one arm solves and another does not, and
what every run was made from (commit, grader, config hash, data)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vimpo_bench.report.analysis import arm_order, is_vimpo, run_labels
from vimpo_bench.report.collect import ReportData
from vimpo_bench.report.stats import natural_sorted

# --- Per-problem drill-down -----------------------------------------------------------------------


def drilldown(data: ReportData, labels: pd.DataFrame, limit: int = 25) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(problems one arm solves, solve rate >= 0.5 over its seeds and samples, and the other does not,
    rate < 0.5, with one completion from each; per-pair counts; where the samples came from)."""
    s = data.samples
    if s.empty:
        return pd.DataFrame(), pd.DataFrame(), ""
    source = "eval" if (s["source"] == "eval").any() else "train"
    s = s[s["source"] == source]
    lab = run_labels(data, labels)[["arm", "condition"]] if source == "eval" else labels[["arm", "condition"]]
    s = s.merge(lab, left_on="run_id", right_index=True)
    key = ["condition", "suite", "problem_id"]
    rates = s.groupby(key + ["arm"]).agg(rate=("correct", "mean"), samples=("correct", "size")).reset_index()
    arms = arm_order(rates["arm"])
    vimpos = [a for a in arms if is_vimpo(a)]
    pairs = [(v, b) for v in vimpos for b in arms if not is_vimpo(b)] or list(zip(arms, arms[1:], strict=False))
    rows, counts = [], []
    for a, b in pairs:
        both = rates[rates["arm"] == a].merge(rates[rates["arm"] == b], on=key, suffixes=("_a", "_b"))
        for x, y, rx, ry in ((a, b, "rate_a", "rate_b"), (b, a, "rate_b", "rate_a")):
            hit = both[(both[rx] >= 0.5) & (both[ry] < 0.5)].sort_values(["condition", rx], ascending=[True, False])
            for cond, g in both.groupby("condition"):
                counts.append({"condition": cond, "solves": x, "does_not": y,
                               "problems": int((hit["condition"] == cond).sum()), "compared": len(g)})
            for _, r in hit.head(limit).iterrows():
                pick = s[(s["condition"] == r["condition"]) & (s["suite"] == r["suite"]) & (s["problem_id"] == r["problem_id"])]
                good = pick[(pick["arm"] == x) & pick["correct"]]
                bad = pick[(pick["arm"] == y) & ~pick["correct"]]
                rows.append({"solves": x, "does_not": y, "condition": r["condition"], "suite": r["suite"],
                             "problem_id": r["problem_id"], "rate_solver": r[rx], "rate_other": r[ry],
                             "prompt": pick["prompt"].iloc[0], "gold": pick["gold"].iloc[0],
                             "completion_solver": good["completion"].iloc[0] if len(good) else "",
                             "completion_other": bad["completion"].iloc[0] if len(bad) else "",
                             "extracted_other": bad["extracted"].iloc[0] if len(bad) else ""})
    return pd.DataFrame(rows), pd.DataFrame(counts), source


# --- Provenance -----------------------------------------------------------------------------------

PROVENANCE_TAGS = ("git_commit", "git_dirty", "grader_version", "vimpo.config_hash", "vimpo.task")


def provenance(data: ReportData) -> tuple[pd.DataFrame, list[str]]:
    """Per run: commit, versions.*, grader version, data hashes (tags, or params data.<name>.sha256 as
    eval runs log them); plus warnings where runs disagree."""
    hashes = [c for c in data.params.columns if c.startswith("data.") and c.endswith("sha256") and c not in data.tags]
    tags = data.tags.join(data.params[hashes]) if hashes else data.tags
    wanted = [t for t in PROVENANCE_TAGS if t in tags]
    wanted += sorted(c for c in tags.columns if c.startswith("versions."))
    wanted += sorted(c for c in tags.columns if c.startswith("data.") or c.endswith(("_sha256", ".sha256", "_hash")))
    wanted = list(dict.fromkeys(wanted))
    runs = data.runs[data.runs["kind"].isin(["train", "eval"])].set_index("run_id")
    if not wanted or runs.empty:
        return pd.DataFrame(), []
    table = runs[["run_name", "kind", "algo", "seed"]].join(tags.reindex(runs.index)[wanted]).reset_index()
    graded = task_or_suite(data.tags.reindex(runs.index)).to_numpy()
    notes = []
    for col in wanted:
        if col == "git_dirty":
            dirty = int(table[col].astype(str).str.lower().isin(["true", "1"]).sum())
            if dirty:
                notes.append(f"{dirty} run(s) had uncommitted changes (git_dirty)")
        elif col == "grader_version":  # each task has its own grader: runs disagree only within one task
            for what, values in table[col].groupby(graded).agg(lambda v: natural_sorted(v.dropna().unique())).items():
                if len(values) > 1:
                    notes.append(f"runs on {what} disagree on {col}: {', '.join(map(str, values))}")
        elif col != "vimpo.config_hash" and table[col].nunique() > 1:
            notes.append(f"runs disagree on {col}: {', '.join(map(str, natural_sorted(table[col].dropna().unique())))}")
        if table[col].isna().any() and col in ("git_commit", "grader_version"):
            lacking = table.loc[table[col].isna(), "kind"].value_counts()
            notes.append(", ".join(f"{n} {kind}" for kind, n in lacking.items()) + f" run(s) lack the {col} tag")
    return table, notes


def task_or_suite(tags: pd.DataFrame) -> pd.Series:
    """What each run graded: a training run's task (tag vimpo.task), an eval run's suites (vimpo.suite)."""
    task = tags["vimpo.task"] if "vimpo.task" in tags else pd.Series(np.nan, index=tags.index, dtype=object)
    suite = tags["vimpo.suite"] if "vimpo.suite" in tags else pd.Series(np.nan, index=tags.index, dtype=object)
    return task.fillna(suite).fillna("(unknown task)").astype(str)


def provenance_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per provenance column of `provenance(...)[0]`: up to six of its values, how many distinct, how many runs."""
    cols = [c for c in table.columns if c not in ("run_id", "run_name", "kind", "algo", "seed")]
    return pd.DataFrame([{"tag": c, "values": ", ".join(map(str, table[c].dropna().unique()[:6])),
                          "distinct": table[c].nunique(), "runs with it": int(table[c].notna().sum())} for c in cols],
                        columns=["tag", "values", "distinct", "runs with it"])
