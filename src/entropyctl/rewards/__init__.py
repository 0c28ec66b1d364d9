"""Verifiable rewards: math answer checking with a hard timeout, and a registry picked by name."""

from entropyctl.rewards.math import (
    MathVerifier,
    VerifyResult,
    check_answer,
    extract_answer,
    verify_answer,
)
from entropyctl.rewards.registry import (
    ExactReward,
    FunctionReward,
    MathReward,
    RewardFunction,
    available_rewards,
    get_reward,
    register_reward,
)

__all__ = [
    "ExactReward",
    "FunctionReward",
    "MathReward",
    "MathVerifier",
    "RewardFunction",
    "VerifyResult",
    "available_rewards",
    "check_answer",
    "extract_answer",
    "get_reward",
    "register_reward",
    "verify_answer",
]
