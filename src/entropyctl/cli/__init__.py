"""The ``entropyctl`` command line: one argparse program with subcommands.

One module per subcommand (``entropyctl.cli.<name>``) defines ``add_arguments(parser)``, which imports
nothing heavy, and ``run(args: argparse.Namespace) -> int | None``, the exit status (None = 0), which
imports what it needs inside; a subcommand's libraries load only when it runs. Adding a subcommand: a new
module and a line in :data:`SUBCOMMANDS`.
An error meant for the user (:data:`_USER_ERRORS`: a bad config, dataset, checkpoint or run
directory, an unknown controller, a missing file; Lightning refusing the trainer settings on this
machine, e.g. ``trainer.accelerator=gpu`` without a GPU) raised by ``run`` is printed as one
``entropyctl <cmd>: error: ...`` message with exit status 2; ``--debug`` or ``ENTROPYCTL_DEBUG=1``
re-raises it with its traceback.
Keep ``controllers``, ``schema`` and ``simulate`` free of Lightning/transformers imports.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Subcommand", "SUBCOMMANDS", "build_parser", "main"]


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: str  # "module:function", imported lazily


def _subcommand(name: str, help: str, run: str | None = None) -> Subcommand:
    module = importlib.import_module(f"entropyctl.cli.{name}")  # argparse only: cheap
    return Subcommand(name, help, module.add_arguments, run or f"entropyctl.cli.{name}:run")


SUBCOMMANDS: list[Subcommand] = [
    _subcommand("controllers", "list the registered controllers"),
    _subcommand("schema", "print a controller config's JSON schema"),
    _subcommand("simulate", "run a controller against the entropy plant"),
    _subcommand("train", "run RLVR training (GRPO/DAPO with an entropy controller)"),
    _subcommand("evaluate", "pass@1 / pass@k of a run or model on held-out problems"),
    _subcommand("export", "write a run's trained policy as a transformers model directory"),
    _subcommand("ablate", "run arms x seeds of training side by side, then report"),
    _subcommand("report", "tables and plots comparing the runs of an ablation"),
    _subcommand("pretrain", "warm-start (or find cached) the embedded tiny model"),
]


def _add_common_arguments(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback of an error (also: ENTROPYCTL_DEBUG=1)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=default,
        help="also show library notices a user cannot act on (Lightning's hardware lines, progress bars "
        "of weight loading, deprecation warnings)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropyctl", description="Entropy controllers (AER and friends) for RLVR training."
    )
    _add_common_arguments(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(child)
        # SUPPRESS: `entropyctl --debug train` and `entropyctl train --debug` both work.
        _add_common_arguments(child, argparse.SUPPRESS)
        child.set_defaults(_run=command.run)
    return parser


#: errors whose message is the whole story for the user: printed alone, exit status 2
_USER_ERRORS = {
    "entropyctl.config": "ConfigError",
    "entropyctl.controllers.registry": "RegistryError",
    "entropyctl.trainer.checkpoints": "CheckpointError",
    "entropyctl.data.loaders": "DatasetError",
    "entropyctl.data.reasoning_gym": "TaskError",
    "entropyctl.trainer.run_dir": "RunDirError",
    "entropyctl.experiments.report": "ReportError",
}


#: where Lightning reads the Trainer's (or Fabric's) accelerator, devices, strategy and precision
_LIGHTNING_SETTINGS = (
    "lightning.pytorch.trainer.connectors.accelerator_connector",
    "lightning.fabric.connector",
)
#: what a refusal there is about, in the run config's terms
_LIGHTNING_HINT = (
    "Lightning refused the trainer settings on this machine: trainer.accelerator, trainer.devices, "
    "trainer.strategy or trainer.precision; trainer.accelerator=cpu runs anywhere"
)


def _is_lightning_settings_error(err: BaseException) -> bool:
    """Lightning's MisconfigurationException raised while it reads the trainer settings (``No supported
    gpu backend found!`` for trainer.accelerator=gpu on a machine without one): the user's to fix. Raised
    anywhere else (a hook misused) it is a bug in entropyctl and keeps its traceback."""
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")  # no import: see _is_user_error
    if exceptions is None or not isinstance(err, exceptions.MisconfigurationException):
        return False
    frame = err.__traceback__
    while frame is not None:
        if frame.tb_frame.f_globals.get("__name__") in _LIGHTNING_SETTINGS:
            return True
        frame = frame.tb_next
    return False


def _is_user_error(err: BaseException) -> bool:
    # Only modules already imported can have raised their error: no import here.
    types: list[type] = [FileNotFoundError]
    for module_name, class_name in _USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            types.append(getattr(module, class_name))
    return isinstance(err, tuple(types)) or _is_lightning_settings_error(err)


def _is_out_of_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _out_of_space_message(err: BaseException) -> str:
    assert isinstance(err, OSError)
    where = f" ({err.filename})" if err.filename else ""
    return (
        f"{err.strerror or err}{where}. A run stopped by it is marked failed in its summary.json and its "
        "metrics.csv keeps every finished step: free space (trainer.keep_checkpoints bounds the step "
        "checkpoints a run keeps) and continue it with --resume auto (its last.ckpt), or with --resume "
        "<run>/checkpoints/step-NNNNNN.ckpt when a later step's checkpoint was written"
    )


def _user_message(err: BaseException) -> str:
    if _is_out_of_space(err):
        return _out_of_space_message(err)
    if _is_lightning_settings_error(err):
        return f"{err} ({_LIGHTNING_HINT})"
    return str(err)


def _debug_requested(args: argparse.Namespace) -> bool:
    env = os.environ.get("ENTROPYCTL_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or env not in ("", "0", "false", "no")


def _quiet_libraries() -> None:
    """Silence what a user cannot act on (kept with ``--verbose``); set before the libraries load."""
    import logging

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Bars libraries draw with tqdm itself (transformers' "Converting and de-quantizing GGUF tensors"):
    # TQDM_DISABLE for processes started from here, and, as tqdm reads it only when first imported (torch
    # imports it), the default of tqdm's `disable` in this one. A user's TQDM_DISABLE=0 keeps them.
    os.environ.setdefault("TQDM_DISABLE", "1")
    tqdm_std = sys.modules.get("tqdm.std")
    if tqdm_std is not None and os.environ["TQDM_DISABLE"] == "1":
        import functools

        tqdm_std.tqdm.__init__ = functools.partialmethod(tqdm_std.tqdm.__dict__["__init__"], disable=True)
    if "transformers" in sys.modules:  # already imported (e.g. in-process use): the env is read at import
        sys.modules["transformers"].utils.logging.disable_progress_bar()
        sys.modules["transformers"].utils.logging.set_verbosity_error()
    # Lightning's "GPU available: False, used: False" / TPU lines and its litlogger tip (INFO level).
    # (weights_only=False on save means "full checkpoint", not an unsafe load; loads are weights_only.)
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        r".*weights_only.*",
        r".*LeafSpec.*",
        r".*litlogger.*",
        r".*Detected pickle protocol.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


_PYTHON_FORMAT_WARNING = warnings.formatwarning
#: the package's own directory: a warning raised from code under it is one of ours
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A warning of entropyctl's own (a UserWarning raised from the package: duplicate prompts, dropped
    rows) as one ``[entropyctl] warning: ...`` line, not Python's ``file:line: UserWarning`` with the
    source line under it; any other warning as Python writes it."""
    ours = os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)
    if ours and issubclass(category, UserWarning):
        return f"[entropyctl] warning: {message}\n"
    return _PYTHON_FORMAT_WARNING(message, category, filename, lineno, line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, _, function_name = args._run.partition(":")
    warnings.formatwarning = format_warning
    if not getattr(args, "verbose", False):
        _quiet_libraries()
    try:
        run = getattr(importlib.import_module(module_name), function_name)
        status = run(args)
    except BrokenPipeError:  # `entropyctl schema | head`
        return 0
    except Exception as err:
        if _debug_requested(args) or not (_is_user_error(err) or _is_out_of_space(err)):
            raise
        print(f"entropyctl {args.command}: error: {_user_message(err)}", file=sys.stderr)
        return 2
    return int(status or 0)
