"""``entropyctl export``: a run's trained policy as a plain ``transformers`` model directory."""

from __future__ import annotations

import argparse
from typing import Any

from entropyctl.cli.options import add_set_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN|CKPT",
        help="a run directory (its checkpoints/last.ckpt) or one of its .ckpt files",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="a new directory for the model: config.json, model.safetensors and the tokenizer's files, "
        "which AutoModelForCausalLM / AutoTokenizer.from_pretrained(DIR) load",
    )
    add_set_option(parser, "override a field of the run config the model is rebuilt from")


def run(args: Any) -> int:
    """Load the run's policy from its checkpoint (the same loading as ``entropyctl evaluate``) and write
    it with :func:`~entropyctl.rollout.export.save_policy`."""
    from pathlib import Path

    from entropyctl.cli.evaluate import load_target_policy, resolve_target
    from entropyctl.config import ConfigError
    from entropyctl.rollout.export import save_policy

    out = Path(args.out).expanduser()
    if out.exists():
        raise ConfigError(f"--out {args.out}: already exists; choose a new directory for the model")
    target = resolve_target(args.checkpoint, args.overrides, scores=False)  # no reward module needed
    if target.checkpoint is None:
        raise FileNotFoundError(
            f"--checkpoint {args.checkpoint!r}: not a run directory or a run's .ckpt (a model directory or "
            ".gguf file is already loadable; nothing to export)"
        )
    policy, tokenizer, _ = load_target_policy(target)
    written = save_policy(policy.eval(), tokenizer, out)
    print(f"[entropyctl] exported {target.checkpoint} to {written} (load it with from_pretrained)")
    return 0
