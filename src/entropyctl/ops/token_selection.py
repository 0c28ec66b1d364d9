"""Per-token statistics, token actions and exact GLOBAL token selection.

A token-level entropy method (Clip-Cov, KL-Cov, high-entropy-token training) picks tokens of the
optimizer step's batch by a per-token score and changes how those tokens enter the loss. The
selection is over the *global* batch (every process, every micro-batch), never per rank: every
rank gathers the few per-token statistics the selection needs (k floats per token, no vocabulary
dimension), runs the single-process selection on the identical global vectors, and keeps its own
slice. The selected set is therefore exactly the single-process one, by construction.

Cost with W processes: two ``all_gather`` calls per selection (the per-rank token counts, then the
statistics padded to the largest count), k·N_global floats received per rank, and O(N_global log
N_global) local work for a top-k. No second forward pass: the statistics come from the no-grad
log-prob/entropy pass the step makes anyway (old log-probs).

The statistics of one token t (all ``[N]``): log-prob ``logp_t`` and entropy ``H_t`` of the current
policy (detached), old log-prob ``logp_old_t``, advantage ``A_t``, mask ``m_t``.

    covariance (Cui et al. 2025):  Cov_t = (A_t − Ā)·(logp_t − l̄),   Ā, l̄ = masked means over the batch
    top fraction:                  the k = max(1, ⌊ρ·Σm⌋) masked tokens with the largest score
                                   (ties: the lower global index first)
    random band subset (Clip-Cov): of the eligible tokens with ω_low < Cov_t < ω_high, a uniformly
                                   random subset of min(K, max(1, ⌊r·Σm⌋)), drawn from a generator
                                   seeded by (seed, step): the same draw on every rank
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "TokenStatistics",
    "TokenAction",
    "TokenCollective",
    "LOCAL",
    "gather_token_columns",
    "select_globally",
    "covariance_scores",
    "top_fraction",
    "random_band_subset",
    "selection_count",
]


@dataclass(frozen=True)
class TokenStatistics:
    """What a controller sees of this rank's tokens of one optimizer step (all ``[n]``, detached).

    ``logprob`` and ``entropy``: the current policy at temperature T; ``old_logprob``: the rollout
    policy's (equal to ``logprob`` on the first update of a step); ``advantages``: A of the token's
    sequence; ``mask``: 1 for a response token that enters the loss, 0 for padding.
    """

    logprob: Tensor
    old_logprob: Tensor
    entropy: Tensor
    advantages: Tensor
    mask: Tensor
    step: int

    def __post_init__(self) -> None:
        n = self.logprob.shape
        for name in ("old_logprob", "entropy", "advantages", "mask"):
            shape = getattr(self, name).shape
            if len(n) != 1 or shape != n:
                raise ValueError(
                    f"TokenStatistics.{name}: expected a per-token tensor of shape {tuple(n)} like "
                    f"logprob (1-D), got {tuple(shape)}"
                )


@dataclass(frozen=True)
class TokenAction:
    """How the loss treats each token (all ``[n]``, aligned with :class:`TokenStatistics`; None = no-op).

    weight:  w_t ≥ 0 multiplies the token's clipped-surrogate term (value and gradient).
    detach:  d_t (bool): the token's surrogate keeps its value but passes no gradient (ρ_t → sg(ρ_t)).
    kl_coef: c_t ≥ 0 adds c_t·|logp_t − logp_old_t| to the token's loss (KL-Cov's penalty).
    """

    weight: Tensor | None = None
    detach: Tensor | None = None
    kl_coef: Tensor | None = None

    def rows(self, index: Tensor) -> TokenAction:
        """The action of a subset of the tokens (e.g. one micro-batch's), by index or bool mask."""

        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return TokenAction(weight=take(self.weight), detach=take(self.detach), kl_coef=take(self.kl_coef))

    def selected(self) -> Tensor | None:
        """Bool ``[n]``: tokens the action touches (weight ≠ 1, detached or penalised); None if no-op."""
        parts = []
        if self.weight is not None:
            parts.append(self.weight != 1)
        if self.detach is not None:
            parts.append(self.detach.bool())
        if self.kl_coef is not None:
            parts.append(self.kl_coef != 0)
        if not parts:
            return None
        out = parts[0]
        for part in parts[1:]:
            out = out | part
        return out


@dataclass(frozen=True)
class TokenCollective:
    """The one collective a global selection needs, plus this process's place.

    ``all_gather(t)`` returns ``[W, *t.shape]``, every rank's ``t`` in rank order (the tensor has the
    same shape on every rank), as Lightning's ``LightningModule.all_gather`` / Fabric's
    ``all_gather`` do. ``None`` (with ``world_size`` 1) is a single process.
    """

    rank: int = 0
    world_size: int = 1
    all_gather: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"TokenCollective: need 0 <= rank < world_size, got rank={self.rank}, "
                f"world_size={self.world_size}"
            )
        if self.world_size > 1 and self.all_gather is None:
            raise ValueError(f"TokenCollective: world_size={self.world_size} needs an all_gather callable")


#: A single process.
LOCAL = TokenCollective()


def gather_token_columns(columns: Tensor, collective: TokenCollective) -> tuple[Tensor, int]:
    """Concatenate every rank's ``[k, n_r]`` columns in rank order: ``([k, Σ n_r], offset of this rank)``.

    Two ``all_gather`` calls: the counts ``n_r``, then the columns padded to ``max n_r``.
    """
    if columns.dim() != 2:
        raise ValueError(f"columns must be [k, n], got {tuple(columns.shape)}")
    if collective.world_size == 1 or collective.all_gather is None:
        return columns, 0
    gather = collective.all_gather
    count = torch.tensor([columns.shape[1]], dtype=torch.long, device=columns.device)
    counts = [int(c) for c in gather(count).reshape(-1).tolist()]
    if len(counts) != collective.world_size:
        raise RuntimeError(
            f"all_gather returned {len(counts)} counts for world_size={collective.world_size}: "
            "it must stack every rank's tensor along a new first dimension"
        )
    width = max(counts)
    padded = columns.new_zeros((columns.shape[0], width))
    padded[:, : columns.shape[1]] = columns
    stacked = gather(padded).reshape(collective.world_size, columns.shape[0], width)
    parts = [stacked[r, :, : counts[r]] for r in range(collective.world_size)]
    return torch.cat(parts, dim=1), sum(counts[: collective.rank])


def select_globally(
    columns: Tensor, collective: TokenCollective, select: Callable[[Tensor], Tensor]
) -> Tensor:
    """Run ``select`` (global ``[k, N]`` columns → bool ``[N]``) on the gathered columns; return this
    rank's slice ``[n]``. With one process this is ``select(columns)``."""
    global_columns, offset = gather_token_columns(columns, collective)
    chosen = select(global_columns)
    if chosen.shape != global_columns.shape[1:]:
        raise RuntimeError(
            f"selection returned shape {tuple(chosen.shape)}, expected {tuple(global_columns.shape[1:])}"
        )
    return chosen[offset : offset + columns.shape[1]]


def selection_count(fraction: float, valid_tokens: int) -> int:
    """k = max(1, ⌊fraction·Σm⌋) for a batch with at least one valid token, else 0 (as verl: ``int()``)."""
    if valid_tokens <= 0:
        return 0
    return max(1, int(fraction * valid_tokens))


def covariance_scores(advantages: Tensor, logprob: Tensor, mask: Tensor) -> Tensor:
    """Cov_t = (A_t − Ā)(logp_t − l̄) with the masked means Ā, l̄ over the given tokens; −inf where m = 0.

    Computed in fp64 so that the score (and so the selection) does not depend on the summation order.
    """
    valid = mask != 0
    a = advantages.detach().to(torch.float64)
    lp = logprob.detach().to(torch.float64)
    count = valid.sum().clamp_min(1)
    a_mean = torch.where(valid, a, torch.zeros_like(a)).sum() / count
    lp_mean = torch.where(valid, lp, torch.zeros_like(lp)).sum() / count
    cov = (a - a_mean) * (lp - lp_mean)
    return torch.where(valid, cov, torch.full_like(cov, -torch.inf))


def top_fraction(scores: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """Bool ``[N]``: the k = max(1, ⌊fraction·Σm⌋) masked tokens with the largest score.

    Ties go to the lower index (a stable descending sort), so the set is a function of the values.
    """
    valid = mask != 0
    k = selection_count(fraction, int(valid.sum()))
    chosen = torch.zeros_like(valid)
    if k == 0:
        return chosen
    ranked = torch.where(
        valid, scores.to(torch.float64), torch.full_like(scores, -torch.inf, dtype=torch.float64)
    )
    order = torch.sort(ranked, descending=True, stable=True).indices
    chosen[order[:k]] = True
    return chosen & valid


def random_band_subset(
    scores: Tensor,
    eligible: Tensor,
    lower: float,
    upper: float,
    fraction: float,
    valid_tokens: int,
    seed: int,
) -> Tensor:
    """Bool ``[N]``: a random subset of min(K, max(1, ⌊fraction·valid_tokens⌋)) of the K eligible tokens
    with ``lower < score < upper``, drawn by a CPU generator seeded with ``seed`` (same draw on every rank)."""
    candidates = torch.nonzero(eligible.bool() & (scores > lower) & (scores < upper)).reshape(-1)
    chosen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    count = min(selection_count(fraction, valid_tokens), int(candidates.numel()))
    if count == 0:
        return chosen
    generator = torch.Generator(device="cpu").manual_seed(int(seed) % 2**63)
    pick = torch.randperm(int(candidates.numel()), generator=generator)[:count]
    chosen[candidates[pick.to(candidates.device)]] = True
    return chosen
