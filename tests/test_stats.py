"""entropyctl.experiments.stats: the seed statistics every study reading shares, against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from entropyctl.experiments.stats import mean_std, paired_difference

finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)


@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=12))
def test_paired_difference_is_the_mean_and_standard_error_of_the_differences(
    pairs: list[tuple[float, float]],
) -> None:
    base, other = [a for a, _ in pairs], [b for _, b in pairs]
    delta, se = paired_difference(base, other)
    differences = np.subtract(other, base)
    # values in [-1, 1]: differences in [-2, 2]; both sides sum n ≤ 12 such terms in double precision
    tolerance = 64 * len(pairs) * np.finfo(float).eps
    assert delta == pytest.approx(float(differences.mean()), abs=tolerance)
    expected_se = float(differences.std(ddof=1)) / math.sqrt(len(pairs))
    # the variance of differences |d| ≤ 2 is off by at most ~64·n·eps·4 in numpy's sum; a square root
    # turns an absolute error ε of the variance into at most √ε of the std, and the se divides by √n
    assert se == pytest.approx(expected_se, abs=math.sqrt(4 * tolerance / len(pairs)))
    # the difference of the means, over the same seeds
    assert delta == pytest.approx(float(np.mean(other) - np.mean(base)), abs=tolerance)


def test_edge_cases() -> None:
    assert paired_difference([0.5], [0.7])[0] == pytest.approx(0.2)
    assert math.isnan(paired_difference([0.5], [0.7])[1])  # one pair: no spread to read
    assert paired_difference([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == (0.0, 0.0)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))
    assert math.isnan(mean_std([1.0])[1])
    with pytest.raises(ValueError, match="do not pair"):
        paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="no values"):
        mean_std([])
    # a seed without the number (NaN) leaves the arm without a mean and a spread, paired or not
    assert all(math.isnan(x) for x in mean_std([0.5, math.nan, 0.7]))
    assert all(math.isnan(x) for x in paired_difference([0.5, 0.6], [math.nan, 0.7]))
