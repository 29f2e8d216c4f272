#!/usr/bin/env bash
# The seed-3 collapse of the first vimpo_vs_grpo run (VIMPO validation greedy 0.585 -> 0.385 in 80 steps),
# re-run and taken apart (issue 10):
#   1. the code of that run (2a44556^, before the comparison was levelled), VIMPO and GRPO on seed 3, in its
#      own worktree, cache and store, so nothing it builds is mixed with today's;
#   2. today's code from the same starting policy (that run's seed-3 warm start, loaded as a local model):
#      VIMPO at its defaults, GRPO, VIMPO without its actor term and VIMPO with a 5x smaller value-loss step,
#      each with run seeds 3, 4 and 5 (same start, different samples).
# Usage: scripts/seed3_collapse.sh [WORK_DIR]   (default ./seed3-collapse; resumable: finished cells skip)
# Then:  vimpo-bench report --study seed3_collapse --format markdown \
#          --tracking-uri sqlite:///WORK_DIR/mlflow.db --out reports/seed3_collapse.md
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mkdir -p "${1:-seed3-collapse}" && cd "${1:-seed3-collapse}" && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
old_commit=$(git -C "$repo" rev-parse '2a44556^')
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" VIMPO_BENCH_CACHE="$work/cache"

if [ ! -d "$work/old-tree" ]; then
  git -C "$repo" worktree add --detach "$work/old-tree" "$old_commit"
fi
cat > "$work/seed3_old.yaml" <<YAML
# the first vimpo_vs_grpo run's settings (80 steps, c_V 5, its warm start), seed 3, at $old_commit
extends: vimpo_vs_grpo
study:
  description: the seed-3 collapse at the code that first showed it
  axes:
    algo.name: [vimpo, grpo]
    run.seed: [3]
  budget: {steps: 80, max_cells: 2}
YAML
(cd "$work" && PYTHONPATH="$work/old-tree" "$python" -c \
  "import sys; sys.argv[0] = 'vimpo-bench'; from vimpo_bench.cli import main; main()" \
  study run "$work/seed3_old.yaml" --workers 1)

start=$(ls -d "$work"/cache/tiny-arith-*/ | head -n 1)
cat > "$work/seed3_collapse.yaml" <<YAML
# today's code from the old seed-3 starting policy ($start), 80 steps as then
extends: vimpo_vs_grpo
model: {name: $start}
study:
  description: today's code from the starting policy of the old seed-3 collapse
  axes:
    algo.name: null
    setting:
      - {label: vimpo, algo.name: vimpo}
      - {label: grpo, algo.name: grpo}
      - {label: vimpo_no_actor, algo.name: vimpo, algo.advantage: none}
      - {label: vimpo_value_scale_0.1, algo.name: vimpo, algo.value_scale: 0.1}
    run.seed: [3, 4, 5]  # the starting policy is fixed: the seed only changes sampling and prompt order
  budget: {steps: 80, max_cells: 12}
YAML
(cd "$work" && PYTHONPATH="$repo" "$python" -m vimpo_bench study run "$work/seed3_collapse.yaml" --workers 2)
