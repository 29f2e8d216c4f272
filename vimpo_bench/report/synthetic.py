"""Synthetic MLflow runs shaped like docs/metrics.md, for the report's tests and benchmark.

They are made up (VIMPO is given a faster learning curve on purpose); never mix them with real runs.
Everything is written through `vimpo_bench.runs.tracking` to the store at `tracking_uri`; like every
`MlflowTracker`, a new experiment keeps its artifacts under ./mlartifacts of the working directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from vimpo_bench.runs.tracking import MlflowTracker, log_metric_rows, search_runs

PROBLEMS = 30
_template: Path | None = None


def fresh_store(folder: str | Path) -> str:
    """The URI of a new, empty sqlite MLflow store at folder/mlflow.db. MLflow builds a store's schema
    through ~50 migrations (5-10 s on 2 busy cores); this builds it once per process and copies it."""
    global _template
    if _template is None or not _template.is_file():
        path = Path(tempfile.mkdtemp(prefix="vimpo-mlflow-template-")) / "mlflow.db"
        search_runs(None, "", f"sqlite:///{path}")  # opening the store creates and migrates it
        _template = path
    target = Path(folder) / "mlflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template, target)
    return f"sqlite:///{target}"


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _config(algo: str, seed: int, noise_p: float, steps: int, ref_every: int, beta: float, name: str) -> dict:
    # The sections and names of vimpo_bench.config (a few of its keys).
    return {
        "algo": {"name": algo, "beta": beta, "eps_low": 0.2, "eps_high": 0.2},
        "run": {"seed": seed, "experiment": "vimpo-bench", "run_name": name, "output_dir": f"runs/{name}", "threads": 1},
        "optim": {"steps": steps, "lr": 1e-4},
        "rollout": {"prompts_per_step": 16, "group_size": 8},
        "reward": {"noise": "symmetric" if noise_p > 0 else "none", "p": noise_p, "fp": 0.0, "fn": 0.0},
        "ref": {"schedule": "hard" if algo == "vimpo" else "frozen", "every": ref_every, "alpha": 0.1},
        "beta_schedule": {"kind": "cosine" if algo == "vimpo" else "constant"},
        "model": {"name": "tiny-arith"},
        "task": {"name": "arith"},
        "eval": {"every": 10},
    }


def _tags(kind: str, algo: str, seed: int, study: str) -> dict:
    return {
        "vimpo.kind": kind, "vimpo.algo": algo, "vimpo.seed": seed, "vimpo.study": study,
        "vimpo.task": "arithmetic", "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "git_dirty": "false", "versions.torch": "2.13.0", "versions.transformers": "5.17.0",
        "versions.mlflow": "3.17.2", "versions.vimpo_bench": "0.1.0", "grader_version": "1",
        "data.arithmetic.sha256": "5f1e0c2a" * 8,
    }


def grid_shift(algo: str, beta: float) -> float:
    """How much a grid study's beta moves a run's accuracy: 0 at the algorithm's best beta (0.05 for VIMPO,
    0.005 for the others), 0.1 lower per decade away from it."""
    return -0.1 * abs(math.log10(beta / (0.05 if algo == "vimpo" else 0.005)))


def _history(algo, seed, noise_p, steps, ref_every, beta0, start_ms, shift=0.0):
    """(key, value, timestamp_ms, step) rows for one training run, and its final clean reward; `shift`
    moves its accuracy (a grid study's setting that helps or hurts)."""
    rng = _rng("hist", algo, seed, noise_p, *([shift] if shift else []))
    vimpo = algo == "vimpo"
    speed = 1.5 if vimpo else 1.0
    gain = 0.5 * (1 - (0.6 if not vimpo else 0.3) * noise_p / 0.5)
    rows, t_ms, last_update, acc = [], float(start_ms), 0, 0.0
    for step in range(steps):
        progress = step / max(steps - 1, 1)
        acc = float(np.clip(0.2 + shift + gain * (1 - math.exp(-speed * 4 * progress)) + rng.normal(0, 0.03), 0, 1))
        update = vimpo and step > 0 and step % ref_every == 0
        if update:
            last_update = step
        since = step - last_update if vimpo else step
        value_loss = 0.04 * math.exp(-2 * progress) + 0.03 * math.exp(-since / 3) * (last_update > 0)
        kl = 0.002 * since + abs(rng.normal(0, 0.001))
        step_s = (1.2 if vimpo else 1.0) * (1 + abs(rng.normal(0, 0.1)))
        m = {
            "reward/clean_mean": acc, "reward/trained_mean": acc * (1 - noise_p) + (1 - acc) * noise_p,
            "reward/flip_rate": max(0.0, noise_p + rng.normal(0, 0.01)) if noise_p else 0.0,
            "loss/total": -0.01 * acc + value_loss, "loss/actor": -0.01 * acc + rng.normal(0, 0.002),
            "policy/kl_k1": kl * 1.1, "policy/kl_k3": kl, "policy/entropy": 1.5 - 0.6 * progress,
            "policy/clip_frac": 0.05 + rng.normal(0, 0.01), "policy/ratio_mean": 1 + rng.normal(0, 0.002),
            "policy/adv_mean": rng.normal(0, 0.01), "policy/adv_std": 0.5, "policy/grad_norm": 1 + rng.random(),
            "policy/lr": 1e-5, "rollout/response_len": 60 + 40 * progress + rng.normal(0, 3),
            "rollout/truncation_rate": 0.02, "perf/step_s": step_s, "perf/rollout_s": 0.6 * step_s,
            "perf/scoring_s": 0.05 * step_s, "perf/logprob_s": 0.15 * step_s, "perf/update_s": 0.2 * step_s,
            "perf/tokens_per_s": 8000 / step_s,
        }
        if vimpo:
            beta = beta0 * (0.55 + 0.45 * math.cos(math.pi * progress))
            m |= {
                "loss/value": value_loss, "vimpo/abs_residual": math.sqrt(value_loss),
                "vimpo/residual_mean": rng.normal(0, 0.01), "vimpo/beta_logratio_sum": beta * kl * 50,
                "vimpo/vhat_mean": acc - 0.1, "vimpo/beta": beta, "vimpo/ref_update": float(update),
            }
            if update:
                m |= {
                    "vimpo/value_loss_pre_ref_update": value_loss * 0.5,
                    "vimpo/value_loss_post_ref_update": value_loss,
                    "vimpo/residual_pre_ref_update": math.sqrt(value_loss * 0.5),
                    "vimpo/residual_post_ref_update": math.sqrt(value_loss),
                }
        else:
            m["loss/kl_penalty"] = beta0 * kl
        if step % 10 == 0 or step == steps - 1:
            m["val/greedy_accuracy"] = float(np.clip(acc + rng.normal(0, 0.02), 0, 1))
            m["val/sampled_accuracy"] = float(np.clip(acc - 0.05 + rng.normal(0, 0.02), 0, 1))
        t_ms += step_s * 1000
        rows.extend((k, float(v), int(t_ms), step) for k, v in m.items())
    return rows, acc


def _adv_by_position(algo: str, seed: int, steps: int) -> str:
    rng = _rng("adv", algo, seed)
    lines = []
    for step in (steps // 2, steps - 1):
        for correct in (True, False):
            for pos in range(48):
                sign = 1 if correct else -1
                adv = sign * (0.5 if algo != "vimpo" else 0.1 + 0.8 * pos / 47) + rng.normal(0, 0.02)
                lines.append({"step": step, "position": pos, "correct": correct, "mean_adv": adv,
                              "count": int(40 - pos // 2)})
    return "\n".join(json.dumps(x) for x in lines) + "\n"


def _solve_p(algo: str, problem: int, noise_p: float, shift: float = 0.0) -> float:
    difficulty = (problem * 7919 % PROBLEMS) / PROBLEMS
    handicap = (0.0 if algo == "vimpo" else 0.25) + (0.3 if algo == "vimpo" else 0.6) * noise_p - shift
    return float(np.clip(1.1 - difficulty - handicap, 0.02, 0.98))


def _eval_samples(algo: str, seed: int, noise_p: float, evil: bool, shift: float = 0.0) -> tuple[str, float]:
    rng = _rng("samples", algo, seed, noise_p, *([shift] if shift else []))
    lines, correct_total = [], 0
    for i in range(PROBLEMS):
        correct = bool(rng.random() < _solve_p(algo, i, noise_p, shift))
        correct_total += correct
        gold = str(i * 3 + 1)
        completion = f"Step 1: think. The answer is \\boxed{{{gold if correct else i}}}."
        if evil:  # text that must be escaped, never run, by the report
            completion += " <script>console.error('unescaped completion')</script><b>not bold</b>"
        lines.append({"problem_id": f"math500/{i:04d}", "suite": "math500", "prompt": f"What is {i} * 3 + 1?",
                      "completion": completion, "extracted": gold if correct else str(i), "gold": gold,
                      "correct": correct})
    return "\n".join(json.dumps(x) for x in lines) + "\n", correct_total / PROBLEMS


def log_synthetic_study(
    tracking_uri: str,
    study: str = "synthetic",
    experiment: str = "vimpo-bench",
    algos: tuple[str, ...] = ("vimpo", "grpo"),
    seeds: tuple[int, ...] = (1, 2),
    noise_ps: tuple[float, ...] = (0.0,),
    steps: int = 40,
    ref_every: int = 10,
    with_eval: bool = True,
    with_sweep: bool = True,
    with_artifacts: bool = True,
    sweep_trials: int = 12,
    evil_text: bool = False,
    betas: tuple[float, ...] | None = None,
) -> dict[str, list[str]]:
    """Log algos x seeds x noise_ps training runs (x betas: a grid study over algo.beta, each algorithm at
    each value, when given; else each algorithm at its own beta) plus, optionally, one eval child run each
    and a beta sweep of `sweep_trials` Optuna-like trials, and return their ids by kind."""
    ids: dict[str, list[str]] = {"train": [], "eval": [], "sweep": [], "study": []}
    for algo in algos:
        for seed in seeds:
            for p, beta in ((p, b) for p in noise_ps for b in (betas or (None,))):
                shift = 0.0 if beta is None else grid_shift(algo, beta)
                suffix = "" if beta is None else f"-b{beta:g}"
                beta = (0.1 if algo == "vimpo" else 0.04) if beta is None else beta
                tr = MlflowTracker.start(f"{algo}-s{seed}-p{p}{suffix}", experiment, _tags("train", algo, seed, study),
                                         tracking_uri=tracking_uri)
                config = _config(algo, seed, p, steps, ref_every, beta, f"{algo}-{seed}-p{p}{suffix}")
                tr.log_params(config)
                tr.set_tags({"vimpo.config_hash": hashlib.sha1(repr(config).encode()).hexdigest()[:12]})
                start = int(time.time() * 1000)  # the run's start, so wall times begin at 0
                rows, final_acc = _history(algo, seed, p, steps, ref_every, beta, start, shift)
                log_metric_rows(tr, rows)
                if with_artifacts:
                    tr.log_dict(config, "config.yaml")
                    tr.log_text(_adv_by_position(algo, seed, steps), "diagnostics/adv_by_position.jsonl")
                    sample = {"question": "What is 2 + 3?", "completion": "5", "answer": "5", "correct": True}
                    tr.log_text(json.dumps(sample) + "\n", f"samples/step_{steps - 1:06d}.jsonl")
                tr.finish()
                ids["train"].append(tr.run_id)
                if with_eval:
                    ev = MlflowTracker.start(f"eval-{algo}-s{seed}-p{p}{suffix}", experiment,
                                             _tags("eval", algo, seed, study), parent_run_id=tr.run_id,
                                             tracking_uri=tracking_uri)
                    text, acc = _eval_samples(algo, seed, p, evil_text, shift)
                    half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-4) / PROBLEMS)
                    ev.log_metrics({"eval/math500/accuracy": acc, "eval/math500/accuracy_ci_low": acc - half,
                                    "eval/math500/accuracy_ci_high": acc + half,
                                    "eval/aime24/pass_at_8": min(1.0, acc * 0.6)}, step=steps - 1)
                    if with_artifacts:
                        ev.log_text(text, "samples.jsonl")
                    ev.finish()
                    ids["eval"].append(ev.run_id)
    if with_sweep:
        parent = MlflowTracker.start("beta-sweep", experiment, {"vimpo.kind": "study", "vimpo.study": study},
                                     tracking_uri=tracking_uri)
        ids["study"].append(parent.run_id)
        rng = _rng("sweep", study)
        for trial in range(sweep_trials):
            beta = float(10 ** rng.uniform(-3, 0))
            state = "FAIL" if trial == 3 else ("PRUNED" if trial % 4 == 1 else "COMPLETE")
            tags = _tags("sweep", "vimpo", 0, study) | {"optuna.trial": trial, "optuna.state": state}
            tr = MlflowTracker.start(f"trial-{trial}", experiment, tags, parent_run_id=parent.run_id,
                                     tracking_uri=tracking_uri)
            tr.log_params({"algo": {"name": "vimpo", "beta": beta}})
            if state != "FAIL":
                objective = 0.6 - 0.08 * (math.log10(beta) + 1.2) ** 2 - (0.1 if state == "PRUNED" else 0)
                tr.log_metrics({"sweep/objective": objective + rng.normal(0, 0.01)}, step=0)
            tr.finish("FAILED" if state == "FAIL" else "FINISHED")
            ids["sweep"].append(tr.run_id)
        parent.finish()
    return ids
