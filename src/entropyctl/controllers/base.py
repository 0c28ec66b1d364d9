"""The controller API (design.md §3).

A controller owns everything entropy-specific in an RLVR step: the per-prompt entropy
coefficients ``α_i`` and the surrogate's clip bounds. It has two verbs, like an optax
transformation: :meth:`EntropyController.plan` (pure: reads state, returns a :class:`Plan`)
and :meth:`EntropyController.observe` (the only state change, after the optimizer step).
State is plain numbers so that checkpoints, resumes and property tests stay simple.

A controller may also act per token (Clip-Cov, KL-Cov, high-entropy tokens): it says so with
:meth:`EntropyController.acts_per_token` and returns a :class:`TokenAction` from
:meth:`EntropyController.token_action`, given the step's :class:`TokenStatistics` (per-token
log-probs, old log-probs, entropies, advantages, mask: never an ``[N, V]`` tensor) and the
:class:`TokenCollective` that makes its selection global. The default is no token action.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor

from entropyctl.ops.token_selection import TokenAction, TokenCollective, TokenStatistics

__all__ = [
    "GroupOutcome",
    "Plan",
    "EntropyReading",
    "TokenStatistics",
    "TokenAction",
    "TokenCollective",
    "EntropyController",
    "is_usable_reading",
    "check_state_keys",
]


@dataclass(frozen=True)
class GroupOutcome:
    """What the rollouts of one step say about each prompt's difficulty.

    accuracy: ``[P]`` group accuracy ``acc_i`` in ``[0, 1]``: the share of group i's responses scored 1.
    group_size: ``G``, rollouts per prompt.
    step: the optimizer step this outcome belongs to.
    """

    accuracy: Tensor
    group_size: int
    step: int


@dataclass(frozen=True)
class Plan:
    """What the loss uses this step: ``coef[i] = α_i ≥ 0`` and the clip bounds ``(ε_low, ε_high)``."""

    coef: Tensor
    clip_low: float
    clip_high: float


@dataclass(frozen=True)
class EntropyReading:
    """Global token-weighted mean entropy ``H_t`` of the step's response tokens (summed over all ranks)."""

    mean_entropy: float
    tokens: int
    step: int


class EntropyController(ABC):
    """Base class of every entropy controller.

    Contract (checked by the property tests for every registered controller):
    coefficients are finite and within the configured bounds for any sequence of readings;
    a non-finite or empty reading is ignored (state unchanged, counted in ``metrics``);
    ``plan`` never mutates state; state round-trips exactly through ``state_dict``.
    """

    #: the registered name; set by ``@register_controller``.
    name: ClassVar[str] = ""
    #: the pydantic config class; set by ``@register_controller``.
    config_class: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @abstractmethod
    def plan(self, outcome: GroupOutcome) -> Plan:
        """Coefficients and clip bounds for this step. Must not change any state."""

    @abstractmethod
    def observe(self, reading: EntropyReading) -> None:
        """Update state from the step's global entropy reading (after the optimizer step)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: plain Python floats, ints, bools and None."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    @abstractmethod
    def metrics(self) -> dict[str, float]:
        """What to log: at least ``alpha``, ``target_entropy``, ``h0`` (NaN where it does not apply),
        ``last_entropy`` and ``readings_ignored``."""

    # -- per-token action (optional; the default is none) ----------------------------------------
    def acts_per_token(self) -> bool:
        """True if :meth:`token_action` may return an action. The trainer builds the token statistics
        (and runs the selection's collectives, on every rank) only then."""
        return False

    def token_action(self, stats: TokenStatistics, collective: TokenCollective) -> TokenAction | None:
        """How the loss treats each of this rank's tokens of the step (see :class:`TokenAction`).

        ``stats`` holds this rank's tokens only; a selection over the global batch goes through
        ``collective`` (e.g. :func:`entropyctl.ops.token_selection.select_globally`), called the same
        number of times on every rank. Like :meth:`plan`, it must not change the controller's state.
        """
        return None

    # A helper every controller shares: a plan with one coefficient for every prompt.
    @staticmethod
    def uniform_plan(outcome: GroupOutcome, alpha: float, clip_low: float, clip_high: float) -> Plan:
        coef = torch.full_like(outcome.accuracy, float(alpha), dtype=torch.float32)
        return Plan(coef=coef, clip_low=float(clip_low), clip_high=float(clip_high))


def is_usable_reading(reading: EntropyReading) -> bool:
    """The robustness contract's filter: a reading is used only if its entropy is a finite,
    non-negative number measured over at least one token. Anything else is ignored (and counted)."""
    try:
        value = float(reading.mean_entropy)
        tokens = int(reading.tokens)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(value) and value >= 0.0 and tokens > 0


def check_state_keys(controller: EntropyController, state: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Raise one clear error if a state dict (e.g. from a checkpoint) lacks keys this controller needs."""
    if not isinstance(state, dict):
        raise ValueError(
            f"{type(controller).__name__}.load_state_dict: expected a dict (got {type(state).__name__})"
        )
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(
            f"{type(controller).__name__}.load_state_dict: state is missing {', '.join(missing)} "
            f"(got keys: {', '.join(sorted(state)) or 'none'}); was it saved by another controller?"
        )
