"""Per-token log-prob of the sampled token and per-token entropy (design.md §4).

Two paths compute the same two numbers for every response token t:

    z_t   = (h_t · Wᵀ + b) / T                      logits at sampling temperature T
    lse_t = log Σ_v exp(z_tv)
    logp_t = z_t[y_t] − lse_t                        log-prob of the sampled token y_t
    H_t   = −Σ_v p_tv log p_tv = lse_t − Σ_v p_tv z_tv,   p_t = softmax(z_t)

* :func:`token_logprob_entropy` — the reference: takes full logits ``[N, V]`` and uses
  ``log_softmax`` in fp32. It is the test oracle; it is kept simple on purpose.
* :func:`fused_logprob_entropy` — takes the final hidden states ``[N, d]`` and the LM-head weight
  ``[V, d]`` and never holds ``[N, V]``: a ``torch.autograd.Function`` over chunks of tokens that
  saves (hidden, weight, targets, lse, H) and recomputes each chunk's logits in backward.

Backward of the fused path, for upstream gradients g_lp and g_H of one token:

    ∂logp/∂z_v = 1[v = y] − p_v
    ∂H/∂z_v    = −p_v (log p_v + H)
    dz = g_lp·(onehot − p) − g_H·p·(log p + H),   then ÷ T (z = raw/T)
    dh = dz · W,   dW = dzᵀ · h,   db = Σ_t dz

Numerics: the softmax, log-sum-exp, entropy and dz are computed in fp32 (fp64 for fp64 inputs) per
chunk whatever the input dtype. The matmuls themselves run in the input dtype (bf16/fp16 GEMMs
accumulate in fp32 on tensor cores / AMX; this is what the model's own LM head does), their
output is upcast before anything else. dW and db are accumulated in fp32 across chunks and cast
to the weight's dtype at the end.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["token_logprob_entropy", "fused_logprob_entropy", "DEFAULT_CHUNK_SIZE", "default_chunk_size"]

DEFAULT_CHUNK_SIZE = 1024
#: bytes of fp32 logits one chunk may hold when the chunk size is chosen from the vocabulary.
CHUNK_LOGITS_BUDGET = 256 * 2**20


def default_chunk_size(vocab_size: int, budget_bytes: int = CHUNK_LOGITS_BUDGET) -> int:
    """Tokens per chunk so that one chunk's fp32 logits ``[chunk, V]`` fit ``budget_bytes``: a power of
    two in [64, 4096]. V = 151936 → 256, V = 49152 → 1024, V = 32000 → 2048.

    Why tie it to V: peak memory of the fused paths is ≈ 2–3 chunk logits plus the weight and its
    gradient, so a fixed chunk of 1024 tokens costs 0.6 GB per logits buffer at Qwen's vocabulary; 256
    tokens cost 1.3–1.8× the time there in a side-by-side CPU measurement (docs/performance.md): memory
    bought with time.
    """
    tokens = max(1, budget_bytes // (4 * max(1, int(vocab_size))))
    return int(min(4096, max(64, 2 ** int(math.floor(math.log2(tokens))))))


# log p is floored here once p = exp(log p) has been taken: p = 0 exactly for every log p below
# about −745 (fp64) / −104 (fp32), so the floor changes no term with p > 0, and it turns the
# p·log p = 0·(−inf) = NaN of a −inf logit (a masked vocabulary entry) into 0·(−1e6) = 0.
_LOG_P_FLOOR = -1.0e6


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types and fp32, fp64 for fp64 (so gradcheck runs in fp64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0.0 and t != float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def token_logprob_entropy(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Reference path: log-prob of ``targets`` and entropy from full ``logits`` ``[..., V]``.

    Returns ``(logprob, entropy)`` shaped like ``targets``, in fp32 (fp64 for fp64 logits).
    Differentiable by plain autograd. Used as the oracle for the fused path.
    """
    t = _check_temperature(temperature)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree: "
            "expected logits [..., V] with targets [...]"
        )
    z = logits.to(_compute_dtype(logits.dtype))
    if t != 1.0:
        z = z / t
    log_p = torch.log_softmax(z, dim=-1)
    logprob = log_p.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    p = log_p.exp()
    # p·log p with p = 0 must be 0: a −inf logit gives log p = −inf, and 0·(−inf) = NaN. The floor is
    # the fused path's: the dtype's lowest number would make ∂(p·log p)/∂p = log p overflow to −inf
    # under an upstream gradient above 1 (fp16 loss scaling), and 0·inf is a NaN gradient again.
    entropy = -(p * log_p.clamp(min=_LOG_P_FLOOR)).sum(-1)
    return logprob, entropy


def _validate(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, chunk_size: int) -> None:
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"hidden must be [N, d] and weight [V, d]; got hidden {tuple(hidden.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden size mismatch: hidden {tuple(hidden.shape)} vs weight {tuple(weight.shape)} "
            "(expected hidden [N, d] and weight [V, d] with the same d)"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [N] = [{hidden.shape[0]}], got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor of token ids, got {targets.dtype}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if targets.numel() > 0:
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= weight.shape[0]:
            raise ValueError(f"targets must be token ids in [0, {weight.shape[0]}), got range [{lo}, {hi}]")


def chunk_logits(
    hidden_chunk: Tensor, weight: Tensor, bias: Tensor | None, temperature: float, dtype: torch.dtype
) -> Tensor:
    """z = (h·Wᵀ + b) / T for one chunk, matmul in the input dtype, result in ``dtype``."""
    z = (hidden_chunk @ weight.t()).to(dtype)
    if bias is not None:
        z.add_(bias.to(dtype))
    if temperature != 1.0:
        z.div_(temperature)
    return z


def chunk_stats(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From chunk logits z (overwritten with p·log p) return (p·log p, p, logprob, entropy).

    log p = (z − max z) − log Σ exp(z − max z), per element: the row maximum is subtracted first
    (exactly, for the logits near it), so large logits keep their precision — subtracting a rounded
    lse ≈ 100 directly would cost ~1e-5 absolute in fp32 — and all-negative or ±1e4 logits are safe.
    H = −Σ p·log p from those per-element values (no lse − Σp·z cancellation), summed with
    ``torch.sum`` (pairwise/cascaded): a row dot product (bmm) accumulates the V terms one after
    another in fp32, which cost ~V·eps·H (2e-5 absolute at V = 4826, 5e-5 at V = 65536; measured
    in benchmarks/entropy_path.py ``--accuracy``).
    """
    z.sub_(z.amax(dim=-1, keepdim=True))
    p = z.exp()
    total = p.sum(dim=-1, keepdim=True)
    log_p = z.sub_(total.log())
    p.div_(total)
    logprob = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    log_p.clamp_(min=_LOG_P_FLOOR)
    # p·log p in place of log p: no third [C, V] buffer, and the backward needs only this product.
    p_log_p = log_p.mul_(p)
    entropy = -p_log_p.sum(dim=-1)
    return p_log_p, p, logprob, entropy


def chunk_dlogits(
    p_log_p: Tensor,
    p: Tensor,
    targets: Tensor,
    entropy: Tensor,
    g_lp: Tensor | None,
    g_H: Tensor | None,
    temperature: float,
) -> Tensor:
    """dz = [g_lp·(onehot − p) − g_H·p·(log p + H)] / T, written into ``p_log_p``'s or ``p``'s buffer.

    With q = p·log p: −g_H·p·(log p + H) − g_lp·p = −g_H·q − (g_H·H + g_lp)·p, then + g_lp at the
    target. Two passes over [C, V] and no extra buffer.
    """
    if g_H is not None:
        c = g_H * entropy if g_lp is None else g_H * entropy + g_lp
        dz = p_log_p.mul_(-g_H.unsqueeze(-1)).addcmul_(p, -c.unsqueeze(-1))
    else:
        assert g_lp is not None
        dz = p.mul_(-g_lp.unsqueeze(-1))
    if g_lp is not None:
        dz.scatter_add_(-1, targets.unsqueeze(-1), g_lp.unsqueeze(-1).to(dz.dtype))
    if temperature != 1.0:
        dz.div_(temperature)
    return dz


def _is_zero_grad(g: Tensor | None) -> bool:
    # A None grad or an all-zero one (autograd materialises zeros for unused outputs) means
    # "no gradient flows through this output": skip its terms entirely.
    return g is None or not bool(torch.any(g != 0))


class _FusedLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        temperature: float,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor]:
        n = hidden.shape[0]
        cdtype = _compute_dtype(hidden.dtype)
        logprob = torch.empty(n, dtype=cdtype, device=hidden.device)
        entropy = torch.empty(n, dtype=cdtype, device=hidden.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            z = chunk_logits(hidden[start:end], weight, bias, temperature, cdtype)
            # only the two vectors are kept: an unpacked ``[chunk, V]`` buffer (p·log p, p) would live on
            # into the next chunk beside its new ones (one more ``[chunk, V]`` at the peak)
            lp, ent = chunk_stats(z, targets[start:end])[2:]
            logprob[start:end] = lp
            entropy[start:end] = ent
            del z
        ctx.save_for_backward(hidden, weight, bias, targets, entropy)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        return logprob, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_lp: Tensor | None, g_H: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, bias, targets, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_lp = None if _is_zero_grad(g_lp) else g_lp.contiguous()  # type: ignore[union-attr]
        g_H = None if _is_zero_grad(g_H) else g_H.contiguous()  # type: ignore[union-attr]
        n = hidden.shape[0]
        cdtype = entropy.dtype
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=cdtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=cdtype, device=weight.device) if need_b else None
        if g_lp is None and g_H is None:
            return (grad_h, _cast(grad_w, weight), _cast(grad_b, bias), None, None, None)
        T = ctx.temperature
        for start in range(0, n, ctx.chunk_size):
            end = min(start + ctx.chunk_size, n)
            h = hidden[start:end]
            tgt = targets[start:end]
            z = chunk_logits(h, weight, bias, T, cdtype)
            p_log_p, p, _, _ = chunk_stats(z, tgt)
            dz = chunk_dlogits(
                p_log_p,
                p,
                tgt,
                entropy[start:end],
                None if g_lp is None else g_lp[start:end].to(cdtype),
                None if g_H is None else g_H[start:end].to(cdtype),
                T,
            )
            accumulate_param_grads(dz, h, weight, grad_h, grad_w, grad_b, start, end)
            del z, p_log_p, p, dz
        return (grad_h, _cast(grad_w, weight), _cast(grad_b, bias), None, None, None)


def accumulate_param_grads(
    dz: Tensor,
    h: Tensor,
    weight: Tensor,
    grad_h: Tensor | None,
    grad_w: Tensor | None,
    grad_b: Tensor | None,
    start: int,
    end: int,
) -> None:
    """dh[start:end] = dz·W; dW += dzᵀ·h (fp32 accumulator); db += Σ_t dz."""
    dz_in = dz.to(weight.dtype)
    if grad_h is not None:
        grad_h[start:end] = dz_in @ weight
    if grad_w is not None:
        if grad_w.dtype == dz_in.dtype:
            grad_w.addmm_(dz_in.t(), h)
        else:
            grad_w.add_(dz_in.t() @ h)
    if grad_b is not None:
        grad_b.add_(dz.sum(0))


def fp16_autocast(device: torch.device) -> bool:
    """Whether float16 autocast is on for ``device`` (``trainer.precision: 16-mixed``): a gradient taken in
    a forward, before the loss scaler's factor reaches it, must then be taken outside autocast, or its
    small entries underflow in float16."""
    return torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == torch.float16


def _cast(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
    if grad is None or like is None:
        return grad
    return grad.to(like.dtype)


def fused_logprob_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-prob of ``targets`` and entropy from hidden states, never holding ``[N, V]`` logits.

    Args:
        hidden: final hidden states ``[N, d]`` (or ``[..., d]``; leading dims are flattened and
            restored), any float dtype.
        weight: LM-head weight ``[V, d]``, same dtype as ``hidden`` (may be tied to the input
            embedding: its gradient simply accumulates with the embedding's).
        targets: sampled token ids ``[N]`` (or ``[...]``), integer.
        temperature: sampling temperature T; logits are divided by T before log-prob and entropy.
        chunk_size: tokens per chunk; peak extra memory ≈ 2–3 · chunk_size · V · 4 bytes. ``None``:
            :func:`default_chunk_size` of the vocabulary.
        bias: optional LM-head bias ``[V]``.

    Returns:
        ``(logprob, entropy)`` shaped like ``targets``, fp32 (fp64 for fp64 inputs), differentiable
        w.r.t. hidden, weight and bias. Gradients come back in the inputs' dtypes.
    """
    t = _check_temperature(temperature)
    lead = targets.shape
    flat_pair = hidden.dim() == 2 and targets.dim() == 1  # [N, d] with [N]: _validate checks it
    if hidden.shape[:-1] != lead and not flat_pair:  # a flattened count would pair other rows' states
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and targets {tuple(lead)} disagree: "
            "expected hidden [..., d] with targets [...]"
        )
    hidden2 = hidden.reshape(-1, hidden.shape[-1]) if hidden.dim() != 2 else hidden
    targets1 = targets.reshape(-1)
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    _validate(hidden2, weight, targets1, bias, chunk_size)
    # Contiguous copies where needed: a strided view must not reach the GEMMs and the in-place
    # chunk slicing with the wrong layout (a known source of wrong gradients in fused kernels).
    logprob, entropy = _FusedLogprobEntropy.apply(
        hidden2.contiguous(),
        weight.contiguous(),
        None if bias is None else bias.contiguous(),
        targets1.long().contiguous(),
        t,
        chunk_size,
    )
    return logprob.reshape(lead), entropy.reshape(lead)
