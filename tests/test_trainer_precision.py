"""The update under Lightning's precision plugins: the KL reference follows the policy's device and
dtype, and the gradient norm (logged, and clipped) is taken after fp16 loss scaling is undone.

fp16 loss scaling (``16-mixed``) is a CUDA setting; Lightning turns it into bf16 on a CPU. These tests
build the same plugin with a CPU ``GradScaler`` (CPU autocast runs fp16 too), which goes through the
same plugin code as on a GPU: the scaler multiplies the loss by 2^16 before backward and unscales the
gradients inside ``opt.step()``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from trainer_helpers import read_metrics, tiny_config

from entropyctl.config import ConfigError, load_run_config
from entropyctl.trainer.run import build_module

NO_EVAL = ["eval.before=false", "eval.after=false"]


def _fit(module: Any, steps: int, **trainer: Any) -> None:
    pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps * module.optimizer_steps_per_rlvr_step,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer,
    ).fit(module)


def test_the_kl_reference_takes_the_policys_dtype(tmp_path: Path) -> None:
    """bf16-true converts the policy's weights; the reference, hidden from nn.Module so that neither DDP
    nor checkpoints carry it, was left in fp32 (and on a GPU run, on the CPU). At the first step the
    reference is the policy itself, so in one precision the KL of that step's single update is exactly 0;
    a reference in another precision gives it a nonzero value from the rounding alone."""
    config = tiny_config("algorithm.kl_coef=0.05", "trainer.steps=1", *NO_EVAL)
    module = build_module(config, tmp_path)
    assert config.algorithm.updates_per_batch == 1
    _fit(module, 1, precision="bf16-true")
    policy = next(module.policy.parameters())
    reference = next(module._reference.module.parameters())
    assert policy.dtype == torch.bfloat16
    assert (reference.dtype, reference.device) == (policy.dtype, policy.device)
    assert read_metrics(tmp_path)[0]["kl_loss"] == 0.0


class _Probe:
    """Wraps the module's hook: the gradient norm right after it ran (after the clip)."""

    def __init__(self, module: Any) -> None:
        self.module, self.hook, self.after = module, module.on_before_optimizer_step, []
        module.on_before_optimizer_step = self

    def __call__(self, optimizer: Any) -> None:
        self.hook(optimizer)
        grads = [p.grad for p in self.module.policy.parameters() if p.grad is not None]
        self.after.append(float(torch.nn.utils.get_total_norm(grads)))


def _run(tmp_path: Path, name: str, fp16: bool, *overrides: str) -> tuple[list[float], list[float]]:
    config = tiny_config("trainer.steps=2", "optim.lr=1e-4", *NO_EVAL, *overrides)
    (tmp_path / name).mkdir()
    module = build_module(config, tmp_path / name)
    probe = _Probe(module)
    plugins = [MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))] if fp16 else []
    _fit(module, 2, plugins=plugins)
    return [row["grad_norm"] for row in read_metrics(tmp_path / name)], probe.after


def test_under_fp16_loss_scaling_the_norm_and_the_clip_see_unscaled_gradients(tmp_path: Path) -> None:
    """The same two steps in fp32 and under fp16 loss scaling log about the same gradient norm: fp16
    rounding moves a norm by far less than 2×, a norm read before the unscale is 2^16× too large (the
    scale after at most a few backoffs is still ≥ 2^10). With the clip set below that norm, the
    gradient the optimizer gets has the clip's norm (clip_grad_norm_ scales by clip/(norm + 1e-6)),
    not the clip divided by the loss scale."""
    reference, _ = _run(tmp_path, "fp32", False)
    scaled, _ = _run(tmp_path, "fp16", True)
    assert all(n > 0 and math.isfinite(n) for n in reference + scaled), (reference, scaled)
    for a, b in zip(reference, scaled, strict=True):
        assert abs(math.log2(b / a)) < 1.0, (reference, scaled)
    clip = reference[0] / 4
    logged, after = _run(tmp_path, "fp16_clip", True, f"optim.grad_clip={clip}")
    assert len(after) == 2 and logged[0] > clip
    for norm in after:
        assert norm == pytest.approx(clip, rel=1e-3)


def test_skip_no_signal_with_fp16_loss_scaling_fails_at_load() -> None:
    """A skipped step makes no backward, and a GradScaler cannot step without one (it asserts at the
    first such step): the combination fails when the config loads, naming both fields."""
    for precision in ("16-mixed", "'16'"):  # '16': Lightning's short form, quoted to stay a string
        with pytest.raises(
            ConfigError, match=r"algorithm\.skip_no_signal\S*: cannot run with fp16 loss"
        ) as err:
            load_run_config(None, ["algorithm.skip_no_signal=true", f"trainer.precision={precision}"])
        assert len(err.value.errors) == 1 and "bf16-mixed" in str(err.value)
    for precision in ("bf16-mixed", "32-true"):
        load_run_config(None, ["algorithm.skip_no_signal=true", f"trainer.precision={precision}"])
