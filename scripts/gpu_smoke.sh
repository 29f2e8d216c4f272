#!/usr/bin/env bash
# First GPU check (issue 25): both training engines on one CUDA GPU for a few steps, measured (seconds per
# phase, generated tokens/s, peak GPU memory, MFU), and the first update of a fixed batch on CPU vs GPU for
# every algorithm; everything as JSON in DIR/gpu_smoke.json. What it measures: scripts/gpu_smoke.py.
#
#   scripts/gpu_smoke.sh --fetch-wheels [DIR]                     # here: download WHEELS (cp312) into DIR (.whl)
#   scripts/gpu_smoke.sh [--wheels DIR] [--out DIR] [--steps N]   # GPU machine: install DIR/*.whl, then run
#   scripts/gpu_smoke.sh --cpu --out DIR                          # toy size on CPU, installs nothing
#
# Without --cpu it first installs the wheels in the wheel folder (default .whl) and this project, with no
# dependencies and no index (a machine with torch and transformers but no registry, docs/scale.md), into
# /tmp/site, and puts that on PYTHONPATH. --out defaults to $OUT. Python: $PYTHON, else .venv/bin/python
# where it exists, else python3. Exits non-zero when a phase failed or a contract broke (see the JSON's
# `problems`), 2 on bad arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the run imports beyond the GPU image's packages (device notes' KINDS.md list: torch, transformers,
# accelerate, numpy, pandas, pyarrow, requests, ...), found by running the --cpu path against only those;
# pure Python except sqlalchemy, pydantic_core, cryptography, cffi (manylinux x86_64, CPython 3.12). About 20 MB.
WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 mlflow-skinny==3.17.2 sqlalchemy==2.1.9
        alembic==1.20.1 mako==1.4.3 sqlparse==0.6.1 cachetools==7.3.3 importlib-metadata==9.1.0 fastapi==0.165.0
        starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
        opentelemetry-semantic-conventions==0.66b2 databricks-sdk==0.167.0 cryptography==50.0.2 cffi==2.1.1)

die() { echo "gpu_smoke.sh: $*" >&2; exit 2; }
PY="${PYTHON:-}"
if [[ -z "${PY}" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    (($# <= 2)) || die "--fetch-wheels takes one folder at most"
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
             manylinux_2_34_x86_64; do platforms+=(--platform "${p}"); done
    exec "${PY}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "${2:-.whl}" "${WHEELS[@]}"
fi

wheels=.whl cpu=0 args=()
while (($#)); do
    case "$1" in
        --wheels) (($# >= 2)) || die "--wheels needs a folder"; wheels=$2; shift 2 ;;
        --wheels=*) wheels=${1#--wheels=}; shift ;;
        --cpu) cpu=1; args+=("$1"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done

if ((!cpu)); then
    compgen -G "${wheels}/*.whl" > /dev/null || die "no wheels in ${wheels}/ (first, where pip works: $0 --fetch-wheels ${wheels})"
    "${PY}" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${wheels}"/*.whl . || die "installing ${wheels}/*.whl and the project into /tmp/site failed"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:${PYTHONPATH}}"
fi
exec "${PY}" scripts/gpu_smoke.py ${args[@]+"${args[@]}"}
