"""The example plugin (examples/plugin) installed for real and found through importlib.metadata."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "examples" / "plugin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target`` of a copy of the example plugin (offline: no build isolation, no deps)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(
        PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert list(target.glob("entropyctl_linear_decay-*.dist-info/entry_points.txt"))
    return target


def run_with(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)


SCRIPT = """
import contextlib, io, json, torch
from entropyctl import EntropyReading, GroupOutcome, available_controllers, create_controller
from entropyctl.cli import main
from entropyctl.config import parse_controller_config
controller = create_controller({"name": "linear_decay", "alpha_start": 0.02, "decay_steps": 4})
outcome = GroupOutcome(accuracy=torch.tensor([0.0, 1.0]), group_size=8, step=0)
alphas = []
for step in range(6):
    alphas.append(round(float(controller.plan(outcome).coef[0]), 6))
    controller.observe(EntropyReading(mean_entropy=0.5, tokens=10, step=step))
controller.observe(EntropyReading(mean_entropy=float("nan"), tokens=10, step=6))
try:
    parse_controller_config({"name": "linear_decay", "decay_steps": 0})
    error = None
except ValueError as err:
    error = str(err)
cli = {}
for command in (["controllers"], ["schema"], ["simulate", "--controller", "linear_decay", "--steps", "20"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(command)
    cli[command[0]] = [status, out.getvalue()]
print(json.dumps({"names": list(available_controllers()), "alphas": alphas, "cli": cli,
                  "metrics": controller.metrics(), "owner": type(controller).__module__, "error": error}))
"""


@pytest.fixture(scope="module")
def plugin_report(plugin_site: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_plugin_is_found_by_create_controller(plugin_report: dict) -> None:
    assert "linear_decay" in plugin_report["names"] and "aer" in plugin_report["names"]
    assert plugin_report["owner"] == "entropyctl_linear_decay"
    assert plugin_report["alphas"] == [0.02, 0.015, 0.01, 0.005, 0.0, 0.0]
    assert plugin_report["metrics"]["readings_ignored"] == 1.0
    assert plugin_report["error"] == "controller.decay_steps: must be ≥ 1 (got 0)"


def test_plugin_is_listed_schemed_and_simulated_by_the_cli(plugin_report: dict) -> None:
    status, listed = plugin_report["cli"]["controllers"]
    assert status == 0
    assert any(
        line.split()[0] == "linear_decay" and "decaying linearly" in line for line in listed.splitlines()
    )
    status, schema = plugin_report["cli"]["schema"]
    assert status == 0 and "linear_decay" in json.loads(schema)["discriminator"]["mapping"]
    status, simulated = plugin_report["cli"]["simulate"]
    assert status == 0 and "controller linear_decay" in simulated


def test_plugin_is_absent_without_its_install(capsys: pytest.CaptureFixture[str]) -> None:
    from entropyctl.cli import main

    assert main(["simulate", "--controller", "linear_decay", "--steps", "5"]) == 2
    assert "controller.name: unknown controller 'linear_decay' (available: aer" in capsys.readouterr().err


def test_docs_show_the_example_plugin_verbatim_and_within_40_lines_of_controller_code() -> None:
    import re

    docs = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text(encoding="utf-8")
    module = (PLUGIN_SOURCE / "entropyctl_linear_decay.py").read_text(encoding="utf-8")
    assert re.findall(r"```python\n(.*?)```", docs, re.S)[0] == module
    controller_code = module[module.index("class LinearDecayController") :]
    assert len(controller_code.strip().splitlines()) <= 40
    assert 'linear_decay = "entropyctl_linear_decay:LinearDecayController"' in docs
    assert 'linear_decay = "entropyctl_linear_decay:LinearDecayController"' in (
        PLUGIN_SOURCE / "pyproject.toml"
    ).read_text(encoding="utf-8")


def test_the_docs_yaml_snippet_of_the_plugin_validates_with_it_installed(plugin_site: Path) -> None:
    """docs/extending.md's `controller: {name: linear_decay, ...}` snippet is a valid run config once the
    plugin is installed (and only then: the name is unknown without it)."""
    import re

    docs = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text(encoding="utf-8")
    (snippet,) = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "linear_decay" in b]
    check = (
        "import sys, yaml\n"
        "from entropyctl.config import parse_run_config\n"
        "config = parse_run_config(yaml.safe_load(sys.stdin.read()))\n"
        "print(config.controller.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", check], input=snippet, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "linear_decay"
    without = subprocess.run(
        [sys.executable, "-c", check], input=snippet, capture_output=True, text=True, timeout=120
    )
    assert without.returncode != 0 and "linear_decay" in without.stderr
