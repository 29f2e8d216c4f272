"""The math suites as lm-evaluation-harness tasks, and `vimpo-bench eval --harness lm-eval`.

The YAMLs in this folder (package data) read the same local JSONL files as the native harness
(`dataset_path: json`) and score through `utils.process_results`, i.e. `vimpo_bench.grading`.
`evaluate_with_lm_eval` runs lm-eval's own generation loop (its HF or vLLM model) on them with the
run's prompt template and sampling protocol, then builds the same records and metrics as
`evaluate.evaluate`, through `vimpo_bench.evaluation.results`: `evaluate` imports this package, never the
other way round. The completions are graded again by our process pool for the records; the
per-problem accuracy lm-eval computed is compared and the difference is logged as
`harness_disagreements` (0 unless a grading timeout fell differently).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from vimpo_bench import grading, tasks
from vimpo_bench.evaluation import results as eval_results
from vimpo_bench.evaluation.lm_eval_tasks import utils
from vimpo_bench.tasks import prompts

TASK_DIR = Path(__file__).resolve().parent
SUITE_TASKS = {s: f"vimpo_{s}" for s in ("math500", "aime24", "aime25", "olympiadbench")}


def load_task_yaml(suite: str) -> dict[str, Any]:
    """The task config of `suite`: its YAML with `include:` merged and `!function utils.f` resolved
    to this package's `utils.f` (what lm-eval's loader does, without its private API)."""
    if suite not in SUITE_TASKS:
        raise ValueError(f"suite {suite!r} has no lm-eval task; lm-eval suites: {', '.join(SUITE_TASKS)}")

    class Loader(yaml.SafeLoader):
        pass

    def function(loader, node):
        module, _, name = loader.construct_scalar(node).rpartition(".")
        if module != "utils":
            raise ValueError(f"!function {module}.{name}: only utils.* is supported here")
        return getattr(utils, name)

    Loader.add_constructor("!function", function)

    def read(path: Path) -> dict[str, Any]:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506 - our own files
        base = cfg.pop("include", None)
        return {**read(path.parent / base), **cfg} if base else cfg

    return read(TASK_DIR / f"{SUITE_TASKS[suite]}.yaml")


def task_config(
    suite: str, data_dir: Path, template: str, tokenizer: Any, params, add_bos: bool
) -> dict[str, Any]:
    """A ready-to-run lm-eval task dict: our data file, prompt template and sampling protocol."""
    cfg = load_task_yaml(suite)
    cfg["dataset_kwargs"] = {"data_files": {"test": str(data_dir / suite / "test.jsonl")}}

    def doc_to_text(doc: dict) -> str:  # a closure, not a partial: lm-eval deep-copies configs
        return prompts.render(template, doc["problem"], tokenizer)

    cfg["doc_to_text"] = doc_to_text
    greedy = params.temperature == 0
    cfg["generation_kwargs"] = {
        "until": [],
        "do_sample": not greedy,
        "temperature": float(params.temperature),
        "max_gen_toks": params.max_new_tokens,
        **({} if greedy else {"top_p": float(params.top_p), "top_k": int(params.top_k)}),
    }
    cfg["repeats"] = params.n
    if params.n > 1:
        cfg["filter_list"] = [{"name": "all", "filter": [{"function": "take_first_k", "k": params.n}]}]
    cfg.setdefault("metadata", {})["add_bos"] = add_bos
    return cfg


def _lm(source: str, config, backend: str, dtype: str):
    """(lm-eval model, tokenizer, add_bos) for a model folder or hub id."""
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
        add_bos = not (config.template == "qwen-boxed" and prompts.has_chat_template(tokenizer))
        lm = VLLM(
            pretrained=source,
            dtype="bfloat16" if dtype == "float32" else dtype,
            seed=config.seed,
            add_bos_token=add_bos,
            batch_size="auto",
        )
        return lm, tokenizer, add_bos
    from lm_eval.models.huggingface import HFLM

    from vimpo_bench.models import load_policy

    model, tokenizer = load_policy(source, dtype=dtype)
    add_bos = not (config.template == "qwen-boxed" and prompts.has_chat_template(tokenizer))
    device = str(next(model.parameters()).device)
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=config.batch_size,
        add_bos_token=add_bos,
        device=device,
    )
    return lm, tokenizer, add_bos


def evaluate_with_lm_eval(
    source: str,
    config,
    backend: str = "hf",
    dtype: str = "float32",
    tracker=None,
    output_dir: str | os.PathLike | None = None,
    step: int = 0,
    progress=None,
    model: str | None = None,
):
    """Run the suites of `config` through lm-eval; returns an `eval_results.EvalResult` (harness "lm-eval")."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from vimpo_bench.runs.tracking import NullTracker
    from vimpo_bench.tasks.math_benchmarks import default_data_dir

    tracker = tracker or NullTracker()
    suites = tasks.expand_suites(config.suites)
    missing = [s for s in suites if s not in SUITE_TASKS]
    if missing:
        raise ValueError(f"--harness lm-eval runs {', '.join(SUITE_TASKS)}; not {', '.join(missing)}")
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
    if data_dir is None:
        raise ValueError("--harness lm-eval reads local files: give --data-dir or set VIMPO_BENCH_DATA")
    params = config.sampling()
    lm, tokenizer, add_bos = _lm(source, config, backend, dtype)
    specs = [task_config(s, data_dir, config.template, tokenizer, params, add_bos) for s in suites]
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=specs,
        limit=config.limit,
        log_samples=True,
        bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False),
        random_seed=config.seed,
        numpy_random_seed=config.seed,
        torch_random_seed=config.seed,
        fewshot_random_seed=config.seed,
    )
    out_dir = Path(output_dir) if output_dir is not None else None
    results, lm_eval_accuracy = {}, {}
    pool = (
        grading.GraderPool(config.grader_workers, config.grader_timeout)
        if config.grader_workers != 0
        else None
    )
    try:
        for index, suite in enumerate(suites):
            name = SUITE_TASKS[suite]
            task = tasks.get_suite_task(suite, data_dir)
            by_id = {p.id: p for p in task.problems("test", config.limit)}
            samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
            problems = [by_id[str(s["doc"]["id"])] for s in samples]
            texts = [s["arguments"][0][0] for s in samples]
            completions = [c for s in samples for c in utils.completions_of(s["filtered_resps"])]
            expanded = [p for p in problems for _ in range(params.n)]
            grades = task.grade_batch(completions, expanded, pool=pool)
            tokens = [len(ids) for ids in tokenizer(completions, add_special_tokens=False)["input_ids"]]
            finish = ["length" if t >= params.max_new_tokens else "stop" for t in tokens]
            records = eval_results.make_records(
                suite, problems, texts, completions, grades, params.n, config.template, tokens, finish
            )
            ours = [
                sum(g.correct for g in grades[i * params.n : (i + 1) * params.n]) / params.n
                for i in range(len(problems))
            ]
            disagreements = sum(
                abs(o - float(s["accuracy"])) > 1e-9 for o, s in zip(ours, samples, strict=True)
            )
            result = eval_results.finalize_suite(suite, records, params.n, task, config.template, out_dir)
            result.metrics["harness_disagreements"] = disagreements
            key = "accuracy,all" if params.n > 1 else "accuracy,none"
            lm_eval_accuracy[suite] = out["results"][name].get(key)
            result.metrics["lm_eval_accuracy"] = lm_eval_accuracy[suite]
            results[suite] = result
            if progress is not None:
                progress(
                    eval_results.EvalProgress(
                        suite,
                        index,
                        len(suites),
                        len(problems),
                        len(problems),
                        result.metrics.get("accuracy", 0.0),
                        0.0,
                    )
                )
    finally:
        if pool is not None:
            pool.close()
    result = eval_results.EvalResult(
        suites=results,
        config=config.record(),
        run_id=tracker.run_id,
        model=model,
        harness="lm-eval",
        output_dir=None if out_dir is None else str(out_dir),
        extra={
            "lm_eval": {"version": getattr(lm_eval, "__version__", "unknown"), "accuracy": lm_eval_accuracy}
        },
    )
    eval_results.log_result(tracker, result, tokenizer, step=step)
    return result
