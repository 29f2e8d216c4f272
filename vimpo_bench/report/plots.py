"""PNG figures for the Markdown report, drawn with matplotlib's Agg canvas (no display, no pyplot state)
from the tables the HTML panels plot: the numbers come from `analysis`; this module only draws them.

Each function takes tables (and the panels' `Style`, so an arm has the same colour everywhere) and
writes one PNG, returning its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vimpo_bench.report.grid import at_choice, log_axis

GRID = "#e4e7eb"
LINESTYLES = {"solid": "-", "dash": "--", "dot": ":", "dashdot": "-.", "longdash": (0, (8, 3)),
              "longdashdot": (0, (8, 3, 1, 3))}
STATE_MARKS = {"COMPLETE": ("o", "#1f77b4"), "PRUNED": ("x", "#d62728"), "RUNNING": ("D", "#7f7f7f")}


def _figure(cols: int = 1, width: float = 5.6, height: float = 3.8, bottom: float = 0.55,
            right: float = 0.2) -> tuple[Figure, list]:
    """A row of `cols` axes. Margins are fixed, in inches (`bottom` below the axes, `right` beside the last,
    where an outside legend goes): matplotlib's constrained layout would fit them to the labels but costs a
    third of the drawing time."""
    w, h = width * cols + right - 0.2, height  # `width` includes the default 0.2 in right margin
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.8 / w, right=1 - right / w, bottom=bottom / h, top=1 - 0.4 / h, wspace=0.28)
    axes = list(fig.subplots(1, cols, squeeze=False)[0])
    for ax in axes:
        ax.grid(True, color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", metadata={"Software": None})  # no version stamp: stable bytes
    return path


def _legend(ax, outside: bool = False) -> None:
    if ax.get_legend_handles_labels()[0]:
        where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if outside else {}
        ax.legend(fontsize=8, frameon=False, **where)


LEGEND_INSIDE = 4  # series a legend may hold over the data; more go beside the axes (room from `_figure`)
OUTSIDE_LEGEND_WIDTH = 2.6  # inches beside the axes for a legend of "arm | condition" names


def _missing(ax, text: str = "not logged") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#8a6d00")


def _yerr(g: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars from mean/ci_low/ci_high; none where there is no interval."""
    return np.vstack([(g["mean"] - g["ci_low"]).fillna(0), (g["ci_high"] - g["mean"]).fillna(0)])


def groups(frame: pd.DataFrame, by: list[str], style) -> list:
    """frame.groupby(by), the first of `by` being the arm, in the style's arm order (VIMPO first)."""
    order = list(style.colors)
    return sorted(frame.groupby(by, sort=False), key=lambda kv: order.index(kv[0][0]) if kv[0][0] in order else len(order))


def bands(ax, frame: pd.DataFrame, x: str, style, order: str | None = None) -> None:
    """Mean line and 95% band (where two or more points have one) of each (arm, condition) against `x`."""
    if frame.empty:
        _missing(ax)
    for (arm, cond), g in groups(frame, ["arm", "condition"], style):
        g = g.sort_values(order or x)
        color = style.color(arm)
        ax.plot(g[x], g["mean"], color=color, linestyle=LINESTYLES.get(style.dashes.get(cond, "solid"), "-"),
                marker="o" if len(g) < 30 else None, markersize=3, label=style.name(arm, cond))
        ok = (g["ci_low"].notna() & g["ci_high"].notna()).to_numpy()
        if ok.sum() >= 2:
            ax.fill_between(g[x][ok], g["ci_low"][ok], g["ci_high"][ok], color=color, alpha=0.18, linewidth=0)


def curve(frame: pd.DataFrame, title: str, style, wall: bool, path: Path) -> Path:
    """One learning-curves metric against step and (`wall`) against wall time."""
    fig, axes = _figure(2 if wall else 1)
    by_step = axes[0]
    bands(by_step, frame, "step", style, order="step")
    by_step.set_xlabel("step")
    if wall:
        bands(axes[1], frame, "time_s", style, order="step")
        axes[1].set_xlabel("wall time since run start (s)")
    by_step.set_ylabel(title)
    fig.suptitle(f"{title}: mean over seeds, 95% band")
    _legend(by_step)
    return _save(fig, path)


def pass_at_k(table: pd.DataFrame, titles: dict[str, str], style, path: Path) -> Path:
    """pass@k against k, mean and 95% band over seeds per arm (and condition), one axes per suite of `titles`."""
    outside = len(table[["arm", "condition"]].drop_duplicates()) > LEGEND_INSIDE
    fig, axes = _figure(len(titles), width=4.8, right=OUTSIDE_LEGEND_WIDTH if outside else 0.2)
    for ax, (suite, title) in zip(axes, titles.items(), strict=True):
        frame = table[table["suite"] == suite]
        bands(ax, frame, "k", style, order="k")
        ks = sorted(frame["k"].unique())
        if len(ks) <= 16:
            ax.set_xticks(ks)
        ax.set_xlabel("k")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("pass@k")
    _legend(axes[-1] if outside else axes[0], outside)
    return _save(fig, path)


def final_eval(summary: pd.DataFrame, arms: list[str], style, path: Path) -> Path:
    """Dot and 95% bar per arm (and condition) for each suite/metric."""
    series = [(a, c) for a in arms for c in sorted(summary.loc[summary["arm"] == a, "condition"].unique())]
    outside = len(series) > LEGEND_INSIDE
    fig, (ax,) = _figure(width=max(5.6, 1.4 * summary[["suite", "metric"]].drop_duplicates().shape[0] + 2),
                         height=4.4, bottom=1.2, right=OUTSIDE_LEGEND_WIDTH if outside else 0.2)
    cats = list(dict.fromkeys(summary["suite"] + "/" + summary["metric"]))
    width = 0.8 / max(len(series), 1)
    multi = summary["condition"].nunique() > 1
    for i, (arm, cond) in enumerate(series):
        g = summary[(summary["arm"] == arm) & (summary["condition"] == cond)]
        x = np.array([cats.index(s) for s in g["suite"] + "/" + g["metric"]]) - 0.4 + width * (i + 0.5)
        ax.errorbar(x, g["mean"], yerr=_yerr(g), fmt="os^Dv<>"[i % 7], color=style.color(arm), capsize=3,
                    label=f"{arm} | {cond}" if multi and cond else arm)
    ax.set_xticks(range(len(cats)), cats, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("final value")
    _legend(ax, outside)
    return _save(fig, path)


def noisy(table: pd.DataFrame, y_label: str, style, path: Path) -> Path:
    """Final accuracy against the reward noise rate, one line per arm (and condition), 95% bars."""
    fig, (ax,) = _figure()
    multi = table["condition"].nunique() > 1
    for (arm, cond, kind), g in groups(table, ["arm", "condition", "noise_kind"], style):
        g = g.sort_values("noise_rate")
        asym = kind != "symmetric"  # its own series: a marker, never joined to the symmetric line
        ax.errorbar(g["noise_rate"], g["mean"], yerr=_yerr(g), marker="D" if asym else "o", capsize=3,
                    color=style.color(arm), linestyle="none" if asym else "-", markerfacecolor="none" if asym else None,
                    label=(f"{arm} | {cond}" if multi and cond else arm) + (f" | {kind}" if asym else ""))
    ax.set_xlabel("reward noise rate")
    ax.set_ylabel(y_label)
    _legend(ax)
    return _save(fig, path)


def sweep(table: pd.DataFrame, path: Path) -> Path:
    """sweep/objective against beta per trial: complete, pruned (last reported value), best complete."""
    fig, (ax,) = _figure()
    plotted = table.dropna(subset=["beta", "objective"])
    for state, g in plotted.groupby("state"):
        marker, color = STATE_MARKS.get(state, ("s", "#8c564b"))
        ax.scatter(g["beta"], g["objective"], marker=marker, color=color, label=state.lower())
    done = plotted[plotted["state"] == "COMPLETE"]
    if len(done):
        best = done.loc[done["objective"].idxmax()]
        ax.scatter([best["beta"]], [best["objective"]], marker="*", s=220, color="#ff7f0e", label="best complete",
                   zorder=3)
    if log_axis(plotted["beta"]):
        ax.set_xscale("log")
    ax.set_xlabel("beta")
    ax.set_ylabel("sweep/objective")
    _legend(ax)
    return _save(fig, path)


def grid(summary: pd.DataFrame, choice: pd.DataFrame, shown: list[tuple[str, str]], key: str, style,
         path: Path) -> Path:
    """Per (suite, metric) in `shown`, each arm's mean and 95% bar against the grid value; a star at the
    value chosen on validation."""
    fig, axes = _figure(len(shown), width=4.8)
    log = log_axis(summary["grid"])
    for ax, (suite, metric) in zip(axes, shown, strict=True):
        rows = summary[(summary["suite"] == suite) & (summary["metric"] == metric)]
        multi = rows["condition"].nunique() > 1
        for (arm, cond), g in groups(rows, ["arm", "condition"], style):
            g = g.sort_values("grid")
            ax.errorbar(g["grid"], g["mean"], yerr=_yerr(g), marker="o", capsize=3, color=style.color(arm),
                        label=f"{arm} | {cond}" if multi and cond else arm)
        picked = at_choice(rows, choice)
        ax.scatter(picked["grid"], picked["mean"], marker="*", s=220, color="#ff7f0e", zorder=3,
                   label="chosen on validation")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_title(f"{suite}/{metric}", fontsize=10)
    axes[0].set_ylabel("final value, mean over seeds")
    _legend(axes[0])
    return _save(fig, path)


def ref_windows(windows: pd.DataFrame, metrics: list[tuple[str, str]], style, path: Path) -> Path:
    """Each metric at steps around a pi_ref update (offset 0 = first step with the new reference)."""
    fig, axes = _figure(len(metrics), width=4.4)
    for ax, (key, title) in zip(axes, metrics, strict=True):
        bands(ax, windows[windows["key"] == key], "offset", style)
        ax.axvline(-0.5, color="#9aa5b1", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("steps from the pi_ref update")
    _legend(axes[0])
    return _save(fig, path)


def diagnostics(adv: pd.DataFrame, value_loss: pd.DataFrame, style, path: Path) -> Path:
    """Mean advantage by token position (right solid, wrong dashed) and the value loss over training."""
    fig, (left, right) = _figure(2)
    if adv.empty:
        _missing(left, "no adv_by_position artifacts")
    for (arm, correct), g in groups(adv, ["arm", "correct"], style):
        left.plot(g["position"], g["mean_adv"], color=style.color(arm), linestyle="-" if correct else "--",
                  label=f"{arm}: {'right' if correct else 'wrong'}")
    left.set_xlabel("token position")
    left.set_ylabel("mean advantage (last diagnosed step)")
    _legend(left)
    bands(right, value_loss, "step", style, order="step")
    right.set_xlabel("step")
    right.set_ylabel("loss/value")
    _legend(right)
    return _save(fig, path)


def endpoint_seeds(seeds: pd.DataFrame, row: dict, path: Path) -> Path:
    """The primary endpoint: each seed's paired difference (arm - baseline) as a dot, their mean, the t
    interval and the hierarchical-bootstrap interval, and zero."""
    fig, (ax,) = _figure(height=3.2)
    d = seeds["diff"].to_numpy(dtype=float)
    x = np.arange(len(d))
    ax.axhline(0.0, color="#52606d", linewidth=1)
    ax.scatter(x, d, s=18, color="#1f77b4", label="one seed", zorder=3)
    ax.axhline(row["mean_diff"], color="#d62728", linewidth=1.5, label=f"mean {row['mean_diff']:+.3f}")
    ax.axhspan(row["t_low"], row["t_high"], color="#d62728", alpha=0.12, label="95% t interval (seeds)")
    if np.isfinite(row["boot_low"]):
        ax.axhline(row["boot_low"], color="#9467bd", linestyle="--", linewidth=1, label="95% bootstrap (seeds, problems)")
        ax.axhline(row["boot_high"], color="#9467bd", linestyle="--", linewidth=1)
    ax.set_xticks(x, seeds["seed"].astype(str), fontsize=7)
    ax.set_xlabel("seed")
    ax.set_ylabel("paired difference")
    ax.set_title(row["comparison"], fontsize=10)
    _legend(ax)
    return _save(fig, path)
