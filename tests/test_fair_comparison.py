"""What keeps the VIMPO-vs-baselines comparison level: one truncation rule applied in scoring for every
algorithm (before the noise), a validation split that tuning and in-training evaluation use instead of
test, 2 beta c_V held fixed as beta moves, log-probs of the distribution that sampled, and the same
algorithm defaults however a config is built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vimpo_bench import tasks
from vimpo_bench.config import Config, ConfigError, from_dict, load_config
from vimpo_bench.engines.native import score
from vimpo_bench.models import build_tiny_arith_model, frozen_copy
from vimpo_bench.rl.steps import eval_mode, move_reference, sampled_logprobs
from vimpo_bench.rollout.base import Rollouts, SamplingParams
from vimpo_bench.rollout.hf import HFGenerator
from vimpo_bench.tasks.base import Problem

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class _Task:
    """A grader that passes every response whose text says 'right'."""

    def grade(self, completion: str, problem: Problem) -> bool:
        return completion == "right"


def _rollouts(texts: list[str], truncated: list[bool], group_size: int = 2) -> Rollouts:
    B = len(texts)
    ones = torch.ones(B, 3, dtype=torch.long)
    return Rollouts(prompt_ids=ones, prompt_mask=ones, response_ids=ones, response_mask=ones,
                    truncated=torch.tensor(truncated), group_ids=torch.arange(B) // group_size, texts=texts,
                    prompts=[""] * B)


PROBLEMS = [Problem(id=str(i), question="q", answer="a") for i in range(2)]
# Rows 1 and 2 were cut at max_new_tokens; the grader passes row 1 anyway (a repeated final answer).
TEXTS, TRUNCATED = ["right", "right", "wrong", "wrong"], [False, True, True, False]


@pytest.mark.parametrize("algo", ["vimpo", "grpo", "dr_grpo", "dapo", "rloo"])
def test_zero_reward_rule_applies_to_every_algorithm(algo):
    config = load_config(overrides=[f"algo.name={algo}"])
    s = score(config, _Task(), PROBLEMS, _rollouts(TEXTS, TRUNCATED), step=0)
    graded, clean, rewards, include = s.graded, s.clean, s.rewards, s.include
    assert graded.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert clean.tolist() == [1.0, 0.0, 0.0, 0.0]  # the cut response that graded right gets R = 0
    assert rewards.tolist() == clean.tolist() and include is None


@pytest.mark.parametrize("algo", ["vimpo", "grpo"])
def test_the_rule_comes_before_the_noise(algo):
    """Flip every reward (p = 1): the noise sees the rule's rewards, so the cut right answer becomes 1
    (0 flipped), for VIMPO and GRPO alike."""
    config = load_config(overrides=[f"algo.name={algo}", "reward.noise=symmetric", "reward.p=1.0"])
    s = score(config, _Task(), PROBLEMS, _rollouts(TEXTS, TRUNCATED), step=0)
    clean, rewards = s.clean, s.rewards
    assert rewards.tolist() == [1.0 - r for r in clean.tolist()] == [0.0, 1.0, 1.0, 1.0]


def test_mask_rule_leaves_truncated_responses_out():
    config = load_config(overrides=["algo.name=grpo", "reward.truncated=mask"])
    s = score(config, _Task(), PROBLEMS, _rollouts(TEXTS, TRUNCATED), step=0)
    clean, include = s.clean, s.include
    assert include.tolist() == [True, False, False, True]
    assert clean.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_truncation_is_no_longer_a_vimpo_option():
    with pytest.raises(ConfigError, match="reward.truncated"):
        load_config(overrides=["algo.truncated=mask"])
    with pytest.raises(ConfigError, match="reward.truncated"):
        load_config(overrides=["reward.truncated=drop"])


# ---- validation split -----------------------------------------------------------------------------

def test_arith_has_three_disjoint_splits_and_test_does_not_move():
    task = tasks.get("arith")
    splits = {s: {p.question for p in task.problems(s)} for s in ("train", "validation", "test")}
    assert len(splits["validation"]) == 500
    assert not splits["train"] & splits["validation"] and not splits["train"] & splits["test"]
    assert not splits["validation"] & splits["test"]
    # the test split does not depend on how many train or validation problems are drawn
    other = tasks.get("arith", n_train=100, n_validation=50)
    assert [p.question for p in other.problems("test")] == [p.question for p in task.problems("test")]
    assert task.data_hash("validation") != task.data_hash("test")


@pytest.mark.skipif(not (SHARED_DATA / "math_train").is_dir(), reason="needs ../shared/data")
def test_math_train_validation_is_held_out_of_training():
    task = tasks.get("math_train", data_dir=str(SHARED_DATA))
    train = {p.id for p in task.problems("train")}
    validation = [p for p in task.problems("validation")]
    assert len(validation) == 500 and len(train) == 7472 - 500
    assert not train & {p.id for p in validation}
    test_questions = {p.question for p in task.problems("test")}
    assert not test_questions & {p.question for p in validation}
    # a fixed choice: the same rows however often it is built
    again = tasks.get("math_train", data_dir=str(SHARED_DATA))
    assert [p.id for p in again.problems("validation")] == [p.id for p in validation]


def test_sweeps_tune_on_validation_only():
    from vimpo_bench.experiments.study import load_study
    from vimpo_bench.experiments.sweep import resolve_params, sweep_spec

    study = load_study("beta_sweep")
    assert sweep_spec(study).metric == "val/sampled_accuracy"
    with pytest.raises(ConfigError, match="val/sampled_accuracy"):
        sweep_spec(type(study)(**{**study.__dict__, "sweep": {**study.sweep, "metric": "eval/sampled_accuracy"}}))
    (clip,) = resolve_params(study, ["clip"])  # the built-in clip range moves both bounds
    assert clip.assign(0.3) == {"algo.eps_low": 0.3, "algo.eps_high": 0.3}


# ---- 2 beta c_V -----------------------------------------------------------------------------------

def test_a_beta_schedule_keeps_two_beta_cv_fixed():
    from vimpo_bench.rl.reference import beta_at

    config = load_config(overrides=["beta_schedule.kind=linear", "beta_schedule.final=0.005"])
    scales = []
    for step in (0, 40, 79):
        beta = beta_at("linear", config.algo.beta, 0.005, step, 80)
        algo = config.make_algorithm(beta=beta)
        scales.append(algo.effective_value_scale)
        assert algo.c_v == pytest.approx(0.5 / (2 * beta))
    assert scales == pytest.approx([0.5, 0.5, 0.5])
    fixed = load_config(overrides=["algo.value_coef=5.0"]).make_algorithm(beta=0.005)
    assert fixed.c_v == 5.0 and fixed.effective_value_scale == pytest.approx(0.05)


# ---- log-probs at the sampling temperature, dropout off -------------------------------------------

@pytest.mark.parametrize("temperature", [0.6, 1.3])
def test_old_logprobs_are_the_samplers(tiny_policy, temperature, one_torch_thread):
    model, tokenizer = tiny_policy
    generator = HFGenerator(model, tokenizer, return_sample_logp=True, add_special_tokens=False)
    params = SamplingParams(temperature=temperature, top_k=0, n=3, max_new_tokens=8)
    rollouts = generator.generate(["12+34=", "5+6+7="], params, seed=0)
    config = load_config(overrides=[f"rollout.temperature={temperature}"])
    with torch.no_grad():
        logp, _ = sampled_logprobs(config, model, rollouts)
    mask = rollouts.response_mask.bool()
    torch.testing.assert_close(logp[mask], rollouts.sample_logp[mask], atol=1e-4, rtol=1e-4)


def test_old_logprobs_are_taken_with_dropout_off(char_tokenizer):
    model = build_tiny_arith_model(len(char_tokenizer), pad_token_id=char_tokenizer.pad_token_id,
                                   bos_token_id=char_tokenizer.bos_token_id,
                                   eos_token_id=char_tokenizer.eos_token_id, seed=0)
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.train()
    ids = torch.randint(5, 20, (4, 6))
    rollouts = Rollouts(prompt_ids=ids, prompt_mask=torch.ones_like(ids), response_ids=ids,
                        response_mask=torch.ones_like(ids), truncated=torch.zeros(4, dtype=torch.bool),
                        group_ids=torch.arange(4) // 2, texts=[""] * 4, prompts=[""] * 4)
    config = Config()
    with torch.no_grad():
        with eval_mode(model):
            first, _ = sampled_logprobs(config, model, rollouts)
            second, _ = sampled_logprobs(config, model, rollouts)
        assert model.training  # restored for the update
        noisy, _ = sampled_logprobs(config, model, rollouts)
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first, noisy)  # dropout is real in train mode, so eval mode mattered


# ---- defaults and diagnostics ---------------------------------------------------------------------

def test_a_config_built_in_code_gets_the_algorithm_defaults():
    assert Config().algo.beta == 0.05 and Config().algo.value_scale == 0.5
    grpo = Config(algo={"name": "grpo"})
    assert grpo.algo.beta == 0.04 and grpo.algo.kl_estimator == "k3"
    assert Config().to_dict() == load_config().to_dict()


def test_the_algo_section_is_the_algorithms_own_typed_options():
    """`config.algo` is the algorithm's dataclass (a reader follows `algo.beta` from --set to the loss), built
    once at config time; `to_dict` writes the mapping back (name first), which rebuilds the same config."""
    from vimpo_bench.algorithms.grpo import DrGrpo
    from vimpo_bench.algorithms.vimpo import Vimpo

    config = load_config(overrides=["algo.beta=0.1", "algo.value_scale=0.25"])
    assert type(config.algo) is Vimpo and config.algo.beta == 0.1 and config.algo_name == "vimpo"
    assert config.make_algorithm() is config.algo and config.make_algorithm(beta=0.2).beta == 0.2
    section = config.to_dict()["algo"]
    assert list(section)[0] == "name" and section["name"] == "vimpo" and section["value_scale"] == 0.25
    again = from_dict(config.to_dict())
    assert again.algo == config.algo and again.hash() == config.hash()
    assert type(Config(algo="dr_grpo").algo) is DrGrpo and Config(algo="dr_grpo").algo_name == "dr_grpo"
    with pytest.raises(ConfigError, match="algo.value_scale"):
        load_config(overrides=["algo.value_scale=-1"])


def test_reference_moves_log_value_diagnostics_for_vimpo_only(tiny_policy):
    from vimpo_bench.algorithms import Batch

    model, _ = tiny_policy
    ids = torch.randint(5, 20, (4, 5))
    rollouts = Rollouts(prompt_ids=ids, prompt_mask=torch.ones_like(ids), response_ids=ids,
                        response_mask=torch.ones_like(ids), truncated=torch.zeros(4, dtype=torch.bool),
                        group_ids=torch.arange(4) // 2, texts=[""] * 4, prompts=[""] * 4)
    zeros = torch.zeros(4, 5)
    full = Batch(logp=zeros, old_logp=zeros, ref_logp=zeros - 0.1, mask=torch.ones(4, 5),
                 rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]), group_ids=rollouts.group_ids,
                 include=torch.tensor([True, True, False, True]))
    for name, expect in (("grpo", {"vimpo/ref_update"}), ("vimpo", None)):
        config = load_config(overrides=[f"algo.name={name}", "ref.schedule=hard", "algo.value_baseline=mean"]
                             if name == "vimpo" else [f"algo.name={name}", "ref.schedule=hard"])
        info = {"full": full, "rollouts": rollouts, "algo": config.make_algorithm()}
        out = move_reference(config, model, frozen_copy(model), info)
        if expect is not None:
            assert set(out) == expect
        else:
            assert {"vimpo/value_loss_pre_ref_update", "vimpo/value_loss_post_ref_update"} <= set(out)
            # after a hard move pi_ref = pi_theta: L_V is the variance of the kept rewards per group
            assert out["vimpo/value_loss_post_ref_update"] == pytest.approx((0.25 + 0.25 + 0.0) / 3, abs=1e-5)


def test_a_key_added_later_keeps_old_hashes_while_at_its_default():
    """Cells finished before `run.engine` existed must still be found as done by a rerun: the hash of
    commit 2a44556 (the first vimpo_vs_grpo cells) for the default tiny_demo config."""
    from vimpo_bench.config import LATER_KEYS

    # The demo ran the implied reading then (the default until vimpo_readings picked residual + seq-sum).
    base = load_config("tiny_demo", ["algo.advantage=implied", "algo.agg=token-mean"])
    assert "run.engine" in LATER_KEYS
    assert base.hash() == "6205951c4962"  # `study run tiny_demo --dry-run` at 2a44556, before run.engine
    assert load_config("tiny_demo", ["algo.advantage=implied", "algo.agg=token-mean", "run.engine=trl"]).hash() \
        != base.hash()
