"""The trl engine against the native loop: the same recorded rollouts give the same first update (loss,
stats, advantages, gradients), for every algorithm and non-default options; the CLI end to end; bad input."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

pytest.importorskip("trl")

from vimpo_bench import tasks  # noqa: E402
from vimpo_bench.config import load_config  # noqa: E402
from vimpo_bench.engines.native import make_generator, render_prompt, rl_step, sampling_params  # noqa: E402
from vimpo_bench.engines.trl_engine import make_trainer, trainer_args  # noqa: E402
from vimpo_bench.engines.trl_trainer import VimpoGRPOTrainer  # noqa: E402
from vimpo_bench.models import frozen_copy, load_policy  # noqa: E402
from vimpo_bench.rl.steps import step_seed  # noqa: E402

TOL = 1e-5
BASE = ["rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8", "optim.minibatches=2",
        "optim.grad_accum=2", "optim.lr=1e-3", "optim.max_grad_norm=1e9", "optim.steps=1", "eval.problems=2",
        "eval.samples=1", "eval.completions_logged=0", "reward.noise=symmetric", "reward.p=0.4", "run.threads=1"]
CASES = {
    "vimpo": ["algo.name=vimpo"],
    "vimpo-mc-soft": ["algo.name=vimpo", "algo.advantage=mc", "algo.value_baseline=soft", "algo.beta=0.5"],
    "vimpo-lam-mask-T": ["algo.name=vimpo", "algo.lam=0.9", "reward.truncated=mask", "rollout.temperature=0.7"],
    "grpo-k3-beta": ["algo.name=grpo", "algo.beta=0.1", "algo.kl_estimator=k3"],
    "dr_grpo": ["algo.name=dr_grpo"],
    "dapo-clip-higher": ["algo.name=dapo", "algo.eps_high=0.28"],
    "rloo-2-epochs": ["algo.name=rloo", "optim.epochs=2"],
}


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that keeps a copy of the gradients it is given at each step."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.grads: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.grads.append([p.grad.detach().clone() for p in self.param_groups[0]["params"]])
        return super().step(closure)


class GradRecorder(TrainerCallback):
    def __init__(self, model):
        self.params, self.grads = list(model.parameters()), []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads.append([p.grad.detach().clone() for p in self.params])


class Recorded:
    """A generator that returns the recorded rollouts."""

    def __init__(self, rollouts):
        self.rollouts = rollouts

    def generate(self, prompts, params, seed=None):
        assert [p for p in prompts for _ in range(params.n)] == self.rollouts.prompts
        return self.rollouts


def record(config, model, tokenizer, task):
    """Step 0's rollouts, drawn once from the prompts both engines pick at step 0."""
    pool = task.problems("train")
    pick = torch.Generator().manual_seed(step_seed(config.run.seed, 0, 0))
    chosen = torch.randperm(len(pool), generator=pick)[: config.rollout.prompts_per_step].tolist()
    prompts = [render_prompt(config, task, pool[i], tokenizer) for i in chosen]
    generator = make_generator(config, model, tokenizer)
    rollouts = generator.generate(prompts, sampling_params(config, n=config.rollout.group_size), seed=7)
    return with_early_eos(rollouts, tokenizer)


def with_early_eos(rollouts, tokenizer):
    """A random model seldom ends a response: end every other one early (EOS), for lengths that differ and
    responses that are not truncated."""
    ids, mask, truncated = rollouts.response_ids.clone(), rollouts.response_mask.clone(), rollouts.truncated.clone()
    for row in range(0, len(ids), 2):
        end = 2 + row % 5
        ids[row, end] = tokenizer.eos_token_id
        ids[row, end + 1:] = tokenizer.pad_token_id
        mask[row, end + 1:] = 0
        truncated[row] = False
    texts = tokenizer.batch_decode([i[m.bool()].tolist() for i, m in zip(ids, mask, strict=True)],
                                   skip_special_tokens=True)
    return dataclasses.replace(rollouts, response_ids=ids, response_mask=mask, truncated=truncated, texts=texts)


def native_update(config, model, tokenizer, task, rollouts):
    policy = copy.deepcopy(model).train()
    reference = frozen_copy(policy)
    optimizer = RecordingAdamW(policy.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    metrics = rl_step(config, task, task.problems("train"), lambda p: render_prompt(config, task, p, tokenizer),
                      policy, reference, Recorded(rollouts), optimizer, scheduler, 0)
    return metrics, optimizer.grads


def trl_update(config, model, tokenizer, task, rollouts, monkeypatch):
    def recorded_generate(self, prompts):
        assert prompts == rollouts.prompts
        prompt_ids = [ids[m.bool()].tolist() for ids, m in zip(rollouts.prompt_ids, rollouts.prompt_mask, strict=True)]
        completion_ids = [ids[m.bool()].tolist() for ids, m in zip(rollouts.response_ids, rollouts.response_mask,
                                                                    strict=True)]
        return prompt_ids, completion_ids, None, list(rollouts.texts), None, {}, None, []

    monkeypatch.setattr(VimpoGRPOTrainer, "_generate", recorded_generate)
    policy = copy.deepcopy(model)
    trainer, vb = make_trainer(config, trainer_args(config), policy, tokenizer, task)
    recorder = GradRecorder(policy)
    trainer.add_callback(recorder)
    trainer.train()
    return vb.history[0], recorder.grads, trainer.vb_step


def documented_metrics() -> set[str]:
    """Every metric name in docs/metrics.md's tables (first column; "`a`, `b`" lists two)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def as_documented(keys) -> set[str]:
    """Logged keys as docs/metrics.md names them: `val/pass_at_4` is the documented `val/pass_at_k`."""
    return {re.sub(r"_at_\d+$", "_at_k", k) for k in keys}


DOCUMENTED = documented_metrics()


@pytest.mark.parametrize("case", list(CASES))
def test_first_update_matches_the_native_engine(case, tiny_model_dir, tmp_path, monkeypatch, one_torch_thread):
    config = load_config(overrides=[f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path}", "run.engine=trl",
                                    *BASE, *CASES[case]])
    model, tokenizer = load_policy(str(tiny_model_dir))
    task = tasks.get(config.task.name, **config.task.options)
    rollouts = record(config, model, tokenizer, task)

    native, native_grads = native_update(config, model, tokenizer, task, rollouts)
    trl, trl_grads, trl_step = trl_update(config, model, tokenizer, task, rollouts, monkeypatch)

    # the trl engine's history row carries its step beside the metrics it logged (not a metric itself)
    logged = {name: {k for k in keys if not k.startswith("_") and k != skip}
              for name, keys, skip in (("native", native, None), ("trl", trl, "step"))}
    for engine, keys in logged.items():
        keys = as_documented(keys)
        assert keys <= DOCUMENTED, f"{engine} logs keys docs/metrics.md does not list: {sorted(keys - DOCUMENTED)}"
    # the step's own metrics agree as a set (the post-step ones, val/, perf/eval_* and vimpo/ref_update, on whole
    # runs in test_a_study_with_a_native_and_a_trl_cell_renders_in_the_report)
    assert logged["native"] - logged["trl"] == set(), f"trl does not log {sorted(logged['native'] - logged['trl'])}"
    assert logged["trl"] - logged["native"] <= {"val/greedy_accuracy", "val/sampled_accuracy", "vimpo/ref_update",
                                                "perf/eval_s", "perf/eval_sequences"}
    compared = [k for k in native if k in trl and not k.startswith(("perf/", "val/", "_"))]
    assert {"loss/total", "loss/actor", "policy/grad_norm", "reward/trained_mean"} <= set(compared)
    for key in compared:
        assert trl[key] == pytest.approx(native[key], rel=TOL, abs=TOL, nan_ok=True), key  # nan: no response passed
    full = native["_batch"]["full"]
    width = min(full.mask.shape[1], trl_step["full"].mask.shape[1])
    assert torch.equal(full.rewards, trl_step["full"].rewards)
    assert torch.allclose(full.advantages[:, :width], trl_step["full"].advantages[:, :width], atol=TOL)
    steps = config.optim.epochs * config.optim.minibatches
    assert len(native_grads) == len(trl_grads) == steps
    worst = max((a - b).abs().max().item() for na, ta in zip(native_grads, trl_grads, strict=True)
                for a, b in zip(na, ta, strict=True))
    assert worst <= TOL, f"max abs gradient difference {worst:.2e}"
    assert any(g.abs().sum() > 0 for g in native_grads[0])


def bos_tokenizer(chat: bool):
    """The character tokenizer with a BOS added to every text (as Llama's), optionally a chat template that
    writes its own BOS."""
    from tokenizers import processors

    from vimpo_bench.models import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                                               special_tokens=[("<s>", 1)])
    if chat:
        tokenizer.chat_template = ("<s>{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                   "{% if add_generation_prompt %}assistant:{% endif %}")
    return tokenizer


@pytest.mark.parametrize("name,template,chat,bos", [
    ("tiny-arith", "none", False, False),  # the built-in model learned its task without BOS
    ("dir", "none", False, True),  # a base model's tokenizer adds BOS to the raw prompt
    ("dir", "qwen-boxed", True, False),  # a chat template writes its own BOS: no second one
])
def test_both_engines_tokenize_prompts_alike(name, template, chat, bos, tiny_model_dir, tmp_path, one_torch_thread):
    config = load_config(overrides=[f"model.name={tiny_model_dir if name == 'dir' else name}", "run.engine=trl",
                                    f"run.output_dir={tmp_path}", f"task.template={template}", *BASE])
    model, _ = load_policy(str(tiny_model_dir))
    tokenizer = bos_tokenizer(chat)
    task = tasks.get(config.task.name, **config.task.options)
    prompts = [render_prompt(config, task, p, tokenizer) for p in task.problems("train")[:3]]

    native = make_generator(config, model, tokenizer).generate(prompts, sampling_params(config, n=1), seed=0)
    native_ids = [ids[m.bool()].tolist() for ids, m in zip(native.prompt_ids, native.prompt_mask, strict=True)]
    trainer, _ = make_trainer(config, trainer_args(config), copy.deepcopy(model), tokenizer, task)
    trl_ids = trainer._tokenize_prompts(prompts)[0]

    assert trl_ids == native_ids
    assert all((ids.count(tokenizer.bos_token_id) == 1) == (bos or chat) for ids in trl_ids)
    assert all((ids[0] == tokenizer.bos_token_id) == (bos or chat) for ids in trl_ids)


# ------------------------------------------------------------------------------------------- CLI


def cli(*args, cwd, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vimpo_bench", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)


FAST = ["rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=10", "optim.minibatches=2",
        "optim.lr=1e-3", "eval.problems=4", "eval.samples=1", "eval.every=0", "run.threads=1",
        "reward.noise=symmetric", "reward.p=0.3"]


def test_train_on_the_trl_engine_from_the_cli(tiny_model_dir, tmp_path):
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = cli("train", "--algo", "vimpo", "--engine", "trl", "--set", f"model.name={tiny_model_dir}",
              *[f"--set={s}" for s in FAST], "--set", "optim.steps=3", "--json", cwd=tmp_path,
              env_extra={"MLFLOW_TRACKING_URI": store})
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / summary["checkpoint"] / "policy").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    client = MlflowClient(store)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["run.engine"] == "trl" and run.data.tags["vimpo.engine"] == "trl"
    for name in ("loss/total", "loss/value", "reward/trained_mean", "policy/grad_norm", "vimpo/abs_residual",
                 "perf/step_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2, 3], name
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/sampled_accuracy")] == [0, 3]


RESUME = [*FAST, "optim.steps=4", "run.checkpoint_every=2", "eval.every=2", "ref.schedule=hard", "ref.every=1"]


def final_policy(output_dir, run_id) -> dict:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(output_dir / run_id / "checkpoint" / "policy").state_dict()


def test_a_killed_trl_run_resumes_to_the_same_parameters_and_metrics(tiny_model_dir, tmp_path, one_torch_thread):
    """Killed after step 3 logged (checkpoint at 2), then --resume: the parameters of an uninterrupted run,
    each step logged once with its values, one FINISHED run; a stop_after cut resumes the same way."""
    from faultkit import histories, problems_with_run, run_killed, running_runs, train_run

    from vimpo_bench.engines import run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(overrides=[f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path / 'runs'}",
                                    "run.engine=trl", *RESUME])
    whole = run(config, tracking_uri=store)
    reference = histories(store, whole.run_id)
    assert [s for s, _ in reference["loss/total"]] == [1, 2, 3, 4]

    assert run_killed("step@3", train_run, config, store) == -9  # step 3 logged, last checkpoint: step 2
    (killed,) = running_runs(store, config.run.experiment)
    assert [s for s, _ in histories(store, killed)["loss/total"]] == [1, 2, 3]
    resumed = run(config, resume_run_id=killed, tracking_uri=store)
    assert resumed.steps == 4 and [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    assert problems_with_run(store, killed, reference, tmp_path / "runs") == []

    cut = run(config, tracking_uri=store, stop_after=1)  # as `study run` after a kill: saved at its stop
    assert cut.steps == 1
    run(config, resume_run_id=cut.run_id, tracking_uri=store)
    assert problems_with_run(store, cut.run_id, reference, tmp_path / "runs") == []

    expected = final_policy(tmp_path / "runs", whole.run_id)
    for run_id in (killed, cut.run_id):
        got = final_policy(tmp_path / "runs", run_id)
        assert all(torch.equal(expected[k], got[k]) for k in expected), run_id


def cli_in_process(*args):
    from typer.testing import CliRunner

    from vimpo_bench.cli import _register, app

    _register()
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("args,message", [
    (["--engine", "jax"], "run.engine: 'jax' is not one of native, trl"),
    (["--engine", "trl", "--set", "rollout.prompts_per_step=6", "--set", "optim.minibatches=4"],
     "rollout.prompts_per_step (6) must be a multiple of it"),
    (["--set", "rollout.backend=vllm"], "rollout.backend=vllm needs run.engine=trl"),
])
def test_bad_engine_input_is_one_clear_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = cli_in_process("train", *args)
    assert out.exit_code != 0
    assert message in out.stderr
    assert [line for line in out.stderr.splitlines() if line.strip()] == [out.stderr.strip()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_vllm_without_a_gpu_fails_before_a_run_is_opened(tiny_model_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = cli("train", "--engine", "trl", "--set", "rollout.backend=vllm", "--set", f"model.name={tiny_model_dir}",
              cwd=tmp_path, env_extra={"MLFLOW_TRACKING_URI": store})
    assert out.returncode != 0
    assert out.stderr.strip() == "error: rollout.backend=vllm needs a CUDA GPU and none is visible; use " \
                                 "rollout.backend=hf on this machine"
    experiment = MlflowClient(store).get_experiment_by_name("vimpo-bench")
    runs = MlflowClient(store).search_runs([experiment.experiment_id]) if experiment else []
    assert not [r for r in runs if r.info.status == "RUNNING"]


PARAM_HASH = """
import hashlib, os, sys
import vimpo_bench.engines.trl_trainer as T
train = T.VimpoGRPOTrainer.train
def train_and_hash(self, *args, **kwargs):
    out = train(self, *args, **kwargs)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in self.model.parameters())).hexdigest()
    with open(f"params.{os.environ['RANK']}", "w") as f:
        f.write(digest)
    return out
T.VimpoGRPOTrainer.train = train_and_hash
from vimpo_bench.cli import main
sys.argv = ["vimpo-bench", *sys.argv[1:]]
main()
"""


def torchrun(script, cwd, *args, kill_at=None):
    """`vimpo-bench train --engine trl` on 2 CPU processes (gloo); (completed process, rank -> parameter hash)."""
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    if kill_at:
        env["VIMPO_BENCH_KILL_AT"] = kill_at
    for stale in cwd.glob("params.*"):
        stale.unlink()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(29500 + os.getpid() % 1000), str(script), "train", "--engine", "trl", *args, "--json"],
                         capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    # Each rank writes its own file. Printed to the pipe the two ranks share, rank 1's hash once went unread
    # although both ranks exited 0 (CI, stop 15), most likely cut by rank 0's output; a file also tells a
    # rank that never got there from a garbled line.
    return out, {path.suffix[1:]: path.read_text() for path in cwd.glob("params.*")}


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["vimpo", "grpo"])
def test_two_cpu_processes_train_as_one_run_and_resume(algo, tiny_model_dir, tmp_path):
    """torchrun x 2 (gloo): exit 0, both ranks end with the same parameters, one MLflow run, metrics once; a
    run killed mid-save at step 2 (checkpoint of step 1 kept) resumes on 2 processes to the uninterrupted
    run's parameters, with each step logged once."""
    from faultkit import histories, problems_with_run, running_runs

    from vimpo_bench.runs import tracking

    script = tmp_path / "run.py"
    script.write_text(PARAM_HASH)
    args = ["--algo", algo, "--set", f"model.name={tiny_model_dir}", *[f"--set={s}" for s in FAST],
            "--set", "optim.steps=3", "--set", "run.checkpoint_every=1"]
    out, whole = torchrun(script, tmp_path / "whole", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert set(whole) == {"0", "1"} and whole["0"] == whole["1"]
    assert len([line for line in out.stdout.splitlines() if line.startswith("{")]) == 1
    store = f"sqlite:///{tmp_path / 'whole' / 'mlflow.db'}"
    (record,) = tracking.search_runs(["vimpo-bench"], "", store)
    assert record["status"] == "FINISHED"
    reference = histories(store, record["run_id"])
    assert [s for s, _ in reference["loss/total"]] == [1, 2, 3]

    cut = tmp_path / "cut"
    out, _ = torchrun(script, cut, *args, kill_at="save@2")  # rank 0 dies writing step 2's checkpoint
    assert out.returncode != 0
    store = f"sqlite:///{cut / 'mlflow.db'}"
    (killed,) = running_runs(store, "vimpo-bench")
    out, resumed = torchrun(script, cut, *args, "--resume", killed)
    assert out.returncode == 0, out.stderr[-3000:]
    assert resumed == whole
    assert [r["run_id"] for r in tracking.search_runs(["vimpo-bench"], "", store)] == [killed]
    assert problems_with_run(store, killed, reference, cut / "runs") == []


@pytest.mark.slow
def test_a_study_with_a_native_and_a_trl_cell_renders_in_the_report(tmp_path, easy_model_cache, easy_study_yaml,
                                                                     monkeypatch):
    from vimpo_bench.experiments.study import load_study, run_study
    from vimpo_bench.report import build_report

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "engines.yaml"
    path.write_text(easy_study_yaml(easy_model_cache, tmp_path / "runs", """
study:
  description: the same VIMPO cell on both engines
  axes:
    run.engine: [native, trl]
  suites: [arith]
  eval: {limit: 10, n: 2, temperature: 1.0, max_new_tokens: 24, grader_workers: 0}
"""))
    result = run_study(load_study(path), tracking_uri=store)
    assert [o.status for o in result.outcomes] == ["done", "done"], [o.error for o in result.outcomes]
    # the full metric set of each engine's run is the documented set, and the same for both engines
    from vimpo_bench.report import collect

    data = collect(study="engines", tracking_uri=store)
    train = data.of_kind("train").set_index("run_id")
    keys = {train.at[r, "run_name"]: set(data.final.loc[r].dropna().index) for r in train.index}
    by_engine = {data.params.at[r, "run.engine"]: keys[train.at[r, "run_name"]] for r in train.index}
    assert by_engine["native"] == by_engine["trl"], (f"native only: {sorted(by_engine['native'] - by_engine['trl'])}; "
                                                     f"trl only: {sorted(by_engine['trl'] - by_engine['native'])}")
    assert as_documented(by_engine["native"]) <= DOCUMENTED, \
        f"undocumented: {sorted(as_documented(by_engine['native']) - DOCUMENTED)}"
    files = build_report(study="engines", tracking_uri=store, out=tmp_path / "engines.html")
    assert files.failed_panels == []
    page = files.page.read_text()
    assert "run.engine" in page and "trl" in page
