"""scripts/grad_split.py: cross-fitted cosines with their noise floors, written to a CSV table.

The run it measures is built so that every asserted property holds whatever a machine samples: the
"trained" policy is the reference plus a fixed perturbation (so every response has a non-zero log-ratio
and L_V has a gradient), and rewards are flipped with probability 0.5 (so groups have reward variance)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from vimpo_bench.config import load_config
from vimpo_bench.models import load_policy

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "grad_split.py"


@pytest.fixture()
def perturbed_run(tiny_model_dir, tmp_path):
    config = load_config(overrides=[
        f"model.name={tiny_model_dir}", "algo.name=vimpo", "algo.advantage=soft_rtg", "algo.agg=seq-sum",
        "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
        "reward.noise=symmetric", "reward.p=0.5",
    ])
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint").mkdir(parents=True)
    (run_dir / "checkpoint" / "config.json").write_text(json.dumps(config.to_dict()))
    policy, tokenizer = load_policy(str(tiny_model_dir))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    policy.save_pretrained(run_dir / "checkpoint" / "policy")
    tokenizer.save_pretrained(run_dir / "checkpoint" / "policy")
    return run_dir


def test_grad_split_writes_cross_fitted_cosines_with_noise_floors(perturbed_run, tmp_path):
    out = tmp_path / "split.csv"
    done = subprocess.run([sys.executable, str(SCRIPT), str(perturbed_run), "--batches", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out)
    rows = table.set_index("direction")
    assert set(rows.index) == {"total", "value", "actor:soft_rtg", "actor:implied", "actor:residual", "actor:mc",
                               "grpo", "ref:reward", "ref:kl"}
    # The loss decomposes exactly: total = actor (the run's advantage) + c_V L_V, on the same batches.
    assert rows.additivity.iloc[0] < 1e-4
    assert rows.loc["value", "mean_norm"] > 0 and rows.loc["total", "mean_norm"] > 0
    cosines = table[["self_cos", "cos_reward", "cos_kl_ascent", "cos_total"]].stack().dropna()
    assert len(cosines) > 20 and ((cosines >= -1 - 1e-6) & (cosines <= 1 + 1e-6)).all()
    # The noise floor is printed beside every direction: its own split-half agreement and chance.
    assert rows.self_cos.notna().all() and (rows.chance > 0).all() and (rows.batches == 2).all()
    assert "self_cos" in done.stdout and "chance |cos|" in done.stdout


def test_grad_split_refuses_bad_input_in_one_line(tmp_path):
    for args, message in [([str(tmp_path / "nowhere")], "no checkpoint config"),
                          ([str(tmp_path), "--batches", "1"], "--batches must be at least 2")]:
        bad = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and message in bad.stderr
        assert bad.stderr.strip().count("\n") == 0
