"""Oracle tests: the fused log-prob/entropy path against the full-logits reference (design.md §4)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entropyctl.ops import entropy as entropy_mod
from entropyctl.ops.entropy import fused_logprob_entropy, token_logprob_entropy

torch.set_num_threads(1)


def _reference(hidden, weight, targets, temperature=1.0, bias=None):
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return token_logprob_entropy(logits, targets, temperature)


def _problem(n, d, v, dtype=torch.float64, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(v, d, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(v, generator=g, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, targets


# ---------------------------------------------------------------- reference path sanity


def test_reference_matches_hand_computed_two_token_vocab() -> None:
    # logits [0, ln 3] → p = [1/4, 3/4]; target 1: logp = ln(3/4);
    # H = −(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351446188083
    logits = torch.tensor([[0.0, math.log(3.0)]])
    lp, h = token_logprob_entropy(logits, torch.tensor([1]))
    assert lp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert h.item() == pytest.approx(0.5623351446188083, abs=1e-6)
    # T = 2 halves the logits: z = [0, ln 3 / 2] → p = [1/(1+√3), √3/(1+√3)]
    lp2, _ = token_logprob_entropy(logits, torch.tensor([0]), temperature=2.0)
    assert lp2.item() == pytest.approx(math.log(1 / (1 + math.sqrt(3))), abs=1e-6)


# ---------------------------------------------------------------- gradcheck in fp64


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_fused_gradcheck_hidden_weight_bias(temperature: float) -> None:
    hidden, weight, bias, targets = _problem(11, 5, 13, seed=1)

    def f(h, w, b):
        return fused_logprob_entropy(h, w, targets, temperature=temperature, chunk_size=4, bias=b)

    assert torch.autograd.gradcheck(f, (hidden, weight, bias))


def test_fused_gradcheck_each_output_alone() -> None:
    # Only logprob (entropy grad skipped) and only entropy (logprob terms skipped).
    hidden, weight, _, targets = _problem(7, 4, 9, seed=2, bias=False)
    assert torch.autograd.gradcheck(
        lambda h, w: fused_logprob_entropy(h, w, targets, chunk_size=3)[0], (hidden, weight)
    )
    assert torch.autograd.gradcheck(
        lambda h, w: fused_logprob_entropy(h, w, targets, chunk_size=3)[1], (hidden, weight)
    )


# ---------------------------------------------------------------- fp32 oracle, property-based


@st.composite
def _cases(draw):
    n = draw(st.integers(0, 40))
    d = draw(st.integers(1, 8))
    v = draw(st.integers(2, 64))
    chunk = draw(st.integers(1, 48))
    temperature = draw(st.sampled_from([1.0, 0.5, 0.7, 1.3, 2.0]))
    scale = draw(st.sampled_from(["normal", "extreme", "all_negative"]))
    strided = draw(st.booleans())
    use_bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return n, d, v, chunk, temperature, scale, strided, use_bias, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_fused_matches_reference_fp32(case) -> None:
    n, d, v, chunk, temperature, scale, strided, use_bias, seed = case
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g)
    bias = torch.randn(v, generator=g) if use_bias else None
    if scale == "extreme":
        # logits of magnitude ~1e4: softmax is one-hot in fp32, exp underflows for most entries.
        weight = weight * (1e4 / math.sqrt(d))
    elif scale == "all_negative":
        bias = (bias if bias is not None else torch.zeros(v)) - 1e4
    if strided:
        # Non-contiguous leaves: every other row of a bigger buffer, and a transposed weight.
        hidden = torch.stack([hidden, torch.full_like(hidden, float("nan"))], dim=1).reshape(2 * n, d)[::2]
        weight = weight.T.contiguous().T
        assert n <= 1 or not hidden.is_contiguous()
        assert d == 1 or v == 1 or not weight.is_contiguous()
    hidden = hidden.requires_grad_()
    weight = weight.requires_grad_()
    if bias is not None:
        bias = bias.requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    g_lp = torch.randn(n, generator=g)
    g_h = torch.randn(n, generator=g)

    lp_f, h_f = fused_logprob_entropy(
        hidden, weight, targets, temperature=temperature, chunk_size=chunk, bias=bias
    )
    lp_r, h_r = _reference(hidden, weight, targets, temperature, bias)
    assert lp_f.dtype == torch.float32 and lp_f.shape == (n,)
    # matmul blocking differs between paths: allow an error relative to the logit magnitude.
    logits = hidden.detach() @ weight.detach().T + (0.0 if bias is None else bias.detach())
    zmax = float(logits.abs().max()) / temperature if n else 1.0
    atol = 1e-5 + 2e-6 * zmax
    assert torch.isfinite(lp_f).all() and torch.isfinite(h_f).all()
    torch.testing.assert_close(lp_f, lp_r, atol=atol, rtol=1e-5)
    torch.testing.assert_close(h_f, h_r, atol=atol, rtol=1e-4)

    inputs = [hidden, weight] + ([bias] if bias is not None else [])
    gf = torch.autograd.grad((lp_f * g_lp + h_f * g_h).sum(), inputs, allow_unused=True)
    gr = torch.autograd.grad((lp_r * g_lp + h_r * g_h).sum(), inputs, allow_unused=True)
    for a, b in zip(gf, gr, strict=True):
        assert a is not None and b is not None
        assert torch.isfinite(a).all()
        scale_ = float(b.abs().max()) if b.numel() else 1.0
        # With |z| ~ 1e4 each fp32 logit carries ~ulp(1e4) ≈ 1e-3 absolute rounding in BOTH paths
        # (different matmul blocking / add order), which moves softmax weights by ~1e-3 relative:
        # the tolerance grows with the logit magnitude (5e-3 relative at 1e4, 1e-4 at |z| ~ 1).
        rel = 1e-4 + 5e-7 * zmax
        torch.testing.assert_close(a, b, atol=1e-5 + rel * scale_, rtol=1e-4)


# ---------------------------------------------------------------- edge cases


def test_empty_batch() -> None:
    hidden = torch.zeros(0, 4, requires_grad=True)
    weight = torch.randn(10, 4, requires_grad=True)
    lp, h = fused_logprob_entropy(hidden, weight, torch.zeros(0, dtype=torch.long))
    assert lp.shape == (0,) and h.shape == (0,)
    (lp.sum() + h.sum()).backward()
    assert weight.grad is not None and torch.equal(weight.grad, torch.zeros_like(weight))


def test_minus_inf_logit_gives_finite_entropy_and_grads() -> None:
    # A vocabulary entry masked with a −inf bias: p = 0 there, p·log p must count as 0, not NaN.
    hidden, weight, _, targets = _problem(6, 3, 8, dtype=torch.float32, seed=3, bias=False)
    targets = targets.clamp(max=6)
    bias = torch.zeros(8)
    bias[7] = -float("inf")
    lp, h = fused_logprob_entropy(hidden, weight, targets, bias=bias, chunk_size=4)
    lp_r, h_r = _reference(hidden, weight, targets, bias=bias)
    torch.testing.assert_close(lp, lp_r)
    torch.testing.assert_close(h, h_r)
    (lp.sum() + h.sum()).backward()
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()
    # The masked entry gets no gradient at all.
    lp_r2, h_r2 = _reference(hidden.detach(), weight.detach()[:7], targets)
    torch.testing.assert_close(lp.detach(), lp_r2)
    torch.testing.assert_close(h.detach(), h_r2)
    assert torch.equal(weight.grad[7], torch.zeros(3))


def test_leading_dims_are_flattened_and_restored() -> None:
    hidden, weight, _, targets = _problem(12, 4, 9, dtype=torch.float32, seed=4, bias=False)
    lp, h = fused_logprob_entropy(hidden.reshape(3, 4, 4), weight, targets.reshape(3, 4), chunk_size=5)
    lp_r, h_r = _reference(hidden, weight, targets)
    assert lp.shape == (3, 4)
    torch.testing.assert_close(lp.reshape(-1), lp_r)
    torch.testing.assert_close(h.reshape(-1), h_r)


def test_no_entropy_gradient_skips_entropy_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, weight, bias, targets = _problem(10, 4, 12, dtype=torch.float32, seed=5)
    seen: list[bool] = []
    real = entropy_mod.chunk_dlogits

    def spy(log_p, p, tgt, ent, g_lp, g_H, temperature):
        seen.append(g_H is None)
        return real(log_p, p, tgt, ent, g_lp, g_H, temperature)

    monkeypatch.setattr(entropy_mod, "chunk_dlogits", spy)
    g = torch.randn(10)
    inputs = (hidden, weight, bias)
    lp, _ = fused_logprob_entropy(hidden, weight, targets, chunk_size=4, bias=bias)
    grads_none = torch.autograd.grad((lp * g).sum(), inputs)  # entropy unused: g_H is None
    assert seen and all(seen), "entropy-gradient work was not skipped"
    seen.clear()
    lp, h = fused_logprob_entropy(hidden, weight, targets, chunk_size=4, bias=bias)
    grads_zero = torch.autograd.grad((lp * g + 0.0 * h).sum(), inputs)  # g_H is an all-zero tensor
    assert seen and all(seen)
    lp_r, _ = _reference(hidden, weight, targets, bias=bias)
    grads_ref = torch.autograd.grad((lp_r * g).sum(), inputs)
    for a, b, c in zip(grads_none, grads_zero, grads_ref, strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    seen.clear()
    lp, h = fused_logprob_entropy(hidden, weight, targets, chunk_size=4, bias=bias)
    torch.autograd.grad((lp * g + h).sum(), inputs)
    assert seen and not any(seen), "entropy terms must be used when an entropy gradient flows"


def test_bf16_inputs_agree_with_fp32_reference() -> None:
    # Stated tolerance: the LM-head matmul runs in bf16 (fp32 accumulate), so each logit carries a
    # bf16 rounding error ≈ 2^-8·|z|; with |z| ≲ 4 here that is ≲ 0.02 on log-probs and entropies.
    # Gradients come back in bf16 and agree to 3% of their largest entry.
    g = torch.Generator().manual_seed(6)
    hidden32 = torch.randn(33, 16, generator=g) * 0.5
    weight32 = torch.randn(40, 16, generator=g) * 0.25
    targets = torch.randint(0, 40, (33,), generator=g)
    hidden = hidden32.bfloat16().requires_grad_()
    weight = weight32.bfloat16().requires_grad_()
    lp, h = fused_logprob_entropy(hidden, weight, targets, chunk_size=8, temperature=0.9)
    assert lp.dtype == torch.float32 and h.dtype == torch.float32
    h_ref = hidden.detach().float().requires_grad_()
    w_ref = weight.detach().float().requires_grad_()
    lp_r, h_r = _reference(h_ref, w_ref, targets, temperature=0.9)
    torch.testing.assert_close(lp, lp_r, atol=0.03, rtol=0)
    torch.testing.assert_close(h, h_r, atol=0.03, rtol=0)
    gl = torch.randn(33, generator=g)
    (lp * gl + h).sum().backward()
    (lp_r * gl + h_r).sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    for a, b in ((hidden.grad, h_ref.grad), (weight.grad, w_ref.grad)):
        torch.testing.assert_close(a.float(), b, atol=0.03 * float(b.abs().max()), rtol=0)


def test_fp16_inputs_run_in_fp32() -> None:
    hidden, weight, _, targets = _problem(9, 8, 20, dtype=torch.float32, seed=7, bias=False)
    lp, h = fused_logprob_entropy(hidden.detach().half(), weight.detach().half(), targets, chunk_size=4)
    lp_r, h_r = _reference(hidden.detach().half().float(), weight.detach().half().float(), targets)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, lp_r, atol=0.02, rtol=0)
    torch.testing.assert_close(h, h_r, atol=0.02, rtol=0)


def test_tied_embeddings_get_the_reference_gradient() -> None:
    # A tiny LM whose head shares its weight with the input embedding: the head's gradient and the
    # embedding's gradient must simply add up, exactly as with plain autograd on full logits.
    torch.manual_seed(8)
    vocab, dim = 17, 6

    class TinyTied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, dim)
            self.mix = torch.nn.Linear(dim, dim)

        def hidden(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.mix(self.embed(ids)))

    model = TinyTied().double()
    ids = torch.randint(0, vocab, (2, 5))
    targets = torch.randint(0, vocab, (2, 5))

    def grads(fused: bool) -> list[torch.Tensor]:
        model.zero_grad()
        hid = model.hidden(ids).reshape(-1, dim)
        if fused:
            lp, h = fused_logprob_entropy(hid, model.embed.weight, targets.reshape(-1), chunk_size=3)
        else:
            lp, h = _reference(hid, model.embed.weight, targets.reshape(-1))
        (lp.sum() + 0.3 * h.sum()).backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"temperature": 0.0}, "temperature"),
        ({"targets": torch.tensor([0, 99])}, r"targets must be token ids in \[0, 5\)"),
        ({"targets": torch.tensor([0])}, r"targets must be \[N\] = \[2\]"),
        ({"weight": torch.randn(5, 4)}, "hidden size mismatch"),
    ],
)
def test_bad_input_names_the_problem(kwargs: dict, match: str) -> None:
    args = {"hidden": torch.randn(2, 3), "weight": torch.randn(5, 3), "targets": torch.tensor([0, 1])}
    args.update({k: v for k, v in kwargs.items() if k in args})
    extra = {k: v for k, v in kwargs.items() if k not in args}
    with pytest.raises(ValueError, match=match):
        fused_logprob_entropy(args["hidden"], args["weight"], args["targets"], **extra)


def test_default_chunk_size_follows_vocabulary_and_matches_reference() -> None:
    from entropyctl.ops.entropy import default_chunk_size

    # One chunk's fp32 logits stay within 256 MiB: a power of two, smaller for larger vocabularies.
    assert [default_chunk_size(v) for v in (20, 32000, 49152, 151936)] == [4096, 2048, 1024, 256]
    for v in (20, 32000, 151936, 10**7):
        c = default_chunk_size(v)
        assert c & (c - 1) == 0 and 64 <= c <= 4096
        assert c == 64 or c * v * 4 <= 256 * 2**20
    # chunk_size=None (the default) picks it and still agrees with the full-logits path.
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7000, 16, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7000, (300,), generator=g)
    lp, h = fused_logprob_entropy(hidden, weight, targets, temperature=0.8)
    ref_lp, ref_h = token_logprob_entropy(hidden @ weight.T, targets, temperature=0.8)
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(h, ref_h)


# ---------------------------------------------------------------- fp32 entropy accuracy against fp64


@st.composite
def _accuracy_cases(draw):
    return dict(
        n=draw(st.integers(1, 24)),
        d=draw(st.integers(1, 48)),
        v=draw(st.integers(2, 6000)),
        T=draw(st.floats(0.5, 1.5)),
        logit_std=draw(st.sampled_from([0.5, 2.0, 8.0])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_accuracy_cases())
def test_fp32_entropy_is_as_accurate_as_full_logits(c) -> None:
    # Against the exact (fp64) entropy of the same fp32 inputs, the fused path's fp32 entropy is within
    # twice the full-logits fp32 path's error, plus 4·ε·max(H, 1): the rounding of H's own last
    # operations (log Σ, one product and the final sum) — no error that grows with V (a row dot product
    # that sums the V terms one after another was 7-20x the reference at V = 5000).
    g = torch.Generator().manual_seed(c["seed"])
    n, d, v, t = c["n"], c["d"], c["v"], c["T"]
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * (c["logit_std"] / math.sqrt(d))
    targets = torch.randint(0, v, (n,), generator=g)
    _, h64 = token_logprob_entropy(hidden.double() @ weight.double().T, targets, t)
    _, h_ref = token_logprob_entropy(hidden @ weight.T, targets, t)
    _, h_fused = fused_logprob_entropy(hidden, weight, targets, temperature=t, chunk_size=16)
    eps = torch.finfo(torch.float32).eps
    ref_error = float((h_ref.double() - h64).abs().max())
    fused_error = (h_fused.double() - h64).abs()
    bound = 2 * ref_error + 4 * eps * h64.clamp(min=1.0)
    assert bool((fused_error <= bound).all()), (float(fused_error.max()), ref_error)


def test_a_minus_inf_logit_under_a_large_upstream_gradient_stays_finite_on_the_reference_path() -> None:
    # fp16 loss scaling multiplies ∂L/∂H by 65536·α/N: above 1 the dtype-min floor made ∂(p log p)/∂p
    # overflow to −inf, and 0·inf spread NaN over the row; the fused path's floor does not.
    logits = torch.tensor([[0.5, 1.0, -float("inf"), 0.2]], requires_grad=True)
    for scale in (0.5, 2.0, 65536.0):
        logits.grad = None
        _, h = token_logprob_entropy(logits, torch.tensor([1]))
        (h * scale).sum().backward()
        grad = logits.grad.clone()
        assert bool(torch.isfinite(grad).all()) and float(grad[0, 2]) == 0.0
        finite = logits.detach()[:, [0, 1, 3]].clone().requires_grad_()
        _, h_ref = token_logprob_entropy(finite, torch.tensor([1]))
        (h_ref * scale).sum().backward()  # the same row without the masked entry
        torch.testing.assert_close(grad[:, [0, 1, 3]], finite.grad)


def test_a_chunk_keeps_no_chunk_by_vocab_buffer_into_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """The no-grad fused pass (old log-probs, the entropy reading, the KL reference, GSPO's first pass) holds
    one chunk's ``[chunk, V]`` buffers at a time: an unpacked ``p`` kept alive into the next chunk made the
    peak one buffer more (+37 % at N = 2048, V = 49152, chunk 1024)."""
    import weakref

    live: list[weakref.ref[torch.Tensor]] = []
    held_at_each_chunk: list[int] = []
    chunk_logits, chunk_stats = entropy_mod.chunk_logits, entropy_mod.chunk_stats

    def counting_logits(*args: object, **kwargs: object) -> torch.Tensor:
        held_at_each_chunk.append(sum(ref() is not None for ref in live))
        return chunk_logits(*args, **kwargs)  # type: ignore[arg-type]

    def tracked_stats(z: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = chunk_stats(z, targets)
        live.extend(weakref.ref(t) for t in out if t.dim() == 2)  # p·log p and p: [chunk, V]
        return out

    monkeypatch.setattr(entropy_mod, "chunk_logits", counting_logits)
    monkeypatch.setattr(entropy_mod, "chunk_stats", tracked_stats)
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(12, 4, generator=g), torch.randn(9, 4, generator=g)
    with torch.no_grad():
        fused_logprob_entropy(hidden, weight, torch.randint(0, 9, (12,), generator=g), chunk_size=4)
    assert held_at_each_chunk == [0, 0, 0]


def test_fused_path_refuses_targets_shaped_unlike_the_hidden_rows() -> None:
    """hidden [2, 3, d] with targets [3, 2] held as many tokens, so the fused path paired each token with
    another row's hidden state and returned [3, 2]; the reference refuses such a pair, and so does it."""
    hidden, weight = torch.randn(2, 3, 4), torch.randn(7, 4)
    with pytest.raises(ValueError, match="disagree"):
        fused_logprob_entropy(hidden, weight, torch.zeros(3, 2, dtype=torch.long))
    logprob, _ = fused_logprob_entropy(hidden, weight, torch.zeros(2, 3, dtype=torch.long))
    assert logprob.shape == (2, 3)
