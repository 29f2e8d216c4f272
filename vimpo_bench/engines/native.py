"""The native engine, the readable reference loop: rollout -> score -> log-probs -> advantages -> PPO update -> log.

`run_native(request)` is this engine's entry (`engines.start` calls it for run.engine=native): it opens the
MLflow run, records the config and provenance, trains, and marks the run FINISHED or FAILED. `train(...)` is
the loop itself and takes a tracker (default: one that records nothing) so that it can be used from a notebook.
What the `trl` engine shares with this loop lives below both: the run's record and ownership in
`vimpo_bench.runs`, the engine-neutral parts of a step in `vimpo_bench.rl`; only the loop is here.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from pathlib import Path

import torch

from vimpo_bench import faults
from vimpo_bench import tasks as task_registry
from vimpo_bench.algorithms import Batch
from vimpo_bench.algorithms.core import masked_mean
from vimpo_bench.config import Config
from vimpo_bench.models.lora import frozen_reference, trainable_parameters
from vimpo_bench.rl.logprobs import token_logprobs
from vimpo_bench.rl.loop import (
    PROMPTS,
    SAMPLING,
    Scored,
    algorithm_at,
    concat_scored,
    group_orders,
    informative_groups,
    refill_seed,
    reward_metrics,
    rewards_of,
    seed_process,
    select_scored,
)
from vimpo_bench.rl.reference import is_ref_update_step, lr_factor
from vimpo_bench.rl.rewards import verifier_rewards
from vimpo_bench.rl.steps import (
    PhaseTimer,
    eval_mode,
    evaluate_heldout,
    load_starting_policy,
    log_advantage_profile,
    log_completions,
    make_generator,
    move_reference,
    render_prompt,
    sampled_logprobs,
    sampling_params,
)
from vimpo_bench.rollout.base import Rollouts, concat_rollouts
from vimpo_bench.runs.checkpoints import (
    checkpoint_dir,
    checkpoint_due,
    load_checkpoint,
    save_checkpoint,
    saved_config,
)
from vimpo_bench.runs.provenance import run_identity
from vimpo_bench.runs.record import (
    OnEval,
    Progress,
    RunRequest,
    TrainingError,
    TrainResult,
    open_run,
    record_run,
    train_to_status,
)
from vimpo_bench.runs.tracking import NullTracker, Tracker

# ------------------------------------------------------------------------------------ entry point


def run_native(request: RunRequest) -> TrainResult:
    """`start` on the native engine (the loop below)."""
    config = request.config
    tracker, owner, checkpoint = open_run(config, request.resume_run_id, request.tags, request.parent_run_id,
                                          request.tracking_uri)
    if checkpoint is not None:  # a resumed run goes on with the config it was started with
        try:
            config = saved_config(checkpoint)
        except BaseException:
            owner.release()
            raise
    if request.run_started:
        request.run_started(tracker.run_id)
    try:  # finished while still holding the lock: never "RUNNING, no owner"
        return train_to_status(tracker, config.optim.steps, lambda: train(
            config, tracker, progress=request.progress, resume_from=checkpoint, stop_after=request.stop_after,
            tags=request.tags, on_eval=request.on_eval))
    finally:
        owner.release()


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
    seed_process(config)

    # -- setup: task, policy, frozen reference, generator, optimizer ---------------------------
    task = task_registry.get(config.task.name, **config.task.options)
    train_pool = task.problems("train")
    heldout = task.problems("validation", limit=config.eval.problems)
    policy, tokenizer = load_starting_policy(config, progress)  # dropout zeroed: rho = 1 on the first minibatch
    identity = run_identity(policy)  # the machine and the starting weights' checksum, for the record
    reference = frozen_reference(policy)  # with LoRA: the base, adapters off, its tensors shared (lora.py)
    policy.train()
    generator = make_generator(config, policy, tokenizer)
    opt_steps_total = config.optim.steps * config.optim.epochs * config.optim.minibatches
    optimizer = torch.optim.AdamW(trainable_parameters(policy), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
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
        record_run(tracker, config, task, tags, identity)

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
            log_completions(tracker, batch_info, done, config.eval.completions_logged)
        if done > logged_through:
            tracker.log_metrics(metrics, step=done)
        history.append({"step": done, **metrics})
        if checkpoint_due(config.run.checkpoint_every, done, end_step):
            save_checkpoint(checkpoint_dir(config, tracker.run_id), config, policy, reference, optimizer, scheduler,
                            done, initial, tokenizer)
        if progress:
            progress("train", done, config.optim.steps, metrics)
        if on_eval and "val/sampled_accuracy" in metrics:
            on_eval(done, {k: v for k, v in metrics.items() if k.startswith("val/")})
        faults.point("step")

    final_dir = checkpoint_dir(config, tracker.run_id)
    if end_step == config.optim.steps and config.run.log_checkpoint and tracker.run_id:
        tracker.log_artifact(final_dir / "policy", "checkpoint")
    return TrainResult(tracker.run_id, end_step, initial, last_eval, time.perf_counter() - started,
                       str(final_dir), history, identity)


def rl_step(config, task, train_pool, prompt_text, policy, reference, generator, optimizer, scheduler,
            step: int) -> dict:
    """One RL step in labelled phases; returns its metrics (and the batch under `_batch`)."""
    timer = PhaseTimer()
    algo = algorithm_at(config, step)

    # -- rollout and scoring: G responses to each of P prompts from the current policy; the verifier, then
    # the truncation rule, then the noise model (one rule for every algorithm: the algorithm sees only
    # `rewards`); with rollout.refill_rounds, constant groups replaced by fresh prompts' (DAPO) --------------
    drawn, rollouts, scored = draw_round(config, task, train_pool, prompt_text, generator, step, 0, timer)
    refill_metrics = {}
    if config.rollout.refill_rounds:
        rollouts, scored, refill_metrics = refill_constant_groups(
            config, task, train_pool, prompt_text, generator, step, timer, drawn, rollouts, scored)
    rewards, include = scored.rewards, scored.include

    # -- log-probs of the sampled tokens under pi_old (= the policy now) and pi_ref; no gradient ---
    # At the sampling temperature (ratios and KL refer to the distribution that sampled), dropout off
    # (zeroed at load, and eval mode here; see `models.disable_dropout`).
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
    metrics = {
        **reward_metrics(scored),
        **refill_metrics,
        **stats,
        "vimpo/beta": algo.beta,
        "policy/entropy": masked_mean(entropy, mask).item(),
        "policy/lr": scheduler.get_last_lr()[0],
        "rollout/response_len": mask.sum(1).mean().item(),
        **timer.metrics(),
    }
    metrics["perf/tokens_per_s"] = (rollouts.prompt_mask.sum().item() + response_tokens) / metrics["perf/step_s"]
    if config.algo_name == "vimpo":
        metrics["vimpo/value_coef"], metrics["vimpo/value_scale"] = algo.c_v, algo.effective_value_scale
    metrics["_batch"] = {"full": full, "rollouts": rollouts, "clean": scored.clean, "algo": algo}
    return metrics


def score(config: Config, task, problems: list, rollouts: Rollouts, step: int, round_: int = 0) -> Scored:
    """The step's responses scored (`loop.Scored`), the same for every algorithm: the grader here, then
    `loop.rewards_of` (the truncation rule, then the noise model seeded by run seed, step and refill round)."""
    per_row = [problems[int(g)] for g in rollouts.group_ids]
    graded = verifier_rewards(task, rollouts.texts, per_row)
    return rewards_of(config, graded, rollouts.truncated, rollouts.response_mask.sum(1), step, round_)


def draw_round(config, task, train_pool, prompt_text, generator, step: int, round_: int, timer: PhaseTimer,
               exclude: frozenset = frozenset()):
    """Draw prompts_per_step prompts of the pool (indices not in `exclude`), sample G responses to each, score
    them: round 0 is the step's own draw, rounds 1.. are dynamic-sampling refills (each seeded by run seed, step
    and round). -> (pool indices, rollouts, scored)."""
    seed = config.run.seed
    with timer("rollout"):
        pick = torch.Generator().manual_seed(refill_seed(seed, step, round_, PROMPTS))
        drawn = [i for i in torch.randperm(len(train_pool), generator=pick).tolist() if i not in exclude]
        drawn = drawn[: config.rollout.prompts_per_step]
        problems = [train_pool[i] for i in drawn]
        params = sampling_params(config, n=config.rollout.group_size)
        rollouts = generator.generate([prompt_text(p) for p in problems], params,
                                      seed=refill_seed(seed, step, round_, SAMPLING))
    with timer("scoring"):
        scored = score(config, task, problems, rollouts, step, round_)
    return drawn, rollouts, scored


def refill_constant_groups(config, task, train_pool, prompt_text, generator, step, timer, drawn, rollouts, scored):
    """DAPO's dynamic sampling: keep the first draw's informative groups, replace its constant ones with
    informative groups of fresh prompts over at most rollout.refill_rounds more draws, and fill what is still
    missing with the first draw's constant groups, so the batch keeps prompts_per_step groups.
    -> (rollouts, scored, metrics)."""
    wanted = config.rollout.prompts_per_step
    informative = informative_groups(scored, rollouts.group_ids).tolist()
    first_constant = wanted - len(informative)
    parts, rounds, seen = [], 0, frozenset(drawn)
    need = first_constant
    while need > 0 and rounds < config.rollout.refill_rounds:
        rounds += 1
        more_drawn, more, more_scored = draw_round(
            config, task, train_pool, prompt_text, generator, step, rounds, timer, exclude=seen)
        keep = informative_groups(more_scored, more.group_ids).tolist()[:need]
        if keep:
            parts.append((more, more_scored, keep))
        seen |= frozenset(more_drawn)
        need -= len(keep)
    kept = set(informative)
    constant = [g for g in range(wanted) if g not in kept]
    parts.insert(0, (rollouts, scored, sorted(informative + constant[:need])))
    merged = [part.groups(keep) for part, _, keep in parts]
    merged_scored = [select_scored(part_scored, part.rows_of(keep)) for part, part_scored, keep in parts]
    metrics = {
        "rollout/refill_rounds": float(rounds),
        "rollout/constant_groups_drawn": first_constant / wanted,
        "rollout/constant_groups_trained": need / wanted,
    }
    return concat_rollouts(merged, generator.pad_token_id), concat_scored(merged_scored), metrics


def ppo_update(config, algo, policy, optimizer, scheduler, rollouts: Rollouts, full: Batch, step: int) -> dict:
    """epochs x minibatches optimizer steps; each minibatch is split into `grad_accum` microbatches."""
    sums: dict[str, list[float]] = defaultdict(list)
    for order in group_orders(config, step, torch.unique(full.group_ids)):
        for minibatch_groups in torch.tensor_split(order, config.optim.minibatches):
            optimizer.zero_grad(set_to_none=True)
            for micro_groups in torch.tensor_split(minibatch_groups, config.optim.grad_accum):
                rows = torch.isin(full.group_ids, micro_groups).nonzero().squeeze(1)
                # Train mode, dropout zeroed at load: the first minibatch's logp equals old_logp (rho = 1).
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


# ----------------------------------------------------------------------------------- evaluation


# ------------------------------------------------------------------------------------- helpers


