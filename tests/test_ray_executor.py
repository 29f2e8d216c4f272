"""`vimpo-bench study run --executor ray` on a real Ray cluster on this machine: a head node and a second
node started with `ray start` on 127.0.0.1 (ports of their own, a temporary folder of their own, token
authentication with a token of their own; the fixture kills the processes it started and nothing else).
A 2-cell study finishes with both cells done and recorded once, and a rerun skips them; a cell whose
worker is killed with -9 is started again and recorded once; bad flags, an address with no cluster, a
driver without the cluster's token, a cell no node has room for and a missing Ray are one line each."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vimpo_bench.config import ConfigError
from vimpo_bench.experiments.study import load_study

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
RAY = str(Path(sys.executable).with_name("ray"))
# Ray 2.60 turns token authentication on for `ray start` where ~/.ray/auth_token exists (a local ray.init
# writes it): the test cluster always uses a token, given to its nodes and to the drivers below.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def processes_under(mark: str) -> dict[int, str]:
    """pid -> command line of the processes whose command line holds `mark`, and all their descendants."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            table[int(entry.name)] = (ppid, cmd)
    ours = {pid for pid, (_, cmd) in table.items() if mark in cmd}
    while True:
        children = {pid for pid, (ppid, _) in table.items() if ppid in ours} - ours
        if not children:
            return {pid: table[pid][1] for pid in ours}
        ours |= children


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster():
    """HOST:PORT of a 2-node Ray cluster (1 CPU each) on this machine."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="vb-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **AUTH}
    env.pop("RAY_ADDRESS", None)
    gcs, *head_ports = free_ports(8)
    worker_ports = free_ports(6)
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--temp-dir", temp,
              "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    head = [RAY, "start", "--head", "--port", str(gcs), "--include-dashboard", "false",
            *(f"--{name}={port}" for name, port in zip(
                ("dashboard-port", "node-manager-port", "object-manager-port",
                 "metrics-export-port", "runtime-env-agent-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port"), head_ports, strict=True))]
    second = [RAY, "start", "--address", f"127.0.0.1:{gcs}",
              *(f"--{name}={port}" for name, port in zip(
                  ("node-manager-port", "object-manager-port", "metrics-export-port", "runtime-env-agent-port",
                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port"), worker_ports, strict=True))]
    try:
        for command in (head, second):
            proc = subprocess.run([*command, *common], capture_output=True, text=True, env=env, timeout=180)
            assert proc.returncode == 0, proc.stderr[-3000:]
        deadline = time.monotonic() + 60
        while sum("raylet/raylet" in cmd for cmd in processes_under(temp).values()) < 2:
            assert time.monotonic() < deadline, "the two raylets did not come up"
            time.sleep(1)
        yield f"127.0.0.1:{gcs}"
    finally:
        kill_all(processes_under(temp))  # only what these two `ray start` started (never `ray stop`)
        shutil.rmtree(temp, ignore_errors=True)


def study_file(tmp_path, easy_model_cache, easy_study_yaml, study: str, steps: int = 2) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(easy_study_yaml(easy_model_cache, tmp_path / "runs", textwrap.dedent(study), steps=steps))
    return path


def cli(tmp_path, *args, timeout=600, popen=False, auth=True):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **(AUTH if auth else {})}
    for name in ["RAY_ADDRESS"] + ([] if auth else list(AUTH)):
        env.pop(name, None)
    command = [sys.executable, "-m", "vimpo_bench", "study", "run", *map(str, args)]
    if popen:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=tmp_path)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)


def summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def runs_by_kind(tmp_path, experiment: str) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        out.setdefault(run.data.tags.get("vimpo.kind"), []).append(run)
    return out


def test_a_two_cell_study_runs_on_two_nodes_records_each_cell_once_and_a_rerun_skips_them(
        cluster, tmp_path, easy_model_cache, easy_study_yaml):
    path = study_file(tmp_path, easy_model_cache, easy_study_yaml, """
        study:
          name: rayed
          axes: {algo.name: [vimpo, grpo]}
          suites: [arith]
          eval: {limit: 6, max_new_tokens: 24, grader_workers: 0}
        """)
    proc = cli(tmp_path, path, "--executor", "ray", "--address", cluster, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = summary(proc.stdout)
    assert result["counts"] == {"done": 2} and result["executor"] == "ray"
    assert [c["attempts"] for c in result["cells"]] == [1, 1]
    assert "Traceback" not in proc.stderr

    runs = runs_by_kind(tmp_path, "rayed")
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED" and parent.info.run_id == result["parent_run_id"]
    train = runs["train"]
    assert sorted(r.data.tags["vimpo.axis.algo.name"] for r in train) == ["grpo", "vimpo"]  # once each
    assert all(r.info.status == "FINISHED" and r.data.tags["vimpo.cell_status"] == "done" for r in train)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in train)
    assert sorted(r.data.tags["mlflow.parentRunId"] for r in runs["eval"]) == sorted(r.info.run_id for r in train)
    assert {c["run_id"] for c in result["cells"]} == {r.info.run_id for r in train}

    again = cli(tmp_path, path, "--executor", "ray", "--address", cluster, "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary(again.stdout)["counts"] == {"skipped": 2}
    assert sum(map(len, runs_by_kind(tmp_path, "rayed").values())) == sum(map(len, runs.values()))


def test_a_cell_whose_worker_is_killed_is_started_again_and_recorded_once(
        cluster, tmp_path, easy_model_cache, easy_study_yaml):
    path = study_file(tmp_path, easy_model_cache, easy_study_yaml, """
        study:
          name: killed
          axes: {run.seed: [0]}
        """, steps=4)
    proc = cli(tmp_path, path, "--executor", "ray", "--address", cluster, "--json", popen=True)
    try:
        deadline, victim = time.monotonic() + 400, None
        while victim is None:  # the worker training the cell holds <output_dir>/<run id>/.owner.lock
            assert proc.poll() is None and time.monotonic() < deadline, "the cell never started"
            for lock in (tmp_path / "runs").glob("*/.owner.lock"):
                words = lock.read_text().split()
                victim = int(words[1]) if len(words) == 2 else None
            time.sleep(0.2)
        assert Path(f"/proc/{victim}/cmdline").read_bytes().startswith(b"ray::")  # a Ray worker, not us
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    result = summary(out)
    assert result["counts"] == {"done": 1}
    assert result["cells"][0]["attempts"] == 2
    assert "restarted 1" in err  # the driver's bar said so

    train = runs_by_kind(tmp_path, "killed")["train"]
    finished = [r for r in train if r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].info.run_id == result["cells"][0]["run_id"]
    assert finished[0].data.tags["vimpo.cell_status"] == "done"
    (dead,) = [r for r in train if r is not finished[0]]  # the killed attempt: superseded, as a rerun does
    assert dead.info.status == "KILLED" and dead.data.tags["vimpo.cell_status"] == "superseded"


def test_a_cell_no_node_has_room_for_is_refused_in_one_line(cluster, tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("extends: tiny_demo\nstudy: {resources: {num_gpus: 1}}\n")
    proc = cli(tmp_path, path, "--executor", "ray", "--address", cluster, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no node of the Ray cluster at")
    assert "1 GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched


def test_a_driver_without_the_clusters_token_is_told_in_one_line(cluster, tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("extends: tiny_demo\n")
    proc = cli(tmp_path, path, "--executor", "ray", "--address", cluster, timeout=300, auth=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()  # Ray's own retry lines are not shown
    assert line.startswith(f"error: cannot start or join the Ray cluster at {cluster}: ")
    assert "set RAY_AUTH_MODE=token" in line


@pytest.mark.parametrize("args, message", [
    (["--executor", "ray", "--workers", "2"], "error: --workers is for --executor local"),
    (["--address", "127.0.0.1:1"], "error: --address: only with --executor ray"),
    (["--executor", "ray", "--num-cpus", "0"], "error: --num-cpus must be > 0, got 0"),
    pytest.param(["--executor", "ray", "--address", "nohost"], "error: --address 'nohost': expected HOST:PORT",
                 marks=needs_ray),
    pytest.param(["--executor", "ray", "--address", "127.0.0.1:1"], "error: no Ray cluster at 127.0.0.1:1",
                 marks=needs_ray),
])
def test_bad_executor_flags_are_one_line(tmp_path, args, message):
    path = tmp_path / "grid.yaml"
    path.write_text("extends: tiny_demo\n")
    proc = cli(tmp_path, path, *args, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


def test_without_ray_the_command_says_how_to_install_it_in_one_line(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("extends: tiny_demo\n")
    hide_ray = ("import sys; sys.modules['ray'] = None; from vimpo_bench.cli import main; "
                f"sys.argv = ['vimpo-bench', 'study', 'run', {str(path)!r}, '--executor', 'ray']; main()")
    proc = subprocess.run([sys.executable, "-c", hide_ray], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --executor ray needs Ray, which is not installed: pip install 'vimpo-bench[ray]'"]


def test_study_resources_are_read_and_checked(tmp_path):
    path = tmp_path / "res.yaml"
    path.write_text("extends: tiny_demo\nstudy: {resources: {num_cpus: 2, num_gpus: 0.5}}\n")
    study = load_study(path)
    assert (study.resources.num_cpus, study.resources.num_gpus) == (2.0, 0.5)
    for body, message in [("{num_cpus: 0}", "study.resources.num_cpus: must be > 0"),
                          ("{gpus: 1}", "study.resources: unknown key(s) gpus; valid: num_cpus, num_gpus"),
                          ("{num_gpus: many}", "study.resources.num_gpus: expected a number")]:
        path.write_text(f"extends: tiny_demo\nstudy: {{resources: {body}}}\n")
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_study(path)
