"""``algorithm.rollout_correction``: importance weights for the sampler–trainer mismatch
(``entropyctl.ops.sampler_correction``) — hand-computed weights per mode, properties over random
log-probs, the config's refusals, and the weights reaching a real run's loss and gradient."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_helpers import SIGNAL_STEP, read_metrics, tiny_config

from entropyctl.config import ConfigError, parse_run_config
from entropyctl.ops.sampler_correction import sampler_correction
from entropyctl.rollout.hf import HFRolloutEngine
from entropyctl.trainer.run import run_training

P = torch.tensor([-0.5, -1.0, -2.0, -0.1, -0.3], dtype=torch.float64)  # the trainer's log-probs
# the sampler's: token ratios r = exp(p − q) = 1.5, 0.5, 1, 3, 1
Q = P - torch.log(torch.tensor([1.5, 0.5, 1.0, 3.0, 1.0], dtype=torch.float64))
ROWS = torch.tensor([0, 0, 1, 2, 2])  # three responses: r = 0.75, 1, 3


def weights(mode: str, **bounds: float | None) -> list[float]:
    return sampler_correction(P, Q, ROWS, mode, **bounds).weight.tolist()


@pytest.mark.parametrize(
    ("mode", "bounds", "expected"),
    [
        ("token_truncate", {"clip_max": 2.0}, [1.5, 0.5, 1.0, 2.0, 1.0]),
        ("token_truncate", {"clip_max": 2.0, "clip_min": 0.8}, [1.5, 0.8, 1.0, 2.0, 1.0]),
        ("token_mask", {"clip_max": 2.0}, [1.5, 0.5, 1.0, 0.0, 1.0]),
        ("token_mask", {"clip_max": 2.0, "clip_min": 0.8}, [1.5, 0.0, 1.0, 0.0, 1.0]),
        ("sequence_truncate", {"clip_max": 2.0}, [0.75, 0.75, 1.0, 2.0, 2.0]),
        ("sequence_truncate", {"clip_max": 2.0, "clip_min": 0.9}, [0.9, 0.9, 1.0, 2.0, 2.0]),
        ("sequence_mask", {"clip_max": 2.0}, [0.75, 0.75, 1.0, 0.0, 0.0]),
        ("sequence_mask", {"clip_max": 4.0, "clip_min": 0.9}, [0.0, 0.0, 1.0, 3.0, 3.0]),
        ("monitor", {"clip_max": 2.0}, [1.0] * 5),
    ],
)
def test_hand_computed_weights(mode: str, bounds: dict[str, float], expected: list[float]) -> None:
    assert weights(mode, **bounds) == pytest.approx(expected, rel=1e-12)


def test_bounded_tokens_and_the_mismatch_measures() -> None:
    out = sampler_correction(P, Q, ROWS, "token_truncate", clip_max=2.0, clip_min=0.8)
    assert out.bounded.tolist() == [False, True, False, True, False]
    r = torch.tensor([1.5, 0.5, 1.0, 3.0, 1.0], dtype=torch.float64)
    assert out.kl.tolist() == pytest.approx((r - 1 - r.log()).tolist(), rel=1e-12, abs=1e-15)
    assert out.abs_diff.tolist() == pytest.approx(r.log().abs().tolist(), rel=1e-12, abs=1e-15)
    monitored = sampler_correction(P, Q, ROWS, "monitor")
    assert not bool(monitored.bounded.any()) and monitored.kl.tolist() == out.kl.tolist()


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        sampler_correction(P, Q, ROWS, "tis")
    with pytest.raises(ValueError, match="one length"):
        sampler_correction(P, Q[:3], ROWS, "token_truncate", clip_max=2.0)
    with pytest.raises(ValueError, match="clip_min must be <= clip_max"):
        sampler_correction(P, Q, ROWS, "token_truncate", clip_max=1.0, clip_min=2.0)
    with pytest.raises(ValueError, match="finite"):
        sampler_correction(P, torch.full_like(Q, -math.inf), ROWS, "token_truncate", clip_max=2.0)


logprobs = st.floats(min_value=-20.0, max_value=0.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(st.tuples(logprobs, logprobs, st.integers(0, 3)), min_size=1, max_size=24),
    mode=st.sampled_from(["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]),
    clip_max=st.floats(min_value=1.0, max_value=10.0),
    clip_min=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),
)
def test_weight_properties(
    data: list[tuple[float, float, int]], mode: str, clip_max: float, clip_min: float | None
) -> None:
    """Truncated weights lie in [clip_min, clip_max]; masked weights are 0 exactly where a bound acts and
    the ratio elsewhere; a response shares one weight in the sequence modes, whose ratio is the product of
    its token ratios; the k3 measure is ≥ 0; with p = q every weight is 1."""
    p = torch.tensor([d[0] for d in data], dtype=torch.float64)
    q = torch.tensor([d[1] for d in data], dtype=torch.float64)
    rows = torch.tensor([d[2] for d in data])
    out = sampler_correction(p, q, rows, mode, clip_min=clip_min, clip_max=clip_max)
    token_r = torch.exp(p - q)
    eps = torch.finfo(torch.float64).eps
    if mode.startswith("sequence"):
        ratio = torch.stack([token_r[rows == rows[i]].prod() for i in range(len(data))])
        for row in rows.unique():
            assert out.weight[rows == row].unique().numel() == 1
        # exp of the summed differences against the product of their exps: the sum's rounding (≤ n·eps·Σ|d|,
        # amplified 1:1 by exp) plus the product's (≤ n·eps), twice over for slack
        d = (p - q).abs()
        n_row = torch.stack([(rows == rows[i]).sum() for i in range(len(data))]).to(torch.float64)
        sum_abs = torch.stack([d[rows == rows[i]].sum() for i in range(len(data))])
        rtol = 2 * eps * n_row * (sum_abs + 1)
    else:
        ratio = token_r  # the same exp of the same difference
        rtol = torch.zeros_like(ratio)
    lo = 0.0 if clip_min is None else clip_min
    if mode.endswith("truncate"):
        assert bool(((out.weight >= lo) & (out.weight <= clip_max)).all())
        expected = ratio.clamp(lo, clip_max)
    else:
        expected = torch.where(out.bounded, torch.zeros_like(ratio), ratio)
        assert bool((out.weight[out.bounded] == 0).all())
        # where a bound is within the rounding of the ratio, either side of it is right
        near = ((ratio - clip_max).abs() <= rtol * ratio) | ((ratio - lo).abs() <= rtol * ratio)
        assert bool((out.bounded[~near] == ((ratio < lo) | (ratio > clip_max))[~near]).all())
    assert bool(((out.weight - expected).abs() <= rtol * expected).all())
    assert bool((out.kl >= 0).all())
    same = sampler_correction(p, p, rows, mode, clip_min=clip_min, clip_max=clip_max)
    assert same.weight.tolist() == [1.0] * len(data)
    assert not bool(same.bounded.any()) and same.kl.abs().max() == 0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"mode": "token_truncate", "clip_max": None}, "needs an upper bound"),
        ({"mode": "sequence_mask", "clip_max": None, "clip_min": 0.5}, "needs an upper bound"),
        ({"mode": "token_mask", "clip_max": 1.5, "clip_min": 2.0}, "clip_min: must be ≤ clip_max"),
        ({"mode": "tis"}, "rollout_correction.mode"),
    ],
)
def test_config_refusals_name_the_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_run_config({"algorithm": {"rollout_correction": section}})


@pytest.mark.parametrize("rollout", [{"top_p": 0.9}, {"top_k": 20}])
def test_truncated_sampling_is_refused_but_monitored(rollout: dict[str, Any]) -> None:
    """With top-p / top-k the engines' log-probs differ in kind (vLLM's are the truncated distribution's,
    the HF engine's the full one's), so a correcting mode is refused; monitor may still log the gap."""
    with pytest.raises(ConfigError, match="needs untruncated sampling"):
        parse_run_config(
            {"rollout": rollout, "algorithm": {"rollout_correction": {"mode": "token_truncate"}}}
        )
    parse_run_config({"rollout": rollout, "algorithm": {"rollout_correction": {"mode": "monitor"}}})


# ----------------------------------------------------------------------------------- in a real run
SHIFT = math.log(1.5)  # the engine's log-probs moved down by ln 1.5: every token's ratio is 1.5


@pytest.fixture
def shifted_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HF engine's recorded log-probs (= the trainer's to ~1e-7 in fp32) lowered by ln 1.5."""
    original = HFRolloutEngine.generate

    def generate(self: HFRolloutEngine, *args: Any, **kwargs: Any) -> Any:
        comp = original(self, *args, **kwargs)
        if comp.logprobs is None:
            return comp
        return dataclasses.replace(comp, logprobs=(comp.logprobs - SHIFT) * comp.response_mask)

    monkeypatch.setattr(HFRolloutEngine, "generate", generate)


def test_weights_scale_the_policy_gradient_of_a_run(tmp_path: Path, shifted_engine: None) -> None:
    """Same first step (same rollouts: asking for log-probs leaves the sampling alone) with every ratio
    1.5: truncated at 2 the policy-gradient loss and its gradient are 1.5× the uncorrected ones on the
    fused and the full-logits path; masked at 1.2 they are 0; monitored they are unchanged — and the
    logged mismatch is the shift (k3 = 0.5 − ln 1.5)."""
    runs = {
        "plain": [],
        "truncate": ["algorithm.rollout_correction.mode=token_truncate"],
        "truncate_full_logits": ["algorithm.rollout_correction.mode=token_truncate", "algorithm.fused=false"],
        "mask": ["algorithm.rollout_correction.mode=token_mask", "algorithm.rollout_correction.clip_max=1.2"],
        "monitor": ["algorithm.rollout_correction.mode=monitor"],
    }
    rows = {}
    for name, extra in runs.items():
        run_training(tiny_config(*SIGNAL_STEP, *extra), tmp_path / name)
        (rows[name],) = read_metrics(tmp_path / name)
    plain = rows["plain"]
    assert abs(plain["pg_loss"]) > 1e-5 and plain["grad_norm"] > 1e-4  # the step carries a signal
    assert all(math.isnan(plain[c]) for c in ("sampler_kl", "is_weight_mean", "is_bounded_frac"))
    for name in ("truncate", "truncate_full_logits"):
        assert rows[name]["tokens"] == plain["tokens"]
        assert rows[name]["pg_loss"] == pytest.approx(1.5 * plain["pg_loss"], rel=1e-5)
        assert rows[name]["grad_norm"] == pytest.approx(1.5 * plain["grad_norm"], rel=1e-4)
        assert rows[name]["is_weight_mean"] == pytest.approx(1.5, rel=1e-5)
        assert rows[name]["is_bounded_frac"] == 0.0
    assert rows["mask"]["pg_loss"] == 0.0 and rows["mask"]["grad_norm"] == 0.0
    assert rows["mask"]["is_bounded_frac"] == 1.0 and rows["mask"]["is_weight_mean"] == 0.0
    assert (
        rows["monitor"]["pg_loss"] == plain["pg_loss"] and rows["monitor"]["grad_norm"] == plain["grad_norm"]
    )
    for name in ("truncate", "mask", "monitor"):
        assert rows[name]["sampler_logp_diff"] == pytest.approx(SHIFT, rel=1e-4)
        assert rows[name]["sampler_kl"] == pytest.approx(0.5 - SHIFT, rel=1e-4)
