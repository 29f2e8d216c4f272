"""The report's panels: each fills a `Panel` with figures, tables and notes from `ReportData`.

A panel whose data is absent says so in a note; a panel whose code fails shows the error in the page
(and `write_report` returns it) instead of taking the whole report down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from vimpo_bench.report import analysis as A
from vimpo_bench.report import grid as G
from vimpo_bench.report import passk as K
from vimpo_bench.report import records as P
from vimpo_bench.report import refs as R
from vimpo_bench.report.figures import Figure
from vimpo_bench.report.html import Panel, esc, table_html
from vimpo_bench.report.stats import interval_cells

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
CURVE_METRICS = [
    ("reward/clean_mean", "clean reward"), ("reward/trained_mean", "reward trained on (after noise)"),
    ("val/greedy_accuracy", "validation accuracy (greedy)"), ("val/sampled_accuracy", "validation accuracy (sampled)"),
    ("policy/kl_k3", "KL(π‖π_ref), k3"), ("policy/entropy", "entropy"), ("rollout/response_len", "response length (tokens)"),
    ("policy/clip_frac", "clip fraction (tokens)"), ("policy/grad_norm", "gradient norm (before clipping)"),
    ("rollout/truncation_rate", "truncation rate (no EOS)"),
]
CURVE_COLS = 4  # cells per row of the learning-curves grid
REF_METRICS = [("loss/value", "value loss L_V"), ("vimpo/abs_residual", "mean |terminal residual|"),
               ("policy/kl_k3", "KL k3")]


class Style:
    """Colour per arm (VIMPO first), dash per condition, the same in every figure."""

    def __init__(self, labels: pd.DataFrame):
        arms = A.arm_order(labels["arm"]) if len(labels) else []
        self.colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(arms)}
        conds = sorted(set(labels["condition"])) if len(labels) else []
        self.dashes = {c: DASHES[i % len(DASHES)] for i, c in enumerate(conds)}
        self.multi_condition = len(conds) > 1

    def color(self, arm: str) -> str:
        return self.colors.setdefault(arm, PALETTE[len(self.colors) % len(PALETTE)])

    def name(self, arm: str, condition: str) -> str:
        return f"{arm} | {condition}" if self.multi_condition and condition else arm


def _error_bars(g: pd.DataFrame) -> dict:
    """Asymmetric plotly error bars from mean/ci_low/ci_high (none where there is no interval)."""
    return {"type": "data", "symmetric": False, "array": (g["ci_high"] - g["mean"]).fillna(0),
            "arrayminus": (g["mean"] - g["ci_low"]).fillna(0)}


# --- panels ---------------------------------------------------------------------------------------


def overview(p: Panel, data, labels, style):
    train, others = A.overview(data, labels)
    p.tables["overview"] = pd.concat([train, others], ignore_index=True)
    unfinished = data.runs[data.runs["status"] != "FINISHED"]["status"].value_counts()
    if len(unfinished):
        p.say("not finished, so left out of every comparison (tables, curves, figures) and listed here only: "
              + ", ".join(f"{k} ({v})" for k, v in unfinished.items()), "warn")
    if train.empty:
        p.say("no training runs (vimpo.kind=train) in this selection")
    else:
        keys = [c for c in train.columns if "." in c]
        p.say(f"{len(train)} training run(s); config keys that differ between them: "
              + (", ".join(keys) if keys else "none"), "info")
        p.body.append(table_html(train, "overview"))
    if len(others):
        p.body.append(f"<details><summary>{len(others)} other run(s): eval, sweep, study</summary>"
                      f"{table_html(others, 'overview')}</details>")


def arm_bands(fig, cell: int, frame, x: str, style, shown: set, order: str | None = None) -> None:
    """Into one cell: the mean and interval band of each (arm, condition) in `frame` against column `x`
    (rows sorted by `order` when given); an arm enters the legend once (`shown` remembers it)."""
    if frame.empty:
        fig.note(cell, "not logged")
    for (arm, cond), g in frame.groupby(["arm", "condition"], sort=False):
        name = style.name(arm, cond)
        if order:
            g = g.sort_values(order)
        fig.band(g[x], g["mean"], g["ci_low"], g["ci_high"], name, style.color(arm),
                 style.dashes.get(cond, "solid"), cell=cell, showlegend=name not in shown)
        shown.add(name)


def steps_display(steps: pd.DataFrame, wall: bool = True) -> pd.DataFrame:
    """The steps-to-threshold table as shown: "not reached" where an arm (or most of its seeds) never got there;
    without the seconds columns unless `wall` (runs that shared their machine have no comparable seconds)."""
    def cell(v, fmt):
        return "not reached" if pd.isna(v) else format(v, fmt)

    shown = pd.DataFrame({
        "arm": steps["arm"], "threshold": steps["threshold"].map(lambda v: "none" if pd.isna(v) else f"{v:.3f}"),
        "step (seed-mean)": steps["step"].map(lambda v: cell(v, ".0f")),
        "seconds (seed-mean)": steps["time_s"].map(lambda v: cell(v, ".0f")),
        "final seed-mean": steps["final_mean"].map(lambda v: f"{v:.3f}"),
        "seeds reached": [f"{r}/{n}" for r, n in zip(steps["seeds_reached"], steps["seeds"], strict=True)],
        "median step (per seed)": steps["median_seed_step"].map(lambda v: cell(v, ".0f")),
        "median seconds (per seed)": steps["median_seed_time_s"].map(lambda v: cell(v, ".0f")),
    })
    if steps["condition"].ne("").any():
        shown.insert(0, "condition", steps["condition"])
    if not wall:
        shown = shown.drop(columns=["seconds (seed-mean)", "median seconds (per seed)"])
    return shown


STEPS_NOTE = (f"first step at which the mean over seeds of {A.THRESHOLD_KEY} reaches the threshold, and the seeds' "
              "mean wall seconds at that step; per seed: the median over seeds of each seed's own first step and seconds, "
              "a seed that never reaches counting as later than any (so \"not reached\" unless more than half did)")


def paired_display(paired: pd.DataFrame) -> pd.DataFrame:
    """A paired-difference table as pages show it: "difference" as mean [95% interval] n=pairs, and the
    condition column only when some row has one."""
    shown = paired.assign(difference=interval_cells(paired, mean="mean_diff", n="n_pairs"))
    cols = (["condition"] if paired["condition"].ne("").any() else []) + ["suite", "metric", "vimpo", "baseline",
                                                                          "difference", "seeds", "verdict"]
    return shown[cols]


def learning_curves(p: Panel, data, labels, style, threshold: float | None = None):
    if labels.empty:
        p.say("no training runs in this selection, so no learning curves")
        return
    c = A.curves(data.history, labels, [k for k, _ in CURVE_METRICS])
    p.tables["learning_curves"] = c
    if c.empty:
        p.say("the training runs logged none of " + ", ".join(k for k, _ in CURVE_METRICS))
        return
    if int(c["n"].max()) < 2:
        p.say("one seed per arm: lines without bands (a band needs two or more seeds)", "warn")
    logged = set(c["key"])
    drawn = [(key, title) for key, title in CURVE_METRICS if key in logged]  # a metric no run logged: left out
    p.meta["curves_absent"] = absent = [key for key, _ in CURVE_METRICS if key not in logged]
    if absent:
        p.say(absent_curves_note(absent))
    rows = -(-len(drawn) // CURVE_COLS)
    for i, (xcol, xtitle) in enumerate((("step", "step"), ("time_s", "wall time since run start (s)"))):
        fig = Figure(rows=rows, cols=CURVE_COLS, titles=[t for _, t in drawn], height=320 * rows)
        shown = set()
        for j, (key, _) in enumerate(drawn):
            arm_bands(fig, j, c[c["key"] == key], xcol, style, shown, order="step")
            if j + CURVE_COLS >= len(drawn):  # no cell below it
                fig.axis("x", j, title={"text": xtitle})
        fig.hide_cells(len(drawn))
        p.body.append(f"<h3>against {esc(xtitle)}</h3>" + fig.html(f"fig-curves-{i}"))
    p.body.append("<h3>steps to reach a fixed validation accuracy</h3>")
    steps = A.steps_to_threshold(c, data.history, labels, threshold)
    if steps.empty:
        p.say(f"no {A.THRESHOLD_KEY} logged: no steps to a threshold")
        return
    p.tables["steps_to_threshold"] = steps
    flat = sorted(set(steps.loc[steps["threshold"].isna(), "condition"]))
    if flat:
        p.meta["steps_warning"] = ("no arm ended above the arms' common starting value"
                                   + (f" at {'; '.join(flat)}" if flat != [""] else "")
                                   + ": no default threshold (give --threshold)")
        p.say(p.meta["steps_warning"], "warn")
    p.body.append(table_html(steps_display(steps), "steps_to_threshold"))
    how = "given" if threshold is not None else "midway between the arms' common start and the best arm's final value"
    p.say(f"threshold {how}; " + STEPS_NOTE, "info")


def absent_curves_note(keys: list[str]) -> str:
    """What a page says of the learning-curve metrics it leaves out, having no history of them."""
    return (f"not drawn: no history of {', '.join(keys)} in this page's data (not logged by the runs, or left out of "
            "an export written before the report read them)")


def pass_at_k_display(table: pd.DataFrame) -> pd.DataFrame:
    """The pass@k table as pages show it: per suite and k (the powers of two and n), one column per arm with
    mean [95% interval] n=seeds; the condition column only when some row has one."""
    kept = table[table["k"].isin(K.shown_ks(int(table["k"].max())))]
    kept = kept.assign(cell=interval_cells(kept))
    index = ["condition", "suite", "k"] if kept["condition"].ne("").any() else ["suite", "k"]
    wide = kept.pivot_table(index=index, columns="arm", values="cell", aggfunc="first").reset_index()
    return wide[index + [a for a in A.arm_order(kept["arm"]) if a in wide.columns]]


def pass_at_k_titles(table: pd.DataFrame) -> dict[str, str]:
    """Per suite of the pass@k table, its figure title: the suite, its problems and samples per problem."""
    fewest = table.groupby("suite")[["problems", "samples"]].min()
    return {suite: f"{suite}: {r.problems} problems × {r.samples} samples" for suite, r in fewest.iterrows()}


PASS_AT_K_NOTE = ("per problem with n samples of which c are right, pass@k = 1 − C(n−c, k) / C(n, k) (the unbiased "
                  "estimator of Chen et al. 2021); mean over the problems of each training run's latest eval run, "
                  "then over seeds; band = 95% t interval over seeds. k = 1 is avg@n, k = n the eval runs' pass_at_n")


def pass_at_k(p: Panel, data, labels, style) -> None:
    """The final-evaluation panel's pass@k part: pass@k against k per arm, a cell per suite (suites with more
    than one sample per problem); nothing when the eval runs left no graded samples."""
    table = K.pass_at_k_table(data, labels)
    table = table[table.groupby("suite")["k"].transform("max") > 1] if len(table) else table
    if table.empty:
        return
    p.tables["pass_at_k"] = table
    p.meta["pass_at_k_titles"] = titles = pass_at_k_titles(table)
    suites = list(titles)
    cols = min(len(suites), 3)
    rows = -(-len(suites) // cols)
    fig = Figure(rows=rows, cols=cols, titles=list(titles.values()), height=380 * rows)
    shown = set()
    for j, suite in enumerate(suites):
        frame = table[table["suite"] == suite]
        arm_bands(fig, j, frame, "k", style, shown, order="k")
        fig.axis("x", j, title={"text": "k"}, **({"dtick": 1} if frame["k"].max() <= 16 else {}))
        fig.axis("y", j, title={"text": "pass@k"})
    fig.hide_cells(len(suites))
    p.body.append("<h3>pass@k against k</h3>")
    p.say(PASS_AT_K_NOTE, "info")
    p.body.append(fig.html("fig-passk-0"))
    p.body.append(table_html(pass_at_k_display(table), "pass_at_k"))


def final_eval(p: Panel, data, labels, style):
    long = A.final_eval_long(data, labels)
    if long.empty:
        p.say("no evaluation results: no eval runs (vimpo.kind=eval) and no val/greedy_accuracy "
              "in the training runs")
        return
    summary = A.final_eval_summary(long)
    paired = A.paired_table(long, labels.attrs.get("default_arm"))
    p.tables |= {"final_eval_runs": long, "final_eval": summary, "paired_diff": paired}
    p.meta["labels"] = labels  # the Markdown page titles the paired table from them
    p.meta["grid_key"] = G.grid_key(data)  # a grid study pairs its arms at their validation choices instead
    summary = summary.assign(cell=[c + (" †" if k.startswith("within") else "")
                                   for c, k in zip(interval_cells(summary), summary["interval"], strict=True)])
    index = ["condition", "suite", "metric"] if summary["condition"].ne("").any() else ["suite", "metric"]
    wide = summary.pivot_table(index=index, columns="arm", values="cell", aggfunc="first").reset_index()
    wide = wide[index + [a for a in A.arm_order(summary["arm"]) if a in wide.columns]]
    p.body.append(table_html(wide, "final_eval"))
    p.say("mean over seeds [95% t interval] n=seeds; † one seed: the interval is the eval run's own "
          "(over problems), not over seeds. Suite validation is the training run's own final "
          "evaluation on the validation split; the other suites are test sets.", "info")
    fig = Figure(height=380)
    summary = summary.assign(x=summary["suite"] + "/" + summary["metric"])
    symbols = ["circle", "square", "diamond", "triangle-up", "cross", "x"]
    for arm in A.arm_order(summary["arm"]):
        for k, (cond, g) in enumerate(summary[summary["arm"] == arm].groupby("condition", sort=True)):
            fig.add({"x": g["x"], "y": g["mean"], "mode": "markers", "name": style.name(arm, cond),
                     "marker": {"size": 10, "color": style.color(arm), "symbol": symbols[k % len(symbols)]},
                     "error_y": _error_bars(g)})
    fig.layout["scattermode"] = "group"
    fig.axis("y", title={"text": "final value"})
    p.body.append(fig.html("fig-final-0"))
    p.body.append(f"<h3>{esc(A.paired_title(labels))}</h3>")
    if p.meta["grid_key"] and not paired.empty:
        p.say(grid_pairs_note(p.meta["grid_key"]), "info")
    p.say("each row is its own 95% interval, with no correction for the number of rows: with many "
          "suites and conditions, expect about one row in twenty to exclude 0 by chance", "info")
    if paired.empty:
        p.say("no paired difference: the runs need a VIMPO arm and a baseline arm evaluated on the same "
              "suite")
    else:
        p.body.append(table_html(paired_display(paired), "paired_diff"))
    pass_at_k(p, data, labels, style)


def grid_pairs_note(key: str) -> str:
    """What a grid study's rows of paired differences are, and which comparison the page makes."""
    return (f"a grid over {key}: these rows pair the algorithms at each {key} value (or every value with every "
            f"other, when their grids differ), and {key} need not mean the same for two algorithms; picking "
            "the best row would tune on the test sets. The comparison this page makes pairs each algorithm at "
            "the value chosen on validation: the beta sweep section below")


def noisy_rewards(p: Panel, data, labels, style):
    table, what = A.noisy_table(data)
    noise = A.noise_settings(data)
    rates = noise["noise_rate"].dropna().unique()
    if len(rates) == 0:
        p.say("no training run logged a noise rate (" + " or ".join(A.NOISE_RATE_KEYS) + ")")
        return
    if len(rates) < 2:
        p.say(f"all training runs used one noise rate (p={rates[0]:g}); this panel needs runs at two or more")
        return
    if table.empty:
        p.say("no final accuracy for the noisy runs (no eval runs, val/greedy_accuracy or reward/clean_mean)")
        return
    p.tables["noisy_rewards"] = table
    p.meta["y_label"] = what
    fig = Figure(height=420)
    multi = table["condition"].nunique() > 1
    for (arm, cond, kind), g in table.groupby(["arm", "condition", "noise_kind"], sort=False):
        g = g.sort_values("noise_rate")
        name = (f"{arm} | {cond}" if multi and cond else arm) + ("" if kind == "symmetric" else f" | {kind}")
        asym = kind != "symmetric"  # its own series, never joined to the symmetric line
        fig.add({"x": g["noise_rate"], "y": g["mean"], "mode": "markers" if asym else "lines+markers", "name": name,
                 "line": {"color": style.color(arm)},
                 "marker": {"color": style.color(arm), "symbol": "diamond-open" if asym else "circle", "size": 10},
                 "error_y": _error_bars(g)})
    fig.axis("x", title={"text": "reward noise rate"})
    fig.axis("y", title={"text": what})
    p.body.append(fig.html("fig-noisy-0"))
    p.say(f"y: {what}; mean over seeds, bars = 95% t interval", "info")
    if noise.attrs.get("asymmetric"):
        p.say(f"{noise.attrs['asymmetric']} run(s) with asymmetric noise are their own series (open "
              "diamonds), plotted at (fp + fn) / 2 and never pooled with the symmetric rate there", "warn")


def grid(p: Panel, data, key: str, style) -> None:
    """A grid study over `key` (e.g. algo.beta for every algorithm): validation and test against the grid
    value per arm, each arm's value chosen on validation, and the arms compared at their chosen values."""
    long = G.grid_long(data, key)
    summary, choice = G.grid_summary(long), G.grid_choice(long)
    p.meta["grid_key"] = key
    if summary.empty:
        p.say(f"the training runs vary {key}, but none has a final evaluation")
        return
    chosen = G.at_choice(long, choice)
    p.tables |= {"grid": summary, "grid_choice": choice, "grid_final": A.final_eval_summary(chosen),
                 "grid_paired": A.paired_table(chosen)}
    p.body.append(f"<h3>{esc(key)}: a grid over training runs, chosen per arm on validation</h3>")
    test = G.grid_test_metric(summary)
    shown = [(A.TRAIN_SUITE, G.SELECT_METRIC)] + ([test] if test else [])
    fig = Figure(1, len(shown), titles=[f"{s}/{m}" for s, m in shown], height=420)
    for cell, (suite, metric) in enumerate(shown):
        rows = summary[(summary["suite"] == suite) & (summary["metric"] == metric)]
        for (arm, cond), g in rows.groupby(["arm", "condition"], sort=False):
            g = g.sort_values("grid")
            fig.add({"x": g["grid"], "y": g["mean"], "mode": "lines+markers", "name": style.name(arm, cond),
                     "line": {"color": style.color(arm)}, "error_y": _error_bars(g), "showlegend": cell == 0}, cell)
        picked = G.at_choice(rows, choice)
        fig.add({"x": picked["grid"], "y": picked["mean"], "mode": "markers", "name": "chosen on validation",
                 "marker": {"symbol": "star", "size": 16, "color": "#ff7f0e"}, "showlegend": cell == 0}, cell)
        fig.axis("x", cell, title={"text": key}, type="log" if G.log_axis(summary["grid"]) else "linear")
    p.body.append(fig.html("fig-grid-0"))
    p.body.append(table_html(choice, "grid_choice"))
    p.meta["grid_note"] = (f"each arm's {key} is the value with the highest mean over seeds of "
                           f"{A.TRAIN_SUITE}/{G.SELECT_METRIC} (the sweeps' objective); test sets play no part in "
                           "the choice. The chosen value's validation mean is optimistic (the best of several noisy "
                           "means), its test numbers are not")
    p.meta["grid_shown"] = shown
    p.say(p.meta["grid_note"], "info")
    if len(p.tables["grid_paired"]):
        p.body.append("<h3>At the chosen values: VIMPO minus each baseline, paired by seed</h3>")
        p.body.append(table_html(paired_display(p.tables["grid_paired"]), "grid_paired"))


def beta_sweep(p: Panel, data, labels, style):
    t = G.sweep_table(data)
    key = G.grid_key(data)
    if t.empty and key is None:
        p.say("no beta-sweep trials in these runs (runs tagged vimpo.kind=sweep), and no training runs that "
              f"vary {' or '.join(G.GRID_KEYS)} within an algorithm")
        return
    if key is not None:
        grid(p, data, key, style)
    if t.empty:
        return
    p.tables["beta_sweep"] = t
    plotted = t.dropna(subset=["beta", "objective"])
    if t["beta"].isna().all():
        p.say("the sweep trials logged no algo.beta param")
    elif plotted.empty:
        p.say("no sweep trial logged sweep/objective")
    else:
        fig = Figure(height=420)
        marks = {"COMPLETE": ("circle", "#1f77b4"), "PRUNED": ("x", "#d62728"), "RUNNING": ("diamond", "#7f7f7f")}
        for state, g in plotted.groupby("state"):
            symbol, color = marks.get(state, ("square", "#8c564b"))
            fig.add({"x": g["beta"], "y": g["objective"], "mode": "markers", "name": state.lower(),
                     "marker": {"symbol": symbol, "size": 10, "color": color}, "text": g["trial"],
                     "hovertemplate": "trial %{text}: beta=%{x:.4g}, objective=%{y:.4g}"})
        for _, best in G.best_per_sweep(plotted).iterrows():
            fig.add({"x": [best["beta"]], "y": [best["objective"]], "mode": "markers", "name": "best complete",
                     "marker": {"symbol": "star", "size": 16, "color": "#ff7f0e"}})
            where = f"of {best['sweep']} " if plotted["sweep"].nunique() > 1 else ""
            p.say(f"best complete trial {where}: beta={best['beta']:.4g}, objective={best['objective']:.4g}".replace(
                " :", ":"), "info")
        fig.axis("x", title={"text": "beta"}, type="log" if G.log_axis(plotted["beta"]) else "linear")
        fig.axis("y", title={"text": "sweep/objective"})
        p.body.append(fig.html("fig-sweep-0"))
    states = t["state"].value_counts()
    p.say("trials: " + ", ".join(f"{k.lower()} {v}" for k, v in states.items())
          + ("; pruned trials show their last reported value" if "PRUNED" in states else ""), "info")


def moving_ref(p: Panel, data, labels, style):
    events = R.ref_update_steps(data.history)
    if events.empty:
        p.say("no pi_ref updates in these runs (vimpo/ref_update is never 1): nothing to align")
        return
    widths = R.ref_update_windows(events)
    w = R.ref_windows(data.history, labels, [k for k, _ in REF_METRICS], widths)
    p.tables |= {"ref_update_windows": w, "ref_updates": R.ref_update_table(data.history, labels)}
    fig = Figure(rows=1, cols=3, titles=[t for _, t in REF_METRICS], height=400)
    shown = set()
    for j, (key, _) in enumerate(REF_METRICS):
        arm_bands(fig, j, w[w["key"] == key], "offset", style, shown)
        fig.vline(-0.5, cell=j)
        fig.axis("x", j, title={"text": "steps from the pi_ref update"})
    p.body.append(fig.html("fig-ref-0"))
    spans = ", ".join(f"±{k} ({n} run{'s' if n > 1 else ''})" for k, n in widths.value_counts().sort_index().items())
    p.say(f"{len(events)} update(s) in {events['run_id'].nunique()} run(s); window per run, half its typical gap "
          f"between updates, at most ±5 steps: {spans} (offset 0 = first step with the new reference); mean over "
          "a run's updates, then over seeds", "info")
    beta = A.curves(data.history, labels, ["vimpo/beta", "loss/value"])
    fig = Figure(height=380, secondary_y=True)
    for (arm, cond, key), g in beta.groupby(["arm", "condition", "key"], sort=False):
        name = style.name(arm, cond)
        fig.add({"x": g["step"], "y": g["mean"], "mode": "lines", "name": f"{name}: {'beta' if key == 'vimpo/beta' else 'value loss'}",
                 "line": {"color": style.color(arm), "dash": "solid" if key == "vimpo/beta" else "dot"}},
                secondary=key != "vimpo/beta")
    steps = sorted(events["update_step"].unique())
    fig.add({"x": steps, "y": [0] * len(steps), "mode": "markers", "name": "pi_ref update",
             "marker": {"symbol": "triangle-up", "size": 9, "color": "#444"}})
    fig.axis("y", title={"text": "beta"})
    fig.axis("x", title={"text": "step"})
    fig.layout["yaxis99"]["title"] = {"text": "value loss"}
    p.body.append("<h3>beta annealing and value loss, pi_ref updates marked</h3>")
    if not (beta["key"] == "vimpo/beta").any():
        p.say("no vimpo/beta logged: beta schedule not shown")
    p.body.append(fig.html("fig-ref-1"))
    if len(p.tables["ref_updates"]):
        p.body.append(table_html(p.tables["ref_updates"], "ref_updates"))


def diagnostics(p: Panel, data, labels, style):
    adv = R.adv_by_position(data.adv, labels)
    if adv.empty:
        p.say("no diagnostics/adv_by_position*.jsonl artifacts in these runs")
    else:
        p.tables["adv_by_position"] = adv
        fig = Figure(height=380)
        for (arm, correct), g in adv.groupby(["arm", "correct"], sort=False):
            fig.add({"x": g["position"], "y": g["mean_adv"], "mode": "lines", "name": f"{arm}: {'right' if correct else 'wrong'}",
                     "line": {"color": style.color(arm), "dash": "solid" if correct else "dash"}})
        fig.axis("x", title={"text": "token position"})
        fig.axis("y", title={"text": "mean advantage"})
        p.body.append("<h3>implied advantage by token position (last diagnosed step)</h3>")
        p.body.append(fig.html("fig-diag-0"))
    vl = A.curves(data.history, labels, ["loss/value"])
    if vl.empty:
        p.say("no loss/value logged (VIMPO runs log it)")
        return
    p.tables["value_loss"] = vl
    fig = Figure(height=360)
    arm_bands(fig, 0, vl, "step", style, set())
    fig.axis("x", title={"text": "step"})
    fig.axis("y", title={"text": "loss/value"})
    p.body.append("<h3>value loss over training</h3>")
    p.body.append(fig.html("fig-diag-1"))


def _problem(r) -> str:
    return (f'<details class="problem"><summary>{esc(r["suite"])} · {esc(r["problem_id"])}: solve rate '
            f'{r["rate_solver"]:.2f} vs {r["rate_other"]:.2f}</summary><p><b>prompt</b></p><pre>{esc(r["prompt"])}</pre>'
            f'<p><b>gold</b>: {esc(r["gold"])}; <b>{esc(r["does_not"])} extracted</b>: {esc(r["extracted_other"])}</p>'
            f'<div class="cols"><div><b>{esc(r["solves"])} (right)</b><pre>{esc(r["completion_solver"])}</pre></div>'
            f'<div><b>{esc(r["does_not"])} (wrong)</b><pre>{esc(r["completion_other"])}</pre></div></div></details>')


def drilldown(p: Panel, data, labels, style):
    rows, counts, source = P.drilldown(data, labels)
    if not source:
        p.say("no graded completions: no samples.jsonl in eval runs and no samples/step_*.jsonl in "
              "training runs")
        return
    where = ("eval runs' samples.jsonl" if source == "eval"
             else "the training runs' last in-training evaluation (no eval runs with samples)")
    p.say(f"from {where}; an arm solves a problem when at least half its samples over all seeds are "
          "right", "info")
    p.tables["drilldown_counts"] = counts
    if counts.empty:
        p.say("only one arm has graded completions: nothing to compare")
        return
    multi = counts["condition"].nunique() > 1
    p.body.append(table_html(counts if multi else counts.drop(columns="condition"), "drilldown_counts"))
    if rows.empty:
        p.say("no problem is solved by one arm and not by the other")
        return
    p.tables["drilldown"] = rows
    for (solver, other, cond), g in rows.groupby(["solves", "does_not", "condition"], sort=False):
        where = f" at {cond}" if multi and cond else ""
        p.body.append(f"<h3>{esc(solver)} solves, {esc(other)} does not{esc(where)} ({len(g)} shown)</h3>")
        p.body.extend(_problem(r) for _, r in g.iterrows())


def provenance(p: Panel, data, labels, style):
    table, notes = P.provenance(data)
    if table.empty:
        p.say("no provenance tags (git_commit, versions.*, grader_version) on these runs")
        return
    p.tables["provenance"] = table
    for n in notes:
        p.say(n, "warn")
    p.meta["summary"] = summary = P.provenance_summary(table)
    p.body.append(table_html(summary))
    p.body.append(f"<details><summary>per run</summary>{table_html(table, 'provenance')}</details>")


@dataclass(frozen=True)
class PanelSpec:
    """One topic of the page: its id, title and question, and `fill(panel, data, labels, style, threshold)`,
    which builds the panel's tables, notes and HTML (and says when it does not apply). The Markdown page
    writes the same topics in the same order (markdown.SECTIONS, keyed by id)."""

    id: str
    title: str
    question: str
    fill: Callable


def _with_threshold(fill: Callable) -> Callable:
    return lambda panel, data, labels, style, threshold: fill(panel, data, labels, style, threshold)


def _plain(fill: Callable) -> Callable:
    return lambda panel, data, labels, style, threshold: fill(panel, data, labels, style)


# The one list of topics, in page order (HTML and Markdown): the answer's figures first, then what explains them.
PANELS = [
    PanelSpec("overview", "Overview", "Which runs, what differs between them, did they finish, how long did they "
              "take?", _plain(overview)),
    PanelSpec("final-eval", "Final evaluation", "Does VIMPO beat each baseline at the end, by how much, how sure are "
              "we?", _plain(final_eval)),
    PanelSpec("curves", "Learning curves", "Does VIMPO learn faster than the baselines, per step and per second? "
              "Mean over seeds; band = 95% t interval.", _with_threshold(learning_curves)),
    PanelSpec("noisy", "Noisy rewards", "How does final accuracy fall as the reward gets noisier, per algorithm?",
              _plain(noisy_rewards)),
    PanelSpec("sweep", "beta sweep", "How does the objective depend on beta across the sweep's trials?",
              _plain(beta_sweep)),
    PanelSpec("moving-ref", "Moving pi_ref", "What happens to value loss, residual and KL when the reference moves, "
              "as beta anneals?", _plain(moving_ref)),
    PanelSpec("diagnostics", "VIMPO diagnostics", "Where in a response does the implied advantage go, for right and "
              "wrong answers, and does the value loss settle?", _plain(diagnostics)),
    PanelSpec("drilldown", "Per-problem drill-down", "Which problems does one algorithm solve and the other not, and "
              "what did each write?", _plain(drilldown)),
    PanelSpec("provenance", "Provenance", "Can every run be reproduced: commits, versions, data, grader?",
              _plain(provenance)),
]


def build_panels(data, threshold: float | None = None) -> tuple[list[Panel], pd.DataFrame, Style]:
    """The panels (HTML body, tables, notes) of `data`, the arm labels and the style they were drawn with.
    `threshold`: the validation accuracy of the steps-to-threshold table (None: its default)."""
    labels = A.label_arms(data)
    style = Style(labels)
    out = []
    for spec in PANELS:
        panel = Panel(spec.id, spec.title, spec.question)
        try:
            spec.fill(panel, data, labels, style, threshold)
        except Exception as exc:  # one broken panel must not hide the other eight
            panel.error = f"{type(exc).__name__}: {exc}"
        out.append(panel)
    return out, labels, style
