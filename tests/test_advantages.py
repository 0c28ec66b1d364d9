"""Group-relative advantages (design.md §2): hand-computed values and invariants."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entropyctl.ops.advantages import group_advantages


def test_group_scale_hand_computed_unbiased_std() -> None:
    # r = [1, 0, 0, 0]: mean 0.25; unbiased std = sqrt((0.75² + 3·0.25²)/3) = sqrt(0.75/3) = 0.5
    # → A = [0.75, −0.25, −0.25, −0.25] / 0.5 = [1.5, −0.5, −0.5, −0.5]
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([[1.5, -0.5, -0.5, -0.5]]))


def test_population_std_option_hand_computed() -> None:
    # population std = sqrt(0.75/4) = sqrt(3)/4 → A = [0.75, −0.25, ...] · 4/sqrt(3)
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), eps=0.0, unbiased=False)
    k = 4.0 / math.sqrt(3.0)
    torch.testing.assert_close(adv, torch.tensor([[0.75 * k, -0.25 * k, -0.25 * k, -0.25 * k]]))


def test_eps_in_the_denominator() -> None:
    # r = [1, 0]: mean 0.5, unbiased std = sqrt(2·0.25/1) = 0.7071...; eps = 0.3 → A = ±0.5/1.0071...
    adv = group_advantages(torch.tensor([[1.0, 0.0]]), eps=0.3)
    expected = 0.5 / (math.sqrt(0.5) + 0.3)
    torch.testing.assert_close(adv, torch.tensor([[expected, -expected]]))


def test_scale_none_is_centering_only() -> None:
    # Dr.GRPO: r − mean, no std: [1, 0, 0, 1] → mean 0.5 → [0.5, −0.5, −0.5, 0.5]
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="none")
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5]]))


@pytest.mark.parametrize("scale", ["group", "none"])
def test_zero_variance_groups_give_exact_zeros(scale: str) -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [0.7, 0.7, 0.7]])
    adv = group_advantages(rewards, scale=scale)  # type: ignore[arg-type]
    assert torch.equal(adv, torch.zeros_like(adv))


def test_single_rollout_groups_give_zeros_not_nan() -> None:
    adv = group_advantages(torch.tensor([[1.0], [0.0]]))
    assert torch.equal(adv, torch.zeros(2, 1))


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"rewards must be \[P, G\]"):
        group_advantages(torch.ones(4))
    with pytest.raises(ValueError, match="scale must be 'group', 'batch' or 'none'"):
        group_advantages(torch.ones(2, 2), scale="token")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN or inf"):
        group_advantages(torch.tensor([[1.0, float("nan")]]))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(2, 8),
    st.integers(0, 2**16),
    st.sampled_from(["group", "none"]),
)
def test_advantages_are_centered_per_group_and_bounded(p: int, g: int, seed: int, scale: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(p, g, generator=gen) > 0.5).float()  # verifiable 0/1 rewards
    adv = group_advantages(rewards, scale=scale)  # type: ignore[arg-type]
    assert adv.shape == (p, g) and torch.isfinite(adv).all()
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(p), atol=1e-5, rtol=0)
    # A correct rollout never gets a lower advantage than a wrong one in its group.
    for i in range(p):
        if rewards[i].min() < rewards[i].max():
            assert adv[i][rewards[i] == 1].min() > adv[i][rewards[i] == 0].max()
    if scale == "group":
        # |A| ≤ (G − 1)/sqrt(G) for the unbiased std (attained by one success among G).
        assert float(adv.abs().max()) <= (g - 1) / math.sqrt(g) + 1e-4


def test_leave_one_out_baseline_hand_computed() -> None:
    # r = [1, 0, 0, 0]: b = mean of the other three = [0, 1/3, 1/3, 1/3]; r − b = [1, −1/3, −1/3, −1/3]
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), scale="none", baseline="leave-one-out")
    assert adv.tolist()[0] == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3], rel=1e-6)
    # equal rewards: still exactly 0; one rollout: no other rollout to compare with, 0
    flat = group_advantages(torch.ones(2, 4), scale="none", baseline="leave-one-out")
    assert flat.abs().max() == 0
    assert group_advantages(torch.tensor([[1.0]]), scale="none", baseline="leave-one-out").tolist() == [[0.0]]


def test_batch_scale_hand_computed() -> None:
    # rewards 1,0 | 1,1: centered ±0.5 | 0, 0; the batch's unbiased std over [1, 0, 1, 1] = sqrt(0.75/3) = 0.5
    adv = group_advantages(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), scale="batch", eps=0.0)
    assert adv.tolist() == [[1.0, -1.0], [0.0, 0.0]]
    # a given std (the global batch's, from other processes' rewards too) is used as it is
    given_std = group_advantages(torch.tensor([[1.0, 0.0]]), scale="batch", eps=0.0, batch_std=0.25)
    assert given_std.tolist() == [[2.0, -2.0]]
    with pytest.raises(ValueError, match="batch_std"):
        group_advantages(torch.tensor([[1.0, 0.0]]), scale="batch", batch_std=float("nan"))
    with pytest.raises(ValueError, match="baseline"):
        group_advantages(torch.tensor([[1.0, 0.0]]), baseline="median")  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 6), st.integers(2, 8), st.integers(0, 2**16), st.sampled_from(["group", "batch", "none"])
)
def test_leave_one_out_is_the_mean_baseline_times_g_over_g_minus_one(
    p: int, g: int, seed: int, scale: str
) -> None:
    """RLOO's r − mean of the others = G/(G − 1)·(r − mean): the same direction, a fixed factor per G."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.rand(p, g, generator=gen, dtype=torch.float64).round(decimals=1)
    loo = group_advantages(rewards, scale=scale, baseline="leave-one-out")  # type: ignore[arg-type]
    mean = group_advantages(rewards, scale=scale)  # type: ignore[arg-type]
    # float64, |A| ≲ 1/ε: a few ulp of the larger of the two
    torch.testing.assert_close(
        loo, mean * (g / (g - 1)), rtol=1e-12, atol=1e-12 * float(mean.abs().max() + 1)
    )


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_eps_zero_leaves_a_constant_group_at_exactly_zero(scale: str) -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    adv = group_advantages(rewards, scale=scale, eps=0.0)  # type: ignore[arg-type]
    assert bool(torch.isfinite(adv).all()) and torch.equal(adv[0], torch.zeros(4))
    assert torch.equal(group_advantages(torch.ones(2, 4), scale=scale, eps=0.0), torch.zeros(2, 4))  # type: ignore[arg-type]
