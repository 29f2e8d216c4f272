#!/usr/bin/env bash
# GPU smoke test (one CUDA GPU, vLLM and TRL installed: pip install -e ".[vllm,trl]"), a few minutes:
#   1. vLLM eval of Qwen2.5-0.5B-Instruct on the first 20 MATH-500 problems (greedy);
#   2. 3 steps of the trl engine with vLLM colocated, VIMPO then GRPO (the paper_smoke study's settings);
# then prints ONE JSON line of numbers (accuracies, rewards, seconds). Exits non-zero at the first failure.
#
#   VIMPO_BENCH_DATA=../shared/data scripts/gpu_smoke.sh          # data from a folder (else the HF hub)
# Writes into a fresh temporary folder (MLflow store, checkpoints) and leaves it there; its path is in the JSON.
set -euo pipefail

MODEL="${SMOKE_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}"
CLI="${VIMPO_BENCH:-vimpo-bench}"
WORK="$(mktemp -d -t vimpo-gpu-smoke-XXXXXX)"
export MLFLOW_TRACKING_URI="sqlite:///${WORK}/mlflow.db"
cd "${WORK}"

seconds() { date +%s.%N; }

t0=$(seconds)
"${CLI}" eval --suite math500 --model "${MODEL}" --backend vllm --dtype bfloat16 --limit 20 --max-tokens 1024 \
    --no-progress --json > eval.jsonl 2> eval.err || { tail -5 eval.err >&2; exit 1; }
t1=$(seconds)
for algo in vimpo grpo; do
    "${CLI}" train --study paper_smoke --algo "${algo}" --set model.name="${MODEL}" --set optim.steps=3 \
        --set eval.problems=8 --set run.output_dir="${WORK}/runs" --json > "train_${algo}.jsonl" 2> "train_${algo}.err" \
        || { tail -5 "train_${algo}.err" >&2; exit 1; }
done
t2=$(seconds)

python3 - "${WORK}" "${t0}" "${t1}" "${t2}" <<'PY'
import json, sys
from pathlib import Path

work, t0, t1, t2 = Path(sys.argv[1]), *map(float, sys.argv[2:])
last = lambda p: json.loads((work / p).read_text().strip().splitlines()[-1])
out = {"work_dir": str(work), "eval_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1), "eval": last("eval.jsonl")}
for algo in ("vimpo", "grpo"):
    out[algo] = last(f"train_{algo}.jsonl")
print(json.dumps(out))
PY
