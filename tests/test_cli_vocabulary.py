"""One flag vocabulary (issue 26 section 2): options with a fixed set of values are typed choices, listed in
`--help` and refused while the command line is parsed, before anything starts; an idea has one name in every
command (`--tracking-uri`, `--experiment`, `--seed`, `--max-new-tokens`); flags show as flags."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from vimpo_bench import cli


def _invoke(*args: str):
    cli._register()
    return CliRunner().invoke(cli.app, list(args), env={"COLUMNS": "250"})  # help rows on one line each


def _help(*command: str) -> str:
    out = _invoke(*command, "--help")
    assert out.exit_code == 0, out.output
    return re.sub(r"[│╭╮╰╯─\s]+", " ", out.output)  # the panel's borders and line breaks out


# (command, option, a value outside the choices, what the one line says)
CHOICES = [
    ("train", "--algo", cli.ALGOS, "ppo", "unknown algorithm 'ppo'; valid algorithms: dapo, dr_grpo, grpo, rloo, vimpo"),
    ("train", "--engine", cli.ENGINES, "jax", "--engine sets run.engine: 'jax' is not one of native, trl"),
    ("eval", "--backend", cli.BACKENDS, "tpu", "unknown backend 'tpu'; valid: hf, vllm"),
    ("eval", "--harness", cli.HARNESSES, "helm", "unknown harness 'helm'; valid: native, lm-eval"),
    ("eval", "--dtype", cli.DTYPES, "fp8", "unknown dtype 'fp8'; valid: float32, bfloat16, float16"),
    ("eval", "--preset", cli.PRESETS, "best", "unknown sampling preset 'best'; valid presets: greedy, avg16, r1, "
                                               "dapo, passk"),
    ("eval", "--template", cli.TEMPLATES, "llama", "unknown prompt template 'llama'; valid templates: qwen-boxed, "
                                                   "r1, plain"),
    ("report", "--format", cli.FORMATS, "pdf", "unknown format 'pdf': choose one of html, markdown"),
]


@pytest.mark.parametrize("command, option, values, bad, message", CHOICES, ids=[c[1] for c in CHOICES])
def test_a_choice_is_listed_in_help(command, option, values, bad, message):
    assert f"{option} <{'|'.join(values)}>" in _help(command)


# Run as the console script does, in a fresh interpreter: the refusal comes while the command line is parsed,
# before the command imports anything heavy (torch, the model, the MLflow store).
_REFUSE = """
import sys
from vimpo_bench.cli import main
sys.argv = ["vimpo-bench", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    print("exit", exc.code, "torch" in sys.modules, "mlflow" in sys.modules)
"""


@pytest.mark.parametrize("command, option, values, bad, message", CHOICES, ids=[c[1] for c in CHOICES])
def test_a_value_outside_the_choices_is_refused_before_start_up(command, option, values, bad, message, tmp_path):
    required = ["--model", "tiny-arith"] if command == "eval" else ["--experiment", "x"] if command == "report" else []
    proc = subprocess.run([sys.executable, "-c", _REFUSE, command, *required, option, bad], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.stdout.strip() == "exit 2 False False", (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == [f"error: {message}"], proc.stderr
    assert list(tmp_path.iterdir()) == []  # no store, no runs/ folder


def test_the_choices_are_the_librarys():
    """The CLI lists the values without importing the library (it starts in a fraction of a second): the
    lists must be the library's own."""
    from vimpo_bench import algorithms, engines, models, report
    from vimpo_bench.evaluation import evaluate
    from vimpo_bench.tasks import prompts

    assert cli.ALGOS == tuple(algorithms.names())
    assert cli.ENGINES == tuple(engines.names())
    assert cli.BACKENDS == evaluate.BACKENDS and cli.HARNESSES == evaluate.HARNESSES
    assert cli.DTYPES == tuple(models.DTYPES)
    assert cli.PRESETS == tuple(evaluate.PRESETS)
    assert cli.TEMPLATES == tuple(prompts.TEMPLATES)
    assert cli.FORMATS == tuple(report.FORMATS)
    from vimpo_bench.cli.eval import DEFAULT_MAX_NEW_TOKENS

    assert DEFAULT_MAX_NEW_TOKENS == evaluate.DEFAULT_MAX_NEW_TOKENS == evaluate.EvalConfig().max_new_tokens


@pytest.mark.parametrize("command", [(), ("train",), ("eval",), ("report",)], ids=["root", "train", "eval", "report"])
def test_flags_show_as_flags(command):
    text = _help(*command)
    assert "<bool>" not in text
    assert re.search(r"--help Show this message", text)
    if command:
        flag = {"train": "--json", "eval": "--json", "report": "--runs"}[command[0]]
        assert re.search(rf"{flag} [A-Z]", text), text  # its help follows it: no type between
    else:
        assert "--debug Show full tracebacks" in text


def test_one_name_per_idea_in_every_command():
    for command, options in {
        "train": ("--tracking-uri", "--experiment", "--seed", "--max-new-tokens", "--json"),
        "eval": ("--tracking-uri", "--experiment", "--seed", "--max-new-tokens", "--json"),
        "report": ("--tracking-uri", "--experiment"),
    }.items():
        text = _help(command)
        for option in options:
            assert f" {option} " in text, (command, option)
    assert "--max-tokens" not in _help("eval")  # the old name still works but is no longer offered


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A 1-step training run made with the named flags: (store, experiment, run id, env store)."""
    root = tmp_path_factory.mktemp("named-flags")
    store, elsewhere = f"sqlite:///{root / 'named.db'}", f"sqlite:///{root / 'env.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", elsewhere)
        out = _invoke("train", "--algo", "grpo", "--set", f"model.name={tiny_model_dir}",
                      "--set", "rollout.prompts_per_step=4", "--set", "rollout.group_size=4", "--set",
                      "optim.steps=1", "--set", "eval.every=0", "--set", "eval.problems=4", "--set", "run.threads=1",
                      "--seed", "3", "--max-new-tokens", "6", "--experiment", "named: 1", "--tracking-uri", store,
                      "--json")
    assert out.exit_code == 0, out.output[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return store, "named: 1", summary["run_id"], elsewhere


def test_train_takes_the_store_experiment_seed_and_length_limit_by_name(trained):
    store, experiment, run_id, elsewhere = trained
    run = MlflowClient(store).get_run(run_id)
    assert MlflowClient(store).get_experiment(run.info.experiment_id).name == experiment
    assert run.data.params["run.seed"] == "3" and run.data.params["rollout.max_new_tokens"] == "6"
    assert run.data.params["run.experiment"] == experiment
    assert MlflowClient(elsewhere).get_experiment_by_name(experiment) is None  # not in $MLFLOW_TRACKING_URI


def test_eval_takes_the_store_and_length_limit_by_name(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store, elsewhere = f"sqlite:///{tmp_path / 'named.db'}", f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    out = _invoke("eval", "--model", str(tiny_model_dir), "--suite", "arith", "--limit", "2", "--max-new-tokens", "5",
                  "--grader-workers", "0", "--seed", "7", "--experiment", "ev", "--tracking-uri", store, "--json")
    assert out.exit_code == 0, out.output[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    run = MlflowClient(store).get_run(summary["run_id"])
    assert MlflowClient(store).get_experiment(run.info.experiment_id).name == "ev"
    assert run.data.params["sampling.max_new_tokens"] == "5" and run.data.params["seed"] == "7"
    assert not (tmp_path / "env.db").exists()
    # the old name is the same setting, said once on stderr; two different limits are refused
    old = _invoke("eval", "--model", str(tiny_model_dir), "--suite", "arith", "--limit", "1", "--max-tokens", "4",
                  "--grader-workers", "0", "--no-track", "--json")
    assert old.exit_code == 0, old.output[-3000:]
    assert "warning: --max-tokens is the old name of --max-new-tokens" in old.stderr
    assert json.loads(old.stdout.strip().splitlines()[-1])["sampling"]["max_new_tokens"] == 4
    both = _invoke("eval", "--model", "x", "--max-tokens", "4", "--max-new-tokens", "8")
    assert both.exit_code == 2 and both.stderr.strip() == ("error: --max-tokens 4 and --max-new-tokens 8: one limit, "
                                                           "give --max-new-tokens")


@pytest.mark.parametrize("command", [["train"], ["eval"], ["report"], ["study", "run"], ["sweep"]])
def test_every_command_that_touches_mlflow_takes_the_same_tracking_uri_flag(command):
    out = subprocess.run([sys.executable, "-m", "vimpo_bench", *command, "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0 and "--tracking-uri" in out.stdout
    assert "MLflow store (default $MLFLOW_TRACKING_URI, else ./mlflow.db)." in " ".join(out.stdout.split())


def test_flag_help_comes_from_the_config_fields_docs():
    """One source: a train flag that sets a config key shows that field's docstring, and every field of every
    config section has one (cli.config_help reads them from the schema)."""
    import dataclasses

    from vimpo_bench.cli.config_help import field_doc
    from vimpo_bench.config import SECTIONS

    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            assert field_doc(f"{section}.{field.name}"), f"{section}.{field.name} has no docstring"
    out = _invoke("train", "--help").output
    flat = " ".join(out.replace("│", " ").split())
    for key in ("run.seed", "run.engine", "rollout.max_new_tokens", "run.experiment"):
        assert " ".join(field_doc(key).split()) in flat, key
