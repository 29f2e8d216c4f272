"""Faults: kill -9 at chosen points (between steps, mid-save, mid-evaluation, in a study cell, a sweep with
two workers), then resume or rerun and check the records; two first uses of a new store at once; an
unreachable tracking server or hub; an unwritable output folder; out-of-range numbers in configs.
The kill scenarios live in tests/faultkit.py (benchmarks/bench_faults.py runs more of them)."""

from __future__ import annotations

import multiprocessing
import os
import random
import textwrap
import time

import optuna
import pytest
from conftest import EASY_WARM_STEPS
from faultkit import (
    KILL_POINTS,
    histories,
    kill_group_when,
    problems_with_run,
    run_killed,
    running_runs,
    start_in_own_group,
    train_config,
    train_overrides,
    train_run,
)
from optuna.trial import TrialState

from vimpo_bench.config import ConfigError, load_config
from vimpo_bench.experiments.study import load_study, run_study
from vimpo_bench.runs import tracking

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RNG = random.Random(12)  # the kill points; change the seed to explore others (the benchmark draws many)


@pytest.fixture(scope="module")
def reference(easy_model_cache, tmp_path_factory):
    """Metric histories of one uninterrupted run (its own store, opened in this process only)."""
    from vimpo_bench.engines import run

    root = tmp_path_factory.mktemp("reference")
    store = f"sqlite:///{root / 'mlflow.db'}"
    result = run(train_config(easy_model_cache, root / "runs", EASY_WARM_STEPS), tracking_uri=store)
    return histories(store, result.run_id)


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_run_killed_anywhere_resumes_to_the_same_records(point, easy_model_cache, reference, tmp_path):
    from vimpo_bench.engines import run

    hit = RNG.choice(KILL_POINTS[point])
    store, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "runs"
    config = train_config(easy_model_cache, out, EASY_WARM_STEPS)
    assert run_killed(f"{point}@{hit}", train_run, config, store) == -9, (point, hit)
    (run_id,) = running_runs(store, config.run.experiment)  # killed: left RUNNING
    if point == "save":
        assert list(out.glob("*/.checkpoint-*")), "the kill mid-save should leave its temporary folder"
    run(config, resume_run_id=run_id, tracking_uri=store)
    assert problems_with_run(store, run_id, reference, out) == [], (point, hit)


STUDY = """
study:
  axes:
    run.seed: [0, 1]
"""


def test_a_study_killed_in_a_cell_reruns_honestly(easy_model_cache, easy_study_yaml, tmp_path):
    """Cells have no checkpoint until they end (checkpoint_every 0): the killed cell's run cannot be
    resumed, so the rerun starts it again and marks the dead one KILLED; the report leaves it out."""
    from vimpo_bench.report.collect import select_runs

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "kill.yaml"
    path.write_text(easy_study_yaml(easy_model_cache, tmp_path / "runs", STUDY, steps=2, eval_every=0))
    hit = 3  # in the second cell (2 steps each), after its first step (the benchmark draws the point)
    assert run_killed(f"step@{hit}", run_study, load_study(path), 1, store) == -9
    assert len(running_runs(store, "kill")) == 2  # the parent and the killed cell

    result = run_study(load_study(path), tracking_uri=store)
    assert [o.status for o in result.outcomes] == ["skipped", "done"]
    assert running_runs(store, "kill") == []
    runs = tracking.search_runs(["kill"], "", store)
    killed = [r for r in runs if r["status"] == "KILLED"]
    assert len(killed) == 1 and killed[0]["tags"]["vimpo.cell_status"] == "superseded"
    for r in runs:
        if r["tags"].get("vimpo.kind") == "train" and r["status"] == "FINISHED":
            assert all(len({s for s, _ in v}) == len(v) for v in histories(store, r["run_id"]).values())
    reported, _, _ = select_runs(study="kill", tracking_uri=store)
    assert killed[0]["run_id"] not in {r["run_id"] for r in reported}
    assert len([r for r in reported if r["tags"].get("vimpo.kind") == "train"]) == 2


@pytest.mark.slow  # four worker processes start (a minute or more on 2 cores)
def test_a_sweep_killed_with_two_workers_keeps_exact_trial_counts(easy_model_cache, easy_study_yaml, tmp_path):
    from vimpo_bench.experiments.sweep import make_storage, run_sweep

    store, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    path = tmp_path / "ksweep.yaml"
    path.write_text(easy_study_yaml(easy_model_cache, tmp_path / "runs", "study: {sweep: {heartbeat: {interval: 1, grace: 3}}}", steps=2))

    def trial_running() -> bool:
        try:  # through make_storage: its lock keeps this poll out of the sweep's table creation
            trials = optuna.load_study(study_name="ksweep:beta", storage=make_storage(storage)).get_trials()
        except Exception:  # not created yet
            return False
        return any(t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials)

    proc = start_in_own_group(run_sweep, load_study(path), ["beta"], 3, storage, 2, store)
    assert kill_group_when(proc, trial_running, delay=RNG.uniform(0, 1.5)), "no trial started"

    result = run_sweep(load_study(path), ["beta"], trials=3, storage=storage, workers=2, tracking_uri=store)
    trials = optuna.load_study(study_name="ksweep:beta", storage=storage).get_trials()
    counted = [t for t in trials if not (t.state == TrialState.FAIL and "error" not in t.user_attrs)]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
    assert result.states.get("COMPLETE") == 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert running_runs(store, "ksweep") == []
    abandoned = [t for t in trials if t.state == TrialState.FAIL]
    assert abandoned, "the kill should have abandoned at least one trial"
    for t in abandoned:
        if "mlflow_run_id" in t.user_attrs:
            (r,) = tracking.get_runs([t.user_attrs["mlflow_run_id"]], store)
            assert r["status"] == "KILLED"


def test_a_sweep_killed_between_asking_for_a_trial_and_training_it_keeps_exact_counts(
        easy_model_cache, easy_study_yaml, tmp_path):
    """The kill lands right after Optuna's trial exists, before its training run does: the next sweep finds it
    by Optuna's heartbeat (a short grace here), fails it (not counted) instead of leaving it RUNNING."""
    from vimpo_bench.experiments.sweep import run_sweep

    store, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    path = tmp_path / "asked.yaml"
    path.write_text(easy_study_yaml(easy_model_cache, tmp_path / "runs", "study: {sweep: {heartbeat: {interval: 1, grace: 3}}}", steps=1))
    assert run_killed("trial-asked", run_sweep, load_study(path), ["beta"], 1, storage, 1, store) == -9
    (orphan,) = optuna.load_study(study_name="asked:beta", storage=storage).get_trials()
    assert orphan.state == TrialState.RUNNING and "worker" in orphan.user_attrs

    result = run_sweep(load_study(path), ["beta"], trials=1, storage=storage, tracking_uri=store)
    trials = optuna.load_study(study_name="asked:beta", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "error" not in trials[0].user_attrs  # abandoned, not failed: it does not count toward --trials
    assert result.states == {"FAIL": 1, "COMPLETE": 1}
    assert running_runs(store, "asked") == []


def _eval_run(model: str, store: str, output_dir) -> None:
    from vimpo_bench.evaluation.evaluate import EvalConfig, run_eval

    config = EvalConfig(suites="arith", limit=4, max_new_tokens=8, batch_size=4, grader_workers=0)
    run_eval(model, config, experiment="keval", tracking_uri=store, output_dir=output_dir)


def test_an_eval_killed_outside_a_study_does_not_stay_running(tiny_model_dir, tmp_path, monkeypatch):
    """kill -9 mid-evaluation: the report leaves the dead RUNNING eval run out, and the next eval in the
    experiment marks it KILLED; an eval whose owner is alive (its lock held) is left alone."""
    from vimpo_bench.report.collect import select_runs
    from vimpo_bench.runs import owners

    monkeypatch.chdir(tmp_path)  # mlartifacts/ lands here
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_killed("suite-eval", _eval_run, str(tiny_model_dir), store, tmp_path / "first") == -9
    (dead,) = running_runs(store, "keval")
    reported, _, _ = select_runs(experiment="keval", tracking_uri=store)
    assert dead not in {r["run_id"] for r in reported}

    live_owner = owners.RunOwner(tmp_path / "live")  # as a concurrent eval process would hold it
    live = tracking.MlflowTracker.start("eval-live", "keval", tags={"vimpo.kind": "eval", **live_owner.tags},
                                        tracking_uri=store)
    try:
        _eval_run(str(tiny_model_dir), store, tmp_path / "second")
        status = {r["run_id"]: r for r in tracking.search_runs(["keval"], "", store)}
        assert status[dead]["status"] == "KILLED" and owners.END_TAG in status[dead]["tags"]
        assert status[live.run_id]["status"] == "RUNNING"
        assert sorted(r["status"] for r in status.values()) == ["FINISHED", "KILLED", "RUNNING"]
        assert list((tmp_path / "first" / ".owners").iterdir()) == []  # the dead run's lock file went too
        assert list((tmp_path / "second" / ".owners").iterdir()) == []
    finally:
        live.finish("FINISHED")
        live_owner.release()
    assert running_runs(store, "keval") == []


# ------------------------------------------------------------------------- stores, servers, folders


def _first_run(store: str, barrier) -> None:
    barrier.wait()
    tracking.MlflowTracker.start("race", "race", tracking_uri=store).finish()


def _first_storage(url: str, barrier) -> None:
    from vimpo_bench.experiments.sweep import make_storage

    barrier.wait()
    optuna.create_study(storage=make_storage(url), study_name="race", load_if_exists=True)


@pytest.mark.parametrize("target, name", [(_first_run, "mlflow.db"), (_first_storage, "optuna.db")])
def test_two_first_uses_of_a_new_store_at_once(target, name, tmp_path):
    ctx = multiprocessing.get_context("fork")
    url, barrier = f"sqlite:///{tmp_path / name}", ctx.Barrier(2)
    procs = [ctx.Process(target=target, args=(url, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]


def test_an_unreachable_tracking_server_fails_fast_in_one_line():
    started = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable) as err:
        tracking.MlflowTracker.start("x", tracking_uri="http://someone:secret@127.0.0.1:9/")
    assert time.monotonic() - started < 15
    message = str(err.value)
    assert "http://someone:***@127.0.0.1:9/" in message and "secret" not in message and "\n" not in message


def test_a_hanging_name_lookup_of_the_tracking_server_fails_fast_in_one_line(monkeypatch):
    """A resolver that never answers (a dead DNS server): the lookup is under the same deadline as the
    connection. The network cannot be reached here, so this one test stands in a resolver that hangs."""
    import socket

    def hang(*args, **kwargs):
        time.sleep(120)
        raise socket.gaierror("never answered")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    uri = "http://someone:secret@tracking.slow-dns.example:5000/"
    started = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable) as err:
        tracking.MlflowTracker.start("x", tracking_uri=uri)
    assert time.monotonic() - started < tracking.CONNECT_TIMEOUT + 5 < 15
    message = str(err.value)
    assert "http://someone:***@tracking.slow-dns.example:5000/" in message and "secret" not in message
    assert "tracking.slow-dns.example" in message.split("unreachable:")[1] and "\n" not in message


def test_an_offline_hub_id_fails_fast_in_one_line(monkeypatch):
    from vimpo_bench.models import load_policy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        load_policy("no-such-org/no-such-model")
    assert time.monotonic() - started < 15
    assert "no-such-org/no-such-model" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_an_unwritable_output_folder_fails_before_any_run(tmp_path):
    from vimpo_bench.engines import run
    from vimpo_bench.runs.record import TrainingError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(overrides=[f"run.output_dir={blocker / 'runs'}"])
    with pytest.raises(TrainingError, match=r"run.output_dir .*: not writable"):
        run(config, tracking_uri=store)
    assert tracking.missing_sqlite_store(store)  # refused before the store was even created


@pytest.mark.parametrize("override, message", [
    ("optim.max_grad_norm=-1", "optim.max_grad_norm: must be > 0"),
    ("optim.max_grad_norm=.nan", "optim.max_grad_norm: must be finite and > 0"),
    ("optim.lr=.inf", "optim.lr: must be finite and > 0, got inf"),
    ("optim.warmup_steps=-1", "optim.warmup_steps: must be >= 0"),
    ("rollout.temperature=.inf", "rollout.temperature: must be finite and > 0"),
    ("rollout.top_p=.nan", "rollout.top_p: must be finite and in (0, 1]"),
    ("reward.p=.nan", "reward.p: must be finite and in [0, 1]"),
    ("ref.alpha=.inf", "ref.alpha: must be finite and in (0, 1]"),
    ("algo.beta=.nan", "algo.beta: must be finite and > 0"),
    ("algo.value_scale=.inf", "algo.value_scale: must be finite and >= 0"),
    ("algo.lam=.nan", "algo.lam: must be finite and in (0, 1]"),
    ("algo.eps_high=.inf", "algo.eps_high: must be finite and >= 0"),
    ("eval.samples=0", "eval.samples: must be >= 1"),
])
def test_non_finite_or_out_of_range_numbers_fail_at_config_time(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_nan_budget_does_not_switch_the_budget_off(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text(textwrap.dedent("""
        extends: tiny_demo
        study: {budget: {minutes: .nan}}
        """))
    with pytest.raises(ConfigError, match=r"study.budget.minutes: must be finite and > 0, got nan"):
        load_study(path)


def test_temporary_folders_of_dead_runs_go_and_a_live_run_is_left_alone(tmp_path):
    from vimpo_bench.runs.locks import OwnerLock
    from vimpo_bench.runs.record import OWNER_LOCK, TrainingError, claim_run, prepare_output_dir, run_is_live

    dead, live = tmp_path / "dead-run", tmp_path / "live-run"
    (dead / ".checkpoint-x1").mkdir(parents=True)
    (live / ".checkpoint-x2").mkdir(parents=True)
    holder = OwnerLock(live / OWNER_LOCK)
    assert holder.acquire()  # as the process training `live-run` would
    try:
        prepare_output_dir(tmp_path)
        assert not (dead / ".checkpoint-x1").exists() and (live / ".checkpoint-x2").exists()
        assert run_is_live(tmp_path, "live-run") and not run_is_live(tmp_path, "dead-run")
        with pytest.raises(TrainingError, match="being trained by another process"):
            claim_run(live)
    finally:
        holder.release()
    assert not run_is_live(tmp_path, "live-run")


# ------------------------------------------------------------ faults a user causes: one line, no false record


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """`vimpo-bench ARGS` in this process, as the console script runs it (`cli.main`): (exit code, the lines it
    wrote to stderr other than progress bars and config warnings)."""
    import sys
    import warnings

    from vimpo_bench.cli import main

    monkeypatch.setattr(sys, "argv", ["vimpo-bench", *args])
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main sets its own
    with pytest.raises(SystemExit) as exited:
        main()
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.strip() and not line.startswith("warning:") and "\r" not in line and "%|" not in line]
    return exited.value.code, lines


@pytest.fixture(scope="module")
def finished_run(easy_model_cache, tmp_path_factory):
    """(store, output folder, run id, config) of a FINISHED 2-step run with its checkpoint (its own store)."""
    from vimpo_bench.engines import run

    root = tmp_path_factory.mktemp("finished")
    store, out = f"sqlite:///{root / 'mlflow.db'}", root / "runs"
    config = train_config(easy_model_cache, out, EASY_WARM_STEPS, "optim.steps=2")
    result = run(config, tracking_uri=store)
    return store, out, result.run_id, config


def _copy_run(finished_run, tmp_path):
    """A copy of `finished_run` (store and checkpoint) in tmp_path, for a test to break."""
    import copy
    import shutil

    store, out, run_id, config = finished_run
    shutil.copytree(out / run_id, tmp_path / "runs" / run_id)
    shutil.copy(store[len("sqlite:///"):], tmp_path / "mlflow.db")
    config = copy.deepcopy(config)
    config.run.output_dir = str(tmp_path / "runs")
    return f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "runs", run_id, config


def _record(store: str, run_id: str) -> tuple[str, int]:
    (r,) = tracking.get_runs([run_id], store)
    return r["status"], r["end_time"]


@pytest.mark.parametrize("run_id", ["finished", "f" * 32])
def test_a_refused_resume_changes_nothing(run_id, finished_run, tmp_path, monkeypatch, capsys):
    """`train --resume R` from a folder without runs/R (another working folder), or of an id that does not
    exist: one line saying where it looked; the FINISHED run stays FINISHED and no runs/R/ folder is made."""
    copy = _copy_run(finished_run, tmp_path / "trained")
    store, run_id = copy[0], copy[2] if run_id == "finished" else run_id
    before = _record(store, copy[2])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    code, lines = _cli(monkeypatch, capsys, "train", "--resume", run_id)
    assert code == 1
    assert lines == [f"error: cannot resume run {run_id}: no checkpoint in {elsewhere / 'runs' / run_id} (resume from "
                     f"the folder it was trained in, or set run.output_dir to the folder holding {run_id}/)"]
    assert list(elsewhere.iterdir()) == []  # no runs/R/, no store
    assert _record(store, copy[2]) == before


def test_ctrl_c_during_train_says_interrupted_records_killed_and_names_the_resume_command(
        easy_model_cache, tmp_path):
    """SIGINT (Ctrl-C) once a checkpoint exists: "interrupted" and the command that resumes, exit 130, the run
    KILLED (not FAILED); that command then resumes it."""
    import signal
    import subprocess
    import sys

    from vimpo_bench.engines import run

    store, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "runs"
    overrides = train_overrides(easy_model_cache, out, EASY_WARM_STEPS, "optim.steps=200", "run.checkpoint_every=1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vimpo_bench", "train", *[f"--set={o}" for o in overrides]], cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": store}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's Ctrl-C reaches it
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*/checkpoint/COMPLETE")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    (run_id,) = [p.name for p in out.iterdir()]
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130, err[-2000:]
    assert last == (f"interrupted: run {run_id} recorded KILLED; resume it with: vimpo-bench train --resume {run_id} "
                    f"--set run.output_dir={out}")
    assert "Traceback" not in err
    assert _record(store, run_id)[0] == "KILLED"
    config = train_config(easy_model_cache, out, EASY_WARM_STEPS, "optim.steps=200")
    assert run(config, resume_run_id=run_id, tracking_uri=store, stop_after=1).run_id == run_id


@pytest.fixture()
def small_disk(tmp_path):
    """`make(size)`: a folder on a tmpfs of `size` (e.g. "8m"), a disk that really fills up (ENOSPC). Mounting
    needs root; the test is skipped where it cannot mount."""
    import subprocess

    mounted = []

    def make(size: str):
        where = tmp_path / f"disk-{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"a full disk is a small tmpfs, and mounting one failed: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_partial_save(
        easy_model_cache, small_disk, tmp_path):
    from vimpo_bench.engines import run
    from vimpo_bench.runs.checkpoints import CheckpointError

    out = small_disk("8m")  # the policy (4.3 MB) fits, state.pt with Adam's moments (8.6 MB) does not
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = train_config(easy_model_cache, out, EASY_WARM_STEPS, "optim.steps=2", "run.checkpoint_every=1")
    with pytest.raises(CheckpointError) as err:
        run(config, tracking_uri=store)
    (run_dir,) = out.iterdir()
    assert str(err.value) == (f"cannot save checkpoint {run_dir / 'checkpoint'}: the disk is full (no space left on "
                              f"{run_dir}); the partial save was removed")
    assert [p.name for p in run_dir.iterdir() if not p.name.startswith(".owner")] == []  # no .checkpoint-*
    assert _record(store, run_dir.name)[0] == "FAILED"


def test_a_full_mlflow_store_is_one_line_without_tracebacks(easy_model_cache, small_disk, tmp_path, capfd,
                                                            monkeypatch):
    from vimpo_bench.engines import run

    monkeypatch.chdir(tmp_path)  # mlartifacts/ here: only the database fills its disk
    disk = small_disk("4m")
    store = f"sqlite:///{disk / 'mlflow.db'}"
    tracking.MlflowTracker.start("first", tracking_uri=store).finish()  # the store exists; now fill its disk
    free = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(free.f_bavail * free.f_frsize - 64 * 1024))
    config = train_config(easy_model_cache, tmp_path / "runs", EASY_WARM_STEPS, "optim.steps=200",
                          "run.checkpoint_every=0", "eval.every=1")
    with pytest.raises(tracking.StoreFull) as err:
        run(config, tracking_uri=store)
    assert str(err.value).startswith(f"MLflow store {disk / 'mlflow.db'}: the disk is full (run ")
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("file, damage, message", [
    ("policy/model.safetensors", "empty", "policy/model.safetensors is corrupt: truncated or emptied"),
    ("policy/model.safetensors", "truncate", "policy/model.safetensors is corrupt: truncated or emptied"),
    ("state.pt", "truncate", "checkpoint {ck} is corrupt: state.pt cannot be read"),
    ("state.pt", "empty", "checkpoint {ck} is corrupt: state.pt cannot be read"),
    ("config.json", "remove", "checkpoint {ck} is corrupt: config.json is missing"),
])
def test_a_broken_checkpoint_is_named_and_the_resume_changes_nothing(file, damage, message, finished_run,
                                                                       tmp_path):
    from vimpo_bench.engines import run
    from vimpo_bench.runs.checkpoints import CheckpointError

    store, out, run_id, config = _copy_run(finished_run, tmp_path)
    checkpoint = out / run_id / "checkpoint"
    before = _record(store, run_id)
    path = checkpoint / file
    if damage == "remove":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: 0 if damage == "empty" else path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        run(config, resume_run_id=run_id, tracking_uri=store)
    assert message.format(ck=checkpoint) in str(err.value) and str(checkpoint) in str(err.value)
    assert "\n" not in str(err.value)
    assert _record(store, run_id) == before  # not reopened, not marked FAILED


def _bad_model(case: str, folder, tiny_model_dir) -> tuple[str, str]:
    """(--model value, what the error says) for a thing that is not a model, made in `folder`."""
    import shutil

    if case == "not a model":
        (folder / "notes").mkdir()
        (folder / "notes" / "readme.txt").write_text("not a model")
        return "notes", "--model notes: not a model folder"
    if case == "missing folder":
        return "./no/such/folder", "--model ./no/such/folder: no such folder"
    if case == "a file":
        (folder / "f.txt").write_text("x")
        return "f.txt", "--model f.txt: a file, not a model folder"
    shutil.copytree(tiny_model_dir, folder / "cut")
    (folder / "cut" / "model.safetensors").write_bytes(b"")
    return "cut", "cut/model.safetensors is corrupt: truncated or emptied"


@pytest.mark.parametrize("case", ["not a model", "missing folder", "a file", "cut weights"])
def test_eval_of_something_that_is_not_a_model_is_refused_before_any_run(case, tiny_model_dir, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model, message = _bad_model(case, tmp_path, tiny_model_dir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    code, lines = _cli(monkeypatch, capsys, "eval", "--suite", "arith", "--limit", "2", "--model", model)
    assert code != 0 and len(lines) == 1 and message in lines[0], lines
    assert tracking.missing_sqlite_store(store)  # no eval run: not even a store


def test_eval_takes_the_folder_a_run_writes(tiny_model_dir, tmp_path):
    import shutil

    from vimpo_bench.evaluation.evaluate import resolve_model

    policy = tmp_path / "runs" / "abc" / "checkpoint" / "policy"
    shutil.copytree(tiny_model_dir, policy)
    (policy.parent / "config.json").write_text("{}")  # the run's config beside it, not a model config
    for given in (policy.parent.parent, policy.parent, policy):
        assert resolve_model(str(given), tmp_path) == (str(policy), None)


def test_a_report_on_an_empty_store_file_only_reads(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "mlflow.db"
    empty.touch()
    code, lines = _cli(monkeypatch, capsys, "report", "--experiment", "x", "--tracking-uri", f"sqlite:///{empty}")
    assert code == 2 and lines == [f"error: {empty} is not an MLflow store: an empty file"]
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]
