"""Print the answer's arms with each arm's tuned values, read from the tuning studies' Optuna storage.

    python scripts/answer_tuned.py sqlite:///answer_tuning.db

Each arm's values are its tuning study's best trial (highest validation sampled accuracy at step 80; ties:
the earlier trial), rounded to 3 significant digits; the output is the `arm:` axis of studies/answer.yaml,
so the study file says exactly what the tuning chose (the commit that writes it records the copy).
"""

from __future__ import annotations

import sys

import optuna

ARMS = {  # arm label -> (tuning study name prefix, the arm's fixed settings)
    "grpo": ("answer_tune_grpo:", {"algo.name": "grpo"}),
    "vimpo": ("answer_tune_vimpo:", {"algo.name": "vimpo"}),
    "vimpo_implied": ("answer_tune_vimpo_implied:", {"algo.name": "vimpo", "algo.advantage": "implied",
                                                     "algo.agg": "token-mean"}),
}
KEYS = {"lr": "optim.lr", "beta": "algo.beta", "value_scale": "algo.value_scale"}


def best(storage: str, prefix: str) -> tuple[dict, float, int]:
    names = [s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(prefix)]
    if len(names) != 1:
        raise SystemExit(f"error: expected one tuning study named {prefix}..., found {names}")
    study = optuna.load_study(study_name=names[0], storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    top = max(done, key=lambda t: (t.value, -t.number))
    return top.params, top.value, len(done)


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = sys.argv[1] if len(sys.argv) > 1 else "sqlite:///answer_tuning.db"
    print("    arm:")
    for label, (prefix, fixed) in ARMS.items():
        params, value, trials = best(storage, prefix)
        tuned = {KEYS[k]: float(f"{v:.3g}") for k, v in sorted(params.items())}
        items = ", ".join(f"{k}: {v}" for k, v in {"label": label, **fixed, **tuned}.items())
        print(f"      - {{{items}}}  # best of {trials} trials: validation {value:.4f}")


if __name__ == "__main__":
    main()
