import json
import shutil
import string

import pytest
import torch
from transformers import AutoTokenizer

from vimpo_bench.models import (
    WARM_START_RECORD,
    apply_chat_template_if_any,
    build_char_tokenizer,
    build_tiny_arith_model,
    encode_sft_examples,
    frozen_copy,
    greedy_accuracy,
    load_policy,
    train_sft,
    warm_start_tiny_arith,
)
from vimpo_bench.tasks.arith import ArithTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROUND_TRIP = [
    "12+34=46,46+56=102#102",
    "  two  leading spaces, and  inner   runs  ",
    "tab\tnew\nline\n\nend ",
    string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", ""),
]


def test_char_tokenizer_round_trips_through_auto_tokenizer(tmp_path, char_tokenizer):
    char_tokenizer.save_pretrained(tmp_path)
    build_tiny_arith_model(len(char_tokenizer)).config.save_pretrained(tmp_path)  # model_type llama
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ROUND_TRIP:
        ids = loaded(text)["input_ids"]
        assert ids == char_tokenizer(text)["input_ids"]
        assert len(ids) == len(text)  # one token per character, nothing added
        assert loaded.decode(ids) == text
    assert loaded("1+2=")["input_ids"] == [23, 17, 24, 35]  # 4 specials, tab, newline, then ord(c) - 32 + 6
    specials = (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id)
    assert specials == (0, 1, 2, 3)
    assert loaded.decode([23, 2, 0, 0], skip_special_tokens=True) == "1"
    assert loaded.decode(loaded("é")["input_ids"]) == "<unk>"  # outside the vocabulary: lossy, not an error


def test_tiny_model_architecture(char_tokenizer):
    model = build_tiny_arith_model(len(char_tokenizer))
    config = model.config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 4, 4)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n_params < 1_100_000
    same = build_tiny_arith_model(len(char_tokenizer))
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True)
    )  # seeded init
    with pytest.raises(ValueError, match="unknown architecture setting"):
        build_tiny_arith_model(10, hidden=64)


def test_build_leaves_global_rng_alone(char_tokenizer):
    state = torch.get_rng_state()
    build_tiny_arith_model(len(char_tokenizer), seed=7)
    assert torch.equal(state, torch.get_rng_state())


def test_load_policy_from_local_folder(tiny_model_dir, tiny_policy):
    model, tokenizer = load_policy(str(tiny_model_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tokenizer.decode(tokenizer("12+3=")["input_ids"]) == "12+3="
    reference, _ = tiny_policy
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b.to(torch.bfloat16))


def test_load_policy_sets_missing_pad_to_eos(tmp_path, tiny_model_dir):
    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    del config["pad_token"]
    config_file.write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    _, loaded = load_policy(str(folder))
    assert loaded.pad_token == "</s>" and loaded.pad_token_id == loaded.eos_token_id == 2


@pytest.mark.parametrize("name", ["./no/such/model", "/definitely/not/here", "runs/exp/step-100"])
def test_load_policy_missing_folder_names_it(name):
    with pytest.raises(FileNotFoundError) as err:
        load_policy(name)
    assert str(err.value) == f"model folder not found: {name}"


def test_load_policy_rejects_unknown_dtype(tiny_model_dir):
    with pytest.raises(ValueError, match="valid: float32, bfloat16, float16"):
        load_policy(str(tiny_model_dir), dtype="fp8")


def test_frozen_copy_is_independent_and_frozen(tiny_policy):
    model, _ = tiny_policy
    ref = frozen_copy(model)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters())
    name, param = next(iter(ref.named_parameters()))
    before = model.get_parameter(name).clone()
    with torch.no_grad():
        param.add_(1.0)
    assert torch.equal(model.get_parameter(name), before)


def test_chat_template_applied_only_when_present(char_tokenizer):
    assert apply_chat_template_if_any(char_tokenizer, "1+2=") == "1+2="
    templated = build_char_tokenizer()
    templated.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert apply_chat_template_if_any(templated, "1+2=") == "[user]1+2=[assistant]"


def test_warm_start_is_cached_atomic_and_keyed(tmp_path):
    options = {"n_train": 200, "n_test": 20}
    fixed = {"steps": 3, "batch_size": 8, "target_accuracy": None}
    calls = []
    folder = warm_start_tiny_arith(options, tmp_path, **fixed, progress=lambda *a: calls.append(a))
    assert folder.parent == tmp_path and folder.name.startswith("tiny-arith-")
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)] and all(c[2] > 0 for c in calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temp folder left behind
    record = json.loads((folder / WARM_START_RECORD).read_text())
    assert record["settings"]["steps"] == 3 and record["steps_run"] == 3 and record["val_accuracy"] == []
    assert record["settings"]["task"] == ArithTask(**options).options

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = warm_start_tiny_arith(dict(options), tmp_path, **fixed, progress=lambda *a: calls.append(a))
    assert again == folder and len(calls) == 3 and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    # Defaults spelled out give the same key; any change to the result's inputs gives a new one.
    assert warm_start_tiny_arith({**options, "digits": 2, "operators": "+"}, tmp_path, **fixed) == folder
    other = warm_start_tiny_arith(options, tmp_path, **fixed, seed=1)
    assert other != folder

    model, tokenizer = load_policy("tiny-arith", cache_dir=tmp_path, task_options=options, warm_start=fixed)
    assert model.config.model_type == "llama" and tokenizer.eos_token == "</s>"
    assert len(list(tmp_path.iterdir())) == 2  # served from the cache


def test_warm_start_skips_evaluation_on_the_loss_plateau(tmp_path):
    # A few steps cannot reach the target nor the loss gate: no evaluation, and it runs to the cap.
    folder = warm_start_tiny_arith(
        {"n_train": 500, "n_test": 20}, tmp_path, steps=4, batch_size=8, target_accuracy=0.5, eval_every=2
    )
    record = json.loads((folder / WARM_START_RECORD).read_text())
    assert record["steps_run"] == 4 and record["val_accuracy"] == []
    assert record["settings"]["n_val"] == 500 and record["settings"]["eval_every"] == 2
    # the stopping check reads the task's validation split: no training problem is held back for it
    assert record["settings"]["task"]["n_validation"] == 500


def test_greedy_accuracy_of_an_untrained_model_is_zero(tiny_policy):
    model, tokenizer = tiny_policy
    task = ArithTask(n_train=10, n_test=8)
    assert greedy_accuracy(model, tokenizer, task, task.problems("test")) == 0.0


def test_train_sft_stops_when_asked(char_tokenizer):
    model = build_tiny_arith_model(len(char_tokenizer))
    examples = encode_sft_examples(char_tokenizer, ArithTask(n_train=50, n_test=5))
    seen = []
    steps_run, loss = train_sft(
        model,
        examples,
        0,
        steps=10,
        batch_size=4,
        lr=1e-3,
        seed=0,
        on_step=lambda s, _loss: seen.append(s) or s == 2,
    )
    assert steps_run == 2 and seen == [1, 2] and loss > 0 and not model.training


def test_interrupted_warm_start_leaves_nothing(tmp_path):
    def interrupt(step, total, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        warm_start_tiny_arith(
            {"n_train": 200, "n_test": 20},
            tmp_path,
            steps=5,
            batch_size=8,
            target_accuracy=None,
            progress=interrupt,
        )
    assert list(tmp_path.iterdir()) == []


def test_warm_start_rejects_unknown_task_option(tmp_path):
    with pytest.raises(ValueError, match="unknown arith option"):
        warm_start_tiny_arith({"digit": 2}, tmp_path, steps=1)


@pytest.mark.slow
def test_default_warm_start_lands_near_half_right(request, tmp_path):
    """The real thing (~2-3 min on 2 cores): default settings, greedy accuracy on the held-out test split."""
    if not request.config.getoption("markexpr"):
        pytest.skip("slow: select with `-m slow`")
    folder = warm_start_tiny_arith(cache_dir=tmp_path, num_threads=2)
    record = json.loads((folder / WARM_START_RECORD).read_text())
    assert record["steps_run"] < 600 and record["val_accuracy"][-1][1] >= 0.45
    model, tokenizer = load_policy(str(folder))
    task = ArithTask()
    assert 0.4 <= greedy_accuracy(model, tokenizer, task, task.problems("test")) <= 0.65
