"""The token-level controllers through the real trainer (tiny model, a few steps): the token action
reaches the loss on the fused and the full-logits path, with several PPO epochs and mini-batches."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_helpers import is_finite, read_metrics, tiny_config

from entropyctl.trainer.run import run_training

pytestmark = pytest.mark.slow  # ~15 s per training run on 2 loaded cores

BASE = ["trainer.steps=2", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
# The tiny model scores 0 on every prompt: the overlong penalty's length-dependent reward is what gives
# the advantages (and so the loss) something to be non-zero with.
PPO = [
    "algorithm.ppo_epochs=2",
    "algorithm.mini_batches=2",
    "rollout.overlong=penalty",
    "rollout.overlong_buffer=5",
]
SAME = (
    "reward",
    "entropy",
    "loss",
    "pg_loss",
    "entropy_loss",
    "clip_frac_low",
    "clip_frac_high",
    "grad_norm",
)


def run(tmp_path: Path, name: str, *overrides: str) -> list[dict[str, float]]:
    run_training(tiny_config(*BASE, *PPO, *overrides), tmp_path / name)
    return read_metrics(tmp_path / name)


# At this scale (~100 tokens per optimizer step, entropy ~2 nats) Clip-Cov's default band (1, 5)
# is empty (and the advantages are mostly 0): a band from −1 and r = 0.1 make it select.
WIDE_BAND = ["controller.ratio=0.1", "controller.cov_lower=-1.0"]
TOKEN_CONFIGS = {
    "clip_cov": ["controller.name=clip_cov", *WIDE_BAND],
    "kl_cov": ["controller.name=kl_cov"],
    "high_entropy_tokens": ["controller.name=high_entropy_tokens"],
    "combined": ["controller.name=combined", "controller.token.name=high_entropy_tokens"],
}


@pytest.mark.parametrize("controller", sorted(TOKEN_CONFIGS))
def test_each_token_level_controller_trains(controller: str, tmp_path: Path) -> None:
    rows = run(tmp_path, controller, *TOKEN_CONFIGS[controller])
    assert [r["step"] for r in rows] == [1.0, 2.0]
    for row in rows:
        for column in ("loss", "pg_loss", "entropy", "grad_norm", "controller/token_selected_share"):
            assert is_finite(row[column]), (controller, column)
        assert 0.0 < row["controller/token_selected_share"] <= 1.0
        assert row["pg_loss"] != 0.0


def test_training_on_every_token_is_clip_higher(tmp_path: Path) -> None:
    # high_entropy_tokens with ρ = 1 trains every token (w ≡ 1), no bonus, clip 0.2/0.28: exactly clip_higher.
    every = run(tmp_path, "every", "controller.name=high_entropy_tokens", "controller.fraction=1.0")
    dapo = run(tmp_path, "dapo", "controller.name=clip_higher")
    for a, b in zip(every, dapo, strict=True):
        for column in SAME:
            assert a[column] == b[column], column


def test_training_on_the_top_fifth_changes_the_update(tmp_path: Path) -> None:
    top = run(tmp_path, "top", "controller.name=high_entropy_tokens")
    dapo = run(tmp_path, "dapo", "controller.name=clip_higher")
    assert top[0]["reward"] == dapo[0]["reward"]  # the same rollouts at step 1 ...
    assert top[0]["pg_loss"] != dapo[0]["pg_loss"]  # ... a different loss on them
    assert 0.1 < top[0]["controller/token_selected_share"] <= 0.2  # ⌊0.2·n⌋/n of ~40 tokens


def test_fused_and_full_logits_paths_agree_with_a_token_action(tmp_path: Path) -> None:
    kl = ["controller.name=kl_cov", "controller.ratio=0.2"]
    fused = run(tmp_path, "fused", *kl, "algorithm.fused=true")
    logits = run(tmp_path, "logits", *kl, "algorithm.fused=false")
    for a, b in zip(fused, logits, strict=True):
        for column in ("reward", "entropy", "loss", "pg_loss", "controller/token_selected_share"):
            assert a[column] == pytest.approx(b[column], rel=1e-4, abs=1e-6), column
