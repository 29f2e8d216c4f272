"""First GPU check (issue 25): both training engines on one CUDA GPU, measured, and CPU-vs-GPU parity.

    scripts/gpu_smoke.sh [--wheels DIR] [--out DIR] [--steps N]     # on the GPU machine: installs, then runs this
    scripts/gpu_smoke.sh --cpu --out DIR                            # toy size on CPU (tests/test_gpu_smoke.py)

Three phases, each written to DIR/gpu_smoke.json as soon as it ends (DIR: --out, else $OUT), so that a run cut
short still leaves what it measured:

1. parity: the first update of one fixed batch (random tokens and rewards, P=4 prompts x G=4 responses) for
   vimpo, grpo, dr_grpo, dapo and rloo, through the project's `token_logprobs` and `algo.loss` as the engines
   call them (pi_old = the policy, so rho = 1; pi_ref a second random model, so the KL and value terms are
   not 0). The reference is CPU float32; the device under test (CUDA, or the CPU under --cpu) runs it in
   float32 and in bfloat16 weights. Reported: loss, gradient norm, their relative difference to the
   reference, |x - x_ref| / max(|x_ref|, 1e-3) (the floor: dr_grpo, dapo and rloo have no KL term, and at
   rho = 1 their loss is -agg(A), the same number on every device and 0 for rloo), and the cosine between
   the two gradients. Tolerances: 1e-4 (float32), 2e-2 (bfloat16: 8 mantissa bits, ~4e-3 per rounding).
2. trl, 3. native: `vimpo-bench train` (`engines.run`, run.engine=trl | native) for a few steps on a random
   Llama with the project's character tokenizer, bfloat16 weights, transformers generation (rollout.backend=hf)
   on the GPU; GPU size is hidden 768 x 12 layers x 12 heads, MLP 3072 (113M parameters, GPT-2 small's
   compute: its 124M count 39M of embeddings), 16 prompts x 8 responses x 64 new tokens per step. Per step,
   read back from the run's MLflow store: perf/rollout_s, perf/logprob_s, perf/update_s, perf/step_s, and
   from rollout/response_len and perf/tokens_per_s the generated and total (prompt + response) tokens;
   generated tokens per second; peak GPU memory (torch.cuda.max_memory_allocated, reset after each step);
   FLOPs and MFU. FLOPs (model FLOPs, N = parameters, attention scores and gradient-checkpointing
   recomputation not counted): rollout 2 N x tokens (prefill + decode), log-probs 2 x 2 N x tokens (pi_old and
   pi_ref), update 6 N x tokens x epochs; MFU = FLOPs / seconds / the GPU's dense bf16 peak (PEAK_BF16 below,
   datasheet numbers, by device name; none on CPU). An engine that has put nothing on the GPU by the end of its
   first step is stopped there and reported as a problem.

Exits 0 when every phase ran and every contract held, 1 otherwise (the JSON's `problems` says what failed),
2 on bad arguments (one line). --cpu: toy size (the 1M-parameter tiny-arith architecture, 2 steps, 4 x 4 x 8
tokens), one torch thread, float32 runs, and the parity's device under test is the CPU itself (float32 from a
second pass, then bfloat16 weights).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

ALGOS = ("vimpo", "grpo", "dr_grpo", "dapo", "rloo")
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
LOSS_FLOOR = 1e-3
# Dense bf16 tensor-core peak, FLOP/s, from the vendors' datasheets (sparsity off); first match in the name wins.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
GPT2_SMALL = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "max_position_embeddings": 256}
SIZES = {  # model architecture (None: tiny-arith's) and per-step batch of each mode
    "gpu": {"arch": GPT2_SMALL, "prompts": 16, "group": 8, "new_tokens": 64, "steps": 3, "dtype": "bfloat16"},
    "cpu": {"arch": None, "prompts": 4, "group": 4, "new_tokens": 8, "steps": 2, "dtype": "float32"},
}
STEP_METRICS = ("perf/rollout_s", "perf/scoring_s", "perf/logprob_s", "perf/update_s", "perf/step_s",
                "perf/tokens_per_s", "rollout/response_len")


class NotOnGPU(RuntimeError):
    pass


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"gpu_smoke: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv):
    p = OneLineParser(prog="gpu_smoke", description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="toy size on CPU (no GPU needed)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_smoke.json (default: $OUT)")
    p.add_argument("--steps", type=int, help="RL steps per engine (default: 3 on GPU, 2 with --cpu)")
    args = p.parse_args(argv)
    if not args.out:
        p.error("no output folder: give --out DIR or set OUT")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device is visible; run with --cpu for the CPU path")
    return args


# ------------------------------------------------------------------------------------------ model


def build_model(folder: Path, arch: dict | None, seed: int = 0):
    """A random Llama (`models.build_tiny_arith_model`, `arch` over tiny-arith's) with the character tokenizer,
    saved to `folder`; returns the model."""
    from vimpo_bench.models import build_char_tokenizer, build_tiny_arith_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_arith_model(len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   seed=seed, **(arch or {}))
    if folder is not None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return model


# ----------------------------------------------------------------------------------------- parity


def fixed_batch(vocab: int, prompts=4, group=4, prompt_len=12, new_tokens=16, seed=0) -> dict:
    """Token ids (left-padded prompts shared by each group, right-padded responses of random lengths),
    rewards with both values in every group, group ids; all on the CPU."""
    g = torch.Generator().manual_seed(seed)
    B = prompts * group
    prompt_ids = torch.randint(4, vocab, (prompts, prompt_len), generator=g).repeat_interleave(group, 0)
    starts = torch.randint(0, prompt_len // 2, (prompts,), generator=g).repeat_interleave(group)
    prompt_mask = (torch.arange(prompt_len) >= starts[:, None]).long()
    lengths = torch.randint(1, new_tokens + 1, (B,), generator=g)
    response_mask = (torch.arange(new_tokens) < lengths[:, None]).long()
    rewards = (torch.rand(B, generator=g) < 0.5).float()
    rewards[::group], rewards[1::group] = 1.0, 0.0
    return {"prompt_ids": prompt_ids * prompt_mask, "prompt_mask": prompt_mask,
            "response_ids": torch.randint(4, vocab, (B, new_tokens), generator=g) * response_mask,
            "response_mask": response_mask, "rewards": rewards, "group_ids": torch.arange(B) // group}


def algorithm(name: str, new_tokens: int):
    """The algorithm as a run with defaults builds it (Dr. GRPO's norm_len = max_new_tokens, as `rl.loop.algorithm_at`)."""
    from vimpo_bench.config import load_config

    with warnings.catch_warnings():  # VIMPO's fixed-point note on its defaults: shown by the engine runs
        warnings.simplefilter("ignore")
        algo = load_config(overrides=[f"algo.name={name}", f"rollout.max_new_tokens={new_tokens}"]).make_algorithm()
    if getattr(algo, "norm_len", 0) is None:
        algo = dataclasses.replace(algo, norm_len=new_tokens)
    return algo


def first_updates(policy, reference, fb: dict) -> dict:
    """{algo: (loss, flat float32 gradient on the CPU)}: each algorithm's first update of batch `fb`, as the
    engines run it (pi_old and pi_ref without gradient in eval mode; the loss's forward in train mode)."""
    from vimpo_bench.algorithms import Batch
    from vimpo_bench.rl.logprobs import token_logprobs
    from vimpo_bench.rl.steps import eval_mode

    ids = (fb["prompt_ids"], fb["prompt_mask"], fb["response_ids"], fb["response_mask"])
    with torch.no_grad(), eval_mode(policy):
        old_logp, _ = token_logprobs(policy, *ids)
        ref_logp, _ = token_logprobs(reference, *ids)
    device = old_logp.device
    full = Batch(logp=old_logp, old_logp=old_logp, ref_logp=ref_logp, mask=fb["response_mask"].float().to(device),
                 rewards=fb["rewards"].to(device), group_ids=fb["group_ids"].to(device))
    policy.train()
    out = {}
    for name in ALGOS:
        algo = algorithm(name, fb["response_ids"].shape[1])
        batch = full.with_advantages(algo.advantages(full))
        policy.zero_grad(set_to_none=True)
        logp, _ = token_logprobs(policy, *ids)
        loss, _ = algo.loss(dataclasses.replace(batch, logp=logp))
        loss.backward()
        grad = torch.cat([p.grad.float().flatten() for p in policy.parameters() if p.grad is not None]).cpu()
        out[name] = (loss.item(), grad)
    policy.zero_grad(set_to_none=True)
    return out


def rel(x: float, ref: float, floor: float = 0.0) -> float:
    return abs(x - ref) / max(abs(ref), floor) if max(abs(ref), floor) > 0 else abs(x - ref)


def parity(policy, reference, device: str) -> dict:
    """First updates on the CPU in float32 (the reference) and on `device` in float32 and bfloat16."""
    from vimpo_bench.models import disable_dropout

    fb = fixed_batch(policy.config.vocab_size)
    cpu = first_updates(disable_dropout(policy), disable_dropout(reference), fb)
    out = {"reference": "cpu float32", "device": device, "tolerance": TOLERANCE, "loss_floor": LOSS_FLOOR,
           "batch": {"responses": len(fb["rewards"]), "prompt_len": fb["prompt_ids"].shape[1],
                     "new_tokens": fb["response_ids"].shape[1]}, "algos": {a: {} for a in ALGOS}}
    for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        moved = [disable_dropout(copy.deepcopy(m).to(device=device, dtype=dtype)) for m in (policy, reference)]
        for name, (loss, grad) in first_updates(*moved, fb).items():
            ref_loss, ref_grad = cpu[name]
            norm, ref_norm = grad.norm().item(), ref_grad.norm().item()
            cos = torch.nn.functional.cosine_similarity(grad.double(), ref_grad.double(), dim=0).item()
            out["algos"][name][dtype_name] = {
                "loss": loss, "loss_ref": ref_loss, "rel_loss": rel(loss, ref_loss, LOSS_FLOOR),
                "grad_norm": norm, "grad_norm_ref": ref_norm, "rel_grad_norm": rel(norm, ref_norm), "grad_cos": cos,
                "ok": rel(loss, ref_loss, LOSS_FLOOR) <= TOLERANCE[dtype_name]
                and rel(norm, ref_norm) <= TOLERANCE[dtype_name]}
        del moved
        release_memory()
    return out


# ---------------------------------------------------------------------------------------- engines


def engine_overrides(engine: str, model_dir: Path, size: dict, steps: int, work: Path, cpu: bool) -> list[str]:
    return [f"run.engine={engine}", "algo.name=vimpo", f"model.name={model_dir}", f"model.dtype={size['dtype']}",
            f"rollout.prompts_per_step={size['prompts']}", f"rollout.group_size={size['group']}",
            f"rollout.max_new_tokens={size['new_tokens']}", f"optim.steps={steps}", "optim.minibatches=2",
            "optim.lr=1e-5", "eval.every=0", "eval.problems=8", "eval.samples=1", "eval.completions_logged=0",
            f"run.output_dir={work / 'runs'}", "run.checkpoint_every=0", f"run.experiment=gpu-smoke-{engine}",
            *(["run.threads=1"] if cpu else [])]


def run_engine(engine: str, overrides: list[str], tracking_uri: str, n_params: int, peak: float | None,
               cuda: bool) -> dict:
    """`engines.run` for `engine`; its per-step numbers read back from MLflow (see the module docstring)."""
    from mlflow.tracking import MlflowClient

    from vimpo_bench import engines
    from vimpo_bench.config import load_config

    config = load_config(overrides=overrides)
    memory: dict[int, float] = {}
    run_ids: list[str] = []

    def progress(phase, done, total, metrics):
        if phase != "train" or not cuda:
            return
        used = torch.cuda.max_memory_allocated()
        memory[done] = used / 2**30
        torch.cuda.reset_peak_memory_stats()
        if done == 1 and used <= at_start:
            raise NotOnGPU(f"the {engine} engine put nothing on the GPU in its first step (it trained on the CPU)")

    release_memory()
    at_start = torch.cuda.memory_allocated() if cuda else 0
    out: dict = {"config": overrides, "gpu_mem_at_start_gib": at_start / 2**30 if cuda else None}
    started = time.perf_counter()
    try:
        engines.run(config, progress=progress, tracking_uri=tracking_uri, run_started=run_ids.append)
    except Exception as exc:  # measured steps are still read back below
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["wall_s"] = time.perf_counter() - started
    if not run_ids:
        return out
    client = MlflowClient(tracking_uri)
    out["run_id"], out["status"] = run_ids[0], client.get_run(run_ids[0]).info.status
    history = {name: {m.step: m.value for m in client.get_metric_history(run_ids[0], name)} for name in STEP_METRICS}
    epochs, responses = config.optim.epochs, config.rollout.prompts_per_step * config.rollout.group_size
    out["steps"] = []
    for step in sorted(history["perf/step_s"]):
        m = {name.split("/")[1]: values.get(step, math.nan) for name, values in history.items()}
        tokens = m["tokens_per_s"] * m["step_s"]  # prompt + response tokens of the step
        generated = m["response_len"] * responses
        flops = {"rollout": 2 * n_params * tokens, "logprob": 4 * n_params * tokens,
                 "update": 6 * n_params * tokens * epochs}
        flops["step"] = sum(flops.values())
        secs = {"rollout": m["rollout_s"], "logprob": m["logprob_s"], "update": m["update_s"], "step": m["step_s"]}
        out["steps"].append({
            "step": step, **{f"{k}_s": v for k, v in secs.items()}, "scoring_s": m["scoring_s"],
            "tokens": tokens, "generated_tokens": generated, "gen_tokens_per_s": generated / m["rollout_s"],
            "flops": flops["step"], "tflops_per_s": flops["step"] / m["step_s"] / 1e12,
            "mfu": None if peak is None else {k: flops[k] / secs[k] / peak for k in secs},
            "peak_gpu_mem_gib": memory.get(step)})
    return out


# ------------------------------------------------------------------------------------------- main


def release_memory() -> None:
    """Free what earlier phases left, so that each phase's peak GPU memory is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def summarize(result: dict) -> dict:
    """Worst parity differences; per engine, medians over steps 2.. (step 1 holds the warm-up) and the peak."""
    out: dict = {"parity_max_rel": {}}
    for per_dtype in result.get("parity", {}).get("algos", {}).values():
        for dtype, r in per_dtype.items():
            worst = max(r["rel_loss"], r["rel_grad_norm"], out["parity_max_rel"].get(dtype, 0.0))
            out["parity_max_rel"][dtype] = worst
    for engine in ("trl", "native"):
        steps = result.get(engine, {}).get("steps", [])
        steady = steps[1:] or steps
        if not steady:
            continue
        mems = [s["peak_gpu_mem_gib"] for s in steps if s["peak_gpu_mem_gib"] is not None]
        out[engine] = {"steps": len(steps), **{f"median_{k}": statistics.median(s[k] for s in steady) for k in (
            "rollout_s", "logprob_s", "update_s", "step_s", "gen_tokens_per_s", "tflops_per_s")},
            "median_mfu": None if steady[0]["mfu"] is None else statistics.median(s["mfu"]["step"] for s in steady),
            "peak_gpu_mem_gib": max(mems) if mems else None}
    return out


def device_info(cpu: bool) -> dict:
    import transformers

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("trl", "accelerate", "mlflow"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    if cpu:
        return {"device": "cpu", "peak_bf16_flops": None, "versions": versions}
    name = torch.cuda.get_device_name(0)
    return {"device": name, "peak_bf16_flops": next((v for k, v in PEAK_BF16.items() if k in name), None),
            "gpu_mem_gib": torch.cuda.get_device_properties(0).total_memory / 2**30,
            "versions": {**versions, "cuda": torch.version.cuda}}


def problems_of(result: dict) -> list[str]:
    """The contracts: each phase ran, every number finite, timings positive, parity within tolerance."""
    found = []
    for phase in ("parity", "trl", "native"):
        part = result.get(phase)
        if part is None:
            found.append(f"{phase}: did not run")
        elif "error" in part:
            found.append(f"{phase}: {part['error']}")
    for name, per_dtype in result.get("parity", {}).get("algos", {}).items():
        for dtype, r in per_dtype.items():
            if not r["ok"]:
                found.append(f"parity {name} {dtype}: rel_loss {r['rel_loss']:.2e}, rel_grad_norm "
                             f"{r['rel_grad_norm']:.2e} above {TOLERANCE[dtype]}")
    for engine in ("trl", "native"):
        steps = result.get(engine, {}).get("steps", [])
        if engine in result and "error" not in result[engine] and len(steps) != result["steps_asked"]:
            found.append(f"{engine}: {len(steps)} steps logged, {result['steps_asked']} asked")
        for s in steps:
            if not all(math.isfinite(s[k]) and s[k] > 0 for k in ("rollout_s", "logprob_s", "update_s", "step_s",
                                                                     "tokens", "gen_tokens_per_s", "flops")):
                found.append(f"{engine} step {s['step']}: a timing or count is not finite and positive")
    return found


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "cpu" if args.cpu else "gpu"
    size, steps = SIZES[mode], args.steps or SIZES[mode]["steps"]
    if args.cpu:
        torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # save_pretrained's bars
    work = Path(tempfile.mkdtemp(prefix="vimpo-gpu-smoke-"))  # MLflow store, checkpoints: not under $OUT
    os.chdir(work)  # MLflow artifacts of a local store go to ./mlartifacts
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    info = device_info(args.cpu)
    result: dict = {"mode": mode, "work_dir": str(work), "steps_asked": steps, **info,
                    "flops_formula": "rollout 2N*tokens, log-probs 4N*tokens (pi_old + pi_ref), update 6N*tokens*epochs; "
                                     "N = parameters, tokens = prompt + response; MFU = FLOPs / s / peak_bf16_flops"}
    target = out_dir / "gpu_smoke.json"

    def save():
        result["problems"] = problems_of(result)
        result["summary"] = summarize(result)
        target.write_text(json.dumps(result, indent=1) + "\n")

    model_dir = work / "model"
    policy = build_model(model_dir, size["arch"], seed=0)
    result["model"] = {"arch": size["arch"] or "tiny-arith", "parameters": sum(p.numel() for p in policy.parameters()),
                       "dtype": size["dtype"], "prompts": size["prompts"], "group": size["group"],
                       "new_tokens": size["new_tokens"]}
    print(f"gpu_smoke: {info['device']}, {result['model']['parameters'] / 1e6:.1f}M parameters, out {target}",
          flush=True)
    phases = {
        "parity": lambda: parity(policy, build_model(None, size["arch"], seed=1), "cpu" if args.cpu else "cuda"),
        **{engine: (lambda engine=engine: run_engine(
            engine, engine_overrides(engine, model_dir, size, steps, work, args.cpu), tracking_uri,
            result["model"]["parameters"], info["peak_bf16_flops"], not args.cpu)) for engine in ("trl", "native")},
    }
    for phase, call in phases.items():
        started = time.perf_counter()
        try:
            result[phase] = call()
        except Exception as exc:
            traceback.print_exc()
            result[phase] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"gpu_smoke: {phase} done in {time.perf_counter() - started:.1f} s", flush=True)
        save()
    report(result)
    os.chdir(out_dir)
    if not result["problems"]:  # kept on failure, for a look at the MLflow store (its path is in the JSON)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if result["problems"] else 0


def report(result: dict) -> None:
    """Human-readable lines on stdout (the JSON file holds everything)."""
    for name, per_dtype in result.get("parity", {}).get("algos", {}).items():
        print(f"parity {name:8s}", "  ".join(f"{d}: rel loss {r['rel_loss']:.1e} rel |g| {r['rel_grad_norm']:.1e} "
                                           f"cos {r['grad_cos']:.5f}" for d, r in per_dtype.items()))
    for engine in ("trl", "native"):
        for s in result.get(engine, {}).get("steps", []):
            mfu = "" if s["mfu"] is None else f" mfu {s['mfu']['step']:.1%} (update {s['mfu']['update']:.1%})"
            mem = "" if s["peak_gpu_mem_gib"] is None else f" peak {s['peak_gpu_mem_gib']:.2f} GiB"
            print(f"{engine:6s} step {s['step']}: rollout {s['rollout_s']:.2f} s, log-probs {s['logprob_s']:.2f} s, "
                  f"update {s['update_s']:.2f} s, {s['gen_tokens_per_s']:.0f} gen tok/s,{mem}{mfu}")
    print("problems:", "; ".join(result["problems"]) or "none", flush=True)


if __name__ == "__main__":
    sys.exit(main())
