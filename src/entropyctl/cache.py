"""Where entropyctl caches what it builds (warm-started tiny models, vLLM weight exports)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir", "usual_permissions"]


def default_cache_dir() -> Path:
    """``$ENTROPYCTL_CACHE`` or ``~/.cache/entropyctl``."""
    return Path(os.environ.get("ENTROPYCTL_CACHE") or Path.home() / ".cache" / "entropyctl").expanduser()


def usual_permissions(directory: Path) -> None:
    """Give ``directory`` and everything in it the permissions ``mkdir`` and ``open`` would have under the
    umask: a staging directory is ``mkdtemp``'s (0700) and some files are written private, so a cache
    entry, a copy or an export renamed from it would be readable by its user alone (another user sharing
    ``ENTROPYCTL_CACHE``, a vLLM server running as another user)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
