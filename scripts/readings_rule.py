"""Apply the selection rule written in studies/vimpo_readings.yaml to the study's finished runs.

The rule (declared in the study file before any cell ran): among the readings that keep an actor term
(implied, soft_rtg, residual, mc), the default is the one with the highest seed-mean validation sampled
accuracy at the last step; readings within 1.0 point of the best are tied, a tie goes to the lower
seed-mean KL (policy/kl_k3, mean of the last 10 steps), then to a reading whose fixed point is pi*_beta.
`none` and `grpo` are reported, never chosen. The test set is not read.

    python scripts/readings_rule.py [--tracking-uri URI] [--study vimpo_readings] [--out reports/vimpo_readings/selection.csv]

Reads the MLflow store through the public client (read-only), prints the table and the pick, and writes
the per-reading table (and a per-run one beside it) as CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from vimpo_bench.algorithms.fixed_points import SOUND_KINDS

CANDIDATES = ("implied", "soft_rtg", "residual", "mc")
TIE_POINTS = 1.0
KL_WINDOW = 10


def per_run(client: MlflowClient, study: str) -> pd.DataFrame:
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise SystemExit(f"error: no experiment {study!r} in the store")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`vimpo.kind` = 'train' and tags.`vimpo.study` = '{study}' "
                              "and attributes.status = 'FINISHED'", max_results=10_000)
    rows = []
    for run in runs:
        if run.data.tags.get("vimpo.cell_status") == "superseded":
            continue
        steps = int(run.data.params["optim.steps"])
        val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/sampled_accuracy")}
        greedy = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/greedy_accuracy")}
        kl = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "policy/kl_k3"))
        rows.append({
            "reading": run.data.tags["vimpo.axis.reading"], "seed": int(run.data.params["run.seed"]),
            "run_id": run.info.run_id, "steps": steps,
            "val_sampled_start": val.get(0), "val_sampled_last": val.get(steps),
            "val_greedy_start": greedy.get(0), "val_greedy_last": greedy.get(steps),
            "kl_k3_last10": pd.Series([v for s, v in kl if s > steps - KL_WINDOW]).mean(),
        })
    if not rows:
        raise SystemExit(f"error: study {study!r} has no finished training run")
    return pd.DataFrame(rows).sort_values(["reading", "seed"]).reset_index(drop=True)


def apply_rule(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per reading: seed means, the rule's verdict per reading, `chosen` on the winner."""
    table = runs.groupby("reading").agg(
        seeds=("seed", "nunique"), val_sampled_start=("val_sampled_start", "mean"),
        val_sampled_last=("val_sampled_last", "mean"), val_greedy_start=("val_greedy_start", "mean"),
        val_greedy_last=("val_greedy_last", "mean"), kl_k3_last10=("kl_k3_last10", "mean"),
    ).reset_index()
    table["candidate"] = table.reading.isin(CANDIDATES)
    table["fixed_point_is_beta"] = table.reading.isin(SOUND_KINDS)
    candidates = table[table.candidate]
    best = candidates.val_sampled_last.max()
    table["tied_with_best"] = table.candidate & (table.val_sampled_last >= best - TIE_POINTS / 100)
    tied = table[table.tied_with_best].sort_values(["kl_k3_last10", "fixed_point_is_beta"], ascending=[True, False])
    table["chosen"] = table.reading == tied.reading.iloc[0]
    return table.sort_values("val_sampled_last", ascending=False).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--study", default="vimpo_readings")
    parser.add_argument("--out", type=Path, default=Path("reports/vimpo_readings/selection.csv"))
    args = parser.parse_args()
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    runs = per_run(MlflowClient(), args.study)
    table = apply_rule(runs)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    winner = table[table.chosen].iloc[0]
    print(f"chosen by the rule: {winner.reading} (validation sampled {winner.val_sampled_last:.4f} at the last step, "
          f"KL k3 {winner.kl_k3_last10:.4f}, {winner.seeds} seeds)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6g")
    runs.drop(columns=["run_id"]).to_csv(args.out.with_name(args.out.stem + "_runs.csv"), index=False,
                                         float_format="%.6g")
    print(f"wrote {args.out} and {args.out.with_name(args.out.stem + '_runs.csv')}")


if __name__ == "__main__":
    main()
