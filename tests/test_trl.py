"""entropyctl controllers inside TRL's GRPOTrainer (one process, tiny Llama built in code, CPU).

- the entropy term: each loss type's aggregation against an explicit loop; a fixed α reproduces TRL's own
  entropy bonus exactly (loss and weights), and the plan's clip bounds reach TRL's clipped loss;
- per-prompt coefficients follow TRL's rewards through TRL's shuffle and micro-batch split;
- the reading is the exact token-weighted mean over every micro-batch of the accumulation window, and the
  controller observes once per optimizer step;
- a run resumed from a checkpoint ends with the same controller state and logs the same metrics;
- unsupported TRL options and bad arguments fail before the model is touched, naming the option.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import trl

from entropyctl import ConfigError
from entropyctl.integrations.trl import (
    CONTROLLER_STATE_FILE,
    SUPPORTED_LOSS_TYPES,
    WEIGHTED_SUM,
    GRPOTrainer,
    _dataset_levels,
    entropy_term,
)

SCRIPT = Path(__file__).parent / "mp_scripts" / "trl_worker.py"
_spec = importlib.util.spec_from_file_location("trl_worker", SCRIPT)
assert _spec is not None and _spec.loader is not None
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


def _train(trainer_class: type, out: Path, controller: Any = None, rewards=None, before=None, **config: Any):  # type: ignore[no-untyped-def]
    kwargs: dict[str, Any] = {} if controller is None else {"controller": controller}
    kwargs.update(config.pop("trainer_kwargs", {}))
    trainer = trainer_class(
        model=tiny.build_model(),
        reward_funcs=rewards or [tiny.digit_reward],
        args=tiny.tiny_config(str(out), **config),
        train_dataset=tiny.build_dataset(),
        processing_class=tiny.build_tokenizer(),
        **kwargs,
    )
    if before is not None:
        before(trainer)
    trainer.train()
    return trainer


def _step_logs(trainer: Any) -> list[dict[str, float]]:
    return [row for row in trainer.state.log_history if "loss" in row]


# ---- the entropy term's token weighting ------------------------------------------------------------------


def _loop_term(weighted: torch.Tensor, mask: torch.Tensor, loss_type: str, max_len: int) -> float:
    """The same normalisations written as plain loops over completions (accumulation 1)."""
    rows = [(float((weighted[b] * mask[b]).sum()), float(mask[b].sum())) for b in range(weighted.size(0))]
    if loss_type == "grpo":
        return sum(s / max(n, 1.0) for s, n in rows) / len(rows)
    if loss_type == "bnpo":
        return sum(s for s, _ in rows) / max(sum(n for _, n in rows), 1.0)
    if loss_type == "dr_grpo":
        return sum(s for s, _ in rows) / (len(rows) * max_len)
    if loss_type == "luspo":
        return sum(s for s, _ in rows) / len(rows)
    raise AssertionError(loss_type)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "luspo"])
def test_entropy_term_weights_tokens_like_the_loss_type(loss_type: str) -> None:
    gen = torch.Generator().manual_seed(1)
    weighted = torch.rand(5, 7, generator=gen, dtype=torch.float64)
    mask = (torch.rand(5, 7, generator=gen) > 0.3).double()
    mask[2] = 0.0  # a completion with no tokens
    got = entropy_term(weighted, mask, loss_type, accumulation_steps=3, max_completion_length=7)
    assert float(got) == pytest.approx(_loop_term(weighted, mask, loss_type, 7) / 3, rel=1e-12)


def test_dapo_entropy_term_is_the_window_token_mean() -> None:
    # dapo divides every micro-batch by the window's token count: the window's sum is Σ α·H·m / Σ m.
    gen = torch.Generator().manual_seed(2)
    micro = [
        (
            torch.rand(4, 6, generator=gen, dtype=torch.float64),
            (torch.rand(4, 6, generator=gen) > 0.4).double(),
        )
    ]
    micro.append(
        (
            torch.rand(4, 6, generator=gen, dtype=torch.float64),
            (torch.rand(4, 6, generator=gen) > 0.4).double(),
        )
    )
    window_tokens = sum(float(m.sum()) for _, m in micro)
    total = sum(
        float(entropy_term(w, m, "dapo", accumulation_steps=2, tokens_per_window=window_tokens))
        for w, m in micro
    )
    expected = sum(float((w * m).sum()) for w, m in micro) / window_tokens
    assert total == pytest.approx(expected, rel=1e-12)


def test_entropy_term_rejects_an_unknown_loss_type() -> None:
    with pytest.raises(ValueError, match="sapo.*expected one of"):
        entropy_term(torch.ones(1, 1), torch.ones(1, 1), "sapo", accumulation_steps=1)
    assert "sapo" not in SUPPORTED_LOSS_TYPES


# ---- end to end against TRL itself -----------------------------------------------------------------------


def test_fixed_alpha_reproduces_trl_entropy_bonus(tmp_path: Path) -> None:
    # bnpo normalises the policy term by the micro-batch's tokens, exactly as TRL normalises its own bonus:
    # `fixed` α = 0.1 must then give TRL's `entropy_coef=0.1` run, bit for bit up to float reassociation.
    config = {"loss_type": "bnpo", "gradient_accumulation_steps": 2, "max_steps": 2}
    ours = _train(GRPOTrainer, tmp_path / "ours", {"name": "fixed", "alpha": 0.1}, **config)
    theirs = _train(trl.GRPOTrainer, tmp_path / "trl", entropy_coef=0.1, **config)
    plain = _train(trl.GRPOTrainer, tmp_path / "plain", **config)
    for a, b in zip(_step_logs(ours), _step_logs(theirs), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a["entropyctl/entropy"] == pytest.approx(b["entropy"], rel=1e-5)
    # Adam turns fp32 reassociation in the loss (α·(ΣHm/Σm) vs (α·ΣHm)/Σm) into weight differences of ~1e-7
    # (measured 2.4e-7); the bonus itself moves weights by ~lr = 3e-3. 1e-5 separates the two by 30x both ways.
    moved = 0.0
    for (name, p), q, r in zip(
        ours.model.named_parameters(), theirs.model.parameters(), plain.model.parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)
        moved = max(moved, float((q - r).detach().abs().max()))
    assert moved > 1e-3  # the bonus changed the weights, so the comparison above had something to see


def test_trls_adaptive_entropy_is_the_target_config_its_refusal_names(tmp_path: Path) -> None:
    """``use_adaptive_entropy=True`` is refused in favour of a ``target`` config (sign rule, absolute target,
    ``update.apply: at_or_below_target``) built from the same arguments: that config must give TRL's own
    adaptive run — the coefficient it holds, the gate that applies it, the loss and the weights."""
    from entropyctl.integrations.trl import _trl_adaptive_as_target

    # the tiny model's entropy falls from ~2.77 to ~2.72 over these steps: 2.745 is crossed, so the gate is
    # shut on the first steps (the coefficient falls, unapplied) and open on the later ones (it rises, applied)
    adaptive = {"use_adaptive_entropy": True, "entropy_coef": 0.05, "entropy_target": 2.745}
    adaptive |= {"entropy_coef_delta": 0.02, "entropy_coef_max": 0.2}
    config = {"loss_type": "bnpo", "gradient_accumulation_steps": 2, "max_steps": 6}
    target = _trl_adaptive_as_target(tiny.tiny_config(str(tmp_path / "args"), **adaptive, **config))
    assert target["update"]["apply"] == "at_or_below_target"
    with pytest.raises(ValueError, match="use_adaptive_entropy=True"):
        _train(GRPOTrainer, tmp_path / "refused", target, **adaptive, **config)
    ours = _train(GRPOTrainer, tmp_path / "ours", target, **config)
    theirs = _train(trl.GRPOTrainer, tmp_path / "trl", **adaptive, **config)
    ungated = dict(target, update={**target["update"], "apply": "always"})
    plain = _train(GRPOTrainer, tmp_path / "ungated", ungated, **config)
    rows = list(zip(_step_logs(ours), _step_logs(theirs), strict=True))
    # (TRL's logged `entropy` is a mean of micro-batch means; its controller, like ours, reads the window's
    # token-weighted mean, which is what `entropyctl/entropy` logs)
    below = [a["entropyctl/entropy"] <= adaptive["entropy_target"] for a, _ in rows]
    assert any(below) and not all(below)  # both sides of the target are exercised
    for a, b in rows:
        assert a["entropyctl/alpha"] == pytest.approx(b["entropy_coef"], rel=1e-9)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    for (name, p), q in zip(ours.model.named_parameters(), theirs.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)  # tolerance as the fixed-α test's
    assert any(  # without the gate the same coefficients give another run
        float((p - q).detach().abs().max()) > 1e-4
        for p, q in zip(plain.model.parameters(), theirs.model.parameters(), strict=True)
    )


def test_the_refusals_target_config_loads_with_trls_defaults_and_a_start_outside_its_bounds(
    tmp_path: Path,
) -> None:
    from entropyctl import create_controller
    from entropyctl.integrations.trl import _trl_adaptive_as_target

    defaults = _trl_adaptive_as_target(tiny.tiny_config(str(tmp_path / "a"), use_adaptive_entropy=True))
    assert create_controller(defaults).config.update.alpha_max == 1.0  # type: ignore[attr-defined]
    # TRL starts its coefficient at entropy_coef (0.0 by default) whatever its bounds; alpha_0 must lie in them
    below = {"use_adaptive_entropy": True, "entropy_coef_min": 0.001, "entropy_coef_max": 0.5}
    config = _trl_adaptive_as_target(tiny.tiny_config(str(tmp_path / "b"), **below))
    assert create_controller(config).config.alpha_0 == 0.001  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="outside \\[entropy_coef_min, entropy_coef_max\\].*nearest bound"):
        _train(GRPOTrainer, tmp_path / "refused", "aer", **below)


def test_plan_clip_bounds_reach_trl_loss(tmp_path: Path) -> None:
    # clip_higher: α = 0, (ε_low, ε_high) = (0.2, 0.28): TRL's own run with epsilon_high=0.28, no bonus.
    # num_iterations=2 reuses each generation for a second update, so the ratio leaves 1 and clipping acts.
    config = {"gradient_accumulation_steps": 1, "max_steps": 4, "num_iterations": 2, "learning_rate": 3e-2}

    # TRL reads its clip bounds from trainer.epsilon_low/high: set them to the symmetric 0.2 after construction,
    # so only the plan, applied at every loss, can bring ε_high = 0.28 back.
    def symmetric_attributes(trainer: Any) -> None:
        trainer.epsilon_low = trainer.epsilon_high = 0.2

    ours = _train(
        GRPOTrainer,
        tmp_path / "ours",
        "clip_higher",
        before=symmetric_attributes,
        epsilon_high=0.28,
        **config,
    )
    theirs = _train(trl.GRPOTrainer, tmp_path / "trl", epsilon_high=0.28, **config)
    symmetric = _train(trl.GRPOTrainer, tmp_path / "sym", **config)
    assert any(row["clip_ratio/high_mean"] > 0 for row in _step_logs(theirs))
    for p, q in zip(ours.model.parameters(), theirs.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert any(
        not torch.allclose(q, r)
        for q, r in zip(theirs.model.parameters(), symmetric.model.parameters(), strict=True)
    )


def test_per_prompt_coefficients_and_exact_window_reading(tmp_path: Path) -> None:
    # prompt_reward: level 1 prompts always score 1, level 2 always 0, so acc_i ∈ {1, 0} and AER's threshold
    # rule (ρ = 0.5) gives level 1 no bonus and level 2 the full α_t, whatever TRL's shuffle and split do.
    # digit_reward rides along in the advantages; accuracy_reward picks prompt_reward alone for correctness
    # (the summed reward, 0-2, would make some level 2 completions "correct" at the 1.0 threshold).
    trainer = _train(
        tiny.RecordingTrainer,
        tmp_path,
        {"name": "aer", "alpha_0": 0.05},
        rewards=[tiny.prompt_reward, tiny.digit_reward],
        trainer_kwargs={"accuracy_reward": "prompt_reward"},
        gradient_accumulation_steps=2,
        max_steps=3,
    )
    logs = _step_logs(trainer)
    assert (
        len(logs) == 3 and trainer.controller.state_dict()["steps_observed"] == 3
    )  # once per optimizer step
    alpha_used = 0.05
    for row in logs:
        assert row["entropyctl/acc_level_1"] == 1.0 and row["entropyctl/acc_level_2"] == 0.0
        assert row["entropyctl/coef_level_1"] == 0.0
        assert row["entropyctl/coef_level_2"] == pytest.approx(alpha_used, rel=1e-6)
        alpha_used = row["entropyctl/alpha"]  # the controller's α after this step's update
        for key in ("entropy", "target_entropy", "h0", "coef_mean"):
            assert math.isfinite(row[f"entropyctl/{key}"])
    assert logs[-1]["entropyctl/alpha"] != 0.05  # the update moved α: the per-step check above saw new values
    # the reading of each step: Σ H·m / Σ m over both micro-batches of its window (recorded from TRL's entropies)
    for step, record in enumerate(trainer.steps):
        window = trainer.micro_batches[2 * step : 2 * step + 2]
        assert record["tokens"] == sum(n for _, n in window)
        # fp32 entropies (≤ log 16 nats) summed over ≤ 6 tokens per row: relative error well under 1e-6
        assert record["mean_entropy"] == pytest.approx(sum(s for s, _ in window) / record["tokens"], rel=1e-6)


def test_resume_restores_controller_state_and_metrics(tmp_path: Path) -> None:
    config = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "gradient_accumulation_steps": 1}
    controller = {"name": "aer", "alpha_0": 0.05}
    full = _train(GRPOTrainer, tmp_path / "full", controller, **config)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / CONTROLLER_STATE_FILE).exists()

    resumed = GRPOTrainer(
        model=tiny.build_model(),
        reward_funcs=[tiny.digit_reward],
        args=tiny.tiny_config(str(tmp_path / "resumed"), **config),
        train_dataset=tiny.build_dataset(),
        processing_class=tiny.build_tokenizer(),
        controller=controller,
    )
    fresh_state = resumed.controller.state_dict()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.controller.state_dict() == full.controller.state_dict() != fresh_state
    full_logs = {row["step"]: row for row in _step_logs(full)}
    resumed_logs = [
        row for row in _step_logs(resumed) if row["step"] > 2
    ]  # steps 1-2 come from the checkpoint
    assert [row["step"] for row in resumed_logs] == [3, 4]
    for row in resumed_logs:
        ours = {k: v for k, v in row.items() if k.startswith("entropyctl/")}
        assert ours == {k: v for k, v in full_logs[row["step"]].items() if k.startswith("entropyctl/")}

    # a checkpoint without the controller's state is refused, not silently restarted
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare)
    (bare / CONTROLLER_STATE_FILE).unlink()
    again = GRPOTrainer(
        model=tiny.build_model(),
        reward_funcs=[tiny.digit_reward],
        args=tiny.tiny_config(str(tmp_path / "again"), **config),
        train_dataset=tiny.build_dataset(),
        processing_class=tiny.build_tokenizer(),
        controller=controller,
    )
    with pytest.raises(FileNotFoundError, match=CONTROLLER_STATE_FILE):
        again.train(resume_from_checkpoint=str(bare))


def test_evaluation_uses_the_plan_but_never_updates_the_controller(tmp_path: Path) -> None:
    trainer = GRPOTrainer(
        model=tiny.build_model(),
        reward_funcs=[tiny.digit_reward],
        args=tiny.tiny_config(str(tmp_path), max_steps=2, eval_strategy="steps", eval_steps=1),
        train_dataset=tiny.build_dataset(),
        eval_dataset=tiny.build_dataset().select(range(8)),
        processing_class=tiny.build_tokenizer(),
        controller={"name": "aer", "alpha_0": 0.05},
    )
    trainer.train()
    evaluations = [row for row in trainer.state.log_history if "eval_loss" in row]
    assert len(evaluations) == 2 and all(math.isfinite(row["eval_loss"]) for row in evaluations)
    assert trainer.controller.state_dict()["steps_observed"] == 2  # the two training steps only


def test_metrics_reach_the_report_to_backend(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _train(GRPOTrainer, tmp_path, "aer", max_steps=2, report_to=["tensorboard"])
    (events,) = tmp_path.glob("runs/*/events.out.tfevents*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    for key in ("entropy", "alpha", "target_entropy", "h0", "coef_mean", "acc_level_1", "coef_level_2"):
        assert f"train/entropyctl/{key}" in tags
    logged = [row["entropyctl/alpha"] for row in _step_logs(trainer)]
    written = [event.value for event in accumulator.Scalars("train/entropyctl/alpha")]
    assert written == pytest.approx(logged, rel=1e-6)  # tensorboard stores float32


# ---- what is refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"use_adaptive_entropy": True}, "use_adaptive_entropy=True"),
        ({"entropy_coef": 0.01}, "entropy_coef=0.01.*'name': 'fixed', 'alpha': 0.01"),
        ({"loss_type": "sapo"}, "loss_type='sapo'"),
        ({"top_entropy_quantile": 0.2}, "top_entropy_quantile=0.2"),
        ({"epsilon_high": 0.28}, r"epsilon_high=0.28 differ.*clip_high=0.2.*'clip_high': 0.28"),
    ],
)
def test_unsupported_trl_options_fail_before_the_model_loads(
    tmp_path: Path, option: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        GRPOTrainer(
            model="no/such-model-is-ever-loaded",
            reward_funcs=[tiny.digit_reward],
            args=tiny.tiny_config(str(tmp_path), **option),
        )


def test_bad_controller_and_reward_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        GRPOTrainer(
            model="unused",
            reward_funcs=[tiny.digit_reward],
            args=tiny.tiny_config(str(tmp_path)),
            controller="nope",
        )
    for token_level in ("clip_cov", "kl_cov", "high_entropy_tokens"):  # TRL's loss would run without them
        with pytest.raises(ValueError, match=f"controller '{token_level}' acts on tokens"):
            GRPOTrainer(
                model="unused",
                reward_funcs=[tiny.digit_reward],
                args=tiny.tiny_config(str(tmp_path)),
                controller=token_level,
            )
    with pytest.raises(TypeError, match="controller=.*got int"):
        GRPOTrainer(
            model="unused",
            reward_funcs=[tiny.digit_reward],
            args=tiny.tiny_config(str(tmp_path)),
            controller=3,
        )
    with pytest.raises(ValueError, match="accuracy_reward='missing'.*digit_reward"):
        GRPOTrainer(
            model=tiny.build_model(),
            reward_funcs=[tiny.digit_reward],
            args=tiny.tiny_config(str(tmp_path)),
            train_dataset=tiny.build_dataset(),
            processing_class=tiny.build_tokenizer(),
            accuracy_reward="missing",
        )


def test_a_peft_model_trains_with_the_controller(tmp_path: Path) -> None:
    """TRL's own peft_config (a PeftModel around the policy): the controller reads the entropy TRL logs,
    plans, and the adapters alone move."""
    peft = pytest.importorskip("peft")
    trainer = _train(
        GRPOTrainer,
        tmp_path,
        {"name": "aer"},
        max_steps=2,
        trainer_kwargs={"peft_config": peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")},
    )
    assert isinstance(trainer.model, peft.PeftModel)
    logs = _step_logs(trainer)
    assert len(logs) == 2 and all(
        row["entropyctl/entropy"] == pytest.approx(row["entropy"], rel=1e-4) for row in logs
    )
    assert logs[-1]["entropyctl/alpha"] != logs[0]["entropyctl/alpha"]  # the controller observed and moved
    base = tiny.build_model().state_dict()
    for name, param in trainer.model.named_parameters():
        if ".lora_" in name:
            continue
        plain = name.replace("base_model.model.", "").replace(".base_layer.", ".")
        torch.testing.assert_close(param.detach(), base[plain], rtol=0, atol=0, msg=name)


def test_several_rewards_need_the_one_that_decides_correctness(tmp_path: Path) -> None:
    """With an accuracy and a format reward, the weighted sum >= 1 counted a well-formatted wrong answer
    as correct (AER then withheld the bonus from the prompts the model fails): several reward functions
    now need accuracy_reward, the name of one or WEIGHTED_SUM for the sum on purpose."""
    common = dict(
        model=tiny.build_model(),
        reward_funcs=[tiny.prompt_reward, tiny.digit_reward],
        args=tiny.tiny_config(str(tmp_path)),
        train_dataset=tiny.build_dataset(),
        processing_class=tiny.build_tokenizer(),
    )
    with pytest.raises(ValueError, match="2 reward functions.*accuracy_reward='prompt_reward'"):
        GRPOTrainer(**common)  # type: ignore[arg-type]
    summed = GRPOTrainer(**common, accuracy_reward=WEIGHTED_SUM)  # type: ignore[arg-type]
    assert summed._accuracy_column is None
    assert GRPOTrainer(**common, accuracy_reward="digit_reward")._accuracy_column == 1  # type: ignore[arg-type]


def test_a_streamed_dataset_is_never_read_for_its_levels() -> None:
    """An IterableDataset's level column is a stream: it was read to its end when the trainer was built
    (an endless one never ended). Its per-level numbers are off, as the docs say."""
    import datasets

    pulled = []

    def rows():  # type: ignore[no-untyped-def]
        for i in range(1000):
            pulled.append(i)
            yield {"prompt": "1+1", "level": i % 3}

    features = datasets.Features({"prompt": datasets.Value("string"), "level": datasets.Value("int64")})
    stream = datasets.IterableDataset.from_generator(rows, features=features)
    assert _dataset_levels(stream) == [] and pulled == []
    assert _dataset_levels(datasets.Dataset.from_dict({"prompt": ["a", "b"], "level": [2, 1]})) == [1, 2]


def test_the_controller_state_is_in_the_checkpoint_before_transformers_saves_it(tmp_path: Path) -> None:
    """transformers' checkpoint save ends with the Hub push of the folder (push_to_hub, hub_strategy
    checkpoint): the controller's file is written first, so the pushed folder holds it."""
    seen: list[bool] = []

    def spy(trainer: Any) -> None:
        save_model = trainer.save_model

        def recording(output_dir: str | None = None, _internal_call: bool = False) -> None:
            if _internal_call and output_dir is not None:
                seen.append((Path(output_dir) / CONTROLLER_STATE_FILE).exists())
            save_model(output_dir, _internal_call=_internal_call)

        trainer.save_model = recording

    _train(GRPOTrainer, tmp_path, before=spy, max_steps=2, save_strategy="steps", save_steps=1)
    assert seen == [True, True]


def test_the_trl_step_benchmark_runs_its_three_arms(tmp_path: Path) -> None:
    """benchmarks/trl_step.py at its smallest: its entropyctl arm passes two reward functions and broke
    when several needed accuracy_reward (it now names the weighted sum its timings were taken with)."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "trl_step.py"
    out = tmp_path / "trl_step.json"
    args = ["--rounds", "1", "--steps", "1", "--warmup", "0", "--hidden", "32", "--layers", "1"]
    args += ["--prompts", "2", "--group", "2", "--out", str(out)]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "entropyctl_aer" in json.dumps(json.loads(out.read_text()))
