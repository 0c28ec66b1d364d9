"""`entropyctl export`: a run's trained policy as a transformers model directory that
`from_pretrained` loads to the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer_helpers import tiny_config

from entropyctl.cli import main
from entropyctl.trainer.checkpoints import load_checkpoint
from entropyctl.trainer.run import run_training


def test_export_writes_the_trained_policy_as_a_transformers_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    run_training(tiny_config("trainer.steps=2", "eval.before=false", "eval.after=false"), run)
    out = tmp_path / "model"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    # the exported weights are the checkpoint's trained policy, tensor for tensor
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    trained = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    exported = model.state_dict()
    assert set(trained) <= set(exported)
    for name, tensor in trained.items():
        assert torch.equal(exported[name], tensor), name
    ids = tokenizer("12+7=", return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 6 and model(ids).logits.isfinite().all()  # <bos> + one token per character

    # a second export to the same place is refused, the first left as it was
    before = sorted(p.name for p in out.iterdir())
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
