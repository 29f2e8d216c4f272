"""Evaluation: pass@k against brute force, majority vote, intervals, prompts, records, and the
`vimpo-bench eval` command end to end (tiny random Llama, real MLflow sqlite store)."""

from __future__ import annotations

import itertools
import json
import math
import os
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
import torch

from vimpo_bench import grading
from vimpo_bench.evaluation import evaluate as ev
from vimpo_bench.rollout.base import Rollouts, SamplingParams
from vimpo_bench.tasks import prompts

DATA = Path(
    os.environ.get("VIMPO_BENCH_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
needs_data = pytest.mark.skipif(
    not (DATA / "math500" / "test.jsonl").is_file(),
    reason=f"benchmark data not found at {DATA} (set VIMPO_BENCH_DATA to a folder laid out like ../shared/data)",
)


# ----------------------------------------------------------------------------------- metrics


def brute_force_pass_at_k(outcomes: tuple[bool, ...], k: int) -> Fraction:
    subsets = list(itertools.combinations(outcomes, k))
    return Fraction(sum(any(s) for s in subsets), len(subsets))


def test_pass_at_k_equals_enumeration_over_all_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            outcomes = (True,) * c + (False,) * (n - c)
            for k in range(1, n + 1):
                assert ev.pass_at_k(n, c, k) == pytest.approx(
                    float(brute_force_pass_at_k(outcomes, k)), abs=1e-12
                )


def test_pass_at_k_is_stable_for_large_n():
    n, c, k = 256, 3, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert ev.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert ev.pass_at_k(1024, 0, 512) == 0.0
    assert ev.pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024)
    with pytest.raises(ValueError):
        ev.pass_at_k(4, 5, 1)


def test_majority_vote():
    assert ev.majority_correct(["1", "2", "2"], [True, False, False]) is False
    assert ev.majority_correct(["x=1", "1", "3"], [True, True, False]) is True  # correct ones agree
    assert ev.majority_correct(["3", "1 ", None], [False, True, False]) is False  # tie: first seen wins
    assert ev.majority_correct(["1", "3"], [True, False]) is True
    assert ev.majority_correct(["3 ", " 3", "1"], [False, False, True]) is False  # spacing groups
    assert ev.majority_correct([None, None], [False, False]) is False


def test_intervals():
    low, high = ev.wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    assert ev.interval([0.0, 1.0, 1.0, 0.0]) == ev.wilson_interval(2, 4)
    values = [0.25, 0.5, 0.75, 1.0]
    sd = math.sqrt(sum((v - 0.625) ** 2 for v in values) / 3)
    assert ev.interval(values) == pytest.approx((0.625 - ev.Z95 * sd / 2, min(1.0, 0.625 + ev.Z95 * sd / 2)))


def _records(
    table: dict[str, list[tuple[str | None, bool]]], meta: dict[str, dict] | None = None
) -> list[dict]:
    out = []
    for pid, samples in table.items():
        for j, (answer, ok) in enumerate(samples):
            out.append(
                {
                    "problem_id": pid,
                    "sample_index": j,
                    "extracted": answer,
                    "correct": ok,
                    "tokens": 10 + j,
                    "finish_reason": "stop" if j else "length",
                    "timed_out": False,
                    "grader_error": None,
                    **(meta or {}).get(pid, {}),
                }
            )
    return out


def test_suite_metrics_by_hand():
    records = _records(
        {
            "a": [("1", True), ("1", True)],
            "b": [("2", False), ("5", True)],
            "c": [("7", False), ("7", False)],
        },
        {
            "a": {"subject": "Number Theory", "level": "1"},
            "b": {"subject": "Algebra", "level": "1"},
            "c": {"subject": "Algebra", "level": "3"},
        },
    )
    m = ev.suite_metrics(records, n=2)
    assert m["n_problems"] == 3 and m["n_samples"] == 6
    assert m["accuracy"] == pytest.approx(0.5) and m["avg_at_2"] == m["accuracy"]
    assert m["pass_at_1"] == pytest.approx(0.5)
    assert m["pass_at_2"] == pytest.approx(2 / 3)
    assert m["maj_at_2"] == pytest.approx(1 / 3)  # b ties 1-1 and "2" came first
    assert m["accuracy_ci_low"] < 0.5 < m["accuracy_ci_high"]
    assert m["subject/algebra/accuracy"] == pytest.approx(0.25) and m["subject/algebra/n_problems"] == 2
    assert m["subject/number_theory/accuracy"] == 1.0
    assert m["level/1/accuracy"] == pytest.approx(0.75) and m["level/3/accuracy"] == 0.0
    assert m["truncation_rate"] == pytest.approx(0.5) and m["mean_response_tokens"] == pytest.approx(10.5)
    with pytest.raises(ValueError, match="exactly n=3"):
        ev.suite_metrics(records, n=3)


# ------------------------------------------------------------------------------ config, prompts


def test_config_presets_and_validation():
    assert ev.EvalConfig().sampling() == SamplingParams(
        temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=4096, n=1
    )
    r1 = ev.EvalConfig(preset="r1", n=8).sampling()
    assert (r1.temperature, r1.top_p, r1.n) == (0.6, 0.95, 8)
    with pytest.raises(ValueError, match="temperature 0 are identical"):
        ev.EvalConfig(n=4)
    with pytest.raises(ValueError, match="unknown sampling preset 'hot'; valid presets: greedy"):
        ev.EvalConfig(preset="hot")
    with pytest.raises(ValueError, match="unknown prompt template 'chatml'"):
        ev.EvalConfig(template="chatml")
    with pytest.raises(ValueError, match="unknown suite"):
        ev.EvalConfig(suites="math500,gsm8k")


class _Tok:
    def __init__(self, template: str | None):
        self.chat_template = template

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        if self.chat_template == "no-system" and messages[0]["role"] == "system":
            raise ValueError("System role not supported")
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def test_templates():
    q = "What is 1+1?"
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert prompts.render("qwen-boxed", q) == f"{q}\n{instruction}"
    assert (
        prompts.render("qwen-boxed", q, _Tok("yes"))
        == f"<system>{instruction}</system><user>{q}</user><assistant>"
    )
    assert prompts.render("qwen-boxed", q, _Tok("no-system")) == f"<user>{q}\n{instruction}</user><assistant>"
    assert prompts.render("plain", q, _Tok("yes")) == q
    r1 = prompts.render("r1", q, _Tok("yes"))
    assert r1.endswith(f"User: {q}\nAssistant: <think>") and "<answer>" in r1
    record = prompts.describe("qwen-boxed", _Tok("yes"))
    assert (
        record["chat_template"] is True
        and "{question}" in record["example"]
        and record["chat_template_sha256"]
    )


def test_records_round_trip_through_parquet(tmp_path):
    problems = [grading_problem("p1", "2"), grading_problem("p2", "3")]
    grades = grading.grade_batch(
        ["\\boxed{2}", "x", "\\boxed{3}", "\\boxed{4}"], ["2", "2", "3", "3"], workers=0
    )
    records = ev.make_records(
        "aime24",
        problems,
        ["P1", "P2"],
        ["\\boxed{2}", "x", "\\boxed{3}", "\\boxed{4}"],
        grades,
        n=2,
        template="qwen-boxed",
        tokens=[3, 1, 3, 3],
        finish_reasons=["stop"] * 4,
    )
    jsonl, parquet = ev.write_records(records, tmp_path / "records" / "aime24")
    frame = pd.read_parquet(parquet)
    assert list(frame.columns) == list(ev.RECORD_FIELDS)
    assert frame["correct"].tolist() == [True, False, True, False]
    assert frame["sample_index"].tolist() == [0, 1, 0, 1]
    assert frame["prompt"].tolist() == ["P1", "P1", "P2", "P2"]
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == records
    assert set(frame["grader_version"]) == {grading.GRADER_VERSION}


def grading_problem(pid: str, answer: str):
    from vimpo_bench.tasks.base import Problem

    return Problem(id=pid, question=f"q {pid}", answer=answer, meta={"level": 2, "subject": "Algebra"})


class ScriptedGenerator:
    """A Generator that answers from a table (prompt -> completions); for checking the arithmetic of
    `evaluate` with answers a random model would never give."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers

    def generate(self, prompts_: list[str], params: SamplingParams, seed: int | None = None) -> Rollouts:
        texts = [self.answers[p][j] for p in prompts_ for j in range(params.n)]
        rows = len(texts)
        return Rollouts(
            prompt_ids=torch.ones(rows, 1, dtype=torch.long),
            prompt_mask=torch.ones(rows, 1, dtype=torch.long),
            response_ids=torch.ones(rows, 4, dtype=torch.long),
            response_mask=torch.ones(rows, 4, dtype=torch.long),
            truncated=torch.zeros(rows, dtype=torch.bool),
            group_ids=torch.arange(len(prompts_)).repeat_interleave(params.n),
            texts=texts,
            prompts=[p for p in prompts_ for _ in range(params.n)],
        )


@needs_data
def test_evaluate_scores_what_the_generator_says(tmp_path):
    from vimpo_bench import tasks

    problems = tasks.get("aime24", data_dir=DATA).problems("test", limit=3)
    table = {
        prompts.render("qwen-boxed", problems[0].question): [
            f"\\boxed{{{problems[0].answer}}}",
            "\\boxed{1}",
        ],
        prompts.render("qwen-boxed", problems[1].question): ["\\boxed{1}", "\\boxed{1}"],
        prompts.render("qwen-boxed", problems[2].question): [f"so {problems[2].answer}"] * 2,
    }
    config = ev.EvalConfig(
        suites="aime24", limit=3, n=2, temperature=1.0, data_dir=str(DATA), grader_workers=0, batch_size=2
    )
    seen = []
    result = ev.evaluate(ScriptedGenerator(table), config, progress=seen.append, output_dir=tmp_path)
    m = result.suites["aime24"].metrics
    assert m["accuracy"] == pytest.approx(0.5) and m["pass_at_2"] == pytest.approx(2 / 3)
    assert m["maj_at_2"] == pytest.approx(2 / 3)  # problem 0 ties and its correct answer came first
    assert [(e.done, e.total) for e in seen] == [(2, 3), (3, 3)]
    assert seen[0].accuracy == pytest.approx(0.25)
    assert pd.read_parquet(tmp_path / "records" / "aime24.parquet")["correct"].sum() == 3


# -------------------------------------------------------------------------- end to end (CLI)


def _tiny_model(folder: Path, context: int = 4096) -> Path:
    """A random 2-layer Llama (`context` positions) with helper A's character tokenizer and a toy chat template."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from vimpo_bench.models import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=context,
        initializer_range=0.5,  # a less degenerate random model: outputs vary by prompt
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One real sqlite store for the module (creating its tables takes seconds)."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(folder)  # mlartifacts/ and runs/ land here
        yield MlflowClient(uri)


def _cli(args: list[str]):
    from typer.testing import CliRunner

    import vimpo_bench.cli.eval  # noqa: F401 - registers the command
    from vimpo_bench.cli import app

    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise AssertionError(f"exit {result.exit_code}: {result.output}\n{result.exception!r}")
    return result


@needs_data
def test_cli_eval_every_suite_into_mlflow(tiny_model, mlflow_store, tmp_path):
    from vimpo_bench.runs.tracking import MlflowTracker

    parent = MlflowTracker.start(run_name="train", tags={"vimpo.kind": "train"})
    parent.finish()
    out = _cli(
        [
            "eval",
            "--suite",
            "math,arith",
            "--model",
            str(tiny_model),
            "--limit",
            "2",
            "--max-new-tokens",
            "16",
            "--data-dir",
            str(DATA),
            "--run",
            parent.run_id,
            "--grader-workers",
            "2",
            "--json",
        ]
    )
    summary = json.loads(out.output.strip().splitlines()[-1])
    suites = ["math500", "aime24", "aime25", "olympiadbench", "arith"]
    assert list(summary["suites"]) == suites
    run = mlflow_store.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["vimpo.kind"] == "eval" and run.data.tags["vimpo.suite"] == ",".join(suites)
    # each suite's own grader: math-verify for the math suites, exact match for arith
    assert run.data.params["grader_version"] == f"{grading.GRADER_VERSION},arith-exact-v1"
    assert run.data.tags["git_commit"] and run.data.tags["versions.torch"]  # reproducible from its record
    arith = pd.read_parquet(mlflow_store.download_artifacts(run.info.run_id, "records/arith.parquet", str(tmp_path)))
    assert set(arith["grader_version"]) == {"arith-exact-v1"}
    assert (
        run.data.params["data.math500.sha256"]
        == "680cfd5f6d38b444f5ae6662c0da445210a362f6826b5a2d27df98c92ab42b67"
    )
    assert run.data.params["template"] == "qwen-boxed" and run.data.params["template.arith"] == "plain"
    assert (
        run.data.params["sampling.temperature"] == "0.0"
        and run.data.params["sampling.max_new_tokens"] == "16"
    )
    metrics = run.data.metrics
    for suite in suites:
        s = summary["suites"][suite]
        assert s["n_problems"] == 2 and s["n_samples"] == 2 and s["grader_timeouts"] == 0
        assert metrics[f"eval/{suite}/n_problems"] == 2
        assert metrics[f"eval/{suite}/accuracy"] == s["metrics"]["accuracy"]
        assert metrics[f"eval/{suite}/accuracy_ci_low"] <= metrics[f"eval/{suite}/accuracy"]
        assert metrics[f"eval/{suite}/accuracy"] <= metrics[f"eval/{suite}/accuracy_ci_high"]
        assert f"eval/{suite}/pass_at_1" in metrics
    assert (
        "eval/math500/level/2/accuracy" in metrics and "eval/math500/subject/precalculus/accuracy" in metrics
    )
    artifacts = {f.path for f in mlflow_store.list_artifacts(run.info.run_id, "records")}
    assert {"records/math500.jsonl", "records/math500.parquet", "records/arith.parquet"} <= artifacts
    local = mlflow_store.download_artifacts(run.info.run_id, "records/aime24.parquet", str(tmp_path))
    frame = pd.read_parquet(local)
    assert (
        len(frame) == 2 and frame["tokens"].max() <= 16 and set(frame["finish_reason"]) <= {"stop", "length"}
    )
    assert frame["prompt"][0].startswith("<system>Please reason step by step")


@needs_data
def test_cli_eval_of_an_mlflow_run_checkpoint_with_sampling(tiny_model, mlflow_store):
    from vimpo_bench.runs.tracking import MlflowTracker

    train = MlflowTracker.start(run_name="train", tags={"vimpo.kind": "train"})
    train.log_artifact(tiny_model, "checkpoint")
    train.finish()
    out = _cli(
        [
            "eval",
            "--suite",
            "aime25",
            "--model",
            train.run_id,
            "--limit",
            "2",
            "--n",
            "3",
            "--temperature",
            "1.0",
            "--max-new-tokens",
            "8",
            "--data-dir",
            str(DATA),
            "--grader-workers",
            "0",
            "--json",
        ]
    )
    summary = json.loads(out.output.strip().splitlines()[-1])
    run = mlflow_store.get_run(summary["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == train.run_id  # nested under the run it came from
    metrics = run.data.metrics
    assert metrics["eval/aime25/n_samples"] == 6
    for key in (
        "pass_at_1",
        "pass_at_2",
        "pass_at_3",
        "avg_at_3",
        "maj_at_3",
        "maj_at_3_ci_low",
        "pass_at_3_ci_high",
    ):
        assert f"eval/aime25/{key}" in metrics
    assert metrics["eval/aime25/pass_at_1"] == pytest.approx(metrics["eval/aime25/accuracy"])


def test_cli_eval_of_arith_with_the_training_tasks_options(tiny_model, mlflow_store):
    """`--arith-option` generates the arith suite as a training config's task.options do (a policy trained
    on 4-term problems is tested on 4-term problems); the eval run records the options and the data hash."""
    from vimpo_bench.tasks.arith import ArithTask

    out = _cli(["eval", "--suite", "arith", "--model", str(tiny_model), "--limit", "3", "--max-new-tokens", "4",
                "--arith-option", "terms=4", "--arith-option", "operators=+", "--grader-workers", "0", "--json"])
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert summary["arith_options"]["terms"] == 4 and summary["arith_options"]["digits"] == 2
    run = mlflow_store.get_run(summary["run_id"])
    assert run.data.params["data.arith.sha256"] == ArithTask(terms=4).data_hash("test")
    assert run.data.params["data.arith.sha256"] != ArithTask().data_hash("test")
    assert run.data.params["arith_options.terms"] == "4"
    records = pd.read_parquet(mlflow_store.download_artifacts(run.info.run_id, "records/arith.parquet"))
    assert all(q.count("+") == 3 for q in records["prompt"])  # 4 terms


def test_cli_rejects_bad_options_with_one_line():
    from typer.testing import CliRunner

    import vimpo_bench.cli.eval  # noqa: F401
    from vimpo_bench.cli import app

    result = CliRunner().invoke(app, ["eval", "--model", "x", "--suite", "gsm8k"])
    assert result.exit_code == 2 and "unknown suite 'gsm8k'" in result.output
    for options, message in ((["tems=4"], "unknown arith option(s) tems"), (["terms"], "expected KEY=VALUE"),
                             (["terms=1"], "terms"), (["digits=two"], "digits")):
        args = ["eval", "--model", "x", "--suite", "arith"] + [a for o in options for a in ("--arith-option", o)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["eval", "--model", "x", "--suite", "math500", "--arith-option", "terms=4"])
    assert result.exit_code == 2 and "arith options apply to the arith suite only" in result.output


# ------------------------------------------------------------------- an evaluation that explains itself


def _main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """`vimpo-bench ARGS` in this process as the console script runs it (`cli.main`): (exit code, the lines it
    wrote to stderr other than progress bars)."""
    import sys
    import warnings

    from vimpo_bench.cli import main

    monkeypatch.setattr(sys, "argv", ["vimpo-bench", *args])
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main sets its own
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "\r" not in line
             and "%|" not in line]
    return code, lines


def test_eval_of_the_built_in_model_says_it_builds_it_and_shows_the_warm_start(tmp_path):
    """`eval --model tiny-arith` on a machine without the model: one line saying what it builds (minutes on a
    CPU) and where it keeps it, then train's warm-start bar, not minutes of silence. The process is stopped
    once the bar has moved."""
    import re
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = {**os.environ, "VIMPO_BENCH_CACHE": str(cache), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "vimpo_bench", "eval", "--model", "tiny-arith", "--suite", "arith",
                             "--limit", "2", "--max-new-tokens", "8", "--no-track"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    seen = b""
    try:
        while not re.search(rb"warm start: .*[ |][1-9][0-9]*/600 ", seen):  # a LineBar off a terminal
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    finally:
        proc.kill()
        proc.wait()
    text = seen.decode()
    notice = [line for line in text.splitlines() if line.startswith("tiny-arith:")]
    assert len(notice) == 1 and re.fullmatch(
        rf"tiny-arith: building the built-in model, once: a supervised warm start on the arith task \(at most 600 "
        rf"steps, stopping at 45% validation accuracy; minutes on a CPU\), cached in {re.escape(str(cache))}/"
        rf"tiny-arith-[0-9a-f]{{12}}", notice[0]), text
    assert re.search(r"warm start: .*[ |][1-9][0-9]*/600 .*loss=", text), text


@pytest.fixture(scope="module")
def default_training_run(tiny_model_dir, tmp_path_factory):
    """(folder it was trained in, store, run id) of a 1-step `vimpo-bench train` with the defaults that matter
    here: run.log_checkpoint off (no checkpoint/ artifact), run.output_dir `runs`."""
    from typer.testing import CliRunner

    from vimpo_bench.cli import _register, app

    root = tmp_path_factory.mktemp("trained")
    store = f"sqlite:///{root / 'mlflow.db'}"
    _register()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", store)
        out = CliRunner().invoke(app, [
            "train", "--algo", "grpo", "--set", f"model.name={tiny_model_dir}", "--set", "rollout.prompts_per_step=4",
            "--set", "rollout.group_size=4", "--set", "rollout.max_new_tokens=8", "--set", "optim.steps=1",
            "--set", "eval.every=0", "--set", "eval.problems=4", "--set", "run.threads=1", "--json"])
    assert out.exit_code == 0, out.output[-3000:]
    return root, store, json.loads(out.stdout.strip().splitlines()[-1])["run_id"]


def test_eval_of_a_training_run_id_takes_the_checkpoint_the_run_wrote(default_training_run, tmp_path, monkeypatch,
                                                                      capsys):
    """A default training run logs no checkpoint/ artifact: `eval --model RUN_ID` evaluates the checkpoint the
    run wrote under its run.output_dir; from another folder, one line says where it looked and what to give."""
    from mlflow.tracking import MlflowClient

    root, store, run_id = default_training_run
    assert MlflowClient(store).list_artifacts(run_id, "checkpoint") == []
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    code, lines = _main(monkeypatch, capsys, "eval", "--suite", "arith", "--model", run_id, "--limit", "2",
                        "--max-new-tokens", "4", "--grader-workers", "0", "--output-dir", str(tmp_path / "out"))
    assert code == 0, lines
    (evaluation,) = [r for r in MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name("vimpo-bench").experiment_id]) if r.data.tags.get(
        "vimpo.kind") == "eval"]
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.tags["mlflow.parentRunId"] == run_id and evaluation.data.params["model"] == run_id

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, lines = _main(monkeypatch, capsys, "eval", "--suite", "arith", "--model", run_id, "--limit", "2")
    assert code != 0 and lines == [
        f"error: --model {run_id}: the run has no 'checkpoint/' artifact (run.log_checkpoint is off by default) and "
        f"its checkpoint is not at {elsewhere / 'runs' / run_id}/checkpoint (run.output_dir runs, as trained): run "
        f"eval in the folder it was trained in, or give the folder: --model PATH/{run_id}/checkpoint"], lines
    assert list(elsewhere.iterdir()) == []  # no eval run, no records


def test_eval_without_data_offline_fails_at_once_naming_both_ways_to_give_it(tmp_path, monkeypatch, capsys):
    """No --data-dir, no $VIMPO_BENCH_DATA and no hub (offline mode): one line at once, naming both, instead of
    ~25 s of hub retries and an error that names neither."""
    from vimpo_bench.tasks.math_benchmarks import HUB_SOURCES, in_datasets_cache

    if in_datasets_cache(HUB_SOURCES["aime24"]):
        pytest.skip("this machine's datasets cache holds aime24: offline, it loads from there")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VIMPO_BENCH_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code, lines = _main(monkeypatch, capsys, "eval", "--suite", "aime24", "--model", "tiny-arith")
    assert code != 0 and lines == [
        "error: no local data for aime24/test.jsonl and hf://HuggingFaceH4/aime_2024[train] cannot be downloaded "
        "(HF_HUB_OFFLINE is set): give a folder holding aime24/test.jsonl (laid out like ../shared/data) with "
        "--data-dir (a training config: task.options.data_dir), or set VIMPO_BENCH_DATA to it"], lines
    assert list(tmp_path.iterdir()) == []


def _prompt_tokens(model: str, suite: str, limit: int) -> list[int]:
    from transformers import AutoTokenizer

    from vimpo_bench import tasks

    tokenizer = AutoTokenizer.from_pretrained(model)
    problems = tasks.get(suite, data_dir=DATA).problems("test", limit)
    texts = [prompts.render("qwen-boxed", p.question, tokenizer) for p in problems]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@needs_data
def test_a_prompt_longer_than_the_context_is_cut_alike_in_both_harnesses_with_one_warning(tmp_path):
    """A 96-token model on AIME prompts of hundreds of tokens: lm-eval keeps the last 96 - max_new_tokens tokens
    of each; the native harness now does the same (it used to feed the whole prompt past the context), so the
    two give the same greedy completions, and each run says so once, with the numbers."""
    model = str(_tiny_model(tmp_path / "model", context=96))
    longest = max(_prompt_tokens(model, "aime25", 3))
    assert longest > 88
    config = ev.EvalConfig(suites="aime25", limit=3, max_new_tokens=8, data_dir=str(DATA), grader_workers=0)
    said = (f"prompts longer than the model's context leaves room for (96 tokens - --max-new-tokens 8 = 88): aime25 "
            f"3 of 3 (longest {longest} tokens); each is cut to its last 88 tokens, in both harnesses (as lm-eval does)")
    results = {}
    for harness in ("native", "lm-eval"):
        with pytest.warns(UserWarning) as caught:
            results[harness] = ev.run_eval(model, config, harness=harness, track=False, output_dir=tmp_path / harness)
        assert [str(w.message) for w in caught if "prompts longer" in str(w.message)] == [said]
    ours, theirs = (results[h].suites["aime25"].records for h in ("native", "lm-eval"))
    assert [r["prompt"] for r in ours] == [r["prompt"] for r in theirs]
    assert [r["completion"] for r in ours] == [r["completion"] for r in theirs]

    # No room at all (max_new_tokens >= context): lm-eval cannot run, refused before any run; native says so.
    wide = ev.EvalConfig(suites="aime25", limit=3, max_new_tokens=100, data_dir=str(DATA), grader_workers=0)
    with pytest.raises(ValueError, match=r"^--max-new-tokens 100 is not below the model's context of 96 tokens"):
        ev.run_eval(model, wide, harness="lm-eval", track=False, output_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    with pytest.warns(UserWarning, match=rf"prompts longer than the model's whole context of 96 tokens: aime25 3 of 3 "
                                         rf"\(longest {longest} tokens\); not cut"):
        ev.run_eval(model, wide, track=False, output_dir=tmp_path / "native-wide")


def test_the_backend_and_dtype_are_recorded_and_part_of_the_settings_key(tiny_model, mlflow_store):
    out = _cli(["eval", "--suite", "arith", "--model", str(tiny_model), "--limit", "2", "--max-new-tokens", "4",
                "--dtype", "bfloat16", "--grader-workers", "0", "--json"])
    summary = json.loads(out.output.strip().splitlines()[-1])
    assert (summary["backend"], summary["dtype"]) == ("hf", "bfloat16")
    assert "backend hf  dtype bfloat16" in out.output
    run = mlflow_store.get_run(summary["run_id"])
    params, tags = run.data.params, run.data.tags
    assert (params["eval.backend"], params["eval.dtype"]) == ("hf", "bfloat16")
    assert (tags["vimpo.backend"], tags["vimpo.dtype"]) == ("hf", "bfloat16")
    config = ev.EvalConfig(suites="arith", limit=2, max_new_tokens=4, grader_workers=0)
    assert ev.made_with(params, config, dtype="bfloat16")
    assert not ev.made_with(params, config)  # a float32 evaluation does not reuse it
    assert not ev.made_with(params, config, backend="vllm", dtype="bfloat16")
    # vLLM runs a float32 request in bfloat16, and that is what its run records
    assert ev.settings_params(config, backend="vllm")["eval.dtype"] == "bfloat16"
    # an eval run recorded before these params existed ran on hf in float32
    legacy = {k: v for k, v in params.items() if not k.startswith("eval.")}
    assert ev.made_with(legacy, config) and not ev.made_with(legacy, config, dtype="bfloat16")


def test_vllm_backend_without_vllm_says_what_it_needs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code, lines = _main(monkeypatch, capsys, "eval", "--suite", "arith", "--model", str(tiny_model_dir),
                        "--backend", "vllm")
    assert code != 0 and lines == [
        "error: --backend vllm needs vLLM, which is not installed: it runs on a CUDA GPU and comes with the "
        "package's vllm extra (pip install 'vimpo-bench[vllm]'); --backend hf runs anywhere"], lines
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ vLLM


def test_vllm_backend_module_imports_without_vllm():
    import importlib
    import importlib.util
    import sys

    module = importlib.import_module("vimpo_bench.rollout.vllm")
    assert hasattr(module, "VLLMGenerator")
    if importlib.util.find_spec("vllm") is None:
        assert "vllm" not in sys.modules


@pytest.mark.gpu
def test_vllm_generator_follows_the_generator_protocol(tiny_model):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA device")
    from vimpo_bench.rollout.vllm import VLLMGenerator

    gen = VLLMGenerator(str(tiny_model), dtype="float32", gpu_memory_utilization=0.2, return_sample_logp=True)
    params = SamplingParams(temperature=1.0, top_p=0.9, n=3, max_new_tokens=8)
    first = gen.generate(["1+1=", "22+3="], params, seed=7)
    again = gen.generate(["1+1=", "22+3="], params, seed=7)
    assert len(first) == 6 and first.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert first.texts == again.texts
    lengths = first.response_mask.sum(dim=1)
    assert bool(((lengths == 8) | ~first.truncated).all())
    assert first.sample_logp.shape == first.response_ids.shape
    assert bool((first.sample_logp[first.response_mask == 0] == 0).all())
