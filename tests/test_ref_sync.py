"""algorithm.ref_sync_steps / ref_sync_mix: the KL reference moved toward the policy every N steps
(TRL's sync_ref_model; m = 1 is the hard reference reset of prolonged RL): the mix, the refusals, a
run whose KL to the reference restarts at 0 after each hard sync, and a resume that keeps the moved
reference (it is saved in the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_resume import _KillAfter, _Killed
from trainer_helpers import read_metrics, tiny_config

from entropyctl.trainer.module import mix_into_reference
from entropyctl.trainer.run import run_training
from entropyctl.validation import ConfigError


def test_the_mix_is_a_convex_combination_by_parameter_name() -> None:
    torch.manual_seed(0)
    policy, reference = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    mix_into_reference(reference, policy, 0.25)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(value, 0.75 * before[name] + 0.25 * policy.state_dict()[name])
    mix_into_reference(reference, policy, 1.0)
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in reference.state_dict().items())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.ref_sync_steps=2"], "there is none"),
        (["algorithm.ref_sync_steps=2", "algorithm.kl_coef=0.1", "model.lora.r=4"], "not with model.lora"),
        (["algorithm.ref_sync_steps=2", "algorithm.kl_coef=0.1", "trainer.strategy=fsdp"], "fsdp"),
        (["algorithm.ref_sync_steps=2", "algorithm.kl_coef=0.1", "algorithm.ref_sync_mix=0"], "ref_sync_mix"),
    ],
    ids=["no-kl", "lora", "fsdp", "mix-0"],
)
def test_a_sync_that_could_not_act_is_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(*overrides)
    assert message in str(info.value)


def test_a_hard_sync_restarts_the_kl_and_a_resume_keeps_the_moved_reference(tmp_path: Path) -> None:
    """With the KL in the reward read at each step's start (π_old against π_ref), a hard sync after
    step 2 makes step 3's KL exactly 0 again (step 1's is: the reference is the initial policy); a run
    killed after step 3 and resumed from its step-2 checkpoint (written after that sync) logs the same."""
    common = ["trainer.steps=4", "eval.before=false", "eval.after=false", "trainer.checkpoint_every=1"]
    common += ["algorithm.ppo_epochs=1", "optim.lr=0.05", "reward.name=operator:lt"]
    common += ["algorithm.kl_reward_coef=0.5", "algorithm.ref_sync_steps=2", "algorithm.ref_sync_mix=1.0"]
    config = tiny_config(*common)
    run_training(config, tmp_path / "full")
    kl = [r["kl_reward"] for r in read_metrics(tmp_path / "full")]
    assert kl[0] == 0.0 and kl[2] == 0.0 and abs(kl[1]) > 1e-6 and abs(kl[3]) > 1e-6
    with pytest.raises(_Killed):
        run_training(config, tmp_path / "cut", callbacks=[_KillAfter(3)])
    run_training(config, tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoints" / "step-000002.ckpt"))
    assert [r["kl_reward"] for r in read_metrics(tmp_path / "cut")] == kl
