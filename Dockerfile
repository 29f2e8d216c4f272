# vimpo-bench on a CUDA GPU machine: the pinned stack (torch 2.13.0, vLLM 0.31, TRL 1.16) and the project
# with its vllm, trl and deepspeed extras; `vimpo-bench` is the entrypoint.
#
#   docker build -t vimpo-bench .
#   docker run --gpus all --ipc=host -v "$PWD/cache:/cache" -v "$PWD/results:/runs" \
#       -e VIMPO_BENCH_DATA=/cache/data vimpo-bench study run paper_smoke
#
# Volumes: /cache holds the Hugging Face and vimpo-bench model caches (and data, if you put it there);
# /runs is the working folder: the MLflow store (mlflow.db, mlartifacts/) and checkpoints (runs/).
# Multi-GPU: docker run ... --entrypoint accelerate vimpo-bench launch --config_file launch/8gpu_zero3.yaml \
#   -m vimpo_bench train --study paper_main   (see docs/scale.md)
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    VIMPO_BENCH_CACHE=/cache/vimpo-bench

# Distribution packages follow the pinned base image; their versions are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/vimpo-bench
COPY pyproject.toml README.md ./
COPY vimpo_bench ./vimpo_bench
COPY launch ./launch
COPY scripts ./scripts

# torch first and pinned (as the Makefile does), so that no extra can pull another build; the extras'
# ranges are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir torch==2.13.0 \
    && pip install --no-cache-dir ".[vllm,trl,deepspeed]"

RUN useradd --create-home --uid 1000 vimpo \
    && mkdir -p /cache /runs \
    && chown vimpo:vimpo /cache /runs
USER 1000:1000
WORKDIR /runs
VOLUME ["/cache", "/runs"]

ENTRYPOINT ["vimpo-bench"]
CMD ["--help"]
