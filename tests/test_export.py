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


def test_the_exported_model_keeps_the_trained_models_stop_tokens(tmp_path: Path) -> None:
    """save_policy rebuilt the model from its config, whose generation_config held only the eos: an
    instruct model's end-of-turn stop (Gemma's <end_of_turn>) was lost, and the export generated past it."""
    from entropyctl.models.loading import load_policy
    from entropyctl.models.tiny import build_char_tokenizer, build_tiny_model
    from entropyctl.rollout.export import save_policy
    from entropyctl.rollout.protocol import stop_token_ids

    tokenizer = build_char_tokenizer("0123456789+-*()=")
    model = build_tiny_model(tokenizer, hidden_size=32, layers=1, heads=2, seed=0)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("=")]
    model.save_pretrained(tmp_path / "source")
    tokenizer.save_pretrained(tmp_path / "source")
    policy, tok = load_policy({"kind": "hf", "path": str(tmp_path / "source")})
    save_policy(policy, tok, tmp_path / "exported")
    exported, tok2 = load_policy({"kind": "hf", "path": str(tmp_path / "exported")})
    assert stop_token_ids(tok2, exported) == stop_token_ids(tok, policy) == (2, 19)  # eos and "="


def test_the_exported_model_is_readable_as_a_made_directory_would_be(tmp_path: Path) -> None:
    """The staging directory is mkdtemp's (0700): an export was private to its user, out of reach of a
    vLLM server or another user in the container."""
    import os
    import stat

    from entropyctl.models.tiny import build_char_tokenizer, build_tiny_model
    from entropyctl.rollout.export import save_policy

    tokenizer = build_char_tokenizer("0123456789+-*()=")
    model = build_tiny_model(tokenizer, hidden_size=32, layers=1, heads=2, seed=0)
    old = os.umask(0o022)
    try:
        out = save_policy(model, tokenizer, tmp_path / "exported")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir() if f.is_file()} == {0o644}


def test_export_needs_no_reward_module_where_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run scored by a `package.module:function` of the project it trained in exports from anywhere: the
    export scores nothing, so the module need not be importable (evaluating still needs it)."""
    import yaml

    run = tmp_path / "run"
    run_training(tiny_config("trainer.steps=1", "eval.before=false", "eval.after=false"), run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["reward"] = {"name": "my_project_not_here.rewards:score", "options": {"strict": True}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "model"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "config.json").is_file()
    assert main(["evaluate", "--checkpoint", str(run), "--n", "1", "--k", "1", "--problems", "1"]) == 2
    assert "my_project_not_here" in capsys.readouterr().err
