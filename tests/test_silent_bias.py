"""Tests that catch silent biases, each in both engines (native and trl): changes that leave every number
plausible and every other test green, yet change what is trained or measured (issue 21, part 2).

- Dropout: the rule is dropout off in every RL forward (`models.disable_dropout`, applied to every run's
  starting policy). On a model whose dropout is > 0, the first minibatch's ratio pi_theta / pi_old is exactly
  1, and pi_old and pi_ref are dropout-free measurements even of a model whose dropout is still on.
- Split: in-training evaluation reads exactly the validation problems, never test.
- Truncation: a response cut at max_new_tokens gets reward 0 under `reward.truncated=zero_reward`, whatever
  the grader says.
And part 5: every run records its machine and a checksum of its starting weights.

Each property holds by construction (a model whose dropout always acts, one that can never emit EOS, a grader
that accepts everything), never by which samples a machine happens to draw.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import json

import pytest
import torch
import transformers
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

pytest.importorskip("trl")

from test_trl_engine import BASE, native_update, record, trl_update  # noqa: E402

from vimpo_bench import tasks  # noqa: E402
from vimpo_bench.config import load_config  # noqa: E402
from vimpo_bench.engines import run  # noqa: E402
from vimpo_bench.models import build_tiny_arith_model, disable_dropout, load_policy  # noqa: E402
from vimpo_bench.rl.logprobs import token_logprobs  # noqa: E402
from vimpo_bench.tasks.arith import ArithTask  # noqa: E402

ENGINES = ["native", "trl"]
# One RL step of one optimizer step (one minibatch, one microbatch): the first loss call is the first minibatch.
ONE_STEP = ["rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8", "optim.steps=1",
            "optim.minibatches=1", "optim.grad_accum=1", "optim.lr=1e-3", "eval.problems=3", "eval.samples=1",
            "eval.every=0", "eval.completions_logged=3", "run.threads=1", "run.checkpoint_every=0"]
DROPOUT = 0.3


def save_model(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory, char_tokenizer):
    """The tiny random Llama with attention dropout 0.3: in train mode its every forward draws new masks."""
    t = char_tokenizer
    model = build_tiny_arith_model(len(t), pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id,
                                   eos_token_id=t.eos_token_id, seed=0)
    model.config.attention_dropout = DROPOUT  # read when the saved model is loaded back
    return save_model(model, t, tmp_path_factory.mktemp("dropout-llama"))


@pytest.fixture(scope="module")
def never_ending_model_dir(tmp_path_factory, char_tokenizer):
    """A Llama that samples "1" with probability exactly 1 (every other logit is 1000 below: exp(-1000) is 0 in
    float32), so it never emits EOS and every response is cut at max_new_tokens, whatever the seed."""
    t = char_tokenizer
    model = build_tiny_arith_model(len(t), pad_token_id=t.pad_token_id, bos_token_id=t.bos_token_id,
                                   eos_token_id=t.eos_token_id, seed=0, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=1)
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(1.0)  # every token the same input...
        for layer in model.model.layers:  # ...and no layer adds anything: the last hidden state is constant
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[t.convert_tokens_to_ids("1")] = 1000.0 / model.config.hidden_size
    return save_model(model, t, tmp_path_factory.mktemp("never-ending"))


@contextlib.contextmanager
def first_losses(config, seen: list):
    """Record (logp, old_logp, mask) of every batch the run's algorithm computes a loss on (a spy: the real
    loss runs)."""
    algorithm = type(config.make_algorithm())
    loss = algorithm.loss

    def spy(self, batch):
        seen.append((batch.logp.detach().clone(), batch.old_logp.clone(), batch.mask.clone()))
        return loss(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(algorithm, "loss", spy)
        yield


def one_step_config(engine, model_dir, out, *extra):
    return load_config(overrides=[f"model.name={model_dir}", f"run.output_dir={out / 'runs'}", f"run.engine={engine}",
                                  *ONE_STEP, *extra])


@pytest.fixture(scope="module", params=ENGINES)
def dropout_run(request, dropout_model_dir, tmp_path_factory, one_torch_thread):
    """One real RL step (MLflow store in a temporary folder) of each engine on the dropout model, with the
    batches its loss saw: (config, store, result, seen)."""
    out = tmp_path_factory.mktemp(f"dropout-run-{request.param}")
    store = f"sqlite:///{out / 'mlflow.db'}"
    config = one_step_config(request.param, dropout_model_dir, out)
    seen: list = []
    with first_losses(config, seen):
        result = run(config, tracking_uri=store)
    return config, store, result, seen


# ------------------------------------------------------------------------------------------ dropout


@pytest.mark.parametrize("build", [
    lambda: LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, attention_dropout=DROPOUT)),  # a float field
    lambda: GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=0,
                                       eos_token_id=0, resid_pdrop=DROPOUT, embd_pdrop=DROPOUT,
                                       attn_pdrop=DROPOUT)),  # nn.Dropout modules
], ids=["llama", "gpt2"])
def test_disable_dropout_makes_train_mode_forwards_equal_eval_mode(build):
    torch.manual_seed(0)
    model = build()
    ids = torch.randint(0, 32, (2, 12))
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout acts in train mode
    disable_dropout(model)
    train_mode = model(ids).logits
    assert torch.equal(train_mode, model.eval()(ids).logits)
    assert all(v == 0 for k, v in model.config.to_dict().items() if "dropout" in k or k.endswith("pdrop"))


def test_first_minibatch_ratio_is_exactly_one(dropout_run):
    """pi_old and pi_theta on the first minibatch are the same weights: rho = 1 on every token, exactly,
    although the model's config asks for dropout."""
    _, _, result, seen = dropout_run
    logp, old_logp, mask = seen[0]
    assert mask.sum() > 0
    worst = ((logp - old_logp) * mask).abs().max().item()
    assert worst == 0.0, f"max |log rho| on the first minibatch is {worst:.2e}"
    step = result.history[0]
    assert step["policy/ratio_mean"] == 1.0 and step["policy/clip_frac"] == 0.0


@pytest.mark.parametrize("engine", ENGINES)
def test_old_and_reference_logprobs_are_dropout_free(engine, dropout_model_dir, tmp_path, monkeypatch,
                                                     one_torch_thread):
    """pi_old and pi_ref are measured without dropout even of a policy whose dropout is still on (one handed to
    the step without `disable_dropout`): they equal an eval-mode forward of the same weights."""
    config = load_config(overrides=[f"model.name={dropout_model_dir}", f"run.output_dir={tmp_path}",
                                    f"run.engine={engine}", *BASE])
    model, tokenizer = load_policy(str(dropout_model_dir))
    assert model.config.attention_dropout == DROPOUT
    task = tasks.get(config.task.name, **config.task.options)
    rollouts = record(config, model, tokenizer, task)
    if engine == "native":
        full = native_update(config, model, tokenizer, task, rollouts)[0]["_batch"]["full"]
    else:
        full = trl_update(config, model, tokenizer, task, rollouts, monkeypatch)[2]["full"]
    with torch.no_grad():
        expected, _ = token_logprobs(copy.deepcopy(model).eval(), rollouts.prompt_ids, rollouts.prompt_mask,
                                     rollouts.response_ids, rollouts.response_mask,
                                     temperature=config.rollout.temperature)
    width = full.mask.shape[1]
    assert torch.equal(full.mask, rollouts.response_mask[:, :width].float())
    for name, got in (("old", full.old_logp), ("ref", full.ref_logp)):
        worst = ((got - expected[:, :width]) * full.mask).abs().max().item()
        assert worst <= 1e-5, f"{name} log-probs differ from a dropout-free forward by {worst:.2e}"


# -------------------------------------------------------------------------------------------- split


def evaluated_ids(store, run_id, step, mode) -> list[str]:
    path = MlflowClient(store).download_artifacts(run_id, f"samples/step_{step:06d}.jsonl")
    return [r["id"] for r in map(json.loads, open(path)) if r["mode"] == mode]


def test_in_training_evaluation_reads_exactly_the_validation_problems(dropout_run):
    config, store, result, _ = dropout_run
    task = tasks.get(config.task.name, **config.task.options)
    validation = [p.id for p in task.problems("validation", limit=config.eval.problems)]
    assert set(validation).isdisjoint(p.id for p in task.problems("test"))
    for step in (0, 1):  # before training and at the end; one sample per problem, all of them logged
        assert evaluated_ids(store, result.run_id, step, "greedy") == validation
        assert evaluated_ids(store, result.run_id, step, "sampled") == validation


# --------------------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("engine", ENGINES)
def test_a_cut_response_the_grader_passes_is_trained_on_as_reward_zero(engine, never_ending_model_dir, tmp_path,
                                                                        monkeypatch, one_torch_thread):
    """Every response is cut (the model never emits EOS) and the grader accepts everything: under
    `reward.truncated=zero_reward` every trained reward is 0."""
    monkeypatch.setattr(ArithTask, "grade", lambda self, completion, problem: True)
    config = one_step_config(engine, never_ending_model_dir, tmp_path, "reward.truncated=zero_reward",
                             "reward.noise=none")
    result = run(config, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    step = result.history[0]
    assert step["rollout/truncation_rate"] == 1.0 and step["rollout/response_len"] == config.rollout.max_new_tokens
    assert step["reward/truncated_passed_rate"] == 1.0  # the grader passed them all...
    assert step["reward/clean_mean"] == 0.0 and step["reward/trained_mean"] == 0.0  # ...and the rule zeroed them


# ------------------------------------------------------------------------------------------ record


def checksum(state: dict) -> str:
    """docs/metrics.md's recipe, written out again: sha256 over the state_dict in sorted key order, each key
    (UTF-8) then the tensor's bytes; 16 hex digits."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def test_a_run_records_its_machine_and_the_checksum_of_its_starting_weights(dropout_run, dropout_model_dir):
    _, store, result, _ = dropout_run
    params = MlflowClient(store).get_run(result.run_id).data.params
    start = AutoModelForCausalLM.from_pretrained(dropout_model_dir).state_dict()
    assert params["model.start_checksum"] == checksum(start) == result.summary()["model.start_checksum"]
    assert params["machine.cpu_model"] and params["machine.cpu_model"] == result.summary()["machine.cpu_model"]
    assert params["machine.accelerator"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    assert params["versions.torch"] == importlib.metadata.version("torch")
    assert params["versions.transformers"] == transformers.__version__
