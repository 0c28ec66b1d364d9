"""Reading training checkpoints without running code from them.

A Lightning ``.ckpt`` is a pickle inside a zip file, and unpickling can call any importable function:
``torch.load(path, weights_only=False)`` on a crafted file runs code on the user's machine. Every
checkpoint entropyctl reads goes through :func:`load_checkpoint`, which unpickles with
``weights_only=True``: only tensors, storages, dicts (``OrderedDict`` too), lists, tuples, sets,
strings, numbers, booleans and ``None`` — exactly what ``entropyctl train`` writes (model and
optimizer state, the loop counters, the controller's plain-number state, the run fingerprint, the
prompt sampler's counters). Nothing more is allow-listed, so no ``torch.serialization.add_safe_globals``.

Anything else is one :class:`CheckpointError` line: which file, what is wrong, what to do.

Writing: :class:`~entropyctl.trainer.module.AtomicCheckpointIO` makes every ``.ckpt`` the trainer saves
whole or absent.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "load_checkpoint", "REQUIRED_KEYS"]

#: keys every checkpoint written by ``entropyctl train`` holds
REQUIRED_KEYS = ("state_dict", "entropy_controller")

_WHAT_TO_DO = "pass a run directory or a .ckpt written by `entropyctl train`"


class CheckpointError(ValueError):
    """A checkpoint file that cannot or must not be loaded (the message is one line for the user)."""


def _refused_global(message: str) -> str | None:
    """The ``module.name`` an unpickler refused, from torch's weights-only error message."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1) if found else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0].split(". ")[0] if text else ""
    if "mmap can only be used" in line:  # torch's words for a file that is no zip archive, read with mmap
        return "not the zip archive torch.save writes"
    if len(line) > 120:
        line = line[:120].rsplit(" ", 1)[0] + " …"
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


def _corrupt(file: Path, err: BaseException) -> str:
    return (
        f"{file}: truncated or corrupt checkpoint ({_first_line(err)}); use another one "
        "(e.g. an earlier step-*.ckpt beside it) or retrain"
    )


def load_checkpoint(
    path: str | Path, *, required: tuple[str, ...] = REQUIRED_KEYS, mmap: bool = False
) -> dict[str, Any]:
    """Load ``path`` on the CPU with ``torch.load(weights_only=True)`` and check it is one of ours.

    Raises :class:`CheckpointError` (never runs code from the file) when the file is missing, truncated
    or not a torch checkpoint, when it asks the unpickler for anything beyond plain data (a crafted or
    foreign pickle), or when it lacks one of ``required``.
    """
    import torch

    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"{file}: no such checkpoint file; {_WHAT_TO_DO}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        name = _refused_global(str(err))
        if name is None:
            raise CheckpointError(_corrupt(file, err)) from None
        raise CheckpointError(
            f"{file}: refused: the file asks to load `{name}`, which no entropyctl checkpoint holds "
            f"(loading it could run code); {_WHAT_TO_DO}"
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes the reader raise
        raise CheckpointError(_corrupt(file, err)) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{file}: not an entropyctl checkpoint (it holds a {type(checkpoint).__name__}, not a dict); "
            f"{_WHAT_TO_DO}"
        )
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{file}: not an entropyctl training checkpoint (no {', '.join(repr(k) for k in missing)} entry); "
            f"{_WHAT_TO_DO}"
        )
    return checkpoint
