"""The CLI's one progress helper (vimpo_bench/cli/progress.py): whole lines every few percent off a terminal,
third-party bars off; `sweep --dry-run` plans without running or creating a storage."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from vimpo_bench.cli.progress import EVERY, LineBar, StepBars


def test_a_bar_off_a_terminal_prints_a_line_every_few_percent():
    out = io.StringIO()
    bar = LineBar(total=80, desc="train", unit="step", file=out)
    for step in range(1, 81):
        bar.n = step
        bar.set_postfix({"acc": f"{step / 100:.3f}"}, refresh=False)
        bar.refresh()
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 1 + 100 // EVERY  # the start, then 5%, 10%, ... 100%: one line each, none twice
    assert lines[-1].startswith("train: 100% 80/80 step") and "acc=0.800" in lines[-1]


def test_step_bars_start_a_new_bar_for_the_next_run_of_a_phase(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: LineBars
    bars = StepBars()
    for done in (1, 2):
        bars("train", done, 2, {"reward/clean_mean": 0.5})
    bars("train", 1, 2, {})  # the next cell's run
    assert sys.stderr.getvalue().count("train:   0%") == 0 and sys.stderr.getvalue().count("train:  50%") == 2
    bars.close()


def test_the_cli_silences_the_bars_of_the_libraries_underneath():
    code = ("from vimpo_bench.cli.progress import quiet_third_party; quiet_third_party(); "
            "from transformers.utils import logging; from huggingface_hub.utils import are_progress_bars_disabled; "
            "print(logging.is_progress_bar_enabled(), are_progress_bars_disabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_sweep_help_lists_every_built_in_parameter():
    from vimpo_bench.cli.study import SWEEP_PARAMS
    from vimpo_bench.experiments.sweep import BUILTIN_PARAMS

    assert set(SWEEP_PARAMS) == set(BUILTIN_PARAMS)
    out = subprocess.run([sys.executable, "-m", "vimpo_bench", "sweep", "--help"], capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": ""}, check=True)
    assert all(name in out.stdout for name in BUILTIN_PARAMS) and "--dry-run" in out.stdout


def test_sweep_dry_run_plans_without_running_or_creating_a_storage(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vimpo_bench", "sweep", "beta", "lr", "--study", "answer_tune_grpo",
                          "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--dry-run", "--json"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout.splitlines()[-1])
    assert plan["optuna_study"] == "answer_tune_grpo:beta+lr" and plan["trials"] == 8 and plan["to_run"] == 8
    assert set(plan["params"]) == {"beta", "lr"} and plan["held"] == {}
    assert list(tmp_path.iterdir()) == []  # no storage, no MLflow store, no runs folder
    bad = subprocess.run([sys.executable, "-m", "vimpo_bench", "sweep", "gamma", "--study", "answer_tune_grpo",
                          "--dry-run"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "gamma" in bad.stderr
