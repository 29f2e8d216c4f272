"""Study files and `vimpo-bench study run`: grid expansion, `extends:`, bad input, and real runs on the
tiny model recorded in a real sqlite MLflow store (resume skips finished cells, a failed cell does not
stop the others)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from vimpo_bench.config import STUDIES_DIR, ConfigError
from vimpo_bench.experiments.study import expand, load_study, plan, run_study


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------- grid, extends


def test_grid_is_the_product_of_the_axes_and_extends_merges(tmp_path):
    write(tmp_path / "parent.yaml", """
        extends: tiny_demo
        optim: {lr: 3.0e-4}
        algo: {name: vimpo, beta: 0.1}
        study:
          axes:
            algo.name: [vimpo, grpo]
            run.seed: [0, 1, 2]
          budget: {steps: 7}
        """)
    write(tmp_path / "child.yaml", """
        extends: parent.yaml
        study:
          name: kid
          axes:
            run.seed: null            # dropped from the parent's grid
            noise:
              - {label: clean, reward.noise: none}
              - {reward.noise: symmetric, reward.p: 0.2}
        """)
    parent = expand(load_study(tmp_path / "parent.yaml"))
    assert [c.labels for c in parent][:4] == [
        {"algo.name": "vimpo", "run.seed": "0"}, {"algo.name": "vimpo", "run.seed": "1"},
        {"algo.name": "vimpo", "run.seed": "2"}, {"algo.name": "grpo", "run.seed": "0"}]
    assert len(parent) == 6 and len({c.config.hash() for c in parent}) == 6
    assert all(c.config.optim.steps == 7 and c.config.optim.lr == 3e-4 for c in parent)  # budget + base
    assert parent[0].config.algo.beta == 0.1
    assert parent[3].config.algo.beta == 0.04  # switching to grpo drops VIMPO's beta: GRPO's default
    assert all(c.config.run.experiment == "parent" for c in parent)

    study = load_study(tmp_path / "child.yaml")
    cells = expand(study)
    assert study.name == "kid" and study.suites == ["arith"]  # suites inherited from tiny_demo
    assert [c.label for c in cells] == ["algo.name=vimpo,noise=clean", "algo.name=vimpo,noise=noise=symmetric,p=0.2",
                                        "algo.name=grpo,noise=clean", "algo.name=grpo,noise=noise=symmetric,p=0.2"]
    assert cells[1].config.reward.noise == "symmetric" and cells[1].config.reward.p == 0.2
    assert cells[0].config.reward.noise == "none"
    assert cells[1].config.run.run_name == "kid/vimpo-noise=symmetric,p=0.2"


def test_every_shipped_study_expands():
    sizes = {}
    for path in sorted(STUDIES_DIR.glob("*.yaml")):
        study = load_study(path)
        assert study.description, f"{path.name} has no description"
        assert path.read_text().startswith("#"), f"{path.name} is not documented at its top"
        sizes[path.stem] = len(expand(study))
    assert sizes == {"tiny_demo": 1, "vimpo_vs_grpo": 25, "noisy_rewards": 30, "moving_ref": 12,
                     "vimpo_ablation": 21, "beta_sweep": 30, "paper_main": 2,
                     "paper_smoke": 2, "vimpo_vs_grpo_hard": 25, "vimpo_readings": 30, "answer_base": 1,
                     "answer": 60, "answer_hard": 30, "answer_tune_grpo": 1, "answer_tune_vimpo": 1,
                     "answer_tune_vimpo_implied": 1}
    # the answer: 20 paired seeds of three arms, tuned alike (same budget, seed and sampler for every arm)
    answer = expand(load_study("answer"))
    assert {c.config.run.seed for c in answer} == set(range(20)) and {c.config.optim.steps for c in answer} == {80}
    assert {c.config.task.options["n_test"] for c in answer} == {1000}
    tuning = [load_study(f"answer_tune_{arm}") for arm in ("grpo", "vimpo", "vimpo_implied")]
    assert len({(s.budget.trials, s.budget.steps, str(s.sweep), s.base_config().run.seed) for s in tuning}) == 1
    main = expand(load_study("vimpo_vs_grpo"))
    assert {c.config.algo_name for c in main} == {"vimpo", "grpo", "dr_grpo", "dapo", "rloo"}
    assert {c.config.optim.steps for c in main} == {150}
    # beta is tuned for every arm that has one, on the same grid
    betas = {(c.config.algo_name, c.config.algo.beta) for c in expand(load_study("beta_sweep"))}
    assert {b for a, b in betas if a == "vimpo"} == {b for a, b in betas if a == "grpo"} == {0.01, 0.02, 0.05, 0.1, 0.2}
    paper = load_study("paper_main")
    assert paper.suites == ["math500", "aime24", "aime25", "olympiadbench"]
    assert expand(paper)[0].config.model.name == "Qwen/Qwen2.5-Math-1.5B"


@pytest.mark.parametrize("body, message", [
    ("study: {axis: {}}", "study: unknown key(s) axis"),
    ("study: {axes: {algo.nme: [vimpo]}}", "unknown algo option(s) nme"),
    ("study: {axes: {optim.lr: []}}", "study.axes.optim.lr: a non-empty list"),
    ("study: {axes: {optim.lr: [fast]}}", "optim.lr: expected a number"),
    ("study: {axes: {noise: [0.1, 0.2]}}", "an axis named without a dot takes mappings"),
    ("study: {axes: {algo.name: [vimpo, nope]}}", "unknown algorithm 'nope'"),
    ("study: {axes: {run.seed: [0, 1, 2]}, budget: {max_cells: 2}}", "3 cells exceed study.budget.max_cells"),
    ("study: {axes: {v: [{label: a, optim.lr: 0.001}, {label: b, optim.lr: 1.0e-3}]}}", "have the same config"),
    ("study: {axes: {run.seed: [0, 0.5]}}", "run.seed: expected an integer, got 0.5"),
    ("study: {suites: [math501]}", "study.suites: unknown suite 'math501'"),
    ("study: {suites: [arith], eval: {n_samples: 4}}", "study.eval: unknown key(s) n_samples"),
    ("study: {suites: [arith], eval: {max_new_tokens: 20}}",
     "study.eval.max_new_tokens: 20 is below rollout.max_new_tokens 28"),
    ("study: {suites: [arith], eval: {max_tokens: 28}}", "study.eval.max_tokens is now max_new_tokens"),
    ("study: {suites: [arith], eval: {arith_options: {terms: 1}}}", "terms"),
    ("study: {budget: {steps: 0}}", "study.budget.steps: must be > 0"),
    ("study: [1, 2]", "study: must be a mapping"),
    ("study: {axes: {run.seed: [0}", "not valid YAML"),
])
def test_bad_study_files_fail_naming_the_file_and_key(tmp_path, body, message):
    path = write(tmp_path / "bad.yaml", "extends: tiny_demo\n" + body + "\n")
    with pytest.raises(ConfigError) as err:
        expand(load_study(path))
    assert message in str(err.value)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------ running a study


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_study_runs_resumes_and_reports_failed_cells(tmp_path, easy_model_cache, easy_study_yaml, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path / "mini.yaml", easy_study_yaml(easy_model_cache, tmp_path / "runs", f"""
study:
  description: two algorithms and a cell whose model folder is missing
  axes:
    variant:
      - {{label: vimpo, algo.name: vimpo}}
      - {{label: grpo, algo.name: grpo}}
      - {{label: broken, model.name: "{tmp_path / 'no-such-model'}"}}
  suites: [arith]
  eval: {{limit: 10, n: 2, temperature: 1.0, max_new_tokens: 24, grader_workers: 0}}
"""))
    study = load_study(path)
    assert [p.action for p in plan(study, expand(study), store)] == ["run", "run", "run"]

    result = run_study(study, tracking_uri=store)
    assert [o.status for o in result.outcomes] == ["done", "done", "failed"], [o.error for o in result.outcomes]
    assert "no-such-model" in result.outcomes[2].error and "\n" not in result.outcomes[2].error
    assert result.outcomes[0].metrics["arith/accuracy"] is not None

    client = MlflowClient(store)
    runs = runs_of(client, "mini")
    by_kind = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("vimpo.kind"), []).append(r)
    (parent,) = by_kind["study"]
    assert parent.info.status == "FAILED"  # a cell failed
    train = sorted(by_kind["train"], key=lambda r: r.data.tags["vimpo.axis.variant"])
    assert [r.data.tags["vimpo.axis.variant"] for r in train] == ["broken", "grpo", "vimpo"]
    assert [r.info.status for r in train] == ["FAILED", "FINISHED", "FINISHED"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in train)
    assert all(r.data.tags["vimpo.study"] == "mini" for r in train)
    evals = by_kind["eval"]
    assert sorted(r.data.tags["mlflow.parentRunId"] for r in evals) == sorted(r.info.run_id for r in train[1:])
    assert all(r.info.status == "FINISHED" and "eval/arith/accuracy" in r.data.metrics for r in evals)

    # The same command again: finished cells are skipped (no new runs), the failed one is tried again and
    # reported with a one-line error and exit code 1; 2 workers exercise the process pool.
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    proc = subprocess.run([sys.executable, "-m", "vimpo_bench", "study", "run", str(path), "--workers", "2", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["counts"] == {"skipped": 2, "failed": 1}
    assert summary["parent_run_id"] == parent.info.run_id  # the same parent run, reopened
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "1 of 3 cell(s) failed" in error_lines[0]
    assert "Traceback" not in proc.stderr
    after = runs_of(client, "mini")
    assert len(after) == len(runs) + 1  # only the retried broken cell added a run
    assert [p.action for p in plan(study, expand(study), store)] == ["skip", "skip", "run"]


def test_dry_run_prints_the_plan_without_creating_a_store(tmp_path):
    path = write(tmp_path / "grid.yaml", """
        extends: tiny_demo
        study: {axes: {algo.name: [vimpo, grpo], run.seed: [0, 1]}}
        """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-m", "vimpo_bench", "study", "run", str(path), "--dry-run"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("study grid: 4 cell(s)")
    assert lines[1].split()[:4] == ["cell", "algo.name", "run.seed", "algo"]
    assert [line.split()[1] for line in lines[2:6]] == ["vimpo", "vimpo", "grpo", "grpo"]
    assert all(line.split()[-1] == "run" for line in lines[2:6])
    assert not (tmp_path / "mlflow.db").exists()

    bad = write(tmp_path / "bad.yaml", "study: {axes: {optim.lr: []}}\n")
    proc = subprocess.run([sys.executable, "-m", "vimpo_bench", "study", "run", str(bad)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: study.axes.optim.lr")
    assert "Traceback" not in proc.stderr


def test_a_cut_short_cell_is_resumed_and_the_minutes_budget_holds_back_new_cells(
        tmp_path, easy_model_cache, easy_study_yaml, monkeypatch):
    from vimpo_bench.engines import run
    from vimpo_bench.experiments.study import cell_tags

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write(tmp_path / "cut.yaml", easy_study_yaml(easy_model_cache, tmp_path / "runs", """
study:
  axes: {run.seed: [0]}
""", steps=3))
    study = load_study(path)
    (cell,) = expand(study)
    cut = run(cell.config, tracking_uri=store, tags=cell_tags(study, cell), stop_after=1)  # as if killed
    assert cut.steps == 1
    (planned,) = plan(study, [cell], store)
    assert (planned.action, planned.run_id) == ("resume", cut.run_id)

    result = run_study(study, tracking_uri=store)
    (outcome,) = result.outcomes
    assert (outcome.status, outcome.run_id) == ("done", cut.run_id)  # the same run, continued
    history = MlflowClient(store).get_metric_history(cut.run_id, "reward/clean_mean")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert MlflowClient(store).get_run(cut.run_id).info.status == "FINISHED"

    more = write(tmp_path / "more.yaml", path.read_text().replace("run.seed: [0]", "run.seed: [0, 1, 2]")
                 .replace("study:", "study:\n  name: cut\n  budget: {minutes: 0.00001}"))
    result = run_study(load_study(more), tracking_uri=store)
    assert [o.status for o in result.outcomes] == ["skipped", "not started", "not started"]


def test_a_cells_final_evaluation_follows_its_task_and_is_redone_when_the_settings_change(
        tmp_path, easy_model_cache, easy_study_yaml, monkeypatch):
    """The study's final test evaluation of the built-in task is generated with the cell's task options
    (it once tested 4-term policies on the default 3-term problems with the 3-term token budget: all
    truncated, all 0). A done cell whose evaluation was made with other settings is evaluated again from
    its checkpoint: its training run is kept, the old evaluation is superseded and leaves the report."""
    from conftest import EASY_TASK

    from vimpo_bench.report.collect import select_runs
    from vimpo_bench.tasks.arith import ArithTask

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    body = easy_study_yaml(easy_model_cache, tmp_path / "runs", """
study:
  name: follows
  axes: {run.seed: [0]}
  suites: [arith]
  eval: {limit: 6, max_new_tokens: MAX, grader_workers: 0}
""")
    first = load_study(write(tmp_path / "first.yaml", body.replace("MAX", "24")))
    (outcome,) = run_study(first, tracking_uri=store).outcomes
    assert outcome.status == "done", outcome.error
    client = MlflowClient(store)
    (old_eval,) = [r for r in runs_of(client, "follows") if r.data.tags.get("vimpo.kind") == "eval"]
    assert old_eval.data.params["data.arith.sha256"] == ArithTask(**EASY_TASK).data_hash("test")
    assert old_eval.data.params["arith_options.digits"] == "1"
    records = client.download_artifacts(old_eval.info.run_id, "records/arith.parquet", str(tmp_path))
    assert all(len(q.split("+")[0]) == 1 for q in pd.read_parquet(records)["prompt"])  # one-digit operands

    second = load_study(write(tmp_path / "second.yaml", body.replace("MAX", "30")))
    (planned,) = plan(second, expand(second), store)
    assert (planned.action, planned.run_id, planned.stale_evals) == ("eval", outcome.run_id, [old_eval.info.run_id])
    (again,) = run_study(second, tracking_uri=store).outcomes
    assert (again.status, again.run_id) == ("done", outcome.run_id)  # the same training run, evaluated again
    evals = {r.info.run_id: r for r in runs_of(client, "follows") if r.data.tags.get("vimpo.kind") == "eval"}
    assert len(evals) == 2
    old = evals.pop(old_eval.info.run_id)
    assert old.info.status == "FINISHED" and old.data.tags["vimpo.cell_status"] == "superseded"
    (new,) = evals.values()
    assert new.data.params["sampling.max_new_tokens"] == "30"
    assert new.data.tags["mlflow.parentRunId"] == outcome.run_id
    kept = {r["run_id"] for r in select_runs(study="follows", tracking_uri=store)[0]}
    assert new.info.run_id in kept and old_eval.info.run_id not in kept
    assert [p.action for p in plan(second, expand(second), store)] == ["skip"]
    assert [p.action for p in plan(first, expand(first), store)] == ["eval"]  # the first settings are stale now
    client.delete_run(new.info.run_id)  # a done cell with no evaluation left is evaluated again
    assert [(p.action, p.stale_evals) for p in plan(second, expand(second), store)] == [("eval", [])]
