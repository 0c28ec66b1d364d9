"""Shared check of the committed studies: every run directory is its config's arm × seed, finished."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from entropyctl.config import parse_run_config, parse_written_config
from entropyctl.experiments.ablate import _check_same_config, canonical_config, parse_arms, plan_runs

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> Any:
    """benchmarks/<name>.py as a module (registered under ``name``, so that its dataclasses and its
    imports of sibling scripts resolve)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def assert_runs_are_the_configs_arms(
    base: dict[str, Any], arms: list[Any], seeds: list[int], study: Path, steps: int
) -> int:
    """Each arm × seed of ``base`` under ``study`` was launched with exactly the config the ablation
    plans, trained with that controller and finished ``steps`` steps. Returns the number of runs."""
    specs = plan_runs(base, parse_arms(arms, where="test"), seeds, study)
    for spec in specs:
        launched = yaml.safe_load((spec.run_dir / "ablate_config.yaml").read_text())
        assert canonical_config(launched) == canonical_config(spec.config), spec.run_dir
        _check_same_config(spec)  # ablate would reuse it as this arm: it ran with what the arm resolves to
        written = parse_written_config(yaml.safe_load((spec.run_dir / "config.yaml").read_text()))
        expected = parse_run_config(spec.config)
        assert written.controller == expected.controller and written.trainer.steps == steps, spec.run_dir
        summary = json.loads((spec.run_dir / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == steps, spec.run_dir
    return len(specs)


def metrics_without_timings(run: Path, steps: int | None = None) -> list[dict[str, str]]:
    """A run's metrics.csv rows as logged (the first ``steps``, or all), the ``time_*`` columns left
    out: what two runs that are one run must agree on."""
    with (run / "metrics.csv").open(newline="") as handle:
        rows = [{k: v for k, v in row.items() if not k.startswith("time_")} for row in csv.DictReader(handle)]
    return rows if steps is None else rows[:steps]


def marked_block(doc: Path, marker: str) -> str:
    """The text between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``doc``."""
    return doc.read_text().split(f"<!-- {marker}:start -->")[1].split(f"<!-- {marker}:end -->")[0]


def quoted_table(doc: Path, marker: str) -> list[str]:
    """The non-blank lines between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``doc`` (a
    quoted table and nothing else), each stripped of the indentation of the list item that holds it."""
    return [line.strip() for line in marked_block(doc, marker).splitlines() if line.strip()]


def assert_docs_quote(
    reading_md: Path, doc: Path, marker: str, min_rows: int, prefix: str | tuple[str, ...] = "| "
) -> None:
    """The table between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``doc`` has at least
    ``min_rows`` rows starting with ``prefix`` (or any of several), each of them a line of ``reading_md``."""
    reading = set(reading_md.read_text().splitlines())
    table = marked_block(doc, marker)
    rows = [line for line in table.splitlines() if line.startswith(prefix)]
    assert len(rows) >= min_rows, rows
    missing = [row for row in rows if row not in reading]
    assert not missing, f"{doc.name} rows not in the committed {reading_md.name}: {missing[:3]}"


def assert_reading_reproduced(script: Path, args: list[str], committed: Path, out: Path) -> dict[str, Any]:
    """``python script *args --out out`` writes reading.json / reading.md equal to the committed ones;
    returns the committed reading."""
    command = [sys.executable, str(script), *args, "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    reading: dict[str, Any] = json.loads((committed / "reading.json").read_text())
    # numbers up to float rounding: a sum's last bit follows the numpy build (its summation order)
    assert_numbers_equal(json.loads((out / "reading.json").read_text()), reading, "reading.json")
    assert (out / "reading.md").read_text() == (committed / "reading.md").read_text()
    return reading


def assert_printed_table_reproduced(script: Path, runs: list[Path], committed: Path, out: Path) -> None:
    """``python script *runs --json out/reading.json`` prints the committed ``table.md`` and writes the
    committed ``reading.json`` (up to the runs' paths, which depend on where the checkout lies)."""
    command = [sys.executable, str(script), *map(str, runs), "--json", str(out / "reading.json")]
    printed = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout
    assert printed.strip() == (committed / "table.md").read_text().strip()

    def without_paths(path: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "run"} for r in json.loads(path.read_text())]

    assert_numbers_equal(
        without_paths(out / "reading.json"), without_paths(committed / "reading.json"), "reading"
    )


def assert_numbers_equal(a: Any, b: Any, where: str) -> None:
    """Equal up to float rounding; file paths are ignored (the committed report was written elsewhere)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"path", "unfinished"}
        for key in keys:
            assert key in a and key in b, f"{where}.{key} missing on one side"
            assert_numbers_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_numbers_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        x, y = float(a), float(b)
        assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), (
            f"{where}: {x} != {y}"
        )
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_one_warm_start(runs: list[Path], seed: int) -> None:
    """The run directories ``runs`` (one seed's runs of several arms) started from one warm start: the
    same held-out score before RL, which the same warm start gives on the same seed's evaluation draw."""
    before = [json.loads((run / "summary.json").read_text())["before"] for run in runs]
    assert all(b == before[0] for b in before), (
        seed,
        [str(r) for r, b in zip(runs, before, strict=True) if b != before[0]],
    )


def assert_same_warm_start(reference: Path, study: Path, slugs: Iterable[str], seeds: Iterable[int]) -> None:
    """Every run ``study/<slug>/seed<N>`` has the held-out score before RL of ``reference``'s run of its
    seed (``reference`` is a run directory holding ``seed<N>``): the same warm start and held-out draw."""
    slugs = list(slugs)
    for seed in seeds:
        runs = [reference / f"seed{seed}", *(study / slug / f"seed{seed}" for slug in slugs)]
        assert_one_warm_start(runs, seed)


def assert_collapse_reading_reproduced(study: Path, tmp_path: Path) -> None:
    """benchmarks/collapse_reading.py on a copy of ``study``'s runs writes the study's committed reading.md."""
    copy = tmp_path / study.name
    for run in study.glob("*/seed*"):
        shutil.copytree(run, copy / run.parent.name / run.name, ignore=shutil.ignore_patterns("checkpoints"))
    script = ROOT / "benchmarks" / "collapse_reading.py"
    subprocess.run([sys.executable, str(script), str(copy)], check=True, capture_output=True, timeout=300)
    assert (copy / "reading.md").read_text() == (study / "reading.md").read_text()


def assert_last_three_horizon_reproduced(
    folders: list[Path], arms: dict[str, str], results: Path, tmp_path: Path
) -> None:
    """benchmarks/horizon_reading.py over the pooled study ``folders`` (the defaults' arm first among
    them), each arm (label -> slug) against the defaults with the mean of the last three evaluations,
    writes ``results``; seeds 0-2, the last three evaluations at steps 2000, 2500 and 3000."""
    pooled = ",".join(str(folder.relative_to(ROOT)) for folder in folders)
    out = tmp_path / results.name
    command = [sys.executable, str(ROOT / "benchmarks" / "horizon_reading.py"), *[pooled] * len(arms)]
    command += ["--arm", *arms.values(), "--label", *arms, "--last", "3", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300, cwd=ROOT)
    assert out.read_text() == results.read_text()
    reading = json.loads(out.with_suffix(".json").read_text())["studies"]
    assert all(s["seeds"] == [0, 1, 2] and s["last"]["steps"] == [2000, 2500, 3000] for s in reading.values())
