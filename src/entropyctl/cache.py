"""Where entropyctl caches what it builds (warm-started tiny models, vLLM weight exports)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$ENTROPYCTL_CACHE`` or ``~/.cache/entropyctl``."""
    return Path(os.environ.get("ENTROPYCTL_CACHE") or Path.home() / ".cache" / "entropyctl").expanduser()
