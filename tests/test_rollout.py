"""HFGenerator and token_logprobs on a tiny random-init Llama (conftest.tiny_policy)."""

import pytest
import torch

from vimpo_bench.models import frozen_copy
from vimpo_bench.rl.logprobs import position_ids_from_mask, token_logprobs
from vimpo_bench.rollout.base import Rollouts, SamplingParams
from vimpo_bench.rollout.hf import HFGenerator, response_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["1+2=", "12+34+56=", "7=", "99*9-3="]
EOS = 2


@pytest.fixture(scope="module")
def generator(tiny_policy):
    model, tokenizer = tiny_policy
    return HFGenerator(model, tokenizer)


@pytest.fixture(scope="module")
def long_rollouts(generator):
    """Enough rows and tokens that, at ~1% EOS per step, some rows stop and some are truncated."""
    return generator.generate(PROMPTS * 4, SamplingParams(max_new_tokens=48, n=4), seed=0)


def _greedy_by_hand(model, ids: list[int], steps: int) -> list[int]:
    """Full forward pass per step, no cache, no padding: the reference for greedy decoding."""
    out = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
        if out[-1] == EOS:
            break
    return out


def test_shapes_grouping_and_left_padding(generator):
    r = generator.generate(PROMPTS, SamplingParams(max_new_tokens=8, n=3), seed=0)
    assert isinstance(r, Rollouts) and len(r) == 12
    assert r.prompt_ids.shape == r.prompt_mask.shape == (12, 9)
    assert r.response_ids.shape == r.response_mask.shape and r.response_ids.shape[0] == 12
    assert r.response_ids.shape[1] <= 8
    assert r.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert r.prompts == [p for p in PROMPTS for _ in range(3)]
    tokenizer = generator.tokenizer
    for row in range(12):
        n_real = int(r.prompt_mask[row].sum())
        assert n_real == len(r.prompts[row])  # one token per character
        assert r.prompt_mask[row, : 9 - n_real].sum() == 0  # padding on the left
        assert (r.prompt_ids[row, : 9 - n_real] == tokenizer.pad_token_id).all()
        assert tokenizer.decode(r.prompt_ids[row, 9 - n_real :]) == r.prompts[row]
    assert r.sample_logp is None


def test_eos_mask_truncation_and_texts(generator, long_rollouts):
    r = long_rollouts
    tokenizer = generator.tokenizer
    assert r.response_ids.shape[1] == 48  # some row ran to the limit
    assert 0 < int(r.truncated.sum()) < len(r)  # both kinds occur with this seed
    for row in range(len(r)):
        ids, mask = r.response_ids[row], r.response_mask[row]
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # contiguous from the start
        assert (ids[length:] == tokenizer.pad_token_id).all()
        eos_at = (ids[:length] == EOS).nonzero().flatten().tolist()
        if r.truncated[row]:
            assert length == 48 and eos_at == []
        else:
            assert eos_at == [length - 1]  # EOS counted in the mask, and only the first one
        assert r.texts[row] == tokenizer.decode(ids[:length], skip_special_tokens=True)
        assert "</s>" not in r.texts[row]


def test_response_masks_by_hand():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    out_ids, mask, truncated = response_masks(ids, [2], pad_token_id=0)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert out_ids.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_one_new_token(generator):
    r = generator.generate(PROMPTS, SamplingParams(max_new_tokens=1, n=2), seed=3)
    assert r.response_ids.shape == (8, 1) and r.response_mask.all()
    assert r.truncated.tolist() == (r.response_ids[:, 0] != EOS).tolist()


def test_greedy_matches_step_by_step_argmax(generator, tiny_policy):
    model, tokenizer = tiny_policy
    r = generator.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=6, n=2), seed=None)
    for i, prompt in enumerate(PROMPTS):
        expected = _greedy_by_hand(model, tokenizer(prompt)["input_ids"], 6)
        for row in (2 * i, 2 * i + 1):  # both samples of a greedy prompt are the same
            assert r.response_ids[row, : int(r.response_mask[row].sum())].tolist() == expected
    chunked = HFGenerator(model, tokenizer, prompt_batch_size=1)
    r1 = chunked.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=6, n=2))
    assert torch.equal(r1.response_ids, r.response_ids) and torch.equal(r1.prompt_ids, r.prompt_ids)


def test_seeding_is_reproducible_and_leaves_global_rng_alone(generator):
    params = SamplingParams(max_new_tokens=12, n=2)
    state = torch.get_rng_state()
    a = generator.generate(PROMPTS, params, seed=11)
    b = generator.generate(PROMPTS, params, seed=11)
    c = generator.generate(PROMPTS, params, seed=12)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_ids[:, :5], c.response_ids[:, :5])
    assert a.texts[0] != a.texts[1]  # the n samples of a prompt differ


def test_top_k_is_passed_and_checkpoint_defaults_do_not_leak(tiny_policy):
    model, tokenizer = tiny_policy
    greedy = HFGenerator(model, tokenizer).generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    top1 = HFGenerator(model, tokenizer).generate(PROMPTS, SamplingParams(top_k=1, max_new_tokens=10), seed=0)
    assert torch.equal(top1.response_ids, greedy.response_ids)
    # A checkpoint that ships top_k=1 and a repetition penalty must still sample from the full softmax.
    opinionated = frozen_copy(model)
    opinionated.generation_config.top_k = 1
    opinionated.generation_config.repetition_penalty = 1.5
    full = HFGenerator(opinionated, tokenizer).generate(PROMPTS, SamplingParams(max_new_tokens=10), seed=0)
    assert not torch.equal(full.response_ids, greedy.response_ids)


def test_restores_training_mode(tiny_policy):
    model, tokenizer = tiny_policy
    copy = frozen_copy(model)
    copy.train()
    HFGenerator(copy, tokenizer).generate(["1="], SamplingParams(max_new_tokens=2), seed=0)
    assert copy.training
    copy.eval()
    HFGenerator(copy, tokenizer).generate(["1="], SamplingParams(max_new_tokens=2), seed=0)
    assert not copy.training


def test_microbatched_sampling_keeps_layout(tiny_policy):
    model, tokenizer = tiny_policy
    r = HFGenerator(model, tokenizer, prompt_batch_size=3).generate(
        PROMPTS, SamplingParams(max_new_tokens=5, n=2), seed=1
    )
    assert r.prompt_ids.shape == (8, 9) and r.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [int(m.sum()) for m in r.prompt_mask] == [len(p) for p in r.prompts]


@pytest.mark.parametrize(
    "params, field",
    [
        (SamplingParams(n=0), "n must be"),
        (SamplingParams(max_new_tokens=0), "max_new_tokens"),
        (SamplingParams(temperature=-1), "temperature"),
        (SamplingParams(top_p=0), "top_p"),
        (SamplingParams(top_k=-1), "top_k"),
    ],
)
def test_bad_sampling_params(generator, params, field):
    with pytest.raises(ValueError, match=field):
        generator.generate(PROMPTS, params)


# ---------------------------------------------------------------------------------- log-probs


def test_logprobs_match_the_sampler(tiny_policy):
    """PPO ratios start at 1: a separate forward pass reproduces the sampler's log-probs."""
    model, tokenizer = tiny_policy
    for temperature in (1.0, 0.7):
        gen = HFGenerator(model, tokenizer, return_sample_logp=True)
        r = gen.generate(PROMPTS * 2, SamplingParams(temperature=temperature, max_new_tokens=24, n=3), seed=5)
        with torch.no_grad():
            logp, entropy = token_logprobs(
                model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature=temperature
            )
        assert logp.dtype == torch.float32 and logp.shape == r.response_ids.shape and entropy is None
        assert (logp[r.response_mask == 0] == 0).all() and (r.sample_logp[r.response_mask == 0] == 0).all()
        assert (logp[r.response_mask == 1] < 0).all()
        assert (logp - r.sample_logp).abs().max() < 1e-4


def test_logprobs_match_raw_generate_logits(tiny_policy):
    """Independent of HFGenerator: transformers' own output_logits on a left-padded batch."""
    model, tokenizer = tiny_policy
    encoded = [tokenizer(p)["input_ids"] for p in PROMPTS]
    width = max(map(len, encoded))
    prompt_ids = torch.tensor([[0] * (width - len(e)) + e for e in encoded])
    prompt_mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    torch.manual_seed(0)
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=True,
        top_k=0,
        temperature=1.0,
        max_new_tokens=16,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=EOS,
    )
    response = out.sequences[:, width:]
    after_eos = torch.cumsum((response == EOS).long(), 1) - (response == EOS).long()
    mask = (after_eos == 0).long()
    expected = torch.log_softmax(torch.stack(out.logits, 1).float(), -1).gather(-1, response.unsqueeze(-1))[
        ..., 0
    ]
    with torch.no_grad():
        logp, _ = token_logprobs(model, prompt_ids, prompt_mask, response, mask)
    assert ((logp - expected) * mask).abs().max() < 1e-4


def test_padding_does_not_change_logprobs_or_entropy(tiny_policy, long_rollouts):
    model, _ = tiny_policy
    r = long_rollouts
    with torch.no_grad():
        logp, entropy = token_logprobs(
            model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, with_entropy=True
        )
        for row in (0, 5, len(r) - 1):
            p = r.prompt_ids[row][r.prompt_mask[row].bool()][None]
            length = int(r.response_mask[row].sum())
            resp = r.response_ids[row, :length][None]
            alone, alone_h = token_logprobs(
                model, p, torch.ones_like(p), resp, torch.ones_like(resp), with_entropy=True
            )
            assert (logp[row, :length] - alone[0]).abs().max() < 1e-5
            assert (entropy[row, :length] - alone_h[0]).abs().max() < 1e-5
            # garbage under the masks (extra left padding, junk after the response) changes nothing
            junk = torch.full((1, 3), 57)
            padded, _ = token_logprobs(
                model,
                torch.cat([junk, p], 1),
                torch.cat([torch.zeros_like(junk), torch.ones_like(p)], 1),
                torch.cat([resp, junk], 1),
                torch.cat([torch.ones_like(resp), torch.zeros_like(junk)], 1),
            )
            assert (padded[0, :length] - alone[0]).abs().max() < 1e-5 and (padded[0, length:] == 0).all()


def test_entropy_by_hand_and_microbatching(tiny_policy, long_rollouts):
    model, _ = tiny_policy
    r = long_rollouts
    with torch.no_grad():
        logp, entropy = token_logprobs(
            model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, with_entropy=True
        )
        chunked, chunked_h = token_logprobs(
            model,
            r.prompt_ids,
            r.prompt_mask,
            r.response_ids,
            r.response_mask,
            with_entropy=True,
            microbatch_size=5,
        )
        p = r.prompt_ids[0][r.prompt_mask[0].bool()]
        logits = model(torch.cat([p, r.response_ids[0, :3]])[None]).logits[0, len(p) - 1 : len(p) + 2]
    probs = torch.softmax(logits, -1)
    assert torch.allclose(entropy[0, :3], -(probs * probs.log()).sum(-1), atol=1e-5)
    assert (entropy[r.response_mask == 1] > 0).all() and (
        entropy <= torch.log(torch.tensor(101.0)) + 1e-4
    ).all()
    assert (chunked - logp).abs().max() < 1e-5 and (chunked_h - entropy).abs().max() < 1e-5


def test_logprobs_carry_gradients_only_through_real_tokens(tiny_policy, long_rollouts):
    model, _ = tiny_policy
    trainable = frozen_copy(model).requires_grad_(True)
    r = long_rollouts
    rows = slice(0, 6)
    logp, _ = token_logprobs(
        trainable, r.prompt_ids[rows], r.prompt_mask[rows], r.response_ids[rows], r.response_mask[rows]
    )
    assert logp.requires_grad
    logp.sum().backward()
    grads = [p.grad for p in trainable.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # The embedding of a token that appears only as padding gets no gradient.
    embed_grad = trainable.get_input_embeddings().weight.grad
    assert embed_grad[0].abs().max() == 0  # <pad>


def test_bf16_model_gives_float32_logprobs(tiny_policy, long_rollouts):
    model, _ = tiny_policy
    r = long_rollouts
    half = frozen_copy(model).to(torch.bfloat16)
    with torch.no_grad():
        low, _ = token_logprobs(half, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
        full, _ = token_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    assert low.dtype == torch.float32
    assert (low - full).abs().max() < 0.1  # bf16 rounding, same tokens


def test_position_ids_follow_generate_convention():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]
