"""Suite-wide set-up: a fresh warm-start / export cache per test session.

Without this, tests would reuse whatever ``~/.cache/entropyctl`` holds from earlier runs on the machine
and a broken pretrain or export path could hide behind a warm cache. Subprocesses (the 2-process runs,
the CLI tests) inherit the variable. Set ``ENTROPYCTL_TEST_CACHE`` to reuse one directory across runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _fresh_entropyctl_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    previous = os.environ.get("ENTROPYCTL_CACHE")
    os.environ["ENTROPYCTL_CACHE"] = os.environ.get("ENTROPYCTL_TEST_CACHE") or str(
        tmp_path_factory.mktemp("entropyctl-cache")
    )
    yield
    if previous is None:
        os.environ.pop("ENTROPYCTL_CACHE", None)
    else:
        os.environ["ENTROPYCTL_CACHE"] = previous
