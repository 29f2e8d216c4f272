"""`vimpo-bench sweep`: Optuna studies in real storages (sqlite files, and a PostgreSQL server the test
starts when the binaries are installed) whose trials are real training runs of the tiny model,
recorded in a real sqlite MLflow store. A dead worker's trial is found by Optuna's heartbeat (short
settings here: `study.sweep.heartbeat`) and queued again; separate commands share one PostgreSQL study."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from vimpo_bench.config import ConfigError
from vimpo_bench.experiments.study import load_study
from vimpo_bench.experiments.sweep import make_storage, resolve_params, run_sweep, sweep_spec
from vimpo_bench.experiments.sweep_trials import ORPHAN_AFTER_S, WAIT, Heartbeat, counted, next_trial

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
    ("{heartbeat: {interval: 5, grace: 5}}", ["beta"], "heartbeat: needs 1 <= interval < grace (seconds), got"),
    ("{heartbeat: {interval: 0.5}}", ["beta"], "heartbeat.interval: expected an integer"),
    ("{heartbeat: {retries: -1}}", ["beta"], "heartbeat.retries: must be >= 0"),
    ("{heartbeat: {beat: 1}}", ["beta"], "study.sweep.heartbeat: unknown key(s) beat"),
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


def test_heartbeat_settings_default_to_a_minute_and_three():
    assert Heartbeat() == Heartbeat(interval=60, grace=180, retries=2)


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


HEARTBEAT = "  sweep: {heartbeat: {interval: 1, grace: 3, retries: 2}}\n"  # seconds: dead trials found fast


def _sweep_cmd(path, trials, storage):
    return [sys.executable, "-m", "vimpo_bench", "sweep", "beta", "--study", str(path), "--trials", str(trials),
            "--storage", storage, "--json"]


def _trials_or_none(name, storage):
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except KeyError:  # not created yet
        return None


def test_two_machines_share_one_postgres_sweep(tmp_path, easy_model_cache, easy_study_yaml, postgres_url):
    """Two separate `sweep` commands (as two machines would run them) against one PostgreSQL database:
    together they run exactly the study's trials (count-then-ask is locked across commands), no trial
    twice, each recorded once in MLflow under one parent run."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path / "pg.yaml", easy_study_yaml(easy_model_cache, tmp_path / "runs", "study:\n" + HEARTBEAT,
                                                       steps=2))
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    args = _sweep_cmd(path, 4, postgres_url)
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
    assert [json.loads(out.strip().splitlines()[-1])["trials"] for out, _ in outs] == [4, 4]

    trials = optuna.load_study(study_name="pg:beta", storage=postgres_url).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["beta"] for t in trials}) == 4  # no parameters run twice
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both machines ran trials
    runs, parents = sweep_runs(store, "pg")
    assert len(parents) == 1  # the parent run id is kept in the Optuna study, shared by both
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [0, 1, 2, 3]  # each trial run once
    assert {r.info.run_id for r in runs} == {t.user_attrs["mlflow_run_id"] for t in trials}


def test_a_killed_worker_trial_is_failed_and_retried_by_another_worker(tmp_path, easy_model_cache, easy_study_yaml,
                                                                       postgres_url):
    """kill -9 of a `sweep` command mid-trial, on PostgreSQL: the trial stays RUNNING (no process is left to
    say otherwise); another command, once the heartbeat is older than the grace period, marks it FAIL and
    Optuna's retry callback queues its parameters again; that command runs the retry and the study ends
    with exactly its trials. The killed trial's MLflow run is KILLED and counts as no result."""
    from vimpo_bench.report.collect import collect
    from vimpo_bench.report.grid import sweep_table

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path / "kpg.yaml", easy_study_yaml(easy_model_cache, tmp_path / "runs", "study:\n" + HEARTBEAT,
                                                        steps=6))
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    doomed = subprocess.Popen(_sweep_cmd(path, 2, postgres_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=tmp_path)
    deadline, trials = time.monotonic() + 300, None
    while time.monotonic() < deadline and doomed.poll() is None:  # mid-trial: it has reported an evaluation
        trials = _trials_or_none("kpg:beta", postgres_url)
        if trials and trials[0].intermediate_values and "mlflow_run_id" in trials[0].user_attrs:
            break
        time.sleep(0.1)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.communicate(timeout=60)
    (killed,) = optuna.load_study(study_name="kpg:beta", storage=postgres_url).get_trials()
    assert killed.state == TrialState.RUNNING and len(killed.intermediate_values) < 6, "kill after the trial ended"

    other = cli("sweep", "beta", "--study", str(path), "--trials", "2", "--storage", postgres_url, "--json",
                env=env, cwd=tmp_path)
    assert other.returncode == 0, other.stderr[-3000:]
    assert json.loads(other.stdout.strip().splitlines()[-1])["states"] == {"FAIL": 1, "COMPLETE": 2}
    trials = optuna.load_study(study_name="kpg:beta", storage=postgres_url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "error" not in trials[0].user_attrs and counted(trials) == 2
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.params == killed.params and retry.user_attrs["mlflow_run_id"] != killed.user_attrs["mlflow_run_id"]
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]

    runs, _ = sweep_runs(store, "kpg")
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in runs}
    assert sorted(by_trial) == [0, 1, 2]
    assert by_trial[0].info.status == "KILLED" and by_trial[0].data.tags["optuna.state"] == "FAIL"
    assert "sweep/objective" not in by_trial[0].data.metrics
    assert all(by_trial[n].data.tags["optuna.state"] == "COMPLETE" for n in (1, 2))
    table = sweep_table(collect(study="kpg", tracking_uri=store)).set_index("trial")
    assert table.loc[0, "state"] == "FAIL" and math.isnan(table.loc[0, "objective"])
    assert table.loc[retry.number, "objective"] == retry.value


def test_count_then_ask_waits_for_another_machine_holding_the_postgres_lock(postgres_url):
    """The advisory lock `study_lock` takes on PostgreSQL is the one another machine would hold: held
    elsewhere, a worker waits for it; released, the worker goes on."""
    import zlib

    import psycopg

    from vimpo_bench.experiments.sweep_trials import study_lock

    entered = threading.Event()

    def worker():
        with study_lock(postgres_url, "s:beta"):
            entered.set()

    libpq = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq) as other_machine:
        other_machine.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(b"s:beta"),))
        thread = threading.Thread(target=worker)
        thread.start()
        assert not entered.wait(2.0)  # blocked while the other machine counts and asks
        other_machine.commit()
        assert entered.wait(30.0)
    thread.join()


# ------------------------------------------------------------------- heartbeats, without training


def _beating_study(tmp_path, retries=2):
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", Heartbeat(interval=1, grace=2, retries=retries))
    return optuna.create_study(storage=storage, study_name="hb"), storage


def test_a_trial_whose_heartbeat_stops_is_failed_and_queued_again_with_its_parameters(tmp_path):
    study, storage = _beating_study(tmp_path, retries=1)
    trial, _ = next_trial(study, storage, budget=1, interval=1)
    x = trial.suggest_float("x", 0, 1)
    assert next_trial(study, storage, budget=1, interval=1) is WAIT  # running, beating a moment ago
    time.sleep(3.5)  # no beat for longer than the grace period: its worker is gone
    retry, _ = next_trial(study, storage, budget=1, interval=1)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert retry.number == 1 and trials[1].params == {"x": x} and trials[1].system_attrs["failed_trial"] == 0
    assert counted(trials) == 1  # the retry counts in place of the dead trial
    time.sleep(3.5)  # the retry's worker dies too: retries=1 is spent, the study asks for a new trial
    fresh, _ = next_trial(study, storage, budget=2, interval=1)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]
    assert fresh.number == 2 and fresh.params == {}
    assert counted(study.get_trials()) == 2  # a trial given up on counts toward --trials


def test_a_trial_orphaned_before_its_first_heartbeat_is_failed_and_queued_again(tmp_path):
    """A RUNNING trial that never beat (killed between Optuna's ask and its first heartbeat, or left by a
    version before heartbeats) cannot be judged by Optuna's heartbeat: old enough, it is failed and
    queued again; one that has just been created by another command in that same moment is left alone."""
    import datetime

    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    study, storage = _beating_study(tmp_path)
    study_id = storage.get_study_id_from_name("hb")
    old = create_trial(state=TrialState.RUNNING, params={"x": 0.25}, distributions={"x": FloatDistribution(0, 1)},
                       user_attrs={"worker": "elsewhere:1"})
    old.datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=ORPHAN_AFTER_S + 60)
    storage.create_new_trial(study_id, template_trial=old)
    storage.create_new_trial(study_id, template_trial=create_trial(state=TrialState.RUNNING))  # just now

    retry, _ = next_trial(study, storage, budget=3, interval=1)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
    assert retry.number == 2 and trials[2].params == {"x": 0.25} and "worker" in trials[2].user_attrs
    assert trials[2].user_attrs["worker"] != "elsewhere:1" and counted(trials) == 2


def test_an_interrupted_trial_is_queued_again_at_once(tmp_path, easy_model_cache, easy_study_yaml, monkeypatch):
    """Ctrl-C during a trial: the trial is told FAIL and queued again right away (no grace period to wait),
    so the next command runs its parameters first."""
    import vimpo_bench.engines

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vimpo_bench.engines, "start", interrupted)
    path = write(tmp_path / "intr.yaml", easy_study_yaml(easy_model_cache, tmp_path / "runs", steps=1))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_study(path), ["beta"], trials=2, storage=storage, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    trials = optuna.load_study(study_name="intr:beta", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params and counted(trials) == 1
