"""Run tracking. The only module that imports mlflow (house rule 4).

Library code takes a `Tracker`; the default `NullTracker` records nothing. `MlflowTracker` writes to
`MLFLOW_TRACKING_URI` when set, else to a local store in the working directory: `mlflow.db`
(sqlite) for runs and metrics, `mlartifacts/` for artifacts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from vimpo_bench import faults
from vimpo_bench.runs import locks
from vimpo_bench import net

DEFAULT_EXPERIMENT = "vimpo-bench"
# Seconds to wait for a tracking server to accept a connection; MLflow's own HTTP retries take minutes.
CONNECT_TIMEOUT = 5.0


class TrackingUnavailable(ConnectionError):
    """The tracking store cannot be reached; the message shows its URI without a password."""


class StoreFull(OSError):
    """The tracking store cannot record: its disk is full. The message names the file."""


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else the local sqlite store `./mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def missing_sqlite_store(tracking_uri: str | None = None) -> Path | None:
    """The file of a local sqlite store that does not exist yet, else None. Readers check this first:
    opening such a store through MLflow would create an empty one as a side effect."""
    where = tracking_uri or default_tracking_uri()
    if where.startswith("sqlite:///"):
        path = Path(where[len("sqlite:///"):])
        if not path.is_file():
            return path
    return None


def check_readable_store(tracking_uri: str | None = None) -> None:
    """Raise ValueError unless a local sqlite store is an MLflow database (checked read-only): readers call
    this first, since MLflow opening a missing or empty file would make it a new, empty store."""
    where = tracking_uri or default_tracking_uri()
    missing = missing_sqlite_store(where)
    if missing:
        raise ValueError(f"no MLflow store at {missing} (give --tracking-uri or set MLFLOW_TRACKING_URI)")
    if not where.startswith("sqlite:///"):
        return
    import sqlite3
    from contextlib import closing

    path = Path(where[len("sqlite:///"):])
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is not an MLflow store: an empty file")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise ValueError(f"{path} is not an MLflow store ({exc})") from exc
    if not {"runs", "experiments"} <= tables:
        raise ValueError(f"{path} is not an MLflow store: it has no runs table")


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ***."""
    try:
        parts = urlsplit(uri)
        if parts.password is None:
            return uri
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return uri


def check_reachable(uri: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise TrackingUnavailable within about `timeout` seconds unless an http(s) tracking server accepts a
    TCP connection (MLflow would retry for minutes without a word). The deadline covers the name lookup
    too: the system resolver has no timeout of its own and can hang far longer on a bad DNS setup."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        net.connect_url(uri, timeout)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise TrackingUnavailable(f"MLflow tracking server {redact_uri(uri)} is unreachable: {reason} "
                                  "(check MLFLOW_TRACKING_URI)") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params are flat."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_table(self, data: dict[str, list], artifact_file: str) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...
    def last_step(self, key: str) -> int | None: ...


class NullTracker:
    """Records nothing; the default for library calls."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_dict(self, data: Any, artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        pass

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def last_step(self, key: str) -> int | None:
        return None


_READY: set[str] = set()  # stores this process has checked (and, for sqlite, created under the lock)


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    if uri not in _READY:
        # MLflow logs a failed commit's traceback (45 lines for a full disk) and then raises it: the raise is enough.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        check_reachable(uri)
        if uri.startswith("sqlite:///"):
            # Two first runs on a new store at once both run MLflow's schema migration and one crashes: the
            # first use per process happens under a lock file beside the database (MLflow caches the store).
            db = Path(uri[len("sqlite:///"):])
            with locks.file_lock(db.with_name(db.name + ".lock")):
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        _READY.add(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created (artifacts under ./mlartifacts for a local store) if missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_location = None
    if client.tracking_uri.startswith("sqlite:") or client.tracking_uri.startswith("file:"):
        artifact_location = Path("mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _store_full(uri: str, exc: Exception, what: str) -> StoreFull:
    where = getattr(exc, "filename", None) or (uri[len("sqlite:///"):] if uri.startswith("sqlite:///")
                                               else redact_uri(uri))
    return StoreFull(f"MLflow store {where}: the disk is full ({what} cannot be recorded)")


@contextlib.contextmanager
def _full_store_in_one_line(uri: str, what: str):
    """A write to the store that fails for a full disk is one line naming the store's file (StoreFull)."""
    try:
        yield
    except Exception as exc:
        if faults.disk_full(exc):
            raise _store_full(uri, exc, what) from exc
        raise


def _recording(method):
    """A tracker method whose failure for a full disk is one line naming the store's file (StoreFull)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with _full_store_in_one_line(self.client.tracking_uri, f"run {self.run_id}"):
            return method(self, *args, **kwargs)

    return call


class MlflowTracker:
    """One MLflow run. Start a new one with `MlflowTracker.start(...)` or reopen with `.resume(run_id)`."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        run_name: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        tags: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
        tracking_uri: str | None = None,
    ) -> MlflowTracker:
        client = _client(tracking_uri)
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        with _full_store_in_one_line(client.tracking_uri, "a new run"):
            run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id)

    @classmethod
    def resume(cls, run_id: str, tracking_uri: str | None = None) -> MlflowTracker:
        check_readable_store(tracking_uri)  # never a new, empty store made to look the run up in
        client = _client(tracking_uri)
        try:
            client.get_run(run_id)
        except Exception as exc:
            raise ValueError(f"no MLflow run with id {run_id!r} in {redact_uri(client.tracking_uri)}") from exc
        client.update_run(run_id, status="RUNNING")
        return cls(client, run_id)

    @classmethod
    def attach(cls, run_id: str, tracking_uri: str | None = None) -> MlflowTracker:
        """A handle on an existing run that leaves its status alone (to add tags or metrics after it ended)."""
        return cls(_client(tracking_uri), run_id)

    @_recording
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    @_recording
    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @_recording
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 500])

    @_recording
    def log_dict(self, data: Any, artifact_file: str) -> None:
        if artifact_file.endswith((".yaml", ".yml")):
            self.client.log_dict(self.run_id, data, artifact_file)
        else:
            self.client.log_text(self.run_id, json.dumps(data, indent=1, default=str), artifact_file)

    @_recording
    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    @_recording
    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        """MLflow's table logging: the MLflow UI shows it as a browsable table (Evaluation / artifacts)."""
        self.client.log_table(self.run_id, data, artifact_file)

    @_recording
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(local_path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    @_recording
    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def last_step(self, key: str) -> int | None:
        """The highest step at which this run logged metric `key` (None: never)."""
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=None)


# --- Reading runs back (used by `vimpo_bench.report`). Plain Python values out, no mlflow types. ---


def _run_record(run, experiment_names: dict[str, str]) -> dict[str, Any]:
    info, data = run.info, run.data
    return {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "experiment_id": info.experiment_id,
        "experiment": experiment_names.get(info.experiment_id, info.experiment_id),
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "artifact_uri": info.artifact_uri,
        "params": dict(data.params),
        "tags": dict(data.tags),
        "metrics": dict(data.metrics),
    }


def search_runs(
    experiment_names: list[str] | None = None,
    filter_string: str = "",
    tracking_uri: str | None = None,
) -> list[dict[str, Any]]:
    """Active runs of the named experiments (every active experiment when None) that match the MLflow
    `filter_string`, as dicts: run_id, run_name, experiment_id, experiment, status, start_time and
    end_time (ms since epoch; end_time None while running), params, tags, metrics (latest values).
    Names that match no experiment are skipped; an empty list means nothing matched."""
    from mlflow.entities import ViewType

    client = _client(tracking_uri)
    if experiment_names is None:
        experiments, token = [], None
        while True:
            page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
            experiments.extend(page)
            token = page.token
            if not token:
                break
    else:
        experiments = [e for e in (client.get_experiment_by_name(n) for n in experiment_names) if e]
    names = {e.experiment_id: e.name for e in experiments}
    out: list[dict[str, Any]] = []
    if not names:
        return out
    token = None
    while True:
        page = client.search_runs(
            list(names),
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=5000,
            page_token=token,
        )
        out.extend(_run_record(run, names) for run in page)
        token = page.token
        if not token:
            return out


def get_runs(run_ids: list[str], tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """The runs with these ids, as `search_runs` returns them; an unknown id raises ValueError."""
    client = _client(tracking_uri)
    out, names = [], {}
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            raise ValueError(f"no MLflow run with id {run_id!r} in {client.tracking_uri}") from exc
        exp_id = run.info.experiment_id
        if exp_id not in names:
            names[exp_id] = client.get_experiment(exp_id).name
        out.append(_run_record(run, names))
    return out


# The metric-history fast path reads MLflow internals that its public API has no bulk form of: the
# SqlAlchemyStore behind MlflowClient (`client._tracking_client.store`, its `engine`) and the ORM model of
# the metrics table (`SqlMetric` and these columns). They have been stable for years, but are private:
# pyproject.toml pins mlflow to MLFLOW_TESTED, and tests/test_report.py fails, naming what moved, when the
# installed MLflow is outside it or the fast path no longer finds them (it then falls back to the public API).
MLFLOW_TESTED = ">=3.17,<3.18"
METRIC_COLUMNS = ("run_uuid", "key", "step", "timestamp", "value", "is_nan")


def metric_histories(
    run_ids: list[str], keys: list[str] | None = None, tracking_uri: str | None = None
) -> list[tuple[str, str, int, int, float]]:
    """Every logged value of the metrics `keys` (all metrics when None) of these runs, as tuples
    (run_id, key, step, timestamp_ms, value); NaN values come back as NaN.

    On a database store (sqlite, postgres, ...) this is one SQL query per 500 runs over MLflow's own
    table model; MLflow's public `get_metric_history` costs a call per (run, key), ~20x slower for 50
    runs x 500 steps (benchmarks/bench_report.py). Other stores, or an MLflow whose internals moved,
    fall back to that public API."""
    client = _client(tracking_uri)
    fast = sql_metric_store(client)
    if fast is not None:
        return _metric_histories_sql(*fast, run_ids, keys)
    return _metric_histories_api(client, run_ids, keys)


def sql_metric_store(client):
    """(MLflow's SqlAlchemyStore behind `client`, its metrics-table model) when the fast path can read
    them, else None: a store that is not a database, or an MLflow whose internals are not where they were."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # mlflow-skinny without sqlalchemy, or the modules moved
        return None
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if not isinstance(store, SqlAlchemyStore) or getattr(store, "engine", None) is None:
        return None
    if not all(hasattr(SqlMetric, column) for column in METRIC_COLUMNS):
        return None
    return store, SqlMetric


def _metric_histories_sql(store, SqlMetric, run_ids, keys):
    # SQLAlchemy writes the query for the store's dialect (quoting, IN lists); the rows come straight
    # from the DBAPI cursor, which is 2-3x faster than SQLAlchemy's row processing for 10^5+ rows.
    import sqlalchemy as sa

    columns = [getattr(SqlMetric, column) for column in METRIC_COLUMNS]
    out: list[tuple[str, str, int, int, float]] = []
    nan = float("nan")
    conn = store.engine.raw_connection()
    try:
        cursor = conn.cursor()
        for i in range(0, len(run_ids), 500):
            stmt = sa.select(*columns).where(SqlMetric.run_uuid.in_(list(run_ids[i : i + 500])))
            if keys is not None:
                stmt = stmt.where(SqlMetric.key.in_(list(keys)))
            compiled = stmt.compile(dialect=store.engine.dialect, compile_kwargs={"render_postcompile": True})
            params = compiled.params
            args = tuple(params[k] for k in compiled.positiontup) if compiled.positional else params
            cursor.execute(str(compiled), args)
            out.extend((r, k, s, t, nan if is_nan else v) for r, k, s, t, v, is_nan in cursor.fetchall())
        cursor.close()
    finally:
        conn.close()
    return out


def _metric_histories_api(client, run_ids, keys):
    out: list[tuple[str, str, int, int, float]] = []
    for run_id in run_ids:
        run_keys = keys if keys is not None else list(client.get_run(run_id).data.metrics)
        for key in run_keys:
            out.extend((run_id, key, m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
    return out


def _local_artifact_dir(artifact_uri: str | None) -> Path | None:
    """The folder of a run's artifacts when they are on this machine's file system, else None."""
    if not artifact_uri:
        return None
    from urllib.parse import unquote, urlparse

    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


def list_artifacts(
    run_id: str, path: str | None = None, tracking_uri: str | None = None, artifact_uri: str | None = None
) -> list[str]:
    """Paths of the files directly under `path` in the run's artifacts (empty when there are none).
    With the run's `artifact_uri` (as `search_runs` gives it) local artifacts are listed directly."""
    local = _local_artifact_dir(artifact_uri)
    if local is not None:
        folder = local / path if path else local
        if not folder.is_dir():
            return []
        return sorted(str(p.relative_to(local)) for p in folder.iterdir() if p.is_file())
    try:
        return [f.path for f in _client(tracking_uri).list_artifacts(run_id, path) if not f.is_dir]
    except Exception:  # an artifact store that cannot be listed reads as empty
        return []


def read_artifact_text(
    run_id: str, path: str, tracking_uri: str | None = None, artifact_uri: str | None = None
) -> str | None:
    """The text of one artifact file, or None when the run has no such artifact. With the run's
    `artifact_uri`, local artifacts are read in place (MLflow's download costs ~40 ms a file); other
    stores download, with MLflow's progress bar off (library code never prints) unless
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR is set."""
    import tempfile

    local = _local_artifact_dir(artifact_uri)
    if local is not None:
        file = local / path
        return file.read_text(encoding="utf-8") if file.is_file() else None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local_path = client.download_artifacts(run_id, path, tmp)
        except Exception:
            return None
        p = Path(local_path)
        return p.read_text(encoding="utf-8") if p.is_file() else None


def log_metric_rows(tracker: MlflowTracker, rows: list[tuple[str, float, int, int]]) -> None:
    """Log many (key, value, timestamp_ms, step) rows in batches of 1000 (MLflow's log_batch limit), with
    the given timestamps: for importing or synthesizing whole histories at once."""
    from mlflow.entities import Metric

    batch = [Metric(k, float(v), int(t), int(s)) for k, v, t, s in rows]
    for i in range(0, len(batch), 1000):
        tracker.client.log_batch(tracker.run_id, metrics=batch[i : i + 1000])
