"""The RLVR step as typed phases: collect → score → plan → update → observe → log.

Each phase takes and returns the dataclasses below. The ones that need no model or optimizer are plain
functions here (:func:`score`, :func:`plan_groups`, :func:`observe`, :func:`metrics_row`); collecting
rollouts and the optimizer updates are :class:`~entropyctl.trainer.module.RLVRModule` methods that
return :class:`Collected` and :class:`Updated`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from entropyctl.controllers.base import EntropyController, EntropyReading, GroupOutcome, Plan
from entropyctl.ops.advantages import batch_reward_std, group_advantages, reward_sums
from entropyctl.rollout.protocol import Completions
from entropyctl.trainer.run_dir import CONTROLLER_PREFIX, SHAPING_PREFIX, float_or_nan
from entropyctl.trainer.stats import EntropyStats

__all__ = [
    "Collected",
    "Scored",
    "Planned",
    "TokenForward",
    "Updated",
    "StepResult",
    "overlong_penalty",
    "shaped_rewards",
    "score",
    "plan_groups",
    "observe",
    "metrics_row",
    "LOCAL_SUMS",
    "CLIP_PARTS",
    "LOSS_PARTS",
    "local_sums",
]


def overlong_penalty(lengths: Tensor, max_new_tokens: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment, added to the reward::

    R_len(y) = 0                                  if |y| ≤ L_max − L_cache
             = (L_max − L_cache − |y|) / L_cache   if L_max − L_cache < |y| ≤ L_max   (down to −1)
    """
    start = max_new_tokens - buffer
    over = (lengths.to(torch.float32) - start).clamp_min(0.0)
    return -(over / buffer).clamp(max=1.0)


@dataclass
class Collected:
    """collect: this rank's P groups of G rollouts (prompt-major rows ``i*G + j``) and their rewards."""

    problems: list[Any]
    completions: Completions
    rewards: Tensor  # [P, G] the verifier's rewards in [0, 1]
    dropped: int  # all-equal groups dropped by dynamic sampling
    fillers: int  # dropped groups used anyway to fill the batch (plain GRPO for them)
    shaping: Tensor | None = None  # [P, G, K] each shaping reward's raw score (reward.shaping), or None
    #: [P·G] each response's Σ_t (log π_old − log π_ref), the KL in the reward (algorithm.kl_reward_coef)
    kl_sums: Tensor | None = None


@dataclass
class Scored:
    """score: shaped rewards, group accuracies and advantages."""

    shaped: Tensor  # [P, G] verifier reward + weighted shaping rewards + overlong penalty − KL penalty
    accuracy: Tensor  # [P] the share of a group's answers scoring 1
    advantages: Tensor  # [P, G]
    lengths: Tensor  # [P*G] response lengths, EOS included
    truncated: Tensor  # [P*G] bool
    levels: Tensor  # [P] each group's difficulty level
    #: [P, G] whether the response's advantage is nonzero before the KL penalty (algorithm.kl_reward_coef):
    #: what algorithm.skip_no_signal reads; None: the advantages themselves
    signal: Tensor | None = None


@dataclass
class Planned:
    """plan: the controller's plan and the per-sequence quantities the loss reads (rows ``i*G + j``)."""

    plan: Plan
    seq_adv: Tensor  # [P*G]
    seq_coef: Tensor  # [P*G]
    seq_level: Tensor  # [P*G]
    seq_mask: Tensor  # [P*G] 0 for sequences left out of the loss (overlong: mask)
    seq_signal: Tensor | None = None  # [P*G] Scored.signal, when the KL in the reward is on


@dataclass
class TokenForward:
    """The training forward over the response tokens: hidden states and the LM head (fused path) or
    full logits (reference path)."""

    targets: Tensor
    seq_index: Tensor
    hidden: Tensor | None = None
    weight: Tensor | None = None
    bias: Tensor | None = None
    logits: Tensor | None = None

    @property
    def fused(self) -> bool:
        return self.hidden is not None


#: The loss parts and clip fractions summed over mini-batches (token-weighted) in :class:`Updated`.
LOSS_PARTS = ("clip_low", "clip_high", "loss", "pg", "ent", "kl", "clip_dual")
#: the loss parts that are token shares (weighted by tokens whatever algorithm.loss_agg averages over)
CLIP_PARTS = ("clip_low", "clip_high", "clip_dual")

#: ``algorithm.rollout_correction``: sums over the loss's tokens (first epoch) of 1, the k3 estimate of
#: KL(sampler ‖ trainer), |log-prob difference|, the importance weight, and 1 where a bound acted.
MISMATCH_SUMS = ("is_tokens", "is_kl", "is_abs_diff", "is_weight", "is_bounded")


@dataclass
class Updated:
    """update: what the optimizer steps measured (this rank's share; summed over ranks by log)."""

    stats: EntropyStats  # entropy and coefficient sums per level, first epoch: every token once
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_PARTS, 0.0))
    mismatch: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MISMATCH_SUMS, 0.0))
    grad_norm: float = math.nan
    skipped: bool = False  # algorithm.skip_no_signal left the step alone (no weight moved)
    entropy_sum: float = 0.0  # this rank's Σ entropy x mask (the DDP audit in ranks/rank<r>.json)
    token_sum: float = 0.0
    lr: float = math.nan


@dataclass
class StepResult:
    """One RLVR step, handed to callbacks as ``outputs["step"]`` in ``on_train_batch_end``."""

    step: int
    collected: Collected
    scored: Scored
    planned: Planned
    reading: EntropyReading
    row: dict[str, Any]


def shaped_rewards(
    rewards: Tensor, shaping: Tensor | None, weights: Sequence[float], lengths: Tensor, rollout: Any
) -> Tensor:
    """The reward the advantages come from, ``[P, G]``: the verifier's ``rewards``, plus Σ_k w_k·score_k of
    ``shaping`` ``[P, G, K]`` (``reward.shaping``), plus DAPO's overlong penalty of the responses'
    ``lengths`` ``[P·G]``, times ``rollout.overlong_penalty_factor``, when ``rollout.overlong == "penalty"``. Also what dynamic sampling compares."""
    P, G = rewards.shape
    shaped = rewards.clone()
    if shaping is not None:
        if shaping.shape != (P, G, len(weights)):
            raise ValueError(f"shaping scores of shape {tuple(shaping.shape)} for {len(weights)} weights")
        w = torch.tensor(list(weights), dtype=shaping.dtype)
        shaped = shaped + (shaping * w).sum(-1).to(shaped.dtype)
    if rollout.overlong == "penalty":
        penalty = overlong_penalty(lengths, rollout.max_new_tokens, rollout.overlong_buffer)
        shaped = shaped + rollout.overlong_penalty_factor * penalty.reshape(P, G)
    return shaped


def score(
    collected: Collected,
    rollout: Any,
    advantage_scale: Literal["group", "batch", "none"],
    *,
    baseline: Literal["mean", "leave-one-out"] = "mean",
    reduce: Callable[[Tensor], Tensor] | None = None,
    shaping_weights: Sequence[float] = (),
    kl_reward_coef: float = 0.0,
) -> Scored:
    """Shaped rewards (:func:`shaped_rewards`), each group's accuracy (partial credit 0 < r < 1 counts in the reward only) and group advantages.
    ``reduce`` sums a float64 tensor over processes (the batch std of ``advantage_scale="batch"`` is the
    global batch's); None: this process's rollouts are the batch. ``shaping_weights``: w_k of
    ``collected.shaping``'s K scores, added to the verifier's reward (not to the accuracy).
    ``kl_reward_coef`` β_r: less β_r times ``collected.kl_sums`` (the KL in the reward)."""
    correct = collected.rewards
    comp = collected.completions
    lengths = comp.response_mask.sum(1)
    shaped = shaped_rewards(correct, collected.shaping, shaping_weights, lengths, rollout)
    signal = None
    if kl_reward_coef and collected.kl_sums is not None:
        # the signal a step has without the penalty (algorithm.skip_no_signal): nonzero before any scale
        signal = group_advantages(shaped, scale="none", baseline=baseline) != 0
        # in float64: a small penalty on a reward of 1 would round away in float32, not on one of 0
        shaped = shaped.double() - kl_reward_coef * collected.kl_sums.double().reshape(shaped.shape)
    accuracy = (correct >= 1.0).to(correct.dtype).mean(dim=1)
    levels = torch.tensor([int(getattr(p, "level", 0)) for p in collected.problems], dtype=torch.long)
    return Scored(
        shaped=shaped,
        accuracy=accuracy,
        advantages=group_advantages(
            shaped,
            scale=advantage_scale,
            baseline=baseline,
            batch_std=_batch_std(shaped, reduce) if advantage_scale == "batch" else None,
        ),
        lengths=lengths,
        truncated=comp.truncated.bool(),
        levels=levels,
        signal=signal,
    )


def _batch_std(shaped: Tensor, reduce: Callable[[Tensor], Tensor] | None) -> float | None:
    """The std of every shaped reward of the global batch: two passes (the mean, then the squares about it)."""
    if reduce is None:
        return None
    count, total, _ = reward_sums(shaped)
    count, total = reduce(torch.tensor([count, total], dtype=torch.float64)).cpu().tolist()
    mean = total / count if count else 0.0
    _, about, squares = reward_sums(shaped, shift=mean)
    about, squares = reduce(torch.tensor([about, squares], dtype=torch.float64)).cpu().tolist()
    return batch_reward_std(count, about, squares)


def plan_groups(controller: EntropyController, scored: Scored, step: int, mask_overlong: bool) -> Planned:
    """Ask the controller for this step's plan and spread it over the sequences (prompt-major rows)."""
    P, G = scored.advantages.shape
    plan = controller.plan(GroupOutcome(accuracy=scored.accuracy, group_size=G, step=step))
    if plan.coef.shape != (P,):
        raise RuntimeError(
            f"controller {controller.name!r} returned coef of shape {tuple(plan.coef.shape)}, expected [{P}]"
        )
    # Filler groups (dynamic sampling ran out of refills) train as in plain GRPO: zero advantage, the
    # entropy term only — so a step never ends with no tokens and the entropy reading stays defined.
    # (With the KL in the reward their advantages are the KL spread's, as any all-equal group's.)
    seq_mask = torch.ones(P * G, dtype=torch.float32)
    if mask_overlong:
        seq_mask = seq_mask * (~scored.truncated).to(torch.float32)
    return Planned(
        plan=plan,
        seq_adv=scored.advantages.reshape(-1).to(torch.float32),
        seq_coef=plan.coef.to(torch.float32).repeat_interleave(G),
        seq_level=scored.levels.repeat_interleave(G),
        seq_mask=seq_mask,
        seq_signal=None if scored.signal is None else scored.signal.reshape(-1),
    )


def observe(controller: EntropyController, stats: EntropyStats, reducer: Any, step: int) -> EntropyReading:
    """The global entropy reading (one collective over ranks), fed back to the controller."""
    stats.reduce(reducer)
    reading = stats.reading(step)
    controller.observe(reading)
    return reading


#: The local sums :func:`local_sums` packs (in this order) for the one metrics collective; the
#: per-level (accuracy sum, group count) pairs follow them.
LOCAL_SUMS = (
    "reward",
    "rollouts",
    "length",
    "truncated",
    "dropped",
    "fillers",
    *LOSS_PARTS,
    *MISMATCH_SUMS,
    "no_answer",
    "parse_error",
    "timeout",
    "kl_reward",
    "kl_reward_token",
)


def local_sums(
    collected: Collected,
    scored: Scored,
    updated: Updated,
    reward_metrics: Mapping[str, float],
    levels: Sequence[int],
) -> list[float]:
    """This rank's sums for the metrics row, in :data:`LOCAL_SUMS` order, then per level, then each shaping
    reward's sum of raw scores."""
    local = [
        float(scored.shaped.sum()),
        float(collected.rewards.numel()),
        float(scored.lengths.float().sum()),
        float(scored.truncated.sum()),
        float(collected.dropped),
        float(collected.fillers),
        *(updated.sums[k] for k in LOSS_PARTS),
        *(updated.mismatch[k] for k in MISMATCH_SUMS),
        float(reward_metrics.get("no_answer", 0)),
        float(reward_metrics.get("parse_error", 0)),
        float(reward_metrics.get("timeout", 0)),
        math.nan if collected.kl_sums is None else float(collected.kl_sums.sum()),
        math.nan if collected.kl_sums is None else _token_mean_kl_sum(collected.kl_sums, scored.lengths),
    ]
    for level in levels:
        sel = scored.levels == level
        local += [float(scored.accuracy[sel].sum()), float(sel.sum())]
    if collected.shaping is not None:
        local += [float(v) for v in collected.shaping.double().sum((0, 1))]
    return local


def _token_mean_kl_sum(kl_sums: Tensor, lengths: Tensor) -> float:
    """Σ over responses of each one's per-token mean k1, Σ_t (log π_old − log π_ref) / its tokens (an empty
    response's 0), the sum whose mean over the step's responses the adaptive β_r reads (verl's current_kl)."""
    return float((kl_sums.double() / lengths.double().clamp(min=1).reshape(kl_sums.shape)).sum())


def adapted_kl_coef(beta: float, kl: float, target: float, responses: float, horizon: int) -> float:
    """β_r after one step of the adaptive KL controller (Ziegler et al. 2019, as verl's kl_ctrl.type
    adaptive and OpenRLHF's kl_target run it): β_r · (1 + clip(kl / target − 1, −0.2, 0.2) · responses /
    horizon), ``kl`` the step's mean per-token KL over its ``responses``. A reading that is not finite
    leaves β_r as it is."""
    if not math.isfinite(kl):
        return beta
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * responses / horizon)


def _mismatch_means(g: Mapping[str, float]) -> dict[str, float]:
    n = g["is_tokens"]
    names = {"sampler_kl": "is_kl", "sampler_logp_diff": "is_abs_diff"}
    names |= {"is_weight_mean": "is_weight", "is_bounded_frac": "is_bounded"}
    return {column: g[key] / n if n > 0 else math.nan for column, key in names.items()}


def metrics_row(
    step: int,
    packed: Sequence[float],
    reading: EntropyReading,
    updated: Updated,
    controller_metrics: Mapping[str, Any],
    levels: Sequence[int],
    timers: Mapping[str, float],
    shaping_labels: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``metrics.csv`` row (columns: :func:`~entropyctl.trainer.run_dir.metric_columns`) from the
    globally summed :func:`local_sums` (``packed``)."""
    g = dict(zip(LOCAL_SUMS, packed, strict=False))
    end_levels = len(LOCAL_SUMS) + 2 * len(levels)
    per_level, shaping = packed[len(LOCAL_SUMS) : end_levels], packed[end_levels:]
    cm, n = controller_metrics, g["rollouts"]
    row: dict[str, Any] = {
        "step": step,
        "reward": g["reward"] / n,  # the shaped reward the advantages come from
        # the share of rollouts the verifier scored 1 = mean acc_i (every group has G rollouts)
        "accuracy": sum(per_level[0::2]) / max(sum(per_level[1::2]), 1.0),
        "entropy": reading.mean_entropy,
        "target_entropy": float(cm.get("target_entropy", math.nan)),
        "h0": float(cm.get("h0", math.nan)),
        "alpha": float(cm.get("alpha", math.nan)),
        "coef_mean": updated.stats.mean_coef(),
        "clip_frac_low": g["clip_low"],
        "clip_frac_high": g["clip_high"],
        "clip_frac_dual": g["clip_dual"],
        "response_length": g["length"] / n,
        "truncated_frac": g["truncated"] / n,
        # loss parts are normalised by the global token count: their sum over ranks is the global value
        "loss": g["loss"],
        "pg_loss": g["pg"],
        "entropy_loss": g["ent"],
        "kl_loss": g["kl"],
        # algorithm.kl_reward_coef: the mean over responses of Σ_t (log π_old − log π_ref) (NaN when off)
        "kl_reward": g["kl_reward"] / n,
        # the mean over responses of each one's per-token mean k1 (algorithm.kl_reward_target reads it)
        "kl_reward_token_mean": g["kl_reward_token"] / n,
        # algorithm.rollout_correction: token means over the loss's tokens of every rank (NaN when off)
        **_mismatch_means(g),
        "grad_norm": updated.grad_norm,
        "skipped": float(updated.skipped),
        "lr": updated.lr,
        "tokens": reading.tokens,
        "dropped_groups": g["dropped"],
        "filler_groups": g["fillers"],
        "reward_no_answer": g["no_answer"],
        "reward_parse_error": g["parse_error"],
        "reward_timeout": g["timeout"],
        "readings_ignored": float(cm.get("readings_ignored", math.nan)),
        # time_sync: pushing the policy's weights into the rollout engine (0 for the HF engine: no copy).
        **{f"time_{k}": timers.get(k, 0.0) for k in ("sync", "rollout", "reward", "update", "step")},
    }
    coef_by_level, entropy_by_level = updated.stats.bucket_coef_means(), updated.stats.bucket_means()
    for i, level in enumerate(levels):
        acc_sum, count = per_level[2 * i], per_level[2 * i + 1]
        row[f"acc_level_{level}"] = acc_sum / count if count > 0 else math.nan
        row[f"coef_level_{level}"] = coef_by_level[level]
        row[f"entropy_level_{level}"] = entropy_by_level[level]
    for label, total in zip(shaping_labels, shaping, strict=True):  # each shaping reward's mean raw score
        row[SHAPING_PREFIX + label] = total / n
    for key, value in cm.items():  # every controller metric, a plugin's included
        row[CONTROLLER_PREFIX + str(key)] = float_or_nan(value)
    return row
