"""The 2-process launcher starts a run once more only when its port was taken (the free_port race)."""

from __future__ import annotations

from pathlib import Path

import pytest
from multiprocess_launch import run_two_rank_script

SCRIPT = """
import sys
from pathlib import Path
out = Path(sys.argv[1])
tries = out / "tries"
tries.write_text(tries.read_text() + "x" if tries.exists() else "x")
if len(tries.read_text()) == 1:
    print({message!r})
    sys.exit(1)
print("done")
"""


@pytest.mark.parametrize(("message", "runs"), [("bind: Address already in use", 2), ("some other error", 1)])
def test_only_a_taken_port_is_retried(tmp_path: Path, message: str, runs: int) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(message=message))
    out = tmp_path / "out"
    out.mkdir()
    if runs == 2:
        assert "done" in run_two_rank_script(script, out, 60)
    else:
        with pytest.raises(AssertionError, match="some other error"):
            run_two_rank_script(script, out, 60)
    assert len((out / "tries").read_text()) == runs
