"""Shared fixtures: a tiny random-init Llama and its character tokenizer, saved once per session.

Session-scoped objects are shared between tests: do not modify them in place (take
`frozen_copy(model)` or load a fresh copy from `tiny_model_dir` when a test needs to).
"""

from __future__ import annotations

import pytest
import torch

from vimpo_bench.models import build_char_tokenizer, build_tiny_arith_model, load_policy


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer):
    """A folder with a random-init tiny Llama (seed 0) and the character tokenizer (`save_pretrained`)."""
    folder = tmp_path_factory.mktemp("tiny-random")
    model = build_tiny_arith_model(
        len(char_tokenizer),
        pad_token_id=char_tokenizer.pad_token_id,
        bos_token_id=char_tokenizer.bos_token_id,
        eos_token_id=char_tokenizer.eos_token_id,
        seed=0,
    )
    model.save_pretrained(folder)
    char_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dir):
    """(model, tokenizer) loaded from `tiny_model_dir`, float32, eval mode. Shared: do not mutate."""
    model, tokenizer = load_policy(str(tiny_model_dir))
    model.eval()
    return model, tokenizer


WARM_STEPS = 40  # a short supervised warm start: the model emits EOS and some right answers


@pytest.fixture(scope="session")
def warm_model_dir(tmp_path_factory):
    """tiny-arith after a short warm start, cached in a session folder (built once, ~20 s)."""
    from vimpo_bench.models import warm_start_tiny_arith

    cache = tmp_path_factory.mktemp("model-cache")
    return warm_start_tiny_arith(None, cache, steps=WARM_STEPS, seed=0, num_threads=1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module (tiny models gain nothing from more, and on a shared
    2-core machine extra threads oversubscribe and run several times slower); restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# An easy arith variant (1-digit operands, 3 terms) on which 40 warm-start steps already give some right
# answers (~9% sampled), so that studies and sweeps on it have a non-zero signal to compare and prune on.
EASY_TASK = {"digits": 1, "terms": 3, "n_train": 500, "n_test": 100, "n_validation": 100}
EASY_WARM_STEPS = 40


@pytest.fixture(scope="session")
def easy_model_cache(tmp_path_factory):
    """A model cache holding tiny-arith warm-started on EASY_TASK (seed 0); built once (~20 s)."""
    from vimpo_bench.models import warm_start_tiny_arith

    cache = tmp_path_factory.mktemp("easy-model-cache")
    warm_start_tiny_arith(EASY_TASK, cache, steps=EASY_WARM_STEPS, seed=0, num_threads=1)
    return cache


@pytest.fixture(scope="session")
def easy_study_yaml():
    """`make(cache, output_dir, study, steps, eval_every)` -> a study file body (see `_easy_study_yaml`)."""
    return _easy_study_yaml


def _easy_study_yaml(cache, output_dir, study: str = "", steps: int = 2, eval_every: int = 1) -> str:
    """A study file body: tiny-arith on EASY_TASK from `cache`, a few fast steps, then `study` appended."""
    return f"""
model: {{name: tiny-arith, cache_dir: "{cache}", warm_start_steps: {EASY_WARM_STEPS}}}
task: {{name: arith, options: {{digits: 1, terms: 3, n_train: 500, n_test: 100, n_validation: 100}}}}
rollout: {{prompts_per_step: 4, group_size: 4, max_new_tokens: 24}}
optim: {{steps: {steps}, lr: 1.0e-3, minibatches: 2}}
eval: {{every: {eval_every}, problems: 40, samples: 4, completions_logged: 4}}
run: {{output_dir: "{output_dir}", threads: 1, checkpoint_every: 0}}
{study}"""
