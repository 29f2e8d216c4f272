"""DAPO's two rollout-side options, for every algorithm alike: the soft overlong punishment (a truncation rule)
and dynamic sampling's refill of constant groups (native engine); and the response-length statistics."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_train import fast_config

from vimpo_bench import engines
from vimpo_bench.config import ConfigError, load_config
from vimpo_bench.engines import run
from vimpo_bench.rl.logprobs import token_logprobs
from vimpo_bench.rl.loop import Scored, informative_groups, length_metrics, rewards_of
from vimpo_bench.rl.rewards import overlong_penalty
from vimpo_bench.rollout.base import Rollouts, concat_rollouts


def test_overlong_penalty_is_dapos_linear_ramp():
    lengths = torch.tensor([1, 24, 25, 26, 27, 28])
    assert overlong_penalty(lengths, max_len=28, buffer=4).tolist() == [0.0, 0.0, -0.25, -0.5, -0.75, -1.0]
    assert overlong_penalty(torch.tensor([28]), max_len=28, buffer=28).tolist() == [-1.0]


def scored_with(config_overrides, graded, truncated, lengths):
    config = load_config(overrides=["rollout.max_new_tokens=8", *config_overrides])
    return rewards_of(config, torch.tensor(graded), torch.tensor(truncated), torch.tensor(lengths), step=3)


def test_soft_overlong_keeps_the_verdict_and_adds_a_penalty_the_noise_never_flips():
    graded, truncated, lengths = [1.0, 1.0, 0.0, 1.0], [False, False, False, True], [2, 6, 7, 8]
    soft = scored_with(["reward.truncated=soft_overlong", "reward.overlong_buffer=4"], graded, truncated, lengths)
    assert soft.clean.tolist() == graded  # the verdict is kept, a cut response included
    assert soft.penalty.tolist() == [0.0, -0.5, -0.75, -1.0]
    assert soft.rewards.tolist() == [1.0, 0.5, -0.75, 0.0]
    assert soft.include is None
    # Symmetric noise with p = 1 flips every verdict and no penalty.
    flipped = scored_with(["reward.truncated=soft_overlong", "reward.overlong_buffer=4", "reward.noise=symmetric",
                           "reward.p=1.0"], graded, truncated, lengths)
    assert flipped.rewards.tolist() == [0.0, -0.5, 0.25, -1.0]
    # The other rules add nothing.
    zero = scored_with([], graded, truncated, lengths)
    assert zero.penalty.tolist() == [0.0] * 4 and zero.rewards.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_an_overlong_buffer_past_the_length_limit_is_refused():
    with pytest.raises(ConfigError, match="reward.overlong_buffer"):
        load_config(overrides=["reward.truncated=soft_overlong", "reward.overlong_buffer=40",
                               "rollout.max_new_tokens=28"])


def test_length_statistics_split_by_the_graders_verdict():
    scored = scored_with([], [1.0, 0.0, 0.0, 1.0], [False, False, True, False], [3, 5, 8, 4])
    assert length_metrics(scored) == {
        "rollout/response_len_min": 3.0, "rollout/response_len_max": 8.0,
        "rollout/response_len_correct": 3.5, "rollout/response_len_incorrect": 6.5,
    }
    none_right = scored_with([], [0.0, 0.0], [False, False], [3, 5])
    assert torch.isnan(torch.tensor(length_metrics(none_right)["rollout/response_len_correct"]))


def test_informative_groups_are_those_whose_kept_rewards_differ():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    groups = torch.arange(4).repeat_interleave(2)
    kept = torch.tensor([True, True, True, True, True, True, True, False])  # group 3's second member masked
    scored = Scored(rewards, rewards, rewards, kept, ~kept, torch.ones(8), torch.zeros(8))
    assert informative_groups(scored, groups).tolist() == [1]


def test_merged_rollouts_keep_each_rows_log_probs(tiny_policy, char_tokenizer):
    """Selecting groups and concatenating batches of different widths re-pads rows; the positions and therefore
    every log-prob must be unchanged (the PPO ratio of a refilled group is 1 on its first minibatch)."""
    policy, _ = tiny_policy
    pad = char_tokenizer.pad_token_id

    def batch(prompts: list[str], responses: list[str]) -> Rollouts:
        p = [char_tokenizer(x)["input_ids"] for x in prompts]
        r = [char_tokenizer(x)["input_ids"] for x in responses]
        pw, rw = max(map(len, p)), max(map(len, r))
        return Rollouts(
            prompt_ids=torch.tensor([[pad] * (pw - len(x)) + x for x in p]),
            prompt_mask=torch.tensor([[0] * (pw - len(x)) + [1] * len(x) for x in p]),
            response_ids=torch.tensor([x + [pad] * (rw - len(x)) for x in r]),
            response_mask=torch.tensor([[1] * len(x) + [0] * (rw - len(x)) for x in r]),
            truncated=torch.zeros(len(p), dtype=torch.bool), group_ids=torch.arange(len(p)) // 2,
            texts=responses, prompts=prompts)

    a = batch(["1+2=", "1+2=", "33+4=", "33+4="], ["3", "45", "37", "1"])
    b = batch(["123+456=", "123+456="], ["579", "5790"])

    def logp(r: Rollouts) -> list[list[float]]:
        with torch.no_grad():
            out, _ = token_logprobs(policy, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
        return [row[m.bool()].tolist() for row, m in zip(out, r.response_mask, strict=True)]

    merged = concat_rollouts([a.groups([1]), b], pad)
    assert merged.group_ids.tolist() == [0, 0, 1, 1]
    assert merged.texts == ["37", "1", "579", "5790"]
    expected = logp(a)[2:] + logp(b)
    for got, want in zip(logp(merged), expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


def test_refill_is_refused_by_the_trl_engine():
    config = load_config(overrides=["run.engine=trl", "rollout.refill_rounds=2"])
    assert "rollout.refill_rounds" in engines.problem(config)


def test_refill_runs_out_of_rounds_when_every_group_is_constant(warm_model_dir, tmp_path, monkeypatch):
    """One new token: a response is either empty or cut, so every reward is 0 (zero_reward) by construction,
    every group is constant, every refill round is drawn and the batch is filled back to prompts_per_step."""
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = fast_config(warm_model_dir, tmp_path, "algo.name=dapo", "optim.steps=1", "rollout.max_new_tokens=1",
                         "rollout.refill_rounds=2", "eval.every=0")
    result = run(config, tracking_uri=store)
    metrics = MlflowClient(store).get_run(result.run_id).data.metrics
    assert metrics["rollout/refill_rounds"] == 2.0
    assert metrics["rollout/constant_groups_drawn"] == 1.0 and metrics["rollout/constant_groups_trained"] == 1.0
    assert metrics["reward/trained_mean"] == 0.0


def test_refill_replaces_constant_groups_and_keeps_the_batch_size(warm_model_dir, tmp_path, monkeypatch):
    """Coin-flip rewards (one new token, then symmetric noise p = 0.5): whatever the draw, the trained batch has
    prompts_per_step groups and no more constant ones than were drawn, and a rerun draws the same."""
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = ["algo.name=grpo", "optim.steps=2", "rollout.max_new_tokens=1", "rollout.refill_rounds=3",
                 "reward.noise=symmetric", "reward.p=0.5", "eval.every=0"]
    seen = []
    for _ in range(2):
        result = run(fast_config(warm_model_dir, tmp_path, *overrides), tracking_uri=store)
        history = result.history
        for step in history:
            assert step["rollout/constant_groups_trained"] <= step["rollout/constant_groups_drawn"]
            assert step["rollout/refill_rounds"] <= 3
            if step["rollout/constant_groups_drawn"] == 0:
                assert step["rollout/refill_rounds"] == 0
        seen.append([(s["rollout/refill_rounds"], s["reward/trained_mean"], s["loss/total"]) for s in history])
    assert seen[0] == seen[1]


def test_soft_overlong_trains_and_logs_its_penalty(warm_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = fast_config(warm_model_dir, tmp_path, "optim.steps=1", "reward.truncated=soft_overlong",
                         "reward.overlong_buffer=6", "eval.every=0")
    step = run(config).history[0]
    assert -1.0 <= step["reward/length_penalty_mean"] <= 0.0
    # no noise, nothing masked: what is trained on is the verdict plus the penalty
    assert step["reward/trained_mean"] == pytest.approx(step["reward/clean_mean"] + step["reward/length_penalty_mean"])


def test_in_training_suite_evaluation_at_its_cadence(warm_model_dir, tmp_path, monkeypatch):
    """eval.suites: a benchmark suite scored as `vimpo-bench eval` scores it, at the start, every suites_every
    steps and at the end, logged as bench/<suite>/*; a cadence that misses the validation steps is refused."""
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = fast_config(warm_model_dir, tmp_path, "optim.steps=3", "eval.every=1", "eval.suites=arith",
                         "eval.suites_every=2", "eval.problems=5", "eval.samples=2")
    result = run(config, tracking_uri=store)
    client = MlflowClient(store)
    for key in ("bench/arith/accuracy", "bench/arith/pass_at_2", "bench/arith/maj_at_2"):
        history = client.get_metric_history(result.run_id, key)
        assert sorted(m.step for m in history) == [0, 2, 3], key
        assert all(0.0 <= m.value <= 1.0 for m in history)
    with pytest.raises(ConfigError, match="eval.suites_every"):
        fast_config(warm_model_dir, tmp_path, "eval.every=2", "eval.suites=arith", "eval.suites_every=3")
