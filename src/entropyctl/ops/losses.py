"""The RLVR policy loss of design.md §2, per token, and its fused form.

Symbols as in design.md §2 (one response token per entry; all tensors ``[N]``):

    ρ      = exp(logp − logp_old)                                        importance ratio
    L_pg   = −(1/N) Σ m · min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)     clipped surrogate
    L_H    = −(1/N) Σ m · α · H                                          entropy term (α per prompt,
                                                                         broadcast to its tokens)
    L_KL   =  (1/N) Σ m · k,    k3 = exp(ref − logp) − (ref − logp) − 1  (optional, β = kl_coef;
                                                                         k: the estimator, below)
    L      = L_pg + L_H + β·L_KL

The KL estimator (``kl_estimator``; r = ref − logp per token) is TRL's k3 above, unbounded (the
default), verl's ``low_var_kl``: k3 of r clamped to ±20, the result clamped to at most 10 (no gradient
where a clamp binds), so one sampled token far in the reference's tail cannot outweigh the rest of the
batch, or one of verl's other loss estimators: ``k1`` = −r (verl's ``kl``), ``k2`` = r²/2 (verl's
``mse``), ``abs`` = |r|.

With a per-token action (:class:`~entropyctl.ops.token_selection.TokenAction`: weight w, detach
mask d, KL coefficient c per token; each optional), the policy-gradient term becomes

    ρ̂      = sg(ρ) where d, else ρ                                       (value kept, no gradient)
    L_pg   = −(1/N) Σ m · w · min(ρ̂·A, clip(ρ̂, 1 − ε_low, 1 + ε_high)·A)
             + (1/N) Σ m · c · |logp − logp_old|                         (KL-Cov's penalty)

and the entropy and reference-KL terms are unchanged.

With ``seq_index`` (each token's response; GSPO, TRL's ``importance_sampling_level="sequence"``) the
ratio is the response's, the geometric mean of its tokens' ratios, for every token of it:

    ρ_t    = s_i = exp((1/|o_i|) Σ_{t' ∈ o_i} (logp_t' − logp_old_t'))   for t ∈ o_i

clipped as above; its gradient reaches every token of the response, 1/|o_i| of it each. At ρ = 1
(one on-policy update) the gradient equals the token-level one. A detach mask d cannot apply to one
token of a shared ratio and is refused.

With ``dual_clip`` c > 1 (dual-clip PPO, Ye et al. 2020; verl's ``clip_ratio_c``, OpenRLHF's
``dual_clip``) a negative advantage's term is bounded below as well:

    A < 0:  max(min(ρ̂·A, clip(ρ̂, 1 − ε_low, 1 + ε_high)·A), c·A)          (no gradient where ρ̂ > c)

so a token whose ratio ran far above 1 under a negative advantage stops pulling (its term would grow
with ρ without bound). ``clip_frac_dual`` is the share of tokens where that bound binds.

With a per-token loss weight u (``loss_weight``, ≥ 0; default 1) every term's m becomes m·u: the
trainer's ``algorithm.loss_agg`` uses it for a per-sequence aggregation (u_t = N / (S·|o_i|) for
GRPO's sequence mean of token means, N / (S·L) for Dr. GRPO's constant normaliser, N / S for verl's
seq-mean-token-sum; S sequences, |o_i| the length of token t's sequence, L the maximum response length). The clip fractions stay
token shares (m alone).

N is the number of response tokens in the *global* batch (token-mean, as DAPO): pass it as
``num_tokens`` when a batch is split over micro-batches or ranks, so that summing the per-micro-batch
losses gives the global token-mean. Without it, N = Σ m of this call.

:func:`policy_loss` is the reference, on per-token log-probs and entropies (e.g. from
:func:`entropyctl.ops.entropy.token_logprob_entropy` or the fused path). :func:`fused_policy_loss`
goes straight from hidden states: the loss's gradient w.r.t. each token's log-prob and entropy is
known as soon as that token's log-prob and entropy are (it depends only on ρ, A, the clip state,
α, m, N and the KL term), so the gradient w.r.t. hidden/weight/bias is computed chunk by chunk in
forward, with no logits recomputed in backward.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from entropyctl.ops.entropy import (
    _check_temperature,
    _compute_dtype,
    _validate,
    accumulate_param_grads,
    chunk_dlogits,
    chunk_logits,
    chunk_stats,
    default_chunk_size,
    fp16_autocast,
    fused_logprob_entropy,
)
from entropyctl.ops.token_selection import TokenAction

__all__ = ["PolicyLossOutput", "policy_loss", "fused_policy_loss", "response_sums"]


@dataclass(frozen=True)
class PolicyLossOutput:
    """The loss and its parts.

    ``loss`` is the differentiable scalar L. ``pg_loss``, ``entropy_loss`` (= L_H, so it is
    −(1/N)Σ m·α·H), ``kl_loss`` (= L_KL before β), ``clip_frac_low``, ``clip_frac_high`` and
    ``clip_frac_dual`` (0 without ``dual_clip``) are detached scalars. Like the loss, the clip fractions are normalised by N: with ``num_tokens``
    the global count, sum them over micro-batches to get the global fraction. ``logprob`` and
    ``entropy`` are the detached per-token values ``[N]`` (fp32).
    """

    loss: Tensor
    pg_loss: Tensor
    entropy_loss: Tensor
    kl_loss: Tensor
    clip_frac_low: Tensor
    clip_frac_high: Tensor
    logprob: Tensor
    entropy: Tensor
    clip_frac_dual: Tensor


def _token_count(mask: Tensor, num_tokens: int | float | Tensor | None) -> Tensor:
    """N of the token-mean; 0 tokens gives N = 1 (the loss is then 0, not NaN)."""
    if num_tokens is None:
        n = mask.detach().to(torch.float64).sum()
    else:
        n = torch.as_tensor(num_tokens, dtype=torch.float64, device=mask.device)
        if n.numel() != 1 or not bool(torch.isfinite(n)) or float(n) < 0:
            raise ValueError(f"num_tokens must be a finite count >= 0, got {num_tokens!r}")
    return n.clamp_min(1.0)


def _loss_weight_tensor(
    loss_weight: Tensor | None, n: int, dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    """``loss_weight`` checked ([N] or a scalar, finite, ≥ 0), detached, as ``[N]`` in ``dtype``."""
    if loss_weight is None:
        return None
    _check_token_tensors(n, loss_weight=loss_weight)
    u = loss_weight.detach().to(device=device, dtype=dtype).expand(n).contiguous()
    if not bool(torch.isfinite(u).all()) or bool((u < 0).any()):
        raise ValueError("loss_weight must be finite and >= 0")
    return u


def _check_token_tensors(n: int, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != n):
            raise ValueError(
                f"{name} must be a per-token tensor [N] = [{n}] (or a scalar), got {tuple(t.shape)}"
            )


def _check_clip(clip_low: float, clip_high: float, dual_clip: float | None = None) -> None:
    # clip_low = 1 puts the lower bound at ρ = 0, which never binds: no lower clipping (KL-Cov).
    if not (0.0 <= clip_low <= 1.0) or not (clip_high >= 0.0):
        raise ValueError(
            f"clip bounds must satisfy 0 <= clip_low <= 1 and clip_high >= 0, got {clip_low}, {clip_high}"
        )
    if dual_clip is not None and not (dual_clip > 1.0 and dual_clip < float("inf")):
        raise ValueError(f"dual_clip must be a finite bound > 1 on the ratio (or None), got {dual_clip}")


def _upper_bound(clip_high: float, dtype: torch.dtype) -> float:
    """1 + ε_high, capped at the dtype's largest number: an ε_high beyond it (an unclipped surrogate)
    must not overflow the conversion to the tensor's dtype, and binds for no finite ratio either way."""
    return min(1.0 + float(clip_high), float(torch.finfo(dtype).max))


def _action_tensors(
    action: TokenAction | None, n: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(w, d, c) of a token action as per-token tensors ``[n]`` (w, c in ``dtype``, d bool), None where unset."""
    if action is None:
        return None, None, None
    out: list[Tensor | None] = []
    for name in ("weight", "detach", "kl_coef"):
        t = getattr(action, name)
        if t is None:
            out.append(None)
            continue
        if t.shape != (n,):
            raise ValueError(
                f"token_action.{name} must be a per-token tensor [N] = [{n}], got {tuple(t.shape)}"
            )
        t = t.detach().to(device)
        if name == "detach":
            out.append(t.bool())
            continue
        t = t.to(dtype)
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError(f"token_action.{name} must be finite and >= 0")
        out.append(t)
    return out[0], out[1], out[2]


def response_sums(values: Tensor, seq_index: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(the sum of ``values`` over each token's response, the response's token count), both per token
    ``[N]``; with ``keep`` (bool ``[N]``) over and of its kept tokens only. Differentiable in ``values``."""
    rows = seq_index.to(device=values.device, dtype=torch.long)
    width = int(rows.max()) + 1 if rows.numel() else 0
    zeros = torch.zeros(width, dtype=values.dtype, device=values.device)
    if keep is None:
        total, count = zeros.index_add(0, rows, values), zeros.index_add(0, rows, torch.ones_like(values))
    else:
        total = zeros.index_add(0, rows, torch.where(keep, values, torch.zeros_like(values)))
        count = zeros.index_add(0, rows, keep.to(values.dtype))
    return total[rows], count[rows]


def _sequence_log_ratio(log_ratio: Tensor, seq_index: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """(log s of each token's response, the response's count of kept tokens), both per token ``[N]``: log s_i
    is the mean of the log ratios of its tokens in the loss (``keep``: m ≠ 0; TRL's completion-mask mean),
    differentiable in ``log_ratio``. A token outside the loss adds nothing, whatever its old log-prob."""
    total, count = response_sums(log_ratio, seq_index, keep)
    return total / count.clamp_min(1.0), count


def _ratio(logprob: Tensor, old_logprob: Tensor, seq_index: Tensor | None, keep: Tensor) -> Tensor:
    """ρ per token: exp(logp − logp_old), or its response's s_i with ``seq_index``."""
    if seq_index is None:
        return torch.exp(logprob - old_logprob)
    return torch.exp(_sequence_log_ratio(logprob - old_logprob, seq_index, keep)[0])


def _check_seq_index(n: int, seq_index: Tensor | None, detach: Tensor | None) -> None:
    if seq_index is None:
        return
    if seq_index.shape != (n,) or seq_index.dtype.is_floating_point or bool((seq_index < 0).any()):
        raise ValueError(f"seq_index must be per-token response indices [N] = [{n}] (integers >= 0)")
    if detach is not None:
        raise ValueError("a token action's detach mask cannot act with a sequence-level ratio (seq_index)")


def _masked_sum(mask: Tensor, values: Tensor) -> Tensor:
    # Σ m·x over the masked tokens only: padding may hold inf/NaN (e.g. ρ of a padded token),
    # and 0·inf would be NaN.
    return torch.where(mask != 0, mask * values, torch.zeros_like(values)).sum()


#: The estimators of the reference KL (r = ref − logp): TRL's k3, verl's ``low_var_kl`` (k3 with its two
#: clamps), and verl's other loss estimators k1 = −r (its ``kl``), k2 = r²/2 (its ``mse``) and |r| (``abs``).
KL_ESTIMATORS = ("k3", "low_var_kl", "k1", "k2", "abs")
#: verl's ``low_var_kl`` clamps: the log-ratio to ±20, the per-token KL to at most 10
LOW_VAR_KL_LOG_RATIO, LOW_VAR_KL_MAX = 20.0, 10.0


def _check_kl_estimator(kl_estimator: str) -> str:
    """``kl_estimator`` itself; an unknown name is a ValueError."""
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    return kl_estimator


def _kl_per_token(log_r: Tensor, estimator: str) -> tuple[Tensor, Tensor]:
    """(value, ∂value/∂logp) of the per-token KL estimate at r = ``log_r`` = ref − logp (∂r/∂logp = −1).

    k3 = e^r − r − 1, ∂ = 1 − e^r; ``low_var_kl`` the same at r clamped to ±20, capped at 10, ∂ = 0
    where a clamp binds; k1 = −r, ∂ = 1; k2 = r²/2, ∂ = −r; abs = |r|, ∂ = −sign(r) (0 at r = 0, as
    autograd's)."""
    if estimator == "k1":
        return -log_r, torch.ones_like(log_r)
    if estimator == "k2":
        return 0.5 * log_r * log_r, -log_r
    if estimator == "abs":
        return log_r.abs(), -torch.sign(log_r)
    if estimator == "low_var_kl":
        bounded = log_r.clamp(-LOW_VAR_KL_LOG_RATIO, LOW_VAR_KL_LOG_RATIO)
        e = torch.exp(bounded)
        k3 = e - bounded - 1.0
        slope = torch.where((bounded != log_r) | (k3 > LOW_VAR_KL_MAX), torch.zeros_like(k3), 1.0 - e)
        return k3.clamp(max=LOW_VAR_KL_MAX), slope
    e = torch.exp(log_r)
    return e - log_r - 1.0, 1.0 - e


def _kl_loss(
    logprob: Tensor, ref_logprob: Tensor | None, m: Tensor, N: Tensor, estimator: str = "k3"
) -> Tensor:
    """L_KL = (1/N) Σ m · k(ref − logp) with the estimator k of :func:`_kl_per_token`; 0 without a
    reference. Its gradient is autograd's (the fused path's closed form is checked against it)."""
    if ref_logprob is None:
        return torch.zeros((), dtype=logprob.dtype, device=logprob.device)
    value, _ = _kl_per_token(ref_logprob.to(logprob.dtype) - logprob, estimator)
    return _masked_sum(m, value) / N


@torch.no_grad()
def _clip_fractions(
    ratio: Tensor, A: Tensor, m: Tensor, N: Tensor, clip_low: float, upper: float, dual_clip: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Token shares where the low bound binds (A < 0, ρ < 1−ε_low), the high one (A > 0, ρ > 1+ε_high)
    and the dual clip's (A < 0, ρ > c)."""
    r = ratio.detach()
    low_active = ((A < 0) & (r < 1.0 - clip_low)).to(r.dtype)
    high_active = ((A > 0) & (r > upper)).to(r.dtype)
    dual = (
        _masked_sum(m, ((A < 0) & (r > dual_clip)).to(r.dtype)) / N
        if dual_clip is not None
        else r.new_zeros(())
    )
    return _masked_sum(m, low_active) / N, _masked_sum(m, high_active) / N, dual


def _clipped_surrogate(
    ratio_hat: Tensor, A: Tensor, clip_low: float, upper: float, dual_clip: float | None, w: Tensor | None
) -> Tensor:
    """min(ρ̂A, clip(ρ̂, 1−ε_low, 1+ε_high)·A), bounded below at c·A where A < 0 (the dual clip), times w."""
    surrogate = torch.minimum(ratio_hat * A, torch.clamp(ratio_hat, 1.0 - clip_low, upper) * A)
    if dual_clip is not None:
        surrogate = torch.where(A < 0, torch.maximum(surrogate, dual_clip * A), surrogate)
    return surrogate if w is None else surrogate * w


def _constants(old: Tensor, advantages: Tensor, ref: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The loss's inputs besides logprob and entropy, detached, as the fused path takes them (an old
    log-prob still on logprob's graph made ρ ≡ 1 and the gradient exactly 0)."""
    return old.detach(), advantages.detach(), None if ref is None else ref.detach()


def policy_loss(
    logprob: Tensor,
    entropy: Tensor,
    old_logprob: Tensor,
    advantages: Tensor,
    coef: Tensor | float,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    *,
    num_tokens: int | float | Tensor | None = None,
    ref_logprob: Tensor | None = None,
    kl_coef: float = 0.0,
    token_action: TokenAction | None = None,
    loss_weight: Tensor | None = None,
    seq_index: Tensor | None = None,
    dual_clip: float | None = None,
    kl_estimator: str = "k3",
) -> PolicyLossOutput:
    """Reference loss L = L_pg + L_H (+ β·L_KL) of design.md §2 on per-token tensors ``[N]``, by autograd.

    ``coef``: α per token or one scalar; ``mask``: m (0/1); optional, as in the module docstring:
    ``token_action`` (w, d, c), ``loss_weight`` (u), ``seq_index`` (GSPO), ``dual_clip`` (c),
    ``kl_estimator`` (one of :data:`KL_ESTIMATORS`: ``k3``, TRL's, by default)."""
    _check_clip(clip_low, clip_high, dual_clip)
    _check_kl_estimator(kl_estimator)
    n_tok = logprob.shape[0] if logprob.dim() == 1 else -1
    if logprob.dim() != 1:
        raise ValueError(f"logprob must be [N], got {tuple(logprob.shape)}")
    coef_t = torch.as_tensor(coef, dtype=logprob.dtype, device=logprob.device).detach()
    old_logprob, advantages, ref_logprob = _constants(old_logprob, advantages, ref_logprob)
    _check_token_tensors(
        n_tok,
        entropy=entropy,
        old_logprob=old_logprob,
        advantages=advantages,
        coef=coef_t,
        mask=mask,
        ref_logprob=ref_logprob,
    )
    m, A = mask.expand(n_tok).to(logprob.dtype), advantages.to(logprob.dtype)  # a scalar mask: every token's
    N = _token_count(m, num_tokens).to(logprob.dtype)
    u = _loss_weight_tensor(loss_weight, n_tok, logprob.dtype, logprob.device)
    mu = m if u is None else m * u  # the loss terms' weights; the clip fractions count tokens (m)
    # Padded tokens (m = 0) may carry any old/ref log-prob (even −inf): give them ρ = 1 and KL = 0
    # so that no inf reaches the graph (0·inf would be a NaN gradient).
    pad = m == 0
    old_logprob = torch.where(pad, logprob.detach(), old_logprob.to(logprob.dtype))
    if ref_logprob is not None:
        ref_logprob = torch.where(pad, logprob.detach(), ref_logprob.to(logprob.dtype))

    w, d, c = _action_tensors(token_action, n_tok, logprob.dtype, logprob.device)
    _check_seq_index(n_tok, seq_index, d)
    # ρ = exp(logp − logp_old) (a token's) or s_i (its response's); ρ̂ = sg(ρ) on the detached tokens
    ratio = _ratio(logprob, old_logprob, seq_index, m != 0)
    ratio_hat = ratio if d is None else torch.where(d, ratio.detach(), ratio)
    # L_pg = −(1/N) Σ m · w · min(ρ̂A, clip(ρ̂, 1−ε_low, 1+ε_high)·A)
    upper = _upper_bound(clip_high, logprob.dtype)
    surrogate = _clipped_surrogate(ratio_hat, A, clip_low, upper, dual_clip, w)
    pg_loss = -_masked_sum(mu, surrogate) / N
    if c is not None:  # + (1/N) Σ m · c · |logp − logp_old|
        pg_loss = pg_loss + _masked_sum(mu, c * (logprob - old_logprob).abs()) / N
    # L_H = −(1/N) Σ m · α · H
    entropy_loss = -_masked_sum(mu, coef_t * entropy.to(logprob.dtype)) / N
    kl_loss = _kl_loss(logprob, ref_logprob, mu, N, kl_estimator)
    loss = pg_loss + entropy_loss
    if ref_logprob is not None and kl_coef != 0.0:
        loss = loss + kl_coef * kl_loss
    low, high, dual = _clip_fractions(ratio, A, m, N, clip_low, upper, dual_clip)
    return PolicyLossOutput(
        loss=loss,
        pg_loss=pg_loss.detach(),
        entropy_loss=entropy_loss.detach(),
        kl_loss=kl_loss.detach(),
        clip_frac_low=low,
        clip_frac_high=high,
        logprob=logprob.detach(),
        entropy=entropy.detach(),
        clip_frac_dual=dual,
    )


def _token_loss_grads(
    logprob: Tensor,
    old_logprob: Tensor,
    advantages: Tensor,
    coef: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    N: Tensor,
    ref_logprob: Tensor | None,
    kl_coef: float,
    action: tuple[Tensor | None, Tensor | None, Tensor | None] = (None, None, None),
    seq_index: Tensor | None = None,
    dual_clip: float | None = None,
    keep: Tensor | None = None,
    kl_estimator: str = "k3",
) -> tuple[Tensor, Tensor]:
    """(∂L/∂logp, ∂L/∂H) per token, in closed form. ``mask`` weighs the terms (m·u); ``keep`` says which
    tokens are in the loss (m ≠ 0; default ``mask != 0``): a token of weight u = 0 still counts in its
    response's sequence ratio, as in :func:`policy_loss`.

    With ``seq_index`` (every token of the batch at once: a response's ratio needs all of its tokens)
    the policy term's gradient is the sequence ratio's: each token's ∂L_pg/∂ log s_i (the token-level
    expression with ρ = s_i), summed over the response and spread back over its tokens, 1/|o_i| each.

    ∂L_pg/∂logp = −(m/N)·w·(1−d)·ρ·A where the unclipped branch ρA is the min, else 0
                  (the clipped branch is constant in logp: low bound binds for A<0, ρ<1−ε_low;
                  high bound binds for A>0, ρ>1+ε_high; the dual clip for A<0, ρ>c),
                  + (m/N)·c·sign(logp − logp_old)
    ∂L_H/∂H     = −(m/N)·α
    ∂(β·L_KL)/∂logp = β·(m/N)·∂k/∂logp, the estimator's slope (:func:`_kl_per_token`; k3's
                      1 − exp(ref − logp), 0 where low_var_kl's clamps bind)
    """
    tok_weight, detach, tok_kl = action
    keep = mask != 0 if keep is None else keep
    ratio = _ratio(logprob, old_logprob, seq_index, keep)
    upper = _upper_bound(clip_high, ratio.dtype)
    clipped = ((advantages < 0) & (ratio < 1.0 - clip_low)) | ((advantages > 0) & (ratio > upper))
    if dual_clip is not None:
        clipped = clipped | ((advantages < 0) & (ratio > dual_clip))
    if detach is not None:
        clipped = clipped | detach
    w = torch.where(mask != 0, mask / N, torch.zeros_like(mask))
    g_lp = torch.where(clipped | (w == 0), torch.zeros_like(ratio), -w * ratio * advantages)
    if tok_weight is not None:
        g_lp = g_lp * tok_weight
    if seq_index is not None:  # ∂ log s_i / ∂ logp_t = 1/|o_i| for each token t of response i in the loss
        g_lp = _spread_over_responses(g_lp, seq_index, keep)
    if tok_kl is not None:
        g_lp = g_lp + torch.where(
            w == 0, torch.zeros_like(ratio), w * tok_kl * torch.sign(logprob - old_logprob)
        )
    if ref_logprob is not None and kl_coef != 0.0:
        _, slope = _kl_per_token(ref_logprob - logprob, kl_estimator)
        g_kl = torch.where(w == 0, torch.zeros_like(ratio), kl_coef * w * slope)
        g_lp = g_lp + g_kl
    g_H = -w * coef
    return g_lp, g_H


def _spread_over_responses(g: Tensor, seq_index: Tensor, keep: Tensor) -> Tensor:
    """Each response's sum of ``g`` over its kept tokens, divided among them — the kept tokens' mean of
    ``g`` — on each kept token; 0 on the others."""
    mean, _ = _sequence_log_ratio(g, seq_index, keep)
    return torch.where(keep, mean, torch.zeros_like(mean))


def _grads_of(
    logprob: Tensor,
    token_inputs: tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor],
    action: tuple[Tensor | None, Tensor | None, Tensor | None],
    N: Tensor,
    bounds: tuple[float, float, float, float | None, str],
    seq_index: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`_token_loss_grads` on the fused loss's packed inputs (old, A, α, m·u, ref, m ≠ 0; ``bounds``:
    ε_low, ε_high, β, dual clip, the KL estimator)."""
    old, adv, coef, mask, ref, keep = token_inputs
    clip_low, clip_high, kl_coef, dual_clip, kl_estimator = bounds
    return _token_loss_grads(
        logprob,
        old,
        adv,
        coef,
        mask,
        clip_low,
        clip_high,
        N,
        ref,
        kl_coef,
        action,
        seq_index,
        dual_clip,
        keep,
        kl_estimator,
    )


class _FusedPolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        token_inputs: tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor],
        action: tuple[Tensor | None, Tensor | None, Tensor | None],
        seq_index: Tensor | None,
        N: Tensor,
        clip_low: float,
        clip_high: float,
        temperature: float,
        chunk_size: int,
        kl: tuple[float, str],
        need_grad: tuple[bool, bool, bool],
        dual_clip: float | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = hidden.shape[0]
        cdtype = _compute_dtype(hidden.dtype)
        logprob = torch.empty(n, dtype=cdtype, device=hidden.device)
        entropy = torch.empty(n, dtype=cdtype, device=hidden.device)
        need_h, need_w, need_b = need_grad
        # under float16 autocast this gradient, taken before the loss scaler's factor, leaves autocast and
        # is held in fp32: its ~1/N entries underflowed in fp16 (bf16 has fp32's range and stays as it is)
        exact = fp16_autocast(hidden.device)
        h_dtype = cdtype if exact else hidden.dtype
        w_exact = weight.to(cdtype) if exact else weight  # once, not per chunk (a no-op for fp32 weights)
        grad_h = torch.empty(hidden.shape, dtype=h_dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=cdtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=cdtype, device=weight.device) if need_b else None
        any_grad = need_h or need_w or need_b
        grads: tuple[Tensor, Tensor] | None = None
        bounds = (clip_low, clip_high, kl[0], dual_clip, kl[1])
        if seq_index is not None and any_grad:
            # a response's ratio needs every one of its tokens' log-probs: a first pass reads them all (one
            # more pass of the LM head), then the second computes each chunk's gradient from them
            every_lp, _ = fused_logprob_entropy(  # under forward's no-grad: values only
                hidden, weight, targets, temperature=temperature, chunk_size=chunk_size, bias=bias
            )
            grads = _grads_of(every_lp, token_inputs, action, N, bounds, seq_index)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h = hidden[start:end]
            tgt = targets[start:end]
            z = chunk_logits(h, weight, bias, temperature, cdtype)
            p_log_p, p, lp, ent = chunk_stats(z, tgt)
            logprob[start:end] = lp
            entropy[start:end] = ent
            if any_grad:
                if grads is not None:
                    g_lp, g_H = grads[0][start:end], grads[1][start:end]
                else:
                    part = tuple(None if x is None else x[start:end] for x in token_inputs)
                    acts = tuple(None if a is None else a[start:end] for a in action)
                    g_lp, g_H = _grads_of(lp, part, acts, N, bounds)  # type: ignore[arg-type]
                skip_H = not bool(torch.any(g_H != 0))
                dz = chunk_dlogits(p_log_p, p, tgt, ent, g_lp, None if skip_H else g_H, temperature)
                with torch.autocast(hidden.device.type, enabled=False) if exact else contextlib.nullcontext():
                    h_in = h.to(cdtype) if exact else h
                    accumulate_param_grads(dz, h_in, w_exact, grad_h, grad_w, grad_b, start, end)
                del dz
            del z, p_log_p, p
        # Saved like activations, so autograd frees them after backward (unless retain_graph).
        ctx.param_dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(
            grad_h,
            None if grad_w is None else grad_w.to(cdtype if exact else weight.dtype),
            None if grad_b is None or bias is None else grad_b.to(cdtype if exact else bias.dtype),
        )
        ctx.mark_non_differentiable(logprob, entropy)
        # The loss value itself comes from the reference formula on the per-token values (cheap,
        # [N] tensors), so both paths share one definition of the number.
        loss_proxy = torch.zeros((), dtype=cdtype, device=hidden.device)
        return loss_proxy, logprob, entropy

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g_loss: Tensor, _g_lp: Tensor | None, _g_H: Tensor | None
    ) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = g_loss.reshape(())
        grads = zip((grad_h, grad_w, grad_b), ctx.param_dtypes, strict=True)
        out = [None if g is None else (g * scale.to(g.dtype)).to(dtype) for g, dtype in grads]
        return (*out, None, None, None, None, None, None, None, None, None, None, None, None)


def _per_token_inputs(
    n: int,
    cdtype: torch.dtype,
    dev: torch.device,
    old_logprob: Tensor,
    advantages: Tensor,
    coef: Tensor | float,
    mask: Tensor,
    ref_logprob: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """The per-token inputs of the fused loss, checked, detached and expanded to ``[N]`` in ``cdtype``."""
    coef_t = torch.as_tensor(coef, dtype=cdtype, device=dev)
    _check_token_tensors(
        n, old_logprob=old_logprob, advantages=advantages, coef=coef_t, mask=mask, ref_logprob=ref_logprob
    )

    def per_token(x: Tensor) -> Tensor:
        return x.detach().to(device=dev, dtype=cdtype).expand(n).contiguous()

    ref_t = None if ref_logprob is None else per_token(ref_logprob)
    return per_token(old_logprob), per_token(advantages), per_token(coef_t), per_token(mask), ref_t


def fused_policy_loss(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    old_logprob: Tensor,
    advantages: Tensor,
    coef: Tensor | float,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    temperature: float = 1.0,
    *,
    chunk_size: int | None = None,
    num_tokens: int | float | Tensor | None = None,
    ref_logprob: Tensor | None = None,
    kl_coef: float = 0.0,
    bias: Tensor | None = None,
    token_action: TokenAction | None = None,
    loss_weight: Tensor | None = None,
    seq_index: Tensor | None = None,
    dual_clip: float | None = None,
    kl_estimator: str = "k3",
) -> PolicyLossOutput:
    """:func:`policy_loss` (its options) from hidden states ``[N, d]`` and the LM head, equal in value and
    gradient to ``policy_loss(*token_logprob_entropy(hidden @ weight.T + bias, targets, T), ...)`` but
    never holding ``[N, V]`` logits: the gradient w.r.t. hidden/weight/bias is computed in forward and
    stored until ``loss.backward()`` (call it once) scales it; a sequence ratio costs one more head pass."""
    t = _check_temperature(temperature)
    _check_clip(clip_low, clip_high, dual_clip)
    chunk_size = default_chunk_size(weight.shape[0]) if chunk_size is None else chunk_size
    _validate(hidden, weight, targets, bias, chunk_size)
    n, cdtype = hidden.shape[0], _compute_dtype(hidden.dtype)
    old_t, adv_t, coef_tok, mask_t, ref_t = _per_token_inputs(
        n, cdtype, hidden.device, old_logprob, advantages, coef, mask, ref_logprob
    )
    N = _token_count(mask_t, num_tokens).to(cdtype)
    u = _loss_weight_tensor(loss_weight, n, cdtype, hidden.device)
    action = _action_tensors(token_action, n, cdtype, hidden.device)
    _check_seq_index(n, seq_index, action[1])
    seq_t = None if seq_index is None else seq_index.to(device=hidden.device, dtype=torch.long)
    need_grad = tuple(
        torch.is_grad_enabled() and x is not None and x.requires_grad for x in (hidden, weight, bias)
    )
    proxy, logprob, entropy = _FusedPolicyLoss.apply(
        hidden.contiguous(),
        weight.contiguous(),
        None if bias is None else bias.contiguous(),
        targets.long().contiguous(),
        (old_t, adv_t, coef_tok, mask_t if u is None else mask_t * u, ref_t, mask_t != 0),  # m·u, and m ≠ 0
        action,
        seq_t,
        N,
        clip_low,
        clip_high,
        t,
        chunk_size,
        (float(kl_coef), _check_kl_estimator(kl_estimator)),  # β and its estimator
        need_grad,
        None if dual_clip is None else float(dual_clip),
    )
    parts = policy_loss(
        logprob,
        entropy,
        old_t,
        adv_t,
        coef_tok,
        mask_t,
        clip_low,
        clip_high,
        num_tokens=N,
        ref_logprob=ref_t,
        kl_coef=kl_coef,
        token_action=token_action,
        loss_weight=u,
        seq_index=seq_t,
        dual_clip=dual_clip,
        kl_estimator=kl_estimator,
    )
    # loss = value of the reference formula + proxy (0 in value, carries the precomputed gradient).
    return dataclasses.replace(parts, loss=parts.loss.detach() + proxy, logprob=logprob, entropy=entropy)
