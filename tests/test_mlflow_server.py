"""Training records to a real `mlflow server` on 127.0.0.1, as a team with a shared server would use it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from vimpo_bench.config import load_config
from vimpo_bench.engines import run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start (exit code {proc.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's gunicorn/uvicorn workers are in its group
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_training_run_recorded_on_a_real_server(mlflow_server, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(overrides=[
        f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}", "optim.steps=1",
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6", "optim.minibatches=1",
        "eval.problems=2", "eval.samples=1", "run.threads=1", "algo.name=grpo",
    ])
    result = run(config, tracking_uri=mlflow_server)
    client = MlflowClient(mlflow_server)
    rec = client.get_run(result.run_id)
    assert rec.info.status == "FINISHED"
    assert rec.data.params["algo.name"] == "grpo"
    assert [m.step for m in client.get_metric_history(result.run_id, "loss/total")] == [1]
    assert "config.yaml" in {a.path for a in client.list_artifacts(result.run_id)}
