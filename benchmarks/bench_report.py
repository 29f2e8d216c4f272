"""Time to build a report of 50 training runs x 500 steps (target: under 10 s for collect + render), and
its Markdown page with PNG figures.

    .venv/bin/python benchmarks/bench_report.py                       # store in ./bench_store (kept)
    .venv/bin/python benchmarks/bench_report.py --store /tmp/s --runs 50 --steps 500 --api

The runs are made once (synthetic, shaped like docs/metrics.md, logged with MlflowTracker and
log_batch: ~8 minutes for the default size, as MLflow's sqlite log_batch takes ~2k metric rows/s) and
reused while the store's marker file matches the size asked for. Each timed phase runs in this process
after the imports, which are timed on their own; CPU time is printed beside wall time because a shared
2-core machine stretches wall time. --api also times reading the histories with MLflow's
public per-(run, metric) get_metric_history, the slow way the report avoids.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _make_store(store: Path, runs: int, steps: int) -> None:
    from vimpo_bench.report.synthetic import log_synthetic_study

    store.mkdir(parents=True, exist_ok=True)
    os.chdir(store)  # artifacts of new experiments go to ./mlartifacts
    uri = f"sqlite:///{store / 'mlflow.db'}"
    seeds = tuple(range(1, runs // 10 + 1))  # 2 algorithms x 5 noise rates x runs/10 seeds
    noise = (0.0, 0.1, 0.2, 0.3, 0.4)
    t = time.perf_counter()
    log_synthetic_study(uri, study="bench", seeds=seeds, noise_ps=noise, steps=steps, ref_every=50, sweep_trials=30)
    print(f"made {2 * len(seeds) * len(noise)} training runs x {steps} steps (+ eval runs, 30 sweep trials) "
          f"in {time.perf_counter() - t:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="bench_store", help="folder of the sqlite store (made once, then reused)")
    ap.add_argument("--runs", type=int, default=50, help="training runs (a multiple of 10)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--api", action="store_true", help="also time MLflow's per-metric history API")
    args = ap.parse_args()
    store = Path(args.store).resolve()
    marker = store / "bench.json"
    size = {"runs": args.runs, "steps": args.steps}
    if not marker.is_file() or json.loads(marker.read_text()) != size:
        if (store / "mlflow.db").exists():
            sys.exit(f"{store} holds another size of benchmark store; remove it or pick another --store")
        _make_store(store, args.runs, args.steps)
        marker.write_text(json.dumps(size))
    uri = f"sqlite:///{store / 'mlflow.db'}"

    t0 = time.perf_counter()
    import mlflow  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (MLflow imports it on first store use: ~2-4 s)

    from vimpo_bench.report import collect, write_report
    from vimpo_bench.report.collect import HISTORY_KEYS, history_frame, select_runs
    from vimpo_bench.report.markdown import write_markdown
    from vimpo_bench.runs import tracking
    t_import = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    data = collect(study="bench", tracking_uri=uri)
    t_collect, c_collect = time.perf_counter() - t0, time.process_time() - c0
    train_ids = data.of_kind("train")["run_id"].tolist()

    # collect again, warm, split into its phases
    t0 = time.perf_counter()
    select_runs("bench", None, None, uri)
    t_select = time.perf_counter() - t0
    t0 = time.perf_counter()
    history_frame(data.runs, uri)
    t_history = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    files = write_report(data, store / "reports" / "bench.html")
    t_render, c_render = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    md = write_markdown(data, store / "reports" / "bench.md", "(benchmark)")
    t_md, c_md = time.perf_counter() - t0, time.process_time() - c0

    n_rows = len(data.history)
    print(f"store: {uri}")
    print(f"runs: {len(train_ids)} train, {len(data.runs) - len(train_ids)} other; history rows read: {n_rows:,} "
          f"({len(HISTORY_KEYS)} metrics of the {len(data.final.columns)} logged)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times stretch when the machine is shared)")
    print(f"imports (mlflow, pandas, report)    {t_import:6.2f} s")
    print(f"collect (first store access)        {t_collect:6.2f} s   cpu {c_collect:5.2f} s")
    print(f"  select runs (warm)                {t_select:6.2f} s")
    print(f"  metric histories, one SQL query   {t_history:6.2f} s")
    print(f"render + write HTML and CSV         {t_render:6.2f} s   cpu {c_render:5.2f} s   "
          f"({files.page.stat().st_size / 1e6:.1f} MB page, {len(files.tables)} csv)")
    print(f"render + write Markdown, PNG and CSV  {t_md:6.2f} s   cpu {c_md:5.2f} s   ({len(md.figures)} png)")
    total = t_collect + t_render
    print(f"TOTAL collect + render              {total:6.2f} s   cpu {c_collect + c_render:5.2f} s   "
          f"target < 10 s: {'OK' if total < 10 else 'MISSED'}")
    if files.failed_panels or md.failed_panels:
        print("failed panels:", files.failed_panels or md.failed_panels)
    if args.api:
        client = tracking._client(uri)
        t0 = time.perf_counter()
        rows = tracking._metric_histories_api(client, train_ids, list(HISTORY_KEYS))
        t_api = time.perf_counter() - t0
        print(f"metric histories, MLflow get_metric_history per (run, metric): {t_api:6.2f} s for {len(rows):,} rows "
              f"({len(train_ids) * len(HISTORY_KEYS)} calls); SQL: {t_history:.2f} s, {t_api / t_history:.0f}x faster")


if __name__ == "__main__":
    main()
