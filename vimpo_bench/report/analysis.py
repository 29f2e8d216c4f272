"""From `ReportData` to the tables the panels show: pure pandas, no plotting and no MLflow.

Vocabulary. An *arm* is one algorithm as run (its name, plus the settings that vary within it, e.g.
"vimpo[algo.beta=0.05]"); a *condition* is a setting varied for every arm alike (e.g. a noise rate):
arms are compared within a condition, seed by seed. A config key that is fixed once algorithm and seed
are fixed (the GRPO beta vs the VIMPO beta) is neither, and nor is one whose every value belongs to a
single seed (an output folder named after the run) when the runs have several seeds. Bookkeeping
keys (BOOKKEEPING_KEYS: names, output places, thread counts) never change a result, so they are never
either, whatever the number of seeds.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from vimpo_bench.config import BOOKKEEPING_KEYS
from vimpo_bench.report.collect import TRAIN_SUITE, ReportData
from vimpo_bench.report.stats import natural_sorted, paired_difference, summarize

ALGO_KEY = "algo.name"
SEED_KEYS = ("run.seed", "train.seed")
NOISE_KIND_KEY = "reward.noise"  # none | symmetric (rate reward.p) | asymmetric (reward.fp, reward.fn)
NOISE_RATE_KEYS = ("reward.p", "reward.noise_p")
ASYMMETRIC_KEYS = ("reward.fp", "reward.fn")
UNSET = "<unset>"
AXIS_TAG = "vimpo.axis."  # + axis name: the label of a study cell's value on that axis (see vimpo_bench.experiments.study)
VAL_METRICS = ("greedy_accuracy", "sampled_accuracy")  # logged by training runs as val/<metric>
THRESHOLD_KEY = "val/sampled_accuracy"  # the curve "steps to reach a fixed accuracy" reads
# Config keys that never change a result (names, output places, threads, checkpointing, logging): never an
# arm or a condition. The run.* ones are those vimpo_bench.config.Config.hash() leaves out (a test checks).
# Eval-run metrics that measure the model (bookkeeping such as n_problems or grader_timeouts is left out).
HEADLINE = re.compile(r"^(accuracy|(pass|maj|avg)_at_\d+|pass@\d+|.*_accuracy)$")
# Metrics that are fractions of responses (accuracies, rates, means of a 0/1 reward): a t interval over a
# few seeds can reach past 0 or 1, which no run can; such intervals are cut there (differences at -1, 1).
FRACTION = re.compile(r"(^|/)((pass|maj|avg)_at_\d+|pass@\d+|accuracy|\w*_accuracy|\w*_rate|\w*_fraction|"
                      r"clip_frac|clean_mean|trained_mean)$")


def is_fraction(metric: object) -> bool:
    return bool(FRACTION.search(str(metric)))


def clip_to_range(frame: pd.DataFrame, metric: str | None, low: float = 0.0, high: float = 1.0,
                  columns: tuple[str, ...] = ("ci_low", "ci_high")) -> pd.DataFrame:
    """`frame` with the interval `columns` cut to [low, high] on rows whose metric (column `metric`; None:
    every row) is a fraction (see FRACTION); NaN stays NaN."""
    rows = frame[metric].map(is_fraction) if metric else pd.Series(True, index=frame.index)
    out = frame.copy()
    for col in columns:
        out.loc[rows, col] = out.loc[rows, col].clip(lower=low, upper=high)
    return out


def is_vimpo(algo: str) -> bool:
    return str(algo).split("[")[0].strip().lower() == "vimpo"


def arm_order(arms) -> list[str]:
    """VIMPO arms first, then the baselines, each in natural order."""
    arms = natural_sorted(set(arms))
    return [a for a in arms if is_vimpo(a)] + [a for a in arms if not is_vimpo(a)]


def by_condition_and_arm(df: pd.DataFrame, then: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows of `df` ordered by condition, then arm (VIMPO first, see arm_order), then the columns `then`."""
    rank = {a: i for i, a in enumerate(arm_order(df["arm"]))}
    ordered = df.assign(_rank=df["arm"].map(rank)).sort_values(["condition", "_rank", *then], kind="stable")
    return ordered.drop(columns="_rank")


def differing_keys(params: pd.DataFrame) -> list[str]:
    """Config keys whose value is not the same for every row (a key missing on some rows differs)."""
    p = params.astype(object).where(params.notna(), UNSET)
    return sorted(c for c in p.columns if p[c].nunique() > 1)


def compared(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs a comparison may use: finished ones. A running run has not reached its last step (its
    final values are not final, and its curve stops early), and a failed or killed one never will."""
    return runs[runs["status"] == "FINISHED"]


def label_arms(data: ReportData, exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """Finished training runs (see `compared`) indexed by run_id with algo, seed, arm, condition (see the
    module doc). Keys in `exclude` are left out of both labels (the noise panel puts the noise rate on its
    x axis)."""
    train = compared(data.of_kind("train")).set_index("run_id")
    out = train[["algo", "seed"]].copy()
    if train.empty:
        return out.assign(arm=pd.Series(dtype=str), condition=pd.Series(dtype=str))
    p = data.params.reindex(train.index).astype(object)
    p = p.where(p.notna(), UNSET)
    skip = set(SEED_KEYS) | {ALGO_KEY} | set(BOOKKEEPING_KEYS) | set(exclude)
    cond_keys, variant_keys = [], []
    replicated = out.groupby("algo")["seed"].nunique().max() > 1
    for key in differing_keys(p):
        if key in skip or p[key].groupby([out["algo"], out["seed"]]).nunique().max() <= 1:
            continue  # fixed once algorithm and seed are: an algorithm setting or a seed's label
        if replicated and out["seed"].groupby([out["algo"], p[key]]).nunique().max() < 2:
            continue  # no value of it is shared by two seeds: a per-run label (an output folder), not a setting
        value_sets = p[key].groupby(out["algo"]).agg(lambda s: tuple(natural_sorted(set(s))))
        # With one algorithm there is nothing to compare within a condition: what varies is what the study
        # compares (an ablation's settings), so it makes the arms.
        alike = value_sets.nunique() == 1 and out["algo"].nunique() > 1
        (cond_keys if alike else variant_keys).append(key)
    varies_within = {k: p[k].groupby(out["algo"]).transform("nunique") > 1 for k in variant_keys}
    tags = data.tags.reindex(train.index)
    arm_parts = setting_names(tags, p, variant_keys)
    condition_parts = setting_names(tags, p, cond_keys)
    arms, conditions = [], []
    for run_id in out.index:
        parts = [name(run_id) for keys, name in arm_parts if any(varies_within[k][run_id] for k in keys)]
        arms.append(out.at[run_id, "algo"] + (f"[{', '.join(parts)}]" if parts else ""))
        conditions.append(", ".join(name(run_id) for _, name in condition_parts))
    out["arm"], out["condition"] = arms, conditions
    out.attrs["condition_keys"], out.attrs["variant_keys"] = cond_keys, variant_keys
    out.attrs["default_arm"] = default_arm(out, p, variant_keys)
    return out


def setting_names(tags: pd.DataFrame, params: pd.DataFrame, keys: list[str]) -> list[tuple[list[str], object]]:
    """How arm or condition labels name the settings `keys`: a list of (keys, run_id -> "name=value").

    A study axis whose values carry labels (tag `vimpo.axis.NAME`, e.g. `ref: [{label: frozen, ...}]`)
    names the keys it sets as NAME=LABEL when, on these runs, its label and those keys' values determine
    each other: "ref=hard10" instead of four ref.* and beta_schedule.* values. An axis of plain values (its
    label is the value) and every key no such axis covers keep `key=value`, in the keys' order."""
    named: dict[str, tuple[str, pd.Series]] = {}
    for column in sorted(c for c in tags.columns if str(c).startswith(AXIS_TAG)):
        label = tags[column]
        free = [k for k in keys if k not in named]
        if label.isna().any() or not free:
            continue
        covered = [k for k in free if params[k].groupby(label).nunique().max() == 1]
        if not covered:
            continue
        together = params[covered].astype(str).agg("\x1f".join, axis=1)
        if label.groupby(together).nunique().max() != 1:
            continue  # the keys' values do not tell the label apart: say the values
        if len(covered) == 1 and (label.astype(str) == params[covered[0]].astype(str)).all():
            continue  # the label is the value: key=value says more
        for k in covered:
            named[k] = (column[len(AXIS_TAG):], label)
    out, done = [], set()
    for k in keys:
        if k not in named:
            out.append(([k], lambda run_id, k=k: f"{k}={params.at[run_id, k]}"))
        elif named[k][0] not in done:
            axis, label = named[k]
            done.add(axis)
            out.append(([c for c in keys if named.get(c, ("",))[0] == axis],
                        lambda run_id, axis=axis, label=label: f"{axis}={label[run_id]}"))
    return out


def setting_default(algo: str, key: str) -> object:
    """The value a run of `algo` takes for config `key` when nothing sets it (KeyError if none is known)."""
    from vimpo_bench.algorithms import get
    from vimpo_bench.config import Config

    section, _, rest = key.partition(".")
    if section == "algo":
        value = get(algo)
        for part in rest.split("."):
            value = getattr(value, part)
        return value
    value = Config()
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def default_arm(labels: pd.DataFrame, params: pd.DataFrame, variant_keys: list[str]) -> str | None:
    """When every arm runs one algorithm: the arm whose varied settings are all defaults (the algorithm's
    for `algo.*` keys, the config's for the rest): an ablation's reference, else None."""
    if labels["algo"].nunique() != 1 or not variant_keys:
        return None
    algo = str(labels["algo"].iloc[0])
    try:
        defaults = {k: setting_default(algo, k) for k in variant_keys}
    except Exception:  # an algorithm or key this version does not know: no reference
        return None

    def same(value, default) -> bool:
        try:
            return float(value) == float(default)
        except (TypeError, ValueError):
            return str(value) == str(default)

    for run_id, arm in labels["arm"].items():
        if all(same(params.at[run_id, k], defaults[k]) for k in variant_keys):
            return arm
    return None


def run_labels(data: ReportData, labels: pd.DataFrame) -> pd.DataFrame:
    """arm, condition, seed of every finished eval run: its training parent's, else its own algo and seed.
    An eval run of a training run that the comparison leaves out (not finished) is left out with it."""
    ev = compared(data.of_kind("eval")).set_index("run_id")
    left_out = set(data.of_kind("train")["run_id"]) - set(labels.index)
    ev = ev[~ev["parent_run_id"].isin(left_out)]
    parent = ev["parent_run_id"]
    known = parent.isin(labels.index)
    out = pd.DataFrame(index=ev.index, columns=["arm", "condition", "seed", "algo", "train_run_id"], dtype=object)
    out.loc[known, ["arm", "condition", "seed", "algo"]] = labels.loc[parent[known], ["arm", "condition", "seed", "algo"]].to_numpy()
    out.loc[known, "train_run_id"] = parent[known]
    out.loc[~known, "arm"] = ev.loc[~known, "algo"].where(ev.loc[~known, "algo"] != "", ev.loc[~known, "run_name"])
    out.loc[~known, "algo"] = ev.loc[~known, "algo"]
    out.loc[~known, "seed"] = ev.loc[~known, "seed"]
    out.loc[~known, "condition"] = ""
    out.loc[~known, "train_run_id"] = ev.index[~known]
    return out


# --- Overview -------------------------------------------------------------------------------------


def overview(data: ReportData, labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training runs with the config keys that differ between them, all other runs)."""
    runs = data.runs
    last_step = data.history.groupby("run_id")["step"].max()
    table = runs.assign(
        last_step=runs["run_id"].map(last_step),
        started=runs["start_time"].dt.strftime("%Y-%m-%d %H:%M:%S"),
        arm=runs["run_id"].map(labels["arm"]) if len(labels) else "",
        condition=runs["run_id"].map(labels["condition"]) if len(labels) else "",
    )
    cols = ["run_name", "run_id", "kind", "algo", "arm", "condition", "seed", "status", "started", "wall_s", "last_step"]
    train = table[table["kind"] == "train"].set_index("run_id", drop=False)
    params = data.params.reindex(train.index)
    train = train[cols].join(params[differing_keys(params)]) if len(train) else train[cols]
    others = table[table["kind"] != "train"][cols[:4] + ["seed", "status", "started", "wall_s", "parent_run_id"]]
    return train.reset_index(drop=True), others.reset_index(drop=True)


IDENTITY_PREFIXES = ("machine.", "versions.")
IDENTITY_KEYS = ("model.start_checksum",)


def settings(data: ReportData, labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(config keys with one value in every training run: key, value; per arm and condition: runs and the
    values of each key that differs between training runs, bookkeeping keys left out)."""
    p = data.params.reindex(labels.index).dropna(axis=1, how="all").astype(object)
    # What ran a run (machine, versions, the starting weights' checksum) is not a setting: the machine
    # table shows it, and the checksum differs with every seed.
    p = p.drop(columns=[c for c in p.columns if c.startswith(IDENTITY_PREFIXES) or c in IDENTITY_KEYS])
    p = p.where(p.notna(), UNSET)
    differ = differing_keys(p)
    shared = pd.DataFrame({"key": [k for k in sorted(p.columns) if k not in differ]})
    shared["value"] = [p[k].iloc[0] for k in shared["key"]]
    keys = [k for k in differ if k not in BOOKKEEPING_KEYS]
    rows = []
    for (arm, cond), g in p.join(labels[["arm", "condition"]]).groupby(["arm", "condition"], sort=False):
        rows.append({"arm": arm, "condition": cond, "runs": len(g)}
                    | {k: ", ".join(map(str, natural_sorted(set(g[k])))) for k in keys})
    return shared, by_condition_and_arm(pd.DataFrame(rows, columns=["arm", "condition", "runs", *keys]))


def wall_times(runs: pd.DataFrame) -> pd.DataFrame:
    """Training runs' wall time, over all of them ("all") and per study when there are several: the sum of
    their wall seconds and the span from the first start to the last end (a running run ends at its last
    metric)."""
    t = runs[runs["kind"] == "train"]
    t = t.assign(end=t["end_time"].fillna(t["start_time"] + pd.to_timedelta(t["wall_s"], unit="s")))
    groups = [("all", t)]
    if t["study"].nunique() > 1:
        groups += [(study or "(no study)", g) for study, g in t.groupby("study", sort=True)]
    rows = [{"study": name, "runs": len(g), "wall_s_sum": g["wall_s"].sum(), "first_start": g["start_time"].min(),
             "last_end": g["end"].max(), "span_s": (g["end"].max() - g["start_time"].min()).total_seconds()}
            for name, g in groups if len(g)]
    return pd.DataFrame(rows, columns=["study", "runs", "wall_s_sum", "first_start", "last_end", "span_s"])


# Tags that describe the machine a training run ran on, first found wins (versions.* come from provenance).
MACHINE_TAGS = {"platform": ("machine.platform", "platform"), "CPU model": ("machine.cpu_model", "machine.processor"),
                "CPUs": ("machine.cpu_count", "machine.cpus", "cpu_count"), "accelerator": ("machine.accelerator",),
                "torch": ("versions.torch",), "transformers": ("versions.transformers",)}


def overlapping(runs: pd.DataFrame) -> int:
    """How many training runs ran while another of them ran (their start-to-end spans overlap): their wall
    times were measured on a shared machine, so a page compares no wall-clock figures when this is not 0."""
    t = runs[runs["kind"] == "train"]
    t = t.assign(end=t["end_time"].fillna(t["start_time"] + pd.to_timedelta(t["wall_s"], unit="s")))
    t = t.dropna(subset=["start_time", "end"]).sort_values("start_time")
    starts, ends = t["start_time"].to_numpy(), t["end"].to_numpy()
    shared = np.zeros(len(t), dtype=bool)
    for i in range(len(t)):
        later = (starts > starts[i]) & (starts < ends[i])  # j started while i ran
        if later.any():
            shared[i] = True
            shared |= later
    return int(shared.sum())


def machine(tags: pd.DataFrame, here: dict[str, object] | None) -> pd.DataFrame:
    """What ran the training runs (`tags`: their tags and machine.* params): platform, CPU, accelerator, torch
    and transformers versions, each from the runs' records when they carry it, else the value in `here` (the
    reporting machine; None when the page is rebuilt from an export, where the reporting machine says
    nothing of the runs), with where it came from."""
    rows = []
    for item, names in MACHINE_TAGS.items():
        col = next((c for c in names if c in tags and tags[c].notna().any()), None)
        if col:
            values = natural_sorted(tags[col].dropna().astype(str).unique())
            rows.append({"item": item, "value": ", ".join(values),
                         "source": f"run tag {col} ({int(tags[col].notna().sum())} of {len(tags)} runs)"})
        elif here is None:
            rows.append({"item": item, "value": "not recorded", "source": "the runs carry no such record"})
        else:
            rows.append({"item": item, "value": str(here.get(item, "unknown")), "source": "the reporting machine"})
    return pd.DataFrame(rows, columns=["item", "value", "source"])


# --- Learning curves ------------------------------------------------------------------------------


def curves(history: pd.DataFrame, labels: pd.DataFrame, keys) -> pd.DataFrame:
    """Mean and 95% band over seeds per arm, condition, metric and step (cut to [0, 1] for fractions);
    time_s is the mean wall time at which the seeds reached that step (curves against wall time use it as
    x), only where every seed of the arm has the point: a mean over fewer seeds past the point where a
    fast seed stopped would make the time axis run backwards."""
    h = history[history["key"].isin(list(keys))].merge(labels[["arm", "condition"]], left_on="run_id", right_index=True)
    if h.empty:
        return pd.DataFrame(columns=["arm", "condition", "key", "step", "mean", "n", "ci_low", "ci_high", "time_s"])
    by = ["arm", "condition", "key", "step"]
    out = clip_to_range(summarize(h, by), "key")
    times = h[np.isfinite(h["value"])].groupby(by, dropna=False)["time_s"].mean().rename("time_s").reset_index()
    out = out.merge(times, on=by, how="left")
    seeds = labels.groupby(["arm", "condition"]).size().rename("seeds").reset_index()
    out = out.merge(seeds, on=["arm", "condition"], how="left")
    out.loc[out["n"] < out["seeds"], "time_s"] = np.nan
    return out.drop(columns="seeds")


def first_reach(frame: pd.DataFrame, by: list[str], value: str = "mean") -> pd.DataFrame:
    """Per group of `by`: the step and time_s of the first row (in step order) whose `value` is at least the
    row's `threshold`, NaN when no row is; every group of `frame` appears once.
    `frame` holds the columns by, step, time_s, threshold and `value`."""
    f = frame.sort_values("step", kind="stable")
    groups = f.groupby(by, sort=False).size().rename("points").to_frame()
    hit = f[f[value] >= f["threshold"]].groupby(by, sort=False).head(1).set_index(by)[["step", "time_s"]]
    return groups.join(hit).reset_index()


def default_threshold(curve: pd.DataFrame) -> pd.Series:
    """Per condition of a seed-mean curve (arm, condition, step, mean): midway between the arms' common
    starting value (their first points, averaged over arms) and the best arm's final value; NaN where no
    arm ended above that start (any threshold would be arbitrary: none is reached)."""
    ends = curve.sort_values("step", kind="stable").groupby(["condition", "arm"])["mean"].agg(["first", "last"])
    by_cond = ends.groupby(level="condition")
    start, best = by_cond["first"].mean(), by_cond["last"].max()
    return ((start + best) / 2).where(best > start)


STEPS_COLUMNS = ["condition", "arm", "threshold", "step", "time_s", "final_mean", "seeds", "seeds_reached",
                 "median_seed_step", "median_seed_time_s"]


def steps_to_threshold(curve: pd.DataFrame, history: pd.DataFrame, labels: pd.DataFrame,
                       threshold: float | None = None, key: str = THRESHOLD_KEY) -> pd.DataFrame:
    """Per arm and condition: the first step at which the seed-mean of `key` (rows of the learning-curves
    table `curve`) reaches the threshold, and the mean wall seconds of the seeds at that step; the median over
    seeds of each seed's own first step and seconds, where a seed that never reaches counts as later than
    any (so the median is NaN, "not reached", unless more than half reached). `threshold` None: per
    condition, `default_threshold`."""
    c = curve[curve["key"] == key]
    if c.empty:
        return pd.DataFrame(columns=STEPS_COLUMNS)
    thr = default_threshold(c) if threshold is None else pd.Series(float(threshold), index=c["condition"].unique())
    mean_hit = first_reach(c.assign(threshold=c["condition"].map(thr)), ["arm", "condition"])
    final = c.sort_values("step", kind="stable").groupby(["arm", "condition"])["mean"].last().rename("final_mean")
    h = history[history["key"] == key].merge(labels[["arm", "condition"]], left_on="run_id", right_index=True)
    seeds = first_reach(h.assign(threshold=h["condition"].map(thr)), ["arm", "condition", "run_id"], value="value")

    def median_or_nan(x: pd.Series) -> float:
        m = float(np.median(x.fillna(np.inf)))
        return m if np.isfinite(m) else np.nan

    per_seed = seeds.groupby(["arm", "condition"]).agg(
        seeds=("run_id", "size"), seeds_reached=("step", "count"),
        median_seed_step=("step", median_or_nan), median_seed_time_s=("time_s", median_or_nan))
    out = mean_hit.drop(columns="points").join(final, on=["arm", "condition"]).join(per_seed, on=["arm", "condition"])
    out["threshold"] = out["condition"].map(thr)
    return by_condition_and_arm(out)[STEPS_COLUMNS].reset_index(drop=True)


# --- Final evaluation -----------------------------------------------------------------------------


RUNTIME_TAGS = ("vimpo.backend", "vimpo.dtype")  # what an eval run generated with; it changes the numbers


def refuse_mixed_runtimes(eval_tags: pd.DataFrame) -> None:
    """A page does not pool eval runs that generated with different backends (hf, vllm) or dtypes: raise
    ValueError in one line naming them (runs from before these tags count as hf / float32)."""
    for tag, default in zip(RUNTIME_TAGS, ("hf", "float32"), strict=True):
        values = eval_tags[tag].fillna(default) if tag in eval_tags else pd.Series(default, index=eval_tags.index)
        if values.nunique() > 1:
            raise ValueError(f"the eval runs differ in {tag} ({', '.join(natural_sorted(values.unique()))}): their "
                             "numbers are not comparable, so this page does not pool them; report each separately")


def final_eval_long(data: ReportData, labels: pd.DataFrame) -> pd.DataFrame:
    """One row per (training run, suite, metric): the final value with the run's own interval if logged.
    Suites come from eval runs (eval/<suite>/<metric>; the latest eval run per training run wins) and
    from the training run's own evaluation on the validation split (suite "validation", val/<metric>)."""
    cols = ["condition", "arm", "algo", "seed", "train_run_id", "suite", "metric", "value", "run_ci_low", "run_ci_high"]
    rows = []
    ev_labels = run_labels(data, labels)
    ev = data.of_kind("eval").sort_values("start_time")
    refuse_mixed_runtimes(data.tags.reindex(ev["run_id"][ev["run_id"].isin(ev_labels.index)]))
    for run_id in ev["run_id"][ev["run_id"].isin(ev_labels.index)]:
        final = data.final.loc[run_id].dropna() if run_id in data.final.index else pd.Series(dtype=float)
        lab = ev_labels.loc[run_id]
        for name, value in final.items():
            parts = name.split("/")
            if len(parts) != 3 or parts[0] != "eval" or not HEADLINE.match(parts[2]):
                continue
            rows.append([lab["condition"], lab["arm"], lab["algo"], lab["seed"], lab["train_run_id"], parts[1], parts[2],
                         value, final.get(f"{name}_ci_low", np.nan), final.get(f"{name}_ci_high", np.nan)])
    for run_id, lab in labels.iterrows():
        final = data.final.loc[run_id] if run_id in data.final.index else pd.Series(dtype=float)
        for metric in VAL_METRICS:
            value = final.get(f"val/{metric}", np.nan)
            if pd.notna(value):
                rows.append([lab["condition"], lab["arm"], lab["algo"], lab["seed"], run_id, TRAIN_SUITE, metric,
                             value, np.nan, np.nan])
    long = pd.DataFrame(rows, columns=cols)
    return long.drop_duplicates(["train_run_id", "suite", "metric"], keep="last").reset_index(drop=True)


def final_eval_summary(long: pd.DataFrame) -> pd.DataFrame:
    """Per condition, suite, metric and arm: mean over seeds and its 95% t interval; with one seed the
    run's own interval (over problems) when it logged one, labelled so."""
    if long.empty:
        return pd.DataFrame(columns=["condition", "suite", "metric", "arm", "mean", "n", "ci_low", "ci_high", "interval"])
    by = ["condition", "suite", "metric", "arm"]
    s = summarize(long, by)
    single = long.groupby(by).agg(run_ci_low=("run_ci_low", "first"), run_ci_high=("run_ci_high", "first")).reset_index()
    s = s.merge(single, on=by, how="left")
    use_run = (s["n"] == 1) & s["run_ci_low"].notna() & s["run_ci_high"].notna()
    s.loc[use_run, "ci_low"], s.loc[use_run, "ci_high"] = s.loc[use_run, "run_ci_low"], s.loc[use_run, "run_ci_high"]
    s["interval"] = np.where(s["n"] >= 2, "t over seeds", np.where(use_run, "within run (problems)", "none"))
    return clip_to_range(s.drop(columns=["run_ci_low", "run_ci_high"]), "metric")


def page_metrics(metrics) -> set[str]:
    """Of one suite's metric names, those a results page shows: `accuracy` and `pass_at_1` say what
    `avg_at_k` says when it is there, and of the pass@k curve only its largest k (the tables keep all)."""
    names = set(metrics)
    has_avg = any(m.startswith("avg_at_") for m in names)
    passes = sorted((int(m.rsplit("_", 1)[1]), m) for m in names if re.fullmatch(r"pass_at_\d+", m))
    keep = {m for m in names if not re.fullmatch(r"pass_at_\d+", m) and not (m == "accuracy" and has_avg)}
    if passes and (passes[-1][0] > 1 or not has_avg):
        keep.add(passes[-1][1])
    return keep


def on_page(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a per-suite metric table (columns suite, metric) that `page_metrics` keeps."""
    keep = frame.groupby("suite")["metric"].transform(lambda m: m.isin(page_metrics(m)))
    return frame[keep.astype(bool)] if len(frame) else frame


def paired_title(labels: pd.DataFrame | None) -> str:
    reference = None if labels is None else labels.attrs.get("default_arm")
    if reference and labels["algo"].nunique() == 1:
        return f"Each setting minus the defaults ({reference}), paired by seed"
    return "VIMPO minus each baseline, paired by seed"


def paired_table(long: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """VIMPO arm minus each baseline arm, per condition, suite and metric, over the seeds both ran; when
    every arm is VIMPO (an ablation), each arm minus `reference` (the default settings' arm) instead, the
    reference standing in the `baseline` column."""
    cols = ["condition", "suite", "metric", "vimpo", "baseline", "mean_diff", "ci_low", "ci_high", "n_pairs", "seeds", "verdict"]
    rows = []
    for (cond, suite, metric), g in long.groupby(["condition", "suite", "metric"], sort=True):
        arms = arm_order(g["arm"])
        by_seed = {a: g[g["arm"] == a].groupby("seed")["value"].mean().to_dict() for a in arms}
        baselines = [a for a in arms if not is_vimpo(a)]
        ablation = not baselines and reference in arms
        pairs = ([(v, reference) for v in arms if v != reference] if ablation
                 else [(v, b) for v in arms if is_vimpo(v) for b in baselines])
        higher = ("variant higher", "default higher") if ablation else ("VIMPO higher", "baseline higher")
        for v, b in pairs:
            d = paired_difference(by_seed[v], by_seed[b])
            if d["n_pairs"] < 2:
                verdict = "too few matched seeds"
            elif d["ci_low"] > 0:
                verdict = higher[0]
            elif d["ci_high"] < 0:
                verdict = higher[1]
            else:
                verdict = "not resolved (interval spans 0)"
            rows.append([cond, suite, metric, v, b, d["mean"], d["ci_low"], d["ci_high"], d["n_pairs"],
                         ",".join(map(str, d["keys"])), verdict])
    return clip_to_range(pd.DataFrame(rows, columns=cols), "metric", -1.0, 1.0)


# --- Noisy rewards --------------------------------------------------------------------------------


def noise_settings(data: ReportData) -> pd.DataFrame:
    """Per training run: `noise_rate`, the first of NOISE_RATE_KEYS, 0 when `reward.noise` is none, the
    mean of reward.fp and reward.fn for asymmetric noise (attrs["asymmetric"] counts those runs); and
    `noise_kind`: "symmetric" (none counts as symmetric at rate 0), or "asymmetric fp=X, fn=Y", which is
    never pooled with a symmetric rate: a verifier that only rewards wrong answers is a different condition
    from one that flips both ways."""
    train_ids = data.of_kind("train")["run_id"]
    p = data.params.reindex(train_ids)
    rate = pd.Series(np.nan, index=train_ids.values)
    kind = pd.Series("symmetric", index=train_ids.values, dtype=object)
    for key in NOISE_RATE_KEYS:
        if key in p:
            rate = rate.fillna(pd.Series(pd.to_numeric(p[key], errors="coerce").to_numpy(), index=rate.index))
    asymmetric = 0
    if NOISE_KIND_KEY in p:
        named = p[NOISE_KIND_KEY].astype(str).str.lower().to_numpy()
        rate[np.isin(named, ["none", "off", "false", "null", ""])] = 0.0
        asym = named == "asymmetric"
        if asym.any() and all(k in p for k in ASYMMETRIC_KEYS):
            fp, fn = (pd.to_numeric(p[k], errors="coerce").to_numpy() for k in ASYMMETRIC_KEYS)
            rate[asym] = ((fp + fn) / 2)[asym]
            kind[asym] = [f"asymmetric fp={a:g}, fn={b:g}" for a, b in zip(fp[asym], fn[asym], strict=True)]
            asymmetric = int(asym.sum())
    out = pd.DataFrame({"noise_rate": rate, "noise_kind": kind})
    out.attrs["asymmetric"] = asymmetric
    return out


def final_accuracy(data: ReportData, labels: pd.DataFrame) -> tuple[pd.Series, str]:
    """One final accuracy per training run and what it is: the most common eval suite's accuracy when
    eval runs logged one, else the run's validation greedy accuracy, else its final clean training reward."""
    long = final_eval_long(data, labels)
    ev = long[(long["suite"] != TRAIN_SUITE) & (long["metric"] == "accuracy")]
    if len(ev):
        suite = ev["suite"].value_counts().index[0]
        ev = ev[ev["suite"] == suite]
        return ev.set_index("train_run_id")["value"], f"{suite} accuracy (eval runs)"
    for key, label in (("val/greedy_accuracy", "validation greedy accuracy"), ("reward/clean_mean", "clean training reward")):
        if key in data.final:
            values = data.final.reindex(labels.index)[key].dropna()
            if len(values):
                return values, f"final {label}"
    return pd.Series(dtype=float), ""


NOISY_COLUMNS = ["condition", "arm", "noise_kind", "noise_rate", "mean", "n", "ci_low", "ci_high"]


def noisy_table(data: ReportData) -> tuple[pd.DataFrame, str]:
    """Final accuracy per condition, arm, noise kind and rate: mean over seeds and its 95% t interval."""
    labels = label_arms(data, exclude=(NOISE_KIND_KEY, *NOISE_RATE_KEYS, *ASYMMETRIC_KEYS))
    acc, what = final_accuracy(data, labels)
    noise = noise_settings(data).reindex(labels.index)
    df = labels.assign(noise_rate=noise["noise_rate"], noise_kind=noise["noise_kind"],
                       value=acc.reindex(labels.index)).dropna(subset=["noise_rate", "value"])
    if df.empty:
        return pd.DataFrame(columns=NOISY_COLUMNS), what
    table = summarize(df, ["condition", "arm", "noise_kind", "noise_rate"])[NOISY_COLUMNS]
    return clip_to_range(table, None), what  # accuracies
