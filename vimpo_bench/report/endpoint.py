"""A study's pre-declared endpoints (`study.endpoint` in its file) and what the runs say about them.

    endpoint:
      question: Does VIMPO beat GRPO on arith, tuned alike?
      axis: arm                      # the study axis whose labels name the arms (tag vimpo.axis.<axis>)
      primary: {arm: vimpo, baseline: grpo, suite: arith, metric: avg_at_8}
      secondary: [{arm: vimpo_implied, baseline: grpo, suite: arith, metric: avg_at_8}, ...]
      alpha: 0.05                    # two-sided; the secondaries are Holm-corrected together
      power: 0.8                     # for the minimum detectable effect
      bootstrap: {draws: 10000, seed: 0}

Each comparison is paired by seed (same seed = same warm start and prompt order). Its estimate is the mean
of the per-seed differences; the test a two-sided paired t-test over seeds; the interval beside it a
hierarchical bootstrap (seeds resampled, then problems within each seed, the same problems for both arms)
where per-problem scores exist (avg@k, accuracy, pass@1 from the graded samples), else the t interval.
The minimum detectable effect at the declared power uses the measured SD of the differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import stdtr, stdtrit

from vimpo_bench.report.collect import ReportData

PER_PROBLEM = ("avg_at_", "accuracy", "pass_at_1")  # metrics that are a mean over problems of per-problem scores
FIELDS = ("question", "axis", "primary", "secondary", "alpha", "power", "bootstrap")
COMPARISON_FIELDS = ("arm", "baseline", "suite", "metric")


@dataclass(frozen=True)
class Comparison:
    arm: str
    baseline: str
    suite: str
    metric: str

    @property
    def name(self) -> str:
        return f"{self.arm} - {self.baseline}, {self.suite} {self.metric}"


@dataclass(frozen=True)
class Endpoint:
    primary: Comparison
    secondary: list[Comparison] = field(default_factory=list)
    question: str = ""
    axis: str = "arm"
    alpha: float = 0.05
    power: float = 0.8
    draws: int = 10_000
    seed: int = 0


def _comparison(raw: object, where: str) -> Comparison:
    if not isinstance(raw, dict) or set(raw) != set(COMPARISON_FIELDS):
        raise ValueError(f"{where}: a mapping with exactly {', '.join(COMPARISON_FIELDS)}, got {raw!r}")
    return Comparison(**{k: str(raw[k]) for k in COMPARISON_FIELDS})


def parse_endpoint(raw: dict | None, where: str = "study.endpoint") -> Endpoint | None:
    """The Endpoint of a `study.endpoint` mapping (None when empty). Raises ValueError in one line."""
    if not raw:
        return None
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    if "primary" not in raw:
        raise ValueError(f"{where}: needs a primary comparison")
    boot = raw.get("bootstrap") or {}
    alpha, power = float(raw.get("alpha", 0.05)), float(raw.get("power", 0.8))
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"{where}: alpha and power must lie in (0, 1), got {alpha}, {power}")
    return Endpoint(primary=_comparison(raw["primary"], f"{where}.primary"),
                    secondary=[_comparison(c, f"{where}.secondary[{i}]") for i, c in enumerate(raw.get("secondary") or [])],
                    question=str(raw.get("question", "")), axis=str(raw.get("axis", "arm")), alpha=alpha, power=power,
                    draws=int(boot.get("draws", 10_000)), seed=int(boot.get("seed", 0)))


# --- statistics -----------------------------------------------------------------------------------


def paired_t(diffs: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """Mean, SD, n, t, two-sided p and the (1 - alpha) t interval of paired differences."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "sd": math.nan, "n": n, "t": math.nan, "p": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    t = mean / se if se > 0 else (math.inf if mean else 0.0) * (1 if mean >= 0 else -1)
    p = float(2 * stdtr(n - 1, -abs(t))) if math.isfinite(t) else 0.0
    half = float(stdtrit(n - 1, 1 - alpha / 2)) * se
    return {"mean": mean, "sd": sd, "n": n, "t": t, "p": p, "ci_low": mean - half, "ci_high": mean + half}


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test over n seeds detects with `power`:
    (t_{1-alpha/2, n-1} + t_{power, n-1}) sd / sqrt(n)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((stdtrit(n - 1, 1 - alpha / 2) + stdtrit(n - 1, power)) * sd / math.sqrt(n))


def seeds_for_effect(sd: float, effect: float, alpha: float = 0.05, power: float = 0.8, most: int = 10_000) -> int:
    """The fewest paired seeds whose minimum detectable effect is at most `effect`."""
    for n in range(2, most + 1):
        if minimum_detectable_effect(sd, n, alpha, power) <= effect:
            return n
    return most


def hierarchical_bootstrap(per_seed: list[np.ndarray], draws: int = 10_000, seed: int = 0,
                           alpha: float = 0.05, chunk: int = 100) -> tuple[float, float]:
    """Percentile interval of the mean paired difference: seeds drawn with replacement, then, within each
    drawn seed, its per-problem differences drawn with replacement. `per_seed`: one array of per-problem
    differences per seed (equal lengths)."""
    if len(per_seed) < 2:
        return math.nan, math.nan
    d = np.stack(per_seed)  # seeds x problems
    n, problems = d.shape
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, draws, chunk):
        k = min(chunk, draws - start)
        seeds = rng.integers(0, n, size=(k, n))
        picks = rng.integers(0, problems, size=(k, n, problems))
        means.append(d[seeds[..., None], picks].mean(axis=(1, 2)))
    means = np.concatenate(means)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (family-wise), in the order given."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def evaluation_noise_sd(correct: pd.DataFrame) -> float:
    """The SD of one run's avg@k that comes from sampling its k completions, the policy held fixed: per
    problem the unbiased variance of a k-sample mean, q(1-q)/(k-1), summed over problems / problems^2.
    `correct`: rows of one run's graded samples (problem_id, correct). NaN with one sample per problem."""
    g = correct.groupby("problem_id")["correct"].agg(["mean", "size"])
    g = g[g["size"] > 1]
    if g.empty:
        return math.nan
    var = g["mean"] * (1 - g["mean"]) / (g["size"] - 1)
    return float(math.sqrt(var.sum()) / len(g))


# --- from the runs --------------------------------------------------------------------------------


def run_arms(data: ReportData, labels: pd.DataFrame, axis: str) -> pd.Series:
    """The arm of each finished training run as the endpoint names it: its study-axis label (tag
    vimpo.axis.<axis>) where it has one, else the report's arm label."""
    tag = f"vimpo.axis.{axis}"
    tags = data.tags.reindex(labels.index)
    named = tags[tag] if tag in tags else pd.Series(np.nan, index=labels.index, dtype=object)
    return named.where(named.notna(), labels["arm"]).astype(str)


def seed_values(long: pd.DataFrame, arms: pd.Series, comp: Comparison) -> pd.DataFrame:
    """seed, arm value, baseline value of a comparison, seeds with both (`long`: analysis.final_eval_long)."""
    rows = long[(long["suite"] == comp.suite) & (long["metric"] == comp.metric)]
    rows = rows.assign(named=rows["train_run_id"].map(arms))
    a = rows[rows["named"] == comp.arm].drop_duplicates("seed", keep="last").set_index("seed")["value"]
    b = rows[rows["named"] == comp.baseline].drop_duplicates("seed", keep="last").set_index("seed")["value"]
    both = pd.DataFrame({"arm": a, "baseline": b}).dropna()
    both.index = both.index.astype(str)
    both = both.loc[sorted(both.index, key=lambda s: (len(s), s))]
    return both.assign(diff=both["arm"] - both["baseline"]).rename_axis("seed").reset_index()


def latest_evals(data: ReportData, eval_labels: pd.DataFrame) -> list[str]:
    """The latest eval run of each training run (as analysis.final_eval_long keeps)."""
    ev = data.of_kind("eval")
    ev = ev[ev["run_id"].isin(eval_labels.index)].sort_values("start_time")
    last = ev.assign(train=ev["run_id"].map(eval_labels["train_run_id"])).drop_duplicates("train", keep="last")
    return last["run_id"].tolist()


def problem_diffs(data: ReportData, eval_labels: pd.DataFrame, arms: pd.Series, comp: Comparison,
                  seeds: list[str]) -> list[np.ndarray] | None:
    """Per seed, the per-problem differences (mean correct of the arm's samples minus the baseline's) on the
    problems both evaluated, for a metric that is a mean over problems; None when the samples do not allow it."""
    if not comp.metric.startswith(PER_PROBLEM) or data.samples.empty:
        return None
    s = data.samples[(data.samples["source"] == "eval") & (data.samples["suite"] == comp.suite)]
    s = s[s["run_id"].isin(latest_evals(data, eval_labels))]
    if s.empty:
        return None
    s = s.assign(named=s["run_id"].map(eval_labels["train_run_id"]).map(arms),
                 seed=s["run_id"].map(eval_labels["seed"]).astype(str))
    rate = s.groupby(["seed", "named", "problem_id"])["correct"].mean()
    out = []
    for seed in seeds:
        try:
            a, b = rate.loc[(seed, comp.arm)], rate.loc[(seed, comp.baseline)]
        except KeyError:
            return None
        common = a.index.intersection(b.index)
        out.append((a[common] - b[common]).to_numpy(dtype=float))
    if len({len(x) for x in out}) != 1:
        return None  # seeds evaluated on different problem sets: no common bootstrap frame
    return out


def estimate(data: ReportData, labels: pd.DataFrame, eval_labels: pd.DataFrame, long: pd.DataFrame,
             endpoint: Endpoint) -> dict[str, pd.DataFrame]:
    """Tables of the endpoints: `endpoints` (one row per comparison: n, mean difference, t interval,
    bootstrap interval, p, Holm-adjusted p for the secondaries, SD, minimum detectable effect, verdict),
    `endpoint_seeds` (per comparison and seed: the two values and their difference) and `eval_noise` (per arm
    of the primary: the mean per-run evaluation-noise SD and the seed-to-seed SD)."""
    arms = run_arms(data, labels, endpoint.axis)
    rows, per_seed = [], []
    comparisons = [("primary", endpoint.primary)] + [(f"S{i + 1}", c) for i, c in enumerate(endpoint.secondary)]
    for role, comp in comparisons:
        seeds = seed_values(long, arms, comp)
        per_seed.append(seeds.assign(endpoint=role, comparison=comp.name))
        test = paired_t(seeds["diff"].to_numpy(), endpoint.alpha)
        problems = problem_diffs(data, eval_labels, arms, comp, seeds["seed"].tolist())
        low, high = (hierarchical_bootstrap(problems, endpoint.draws, endpoint.seed, endpoint.alpha)
                     if problems is not None else (math.nan, math.nan))
        rows.append({"endpoint": role, "comparison": comp.name, "n_seeds": test["n"], "mean_diff": test["mean"],
                     "t_low": test["ci_low"], "t_high": test["ci_high"], "boot_low": low, "boot_high": high,
                     "problems": len(problems[0]) if problems else np.nan, "p": test["p"], "sd_diff": test["sd"],
                     "mde": minimum_detectable_effect(test["sd"], test["n"], endpoint.alpha, endpoint.power)})
    table = pd.DataFrame(rows)
    secondary = table["endpoint"] != "primary"
    table["p_holm"] = np.nan
    testable = secondary & table["p"].notna()  # a comparison without two paired seeds is not in the family yet
    if testable.any():
        table.loc[testable, "p_holm"] = holm(table.loc[testable, "p"].tolist())
    table["verdict"] = [verdict(r, endpoint) for r in table.to_dict("records")]
    noise = eval_noise(data, eval_labels, arms, endpoint.primary, per_seed[0])
    return {"endpoints": table, "endpoint_seeds": pd.concat(per_seed, ignore_index=True), "eval_noise": noise}


def verdict(row: dict, endpoint: Endpoint) -> str:
    p = row["p"] if row["endpoint"] == "primary" else row["p_holm"]
    arm, baseline = row["comparison"].split(",")[0].split(" - ")
    if row["n_seeds"] < 2 or not math.isfinite(p):
        return "not testable (fewer than 2 paired seeds)"
    if p < endpoint.alpha:
        return f"{arm if row['mean_diff'] > 0 else baseline} better (p {'Holm ' if row['endpoint'] != 'primary' else ''}= {p:.3g})"
    return (f"no difference resolved (p = {p:.2g}; {endpoint.power:.0%} power needs a true difference of "
            f"{100 * row['mde']:.1f} points)")


def eval_noise(data: ReportData, eval_labels: pd.DataFrame, arms: pd.Series, comp: Comparison,
               seeds: pd.DataFrame) -> pd.DataFrame:
    """Per arm of a comparison: runs, the mean per-run evaluation-noise SD of the metric (sampling of the
    completions, the policy fixed) and the SD of the metric over seeds."""
    noise_of: dict[str, float] = {}  # eval run -> its noise SD, for the latest eval of each training run, in run order
    if not data.samples.empty and comp.metric.startswith(PER_PROBLEM):
        latest = latest_evals(data, eval_labels)
        s = data.samples[(data.samples["suite"] == comp.suite) & data.samples["run_id"].isin(latest)]
        by_run = dict(tuple(s.groupby("run_id")))
        noise_of = {run_id: evaluation_noise_sd(by_run[run_id]) for run_id in latest if run_id in by_run}
    rows = []
    for side, name in (("arm", comp.arm), ("baseline", comp.baseline)):
        noise = [sd for run_id, sd in noise_of.items() if arms.get(eval_labels.at[run_id, "train_run_id"]) == name]
        rows.append({"arm": name, "runs": len(seeds), "eval_noise_sd": float(np.nanmean(noise)) if noise else math.nan,
                     "seed_sd": float(seeds[side].std(ddof=1)) if len(seeds) > 1 else math.nan})
    return pd.DataFrame(rows)
