"""Suite-wide set-up: a fresh warm-start / export cache per test session.

Without this, tests would reuse whatever ``~/.cache/entropyctl`` holds from earlier runs on the machine
and a broken pretrain or export path could hide behind a warm cache. Subprocesses (the 2-process runs,
the CLI tests) inherit the variable. Set ``ENTROPYCTL_TEST_CACHE`` to reuse one directory across runs.
Under pytest-xdist (README's ``-n 2``) the workers share one cache in the run's base temporary directory:
the warm start is built once (its cache serialises concurrent builders on a lock), not once per worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh directory for this test run; one for all xdist workers (their base temporary directories
    are ``<run's>/popen-gw0``, ``<run's>/popen-gw1``, …)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "entropyctl-cache"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("entropyctl-cache")


@pytest.fixture(scope="session", autouse=True)
def _fresh_entropyctl_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    previous = os.environ.get("ENTROPYCTL_CACHE")
    os.environ["ENTROPYCTL_CACHE"] = os.environ.get("ENTROPYCTL_TEST_CACHE") or str(
        _session_cache(tmp_path_factory)
    )
    yield
    if previous is None:
        os.environ.pop("ENTROPYCTL_CACHE", None)
    else:
        os.environ["ENTROPYCTL_CACHE"] = previous
