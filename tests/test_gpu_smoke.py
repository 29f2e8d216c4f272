"""scripts/gpu_smoke.sh --cpu end to end (the path a GPU machine runs, at toy size on the CPU), the contracts of
its JSON (keys, finite numbers, positive timings, the FLOP formula, parity within the stated tolerance), and
bad arguments as one line. Never the machine's speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"
ALGOS = ("vimpo", "grpo", "dr_grpo", "dapo", "rloo")


def smoke(*args, tmp_path, script=SCRIPT, out_env=None):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    env.pop("OUT", None)
    if out_env:
        env["OUT"] = out_env
    command = ["bash", str(script)] if script.suffix == ".sh" else [sys.executable, str(script)]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-smoke")
    out = smoke("--cpu", tmp_path=tmp, out_env=str(tmp / "out"))  # the folder from $OUT
    return out, json.loads((tmp / "out" / "gpu_smoke.json").read_text())


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_the_cpu_path_runs_end_to_end_and_reports_no_problem(cpu_run):
    out, result = cpu_run
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert result["problems"] == []
    assert result["mode"] == "cpu" and result["device"] == "cpu" and result["peak_bf16_flops"] is None
    assert result["steps_asked"] == 2 and result["model"]["parameters"] > 0
    assert "problems: none" in out.stdout
    assert not Path(result["work_dir"]).exists()  # removed after a clean run


def test_parity_covers_every_algorithm_within_the_stated_tolerance(cpu_run):
    parity = cpu_run[1]["parity"]
    assert parity["reference"] == "cpu float32" and parity["device"] == "cpu"
    assert set(parity["algos"]) == set(ALGOS)
    for name, per_dtype in parity["algos"].items():
        assert set(per_dtype) == {"float32", "bfloat16"}, name
        for dtype, r in per_dtype.items():
            tol = parity["tolerance"][dtype]
            assert all(finite(r[k]) for k in ("loss", "loss_ref", "rel_loss", "grad_norm", "grad_norm_ref",
                                               "rel_grad_norm", "grad_cos")), (name, dtype, r)
            assert r["grad_norm"] > 0 and r["grad_norm_ref"] > 0, (name, dtype)
            assert r["rel_loss"] <= tol and r["rel_grad_norm"] <= tol and r["ok"], (name, dtype, r)
            assert r["grad_cos"] > 0.99, (name, dtype, r)
    assert parity["tolerance"] == {"float32": 1e-4, "bfloat16": 2e-2}
    assert cpu_run[1]["summary"]["parity_max_rel"]["bfloat16"] <= 2e-2


@pytest.mark.parametrize("engine", ["trl", "native"])
def test_each_engine_reports_every_step_from_its_mlflow_run(cpu_run, engine):
    result = cpu_run[1]
    part, n_params = result[engine], result["model"]["parameters"]
    assert "error" not in part and part["status"] == "FINISHED" and f"run.engine={engine}" in part["config"]
    assert [s["step"] for s in part["steps"]] == [1, 2]
    for s in part["steps"]:
        for key in ("rollout_s", "logprob_s", "update_s", "step_s", "tokens", "generated_tokens",
                    "gen_tokens_per_s", "flops", "tflops_per_s"):
            assert finite(s[key]) and s[key] > 0, (engine, key, s)
        assert s["rollout_s"] + s["logprob_s"] + s["update_s"] <= s["step_s"] * (1 + 1e-6)
        assert s["generated_tokens"] < s["tokens"]  # prompt tokens count too
        assert s["gen_tokens_per_s"] == pytest.approx(s["generated_tokens"] / s["rollout_s"])
        # The stated formula: rollout 2N, log-probs 4N, update 6N per token (one epoch).
        assert s["flops"] == pytest.approx(12 * n_params * s["tokens"])
        assert s["mfu"] is None and s["peak_gpu_mem_gib"] is None  # no GPU: no peak to divide by, no memory
    summary = result["summary"][engine]
    assert summary["steps"] == 2 and summary["median_step_s"] > 0 and summary["median_mfu"] is None


@pytest.mark.parametrize("args, message", [
    (["--cpu", "--out", "X", "--steps", "0"], "--steps must be >= 1"),
    (["--cpu", "--out", "X", "--bogus"], "unrecognized arguments: --bogus"),
    (["--cpu"], "no output folder"),
    (["--wheels"], "--wheels needs a folder"),
    (["--wheels", "EMPTY", "--out", "X"], "no wheels in"),
])
def test_bad_arguments_are_one_line_and_a_non_zero_exit(args, message, tmp_path):
    (tmp_path / "EMPTY").mkdir()
    args = [str(tmp_path / a) if a in ("X", "EMPTY") else a for a in args]
    out = smoke(*args, tmp_path=tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_without_a_gpu_the_gpu_path_says_so_in_one_line(tmp_path):
    out = smoke("--out", str(tmp_path), tmp_path=tmp_path, script=ROOT / "scripts" / "gpu_smoke.py")
    assert out.returncode == 2 and "no CUDA device is visible; run with --cpu" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
