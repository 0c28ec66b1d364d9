"""``entropyctl pretrain``: warm-start (or find cached) the embedded tiny model."""

from __future__ import annotations

import argparse
from typing import Any

from entropyctl.cli.options import add_config_option, add_set_option, add_threads_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(
        parser,
        "run config YAML; its `model:` section is used (default: the embedded tiny model)",
    )
    add_set_option(
        parser,
        "override a run-config field, e.g. --set model.pretrain.lr=0.002 (repeatable)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (model.pretrain.steps)")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="also copy the checkpoint to this new directory"
    )
    parser.add_argument("--force", action="store_true", help="retrain even when a cached checkpoint exists")
    parser.add_argument(
        "--eval",
        dest="eval_problems",
        type=int,
        default=500,
        help="held-out problems to score greedily (default 500; 0: skip)",
    )
    add_threads_option(parser, "torch intra-op threads")


def _document(args: argparse.Namespace) -> dict[str, Any]:
    """The run config ``--config`` and ``--set`` give (empty: the embedded defaults' model section)."""
    document: dict[str, Any] = {}
    if args.config is not None:
        from entropyctl.config import load_yaml

        document = load_yaml(str(args.config))
    if args.overrides:
        from entropyctl.config import apply_overrides

        document = apply_overrides(document, list(args.overrides))
    return document


def _task(args: argparse.Namespace, document: dict[str, Any]) -> Any:
    """The reasoning-gym task a config's ``data.source: reasoning_gym`` warm-starts on, as ``entropyctl
    train`` builds it (its own characters and cache entry); None: the synthetic task."""
    data = document.get("data") or {}
    if not (isinstance(data, dict) and data.get("source") == "reasoning_gym"):
        return None
    from entropyctl.config import load_run_config
    from entropyctl.trainer.run import reasoning_gym_task

    return reasoning_gym_task(load_run_config(args.config, list(args.overrides or ())))


def _model_section(args: argparse.Namespace, document: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from entropyctl.models.config import ModelConfig
    from entropyctl.validation import ConfigError, format_validation_error

    section = document.get("model") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"model: expected a mapping of the model's fields (got {section!r})")
    section = dict(section)
    if args.steps is not None:
        pretrain = section.get("pretrain") or {}
        section["pretrain"] = {**(pretrain if isinstance(pretrain, dict) else {}), "steps": args.steps}
    try:
        return ModelConfig.model_validate(section)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "model", ModelConfig)) from None


def _earlier_copy(out: Any) -> bool:
    """Whether ``out`` is a directory an earlier ``pretrain --out`` wrote (its metadata file; never the
    current directory): the same command may run again and replace it."""
    from pathlib import Path

    from entropyctl.models.warm_start import METADATA_FILE

    return out.is_dir() and (out / METADATA_FILE).is_file() and out.resolve() != Path.cwd().resolve()


def run(args: argparse.Namespace) -> int:
    """``entropyctl pretrain`` (arguments in ``entropyctl.cli``): warm-start (or find in the cache) the tiny
    model; print where it is and its held-out greedy accuracy per level as JSON."""
    import json
    import shutil
    import sys
    import time
    from pathlib import Path

    import torch

    from entropyctl.models.warm_start import METADATA_FILE, pretrain, write_atomically

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    document = _document(args)
    cfg = _model_section(args, document)
    out = None if args.out is None else Path(args.out).expanduser()
    if out is not None and out.exists() and not _earlier_copy(out):
        from entropyctl.config import ConfigError

        # the copy replaces the directory it is written to: anything else in it (or in '.') would be deleted
        raise ConfigError(
            f"--out {args.out}: already exists and is not an earlier copy; choose a new directory"
        )

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    task = _task(args, document)
    directory = pretrain(cfg, force=args.force, evaluate=args.eval_problems, log=log, task=task)
    if out is not None:
        foreign = (
            sorted({p.name for p in out.iterdir()} - {p.name for p in directory.iterdir()})
            if out.exists()
            else []
        )
        if foreign:  # an earlier copy that has since gained files of the user's: they stay
            from entropyctl.config import ConfigError

            raise ConfigError(
                f"--out {args.out}: holds files no copy writes ({', '.join(foreign[:3])}); left as is"
            )
        write_atomically(out, lambda tmp: shutil.copytree(directory, tmp, dirs_exist_ok=True))
        directory = out
    metadata = json.loads((directory / METADATA_FILE).read_text())
    if args.eval_problems > 0 and metadata.get("eval_problems") != args.eval_problems:
        # a cached entry measured on another count, or none (`entropyctl train` writes it unmeasured):
        # measured here and printed, the entry left as it is (it may be another user's, read-only)
        from entropyctl.models.warm_start import load_pretrained, measured_accuracy

        model, tokenizer = load_pretrained(directory)
        metadata.update(measured_accuracy(model, tokenizer, cfg, task, args.eval_problems))
    metadata["path"] = str(directory)
    metadata["wall_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(metadata, indent=2))
    return 0
