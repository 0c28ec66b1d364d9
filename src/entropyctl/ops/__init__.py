"""Pure-torch numerical ops: entropy/log-prob paths, the policy loss, group advantages.

No Lightning, transformers or vLLM imports here (design.md §6).
"""

from entropyctl.ops.advantages import group_advantages
from entropyctl.ops.entropy import fused_logprob_entropy, token_logprob_entropy
from entropyctl.ops.losses import PolicyLossOutput, fused_policy_loss, policy_loss

__all__ = [
    "token_logprob_entropy",
    "fused_logprob_entropy",
    "PolicyLossOutput",
    "policy_loss",
    "fused_policy_loss",
    "group_advantages",
]
