"""A seeded stochastic model of token entropy under an entropy bonus — the "entropy plant".

It drives the controllers' closed-loop tests, the docs and ``entropyctl simulate``. It is a model,
not a measurement: a first-order system with the shape practitioners report for RLVR:

* without a bonus, entropy decays toward collapse (``h_floor``);
* a bonus raises it, with diminishing returns, and it saturates below ``h_max``;
* it responds with a lag: the coefficient applied at step t shows in the reading of step t+1;
* readings are noisy.

One step, with ``c`` the coefficient the loss actually applied (the token-weighted mean of
``plan.coef`` over prompts; harder prompts have longer responses)::

    H_eq(c)  = h_floor + (h_max − h_floor) · (g·c)^n / (1 + (g·c)^n)  g = gain (per unit coefficient)
    H_{t+1}  = clip(H_t + decay·(H_eq(c) − H_t) + noise·H_t·ξ_t, 0, h_max),   ξ_t ~ N(0, 1)

and the step's reading is the entropy of the step's own tokens, ``H_t`` (before the update).
The Hill exponent ``n`` (``hill``, default 1) sets how steep the response is in log c: with n > 1
the bonus does nothing over the decades below 1/g and then acts at once, the elasticity
d log H_eq / d log c reaching ~n/2 and more near 1/g — the dead decades and the cliff of the real runs
(docs/robustness.md, "The bonus acts over about one decade of α").
Options for harder plants (all off by default): ``reading_noise`` (a measurement error on the
reading alone), ``lag`` (the reading reports H_{t−lag}) and ``drift`` (the gain falls as
g_t = gain·exp(−drift·t): the same coefficient buys less entropy as training goes on).
With the defaults (``h_init = 1``, ``h_max = 3``, ``decay = 0.1``, ``gain = 50``) a fixed
α = 1e-4 collapses to ≈ 0.035 nats, α = 0.1 explodes to ≈ 2.5 nats, and the AER target
0.4·H0 = 0.4 needs a token-weighted coefficient of ≈ 0.0029 (dH_eq/dc ≈ 113 nats per unit there).
The controllers' closed-loop tests cover ``gain`` in [25, 100] and ``decay`` in [0.05, 0.2] for
every update rule (the additive rule at its η = 0.002: a larger loop gain η·dH_eq/dc, for instance
η = 0.01 at gain 100, makes it ring or oscillate — the lag the real loop has too), and the default
relative rule on a wider family: gain over 100×, 10–20 % reading noise, one step of lag, drift.

A second response, ``response="rate"``, is an *integrating* plant: the bonus sets how fast the
entropy moves, not where it settles. It is what the collapse runs look like (docs/controllers.md):
without a bonus the entropy keeps falling, a small bonus only slows the fall, and a bonus above the
one that balances the collapse makes it rise for as long as it is applied::

    r(c)      = clip(rate_gain · log(c / balance_t), −collapse, rise_max)     balance_t = balance·exp(drift·t)
    H_{t+1}   = min(H_t · exp(r(c) + noise·ξ_t), h_max)

(``rate_gain``: the change of log H per step per unit of log c; ``collapse``: the fall of log H per
step at c → 0). There is no equilibrium for a fixed c ≠ balance_t: only feedback holds the target,
and the noise makes the entropy a random walk around it. ``drift`` here raises the coefficient that
balances the collapse (the same direction: the bonus buys less as training goes on).

Prompt difficulty: each prompt draws a level from ``difficulty_mix`` (pairs of
``(weight, p_correct)``) and its group accuracy is Binomial(group_size, p_correct) / group_size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from entropyctl.controllers.base import EntropyController, EntropyReading, GroupOutcome, Plan

__all__ = ["EntropyPlant", "Trajectory", "random_outcome", "simulate", "DEFAULT_DIFFICULTY_MIX"]

#: (weight, probability that one rollout is correct): easy, medium and hard prompts.
DEFAULT_DIFFICULTY_MIX: tuple[tuple[float, float], ...] = ((0.3, 0.9), (0.4, 0.5), (0.3, 0.1))


def random_outcome(
    generator: torch.Generator,
    *,
    prompts: int = 32,
    group_size: int = 8,
    step: int = 0,
    difficulty_mix: Sequence[tuple[float, float]] = DEFAULT_DIFFICULTY_MIX,
) -> GroupOutcome:
    """Group accuracies of ``prompts`` prompts whose levels are drawn from ``difficulty_mix``:
    acc_i = Binomial(group_size, p_correct[level_i]) / group_size."""
    weights = torch.tensor([w for w, _ in difficulty_mix], dtype=torch.float64)
    p_correct = torch.tensor([p for _, p in difficulty_mix], dtype=torch.float64)
    levels = torch.multinomial(weights, prompts, replacement=True, generator=generator)
    trials = torch.full((prompts,), float(group_size), dtype=torch.float64)
    correct = torch.binomial(trials, p_correct[levels], generator=generator)
    return GroupOutcome(accuracy=(correct / group_size).to(torch.float32), group_size=group_size, step=step)


@dataclass
class EntropyPlant:
    """The entropy plant (see the module docstring for the equations). Seeded: the same seed and
    the same plans give the same readings."""

    h_init: float = 1.0
    h_max: float = 3.0
    h_floor: float = 0.02
    decay: float = 0.1
    gain: float = 50.0
    noise: float = 0.005
    difficulty_mix: Sequence[tuple[float, float]] = DEFAULT_DIFFICULTY_MIX
    prompts: int = 128
    group_size: int = 8
    #: mean response length (tokens) of a prompt solved every time; unsolved ones are 2× longer.
    response_tokens: int = 100
    #: relative noise of the reading alone (a measurement error that does not move the entropy):
    #: the reading is H_t·(1 + reading_noise·ζ_t), ζ_t ~ N(0, 1), clipped at 0.
    reading_noise: float = 0.0
    #: extra steps of delay in the reading: step t reports H_{t−lag} (the first steps report H_0).
    lag: int = 0
    #: drift toward collapse: the bonus buys less entropy as training goes on,
    #: g_t = gain·exp(−drift·t) (drift per step; 0.002 → g falls 7.4× over 1000 steps).
    drift: float = 0.0
    #: "level" (H relaxes toward H_eq(c), the equations above) or "rate" (c sets dH/dt).
    response: str = "level"
    #: rate response: the coefficient at which the entropy holds still (at step 0).
    balance: float = 0.01
    #: rate response: d log H per step per unit of log(c / balance).
    rate_gain: float = 0.02
    #: rate response: the fall of log H per step without a bonus.
    collapse: float = 0.003
    #: rate response: the largest rise of log H per step.
    rise_max: float = 0.02
    #: level response: the Hill exponent n of H_eq(c) (1: the plain saturating response).
    hill: float = 1.0
    seed: int = 0
    entropy: float = field(init=False)
    step_index: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not (0 < self.decay <= 1):
            raise ValueError(f"decay: must be in (0, 1] (got {self.decay})")
        if not (0 <= self.h_floor < self.h_max) or not (0 <= self.h_init <= self.h_max):
            raise ValueError(
                f"need 0 ≤ h_floor < h_max and 0 ≤ h_init ≤ h_max (got h_floor={self.h_floor}, "
                f"h_init={self.h_init}, h_max={self.h_max})"
            )
        if not (math.isfinite(self.gain) and self.gain >= 0) or not (
            math.isfinite(self.noise) and self.noise >= 0
        ):
            raise ValueError(
                f"gain and noise must be finite and ≥ 0 (got gain={self.gain}, noise={self.noise})"
            )
        if self.reading_noise < 0 or self.lag < 0 or self.drift < 0:
            raise ValueError(
                f"reading_noise, lag and drift must be ≥ 0 (got {self.reading_noise}, {self.lag}, {self.drift})"
            )
        if not self.hill > 0:
            raise ValueError(f"hill: must be > 0 (got {self.hill})")
        if self.response not in ("level", "rate"):
            raise ValueError(f"response: must be 'level' or 'rate' (got {self.response!r})")
        if self.response == "rate" and not (self.balance > 0 and self.rate_gain > 0 and self.collapse >= 0):
            raise ValueError(
                f"rate response: need balance > 0, rate_gain > 0 and collapse ≥ 0 (got {self.balance}, "
                f"{self.rate_gain}, {self.collapse})"
            )
        self.generator = torch.Generator().manual_seed(int(self.seed))
        self.entropy = float(self.h_init)
        self.history: list[float] = [self.entropy] * (int(self.lag) + 1)

    def outcome(self, step: int | None = None) -> GroupOutcome:
        """The next step's group accuracies (drawn from the plant's own random stream)."""
        return random_outcome(
            self.generator,
            prompts=self.prompts,
            group_size=self.group_size,
            step=self.step_index if step is None else step,
            difficulty_mix=self.difficulty_mix,
        )

    def gain_at(self, step: int) -> float:
        """g_t = gain·exp(−drift·t)."""
        return self.gain * math.exp(-self.drift * step) if self.drift else self.gain

    def equilibrium(self, coef: float, step: int | None = None) -> float:
        """H_eq(c): where the entropy settles under a constant token-weighted coefficient c
        (at ``step``, default the current one: the gain drifts when ``drift`` > 0)."""
        drive = (self.gain_at(self.step_index if step is None else step) * max(coef, 0.0)) ** self.hill
        return self.h_floor + (self.h_max - self.h_floor) * drive / (1.0 + drive)

    def applied_coefficient(self, plan: Plan, outcome: GroupOutcome) -> float:
        """c = Σ_i coef_i·tokens_i / Σ_i tokens_i, tokens_i = G·L·(2 − acc_i) (hard prompts ramble)."""
        accuracy = outcome.accuracy.float().clamp(0.0, 1.0)
        tokens = outcome.group_size * self.response_tokens * (2.0 - accuracy)
        return float((plan.coef.float() * tokens).sum() / tokens.sum())

    def step(self, plan: Plan, outcome: GroupOutcome) -> EntropyReading:
        """Apply one RLVR step with ``plan``; return the step's entropy reading."""
        accuracy = outcome.accuracy.float().clamp(0.0, 1.0)
        tokens = int(round(float((outcome.group_size * self.response_tokens * (2.0 - accuracy)).sum())))
        observed = self.history[0]  # H_{t−lag}
        if self.reading_noise:
            observed = max(
                observed * (1.0 + self.reading_noise * float(torch.randn((), generator=self.generator))), 0.0
            )
        reading = EntropyReading(mean_entropy=observed, tokens=tokens, step=self.step_index)
        coef = self.applied_coefficient(plan, outcome)
        if self.response == "rate":
            self.entropy = self._rate_step(coef)
        else:
            target = self.equilibrium(coef)
            shock = self.noise * self.entropy * float(torch.randn((), generator=self.generator))
            self.entropy = min(
                max(self.entropy + self.decay * (target - self.entropy) + shock, 0.0), self.h_max
            )
        self.history = [*self.history[1:], self.entropy]
        self.step_index += 1
        return reading

    def rate(self, coef: float, step: int | None = None) -> float:
        """r(c): the change of log H per step under coefficient c (rate response)."""
        balance = self.balance * math.exp(self.drift * (self.step_index if step is None else step))
        if coef <= 0.0:
            return -self.collapse
        return min(max(self.rate_gain * math.log(coef / balance), -self.collapse), self.rise_max)

    def _rate_step(self, coef: float) -> float:
        shock = self.noise * float(torch.randn((), generator=self.generator))
        return min(self.entropy * math.exp(self.rate(coef) + shock), self.h_max)


@dataclass
class Trajectory:
    """Per-step record of a simulation: the reading ``entropy``, the controller's ``alpha`` and
    ``target_entropy`` after observing it, and ``coef`` the token-weighted coefficient applied."""

    step: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    target_entropy: list[float] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)

    def final_target(self) -> float:
        return self.target_entropy[-1] if self.target_entropy else math.nan


def simulate(controller: EntropyController, plant: EntropyPlant, steps: int) -> Trajectory:
    """Run ``steps`` closed-loop steps: outcome → plan → plant step → observe."""
    trajectory = Trajectory()
    for _ in range(steps):
        outcome = plant.outcome()
        plan = controller.plan(outcome)
        coef = plant.applied_coefficient(plan, outcome)
        reading = plant.step(plan, outcome)
        controller.observe(reading)
        metrics = controller.metrics()
        trajectory.step.append(reading.step)
        trajectory.entropy.append(reading.mean_entropy)
        trajectory.target_entropy.append(metrics.get("target_entropy", math.nan))
        trajectory.alpha.append(metrics.get("alpha", math.nan))
        trajectory.coef.append(coef)
    return trajectory
