"""Means and 95% intervals for the report: small pure functions over numbers and DataFrames.

Seeds are the unit of replication: an interval "over seeds" treats each seed's value as one draw, so
with n seeds it is the Student-t interval mean +- t_{n-1} * sd / sqrt(n). One seed gives no interval
(NaN bounds), never a made-up one. `bootstrap_interval` is the distribution-free alternative for
when a t interval's normality assumption is doubtful and there are enough draws (>= ~10).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # t quantile; far lighter to import than scipy.stats

LEVEL = 0.95


def _finite(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    return x[np.isfinite(x)]


def t_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite `values`; low/high are NaN when n < 2, all NaN when n = 0.

    Example: [1, 2, 3] has mean 2, sd 1 and t_{2, 0.975} = 4.303, so (2.0, -0.484, 4.484, 3).
    """
    x = _finite(values)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    half = float(stdtrit(n - 1, 0.5 + level / 2) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def bootstrap_interval(
    values: Iterable[float], level: float = LEVEL, n_boot: int = 4000, seed: int = 0
) -> tuple[float, float, float, int]:
    """(mean, low, high, n): percentile bootstrap of the mean; NaN bounds when n < 2."""
    x = _finite(values)
    n = len(x)
    if n < 2:
        return (float(x.mean()) if n else math.nan), math.nan, math.nan, n
    means = np.random.default_rng(seed).choice(x, size=(n_boot, n), replace=True).mean(axis=1)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(x.mean()), float(low), float(high), n


def summarize(df: pd.DataFrame, by: list[str], value: str = "value", level: float = LEVEL) -> pd.DataFrame:
    """Group `df` by `by` and give mean, ci_low, ci_high (t interval) and n of column `value`, vectorized
    (learning curves have groups per step). Non-finite values are left out; groups with none get n = 0."""
    clean = df[np.isfinite(df[value].astype(float))]
    g = clean.groupby(by, sort=True, dropna=False)[value]
    out = g.agg(["mean", "std", "count"]).rename(columns={"count": "n"}).reset_index()
    dof = np.maximum(out["n"].to_numpy() - 1, 1)
    q = stdtrit(dof, 0.5 + level / 2)
    half = q * out["std"].to_numpy() / np.sqrt(np.maximum(out["n"].to_numpy(), 1))
    half = np.where(out["n"].to_numpy() >= 2, half, np.nan)
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    return out.drop(columns="std")


def paired_difference(
    a: Mapping[Any, float], b: Mapping[Any, float], level: float = LEVEL
) -> dict[str, Any]:
    """Mean of a[k] - b[k] over the keys (seeds) present and finite in both, with its t interval.

    Pairing removes the between-seed variance that both arms share (same seed, same data order), so the
    interval is narrower than comparing two independent means. Returns mean, ci_low, ci_high, n_pairs
    and the matched keys (sorted); n_pairs = 0 gives NaNs.
    """
    keys = sorted(
        (k for k in a if k in b and np.isfinite(a[k]) and np.isfinite(b[k])), key=_natural_key
    )
    mean, low, high, n = t_interval([a[k] - b[k] for k in keys], level)
    return {"mean": mean, "ci_low": low, "ci_high": high, "n_pairs": n, "keys": keys}


def _natural_key(k: Any) -> tuple:
    """Sort "2" before "10": numbers by value, then everything else as text."""
    try:
        return (0, float(k), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(k))


def natural_sorted(values: Iterable[Any]) -> list[Any]:
    return sorted(values, key=_natural_key)


def interval_cells(frame, mean: str = "mean", n: str = "n") -> list[str]:
    """`format_interval` of each row of a table with columns `mean`, ci_low, ci_high and `n`."""
    return [format_interval(m, lo, hi, k) for m, lo, hi, k in frame[[mean, "ci_low", "ci_high", n]].itertuples(index=False)]


def format_interval(mean: float, low: float, high: float, n: int, digits: int = 3) -> str:
    """"0.512 [0.470, 0.554] n=3"; "0.512 (n=1, no interval)"; "—" when n = 0."""
    if not n or not np.isfinite(mean):
        return "—"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.{digits}f} (n={n}, no interval)"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] n={n}"
