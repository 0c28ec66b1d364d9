"""One test per phase of the RLVR step (entropyctl.trainer.phases): score, plan, observe and log on
hand-built inputs; collect and update through a one-step run, read by a callback from ``outputs["step"]``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from trainer_helpers import SIGNAL_STEP, read_metrics, tiny_config

from entropyctl import create_controller
from entropyctl.controllers.base import EntropyReading, GroupOutcome, Plan
from entropyctl.data.synthetic import Problem
from entropyctl.ops.advantages import group_advantages
from entropyctl.rollout.protocol import Completions
from entropyctl.trainer.phases import (
    LOCAL_SUMS,
    LOSS_PARTS,
    Collected,
    StepResult,
    Updated,
    local_sums,
    metrics_row,
    observe,
    plan_groups,
    score,
)
from entropyctl.trainer.stats import EntropyStats


def _collected(
    rewards: list[list[float]], lengths: list[int], levels: list[int], width: int = 6
) -> Collected:
    P, G = len(rewards), len(rewards[0])
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    return Collected(
        problems=[Problem(f"q{i}", "1", level) for i, level in enumerate(levels)],
        completions=Completions(
            prompt_ids=torch.ones(P * G, 2, dtype=torch.long),
            prompt_mask=torch.ones(P * G, 2, dtype=torch.long),
            response_ids=torch.ones(P * G, width, dtype=torch.long),
            response_mask=mask,
            truncated=torch.tensor([n == width for n in lengths]),
        ),
        rewards=torch.tensor(rewards),
        dropped=1,
        fillers=0,
    )


class _Rollout:
    overlong = "penalty"
    max_new_tokens = 6
    overlong_buffer = 2
    overlong_penalty_factor = 1.0


def test_score_shapes_rewards_counts_accuracy_and_normalises_in_groups() -> None:
    collected = _collected([[1.0, 0.5], [0.0, 1.0]], lengths=[2, 5, 6, 3], levels=[3, 1])
    scored = score(collected, _Rollout(), "group")
    # overlong penalty: 0 up to 6 - 2 = 4 tokens, -(len - 4) / 2 after: 5 -> -0.5, 6 -> -1
    assert scored.shaped.tolist() == [[1.0, 0.0], [-1.0, 1.0]]
    assert scored.accuracy.tolist() == [0.5, 0.5]  # 0.5 is partial credit, not a correct answer
    assert torch.equal(scored.advantages, group_advantages(scored.shaped, scale="group"))
    assert scored.lengths.tolist() == [2, 5, 6, 3] and scored.truncated.tolist() == [
        False,
        False,
        True,
        False,
    ]
    assert scored.levels.tolist() == [3, 1]


def test_the_overlong_penalty_scales_by_its_factor() -> None:
    """rollout.overlong_penalty_factor (verl's overlong_buffer.penalty_factor): the penalty at L_max is
    −factor, the ramp scaled alike; 1 is DAPO's (the test above)."""

    class Half(_Rollout):
        overlong_penalty_factor = 0.5

    collected = _collected([[1.0, 0.5], [0.0, 1.0]], lengths=[2, 5, 6, 3], levels=[3, 1])
    assert score(collected, Half(), "group").shaped.tolist() == [[1.0, 0.25], [-0.5, 1.0]]


def test_plan_spreads_the_controllers_plan_over_sequences_and_masks_overlong() -> None:
    collected = _collected([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], lengths=[2, 6, 3, 3, 6, 1], levels=[0, 1, 2])
    scored = score(collected, _Rollout(), "group")
    controller = create_controller({"name": "fixed", "alpha": 0.02})
    planned = plan_groups(controller, scored, step=1, mask_overlong=True)
    expected = controller.plan(GroupOutcome(accuracy=scored.accuracy, group_size=2, step=1))
    assert torch.equal(planned.seq_coef, expected.coef.float().repeat_interleave(2))
    assert planned.plan.clip_low == expected.clip_low
    assert planned.seq_adv.tolist() == scored.advantages.reshape(-1).tolist()
    assert planned.seq_level.tolist() == [0, 0, 1, 1, 2, 2]
    assert planned.seq_mask.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert plan_groups(controller, scored, step=1, mask_overlong=False).seq_mask.tolist() == [1.0] * 6


def test_plan_refuses_a_coefficient_per_group_of_the_wrong_shape() -> None:
    class Broken:
        name = "broken"

        def plan(self, outcome: GroupOutcome) -> Plan:
            return Plan(coef=torch.zeros(outcome.accuracy.numel() + 1), clip_low=0.2, clip_high=0.2)

    scored = score(_collected([[1.0, 0.0]], lengths=[1, 1], levels=[0]), _Rollout(), "group")
    with pytest.raises(RuntimeError, match=r"coef of shape \(2,\), expected \[1\]"):
        plan_groups(Broken(), scored, step=1, mask_overlong=False)  # type: ignore[arg-type]


def test_observe_feeds_the_token_weighted_reading_to_the_controller() -> None:
    stats = EntropyStats([0, 1])
    entropy = torch.tensor([1.0, 2.0, 4.0])
    stats.add(entropy, torch.tensor([1.0, 1.0, 0.0]), bucket=torch.tensor([0, 1, 1]), coef=torch.zeros(3))
    seen: list[EntropyReading] = []

    class Recorder:
        def observe(self, reading: EntropyReading) -> None:
            seen.append(reading)

    reading = observe(Recorder(), stats, None, step=7)  # type: ignore[arg-type]
    assert seen == [reading]
    assert (reading.mean_entropy, reading.tokens, reading.step) == (1.5, 2, 7)


def test_log_row_divides_the_global_sums() -> None:
    collected = _collected([[1.0, 0.0], [1.0, 1.0]], lengths=[2, 4, 6, 1], levels=[0, 1])
    scored = score(collected, _Rollout(), "none")
    stats = EntropyStats([0, 1])
    stats.add(torch.ones(4), torch.ones(4), bucket=torch.tensor([0, 0, 1, 1]), coef=torch.full((4,), 0.1))
    stats.reduce(None)
    updated = Updated(stats=stats, grad_norm=2.0, lr=1e-3)
    updated.sums = dict.fromkeys(LOSS_PARTS, 0.25)
    local = local_sums(collected, scored, updated, {"timeout": 1}, [0, 1])
    assert len(local) == len(LOCAL_SUMS) + 4
    packed = [2 * v for v in local]  # two ranks with the same numbers
    reading = EntropyReading(mean_entropy=1.0, tokens=8, step=3)
    timers = {"rollout": 1.0, "reward": 2.0, "update": 3.0, "step": 7.0}
    row = metrics_row(3, packed, reading, updated, {"alpha": 0.5, "note": "x"}, [0, 1], timers)
    assert row["reward"] == pytest.approx(float(scored.shaped.sum()) / 4)
    assert row["accuracy"] == 0.75 and row["acc_level_0"] == 0.5 and row["acc_level_1"] == 1.0
    assert row["response_length"] == pytest.approx(13 / 4) and row["truncated_frac"] == 0.25
    assert row["dropped_groups"] == 2 and row["reward_timeout"] == 2 and row["loss"] == 0.5
    assert row["alpha"] == 0.5 and row["controller/alpha"] == 0.5 and math.isnan(row["controller/note"])
    assert row["time_step"] == 7.0 and row["grad_norm"] == 2.0 and row["coef_mean"] == pytest.approx(0.1)


class _Capture(pl.Callback):
    def __init__(self) -> None:
        self.results: list[StepResult] = []

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.results.append(outputs["step"])


def test_collect_and_update_in_a_run_reach_callbacks(tmp_path: Path) -> None:
    from entropyctl.trainer.run import run_training

    capture = _Capture()
    config = tiny_config("trainer.steps=2", "algorithm.mini_batches=2")
    run_training(config, tmp_path, callbacks=[capture])
    rows = read_metrics(tmp_path)
    assert [r.step for r in capture.results] == [1, 2]
    P, G = config.rollout.prompts_per_step, config.rollout.group_size
    for result, row in zip(capture.results, rows, strict=True):
        assert result.collected.rewards.shape == (P, G) and len(result.collected.problems) == P
        assert result.collected.completions.num_sequences == P * G
        tokens = float(result.collected.completions.response_mask.sum())
        assert result.reading.tokens == row["tokens"] == tokens
        assert result.row["entropy"] == row["entropy"] == result.reading.mean_entropy
        assert result.planned.seq_coef.shape == (P * G,)


ZERO_REWARD = "def zero(completion, answer):\n    return 0.0\n"


class _Weights(pl.Callback):
    """The policy's weights at the start and at the end of a run."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.start = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.end = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}

    def change(self) -> float:
        return float(
            sum(float((self.end[k].double() - v.double()).norm() ** 2) for k, v in self.start.items())
        )


def _no_signal_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alpha: float, skip: bool) -> _Weights:
    from entropyctl.trainer.run import run_training

    (tmp_path / "zero_reward_mod.py").write_text(ZERO_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tiny_config(
        "trainer.steps=2",
        "reward.name=zero_reward_mod:zero",
        "controller.name=fixed",
        f"controller.alpha={alpha}",
        f"algorithm.skip_no_signal={str(skip).lower()}",
        "algorithm.ppo_epochs=2",  # a skipped step still counts as its two optimizer steps
    )
    weights = _Weights()
    run = tmp_path / f"run_{alpha}_{skip}"
    run_training(config, run, callbacks=[weights])
    rows = read_metrics(run)
    assert [r["reward"] for r in rows] == [0.0, 0.0]  # two steps, skipped or not
    assert all((r["grad_norm"] == 0.0) == skip and r["skipped"] == float(skip) for r in rows)
    assert all(math.isfinite(r["entropy"]) and r["tokens"] > 0 for r in rows)  # read on every step
    return weights


def test_a_bonus_alone_moves_the_policy_whatever_alpha_and_skip_no_signal_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every reward 0: no group has a signal, the loss is the entropy bonus alone. Adam divides the
    gradient by its own running scale, so a bonus 1000x smaller moves the weights about as far (the
    hazard docs/training.md describes); with algorithm.skip_no_signal no weight moves at all."""
    strong = _no_signal_run(tmp_path, monkeypatch, 1e-3, skip=False).change()
    weak = _no_signal_run(tmp_path, monkeypatch, 1e-6, skip=False).change()
    assert strong > 0 and weak > 0
    # Gradient descent would move the weights 1000x less; Adam moves them more than a tenth as far
    # (what it does not: the gradients of some weights fall to the size of its ε = 1e-8 at α = 1e-6).
    assert (weak / strong) ** 0.5 > 0.1
    assert _no_signal_run(tmp_path, monkeypatch, 1e-3, skip=True).change() == 0.0


def test_batch_std_over_two_processes_is_the_std_of_their_union() -> None:
    """advantage_scale=batch under DDP: the std is the global batch's, from two passes of summed moments (a
    fake all-reduce adds the other process's share of each pass), equal to the std of every reward at once."""
    from entropyctl.ops.advantages import reward_sums

    ours = _collected([[1.0, 0.0], [0.0, 0.0]], lengths=[2, 2, 2, 2], levels=[1, 1])
    theirs = torch.tensor([[1.0, 1.0], [1.0, 0.5], [0.0, 1.0]])
    passes: list[float] = []

    def reduce(t: torch.Tensor) -> torch.Tensor:
        if not passes:  # pass 1: (count, Σ r)
            count, total, _ = reward_sums(theirs)
            passes.append((float(t[1]) + total) / (float(t[0]) + count))  # the global mean
            return t + torch.tensor([count, total], dtype=torch.float64)
        _, about, squares = reward_sums(theirs, shift=passes[0])  # pass 2: about the global mean
        return t + torch.tensor([about, squares], dtype=torch.float64)

    class Plain(_Rollout):
        overlong = "truncate"

    scored = score(ours, Plain(), "batch", reduce=reduce)
    union = torch.cat([ours.rewards.reshape(-1), theirs.reshape(-1)])
    expected = group_advantages(ours.rewards, scale="batch", batch_std=float(union.std()))
    # fp32 rewards: the two stds round apart by an ulp or two of float32
    torch.testing.assert_close(scored.advantages, expected, rtol=4 * torch.finfo(torch.float32).eps, atol=0)
    assert float(union.std()) != pytest.approx(float(ours.rewards.std()))  # not the local std


def test_the_trainer_uses_the_configured_advantages(tmp_path: Path) -> None:
    """The same first step (α = 0: the loss is the policy-gradient term, ratio 1) under three advantages:
    the step's advantages are ops.advantages' for the config, and the logged pg loss scales with them —
    leave-one-out by G/(G − 1), the batch std by 1/(std of the step's rewards + ε)."""
    from entropyctl.trainer.run import run_training

    common = SIGNAL_STEP
    arms = {
        "none": ["algorithm.advantage_scale=none"],
        "rloo": ["algorithm.advantage_scale=none", "algorithm.advantage_baseline=leave-one-out"],
        "batch": ["algorithm.advantage_scale=batch"],
    }
    rows, results = {}, {}
    for name, extra in arms.items():
        capture = _Capture()
        run_training(tiny_config(*common, *extra), tmp_path / name, callbacks=[capture])
        ((rows[name],), (results[name],)) = read_metrics(tmp_path / name), capture.results
    shaped = results["none"].scored.shaped
    assert torch.equal(results["rloo"].scored.shaped, shaped) and abs(rows["none"]["pg_loss"]) > 1e-5
    G = shaped.shape[1]
    expected = {
        "none": group_advantages(shaped, scale="none"),
        "rloo": group_advantages(shaped, scale="none", baseline="leave-one-out"),
        "batch": group_advantages(shaped, scale="batch"),
    }
    for name, adv in expected.items():
        torch.testing.assert_close(results[name].scored.advantages, adv, rtol=0, atol=0)
    assert rows["rloo"]["pg_loss"] == pytest.approx(rows["none"]["pg_loss"] * G / (G - 1), rel=1e-5)
    std = float(shaped.reshape(-1).std())
    assert rows["batch"]["pg_loss"] == pytest.approx(rows["none"]["pg_loss"] / (std + 1e-6), rel=1e-5)


def test_shaping_rewards_add_to_the_reward_and_not_to_the_accuracy() -> None:
    """reward.shaping: the shaped reward is the verifier's + Σ w_k·score_k (then the overlong penalty); the
    accuracy (a solve is the verifier's score ≥ 1) and the level counts do not move; each score's sum goes
    to the metrics row as shaping/<label>, a mean over the rollouts."""
    collected = _collected([[1.0, 0.0], [0.0, 1.0]], lengths=[2, 2, 2, 2], levels=[1, 1])
    collected.shaping = torch.tensor([[[1.0, 0.5], [0.0, 0.5]], [[1.0, 0.0], [1.0, 1.0]]])  # [P, G, K=2]

    class Plain(_Rollout):
        overlong = "truncate"

    scored = score(collected, Plain(), "group", shaping_weights=[0.1, -2.0])
    expected = torch.tensor([[1.0 + 0.1 - 1.0, -1.0], [0.1, 1.0 + 0.1 - 2.0]])
    torch.testing.assert_close(scored.shaped, expected, rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    assert scored.accuracy.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="for 1 weights"):
        score(collected, Plain(), "group", shaping_weights=[0.1])
    updated = Updated(stats=EntropyStats([1]))
    local = local_sums(collected, scored, updated, {}, [1])
    assert local[-2:] == [3.0, 2.0]  # each shaping score's sum over the 4 rollouts, after the level sums
    reading = EntropyReading(mean_entropy=1.0, tokens=8.0, step=1)
    row = metrics_row(1, local, reading, updated, {}, [1], {}, ["fmt", "len"])
    assert row["shaping/fmt"] == 0.75 and row["shaping/len"] == 0.5
    assert row["accuracy"] == 0.5 and row["acc_level_1"] == 0.5  # the shaping sums are not level sums


def test_a_shaping_reward_trains_and_keeps_groups_from_dynamic_sampling(tmp_path: Path) -> None:
    """A real step with reward.shaping (a string comparison, weight 0.5) and DAPO's dynamic sampling: the
    shaped reward is the verifier's + 0.5·score, its column is logged, the verifier alone gives the
    accuracy, and a group whose verifier rewards are all equal but whose shaped ones (or overlong
    penalties) differ is kept — the barely trained tiny model solves nothing, so without either every
    group is dropped."""
    from entropyctl.trainer.run import run_training

    common = ["trainer.steps=1", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
    common += ["rollout.dynamic_sampling=true", "controller.name=fixed", "controller.alpha=0.0"]
    capture = _Capture()
    shaped_run = tiny_config(*common, "reward.shaping=[{name: 'operator:lt', weight: 0.5}]")
    run_training(shaped_run, tmp_path / "shaped", callbacks=[capture])
    run_training(tiny_config(*common), tmp_path / "plain")
    # DAPO's overlong penalty is part of that reward too: responses of different lengths in its buffer
    # give a group a signal (6 new tokens, a 4-token buffer)
    run_training(
        tiny_config(*common, "rollout.overlong=penalty", "rollout.overlong_buffer=4"), tmp_path / "pen"
    )
    ((with_shaping,), (plain,)) = read_metrics(tmp_path / "shaped"), read_metrics(tmp_path / "plain")
    (penalised,) = read_metrics(tmp_path / "pen")
    assert penalised["dropped_groups"] < plain["dropped_groups"]
    (result,) = capture.results
    scores = result.collected.shaping
    assert scores is not None and scores.shape[-1] == 1
    torch.testing.assert_close(result.scored.shaped, result.collected.rewards + 0.5 * scores[..., 0])
    assert with_shaping["shaping/lt"] == pytest.approx(float(scores.mean()))
    assert with_shaping["reward"] == pytest.approx(
        with_shaping["accuracy"] + 0.5 * with_shaping["shaping/lt"]
    )
    assert plain["accuracy"] == 0.0 and plain["filler_groups"] == shaped_run.rollout.prompts_per_step
    assert with_shaping["dropped_groups"] < plain["dropped_groups"]
    assert with_shaping["filler_groups"] < plain["filler_groups"] and abs(with_shaping["pg_loss"]) > 1e-5
    assert "shaping/lt" not in plain


def test_a_sequence_level_ratio_trains_off_policy_and_refuses_token_controllers(tmp_path: Path) -> None:
    """algorithm.importance_level=sequence (GSPO) in a real run with two PPO epochs of two mini-batches:
    the same rollouts and entropy reading as the token-level run, a different policy loss once the ratios
    leave 1 (their equality at ratio 1 is tests/test_losses.py's); a controller acting per token, or a
    per-token importance correction, is refused when the config loads (so `entropyctl ablate` refuses such
    an arm before any run)."""
    from entropyctl.config import ConfigError
    from entropyctl.trainer.run import run_training

    common = ["trainer.steps=1", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
    common += ["algorithm.ppo_epochs=2", "algorithm.mini_batches=2", "reward.name=operator:lt"]
    runs = {}
    for level in ("token", "sequence"):
        run_training(tiny_config(*common, f"algorithm.importance_level={level}"), tmp_path / level)
        (runs[level],) = read_metrics(tmp_path / level)
    token, seq = runs["token"], runs["sequence"]
    assert (
        token["tokens"] == seq["tokens"] and token["entropy"] == seq["entropy"]
    )  # the same rollouts and reading
    assert all(
        math.isfinite(seq[k]) for k in ("loss", "pg_loss", "grad_norm", "clip_frac_low", "clip_frac_high")
    )
    assert seq["pg_loss"] != token["pg_loss"]  # the second epoch's ratios are the responses', not the tokens'
    with pytest.raises(ConfigError, match="shares one ratio over each response; controller .clip_cov."):
        tiny_config(*common, "algorithm.importance_level=sequence", "controller.name=clip_cov")
    with pytest.raises(ConfigError, match="use sequence_truncate or sequence_mask"):
        tiny_config("algorithm.importance_level=sequence", "algorithm.rollout_correction.mode=token_truncate")


def test_the_kl_in_the_reward_lowers_the_reward_and_not_the_accuracy() -> None:
    """algorithm.kl_reward_coef β_r: the shaped reward less β_r × each response's KL sum (after the overlong
    penalty), the advantages from it, the accuracy the verifier's; kl_reward in the row is the mean sum."""
    collected = _collected([[1.0, 0.0], [0.0, 1.0]], lengths=[2, 5, 6, 3], levels=[1, 1])
    collected.kl_sums = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    plain = score(collected, _Rollout(), "group")
    scored = score(collected, _Rollout(), "group", kl_reward_coef=0.25)
    expected = plain.shaped.double() - 0.25 * torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(scored.shaped, expected, rtol=0, atol=1e-15)
    assert torch.equal(scored.advantages, group_advantages(scored.shaped, scale="group"))
    # (groups of 2 scaled by their std are ±0.71 whatever the rewards: unscaled, the penalty shows)
    unscaled = score(collected, _Rollout(), "none", kl_reward_coef=0.25).advantages
    assert not torch.allclose(unscaled, score(collected, _Rollout(), "none").advantages.double())
    assert torch.equal(scored.accuracy, plain.accuracy)
    # docs/training.md: a group whose verifier rewards are all equal gets unit-scale advantages from the KL
    # spread alone under the group's std, whatever β_r (β_r·spread well above the advantages' ε = 1e-6);
    # unscaled, β_r keeps its size. A group of right answers and one of wrong ones with the same KL sums
    # get the same advantages (the penalty is taken in float64: in float32 it rounded away next to 1.0),
    # and neither is a signal for algorithm.skip_no_signal.
    same = _collected([[0.0, 0.0], [1.0, 1.0]], lengths=[2, 3, 2, 3], levels=[1, 1])
    same.kl_sums = torch.tensor([0.5, -1.0, 0.5, -1.0], dtype=torch.float64)
    for beta in (1e-3, 1.0):
        both = score(same, _Rollout(), "group", kl_reward_coef=beta)
        torch.testing.assert_close(
            both.advantages[0], torch.tensor([-0.7071, 0.7071], dtype=torch.float64), rtol=0, atol=1e-3
        )
        torch.testing.assert_close(both.advantages[0], both.advantages[1], rtol=1e-9, atol=0)
        assert both.signal is not None and not bool(both.signal.any())
        raw = score(same, _Rollout(), "none", kl_reward_coef=beta).advantages
        torch.testing.assert_close(
            raw[0], beta * torch.tensor([-0.75, 0.75], dtype=torch.float64), rtol=1e-12, atol=0
        )
    tiny = _collected([[1.0, 1.0]], lengths=[2, 3], levels=[1])
    tiny.kl_sums = torch.tensor(
        [1e-3, 0.0], dtype=torch.float64
    )  # β_r·spread 1e-6 would vanish at 1.0 in float32
    assert float(score(tiny, _Rollout(), "none", kl_reward_coef=1e-3).advantages[0, 0]) == pytest.approx(
        -5e-7, rel=1e-9
    )
    assert scored.signal is not None and scored.signal.tolist() == [[True, True], [True, True]]
    assert plain.signal is None
    updated = Updated(stats=EntropyStats([1]))
    reading = EntropyReading(mean_entropy=1.0, tokens=8.0, step=1)
    row = metrics_row(1, local_sums(collected, scored, updated, {}, [1]), reading, updated, {}, [1], {})
    assert row["kl_reward"] == pytest.approx(1.5 / 4)
    collected.kl_sums = None
    off = metrics_row(1, local_sums(collected, plain, updated, {}, [1]), reading, updated, {}, [1], {})
    assert math.isnan(off["kl_reward"])


def test_a_run_with_the_kl_in_the_reward(tmp_path: Path) -> None:
    """A real run with algorithm.kl_reward_coef: step 1's policy is the reference (KL 0 exactly), later
    steps' is not; the reward column is the verifier's less β_r·kl_reward; the sums do not depend on the
    micro-batches they are read in; and they agree with the loss's own k1 term, a separate pass (at
    ratio 1, one update per step: Σ_tokens (log π − log π_ref) / tokens = kl_reward · rollouts / tokens)."""
    from entropyctl.trainer.run import run_training

    common = ["trainer.steps=3", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
    common += [
        "algorithm.ppo_epochs=1",
        "algorithm.mini_batches=1",
        "optim.lr=0.05",
        "reward.name=operator:lt",
    ]
    common += ["algorithm.kl_reward_coef=0.5", "algorithm.kl_coef=0.1", "algorithm.kl_estimator=k1"]
    capture = _Capture()
    config = tiny_config(*common)
    run_training(config, tmp_path / "whole", callbacks=[capture])
    run_training(tiny_config(*common, "algorithm.micro_batch_size=5"), tmp_path / "micro")
    rows, micro = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "micro")
    assert rows[0]["kl_reward"] == 0.0 and rows[0]["kl_loss"] == 0.0
    assert all(abs(r["kl_reward"]) > 1e-6 for r in rows[1:])
    n = config.rollout.prompts_per_step * config.rollout.group_size
    for row, other in zip(rows, micro, strict=True):
        assert row["reward"] == pytest.approx(row["accuracy"] - 0.5 * row["kl_reward"], rel=1e-6, abs=1e-9)
        assert other["kl_reward"] == pytest.approx(row["kl_reward"], rel=1e-4, abs=1e-7)
        assert row["kl_loss"] == pytest.approx(row["kl_reward"] * n / row["tokens"], rel=1e-4, abs=1e-7)
    for result in capture.results:
        sums = result.collected.kl_sums
        assert sums is not None
        expected = result.collected.rewards - 0.5 * sums.reshape(result.collected.rewards.shape)
        torch.testing.assert_close(result.scored.shaped, expected.to(result.scored.shaped.dtype))


def test_the_kl_in_the_reward_and_the_update_read_each_model_once(tmp_path: Path) -> None:
    """With the KL in the reward, the KL in the loss and several updates a step, the update reuses the
    KL pass's log-probs of π_old and π_ref: one no-grad forward of each model per micro-batch a step
    (two, before), and the same run as with a second pass, to the bit — the pass reads the update's own
    micro-batches, so π_old is what the update's own pass gave before (a pass over another cut of the
    rows differed by rounding, which in bf16 came near GSPO's clip range)."""
    from types import MethodType

    from entropyctl.trainer.run import run_training

    common = ["trainer.steps=3", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
    common += ["algorithm.ppo_epochs=2", "algorithm.mini_batches=2", "optim.lr=0.05"]
    common += ["algorithm.kl_reward_coef=0.5", "algorithm.kl_coef=0.1", "reward.name=operator:lt"]

    class _Count(pl.Callback):
        def __init__(self, second_pass: bool) -> None:
            self.second_pass, self.calls = second_pass, {"policy": 0, "reference": 0, "grad": 0}

        def on_train_start(self, trainer: Any, module: Any) -> None:
            forward, update = module._forward_tokens, module.update

            def counted(model: Any, comp: Completions, grad: bool) -> Any:
                which = "grad" if grad else ("policy" if model is module.policy else "reference")
                self.calls[which] += 1
                return forward(model, comp, grad)

            def update_without_the_pass(*args: Any, **kwargs: Any) -> Any:
                kwargs["kl_pass"] = None  # the previous code: the update reads both models again
                return update(*args, **kwargs)

            module._forward_tokens = counted
            if self.second_pass:
                module.update = MethodType(lambda _, *a, **k: update_without_the_pass(*a, **k), module)

    once, twice = _Count(second_pass=False), _Count(second_pass=True)
    run_training(tiny_config(*common), tmp_path / "once", callbacks=[once])
    run_training(tiny_config(*common), tmp_path / "twice", callbacks=[twice])
    # per step: the KL pass reads the update's 2 mini-batches (2 forwards of each model); the update makes
    # 2 epochs × 2 mini-batches forwards with grad
    assert once.calls == {"policy": 3 * 2, "reference": 3 * 2, "grad": 3 * 4}
    assert twice.calls == {"policy": 3 * 4, "reference": 3 * 4, "grad": 3 * 4}
    rows, again = read_metrics(tmp_path / "once"), read_metrics(tmp_path / "twice")
    assert rows[1]["kl_reward"] != 0.0 and rows[1]["kl_loss"] != 0.0  # the reference was not the policy
    for row, other in zip(rows, again, strict=True):
        for key in ("loss", "pg_loss", "kl_loss", "kl_reward", "reward", "clip_frac_low", "clip_frac_high"):
            assert row[key] == other[key], key


def test_skip_no_signal_reads_the_advantages_before_the_kl_penalty() -> None:
    """algorithm.skip_no_signal with the KL in the reward: a step whose verifier rewards are all equal in
    every group has no signal, though the penalty's spread gives its advantages nonzero values (it would
    train at unit scale on the KL alone); one group with a signal is enough."""
    from types import SimpleNamespace

    from entropyctl.trainer.module import RLVRModule

    controller = create_controller({"name": "fixed", "alpha": 0.0})
    fake = SimpleNamespace(_reducer=lambda: None)
    for rewards, expected in [([[0.0, 0.0], [1.0, 1.0]], False), ([[0.0, 1.0], [1.0, 1.0]], True)]:
        collected = _collected(rewards, lengths=[2, 3, 2, 3], levels=[1, 1])
        collected.kl_sums = torch.tensor([0.5, -1.0, 0.2, 0.1], dtype=torch.float64)
        scored = score(collected, _Rollout(), "group", kl_reward_coef=0.1)
        planned = plan_groups(controller, scored, 1, mask_overlong=False)
        assert bool((planned.seq_adv != 0).all())  # every advantage nonzero: the KL's spread
        assert RLVRModule.has_signal(fake, planned) is expected  # type: ignore[arg-type]
