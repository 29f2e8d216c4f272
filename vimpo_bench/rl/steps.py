"""The parts of an RL step both engines run alike (`engines.native` and `engines.trl_engine`):
per-purpose seeds, prompts as text and how they are tokenized, sampling settings, log-probs at the sampling
temperature, pi_ref moves with their value-loss diagnostics, validation evaluation, the advantage profile,
and phase timing. The loops themselves (who calls these, in which order) live in the engines."""

from __future__ import annotations

import contextlib
import json
import time

import torch

from vimpo_bench import faults
from vimpo_bench.algorithms.core import masked_mean
from vimpo_bench.algorithms.vimpo import value_loss
from vimpo_bench.config import Config
from vimpo_bench.rl.logprobs import token_logprobs
from vimpo_bench.rl.reference import update_reference
from vimpo_bench.rollout.base import Rollouts, SamplingParams
from vimpo_bench.runs.tracking import Tracker


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed per (run seed, step, purpose): draws depend only on these, so a resumed run repeats them."""
    return (seed * 1_000_003 + step) * 16 + stream


def move_reference(config, policy, reference, batch_info) -> dict:
    """Move pi_ref; for VIMPO also log its value loss and mean terminal residual on this batch just before
    and after (each move redefines V's zero point), with the run's own baseline and truncation rule."""
    full, rollouts, algo = batch_info["full"], batch_info["rollouts"], batch_info["algo"]
    out = {"vimpo/ref_update": 1.0}
    if config.algo_name != "vimpo":
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


def load_starting_policy(config: Config, progress=None):
    """(policy, tokenizer) a run starts from: `model.name` loaded, the built-in model warm-started on the
    run's arith task (cached: the same seed gives the same start to every algorithm), its dropout off
    (`models.disable_dropout`: the rule for every RL forward, both engines), wrapped in LoRA adapters when
    `model.lora.r` > 0 (`lora.wrap`: A drawn from the run's seed, B = 0, so the same function as the model
    loaded); `progress(phase, done, total, metrics)` sees the warm start."""
    from vimpo_bench.models import disable_dropout, load_policy, lora

    warm = {"steps": config.model.warm_start_steps, "batch_size": config.model.warm_start_batch_size,
            "lr": config.model.warm_start_lr, "seed": config.run.seed}
    if progress:
        warm["progress"] = lambda done, total, loss: progress("warm start", done, total, {"loss": loss})
    policy, tokenizer = load_policy(config.model.name, config.model.dtype, config.model.cache_dir,
                                    task_options=config.task.options if config.task.name == "arith" else None,
                                    warm_start=warm)
    return lora.wrap(disable_dropout(policy), config.model.lora, config.run.seed), tokenizer


def sampled_logprobs(config: Config, model, rollouts: Rollouts, with_entropy: bool = False):
    """Per-token log-probs (and entropy) of the rollouts at the sampling temperature; the caller sets
    no_grad and the model's mode."""
    return token_logprobs(model, rollouts.prompt_ids, rollouts.prompt_mask, rollouts.response_ids,
                          rollouts.response_mask, with_entropy=with_entropy,
                          microbatch_size=config.optim.logprob_microbatch, temperature=config.rollout.temperature)


@contextlib.contextmanager
def eval_mode(model):
    """Eval mode inside, mode restored after: the no-gradient forwards (pi_old, pi_ref) measure the policy as
    sampled. A second guard: the starting policy's dropout is already zeroed (`models.disable_dropout`), but
    a model handed to an engine another way may still have it, and other layers may act by mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def evaluate_heldout(config, generator, task, heldout, prompt_text, step: int, tracker: Tracker) -> dict:
    """Validation accuracy: greedy (one sample) and sampled (eval.samples at the rollout temperature)."""
    started = time.perf_counter()
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
    out["val/sampled_accuracy"] = sum(graded) / len(graded)  # avg@n, n = eval.samples
    out.update(pass_and_majority(task, sampled, graded, config.eval.samples))
    shown = min(len(sampled.texts), config.eval.completions_logged)
    records += [{"step": step, "mode": "sampled", "id": heldout[int(sampled.group_ids[i])].id,
                 "completion": sampled.texts[i], "answer": task.extract(sampled.texts[i]),
                 "gold": heldout[int(sampled.group_ids[i])].answer, "correct": graded[i]} for i in range(shown)]
    tracker.log_text("\n".join(json.dumps(r) for r in records) + "\n", f"samples/step_{step:06d}.jsonl")
    # what an evaluation costs per generated sequence, against a rollout's (benchmarks/bench_perf.py)
    out["perf/eval_s"] = time.perf_counter() - started
    out["perf/eval_sequences"] = (len(heldout) if config.eval.greedy else 0) + len(sampled.texts)
    if config.eval.suites and suites_due(config, step):
        out.update(evaluate_suites(config, generator, step))
    return out


def suites_due(config: Config, step: int) -> bool:
    """Whether the benchmark suites (`eval.suites`) are evaluated at `step`: at the start, at the end, and every
    `eval.suites_every` steps (a multiple of eval.every, so it falls on a validation evaluation)."""
    every = config.eval.suites_every
    return step in (0, config.optim.steps) or bool(every and step % every == 0)


def evaluate_suites(config: Config, generator, step: int) -> dict[str, float]:
    """The benchmark suites of `eval.suites` on the current policy, as `vimpo-bench eval` scores them (the same
    records, grader and metrics): the first eval.problems test problems, eval.samples each, at the rollout's
    temperature and length limit, graded in this process. -> bench/<suite>/{accuracy, pass_at_n, maj_at_n}."""
    from vimpo_bench.evaluation.evaluate import EvalConfig, evaluate
    from vimpo_bench.tasks import expand_suites

    n = config.eval.samples
    on_arith = config.task.name == "arith" and "arith" in expand_suites(config.eval.suites)
    arith = config.task.options if on_arith else None
    settings = EvalConfig(suites=config.eval.suites, n=n, temperature=config.rollout.temperature,
                          top_p=config.rollout.top_p, max_new_tokens=config.rollout.max_new_tokens,
                          limit=config.eval.problems, seed=step_seed(config.run.seed, step, 7), grader_workers=0,
                          arith_options=dict(arith) if arith is not None else None,
                          **({} if config.task.template == "none" else {"template": config.task.template}))
    result = evaluate(generator, settings, tokenizer=getattr(generator, "tokenizer", None), step=step)
    keys = ("accuracy", *((f"pass_at_{n}", f"maj_at_{n}") if n > 1 else ()))
    return {f"bench/{suite}/{key}": r.metrics[key] for suite, r in result.suites.items() for key in keys}


def pass_and_majority(task, sampled, graded: list[bool], n: int) -> dict[str, float]:
    """val/pass_at_<n> (unbiased pass@n: a problem counts when any of its n samples is right) and
    val/maj_at_<n> (the most common extracted answer is right), over the validation problems; n > 1 only."""
    if n < 2:
        return {}
    from vimpo_bench.evaluation.results import majority_correct, pass_at_k

    rows: dict[int, list[int]] = {}
    for i, g in enumerate(sampled.group_ids):
        rows.setdefault(int(g), []).append(i)
    passed = [pass_at_k(len(r), sum(graded[i] for i in r), len(r)) for r in rows.values()]
    majority = [majority_correct([task.extract(sampled.texts[i]) for i in r], [graded[i] for i in r])
                for r in rows.values()]
    return {f"val/pass_at_{n}": sum(passed) / len(passed), f"val/maj_at_{n}": sum(majority) / len(majority)}


def log_completions(tracker: Tracker, batch_info: dict, step: int, limit: int) -> None:
    """The step's first `limit` responses as an MLflow table (completions/step_XXXXXX.json, browsable in the
    MLflow UI): prompt, response, the reward trained on, the clean reward, the response's mean advantage over
    its tokens, its length and whether it was cut at max_new_tokens."""
    if limit <= 0:
        return
    full, rollouts = batch_info["full"], batch_info["rollouts"]
    rows = min(limit, len(rollouts.texts))
    lengths = full.mask.sum(1)
    advantage = (full.advantages * full.mask).sum(1) / lengths.clamp(min=1)
    tracker.log_table({
        "step": [step] * rows,
        "prompt": list(rollouts.prompts[:rows]),
        "response": list(rollouts.texts[:rows]),
        "reward": full.rewards[:rows].tolist(),
        "clean_reward": batch_info["clean"][:rows].tolist(),
        "advantage": advantage[:rows].tolist(),
        "length": lengths[:rows].int().tolist(),
        "truncated": rollouts.truncated[:rows].tolist(),
    }, f"completions/step_{step:06d}.json")


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
    from vimpo_bench.rollout.hf import HFGenerator

    return HFGenerator(policy, tokenizer, add_special_tokens=prompt_special_tokens(config, tokenizer))


def prompt_special_tokens(config: Config, tokenizer) -> bool:
    """Whether a rendered prompt is tokenized with the tokenizer's special tokens (BOS), in both engines:
    tiny-arith learned its task without BOS, and chat templates write their own special tokens."""
    from vimpo_bench.tasks.prompts import has_chat_template

    templated = config.task.template != "none" and has_chat_template(tokenizer)
    return config.model.name != "tiny-arith" and not templated


def render_prompt(config: Config, task, problem, tokenizer) -> str:
    if config.task.template == "none":
        return task.prompt(problem)
    from vimpo_bench.tasks.prompts import render

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
