"""What `vimpo-bench eval` evaluates and with what: the model a --model names (a hub id, a folder, a training
run's checkpoint), the built-in model built on first use, the model's context and the prompts that exceed
it, and the generator (transformers or vLLM) that samples from it. `evaluate` runs the suites."""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vimpo_bench import tasks
from vimpo_bench.tasks import prompts

# `config` below is an evaluate.EvalConfig (not imported: evaluate imports this module).

_RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-f]{32})(?:/.*)?$")


def resolve_model(spec: str, download_dir: Path, tracking_uri: str | None = None) -> tuple[str, str | None]:
    """(what `models.load_policy` loads, the MLflow run it came from or None).

    `spec` is a local folder (a `save_pretrained` folder, or a run's folder or checkpoint folder holding
    one), an MLflow run id (or `runs:/<id>`: its `checkpoint/` artifact downloaded into `download_dir`, else
    the checkpoint the training run wrote under its `run.output_dir`), the built-in `tiny-arith`, or a
    Hugging Face hub id. A local path that holds no model is refused here.
    """
    from vimpo_bench.models import looks_like_local_path

    path = Path(spec).expanduser()
    if path.is_dir():
        return str(model_folder(path)), None
    if path.exists():
        raise ValueError(f"--model {spec}: a file, not a model folder")
    if looks_like_local_path(spec):
        raise FileNotFoundError(f"--model {spec}: no such folder")
    match = _RUN_ID.match(spec)
    if match:
        from vimpo_bench.runs import tracking

        run_id = match.group(1)
        client = tracking._client(tracking_uri)
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            raise ValueError(
                f"--model {spec!r}: no MLflow run with that id in {tracking.redact_uri(client.tracking_uri)}"
            ) from exc
        try:
            local = client.download_artifacts(run_id, "checkpoint", str(download_dir))
        except Exception:
            return str(_run_checkpoint(run)), run_id
        return local, run_id
    return spec, None


def _run_checkpoint(run) -> Path:
    """The model a training run without a `checkpoint/` artifact (`run.log_checkpoint` is off by default) wrote
    locally: `<run.output_dir>/<run id>/checkpoint/policy`, the output folder as the run recorded it (relative
    to the folder it was trained in). ValueError saying where it looked and what to give otherwise."""
    from vimpo_bench.runs.checkpoints import find_checkpoint

    run_id, params = run.info.run_id, run.data.params
    kind = run.data.tags.get("vimpo.kind", "train")
    if kind in ("eval", "study"):  # a sweep's trials are training runs (kind "sweep")
        raise ValueError(f"--model {run_id}: a {kind} run, which holds no model; give a training run's id")
    output_dir = params.get("run.output_dir", "runs")
    run_dir = Path(output_dir).expanduser() / run_id
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        raise ValueError(
            f"--model {run_id}: the run has no 'checkpoint/' artifact (run.log_checkpoint is off by default) and "
            f"its checkpoint is not at {run_dir.resolve()}/checkpoint (run.output_dir {output_dir}, as trained): "
            f"run eval in the folder it was trained in, or give the folder: --model PATH/{run_id}/checkpoint"
        )
    return model_folder(checkpoint)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def model_folder(path: Path) -> Path:
    """The `save_pretrained` folder at `path`, or under it as a run writes it (`<run>/checkpoint/policy`, or
    `checkpoint/` as the MLflow artifact): a model config, weights and a tokenizer. Else ValueError saying
    which folder to give (transformers' own error is a cut-off tokenizer message)."""
    from vimpo_bench.runs.checkpoints import check_weights

    for folder in (path, path / "checkpoint", path / "policy", path / "checkpoint" / "policy"):
        if (folder / "config.json").is_file() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
            break
    else:
        raise ValueError(f"--model {path}: not a model folder (no model config.json and weights in it, its "
                         "checkpoint/ or policy/); give a save_pretrained folder, e.g. runs/<run id>/checkpoint/policy")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"--model {path}: {folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    check_weights(folder)  # a truncated or emptied weights file, named
    return folder


def prepare_builtin_model(
    source: str,
    progress: Callable[[str, int, int, dict], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> str:
    """`source`, or for the built-in `tiny-arith` the folder of its warm-started model (the one a default
    training run starts from), built first when it is not cached: minutes on a CPU, which `notice` is told
    about and `progress("warm start", done, total, {"loss": ...})` follows, as in `train`."""
    from vimpo_bench import models

    if source != models.TINY_ARITH:
        return source

    def building(folder: Path, settings: dict) -> None:
        if notice is not None:
            notice(f"{models.TINY_ARITH}: building the built-in model, once: a supervised warm start on the arith "
                   f"task (at most {settings['steps']} steps, stopping at {settings['target_accuracy']:.0%} "
                   f"validation accuracy; minutes on a CPU), cached in {folder}")

    warm: dict[str, Any] = {"on_build": building}
    if progress is not None:
        warm["progress"] = lambda done, total, loss: progress("warm start", done, total, {"loss": loss})
    return str(models.warm_start_tiny_arith(**warm))


def tokenizer_and_config(source: str):
    """(tokenizer, model config) of a model folder or hub id, without its weights."""
    from transformers import AutoConfig, AutoTokenizer

    from vimpo_bench.models import hub_cache_only

    local_only = not os.path.exists(source) and hub_cache_only(source)
    return (AutoTokenizer.from_pretrained(source, local_files_only=local_only),
            AutoConfig.from_pretrained(source, local_files_only=local_only))


# lm-eval's defaults for a model whose config names no context length (lm_eval.models.utils.resolve_max_length).
DEFAULT_CONTEXT = 2048
_TOKENIZER_INFINITY = 1000000000000000019884624838656


def model_context(hf_config: Any, tokenizer: Any = None) -> int:
    """The model's context in tokens, found as lm-eval finds it: the (text) config's n_positions,
    max_position_embeddings or n_ctx, else the tokenizer's model_max_length, else 2048."""
    cfg = getattr(hf_config, "text_config", None) or hf_config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != _TOKENIZER_INFINITY:
        return int(limit)
    return DEFAULT_CONTEXT


def prompt_room(context: int, max_new_tokens: int) -> int | None:
    """Prompt tokens a model with `context` positions keeps beside `max_new_tokens` new ones (lm-eval's rule:
    context - max_gen_toks, the prompt cut from the left to it); None when that leaves no room."""
    room = context - max_new_tokens
    return room if room > 0 else None


def suite_prompts(config: Any, suite: str, task: Any, problems: list, tokenizer: Any) -> tuple[str, list[str]]:
    """(template, rendered prompts) of a suite's problems: arith always plain."""
    template = "plain" if suite == "arith" else config.template
    return template, [prompts.render(template, task.prompt(p), tokenizer) for p in problems]


def check_prompt_lengths(
    config: Any, tokenizer: Any, context: int, add_special_tokens: bool, harness: str, cut: bool = True
) -> None:
    """One warning, with the numbers, when prompts are longer than the model's context leaves room for: both
    harnesses cut each such prompt to its last `context - max_new_tokens` tokens (lm-eval does it; the native
    generator does the same, so that the two see the same inputs). With no room at all (max_new_tokens >=
    context) lm-eval cannot run, which is refused here, and the native harness cuts nothing and warns about
    the prompts longer than the whole context."""
    room = prompt_room(context, config.max_new_tokens)
    if room is None and harness == "lm-eval":
        raise ValueError(f"--max-new-tokens {config.max_new_tokens} is not below the model's context of {context} "
                         f"tokens: lm-eval keeps context - max-new-tokens prompt tokens; give --max-new-tokens "
                         f"below {context}")
    limit = context if room is None else room
    over = []
    for suite in tasks.expand_suites(config.suites):
        task = config.suite_task(suite)
        _, texts = suite_prompts(config, suite, task, task.problems("test", config.limit), tokenizer)
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
        long = [n for n in lengths if n > limit]
        if long:
            over.append(f"{suite} {len(long)} of {len(lengths)} (longest {max(long)} tokens)")
    if not over:
        return
    if room is None:
        warnings.warn(f"prompts longer than the model's whole context of {context} tokens: {', '.join(over)}; "
                      f"not cut, since --max-new-tokens {config.max_new_tokens} leaves no room for a prompt (below "
                      f"{context}, both harnesses cut them to context - max-new-tokens, as lm-eval does)",
                      stacklevel=3)
    elif cut:
        warnings.warn(f"prompts longer than the model's context leaves room for ({context} tokens - "
                      f"--max-new-tokens {config.max_new_tokens} = {room}): {', '.join(over)}; each is cut to its "
                      f"last {room} tokens, in both harnesses (as lm-eval does)", stacklevel=3)
    else:
        warnings.warn(f"prompts longer than the model's context leaves room for ({context} tokens - "
                      f"--max-new-tokens {config.max_new_tokens} = {room}): {', '.join(over)}; the native harness "
                      "on vLLM does not cut them (vLLM refuses a prompt past its context)", stacklevel=3)


def effective_dtype(backend: str, dtype: str) -> str:
    """The dtype the weights run in: vLLM runs float32 requests in bfloat16 (`build_generator`, lm-eval's VLLM)."""
    return "bfloat16" if backend == "vllm" and dtype == "float32" else dtype


def build_generator(source: str, config: Any, backend: str = "hf", dtype: str = "float32"):
    """(generator, tokenizer) for a model folder or hub id. Prompts rendered with the tokenizer's chat
    template already hold its BOS, so the tokenizer adds no special tokens to those. The hf generator cuts
    a prompt longer than the model's context leaves beside `config.max_new_tokens` to its last tokens, as
    lm-eval does (`check_prompt_lengths` warns)."""
    uses_chat = config.template == "qwen-boxed"
    if backend == "vllm":
        from vimpo_bench.rollout.vllm import VLLMGenerator

        generator = VLLMGenerator(source, dtype=effective_dtype(backend, dtype))
        generator.add_special_tokens = not (uses_chat and prompts.has_chat_template(generator.tokenizer))
        return generator, generator.tokenizer
    from vimpo_bench.models import load_policy

    model, tokenizer = load_policy(source, dtype=dtype)
    add_special = not (uses_chat and prompts.has_chat_template(tokenizer))
    generator = _left_cut_generator_class()(model, tokenizer, add_special_tokens=add_special)
    generator.max_prompt_tokens = prompt_room(model_context(model.config, tokenizer), config.max_new_tokens)
    return generator, tokenizer


@functools.cache
def _left_cut_generator_class():
    """`HFGenerator` keeping the last `max_prompt_tokens` tokens of each prompt (None: all of them): lm-eval's
    left truncation to context - max_gen_toks, so that both harnesses see the same inputs. (Made on first
    use: rollout.hf imports transformers.)"""
    from vimpo_bench.rollout.hf import HFGenerator

    class LeftCutHFGenerator(HFGenerator):
        max_prompt_tokens: int | None = None

        def _generate_batch(self, encoded, params, device):
            if self.max_prompt_tokens is not None:
                encoded = [ids[-self.max_prompt_tokens :] for ids in encoded]
            return super()._generate_batch(encoded, params, device)

    return LeftCutHFGenerator
