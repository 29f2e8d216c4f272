"""pass@k against k, from the graded samples of the final eval runs.

Per eval run and suite, each problem's n samples of which c are right give the unbiased estimator of
Chen et al. (2021), pass@k = 1 - C(n-c, k) / C(n, k), for k = 1..n (`vimpo_bench.evaluation.results.pass_at_k`, the
numerically stable product form the eval runs' own `pass_at_k` metrics use); its mean over the problems is
the run's pass@k, and the report gives the mean over seeds and its 95% t interval per arm (and condition)
and suite. pass@1 is avg@n; pass@n is the eval run's logged `pass_at_n`.
"""

from __future__ import annotations

import functools

import pandas as pd

from vimpo_bench.evaluation.results import pass_at_k
from vimpo_bench.report.analysis import by_condition_and_arm, clip_to_range, run_labels
from vimpo_bench.report.collect import ReportData
from vimpo_bench.report.endpoint import latest_evals
from vimpo_bench.report.stats import summarize

COLUMNS = ["condition", "suite", "arm", "k", "mean", "n", "ci_low", "ci_high", "problems", "samples"]


@functools.lru_cache(maxsize=4096)
def _estimate(n: int, c: int, k: int) -> float:
    return pass_at_k(n, c, k)


def pass_at_k_curve(n: int, c: int) -> list[float]:
    """pass@k of one problem with n samples, c of them right, for k = 1..n."""
    return [_estimate(n, c, k) for k in range(1, n + 1)]


def run_pass_at_k(samples: pd.DataFrame) -> pd.DataFrame:
    """Per run and suite of graded `samples` (run_id, suite, problem_id, correct): pass@k for k = 1 to the
    fewest samples any of its problems has (a larger k would average over only some problems), mean over
    problems; columns run_id, suite, k, value, problems, samples (per problem, the fewest)."""
    counts = samples.groupby(["run_id", "suite", "problem_id"])["correct"].agg(["size", "sum"]).reset_index()
    rows = []
    for (run_id, suite), g in counts.groupby(["run_id", "suite"], sort=True):
        n_min = int(g["size"].min())
        # problems per (n, c): few distinct pairs, however many problems
        pairs = g.groupby(["size", "sum"]).size()
        for k in range(1, n_min + 1):
            total = sum(m * _estimate(int(n), int(c), k) for (n, c), m in pairs.items())
            rows.append(
                {
                    "run_id": run_id,
                    "suite": suite,
                    "k": k,
                    "value": total / len(g),
                    "problems": len(g),
                    "samples": n_min,
                }
            )
    return pd.DataFrame(rows, columns=["run_id", "suite", "k", "value", "problems", "samples"])


def pass_at_k_table(data: ReportData, labels: pd.DataFrame) -> pd.DataFrame:
    """Per condition, suite, arm and k: mean over seeds of each final eval run's pass@k (the latest eval run
    of each finished training run, as the final evaluation takes), its 95% t interval (cut to [0, 1]) and n
    seeds; `problems` and `samples` (per problem) as the seeds' fewest. Empty without eval samples."""
    s = data.samples
    if s.empty:
        return pd.DataFrame(columns=COLUMNS)
    ev = run_labels(data, labels)
    s = s[(s["source"] == "eval") & s["run_id"].isin(latest_evals(data, ev))]
    if s.empty:
        return pd.DataFrame(columns=COLUMNS)
    per_run = run_pass_at_k(s).merge(ev[["arm", "condition"]], left_on="run_id", right_index=True)
    by = ["condition", "suite", "arm", "k"]
    out = summarize(per_run, by)
    fewest = per_run.groupby(by)[["problems", "samples"]].min().reset_index()
    out = clip_to_range(out.merge(fewest, on=by), None)  # a fraction of problems: no interval past [0, 1]
    return by_condition_and_arm(out, then=("suite", "k"))[COLUMNS].reset_index(drop=True)


def shown_ks(n: int) -> list[int]:
    """The k a page's table shows of 1..n: the powers of two, and n."""
    return sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n})
