"""The RL training loop: rollout -> score -> log-probs -> advantages -> PPO update -> log.

`run(config)` is what `vimpo-bench train` calls: it opens the MLflow run, records the config and
provenance, trains, and marks the run FINISHED or FAILED. `train(...)` is the loop itself and takes
a tracker (default: one that records nothing) so that it can be used from a notebook or a sweep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vimpo_bench import faults, locks
from vimpo_bench import tasks as task_registry
from vimpo_bench.algorithms import Batch
from vimpo_bench.algorithms.core import masked_mean
from vimpo_bench.algorithms.vimpo import value_loss
from vimpo_bench.config import Config, from_dict
from vimpo_bench.logprobs import token_logprobs
from vimpo_bench.models import frozen_copy, load_policy
from vimpo_bench.provenance import git_state, machine_state, package_versions
from vimpo_bench.reference import beta_at, is_ref_update_step, lr_factor, update_reference
from vimpo_bench.rewards import noisy_rewards, truncation_rule, verifier_rewards
from vimpo_bench.rollout.base import Rollouts, SamplingParams
from vimpo_bench.tracking import MlflowTracker, NullTracker, Tracker


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, broken checkpoint); the message says where."""


class EarlyStop(Exception):
    """Raised by an `on_eval` hook to end a run early (a pruned sweep trial); the run is marked KILLED."""


@dataclass
class TrainResult:
    run_id: str | None
    steps: int
    initial: dict[str, float]
    final: dict[str, float]
    wall_seconds: float
    checkpoint: str | None
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "run_id": self.run_id,
            "steps": self.steps,
            "split": "validation",
            "initial_greedy_accuracy": self.initial.get("val/greedy_accuracy"),
            "initial_sampled_accuracy": self.initial.get("val/sampled_accuracy"),
            "final_greedy_accuracy": self.final.get("val/greedy_accuracy"),
            "final_sampled_accuracy": self.final.get("val/sampled_accuracy"),
            "wall_seconds": round(self.wall_seconds, 2),
            "checkpoint": self.checkpoint,
        }


Progress = Callable[[str, int, int, dict], None]  # (phase, done, total, latest metrics)
OnEval = Callable[[int, dict], None]  # (step, validation metrics) after each evaluation past step 0; may raise EarlyStop


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed per (run seed, step, purpose): draws depend only on these, so a resumed run repeats them."""
    return (seed * 1_000_003 + step) * 16 + stream


# ------------------------------------------------------------------------------------ entry point


def run(
    config: Config,
    resume_run_id: str | None = None,
    progress: Progress | None = None,
    tracking_uri: str | None = None,
    stop_after: int | None = None,
    tags: dict | None = None,
    parent_run_id: str | None = None,
    on_eval: OnEval | None = None,
    run_started: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train with an MLflow run: new, or `resume_run_id` continued from its last checkpoint.

    `tags` are added to the run's own (a `vimpo.kind` among them replaces `train`); the run is nested
    under `parent_run_id` when given; `run_started(run_id)` is called once the run exists (a sweep
    records it on its trial). An `EarlyStop` raised by `on_eval` ends the run as KILLED."""
    if config.run.engine == "trl":  # our algorithms inside TRL's GRPOTrainer (vimpo_bench/engines)
        from vimpo_bench.engines import trl_engine

        return trl_engine.run(config, resume_run_id, progress, tracking_uri, stop_after, tags, parent_run_id,
                              on_eval, run_started)
    if config.run.engine != "native":
        raise TrainingError(f"unknown run.engine={config.run.engine!r}; valid: native, trl")
    output = Path(config.run.output_dir)
    prepare_output_dir(output)
    if resume_run_id:
        owner = claim_run(output / resume_run_id)
        try:
            tracker = MlflowTracker.resume(resume_run_id, tracking_uri)
            checkpoint = find_checkpoint(output / resume_run_id)
            if checkpoint is None:
                tracker.finish("FAILED")
                raise TrainingError(f"run {resume_run_id} has no checkpoint under {output}/{resume_run_id}")
            config = from_dict(json.loads((checkpoint / "config.json").read_text()), str(checkpoint / "config.json"))
        except BaseException:
            owner.release()
            raise
    else:
        tracker = start_tracker(config, tags, parent_run_id, tracking_uri)
        owner = claim_run(output / tracker.run_id)
        checkpoint = None
    if run_started:
        run_started(tracker.run_id)
    try:  # finished while still holding the lock: never "RUNNING, no owner"
        return train_to_status(tracker, config.optim.steps, lambda: train(
            config, tracker, progress=progress, resume_from=checkpoint, stop_after=stop_after, tags=tags,
            on_eval=on_eval))
    finally:
        owner.release()


def start_tracker(config: Config, tags: dict | None, parent_run_id: str | None, tracking_uri: str | None):
    """A new MLflow run for `config`, tagged with its kind and config hash from the start, so that a run
    failing before its first step is still found by them (both engines)."""
    run_name = config.run.run_name or f"{config.algo['name']}-s{config.run.seed}-{config.hash()[:6]}"
    first_tags = {"vimpo.kind": "train", "vimpo.config_hash": config.hash(), **(tags or {})}
    return MlflowTracker.start(run_name, config.run.experiment, tags=first_tags, parent_run_id=parent_run_id,
                               tracking_uri=tracking_uri)


def train_to_status(tracker: Tracker, total_steps: int, call: Callable[[], TrainResult]) -> TrainResult:
    """Run `call()` and close the run: FINISHED once all steps are done (a `stop_after` cut leaves it
    RUNNING, to be resumed), KILLED on EarlyStop (a pruned trial), FAILED on any other exception."""
    try:
        result = call()
    except EarlyStop:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    if result.steps >= total_steps:
        tracker.finish("FINISHED")
    return result


OWNER_LOCK = ".owner.lock"  # in <output_dir>/<run id>/: held by the process training that run


def prepare_output_dir(root: Path) -> None:
    """Fail now, not at the first checkpoint save, when checkpoints cannot be written there; and remove the
    temporary folders of saves cut short by a kill (`.checkpoint-*` of runs whose process is gone)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise TrainingError(f"run.output_dir {root}: not writable ({exc.strerror or exc})") from None
    for partial in root.glob(f"*/{TEMP_PREFIX}*"):
        if not locks.held(partial.parent / OWNER_LOCK):
            shutil.rmtree(partial, ignore_errors=True)


def claim_run(run_dir: Path) -> locks.OwnerLock:
    """Hold the run's owner lock for this process's life: another process then knows the run is live (the
    kernel drops the lock when this one dies, kill -9 included). A run already held is refused."""
    lock = locks.OwnerLock(run_dir / OWNER_LOCK)
    if not lock.acquire():
        raise TrainingError(f"run {run_dir.name} is being trained by another process ({locks.owner(lock.path)})")
    return lock


def run_is_live(output_dir: str | Path, run_id: str) -> bool:
    """Whether a process is training this run now (it holds the run's owner lock)."""
    return locks.held(Path(output_dir) / run_id / OWNER_LOCK)


def record_run(tracker: Tracker, config: Config, task, tags: dict | None = None) -> None:
    """Params = the resolved config; tags = provenance (+ the caller's); artifact = config.yaml (house rule 7)."""
    from vimpo_bench import grading_version

    tracker.log_params(config.to_dict())
    tracker.set_tags({
        "vimpo.kind": "train",
        "vimpo.algo": config.algo["name"],
        "vimpo.seed": config.run.seed,
        "vimpo.task": config.task.name,
        "vimpo.config_hash": config.hash(),
        "grader_version": grading_version(config.task.name),
        "data.train_sha256": task.data_hash("train"),
        "data.validation_sha256": task.data_hash("validation"),
        "data.test_sha256": task.data_hash("test"),
        **git_state(),
        **package_versions(),
        **machine_state(),
        **(tags or {}),
    })
    tracker.log_dict(config.to_dict(), "config.yaml")


# ------------------------------------------------------------------------------------------- loop


def train(
    config: Config,
    tracker: Tracker | None = None,
    progress: Progress | None = None,
    resume_from: Path | None = None,
    stop_after: int | None = None,
    tags: dict | None = None,
    on_eval: OnEval | None = None,
) -> TrainResult:
    """Run the RL loop. `stop_after` ends the call after that many steps (checkpointed), as a kill would.
    `on_eval(step, metrics)` sees each validation evaluation after step 0 (a sweep reports and prunes there).
    In-training evaluation uses the task's validation split; the test split is for `vimpo-bench eval`."""
    tracker = tracker or NullTracker()
    started = time.perf_counter()
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)

    # -- setup: task, policy, frozen reference, generator, optimizer ---------------------------
    task = task_registry.get(config.task.name, **config.task.options)
    train_pool = task.problems("train")
    heldout = task.problems("validation", limit=config.eval.problems)
    warm = {"steps": config.model.warm_start_steps, "batch_size": config.model.warm_start_batch_size,
            "lr": config.model.warm_start_lr, "seed": config.run.seed}
    if progress:
        warm["progress"] = lambda done, total, loss: progress("warm start", done, total, {"loss": loss})
    policy, tokenizer = load_policy(config.model.name, config.model.dtype, config.model.cache_dir,
                                    task_options=config.task.options if config.task.name == "arith" else None,
                                    warm_start=warm)
    reference = frozen_copy(policy)
    policy.train()
    generator = make_generator(config, policy, tokenizer)
    opt_steps_total = config.optim.steps * config.optim.epochs * config.optim.minibatches
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(config.optim.lr_schedule, s, opt_steps_total, config.optim.warmup_steps))

    start_step, initial, logged_through = 0, {}, 0
    if resume_from is not None:
        start_step, initial = load_checkpoint(resume_from, policy, reference, optimizer, scheduler)
        # A killed process may have logged steps past its last checkpoint. This process recomputes the same
        # values (every draw is seeded by run seed and step; the checkpoint restores the rest), so the steps
        # already recorded are kept and not logged a second time.
        logged_through = tracker.last_step("perf/step_s") or 0
    else:
        record_run(tracker, config, task, tags)

    prompt_text = lambda problem: render_prompt(config, task, problem, tokenizer)  # noqa: E731
    history: list[dict[str, float]] = []
    last_eval: dict[str, float] = {}
    if start_step == 0:
        initial = evaluate_heldout(config, generator, task, heldout, prompt_text, 0, tracker)
        last_eval = initial
        tracker.log_metrics(initial, step=0)

    end_step = config.optim.steps if stop_after is None else min(config.optim.steps, start_step + stop_after)
    for step in range(start_step, end_step):
        metrics = rl_step(config, task, train_pool, prompt_text, policy, reference, generator, optimizer,
                          scheduler, step)
        done = step + 1
        batch_info = metrics.pop("_batch")
        if is_ref_update_step(config.ref.schedule, config.ref.every, done):
            metrics.update(move_reference(config, policy, reference, batch_info))
        else:
            metrics["vimpo/ref_update"] = 0.0
        if (config.eval.every and done % config.eval.every == 0) or done == config.optim.steps:
            last_eval = evaluate_heldout(config, generator, task, heldout, prompt_text, done, tracker)
            metrics.update(last_eval)
            log_advantage_profile(tracker, batch_info, done)
        if done > logged_through:
            tracker.log_metrics(metrics, step=done)
        history.append({"step": done, **metrics})
        if (config.run.checkpoint_every and done % config.run.checkpoint_every == 0) or done == end_step:
            save_checkpoint(checkpoint_dir(config, tracker), config, policy, reference, optimizer, scheduler,
                            done, initial, tokenizer)
        if progress:
            progress("train", done, config.optim.steps, metrics)
        if on_eval and "val/sampled_accuracy" in metrics:
            on_eval(done, {k: v for k, v in metrics.items() if k.startswith("val/")})
        faults.point("step")

    final_dir = checkpoint_dir(config, tracker)
    if end_step == config.optim.steps and config.run.log_checkpoint and tracker.run_id:
        tracker.log_artifact(final_dir / "policy", "checkpoint")
    return TrainResult(tracker.run_id, end_step, initial, last_eval, time.perf_counter() - started,
                       str(final_dir), history)


def rl_step(config, task, train_pool, prompt_text, policy, reference, generator, optimizer, scheduler,
            step: int) -> dict:
    """One RL step in labelled phases; returns its metrics (and the batch under `_batch`)."""
    seed = config.run.seed
    timer = PhaseTimer()
    beta = beta_at(config.beta_schedule.kind, config.algo["beta"], config.beta_schedule.final, step,
                   config.optim.steps)
    algo = config.make_algorithm(beta=beta)
    if "norm_len" in config.algo and config.algo["norm_len"] is None:
        # Dr. GRPO's constant is the longest possible completion, not the batch's padded length.
        algo = dataclasses.replace(algo, norm_len=config.rollout.max_new_tokens)

    # -- rollout: G responses to each of P prompts from the current policy ------------------------
    with timer("rollout"):
        pick = torch.Generator().manual_seed(step_seed(seed, step, 0))
        chosen = torch.randperm(len(train_pool), generator=pick)[: config.rollout.prompts_per_step].tolist()
        problems = [train_pool[i] for i in chosen]
        params = sampling_params(config, n=config.rollout.group_size)
        rollouts = generator.generate([prompt_text(p) for p in problems], params, seed=step_seed(seed, step, 1))

    # -- scoring: verifier, then the truncation rule, then the noise model -------------------------
    # One rule for every algorithm, before the noise: the algorithm sees only `rewards`.
    with timer("scoring"):
        graded, clean, rewards, include = score(config, task, problems, rollouts, step)

    # -- log-probs of the sampled tokens under pi_old (= the policy now) and pi_ref; no gradient ---
    # At the sampling temperature (ratios and KL refer to the distribution that sampled), dropout off.
    with timer("logprob"), torch.no_grad(), eval_mode(policy):
        old_logp, entropy = sampled_logprobs(config, policy, rollouts, with_entropy=True)
        ref_logp, _ = sampled_logprobs(config, reference, rollouts)

    # -- advantages: once over the whole batch (group statistics need every member) ---------------
    mask = rollouts.response_mask.float()
    full = Batch(logp=old_logp, old_logp=old_logp, ref_logp=ref_logp, mask=mask, rewards=rewards,
                 group_ids=rollouts.group_ids, include=include)
    full = full.with_advantages(algo.advantages(full))

    # -- update: PPO epochs over minibatches of whole groups, gradient accumulation, clipping ------
    with timer("update"):
        stats = ppo_update(config, algo, policy, optimizer, scheduler, rollouts, full, step)

    response_tokens = mask.sum().item()
    kept = torch.ones_like(clean, dtype=torch.bool) if include is None else include
    metrics = {
        "reward/trained_mean": rewards[kept].mean().item() if kept.any() else float("nan"),
        "reward/clean_mean": clean[kept].mean().item() if kept.any() else float("nan"),
        "reward/flip_rate": (rewards != clean).float().mean().item(),
        "reward/truncated_passed_rate": (graded.bool() & rollouts.truncated).float().mean().item(),
        "reward/kept_fraction": kept.float().mean().item(),
        **stats,
        "vimpo/beta": beta,
        "policy/entropy": masked_mean(entropy, mask).item(),
        "policy/lr": scheduler.get_last_lr()[0],
        "rollout/response_len": mask.sum(1).mean().item(),
        "rollout/truncation_rate": rollouts.truncated.float().mean().item(),
        **timer.metrics(),
    }
    metrics["perf/tokens_per_s"] = (rollouts.prompt_mask.sum().item() + response_tokens) / metrics["perf/step_s"]
    if config.algo["name"] == "vimpo":
        metrics["vimpo/value_coef"], metrics["vimpo/value_scale"] = algo.c_v, algo.effective_value_scale
    metrics["_batch"] = {"full": full, "rollouts": rollouts, "clean": clean, "algo": algo}
    return metrics


def score(config: Config, task, problems: list, rollouts: Rollouts, step: int):
    """Rewards of a step's responses, the same for every algorithm: the grader, then the truncation rule
    (`reward.truncated`), then the noise model (seeded by run seed and step).

    Returns (graded, clean, rewards, include): graded [B] the grader's verdict; clean [B] after the
    truncation rule; rewards [B] after the noise (what the algorithm trains on); include [B] bool or
    None (the rule `mask` leaves truncated responses out)."""
    per_row = [problems[int(g)] for g in rollouts.group_ids]
    graded = verifier_rewards(task, rollouts.texts, per_row)
    clean, include = truncation_rule(graded, rollouts.truncated, config.reward.truncated)
    noise_rng = torch.Generator().manual_seed(step_seed(config.run.seed, step, 2))
    rewards = noisy_rewards(clean, config.reward.noise, noise_rng, config.reward.p, config.reward.fp,
                            config.reward.fn)
    return graded, clean, rewards, include


def ppo_update(config, algo, policy, optimizer, scheduler, rollouts: Rollouts, full: Batch, step: int) -> dict:
    """epochs x minibatches optimizer steps; each minibatch is split into `grad_accum` microbatches."""
    sums: dict[str, list[float]] = defaultdict(list)
    groups = torch.unique(full.group_ids)
    shuffle = torch.Generator().manual_seed(step_seed(config.run.seed, step, 3))
    for _epoch in range(config.optim.epochs):
        order = groups[torch.randperm(len(groups), generator=shuffle)]
        for minibatch_groups in torch.tensor_split(order, config.optim.minibatches):
            optimizer.zero_grad(set_to_none=True)
            for micro_groups in torch.tensor_split(minibatch_groups, config.optim.grad_accum):
                rows = torch.isin(full.group_ids, micro_groups).nonzero().squeeze(1)
                logp, _ = token_logprobs(policy, rollouts.prompt_ids[rows], rollouts.prompt_mask[rows],
                                         rollouts.response_ids[rows], rollouts.response_mask[rows],
                                         temperature=config.rollout.temperature)
                micro = dataclasses.replace(full.select(rows), logp=logp)
                loss, stats = algo.loss(micro)
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss is {loss.item()} at step {step + 1}; lower optim.lr or check the model")
                (loss / config.optim.grad_accum).backward()
                for key, value in stats.items():
                    sums[key].append(value)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.optim.max_grad_norm)
            if not torch.isfinite(grad_norm):
                raise TrainingError(f"gradient norm is {grad_norm.item()} at step {step + 1}")
            sums["policy/grad_norm"].append(grad_norm.item())
            optimizer.step()
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if not all(torch.isfinite(p).all() for p in policy.parameters()):
        raise TrainingError(f"the policy's parameters became non-finite at step {step + 1}; lower optim.lr")
    return {key: sum(values) / len(values) for key, values in sums.items()}


def move_reference(config, policy, reference, batch_info) -> dict:
    """Move pi_ref; for VIMPO also log its value loss and mean terminal residual on this batch just before
    and after (each move redefines V's zero point), with the run's own baseline and truncation rule."""
    full, rollouts, algo = batch_info["full"], batch_info["rollouts"], batch_info["algo"]
    out = {"vimpo/ref_update": 1.0}
    if config.algo["name"] != "vimpo":
        update_reference(reference, policy, config.ref.schedule, config.ref.alpha)
        return out

    def value_loss_against(ref_logp: torch.Tensor) -> tuple[float, float]:
        loss, parts = value_loss(policy_logp - ref_logp, full.mask, full.rewards, full.group_ids, algo.beta,
                                 algo.value_baseline, full.include)
        kept = full.weights if full.weights is not None else torch.ones_like(parts["delta"])
        return loss.item(), masked_mean(parts["delta"], kept).item()

    with torch.no_grad(), eval_mode(policy):
        policy_logp, _ = sampled_logprobs(config, policy, rollouts)
        pre = value_loss_against(full.ref_logp)
        update_reference(reference, policy, config.ref.schedule, config.ref.alpha)
        post = value_loss_against(sampled_logprobs(config, reference, rollouts)[0])
    out["vimpo/value_loss_pre_ref_update"], out["vimpo/residual_pre_ref_update"] = pre
    out["vimpo/value_loss_post_ref_update"], out["vimpo/residual_post_ref_update"] = post
    return out


def sampled_logprobs(config: Config, model, rollouts: Rollouts, with_entropy: bool = False):
    """Per-token log-probs (and entropy) of the rollouts at the sampling temperature; the caller sets
    no_grad and the model's mode."""
    return token_logprobs(model, rollouts.prompt_ids, rollouts.prompt_mask, rollouts.response_ids,
                          rollouts.response_mask, with_entropy=with_entropy,
                          microbatch_size=config.optim.logprob_microbatch, temperature=config.rollout.temperature)


@contextlib.contextmanager
def eval_mode(model):
    """Dropout off inside (old and reference log-probs are no-gradient measurements), mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------- evaluation


def evaluate_heldout(config, generator, task, heldout, prompt_text, step: int, tracker: Tracker) -> dict:
    """Validation accuracy: greedy (one sample) and sampled (eval.samples at the rollout temperature)."""
    prompts = [prompt_text(p) for p in heldout]
    out = {}
    records = []
    if config.eval.greedy:
        greedy = generator.generate(prompts, sampling_params(config, n=1, greedy=True),
                                    seed=step_seed(config.run.seed, step, 4))
        correct = [task.grade(t, p) for t, p in zip(greedy.texts, heldout, strict=True)]
        out["val/greedy_accuracy"] = sum(correct) / len(correct)
        faults.point("heldout")
        records += [{"step": step, "mode": "greedy", "id": p.id, "prompt": prompts[i], "completion": greedy.texts[i],
                     "answer": task.extract(greedy.texts[i]), "gold": p.answer, "correct": correct[i]}
                    for i, p in enumerate(heldout[: config.eval.completions_logged])]
    sampled = generator.generate(prompts, sampling_params(config, n=config.eval.samples),
                                 seed=step_seed(config.run.seed, step, 5))
    graded = [task.grade(t, heldout[int(g)]) for t, g in zip(sampled.texts, sampled.group_ids, strict=True)]
    out["val/sampled_accuracy"] = sum(graded) / len(graded)
    shown = min(len(sampled.texts), config.eval.completions_logged)
    records += [{"step": step, "mode": "sampled", "id": heldout[int(sampled.group_ids[i])].id,
                 "completion": sampled.texts[i], "answer": task.extract(sampled.texts[i]),
                 "gold": heldout[int(sampled.group_ids[i])].answer, "correct": graded[i]} for i in range(shown)]
    tracker.log_text("\n".join(json.dumps(r) for r in records) + "\n", f"samples/step_{step:06d}.jsonl")
    return out


def log_advantage_profile(tracker: Tracker, batch_info: dict, step: int) -> None:
    """Mean advantage by token position for correct and wrong responses (the VIMPO credit picture)."""
    full, clean = batch_info["full"], batch_info["clean"]
    lines = []
    for correct in (True, False):
        rows = (clean > 0.5) == correct
        if not rows.any():
            continue
        adv, mask = full.advantages[rows], full.mask[rows]
        counts = mask.sum(0)
        means = (adv * mask).sum(0) / counts.clamp(min=1)
        lines += [json.dumps({"step": step, "position": t, "correct": correct, "mean_adv": means[t].item(),
                              "count": int(counts[t].item())}) for t in range(mask.shape[1]) if counts[t] > 0]
    tracker.log_text("\n".join(lines) + "\n", f"diagnostics/adv_by_position_step_{step:06d}.jsonl")


# ------------------------------------------------------------------------------------- helpers


def sampling_params(config: Config, n: int, greedy: bool = False) -> SamplingParams:
    """The rollout's sampling settings for n samples per prompt (greedy: temperature 0, one sample)."""
    if greedy:
        return SamplingParams(temperature=0.0, top_k=0, n=1, max_new_tokens=config.rollout.max_new_tokens)
    return SamplingParams(temperature=config.rollout.temperature, top_p=config.rollout.top_p, top_k=0,
                          max_new_tokens=config.rollout.max_new_tokens, n=n)


def make_generator(config: Config, policy, tokenizer):
    if config.rollout.backend != "hf":  # config validation already says so; kept for configs built by hand
        raise ValueError(f"the native engine generates with transformers only (rollout.backend=hf), got "
                         f"{config.rollout.backend!r}; use run.engine=trl for vLLM rollouts")
    from vimpo_bench.prompts import has_chat_template
    from vimpo_bench.rollout.hf import HFGenerator

    # tiny-arith learned its task without BOS, and chat templates write their own special tokens.
    templated = config.task.template != "none" and has_chat_template(tokenizer)
    add_special_tokens = config.model.name != "tiny-arith" and not templated
    return HFGenerator(policy, tokenizer, add_special_tokens=add_special_tokens)


def render_prompt(config: Config, task, problem, tokenizer) -> str:
    if config.task.template == "none":
        return task.prompt(problem)
    from vimpo_bench.prompts import render

    return render(config.task.template, problem.question, tokenizer)


class PhaseTimer:
    """Wall seconds per labelled phase of a step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    def __call__(self, phase: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[phase] = timer.seconds.get(phase, 0.0) + time.perf_counter() - self.t

        return _Phase()

    def metrics(self) -> dict[str, float]:
        out = {f"perf/{k}_s": v for k, v in self.seconds.items()}
        out["perf/step_s"] = time.perf_counter() - self.start
        return out


# ---------------------------------------------------------------------------------- checkpoints


TEMP_PREFIX = ".checkpoint-"  # a save in progress; left behind only by a kill, removed at the next start


def checkpoint_dir(config: Config, tracker: Tracker) -> Path:
    return Path(config.run.output_dir) / (tracker.run_id or "local") / "checkpoint"


def save_checkpoint(path: Path, config: Config, policy, reference, optimizer, scheduler, step: int,
                    initial: dict, tokenizer=None) -> None:
    """Write the checkpoint atomically: build it beside, then swap; a kill mid-save keeps the old one.
    `policy/` holds the tokenizer too, so that it loads (and evaluates) on its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=path.parent))
    policy.save_pretrained(tmp / "policy")
    faults.point("save")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "policy")
    if config.ref.schedule != "frozen":  # a frozen reference is the starting model, rebuilt on resume
        reference.save_pretrained(tmp / "reference")
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "initial": initial},
               tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    (tmp / "COMPLETE").write_text(str(step))
    old = path.with_name("checkpoint.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (the previous one if a save was cut short)."""
    for name in ("checkpoint", "checkpoint.old"):
        if (run_dir / name / "COMPLETE").is_file():
            return run_dir / name
    return None


def load_checkpoint(path: Path, policy, reference, optimizer, scheduler) -> tuple[int, dict]:
    from transformers import AutoModelForCausalLM

    def copy_weights(target, folder: Path):
        source = AutoModelForCausalLM.from_pretrained(folder, dtype=next(target.parameters()).dtype)
        target.load_state_dict(source.state_dict())

    copy_weights(policy, path / "policy")
    if (path / "reference").is_dir():
        copy_weights(reference, path / "reference")
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return int(state["step"]), state["initial"]
