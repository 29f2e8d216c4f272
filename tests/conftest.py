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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module (tiny models gain nothing from more, and on a shared
    2-core machine extra threads oversubscribe and run several times slower); restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
