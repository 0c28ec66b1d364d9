"""vLLM tests run only in the vLLM venv (.ci/vllm.sh: ``pytest -m vllm tests/vllm_engine``).

Every test here is marked ``vllm`` and ``slow``. Where vLLM is not installed (the main venv) the directory is
not collected at all, so the main suite neither imports vLLM nor reports skips for it.
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/vllm_engine/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.vllm)
            item.add_marker(pytest.mark.slow)
