"""LoRA through peft (`model.lora.*`, vimpo_bench/models/lora.py) on the built-in tiny model, in both engines: only the
adapters train, pi_ref is the starting policy and stays it, a resumed run ends where an uninterrupted one does,
the checkpoint's policy/ is a plain model `vimpo-bench eval` loads; the config keys, their hash, bad values."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import EASY_TASK, EASY_WARM_STEPS

from vimpo_bench.config import LATER_KEYS, Config, ConfigError, LoraConfig, from_dict, load_config
from vimpo_bench.engines.native import train
from vimpo_bench.models.lora import frozen_reference, is_lora, trainable_parameters
from vimpo_bench.rl.steps import load_starting_policy

LORA = ["model.lora.r=4", "model.lora.alpha=8"]
FAST = [
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=10",
    "optim.minibatches=2",
    "optim.lr=1e-2",
    "eval.problems=4",
    "eval.samples=1",
    "eval.every=0",
    "eval.completions_logged=0",
    "reward.noise=symmetric",
    "reward.p=0.3",
    "run.threads=1",
]


def builtin(cache, tmp_path, *extra) -> Config:
    """tiny-arith, warm-started on the easy arith task (conftest's session cache), a few fast LoRA steps."""
    task = ",".join(f"{k}: {v}" for k, v in EASY_TASK.items())
    return load_config(
        overrides=[
            "model.name=tiny-arith",
            f"model.cache_dir={cache}",
            f"model.warm_start_steps={EASY_WARM_STEPS}",
            f"task.options={{{task}}}",
            f"run.output_dir={tmp_path}",
            *FAST,
            *LORA,
            *extra,
        ]
    )


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 9, 30, 12, 8], [22, 7, 7, 40, 3, 11]])


# ---------------------------------------------------------------------------------------------- config


def test_the_keys_load_round_trip_and_leave_old_hashes_alone(tmp_path):
    # the default config's hash as at aba0015, before model.lora existed: study cells and
    # sweeps finished before then are still found as done
    assert Config().hash() == "8eb59ee4310a"
    assert LATER_KEYS["model.lora"] == dataclasses.asdict(LoraConfig())  # the default the key was added with
    assert load_config("tiny_demo").hash() == "9fa984f38573"
    old = Config().to_dict()
    del old["model"]["lora"]  # a checkpoint's config.json from before the key
    assert from_dict(old).hash() == Config().hash() and from_dict(old).model.lora.r == 0

    study = tmp_path / "lora.yaml"
    study.write_text("extends: tiny_demo\nmodel: {lora: {r: 8, target_modules: [q_proj, v_proj]}}\n")
    config = load_config(study, ["model.lora.alpha=32"])
    assert (config.model.lora.r, config.model.lora.alpha) == (8, 32.0)
    assert config.model.lora.target_modules == ["q_proj", "v_proj"]
    assert from_dict(json.loads(json.dumps(config.to_dict()))) == config  # checkpoints' config.json
    assert config.hash() != load_config("tiny_demo").hash()
    assert (
        load_config("tiny_demo", ["model.lora.r=8"]).hash()
        != load_config("tiny_demo", ["model.lora.r=16"]).hash()
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.lora.r=-1"], "model.lora.r: must be >= 0, got -1"),
        (["model.lora.r=2.5"], "model.lora.r: expected an integer, got 2.5"),
        (["model.lora.alpha=0"], "model.lora.alpha: must be > 0, got 0.0"),
        (["model.lora.alpha=.nan"], "model.lora.alpha: must be finite and > 0"),
        (["model.lora.rank=8"], "model.lora: unknown key(s) rank; valid: r, alpha, dropout, target_modules"),
        (["model.lora=8"], "model.lora: expected a mapping, got 8"),
        (["model.lora.target_modules=[q_proj, 3]"], "model.lora.target_modules[1]: expected a string, got 3"),
        (["model.lora.r=8", "model.lora.dropout=0.1"], "model.lora.dropout: must be 0, got 0.1"),
        (
            ["model.lora.r=8", "model.lora.target_modules=' , '"],
            "model.lora.target_modules: name at least one",
        ),
        (["model.lora.r=8", "ref.schedule=ema"], "model.lora needs ref.schedule=frozen, got ema"),
        (
            ["model.lora.r=8", "run.engine=trl", "rollout.backend=vllm"],
            "model.lora with rollout.backend=vllm",
        ),
        (
            ["model.lora.r=8", "run.engine=trl", "model.lora.target_modules=q_proj,lm_head"],
            "model.lora.target_modules: lm_head needs run.engine=native",
        ),
    ],
)
def test_bad_values_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_trl_engine_refuses_lora_under_deepspeed_or_fsdp(monkeypatch):
    pytest.importorskip("trl")
    from vimpo_bench.engines.trl_engine import sharded, trainer_args

    args = trainer_args(load_config(overrides=["run.engine=trl", *LORA]))
    assert not sharded(args)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharded(args)


# ------------------------------------------------------------------------------------------ the policy


def test_only_the_adapters_train_and_pi_ref_is_the_starting_policy(tiny_model_dir, tmp_path):
    full, _ = load_starting_policy(load_config(overrides=[f"model.name={tiny_model_dir}"]))
    policy, _ = load_starting_policy(load_config(overrides=[f"model.name={tiny_model_dir}", *LORA]))
    again, _ = load_starting_policy(load_config(overrides=[f"model.name={tiny_model_dir}", *LORA]))
    assert is_lora(policy) and not is_lora(full)
    trained = dict((n, p) for n, p in policy.named_parameters() if p.requires_grad)
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert sum(p.numel() for p in trained.values()) < 0.1 * sum(p.numel() for p in policy.parameters())
    assert [id(p) for p in trainable_parameters(policy)] == [id(p) for p in trained.values()]
    assert len(trainable_parameters(full)) == len(list(full.parameters()))
    # A is drawn from the run's seed: two loads start alike; B = 0: the wrapped policy is the model loaded
    assert all(
        torch.equal(a, b)
        for a, b in zip(policy.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert torch.equal(logits(policy, IDS), logits(full, IDS))

    reference = frozen_reference(policy)
    assert not is_lora(reference) and type(reference) is type(full)
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    assert set(reference.state_dict()) == set(full.state_dict())
    assert torch.equal(logits(reference, IDS), logits(full, IDS))
    base = dict(policy.get_base_model().named_parameters())
    shared = base["model.layers.0.mlp.down_proj.base_layer.weight"]
    assert reference.get_parameter("model.layers.0.mlp.down_proj.weight") is shared  # no second copy


# ------------------------------------------------------------------------------------- the native engine


def test_native_training_moves_the_policy_and_leaves_pi_ref_at_the_start(
    easy_model_cache, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from vimpo_bench.engines import native
    from vimpo_bench.evaluation.targets import resolve_model
    from vimpo_bench.models import load_policy, lora
    from vimpo_bench.runs.checkpoints import load_weights

    config = builtin(easy_model_cache, tmp_path, "optim.steps=1", "optim.minibatches=1")
    first = train(config).history[0]
    # the one minibatch of step 1 sees the starting policy: PPO's ratio 1, KL to pi_ref 0
    assert first["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["policy/clip_frac"] == 0.0
    assert abs(first["policy/kl_k3"]) < 1e-7 and abs(first["policy/kl_k1"]) < 1e-6

    made = []  # the loop's (policy, pi_ref), kept to look at after training
    monkeypatch.setattr(
        native, "frozen_reference", lambda p: made.append((p, frozen_reference(p))) or made[-1][1]
    )
    config = builtin(easy_model_cache, tmp_path, "optim.steps=3")
    start, _ = load_starting_policy(config)
    assert train(config).steps == 3
    ((policy, reference),) = made
    assert (logits(policy, IDS) - logits(start, IDS)).abs().max().item() > 1e-3, "training changed nothing"
    assert torch.equal(logits(reference, IDS), logits(start, IDS))  # pi_ref is still the starting policy

    # the checkpoint's policy/ is a plain model (merged weights) that `vimpo-bench eval --model` loads
    checkpoint = tmp_path / "local" / "checkpoint"
    source, _ = resolve_model(str(tmp_path / "local"), tmp_path)
    assert source == str(checkpoint / "policy") and not list((checkpoint / "policy").glob("adapter*"))
    trained, _ = load_policy(source)
    assert not is_lora(trained) and type(trained).__name__ == "LlamaForCausalLM"
    assert (logits(trained, IDS) - logits(policy, IDS)).abs().max().item() < 1e-4
    # its weights are exactly the starting base + the saved adapter: the base weights never moved
    load_weights(checkpoint, start, None)
    saved = load_file(checkpoint / "policy" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in lora.merged_state_dict(start).items())


def test_a_resumed_native_run_ends_where_an_uninterrupted_one_does(easy_model_cache, tmp_path):
    whole = train(builtin(easy_model_cache, tmp_path / "whole", "optim.steps=4", "run.checkpoint_every=2"))
    config = builtin(easy_model_cache, tmp_path / "cut", "optim.steps=4", "run.checkpoint_every=2")
    cut = train(config, stop_after=2)
    saved = {p.name for p in (tmp_path / "cut" / "local" / "checkpoint" / "adapter").iterdir()}
    assert cut.steps == 2 and {"adapter_config.json", "adapter_model.safetensors"} <= saved
    resumed = train(config, resume_from=tmp_path / "cut" / "local" / "checkpoint")
    assert [h["step"] for h in resumed.history] == [3, 4]
    for row, expected in zip(resumed.history, whole.history[2:], strict=True):
        for key in ("loss/total", "policy/kl_k3", "reward/trained_mean", "policy/grad_norm"):
            assert row[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), (row["step"], key)
    assert_same_checkpoint(
        tmp_path / "whole" / "local" / "checkpoint", tmp_path / "cut" / "local" / "checkpoint"
    )


def assert_same_checkpoint(a, b) -> None:
    """Checkpoints `a` and `b` hold the same merged policy and adapter, bit for bit, and the optimizer state of
    the adapters only (one AdamW entry per adapter tensor)."""
    from safetensors.torch import load_file

    for folder, name in (("policy", "model.safetensors"), ("adapter", "adapter_model.safetensors")):
        x, y = load_file(a / folder / name), load_file(b / folder / name)
        assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x), folder
    adapters = len(load_file(a / "adapter" / "adapter_model.safetensors"))
    assert len(torch.load(a / "state.pt", weights_only=False)["optimizer"]["state"]) == adapters


# ---------------------------------------------------------------------------------------- the trl engine


def test_the_trl_engine_trains_lora_and_resumes_to_the_same_adapter(
    tiny_model_dir, tmp_path, one_torch_thread
):
    pytest.importorskip("trl")
    from vimpo_bench.engines import trl_engine
    from vimpo_bench.runs.tracking import NullTracker

    def run(out, **kwargs):
        config = load_config(
            overrides=[
                f"model.name={tiny_model_dir}",
                f"run.output_dir={out}",
                "run.engine=trl",
                *FAST,
                *LORA,
                "optim.steps=3",
                "optim.minibatches=1",
                "run.checkpoint_every=1",
            ]
        )
        return trl_engine.train(config, trl_engine.trainer_args(config), NullTracker(), None, **kwargs)

    whole = run(tmp_path / "whole")
    assert whole.steps == 3 and whole.history[0]["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert abs(whole.history[0]["policy/kl_k3"]) < 1e-7  # step 1's one minibatch: the start, pi_ref
    checkpoint = tmp_path / "whole" / "local" / "checkpoint"
    start, _ = load_starting_policy(load_config(overrides=[f"model.name={tiny_model_dir}", *LORA]))
    from vimpo_bench.models import load_policy

    trained, _ = load_policy(str(checkpoint / "policy"))
    assert (logits(trained, IDS) - logits(start, IDS)).abs().max().item() > 1e-3

    assert run(tmp_path / "cut", stop_after=1).steps == 1
    resumed = run(tmp_path / "cut", resume_from=tmp_path / "cut" / "local" / "checkpoint")
    assert resumed.steps == 3
    assert [h["loss/total"] for h in resumed.history] == pytest.approx(
        [h["loss/total"] for h in whole.history], rel=1e-6, abs=1e-7
    )
    assert_same_checkpoint(checkpoint, tmp_path / "cut" / "local" / "checkpoint")
