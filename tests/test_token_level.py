"""Token-level controllers (clip_cov, kl_cov, high_entropy_tokens, combined) and the per-token loss.

Hand-computed examples, then the reference semantics written plainly from the papers' equations
(Cui et al. 2025, eqs. of Clip-Cov / KL-Cov as in verl's ``compute_policy_loss_clip_cov`` /
``compute_policy_loss_kl_cov``; Wang et al. 2025, the top-ρ entropy mask) on random inputs: values
and gradients, in fp64. Then the fused path against the reference path with a token action.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entropyctl import GroupOutcome, create_controller
from entropyctl.controllers.base import TokenAction, TokenStatistics
from entropyctl.controllers.token_level import UNCLIPPED, selection_seed
from entropyctl.ops.entropy import token_logprob_entropy
from entropyctl.ops.losses import fused_policy_loss, policy_loss
from entropyctl.ops.token_selection import LOCAL, TokenCollective, top_fraction

F64 = torch.float64
# fp64, ≤ 200 tokens, every term |ρ·A| ≤ e^0.6·4 < 8: sums agree to ~200·8·2.2e-16 ≈ 4e-13.
TOL = {"rtol": 1e-12, "atol": 1e-12}
SETTINGS = settings(max_examples=40, deadline=None, derandomize=False)


def stats_of(logprob, old, entropy, adv, mask, step: int = 1) -> TokenStatistics:
    t = lambda x: torch.as_tensor(x, dtype=F64)  # noqa: E731
    return TokenStatistics(t(logprob), t(old), t(entropy), t(adv), t(mask), step)


def loss_with(controller, stats: TokenStatistics, logprob: torch.Tensor, action: TokenAction | None):
    low, high = controller.clip_bounds()
    return policy_loss(
        logprob,
        stats.entropy,
        stats.old_logprob,
        stats.advantages,
        0.0,
        stats.mask,
        low,
        high,
        token_action=action,
    )


# -- the API's defaults ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fixed", "clip_higher", "target", "aer"])
def test_prompt_level_controllers_have_no_token_action(name: str) -> None:
    controller = create_controller(name)
    assert not controller.acts_per_token()
    stats = stats_of([-1.0], [-1.0], [0.5], [1.0], [1.0])
    assert controller.token_action(stats, LOCAL) is None


def test_token_statistics_and_collective_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="TokenStatistics.entropy: expected a per-token tensor of shape"):
        TokenStatistics(torch.zeros(3), torch.zeros(3), torch.zeros(4), torch.zeros(3), torch.ones(3), 1)
    with pytest.raises(ValueError, match="world_size=2 needs an all_gather"):
        TokenCollective(rank=0, world_size=2)


def test_loss_rejects_a_malformed_action() -> None:
    lp = torch.zeros(3, dtype=F64)
    args = (lp, lp, lp, torch.ones(3, dtype=F64), 0.0, torch.ones(3, dtype=F64), 0.2, 0.2)
    with pytest.raises(ValueError, match=r"token_action.weight must be a per-token tensor \[N\] = \[3\]"):
        policy_loss(*args, token_action=TokenAction(weight=torch.ones(4)))
    with pytest.raises(ValueError, match="token_action.kl_coef must be finite and >= 0"):
        policy_loss(*args, token_action=TokenAction(kl_coef=torch.tensor([1.0, -1.0, 0.0])))


# -- hand-computed examples ------------------------------------------------------------------------


def test_high_entropy_tokens_by_hand() -> None:
    # 4 valid tokens (the 5th is padding), ρ = 0.5 → k = 2: entropies 2.0 (t=1) and 1.0 (t=3).
    controller = create_controller({"name": "high_entropy_tokens", "fraction": 0.5})
    logprob = torch.tensor([-1.0, -2.0, -0.5, -1.5, -1.0], dtype=F64, requires_grad=True)
    stats = stats_of(
        logprob.detach(), logprob.detach(), [0.1, 2.0, 0.5, 1.0, 3.0], [1, 2, -1, -3, 5], [1, 1, 1, 1, 0]
    )
    action = controller.token_action(stats, LOCAL)
    assert action.weight.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    out = loss_with(controller, stats, logprob, action)
    # ρ = 1: L = −(1/4)(A_1 + A_3) = −(2 − 3)/4 = 0.25; ∂L/∂logp = −w·A/4
    assert float(out.loss.detach()) == pytest.approx(0.25, abs=1e-15)
    out.loss.backward()
    assert logprob.grad.tolist() == pytest.approx([0.0, -0.5, 0.0, 0.75, 0.0], abs=1e-15)
    assert controller.metrics()["token_selected_share"] == 0.5


def test_kl_cov_by_hand() -> None:
    # Ā = 0, l̄ = −1 → Cov = [0.5, −0.5, −0.5, 0.5]; k = max(1, ⌊0.25·4⌋) = 1: the tie goes to t = 0.
    controller = create_controller({"name": "kl_cov", "ratio": 0.25, "kl_coef": 2.0})
    assert controller.clip_bounds() == (1.0, UNCLIPPED)
    logprob = torch.tensor([-0.5, -1.5, -0.5, -1.5], dtype=F64, requires_grad=True)
    old = [-0.6, -1.5, -0.5, -1.7]
    adv = [1.0, 1.0, -1.0, -1.0]
    stats = stats_of(logprob.detach(), old, [1.0] * 4, adv, [1.0] * 4)
    action = controller.token_action(stats, LOCAL)
    assert action.kl_coef.tolist() == [2.0, 0.0, 0.0, 0.0]
    out = loss_with(controller, stats, logprob, action)
    # unclipped: L = −(1/4)(e^0.1 + 1 − 1 − e^0.2) + (1/4)·2·|0.1|
    expected = -(math.exp(0.1) - math.exp(0.2)) / 4 + 2.0 * 0.1 / 4
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-14)
    out.loss.backward()
    grad = [(-math.exp(0.1) + 2.0) / 4, -0.25, 0.25, math.exp(0.2) / 4]
    assert logprob.grad.tolist() == pytest.approx(grad, rel=1e-14)


def test_clip_cov_by_hand() -> None:
    # Ā = 0, l̄ = −1 → Cov = [2, −2, −2, 2]: t = 0 and t = 3 lie in the band (1, 5); r = 0.25 → 1 token.
    logprob = torch.tensor([0.0, 0.0, -2.0, -2.0], dtype=F64, requires_grad=True)
    adv = [2.0, -2.0, 2.0, -2.0]
    chosen = set()
    for step in range(1, 30):
        controller = create_controller({"name": "clip_cov", "ratio": 0.25})
        stats = stats_of(logprob.detach(), logprob.detach(), [1.0] * 4, adv, [1.0] * 4, step=step)
        action = controller.token_action(stats, LOCAL)
        detached = action.detach.nonzero().reshape(-1).tolist()
        assert len(detached) == 1 and detached[0] in (0, 3)
        chosen.add(detached[0])
        logprob.grad = None
        out = loss_with(controller, stats, logprob, action)
        assert float(out.loss.detach()) == pytest.approx(0.0, abs=1e-15)  # the detached token keeps its value
        out.loss.backward()
        expected = [-a / 4 for a in adv]
        expected[detached[0]] = 0.0
        assert logprob.grad.tolist() == pytest.approx(expected, abs=1e-15)
    assert chosen == {0, 3}  # the draw is random over the band, seeded by the step


def test_clip_cov_skips_tokens_the_ppo_clip_already_binds() -> None:
    # t = 0: A > 0 and ρ = e^0.3 > 1.2 → clipped → not eligible; only t = 3 can be detached.
    for step in range(1, 20):
        controller = create_controller({"name": "clip_cov", "ratio": 0.25})
        stats = stats_of(
            [0.0, 0.0, -2.0, -2.0],
            [-0.3, 0.0, -2.0, -2.0],
            [1.0] * 4,
            [2.0, -2.0, 2.0, -2.0],
            [1.0] * 4,
            step,
        )
        assert controller.token_action(stats, LOCAL).detach.tolist() == [False, False, False, True]


def test_top_fraction_breaks_ties_by_index_and_counts_like_verl() -> None:
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    assert top_fraction(scores, mask, 0.5).tolist() == [False, True, True, False, False]
    assert top_fraction(scores, mask, 0.01).tolist() == [False, True, False, False, False]  # at least 1
    assert not top_fraction(scores, torch.zeros(5), 0.5).any()  # no valid token: nothing


# -- the reference semantics on random inputs ------------------------------------------------------


def random_tokens(n: int, seed: int, spread: float = 2.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, generator=g, dtype=F64) * 4.0
    logprob = old + (torch.rand(n, generator=g, dtype=F64) - 0.5) * 1.2  # |Δ| ≤ 0.6
    adv = (torch.rand(n, generator=g, dtype=F64) - 0.5) * 2 * spread
    entropy = torch.rand(n, generator=g, dtype=F64) * 3.0
    mask = (torch.rand(n, generator=g) > 0.15).to(F64)
    return {"logprob": logprob, "old": old, "adv": adv, "entropy": entropy, "mask": mask}


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum()


def reference_clip_cov(d, logprob, r, lb, ub, eps_low, eps_high, seed):
    """Cui et al. 2025 Clip-Cov as verl: the selected tokens' loss is multiplied by 0 (corr = 0)."""
    A, m, old = d["adv"], d["mask"], d["old"]
    ratio = torch.exp(logprob - old)
    pg1 = -A * ratio
    pg2 = -A * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    clip_by_origin = (pg2 > pg1) & (m > 0)
    cov = (A - masked_mean(A, m)) * (logprob.detach() - masked_mean(logprob.detach(), m))
    cov[m == 0] = -math.inf
    cov[clip_by_origin] = -math.inf
    clip_num = max(int(r * m.sum().item()), 1)
    candidates = torch.nonzero((cov < ub) & (cov > lb) & (m > 0)).reshape(-1)
    perm = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    corr = torch.ones_like(A)
    corr[candidates[perm[: min(clip_num, len(candidates))]]] = 0
    per_token = torch.maximum(pg1, pg2)
    return (per_token * corr * m).sum() / m.sum(), (per_token * (1 - corr) * m).sum() / m.sum(), corr


def reference_kl_cov(d, logprob, k_ratio, beta):
    A, m, old = d["adv"], d["mask"], d["old"]
    ratio = torch.exp(logprob - old)
    losses = -A * ratio
    valid = torch.nonzero(m > 0).reshape(-1)
    a, lp = A[valid], logprob.detach()[valid]
    cov = (a - a.mean()) * (lp - lp.mean())
    top = valid[torch.topk(cov, max(1, int(len(cov) * k_ratio))).indices]
    losses = losses.clone()
    losses[top] = losses[top] + beta * (logprob - old).abs()[top]
    return (losses * m).sum() / m.sum()


def reference_high_entropy(d, logprob, rho, eps_low, eps_high):
    """Wang et al. 2025: −1/N Σ 1[H_t ≥ τ_ρ]·min(ρA, clip(ρ)A), τ_ρ the ⌊ρ·N⌋-th largest entropy."""
    A, m, old, H = d["adv"], d["mask"], d["old"], d["entropy"]
    k = max(1, int(rho * m.sum().item()))
    tau = torch.sort(H[m > 0], descending=True).values[k - 1]
    ratio = torch.exp(logprob - old)
    surrogate = torch.minimum(ratio * A, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * A)
    return -((H >= tau).to(F64) * surrogate * m).sum() / m.sum()


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


@SETTINGS
@given(n=st.integers(1, 200), seed=st.integers(0, 2**31), r=st.floats(1e-3, 0.5), step=st.integers(1, 10**6))
def test_clip_cov_matches_the_reference(n: int, seed: int, r: float, step: int) -> None:
    d = random_tokens(n, seed, spread=4.0)
    if d["mask"].sum() == 0:
        return
    controller = create_controller({"name": "clip_cov", "ratio": r})
    stats = stats_of(d["logprob"], d["old"], d["entropy"], d["adv"], d["mask"], step)
    lp = d["logprob"].clone().requires_grad_(True)
    ours = loss_with(controller, stats, lp, controller.token_action(stats, LOCAL)).loss
    lp_ref = d["logprob"].clone().requires_grad_(True)
    verl, detached_part, corr = reference_clip_cov(d, lp_ref, r, 1.0, 5.0, 0.2, 0.2, selection_seed(0, step))
    # Same gradient; the value differs by the detached tokens' terms (kept here, zeroed by verl).
    torch.testing.assert_close(ours, verl + detached_part.detach(), **TOL)
    torch.testing.assert_close(grad_of(ours, lp), grad_of(verl, lp_ref), **TOL)
    assert controller.metrics()["token_selected_share"] == pytest.approx(
        float(((corr == 0) & (d["mask"] > 0)).sum()) / float(d["mask"].sum())
    )


@SETTINGS
@given(n=st.integers(1, 200), seed=st.integers(0, 2**31), k=st.floats(1e-3, 0.5), beta=st.floats(0.0, 3.0))
def test_kl_cov_matches_the_reference(n: int, seed: int, k: float, beta: float) -> None:
    d = random_tokens(n, seed)
    if d["mask"].sum() == 0:
        return
    controller = create_controller({"name": "kl_cov", "ratio": k, "kl_coef": beta})
    stats = stats_of(d["logprob"], d["old"], d["entropy"], d["adv"], d["mask"])
    lp = d["logprob"].clone().requires_grad_(True)
    ours = loss_with(controller, stats, lp, controller.token_action(stats, LOCAL)).loss
    lp_ref = d["logprob"].clone().requires_grad_(True)
    ref = reference_kl_cov(d, lp_ref, k, beta)
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(grad_of(ours, lp), grad_of(ref, lp_ref), **TOL)


@SETTINGS
@given(n=st.integers(1, 200), seed=st.integers(0, 2**31), rho=st.floats(1e-3, 1.0))
def test_high_entropy_tokens_match_the_reference(n: int, seed: int, rho: float) -> None:
    d = random_tokens(n, seed)
    if d["mask"].sum() == 0:
        return
    controller = create_controller({"name": "high_entropy_tokens", "fraction": rho})
    stats = stats_of(d["logprob"], d["old"], d["entropy"], d["adv"], d["mask"])
    lp = d["logprob"].clone().requires_grad_(True)
    ours = loss_with(controller, stats, lp, controller.token_action(stats, LOCAL)).loss
    lp_ref = d["logprob"].clone().requires_grad_(True)
    ref = reference_high_entropy(d, lp_ref, rho, 0.2, 0.28)
    torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(grad_of(ours, lp), grad_of(ref, lp_ref), **TOL)


# -- the fused path ----------------------------------------------------------------------------------


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(1, 60), chunk=st.sampled_from([1, 7, 64]))
def test_fused_loss_with_a_token_action_equals_the_reference_path(seed: int, n: int, chunk: int) -> None:
    g = torch.Generator().manual_seed(seed)
    V, D, T = 23, 6, 0.8
    hidden = torch.randn(n, D, generator=g, dtype=F64)
    weight = torch.randn(V, D, generator=g, dtype=F64)
    targets = torch.randint(0, V, (n,), generator=g)
    with torch.no_grad():
        current, _ = token_logprob_entropy(hidden @ weight.T, targets, T)
    old = current + (torch.rand(n, generator=g, dtype=F64) - 0.5) * 0.8
    adv = torch.randn(n, generator=g, dtype=F64)
    coef = torch.rand(n, generator=g, dtype=F64) * 0.1
    mask = (torch.rand(n, generator=g) > 0.2).to(F64)
    action = TokenAction(
        weight=(torch.rand(n, generator=g, dtype=F64) > 0.3).to(F64) * 1.5,
        detach=torch.rand(n, generator=g) > 0.7,
        kl_coef=torch.rand(n, generator=g, dtype=F64),
    )
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    fused = fused_policy_loss(
        h1, w1, targets, old, adv, coef, mask, 0.2, 0.28, T, chunk_size=chunk, token_action=action
    )
    fused.loss.backward()
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, ent = token_logprob_entropy(h2 @ w2.T, targets, T)
    ref = policy_loss(lp, ent, old, adv, coef, mask, 0.2, 0.28, token_action=action)
    ref.loss.backward()
    torch.testing.assert_close(fused.loss, ref.loss, **TOL)
    torch.testing.assert_close(h1.grad, h2.grad, **TOL)
    torch.testing.assert_close(w1.grad, w2.grad, **TOL)


# -- composition ---------------------------------------------------------------------------------------


def test_combined_plans_like_its_prompt_controller_and_acts_like_its_token_controller() -> None:
    from entropyctl import EntropyReading

    combined = create_controller({"name": "combined", "prompt": {"name": "aer"}, "token": {"name": "kl_cov"}})
    aer, kl = create_controller("aer"), create_controller("kl_cov")
    for step, h in enumerate([1.0, 0.8, 0.3, 0.2], start=1):
        outcome = GroupOutcome(accuracy=torch.tensor([0.0, 0.25, 0.75, 1.0]), group_size=4, step=step)
        plan, expected = combined.plan(outcome), aer.plan(outcome)
        assert torch.equal(plan.coef, expected.coef) and bool((plan.coef > 0).any())
        assert (plan.clip_low, plan.clip_high) == kl.clip_bounds()  # clip_from: token
        d = random_tokens(50, step)
        stats = stats_of(d["logprob"], d["old"], d["entropy"], d["adv"], d["mask"], step)
        assert torch.equal(combined.token_action(stats, LOCAL).kl_coef, kl.token_action(stats, LOCAL).kl_coef)
        reading = EntropyReading(mean_entropy=h, tokens=100, step=step)
        combined.observe(reading)
        aer.observe(reading)
    assert combined.metrics()["alpha"] == aer.metrics()["alpha"]
    restored = create_controller(combined.config)
    restored.load_state_dict(combined.state_dict())
    assert restored.state_dict() == combined.state_dict()
    prompt_clip = create_controller({"name": "combined", "token": "clip_cov", "clip_from": "prompt"})
    outcome = GroupOutcome(accuracy=torch.tensor([0.5]), group_size=4, step=1)
    assert (prompt_clip.plan(outcome).clip_low, prompt_clip.plan(outcome).clip_high) == (0.2, 0.2)


def test_shipped_token_level_study_is_the_collapse_study_with_five_arms(tmp_path) -> None:
    """configs/ablation_token_level.yaml = configs/ablation_collapse_v3.yaml cut to 1500 steps, with the arms
    no bonus, aer, clip_cov, kl_cov, high_entropy_tokens (each at its defaults), 3 seeds. (Its no-bonus and
    aer arms are read from the v3 runs at step 1500: benchmarks/token_level_reading.py.)"""
    from pathlib import Path

    import yaml

    from entropyctl.experiments.ablate import parse_arms, plan_runs

    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "configs" / "ablation_collapse_v3.yaml").read_text())
    study = yaml.safe_load((root / "configs" / "ablation_token_level.yaml").read_text())
    section = study.pop("ablation")
    base.pop("ablation")
    assert base["trainer"]["steps"] == 3000 and study["trainer"]["steps"] == 1500
    base["trainer"]["steps"] = 1500
    assert study == base
    arms = parse_arms(section["arms"], where="ablation.arms")
    names = ["fixed:alpha=0", "aer", "clip_cov", "kl_cov", "high_entropy_tokens"]
    assert [a.label for a in arms] == names and section["seeds"] >= 3
    specs = plan_runs(study, arms, [0], tmp_path)
    controllers = {s.arm.label: s.config["controller"] for s in specs}
    assert controllers["clip_cov"]["ratio"] == 2e-4 and controllers["kl_cov"]["ratio"] == 2e-3
    assert controllers["high_entropy_tokens"]["fraction"] == 0.2


@pytest.mark.parametrize("fused", [False, True])
def test_kl_cov_plan_is_unclipped_in_fp32(fused: bool) -> None:
    # The upper bound UNCLIPPED exceeds fp32's range: the loss must neither overflow nor clip ρ = e^1.
    controller = create_controller("kl_cov")
    plan = controller.plan(GroupOutcome(torch.zeros(1), 1, 1))
    g = torch.Generator().manual_seed(0)
    n, V, D = 16, 11, 4
    hidden, weight = torch.randn(n, D, generator=g), torch.randn(V, D, generator=g)
    targets = torch.randint(0, V, (n,), generator=g)
    current, entropy = token_logprob_entropy(hidden @ weight.T, targets)
    old = current - 1.0  # ρ = e for every token: far outside any usual clip range
    adv, mask = torch.ones(n), torch.ones(n)
    if fused:
        out = fused_policy_loss(hidden, weight, targets, old, adv, 0.0, mask, plan.clip_low, plan.clip_high)
    else:
        out = policy_loss(current, entropy, old, adv, 0.0, mask, plan.clip_low, plan.clip_high)
    # −(1/N) Σ ρ·A = −e (fp32: |error| ≲ 16 terms · 2 ulp(e))
    assert float(out.loss.detach()) == pytest.approx(-math.e, rel=1e-6)
    assert float(out.clip_frac_high) == 0.0 and float(out.clip_frac_low) == 0.0


def test_step_token_action_is_none_per_prompt_and_checks_a_plugins_shapes() -> None:
    from entropyctl.controllers.token_level import HighEntropyTokensController, step_token_action

    stats = stats_of([-1.0, -2.0], [-1.0, -2.0], [0.5, 1.5], [1.0, -1.0], [1.0, 1.0])
    assert step_token_action(create_controller("aer"), stats, LOCAL) is None
    action = step_token_action(create_controller("high_entropy_tokens"), stats, LOCAL)
    assert action is not None and action.weight.tolist() == [0.0, 1.0]

    class Broken(HighEntropyTokensController):
        def token_action(self, stats, collective):  # one value too many
            return TokenAction(weight=torch.ones(stats.logprob.shape[0] + 1))

    broken = Broken(create_controller("high_entropy_tokens").config)
    with pytest.raises(ValueError, match=r"token_action\(\)\.weight has shape \(3,\); expected .* \[2\]"):
        step_token_action(broken, stats, LOCAL)


def test_combined_parts_without_a_name_are_options_of_the_default_parts() -> None:
    combined = create_controller({"name": "combined", "prompt": {"alpha_0": 0.01}, "token": {"ratio": 0.1}})
    assert combined.config.prompt.name == "aer" and combined.config.prompt.alpha_0 == 0.01
    assert combined.config.token.name == "clip_cov" and combined.config.token.ratio == 0.1
    with pytest.raises(Exception, match=r"controller\.token\.ratio: must be ≤ 1"):
        create_controller({"name": "combined", "token": {"ratio": 2.0}})


def test_the_selected_share_is_of_every_ranks_tokens() -> None:
    """Two ranks (threads sharing an all_gather) with 6 and 2 valid tokens: ρ = 0.25 of 8 selects 2 tokens
    globally — both on rank 0 (the highest entropies). Each rank logs 2/8; rank 0 logged its own 2/6 and
    rank 1 0/2 (only rank 0's reached metrics.csv)."""
    import threading

    barrier = threading.Barrier(2)
    shared: dict[int, torch.Tensor] = {}

    def gather_for(rank: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def all_gather(t: torch.Tensor) -> torch.Tensor:
            shared[rank] = t
            barrier.wait()
            out = torch.stack([shared[0], shared[1]])
            barrier.wait()
            return out

        return all_gather

    entropies = {0: [3.0, 2.5, 0.1, 0.2, 0.3, 0.4], 1: [1.0, 0.5]}
    shares: dict[int, float] = {}

    def run(rank: int) -> None:
        controller = create_controller({"name": "high_entropy_tokens", "fraction": 0.25})
        h = entropies[rank]
        zeros = [0.0] * len(h)
        stats = stats_of(zeros, zeros, h, [1.0] * len(h), [1.0] * len(h))
        collective = TokenCollective(rank=rank, world_size=2, all_gather=gather_for(rank))
        action = controller.token_action(stats, collective)
        assert int(action.weight.sum()) == (2 if rank == 0 else 0)
        shares[rank] = controller.metrics()["token_selected_share"]

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert shares == {0: 0.25, 1: 0.25}
