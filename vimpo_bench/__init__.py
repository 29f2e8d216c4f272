"""vimpo-bench: does VIMPO beat GRPO, where, and why?

The folders are the data path, bottom floor first; a module imports only from its own floor and the ones
below (tests/test_layout.py holds this). Read in this order:

1. `algorithms/`   the math: VIMPO's value loss and actor advantages, GRPO and its variants, RLOO, each a pure
                   function of a `Batch` (log-probs, rewards, groups); `fixed_points` checks them on a table.
2. `config/`       the one typed config schema (house rule 3): every option, its range, its doc; YAML loading.
3. `tasks/`        the built-in arithmetic task and the math benchmarks, and how a problem becomes a prompt;
   `rollout/`      sampling responses (transformers, or vLLM on a GPU).
4. `models/`       loading a policy (hub id, folder, the built-in tiny model) and LoRA adapters.
5. `runs/`         a run's life: its request and MLflow record, checkpoints, the owner lock, provenance.
6. `evaluation/`   `vimpo-bench eval`: suites, sampling protocols, grading (`grading/`), metrics.
7. `rl/`           the engine-neutral parts of one RL step (prompts drawn, responses scored, rewards, pi_ref
                   and beta schedules, log-probs, post-step bookkeeping).
8. `engines/`      the drivers that call rl/ and algorithms/: `native` (the readable loop) and `trl`.
9. `experiments/`  studies (grids of runs), their executors (local, Ray) and Optuna sweeps.
10. `report/`      MLflow runs -> tables, intervals and HTML/Markdown pages.
11. `cli/`         the `vimpo-bench` command (the only user of typer).

On the ground, importable from anywhere: `ranges` (allowed ranges of numeric options), `net` (is a server
there) and `faults` (named fault-injection points the fault tests switch on); `grading/` sits just above them.
"""

__version__ = "0.1.0"
