"""MLflow -> pandas: the runs of a report and everything its panels read.

Selection: `study` (runs tagged vimpo.study=NAME, in any experiment), `experiment` (every active run
of that experiment) or `run_ids`; then every descendant (tag mlflow.parentRunId, transitively) of the
selected runs, so eval runs nested under a training run and the trials of a sweep come along.
Nothing matching raises ValueError with one line.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vimpo_bench.runs import owners, tracking

# Metric histories the panels plot (training runs only); everything else comes from latest values.
HISTORY_KEYS = (
    "reward/clean_mean", "reward/trained_mean", "val/greedy_accuracy", "val/sampled_accuracy", "policy/kl_k1", "policy/kl_k3", "policy/entropy", "rollout/response_len",
    "policy/clip_frac", "policy/grad_norm", "rollout/truncation_rate",
    "loss/value", "vimpo/abs_residual", "vimpo/residual_mean", "vimpo/beta", "vimpo/ref_update",
    "vimpo/value_loss_pre_ref_update", "vimpo/value_loss_post_ref_update",
    "vimpo/residual_pre_ref_update", "vimpo/residual_post_ref_update",
)
ADV_ARTIFACT = "diagnostics/adv_by_position.jsonl"  # or one diagnostics/adv_by_position_step_XXXXXX.jsonl per eval
EVAL_SAMPLES_ARTIFACT = "samples.jsonl"  # and records/<suite>.jsonl, as `vimpo-bench eval` logs them
TRAIN_SUITE = "validation"  # the suite name of a training run's own evaluations (val/<metric>, samples/)
RUN_COLUMNS = ["run_id", "run_name", "experiment", "kind", "algo", "seed", "study", "status",
               "start_time", "end_time", "start_ms", "wall_s", "parent_run_id", "artifact_uri"]


@dataclass
class ReportData:
    """What a report is built from. `runs` has one row per run (RUN_COLUMNS); `params`, `tags` and
    `final` (latest metric values) are indexed by run_id; `history` is long:
    run_id, key, step, time_s (seconds since the run started), value; `adv` holds the
    adv_by_position records (run_id, step, position, correct, mean_adv, count); `samples` the graded
    completions (run_id, source, suite, problem_id, prompt, completion, extracted, gold, correct); `manifest`
    the export.json of a committed export the data was read from (None when read from MLflow)."""

    title: str
    selection: str
    runs: pd.DataFrame
    params: pd.DataFrame
    tags: pd.DataFrame
    final: pd.DataFrame
    history: pd.DataFrame
    adv: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Set when the data was read from a committed export (report/export.py): its export.json.
    manifest: dict | None = None
    # The study's pre-declared endpoints (`study.endpoint`, report/endpoint.py), when the runs are a study's.
    endpoint: dict | None = None

    def of_kind(self, kind: str) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == kind]


def select_runs(study=None, experiment=None, run_ids=None, tracking_uri=None) -> tuple[list[dict], str, str]:
    """The run records of the selection plus their descendants, a title and a one-line description."""
    chosen = [x for x in (study, experiment, run_ids) if x]
    if len(chosen) != 1:
        raise ValueError("choose the runs with exactly one of --study NAME, --experiment NAME, --runs ID ...")
    where = tracking_uri or tracking.default_tracking_uri()
    tracking.check_readable_store(where)  # a report only reads: no new store made of a missing or empty file
    if study:
        if "'" in study:
            raise ValueError(f"study name {study!r} must not contain a quote")
        roots = tracking.search_runs(None, f"tags.`vimpo.study` = '{study}'", tracking_uri)
        title, selection = study, f"study {study!r}"
    elif experiment:
        roots = tracking.search_runs([experiment], "", tracking_uri)
        title, selection = experiment, f"experiment {experiment!r}"
    else:
        roots = tracking.get_runs(list(run_ids), tracking_uri)
        title, selection = f"runs-{run_ids[0][:8]}", f"{len(run_ids)} run id(s)"
    if not roots:
        raise ValueError(f"no MLflow runs match {selection} in {where}")
    records = {r["run_id"]: r for r in roots}
    if not experiment:  # bring in the nested runs (eval under train, trials under a sweep)
        experiments = sorted({r["experiment"] for r in roots})
        children: dict[str, list[dict]] = {}
        for r in tracking.search_runs(experiments, "", tracking_uri):
            children.setdefault(r["tags"].get("mlflow.parentRunId", ""), []).append(r)
        frontier = list(records)
        while frontier:
            for child in children.get(frontier.pop(), []):
                if child["run_id"] not in records:
                    records[child["run_id"]] = child
                    frontier.append(child["run_id"])
    # Runs a study rerun superseded (killed, then replaced by a new run of the same cell) are not results;
    # nor are eval runs left RUNNING by a process that died (the next `eval` marks them KILLED; a report
    # only reads, so it leaves them out).
    kept = [r for r in records.values() if r["tags"].get("vimpo.cell_status") != "superseded"
            and not (r["status"] == "RUNNING" and owners.owner_gone(r["tags"]))]
    return kept, title, selection


def _kind(r: dict) -> str:
    kind = r["tags"].get("vimpo.kind")
    if kind:
        return kind
    return "train" if "algo.name" in r["params"] else "other"


def runs_frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        tags, params = r["tags"], r["params"]
        start, end = r["start_time"], r["end_time"]
        rows.append({
            "run_id": r["run_id"], "run_name": r["run_name"], "experiment": r["experiment"], "kind": _kind(r),
            "algo": tags.get("vimpo.algo") or params.get("algo.name") or "",
            "seed": tags.get("vimpo.seed") or params.get("run.seed") or params.get("train.seed") or "",
            "study": tags.get("vimpo.study", ""), "status": r["status"],
            "start_time": pd.to_datetime(start, unit="ms", utc=True) if start else pd.NaT,
            "end_time": pd.to_datetime(end, unit="ms", utc=True) if end else pd.NaT,
            "start_ms": float(start) if start else np.nan,
            "wall_s": (end - start) / 1000 if start and end else np.nan,
            "parent_run_id": tags.get("mlflow.parentRunId", ""), "artifact_uri": r.get("artifact_uri"),
        })
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return runs.sort_values(["kind", "algo", "start_time"], kind="stable").reset_index(drop=True)


def history_frame(runs: pd.DataFrame, tracking_uri=None, keys=HISTORY_KEYS) -> pd.DataFrame:
    """Metric histories of the training runs, one SQL query on a database store."""
    train = runs[runs["kind"] == "train"]
    rows = tracking.metric_histories(train["run_id"].tolist(), list(keys), tracking_uri) if len(train) else []
    hist = pd.DataFrame(rows, columns=["run_id", "key", "step", "timestamp", "value"])
    start_ms = train.set_index("run_id")["start_ms"].astype(float)
    hist["time_s"] = (hist["timestamp"] - hist["run_id"].map(start_ms)) / 1000
    # A step logged twice (a resumed run) keeps its last value.
    hist = hist.sort_values(["run_id", "key", "step", "timestamp"]).drop_duplicates(["run_id", "key", "step"], keep="last")
    return hist.drop(columns="timestamp").reset_index(drop=True)


def _jsonl(text: str | None) -> list[dict]:
    if not text:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a crashed run
    return out


def _train_samples(run_id: str, tracking_uri, artifact_uri) -> list[dict]:
    """The graded completions of the run's last evaluation on the validation split (samples/step_XXXXXX.jsonl).
    Records carry {id, prompt, completion, answer (extracted), gold, correct} as the trainer writes
    them, or {question, completion, answer (gold), correct} as docs/metrics.md words it."""
    listed = tracking.list_artifacts(run_id, "samples", tracking_uri, artifact_uri)
    files = sorted(p for p in listed if p.endswith(".jsonl"))
    if not files:
        return []
    records = _jsonl(tracking.read_artifact_text(run_id, files[-1], tracking_uri, artifact_uri))
    prompts = {r.get("id"): r.get("prompt") for r in records if r.get("prompt")}  # sampled rows omit it
    out = []
    for rec in records:
        prompt = str(rec.get("question") or rec.get("prompt") or prompts.get(rec.get("id")) or "")
        has_gold = "gold" in rec
        out.append({"problem_id": str(rec.get("problem_id") or rec.get("id")
                                      or "q-" + hashlib.sha1(prompt.encode()).hexdigest()[:10]),
                    "prompt": prompt, "completion": rec.get("completion", ""),
                    "extracted": rec.get("extracted", rec.get("answer", "") if has_gold else ""),
                    "gold": rec.get("gold", "") if has_gold else rec.get("answer", ""),
                    "correct": bool(rec.get("correct", False)), "suite": TRAIN_SUITE})
    return out


def _adv_records(run_id: str, tracking_uri, artifact_uri) -> list[dict]:
    """adv_by_position records: the single file, else the last of the per-evaluation files."""
    records = _jsonl(tracking.read_artifact_text(run_id, ADV_ARTIFACT, tracking_uri, artifact_uri))
    if not records:
        listed = tracking.list_artifacts(run_id, "diagnostics", tracking_uri, artifact_uri)
        steps = sorted(p for p in listed if p.rsplit("/", 1)[-1].startswith("adv_by_position_step_") and p.endswith(".jsonl"))
        if steps:
            records = _jsonl(tracking.read_artifact_text(run_id, steps[-1], tracking_uri, artifact_uri))
    return [dict(r, run_id=run_id) for r in records]


def _eval_samples(run_id: str, tracking_uri, artifact_uri) -> list[dict]:
    """Per-sample records of an eval run: samples.jsonl and records/<suite>.jsonl (suite from the name)."""
    files = [(EVAL_SAMPLES_ARTIFACT, None)]
    files += [(p, p.rsplit("/", 1)[-1][: -len(".jsonl")])
              for p in tracking.list_artifacts(run_id, "records", tracking_uri, artifact_uri) if p.endswith(".jsonl")]
    out = []
    for path, suite in files:
        for rec in _jsonl(tracking.read_artifact_text(run_id, path, tracking_uri, artifact_uri)):
            out.append(dict(rec, correct=bool(rec.get("correct", False)), suite=rec.get("suite") or suite))
    return out


def artifact_frames(runs: pd.DataFrame, final: pd.DataFrame, tracking_uri=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(adv_by_position records of training runs, graded samples of eval runs and training runs)."""
    train = runs.loc[runs["kind"] == "train", "run_id"].tolist()
    evals = runs.loc[runs["kind"] == "eval", "run_id"].tolist()
    where = dict(zip(runs["run_id"], runs["artifact_uri"], strict=True))

    def adv(run_id):
        return _adv_records(run_id, tracking_uri, where[run_id])

    def suites_of(run_id):
        cols = [c for c in final.columns if c.startswith("eval/") and c.count("/") == 2]
        row = final.loc[run_id, cols] if run_id in final.index else pd.Series(dtype=float)
        return sorted({c.split("/")[1] for c, v in row.items() if pd.notna(v)})

    def ev(run_id):
        suites = suites_of(run_id)
        default = suites[0] if len(suites) == 1 else "eval"
        return [dict(r, run_id=run_id, source="eval", suite=r.get("suite") or default)
                for r in _eval_samples(run_id, tracking_uri, where[run_id])]

    def tr(run_id):
        return [dict(r, run_id=run_id, source="train") for r in _train_samples(run_id, tracking_uri, where[run_id])]

    # Artifact reads are I/O-bound round trips (a copy on a local store, HTTP on a server): overlap them.
    with ThreadPoolExecutor(max_workers=8) as pool:
        adv_rows = [r for rows in pool.map(adv, train) for r in rows]
        sample_rows = [r for rows in pool.map(ev, evals) for r in rows]
        sample_rows += [r for rows in pool.map(tr, train) for r in rows]
    adv_df = pd.DataFrame(adv_rows, columns=["run_id", "step", "position", "correct", "mean_adv", "count"])
    cols = ["run_id", "source", "suite", "problem_id", "prompt", "completion", "extracted", "gold", "correct"]
    samples = pd.DataFrame(sample_rows)
    for c in cols:
        if c not in samples:
            samples[c] = "" if c != "correct" else False
    samples = samples[cols].astype({"problem_id": str, "suite": str})
    return adv_df, samples


def collect(study=None, experiment=None, run_ids=None, tracking_uri=None) -> ReportData:
    """Everything a report needs from MLflow, as pandas frames (see ReportData)."""
    records, title, selection = select_runs(study, experiment, run_ids, tracking_uri)
    runs = runs_frame(records)
    by_id = {r["run_id"]: r for r in records}
    ids = runs["run_id"].tolist()
    params = pd.DataFrame([by_id[i]["params"] for i in ids], index=pd.Index(ids, name="run_id"))
    tags = pd.DataFrame([by_id[i]["tags"] for i in ids], index=pd.Index(ids, name="run_id"))
    final = pd.DataFrame([by_id[i]["metrics"] for i in ids], index=pd.Index(ids, name="run_id"), dtype=float)
    history = history_frame(runs, tracking_uri)
    # Running (or crashed) runs have no end time: their wall time is up to their last logged metric.
    last = history.groupby("run_id")["time_s"].max()
    missing = runs["wall_s"].isna() & runs["run_id"].isin(last.index)
    if missing.any():
        runs.loc[missing, "wall_s"] = runs.loc[missing, "run_id"].map(last).astype(float)
    adv, samples = artifact_frames(runs, final, tracking_uri)
    return ReportData(title, selection, runs, params, tags, final, history, adv, samples)
