"""The default Hugging Face rollout engine and the training forward that must agree with it."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from entropyctl.models.forward import (
    lm_head_weight,
    response_hidden_states,
    response_logits,
    supports_fused_head,
)
from entropyctl.models.tiny import build_char_tokenizer, build_tiny_model
from entropyctl.models.warm_start import _supervised_batch
from entropyctl.ops.entropy import token_logprob_entropy
from entropyctl.rollout.hf import HFRolloutEngine, position_ids_from_mask
from entropyctl.rollout.protocol import Completions, RolloutEngine, SamplingSettings, stop_token_ids

ALPHABET = "0123456789+-*/=() "
PROMPTS = ["1+2=", "123+45=", "(12+3)*4=", "7="]  # different lengths -> different left padding


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer(ALPHABET)
    model = build_tiny_model(tokenizer, hidden_size=64, layers=2, heads=4, seed=3)
    # A random init is near-uniform and never stops; a few supervised steps on sums make EOS likely
    # while the distribution stays far from deterministic (varied lengths, some truncations).
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        problems = []
        for _ in range(32):
            a, b = rng.randrange(100), rng.randrange(100)
            problems.append(SimpleNamespace(prompt=f"{a}+{b}=", answer=str(a + b)))
        ids, mask, labels = _supervised_batch(tokenizer, problems)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model, tokenizer


def _prompt_ids(tokenizer):
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def test_engine_satisfies_protocol(policy):
    model, tokenizer = policy
    assert isinstance(HFRolloutEngine(model, tokenizer), RolloutEngine)


def test_generate_shapes_masks_and_prompt_major_order(policy):
    model, tokenizer = policy
    engine = HFRolloutEngine(model, tokenizer)
    n = 3
    out = engine.generate(
        _prompt_ids(tokenizer), n, SamplingSettings(temperature=1.0, max_new_tokens=10, seed=0)
    )
    assert isinstance(out, Completions)
    assert out.num_sequences == len(PROMPTS) * n
    # Left padding; rows i*n .. i*n+n-1 carry prompt i.
    for i, ids in enumerate(_prompt_ids(tokenizer)):
        for j in range(n):
            row = i * n + j
            real = out.prompt_ids[row][out.prompt_mask[row].bool()].tolist()
            assert real == ids
            assert out.prompt_mask[row, -1] == 1  # padding on the left only
    eos = tokenizer.eos_token_id
    for row in range(out.num_sequences):
        mask = out.response_mask[row]
        length = int(mask.sum())
        assert torch.all(mask[:length] == 1) and torch.all(mask[length:] == 0)  # contiguous prefix
        ids = out.response_ids[row]
        eos_positions = (ids[:length] == eos).nonzero().flatten().tolist()
        if out.truncated[row]:
            assert eos_positions == [] and length == 10
        else:
            assert eos_positions == [length - 1]  # exactly one EOS, the last masked token
        assert torch.all(ids[length:] == tokenizer.pad_token_id)
    assert out.truncated.any() or out.response_mask.shape[1] <= 10


def test_seeded_generation_is_reproducible_and_restores_mode(policy):
    model, tokenizer = policy
    engine = HFRolloutEngine(model, tokenizer)
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=8, seed=123)
    model.train()
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    a = engine.generate(_prompt_ids(tokenizer), 4, sampling)
    after = torch.rand(1)
    b = engine.generate(_prompt_ids(tokenizer), 4, sampling)
    c = engine.generate(
        _prompt_ids(tokenizer), 4, SamplingSettings(temperature=1.0, max_new_tokens=8, seed=124)
    )
    assert model.training  # restored to train mode
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert torch.equal(before, after)  # a seeded rollout leaves the global RNG stream alone
    model.eval()
    engine.generate(_prompt_ids(tokenizer), 1, sampling)
    assert not model.training
    model.train()


def test_top_k_one_is_greedy(policy):
    model, tokenizer = policy
    engine = HFRolloutEngine(model, tokenizer)
    greedy = engine.generate(_prompt_ids(tokenizer), 1, SamplingSettings(temperature=0.0, max_new_tokens=8))
    top1 = engine.generate(
        _prompt_ids(tokenizer), 1, SamplingSettings(temperature=0.7, top_k=1, max_new_tokens=8, seed=5)
    )
    assert torch.equal(greedy.response_ids, top1.response_ids)


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 1.0), (1.3, 1.0), (0.7, 0.9)])
def test_engine_logprobs_equal_training_forward(policy, temperature, top_p):
    """The key consistency check: log-probs of the sampled tokens from `generate` (KV cache, left padding)
    equal those of the training forward (one pass, explicit positions) at the same temperature."""
    model, tokenizer = policy
    engine = HFRolloutEngine(model, tokenizer)
    # With top_p < 1 the log-probs are still those of the full temperature-scaled distribution.
    sampling = SamplingSettings(
        temperature=temperature, top_p=top_p, max_new_tokens=12, seed=11, return_logprobs=True
    )
    out = engine.generate(_prompt_ids(tokenizer), 4, sampling)
    assert out.logprobs is not None and out.logprobs.shape == out.response_ids.shape
    assert len(set(out.prompt_mask.sum(1).tolist())) == len(PROMPTS)  # really different paddings
    assert len(set(out.response_mask.sum(1).tolist())) > 1  # and different response lengths
    mask = out.response_mask.bool()
    with torch.no_grad():
        fwd = response_hidden_states(model, out)
        logits = fwd.hidden @ fwd.lm_head_weight.T
        if fwd.lm_head_bias is not None:
            logits = logits + fwd.lm_head_bias
        logprob, entropy = token_logprob_entropy(logits, fwd.targets, temperature=temperature)
    assert fwd.hidden.shape[0] == int(mask.sum())  # only real response tokens
    assert torch.equal(fwd.targets, out.response_ids[mask])
    assert torch.equal(fwd.seq_index, torch.nonzero(mask)[:, 0])
    torch.testing.assert_close(logprob, out.logprobs[mask], atol=1e-5, rtol=0)
    assert torch.all(out.logprobs[~mask] == 0)
    assert torch.all(entropy > 0)
    # Changing the temperature on one side only breaks the agreement: the check has teeth.
    wrong, _ = token_logprob_entropy(logits, fwd.targets, temperature=1.0)
    assert (wrong - out.logprobs[mask]).abs().max() > 1e-3


def test_response_logits_matches_fused_inputs_and_gradients_flow(policy):
    model, tokenizer = policy
    engine = HFRolloutEngine(model, tokenizer)
    out = engine.generate(
        _prompt_ids(tokenizer), 2, SamplingSettings(temperature=1.0, max_new_tokens=6, seed=1)
    )
    fwd = response_hidden_states(model, out)
    full = response_logits(model, out)
    torch.testing.assert_close(fwd.hidden @ fwd.lm_head_weight.T, full.logits, atol=1e-5, rtol=1e-5)
    assert supports_fused_head(model)
    weight, bias = lm_head_weight(model)
    assert weight is model.get_input_embeddings().weight  # tied embeddings: the same parameter
    model.zero_grad()
    logprob, _ = token_logprob_entropy(fwd.hidden @ weight.T, fwd.targets)
    logprob.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_position_ids_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_bad_sampling_settings_fail_clearly(policy):
    model, tokenizer = policy
    engine = HFRolloutEngine(model, tokenizer)
    with pytest.raises(ValueError, match="n=0"):
        engine.generate(_prompt_ids(tokenizer), 0, SamplingSettings())
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(_prompt_ids(tokenizer), 1, SamplingSettings(max_new_tokens=0))
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[]], 1, SamplingSettings())
    # checked here as vLLM checks them (transformers took top_p 0 and 1.5 without a word, and refused
    # top_k -1, vLLM's "off"): one message, the same for every engine
    for bad, match in [
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"top_k": -1}, "top_k=-1"),
    ]:
        with pytest.raises(ValueError, match=match):
            engine.generate(_prompt_ids(tokenizer), 1, SamplingSettings(**bad))


def test_stop_token_ids_reads_the_tokenizer_then_the_generation_config():
    tokenizer = SimpleNamespace(eos_token_id=5)
    assert stop_token_ids(tokenizer) == (5,)
    assert stop_token_ids(tokenizer, SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=9))) == (
        5,
        9,
    )
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[9, 5, 11, 9]))
    assert stop_token_ids(tokenizer, model) == (5, 9, 11)  # the tokenizer's first, no repeats
    assert stop_token_ids(SimpleNamespace(eos_token_id=None), model) == (9, 5, 11)
    with pytest.raises(ValueError, match="could never stop"):
        stop_token_ids(SimpleNamespace(eos_token_id=None), SimpleNamespace(generation_config=None))


def test_responses_stop_at_a_generation_config_eos_besides_the_tokenizers(policy):
    """A chat model may end its turn in a token other than the tokenizer's EOS (Llama 3's <|eot_id|>):
    the engine stops at every id of the model's generation_config.eos_token_id, and a response that
    ends in one is not truncated."""
    model, tokenizer = policy
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=6)
    plain = HFRolloutEngine(model, tokenizer).generate(_prompt_ids(tokenizer), 1, greedy)
    first = plain.response_ids[:, 0].tolist()
    other = next(t for t in first if t != tokenizer.eos_token_id)  # a token greedy decoding emits first
    rows = [i for i, t in enumerate(first) if t == other]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, other]
    try:
        engine = HFRolloutEngine(model, tokenizer)
        assert engine.stop_token_ids == (tokenizer.eos_token_id, other)
        out = engine.generate(_prompt_ids(tokenizer), 1, greedy)
        sampled = engine.generate(
            _prompt_ids(tokenizer), 4, SamplingSettings(temperature=1.0, max_new_tokens=10, seed=0)
        )
    finally:
        model.generation_config.eos_token_id = saved
    for row in rows:  # stopped at once, on the extra id, and not counted as truncated
        assert out.response_mask[row].tolist() == [1] + [0] * (out.response_mask.shape[1] - 1)
        assert out.response_ids[row, 0] == other and not out.truncated[row]
    for row in range(sampled.num_sequences):  # a stop id only ever as the last masked token
        length = int(sampled.response_mask[row].sum())
        ids = sampled.response_ids[row, :length].tolist()
        stops = [i for i, t in enumerate(ids) if t in engine.stop_token_ids]
        assert stops == ([] if sampled.truncated[row] else [length - 1])
