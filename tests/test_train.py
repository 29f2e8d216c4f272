"""The training loop end to end on a tiny model: every algorithm, MLflow records, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM

from vimpo_bench.config import load_config
from vimpo_bench.engines import run

FAST = [
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=10",
    "optim.minibatches=2", "optim.lr=1e-3", "eval.problems=6", "eval.samples=2", "eval.every=2",
    "run.threads=1",
]


from conftest import WARM_STEPS  # noqa: E402 - the warm model fixture (conftest.warm_model_dir) uses it


def fast_config(model_dir, tmp_path, *extra):
    if str(model_dir).split("/")[-1].startswith("tiny-arith-"):  # the warm-started built-in model
        model = ["model.name=tiny-arith", f"model.cache_dir={model_dir.parent}", f"model.warm_start_steps={WARM_STEPS}"]
    else:
        model = [f"model.name={model_dir}"]
    return load_config(overrides=[*model, f"run.output_dir={tmp_path / 'runs'}", *FAST, *extra])


@pytest.fixture()
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize("algo", ["vimpo", "grpo", "dr_grpo", "dapo", "rloo"])
def test_every_algorithm_trains_and_is_recorded(algo, warm_model_dir, tmp_path, store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Symmetric noise guarantees reward variance in the groups even where the model is always wrong.
    config = fast_config(warm_model_dir, tmp_path, f"algo.name={algo}", "optim.steps=2", "reward.noise=symmetric",
                         "reward.p=0.3", "rollout.max_new_tokens=28")
    result = run(config, tracking_uri=store)
    assert result.steps == 2

    before = AutoModelForCausalLM.from_pretrained(warm_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(f"{result.checkpoint}/policy").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"

    client = MlflowClient(store)
    rec = client.get_run(result.run_id)
    assert rec.info.status == "FINISHED"
    assert rec.data.params["algo.name"] == algo
    assert rec.data.tags["vimpo.kind"] == "train" and rec.data.tags["git_commit"]
    assert rec.data.tags["versions.torch"].startswith("2.")
    for name in ("reward/clean_mean", "reward/trained_mean", "loss/total", "policy/kl_k3", "policy/entropy",
                 "policy/clip_frac", "rollout/response_len", "perf/rollout_s", "perf/tokens_per_s",
                 "val/sampled_accuracy", "val/greedy_accuracy"):
        history = client.get_metric_history(result.run_id, name)
        assert history, name
    steps = [m.step for m in client.get_metric_history(result.run_id, "loss/total")]
    assert steps == [1, 2]
    if algo == "vimpo":
        assert client.get_metric_history(result.run_id, "loss/value")
        assert client.get_metric_history(result.run_id, "vimpo/abs_residual")
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "samples", "diagnostics"} <= artifacts
    # in-training evaluation reads the validation split, never test
    sample_file = client.download_artifacts(result.run_id, "samples/step_000002.jsonl", str(tmp_path))
    ids = {json.loads(line)["id"] for line in open(sample_file)}
    assert ids and all(i.startswith("arith-validation-") for i in ids)
    assert rec.data.tags["data.validation_sha256"] != rec.data.tags["data.test_sha256"]


def test_noise_and_moving_reference_are_logged(warm_model_dir, tmp_path, store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fast_config(warm_model_dir, tmp_path, "optim.steps=2", "reward.noise=symmetric", "reward.p=0.5",
                         "ref.schedule=hard", "ref.every=1", "beta_schedule.kind=linear", "beta_schedule.final=0.01")
    result = run(config, tracking_uri=store)
    client = MlflowClient(store)
    flips = [m.value for m in client.get_metric_history(result.run_id, "reward/flip_rate")]
    assert any(f > 0 for f in flips)
    assert [m.value for m in client.get_metric_history(result.run_id, "vimpo/ref_update")] == [1.0, 1.0]
    assert client.get_metric_history(result.run_id, "vimpo/value_loss_post_ref_update")
    betas = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "vimpo/beta"))
    assert betas[0][1] == pytest.approx(0.05) and betas[-1][1] == pytest.approx(0.01)
    # 2 beta c_V is held at 0.5 while beta anneals: c_V grows as beta shrinks
    scales = [m.value for m in client.get_metric_history(result.run_id, "vimpo/value_scale")]
    coefs = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, "vimpo/value_coef"))
    assert scales == pytest.approx([0.5] * len(scales)) and coefs[-1][1] == pytest.approx(0.5 / (2 * 0.01))


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(warm_model_dir, tmp_path, store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fast_config(warm_model_dir, tmp_path, "optim.steps=4", "run.checkpoint_every=2",
                         "ref.schedule=ema", "ref.every=2")
    whole = run(config, tracking_uri=store)
    cut = run(config, tracking_uri=store, stop_after=2)  # as if killed after the step-2 checkpoint
    assert cut.steps == 2
    resumed = run(config, resume_run_id=cut.run_id, tracking_uri=store)
    assert resumed.run_id == cut.run_id and resumed.steps == 4
    client = MlflowClient(store)
    for name in ("loss/total", "reward/trained_mean", "policy/kl_k3", "val/sampled_accuracy"):
        a = {m.step: m.value for m in client.get_metric_history(whole.run_id, name)}
        b = {m.step: m.value for m in client.get_metric_history(cut.run_id, name)}
        assert set(a) == set(b), name
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), (name, step)
    assert client.get_run(cut.run_id).info.status == "FINISHED"


def test_a_save_cut_short_keeps_the_previous_checkpoint(tmp_path):
    from vimpo_bench.runs.checkpoints import find_checkpoint

    run_dir = tmp_path / "r"
    (run_dir / "checkpoint.old").mkdir(parents=True)
    (run_dir / "checkpoint.old" / "COMPLETE").write_text("2")
    (run_dir / ".checkpoint-half").mkdir()  # a kill left a half-written folder and no `checkpoint`
    assert find_checkpoint(run_dir) == run_dir / "checkpoint.old"
    (run_dir / "checkpoint").mkdir()
    (run_dir / "checkpoint" / "COMPLETE").write_text("4")
    assert find_checkpoint(run_dir) == run_dir / "checkpoint"


def cli(*args, cwd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vimpo_bench", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def cli_in_process(*args):
    from typer.testing import CliRunner

    from vimpo_bench.cli import _register, app

    _register()
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("args,message", [
    (["--algo", "ppo"], "unknown algorithm 'ppo'"),
    (["--set", "algo.kl=1"], "unknown algo option(s) kl"),
    (["--set", "optim.stepz=3"], "unknown key(s) stepz"),
    (["--set", "optim.steps=many"], "optim.steps: expected an integer"),
    (["--study", "no_such_study"], "study file not found"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = cli_in_process("train", *args)  # in-process: a subprocess per case costs ~20 s of imports
    assert out.exit_code != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if line.strip()] == [out.stderr.strip()]


def test_missing_model_fails_the_mlflow_run(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = cli("train", "--set", "model.name=./no/such/model", *[f"--set={s}" for s in FAST], cwd=tmp_path,
              env_extra={"MLFLOW_TRACKING_URI": store})
    assert out.returncode != 0
    assert "model folder not found: ./no/such/model" in out.stderr and "Traceback" not in out.stderr
    runs = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("vimpo-bench").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_diverging_training_stops_with_a_clear_line(warm_model_dir, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = ["--set=model.name=tiny-arith", f"--set=model.cache_dir={warm_model_dir.parent}",
             f"--set=model.warm_start_steps={WARM_STEPS}", "--set=reward.noise=symmetric", "--set=reward.p=0.3"]
    # GRPO: the noisy rewards give every group a signal, and a huge step sends the weights to inf.
    out = cli("train", "--algo", "grpo", *model, *[f"--set={s}" for s in FAST], "--set", "optim.steps=3",
              "--set", "optim.lr=1e38", "--json", cwd=tmp_path,
              env_extra={"MLFLOW_TRACKING_URI": store})
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error:")
    runs = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("vimpo-bench").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_json_summary_is_the_last_line(tiny_model_dir, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = cli("train", "--algo", "grpo", "--set", f"model.name={tiny_model_dir}", *[f"--set={s}" for s in FAST],
              "--set", "optim.steps=1", "--json", cwd=tmp_path, env_extra={"MLFLOW_TRACKING_URI": store})
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["run_id"]
    assert 0 <= summary["final_sampled_accuracy"] <= 1 and summary["initial_greedy_accuracy"] is not None
    params = MlflowClient(store).get_run(summary["run_id"]).data.params
    for key in ("machine.cpu_model", "machine.accelerator", "versions.torch", "versions.transformers",
                "model.start_checksum"):
        assert summary[key] and summary[key] == params[key], key


def test_the_closing_summary_says_what_the_run_ran_on(tiny_model_dir, tmp_path, monkeypatch):
    """The text summary prints the machine and the starting weights' checksum that the run's record holds."""
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    out = cli_in_process("train", "--algo", "grpo", "--set", f"model.name={tiny_model_dir}",
                         *[f"--set={s}" for s in FAST], "--set", "optim.steps=1", "--set", "eval.every=0")
    assert out.exit_code == 0, out.output[-3000:]
    (run,) = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("vimpo-bench").experiment_id])
    p = run.data.params
    assert (f"ran on {p['machine.cpu_model']}, GPU {p['machine.accelerator']}, torch {p['versions.torch']}, "
            f"transformers {p['versions.transformers']}; starting weights sha256 {p['model.start_checksum']}"
            ) in out.stdout.splitlines()


def test_a_run_records_the_load_average_at_start_and_end_and_the_cost_of_its_evaluations(tiny_model_dir, tmp_path):
    """What benchmarks/bench_perf.py reads: machine.load_start / machine.load_end tags, perf/eval_s and
    perf/eval_sequences at every evaluation (greedy + sampled sequences)."""
    from mlflow import MlflowClient

    from vimpo_bench.config import load_config
    from vimpo_bench.engines import run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(overrides=[f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}",
                                    "optim.steps=2", "eval.every=1", "eval.problems=3", "eval.samples=2",
                                    "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4"])
    result = run(config, tracking_uri=store)
    client = MlflowClient(store)
    tags = client.get_run(result.run_id).data.tags
    assert len(tags["machine.load_start"].split()) == 3 and len(tags["machine.load_end"].split()) == 3
    sequences = client.get_metric_history(result.run_id, "perf/eval_sequences")
    assert [m.value for m in sequences] == [3 + 3 * 2] * 3  # steps 0, 1, 2
    assert all(m.value > 0 for m in client.get_metric_history(result.run_id, "perf/eval_s"))
    assert len(client.get_metric_history(result.run_id, "val/pass_at_2")) == 3  # eval.samples = 2
    assert len(client.get_metric_history(result.run_id, "val/maj_at_2")) == 3


def test_in_training_evaluation_reports_pass_and_majority_at_n_by_hand():
    """Two problems x 3 samples: problem 0 right once (pass 1, majority wrong: two samples say 7), problem 1
    never right (pass 0, majority wrong)."""
    from types import SimpleNamespace

    import torch

    from vimpo_bench.rl.steps import pass_and_majority

    sampled = SimpleNamespace(group_ids=torch.tensor([0, 0, 0, 1, 1, 1]), texts=["5", "7", "7", "1", "2", "3"])
    task = SimpleNamespace(extract=lambda text: text)
    out = pass_and_majority(task, sampled, [True, False, False, False, False, False], 3)
    assert out == {"val/pass_at_3": 0.5, "val/maj_at_3": 0.0}
    out = pass_and_majority(task, sampled, [True, True, False, False, False, True], 3)
    assert out == {"val/pass_at_3": 1.0, "val/maj_at_3": 0.5}
    assert pass_and_majority(task, sampled, [True] * 6, 1) == {}


def test_each_evaluation_logs_a_completions_table_mlflow_can_load(tiny_model_dir, tmp_path):
    """completions/step_XXXXXX.json through MLflow's table logging: prompt, response, reward, advantage,
    truncated, one row per response up to eval.completions_logged, readable back with mlflow.load_table."""
    import mlflow

    from vimpo_bench.config import load_config
    from vimpo_bench.engines import run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(overrides=[f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}",
                                    "optim.steps=2", "eval.every=2", "eval.problems=2", "eval.samples=1",
                                    "eval.completions_logged=3", "rollout.prompts_per_step=2",
                                    "rollout.group_size=2", "rollout.max_new_tokens=4"])
    result = run(config, tracking_uri=store)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)  # MlflowClient.load_table searches through the fluent API's store
    try:
        client = mlflow.MlflowClient(store)
        experiment = client.get_run(result.run_id).info.experiment_id
        table = client.load_table(experiment, "completions/step_000002.json", run_ids=[result.run_id])
    finally:
        mlflow.set_tracking_uri(before)
    assert list(table.columns) == ["step", "prompt", "response", "reward", "clean_reward", "advantage", "length",
                                   "truncated"]
    assert len(table) == 3 and set(table["step"]) == {2} and table["truncated"].dtype == bool
