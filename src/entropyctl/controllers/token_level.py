"""Token-level entropy controllers: ``clip_cov``, ``kl_cov``, ``high_entropy_tokens``, and ``combined``.

They act through the per-token API (:meth:`EntropyController.token_action`); their per-prompt
coefficient is 0 (no entropy bonus). Symbols as in :mod:`entropyctl.ops.token_selection`:
Cov_t = (A_t − Ā)(logp_t − l̄) over the global batch of the optimizer step.

``clip_cov`` (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs"; verl's
``compute_policy_loss_clip_cov``): of the tokens the PPO clip does not already bind with
ω_low < Cov_t < ω_high, a random ⌊r·N⌋ (at least 1) get no policy gradient (d_t = 1).
Defaults r = 2e-4, ω_low = 1, ω_high = 5, clip 0.2/0.2. verl multiplies those tokens' loss by 0;
here their value is kept and only the gradient stopped (the paper's "detach"): same gradient.

``kl_cov`` (same paper; verl's ``compute_policy_loss_kl_cov``): the unclipped surrogate −ρA plus
β·|logp − logp_old| on the top ⌊k·N⌋ (at least 1) tokens by Cov_t (c_t = β there). Defaults
k = 2e-3 (the paper's 7B setting; verl's code default is 2e-4), β = 1. The penalty's gradient is
β·sign(logp − logp_old): zero while the policy has not moved (the first update of a step).

``high_entropy_tokens`` (Wang et al. 2025, "Beyond the 80/20 Rule"): the policy gradient only on
the top ρ = 20 % of tokens by entropy H_t (w_t = 1[t in top ρ], the token-mean still over all N
tokens), DAPO's clip 0.2/0.28.

``combined``: one controller's per-prompt plan (e.g. ``aer``'s α_i) with another's token action
(e.g. ``clip_cov``), as one arm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, SerializeAsAny, field_validator, model_validator

from entropyctl.controllers.base import (
    EntropyController,
    EntropyReading,
    GroupOutcome,
    Plan,
    TokenAction,
    TokenCollective,
    TokenStatistics,
    check_state_keys,
)
from entropyctl.controllers.config import ControllerConfig, NonNegativeFloat, PositiveFloat
from entropyctl.controllers.fixed import OpenLoopController
from entropyctl.controllers.registry import create_controller, parse_controller_config, register_controller
from entropyctl.ops.token_selection import (
    covariance_scores,
    random_band_subset,
    select_globally,
    top_fraction,
)

__all__ = [
    "ClipCovConfig",
    "ClipCovController",
    "KLCovConfig",
    "KLCovController",
    "HighEntropyTokensConfig",
    "HighEntropyTokensController",
    "CombinedConfig",
    "CombinedController",
    "clip_cov_selection",
    "kl_cov_selection",
    "high_entropy_selection",
    "selection_seed",
    "step_token_action",
    "UNCLIPPED",
]

#: An upper clip bound that never binds for a finite ratio (KL-Cov's surrogate is unclipped);
#: finite, so that plans stay finite numbers.
UNCLIPPED = float(torch.finfo(torch.float64).max)

Fraction = float


def _fraction_field(default: float, text: str) -> Any:
    return Field(default=default, gt=0.0, le=1.0, description=text)


class ClipCovConfig(ControllerConfig):
    """``clip_cov``: detach the gradient of a random few tokens whose Cov(logp, A) lies in a band."""

    name: Literal["clip_cov"] = "clip_cov"
    ratio: Fraction = _fraction_field(2e-4, "r: share of the batch's tokens detached (verl clip_cov_ratio).")
    cov_lower: float = Field(
        default=1.0, description="ω_low: band's lower bound on Cov_t (verl clip_cov_lb)."
    )
    cov_upper: float = Field(
        default=5.0, description="ω_high: band's upper bound on Cov_t (verl clip_cov_ub)."
    )
    clip_low: PositiveFloat = Field(default=0.2, lt=1.0, description="ε_low of the clipped surrogate.")
    clip_high: PositiveFloat = Field(default=0.2, description="ε_high of the clipped surrogate.")
    seed: int = Field(default=0, description="Seeds the random subset (with the step): same on every rank.")

    @model_validator(mode="after")
    def _check_band(self) -> ClipCovConfig:
        if not self.cov_lower < self.cov_upper:
            raise ValueError(
                f"cov_upper: the band [cov_lower, cov_upper] holds no covariance unless cov_lower < cov_upper "
                f"(got {self.cov_lower}, {self.cov_upper})"
            )
        return self


class KLCovConfig(ControllerConfig):
    """``kl_cov``: a KL penalty |logp − logp_old| on the top tokens by Cov(logp, A); no clipping."""

    name: Literal["kl_cov"] = "kl_cov"
    ratio: Fraction = _fraction_field(2e-3, "k: share of the batch's tokens penalised (verl kl_cov_ratio).")
    kl_coef: NonNegativeFloat = Field(default=1.0, description="β of the penalty (verl ppo_kl_coef).")


class HighEntropyTokensConfig(ControllerConfig):
    """``high_entropy_tokens``: the policy gradient only on the top fraction of tokens by entropy."""

    name: Literal["high_entropy_tokens"] = "high_entropy_tokens"
    fraction: Fraction = _fraction_field(0.2, "ρ: share of the batch's tokens trained (highest entropy).")
    clip_low: PositiveFloat = Field(default=0.2, lt=1.0, description="ε_low of the clipped surrogate.")
    clip_high: PositiveFloat = Field(default=0.28, description="ε_high of the clipped surrogate (DAPO).")


# -- the selections, on the GLOBAL statistics (rows of the gathered columns) -------------------------


def clip_cov_selection(
    columns: torch.Tensor,
    *,
    ratio: float,
    cov_lower: float,
    cov_upper: float,
    clip_low: float,
    clip_high: float,
    seed: int,
) -> torch.Tensor:
    """Clip-Cov's detached set from global columns (logp, logp_old, A, m)."""
    logprob, old_logprob, advantages, mask = columns
    valid = mask != 0
    ratio_t = torch.exp(logprob - torch.where(valid, old_logprob, logprob))
    clipped = torch.clamp(ratio_t, 1.0 - clip_low, 1.0 + clip_high) * advantages < ratio_t * advantages
    scores = covariance_scores(advantages, logprob, mask)
    return random_band_subset(
        scores, valid & ~clipped, cov_lower, cov_upper, ratio, int(valid.sum()), seed=seed
    )


def kl_cov_selection(columns: torch.Tensor, *, ratio: float) -> torch.Tensor:
    """KL-Cov's penalised set from global columns (logp, A, m): the top ⌊k·N⌋ by Cov_t."""
    logprob, advantages, mask = columns
    return top_fraction(covariance_scores(advantages, logprob, mask), mask, ratio)


def high_entropy_selection(columns: torch.Tensor, *, fraction: float) -> torch.Tensor:
    """The trained set from global columns (H, m): the top ⌊ρ·N⌋ tokens by entropy."""
    entropy, mask = columns
    return top_fraction(entropy, mask, fraction)


def selection_seed(seed: int, step: int) -> int:
    """Clip-Cov's random draw of step ``step``: a fixed mix of (seed, step), the same on every rank."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + 12_345) % 2**62


class _TokenLevelController(OpenLoopController):
    """No entropy bonus (α_i = 0); the entropy control is the token action."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        #: share of the valid tokens of every rank the last action touched (logging only, not state).
        self.last_selected_share = math.nan

    def acts_per_token(self) -> bool:
        return True

    def clip_bounds(self) -> tuple[float, float]:
        config: Any = self.config
        return float(config.clip_low), float(config.clip_high)

    def plan(self, outcome: GroupOutcome) -> Plan:
        return self.uniform_plan(outcome, 0.0, *self.clip_bounds())

    def _select(
        self,
        columns: torch.Tensor,
        collective: TokenCollective,
        select: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """:func:`select_globally` (``columns``' last row is the mask m), recording the share of the valid
        tokens of all ranks chosen — the same on every rank (a rank's own share was logged before)."""

        def recorded(global_columns: torch.Tensor) -> torch.Tensor:
            chosen = select(global_columns)
            valid = global_columns[-1] != 0
            self.last_selected_share = float((chosen & valid).sum()) / max(1, int(valid.sum()))
            return chosen

        return select_globally(columns, collective, recorded)

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "token_selected_share": self.last_selected_share}


@register_controller("clip_cov")
class ClipCovController(_TokenLevelController):
    """Clip-Cov: no gradient for a random 0.02 % of tokens with Cov(logp, A) in (1, 5) (Cui et al. 2025)."""

    config: ClipCovConfig
    config_class = ClipCovConfig

    def token_action(self, stats: TokenStatistics, collective: TokenCollective) -> TokenAction:
        c = self.config
        columns = torch.stack([stats.logprob, stats.old_logprob, stats.advantages, stats.mask]).double()
        chosen = self._select(
            columns,
            collective,
            lambda g: clip_cov_selection(
                g,
                ratio=c.ratio,
                cov_lower=c.cov_lower,
                cov_upper=c.cov_upper,
                clip_low=c.clip_low,
                clip_high=c.clip_high,
                seed=selection_seed(c.seed, stats.step),
            ),
        )
        return TokenAction(detach=chosen)


@register_controller("kl_cov")
class KLCovController(_TokenLevelController):
    """KL-Cov: unclipped surrogate, |logp − logp_old| penalty on the top 0.2 % tokens by Cov(logp, A)."""

    config: KLCovConfig
    config_class = KLCovConfig

    def clip_bounds(self) -> tuple[float, float]:
        # clip(ρ, 0, max float) = ρ: the surrogate is −ρA, as verl's kl_cov.
        return 1.0, UNCLIPPED

    def token_action(self, stats: TokenStatistics, collective: TokenCollective) -> TokenAction:
        columns = torch.stack([stats.logprob, stats.advantages, stats.mask]).double()
        chosen = self._select(columns, collective, lambda g: kl_cov_selection(g, ratio=self.config.ratio))
        coef = chosen.to(torch.float64) * float(self.config.kl_coef)
        return TokenAction(kl_coef=coef)


@register_controller("high_entropy_tokens")
class HighEntropyTokensController(_TokenLevelController):
    """Forking tokens: the policy gradient only on the top 20 % of tokens by entropy (Wang et al. 2025)."""

    config: HighEntropyTokensConfig
    config_class = HighEntropyTokensConfig

    def token_action(self, stats: TokenStatistics, collective: TokenCollective) -> TokenAction:
        columns = torch.stack([stats.entropy, stats.mask]).double()
        chosen = self._select(
            columns, collective, lambda g: high_entropy_selection(g, fraction=self.config.fraction)
        )
        return TokenAction(weight=chosen.to(torch.float32))


def step_token_action(
    controller: EntropyController, stats: TokenStatistics, collective: TokenCollective
) -> TokenAction | None:
    """The trainer's one call per optimizer step: the controller's token action for this rank's
    tokens (None when it acts per prompt only), checked before it reaches the loss.

    Call it on every rank (the selection's collectives run inside), after building ``stats`` from the
    no-grad log-prob/entropy pass of the step's tokens.
    """
    if not controller.acts_per_token():
        return None
    action = controller.token_action(stats, collective)
    if action is None:
        return None
    n = stats.logprob.shape[0]
    for field in ("weight", "detach", "kl_coef"):
        t = getattr(action, field)
        if t is not None and tuple(t.shape) != (n,):
            raise ValueError(
                f"controller {controller.name!r}: token_action().{field} has shape {tuple(t.shape)}; "
                f"expected one value per token of this rank's step, [{n}]"
            )
    return action


# -- composition ------------------------------------------------------------------------------------


#: The parts of ``combined`` when none is named: AER with Clip-Cov.
_COMBINED_DEFAULTS = {"prompt": "aer", "token": "clip_cov"}


class CombinedConfig(ControllerConfig):
    """``combined``: the per-prompt plan of ``prompt`` with the token action of ``token``."""

    name: Literal["combined"] = "combined"
    prompt: SerializeAsAny[ControllerConfig] = Field(
        default_factory=lambda: parse_controller_config(
            {"name": _COMBINED_DEFAULTS["prompt"]}, prefix="prompt"
        ),
        description="The controller whose α_i (and state) drive the entropy bonus (default: aer).",
    )
    token: SerializeAsAny[ControllerConfig] = Field(
        default_factory=lambda: parse_controller_config(
            {"name": _COMBINED_DEFAULTS["token"]}, prefix="token"
        ),
        description="The controller whose token action applies (default: clip_cov).",
    )
    clip_from: Literal["token", "prompt"] = Field(
        default="token", description="Whose clip bounds the surrogate uses (token: e.g. KL-Cov's none)."
    )

    @field_validator("prompt", "token", mode="before")
    @classmethod
    def _parse_part(cls, value: Any, info: Any) -> ControllerConfig:
        if isinstance(value, Mapping) and "name" not in value:  # options for the default part
            value = {"name": _COMBINED_DEFAULTS[info.field_name], **value}
        part = parse_controller_config(value, prefix="")
        if part.name == "combined":
            raise ValueError("a combined controller cannot nest another 'combined'")
        acts = create_controller(part).acts_per_token()
        if info.field_name == "prompt" and acts:  # its own token action would be dropped for `token`'s
            raise ValueError(
                f"controller {part.name!r} acts per token, and a combined controller takes the token "
                "action from `token` only; put it under token, and a per-prompt controller (aer, target, "
                "fixed, clip_higher) under prompt"
            )
        if info.field_name == "token" and not acts:
            raise ValueError(
                f"controller {part.name!r} has no token action; use one of clip_cov, kl_cov, "
                "high_entropy_tokens (or a plugin whose acts_per_token() is True)"
            )
        return part


@register_controller("combined")
class CombinedController(EntropyController):
    """One arm from two controllers: `prompt`'s α_i and state, `token`'s per-token action."""

    config: CombinedConfig
    config_class: ClassVar[type[ControllerConfig]] = CombinedConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.prompt = create_controller(config.prompt)
        self.token = create_controller(config.token)

    def acts_per_token(self) -> bool:
        return True

    def plan(self, outcome: GroupOutcome) -> Plan:
        plan = self.prompt.plan(outcome)
        if self.config.clip_from == "prompt":
            return plan
        bounds = self.token.plan(outcome)
        return Plan(coef=plan.coef, clip_low=bounds.clip_low, clip_high=bounds.clip_high)

    def token_action(self, stats: TokenStatistics, collective: TokenCollective) -> TokenAction | None:
        return self.token.token_action(stats, collective)

    def observe(self, reading: EntropyReading) -> None:
        self.prompt.observe(reading)
        self.token.observe(reading)

    def state_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt.state_dict(), "token": self.token.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_keys(self, state, ("prompt", "token"))
        self.prompt.load_state_dict(state["prompt"])
        self.token.load_state_dict(state["token"])

    def metrics(self) -> dict[str, float]:
        out = dict(self.prompt.metrics())
        for key, value in self.token.metrics().items():
            if key not in out:
                out[key] = value
        return out
