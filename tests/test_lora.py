"""model.lora: LoRA adapters injected into the policy, trained alone, merged on the way out."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from trainer_helpers import read_metrics, tiny_config

from entropyctl.cli import main
from entropyctl.config import load_run_config
from entropyctl.config.run import ConfigError
from entropyctl.data.synthetic import ALPHABET
from entropyctl.models.lora import apply_lora
from entropyctl.models.tiny import build_char_tokenizer, build_tiny_model
from entropyctl.rollout.export import plain_state_dict
from entropyctl.trainer.checkpoints import load_checkpoint
from entropyctl.trainer.run import run_training

pytest.importorskip("peft")

SETTINGS = SimpleNamespace(r=4, alpha=8.0, target_modules="all-linear")


def _models():
    tokenizer = build_char_tokenizer(ALPHABET)
    plain = build_tiny_model(tokenizer, hidden_size=32, layers=2, heads=2, seed=5).double()
    adapted = build_tiny_model(tokenizer, hidden_size=32, layers=2, heads=2, seed=5).double()
    apply_lora(adapted, SETTINGS)
    return tokenizer, plain, adapted


def test_adapters_start_as_the_plain_model_train_alone_and_merge_exactly() -> None:
    tokenizer, plain, adapted = _models()
    ids = tokenizer("12+7=19", return_tensors="pt")["input_ids"]
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any("lm_head" in n or "embed" in n for n in trainable)  # the fused path keeps its head
    torch.testing.assert_close(adapted(ids).logits, plain(ids).logits, rtol=0, atol=0)  # B = 0 at start
    with torch.no_grad():  # a trained adapter: B nonzero
        for name, param in adapted.named_parameters():
            if ".lora_B." in name:
                param.copy_(
                    0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name)))
                )
    assert not torch.allclose(adapted(ids).logits, plain(ids).logits)
    merged = plain_state_dict(adapted)
    assert set(merged) == set(plain.state_dict())  # the plain model's names, no adapter tensors
    plain.load_state_dict(merged, strict=True)
    # W + scaling·B·A in fp64: the merged model computes what the adapted one does, to rounding
    torch.testing.assert_close(plain(ids).logits, adapted(ids).logits, rtol=1e-10, atol=1e-10)
    assert plain_state_dict(plain).keys() == plain.state_dict().keys()  # no adapters: the state dict


def test_a_lora_run_trains_only_the_adapters_and_exports_the_merged_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    lora = ["model.lora.r=4", "model.lora.alpha=8", "optim.lr=1e-2"]
    run_training(tiny_config("trainer.steps=3", "eval.before=false", "eval.after=false", *lora), run)
    rows = read_metrics(run)
    assert len(rows) == 3 and all(row["grad_norm"] > 0 for row in rows)
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    # the base weights are the warm start's, untouched; the adapters moved
    from entropyctl.models.loading import load_policy

    base, _ = load_policy(tiny_config().model)
    for key, tensor in base.state_dict().items():
        adapted_key = key.replace("_proj.weight", "_proj.base_layer.weight")
        trained = state.get(f"policy.{key}", state.get(f"policy.{adapted_key}"))
        assert trained is not None and torch.equal(trained, tensor), key
    assert any(".lora_B." in k and bool(v.abs().sum() > 0) for k, v in state.items())

    out = tmp_path / "model"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in exported.state_dict())
    from entropyctl.cli.evaluate import load_target_policy, resolve_target

    policy, tokenizer, _ = load_target_policy(resolve_target(str(run), []))
    ids = tokenizer("12+7=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, policy.eval()(ids).logits, rtol=1e-5, atol=1e-5)


def test_lora_settings_are_checked_when_the_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"model.lora.r"):
        load_run_config(None, ["model.lora.r=0"])
    with pytest.raises(ConfigError, match=r"model.lora: not built for trainer.strategy fsdp"):
        load_run_config(None, ["model.lora.r=4", "trainer.strategy=fsdp"])
    tokenizer = build_char_tokenizer(ALPHABET)
    head = SimpleNamespace(r=4, alpha=8.0, target_modules=["q_proj", "lm_head"])
    with pytest.raises(ValueError, match=r"\['lm_head'\] are the LM head or the input embeddings"):
        apply_lora(build_tiny_model(tokenizer, hidden_size=32, layers=1, heads=2, seed=5), head)
    monkeypatch.setitem(sys.modules, "peft", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install 'entropyctl\[lora\]'"):
        apply_lora(torch.nn.Linear(2, 2), SETTINGS)


def test_a_lora_runs_kl_reference_is_its_base_model_without_a_copy(tmp_path: Path) -> None:
    """algorithm.kl_coef with model.lora: the reference is the policy with its adapters off (no second
    copy of the model), which computes exactly what the base model does; the KL starts at 0 (B = 0)
    and grows once the adapters move."""
    from entropyctl.models.lora import adapters_disabled
    from entropyctl.trainer.run import build_module

    config = tiny_config(
        "trainer.steps=3", "eval.before=false", "eval.after=false", "model.lora.r=4", "optim.lr=1e-2",
        "algorithm.kl_coef=0.1",
    )  # fmt: skip
    module = build_module(config)
    assert module._reference is None and module._reference_is_base
    module.reward.close()
    run_training(config, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["kl_loss"] == 0.0 and rows[-1]["kl_loss"] > 0.0

    tokenizer, plain, adapted = _models()
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if ".lora_B." in name:
                param.copy_(
                    0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name)))
                )
    ids = tokenizer("12+7=19", return_tensors="pt")["input_ids"]
    with adapters_disabled(adapted):
        off = adapted(ids).logits
    torch.testing.assert_close(off, plain(ids).logits, rtol=0, atol=0)  # the base model, exactly
    assert not torch.allclose(adapted(ids).logits, plain(ids).logits)  # and the adapters back after
    assert all(p.requires_grad for n, p in adapted.named_parameters() if ".lora_" in n)
    with pytest.raises(ValueError, match="carries no LoRA adapters"), adapters_disabled(plain):
        pass  # a policy without adapters has no base model to switch to: refused, not a silent KL of 0
