"""`vimpo-bench sweep`: Optuna studies in real storages (sqlite files, and a PostgreSQL server the test
starts when the binaries are installed) whose trials are real training runs of the tiny model,
recorded in a real sqlite MLflow store."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from vimpo_bench.config import ConfigError
from vimpo_bench.study import load_study
from vimpo_bench.sweep import make_storage, resolve_params, run_sweep, sweep_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def cli(*args, env, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "vimpo_bench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def sweep_runs(store, experiment):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("vimpo.kind") == "sweep"], [
        r for r in runs if r.data.tags.get("vimpo.kind") == "study"]


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("sweep, names, message", [
    ("{}", ["gamma"], "unknown parameter 'gamma'"),
    ("{params: {beta: {key: algo.beta, low: 0.5, high: 0.1}}}", ["beta"], "empty range: low (0.5) must be below high"),
    ("{params: {beta: {key: algo.beta, low: 0, high: 0.1, log: true}}}", ["beta"], "a log range needs low > 0"),
    ("{params: {x: {key: optim.nope, low: 1, high: 2}}}", ["x"], "optim: unknown key(s) nope"),
    ("{params: {x: {key: algo.beta, choices: []}}}", ["x"], "choices: a non-empty list"),
    ("{metric: loss/actor}", ["beta"], "is not a held-out metric"),
    ("{pruner: {kind: hyperband}}", ["beta"], "pruner.kind: 'hyperband' is not one of"),
    ("{pruner: {kind: median, n_startup: 3}}", ["beta"], "study.sweep.pruner"),
    ("{colour: red}", ["beta"], "study.sweep: unknown key(s) colour"),
])
def test_bad_sweep_settings_fail_naming_the_file_and_key(tmp_path, sweep, names, message):
    path = write(tmp_path / "s.yaml", f"extends: tiny_demo\nstudy: {{sweep: {sweep}}}\n")
    with pytest.raises(ConfigError) as err:
        study = load_study(path)
        sweep_spec(study)
        resolve_params(study, names)
    assert message in str(err.value)


@pytest.mark.parametrize("url, message", [
    ("not a url", "--storage not a url: Could not parse"),
    ("nosuchdb://host/x", "--storage nosuchdb://host/x: Can't load plugin"),
    ("postgresql+psycopg://someone:secret@127.0.0.1:9/optuna", "--storage postgresql+psycopg://someone:***@127.0.0.1:9"),
])
def test_bad_storage_urls_fail_in_one_line(url, message):
    with pytest.raises(ValueError) as err:
        make_storage(url)
    assert str(err.value).startswith(message)
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_input_exits_non_zero_with_one_line(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    broken = write(tmp_path / "broken.yaml", "study: {sweep: {params: [\n")
    for args, expected in [
        (["sweep", "beta", "--study", str(broken), "--trials", "2"], f"error: {broken}: not valid YAML"),
        (["sweep", "gamma", "--trials", "2"], "error: unknown parameter 'gamma'"),
        (["sweep", "beta", "--trials", "2", "--storage", "nosuchdb://x"], "error: --storage nosuchdb://x"),
    ]:
        proc = cli(*args, env=env, cwd=tmp_path)
        assert proc.returncode != 0, args
        assert proc.stderr.strip().splitlines()[-1].startswith(expected), proc.stderr[-1500:]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------------------- real sweeps


def test_three_trial_sweep_with_median_pruning(tmp_path, easy_model_cache, easy_study_yaml, monkeypatch):
    """tokens = 1 leaves no room for an answer (held-out accuracy exactly 0); with the random sampler's
    seed 0 the trials draw 1, 24, 1, so the third must be pruned at its first report (step 1) against
    the median of the completed two. Every decision is re-derived from the stored values."""
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    path = write(tmp_path / "prune.yaml", easy_study_yaml(easy_model_cache, tmp_path / "runs", """
study:
  sweep:
    params:
      tokens: {key: rollout.max_new_tokens, choices: [24, 1]}
    pruner: {kind: median, n_startup_trials: 1, n_warmup_steps: 0}
    sampler: {kind: random, seed: 0}
""", steps=3))
    result = run_sweep(load_study(path), ["tokens"], trials=3, storage=storage, tracking_uri=store)
    assert result.trials == 3

    trials = optuna.load_study(study_name="prune:tokens", storage=storage).get_trials()
    assert [t.params["tokens"] for t in trials] == [1, 24, 1]
    for i, t in enumerate(trials):
        completed = [c for c in trials[:i] if c.state == TrialState.COMPLETE]
        expected_stop = None
        best = float("-inf")
        for step in sorted(t.intermediate_values):
            best = max(best, t.intermediate_values[step])
            at_step = [c.intermediate_values[step] for c in completed if step in c.intermediate_values]
            if at_step and best < statistics.median(at_step):
                expected_stop = step
                break
        if expected_stop is None:
            assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3]
        else:
            assert t.state == TrialState.PRUNED and max(t.intermediate_values) == expected_stop
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[0].value == 0.0 and trials[1].value > 0
    assert result.best["trial"] == 1 and result.best["params"] == {"tokens": 24}

    runs, (parent,) = sweep_runs(store, "prune")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [0, 1, 2]
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in runs}
    for t in trials:
        r = by_trial[t.number]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["optuna.state"] == t.state.name
        assert r.data.params["rollout.max_new_tokens"] == str(t.params["tokens"])
        assert t.user_attrs["mlflow_run_id"] == r.info.run_id
    assert by_trial[2].info.status == "KILLED"  # pruned: training stopped after its first evaluation
    assert by_trial[2].data.metrics["sweep/objective"] == 0.0
    history = MlflowClient(store).get_metric_history(by_trial[2].info.run_id, "val/sampled_accuracy")
    assert max(m.step for m in history) == 1
    assert by_trial[1].info.status == "FINISHED"
    assert by_trial[1].data.metrics["sweep/objective"] == trials[1].value


def test_two_workers_record_every_trial_once_and_a_rerun_resumes(tmp_path, easy_model_cache, easy_study_yaml):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path / "par.yaml", easy_study_yaml(easy_model_cache, tmp_path / "runs", steps=1))
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    proc = cli("sweep", "beta", "--study", str(path), "--trials", "4", "--workers", "2", "--json", env=env,
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = json.loads(proc.stdout.strip().splitlines()[-1])
    assert best["trials"] == 4 and best["states"] == {"COMPLETE": 4}
    assert 0.005 <= best["best_params"]["beta"] <= 0.5

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # the default storage, in the working directory
    trials = optuna.load_study(study_name="par:beta", storage=storage).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials
    runs, parents = sweep_runs(store, "par")
    assert len(parents) == 1
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [0, 1, 2, 3]
    for t in trials:
        (r,) = [r for r in runs if r.info.run_id == t.user_attrs["mlflow_run_id"]]
        assert float(r.data.params["algo.beta"]) == pytest.approx(t.params["beta"])
        assert r.data.metrics["sweep/objective"] == t.value

    # The same command with a larger budget continues the study: exactly one more trial, same parent run.
    proc = cli("sweep", "beta", "--study", str(path), "--trials", "5", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["trials"] == 5
    runs, parents = sweep_runs(store, "par")
    assert len(runs) == 5 and len(parents) == 1


# ------------------------------------------------------------------- several machines: PostgreSQL


def _postgres_bin(name):
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture()
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's binaries; run as the postgres user under root)."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL binaries not installed (.ci/run installs Debian's postgresql)")
    pytest.importorskip("psycopg")
    root = tempfile.mkdtemp(prefix="vimpo-pg-")
    as_user = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        import pwd

        user = pwd.getpwnam("postgres")
        os.chmod(root, 0o700)
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = os.path.join(root, "data")
    subprocess.run([*as_user, initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60",
                    "-o", f"-p {port} -k {root} -h 127.0.0.1", "start"], check=True, capture_output=True, timeout=90)
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE optuna")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_machines_share_one_postgres_sweep(tmp_path, easy_model_cache, easy_study_yaml, postgres_url):
    """Two separate `sweep` commands (as two machines would run them) against one PostgreSQL database:
    together they run the study's trials, each recorded once in MLflow under one parent run."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path / "pg.yaml", easy_study_yaml(easy_model_cache, tmp_path / "runs", steps=2))
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    args = [sys.executable, "-m", "vimpo_bench", "sweep", "beta", "--study", str(path), "--trials", "4",
            "--storage", postgres_url, "--json"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:  # the second machine joins a running sweep
        try:
            if "mlflow_parent_run_id" in optuna.load_study(study_name="pg:beta", storage=postgres_url).user_attrs:
                break
        except KeyError:  # not created yet
            pass
        time.sleep(0.5)
    second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]

    trials = optuna.load_study(study_name="pg:beta", storage=postgres_url).get_trials()
    # --trials counts across machines; two commands asking at the same instant may add one extra trial
    assert 4 <= len(trials) <= 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both machines ran trials
    runs, parents = sweep_runs(store, "pg")
    assert len(parents) == 1  # the parent run id is kept in the Optuna study, shared by both
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [t.number for t in trials]
    assert {r.info.run_id for r in runs} == {t.user_attrs["mlflow_run_id"] for t in trials}


def test_a_trial_orphaned_before_its_worker_was_recorded_is_failed_by_the_next_sweep(tmp_path):
    """Stores written before the worker went into the trial's first insert can hold a RUNNING trial with no
    worker (a kill between Optuna's ask and the worker's record): old enough, it is abandoned; a trial that
    has just been created by another command in that same moment is left alone."""
    import datetime

    from optuna.trial import create_trial

    from vimpo_bench.sweep import ORPHAN_AFTER_S, counted, fail_abandoned

    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="orphans")
    study_id = storage.get_study_id_from_name("orphans")
    long_ago = datetime.datetime.now() - datetime.timedelta(seconds=ORPHAN_AFTER_S + 60)
    old = create_trial(state=TrialState.RUNNING)
    old.datetime_start = long_ago
    storage.create_new_trial(study_id, template_trial=old)
    storage.create_new_trial(study_id, template_trial=create_trial(state=TrialState.RUNNING))  # just now
    assert counted(study) == 2

    assert fail_abandoned(study, tracking_uri=None) == 1
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]
    assert counted(study) == 1
