"""`entropyctl ablate`: every arm × seed as a normal ``entropyctl train`` run, side by side.

An **arm** is a controller name with optional overrides: ``fixed:alpha=0.01``,
``aer:update.step=0.3,tau=0.2``, ``clip_higher``. Keys are fields of the arm's controller (dotted into
its nested parts: ``update.step``), unless they start with a section of the run config
(``aer:trainer.lr=1e-4``, ``aer:optim.lr=1e-3``). If the arm's controller
is the base config's controller, the base's controller fields are kept and the overrides applied on
top; another controller starts from its own defaults. Arms can also be given as an ``arms:`` list in
YAML (the base config's ``ablation:`` section, or a separate file), each item a spec string or a
mapping ``{name: aer, tau: 0.2, label: "aer τ=0.2", set: {trainer.lr: 1e-4}}``.

Layout of the output directory::

    OUT/ablation.json                  the arms, seeds, command (read by the report)
    OUT/<arm-slug>/seed<N>/ablate_config.yaml   the config this run was launched with
    OUT/<arm-slug>/seed<N>/{config.yaml, metrics.csv, summary.json, checkpoints/, train.log}
    OUT/report.md, report.json, *.png  written by ``entropyctl report`` at the end

Every run starts from the same base config, the same warm-start checkpoint (prepared once before any
run starts, so parallel runs do not race to build it) and the same seed list: seed ``N`` of every arm
uses the same seed. A run whose ``summary.json`` says ``"status": "finished"`` is skipped (resume);
an unfinished one continues from its ``checkpoints/last.ckpt`` when it has one (``--resume auto``,
which checks that the checkpoint's run is this config's) and is run again from the start otherwise.
Runs go in ``jobs`` parallel ``entropyctl train`` processes, each in its own session: SIGTERM or
SIGINT (Ctrl-C) to ``ablate`` starts no further run and passes one SIGTERM to each running one, which
finishes its step, writes ``last.ckpt`` and exits; ``ablate`` then exits with 128 + the signal number,
and the same command continues the study.
"""

from __future__ import annotations

import copy
import json
import operator
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from entropyctl.config import (
    VARIANT_KEYS,
    ConfigError,
    apply_overrides,
    drop_other_variant,
    fill_absent,
    load_yaml,
    parse_controller_config,
)
from entropyctl.config.loading import switch_variants
from entropyctl.controllers.parts import drop_other_spelling
from entropyctl.trainer.run_dir import PARENT_ENV, RunLock, existing_run_files, write_json_atomic
from entropyctl.validation import first_repeated

__all__ = [
    "Arm",
    "RunSpec",
    "parse_arm",
    "parse_arms",
    "resolve_arm_config",
    "plan_runs",
    "run_ablation",
    "is_finished",
]

ABLATION_SECTION = "ablation"
SEED_KEY = "seed"


@dataclass(frozen=True)
class Arm:
    """One ablation arm: a controller name, controller-field overrides and run-config overrides."""

    controller: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", _default_label(self.controller, self.overrides))

    @property
    def slug(self) -> str:
        """A directory name: ``fixed:alpha=0.01`` → ``fixed_alpha=0.01``."""
        text = self.label.replace(":", "_").replace(",", "_").replace(" ", "_")
        slug = re.sub(r"[^A-Za-z0-9_.=+-]", "-", text)
        # '.' or '..' would put the arm's seeds in --out itself or above it
        return slug if slug.strip(".") else slug.replace(".", "_")


@dataclass(frozen=True)
class RunSpec:
    """One run of the ablation: an arm at a seed, its directory and resolved config."""

    arm: Arm
    seed: int
    run_dir: Path
    config: dict[str, Any]


def _default_label(controller: str, overrides: Mapping[str, Any]) -> str:
    if not overrides:
        return controller
    return controller + ":" + ",".join(f"{k}={_yaml_scalar(v)}" for k, v in overrides.items())


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets (so ``k=[1,2]`` stays one item)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_value(key: str, raw: str) -> Any:
    # The same YAML-scalar reading as --set overrides (``1e-3`` is a number, ``false`` a bool).
    return apply_overrides({}, [f"v={raw}"])["v"]


def parse_arm(spec: str | Mapping[str, Any], *, where: str = "arm") -> Arm:
    """Parse ``name[:k=v,...]`` or a mapping ``{name: ..., <field>: ..., label: ..., set: {...}}``."""
    if isinstance(spec, str):
        text = spec.strip()
        name, _, rest = text.partition(":")
        name = name.strip()
        if not name or not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
            raise ConfigError(f"{where} {spec!r}: expected CONTROLLER[:key=value,...], e.g. fixed:alpha=0.01")
        overrides: dict[str, Any] = {}
        if rest.strip():
            for item in _split_top_level(rest):
                key, sep, raw = item.partition("=")
                key = key.strip()
                if not sep or not key or any(not p for p in key.split(".")):
                    raise ConfigError(
                        f"{where} {spec!r}: override {item.strip()!r} must be key=value, e.g. {name}:tau=0.2"
                    )
                if key in overrides:
                    raise ConfigError(f"{where} {spec!r}: {key!r} is given twice")
                overrides[key] = _parse_value(key, raw.strip())
        return Arm(controller=name, overrides=overrides, label=text if overrides else name)
    if isinstance(spec, Mapping):
        body = dict(spec)
        name = body.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"{where}.name: required controller name (got {name!r}); e.g. {{name: aer, tau: 0.2}}"
            )
        label = body.pop("label", None)
        extra = body.pop("set", None) or {}
        if isinstance(extra, Sequence) and not isinstance(extra, str):
            extra = _pairs_to_dict(extra, where)
        if not isinstance(extra, Mapping):
            raise ConfigError(f"{where}.set: must be a mapping of dotted paths to values (got {extra!r})")
        overrides = {**body, **extra}
        return Arm(controller=name, overrides=overrides, label=str(label) if label else "")
    raise ConfigError(f"{where}: must be a string like 'fixed:alpha=0.01' or a mapping (got {spec!r})")


def _pairs_to_dict(items: Sequence[Any], where: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep:
            raise ConfigError(f"{where}.set: {item!r} must be key=value")
        result[key.strip()] = _parse_value(key, raw.strip())
    return result


def parse_arms(specs: Sequence[str | Mapping[str, Any]], *, where: str = "arms") -> list[Arm]:
    """Parse arm specs; a spec ending in ``.yaml``/``.yml`` is a file holding an ``arms:`` list."""
    arms: list[Arm] = []
    for index, spec in enumerate(specs):
        if isinstance(spec, str) and spec.endswith((".yaml", ".yml")):
            data = load_yaml(spec)
            listed = data.get("arms", (data.get(ABLATION_SECTION) or {}).get("arms"))
            if not isinstance(listed, list) or not listed:
                raise ConfigError(
                    f"{spec}: expected a non-empty 'arms:' list (or 'ablation: {{arms: [...]}}')"
                )
            arms += parse_arms(listed, where=f"{spec}: arms")
        else:
            arms.append(parse_arm(spec, where=f"{where}[{index}]"))
    _check_unique(arms, where)
    return arms


def _check_unique(arms: Sequence[Arm], where: str) -> None:
    if not arms:
        raise ConfigError(f"{where}: no arms given; e.g. --arms fixed:alpha=0.001 clip_higher aer")
    slugs: dict[str, str] = {}
    for arm in arms:
        if arm.slug in slugs:
            raise ConfigError(
                f"{where}: arms {slugs[arm.slug]!r} and {arm.label!r} map to the same directory {arm.slug!r}"
            )
        slugs[arm.slug] = arm.label


def _set_dotted(data: dict[str, Any], path: str, value: Any, where: str) -> None:
    node = data
    parts = path.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[: depth + 1])} is not a mapping (it is {child!r})")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _run_config_sections() -> frozenset[str]:
    from entropyctl.config import RunConfig

    return frozenset(RunConfig.model_fields)


def _controller_fields(name: str) -> frozenset[str]:
    """The fields of controller ``name``'s config (none for an unknown name: its error comes later)."""
    from entropyctl.controllers.registry import get_config_class

    try:
        return frozenset(get_config_class(name).model_fields)
    except KeyError:
        return frozenset()


def resolve_arm_config(base: Mapping[str, Any], arm: Arm, seed: int) -> dict[str, Any]:
    """The run config of ``arm`` at ``seed``: the base config, the arm's controller, its overrides."""
    config = copy.deepcopy(dict(base))
    config.pop(ABLATION_SECTION, None)
    base_controller = config.get("controller")
    base_name = base_controller if isinstance(base_controller, str) else (base_controller or {}).get("name")
    if isinstance(base_controller, Mapping) and base_name == arm.controller:
        controller: dict[str, Any] = copy.deepcopy(dict(base_controller))
    else:
        controller = {"name": arm.controller}
    config["controller"] = controller
    controller_fields = _controller_fields(arm.controller)
    for key, value in arm.overrides.items():
        # a bare key is the controller's when its config has that field (clip_cov:seed=7 is the
        # controller's seed, not the run's, which the ablation sets), else a run-config section's
        head = key.split(".")[0]
        target = (
            key if head in _run_config_sections() and head not in controller_fields else f"controller.{key}"
        )
        if target in VARIANT_KEYS:
            drop_other_variant(config, target, value)
        _set_dotted(config, target, value, f"arm {arm.label!r}")
        if target.startswith("controller.") and isinstance(config.get("controller"), dict):
            drop_other_spelling(config["controller"], target.split(".")[1:])  # as --set: the arm's key wins
    config[SEED_KEY] = seed
    try:
        config["controller"] = parse_controller_config(config["controller"]).model_dump(mode="json")
    except ConfigError as err:
        raise ConfigError([f"arm {arm.label!r}: {line}" for line in err.errors]) from None
    _validate_run_config(config, arm)
    return config


def _validate_run_config(config: Mapping[str, Any], arm: Arm) -> None:
    """Validate the whole run config before any run starts (errors name the arm and the field)."""
    from entropyctl.config import parse_run_config

    try:
        parse_run_config(config)
    except ConfigError as err:
        raise ConfigError([f"arm {arm.label!r}: {line}" for line in err.errors]) from None


def plan_runs(
    base: Mapping[str, Any], arms: Sequence[Arm], seeds: Sequence[int], out: str | Path
) -> list[RunSpec]:
    """Arms × seeds, in launch order (seed-major, so a partial ablation has every arm at seed 0)."""
    out = Path(out)
    return [
        RunSpec(
            arm=arm,
            seed=seed,
            run_dir=out / arm.slug / f"seed{seed}",
            config=resolve_arm_config(base, arm, seed),
        )
        for seed in seeds
        for arm in arms
    ]


def is_finished(run_dir: str | Path) -> bool:
    """True when ``run_dir/summary.json`` says ``"status": "finished"``."""
    path = Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def canonical_config(config: Any) -> Any:
    """``config`` with its controller section in today's parsed form, so that a run launched with the
    first release's flat controller form (``eta: 0.05``) matches the same config written nested.

    A field the section names a variant of but leaves out (``update: {rule: relative, ...}`` without
    ``linear``) reads as :data:`~entropyctl.config.ABSENT_MEANS` says, not as today's default: this
    compares what two config files *say*, so a config that later writes out the value a default had
    still matches the runs launched before it did. What a run *ran with* is the second check in
    :func:`_check_same_config` (its written ``config.yaml`` against what the config now resolves to)."""
    if not isinstance(config, Mapping) or not isinstance(config.get("controller"), (Mapping, str)):
        return config
    filled = fill_absent({"controller": config["controller"]})["controller"]
    try:
        controller = parse_controller_config(filled).model_dump(mode="json")
    except ConfigError:
        return config
    return {**config, "controller": controller}


def _check_same_config(spec: RunSpec) -> None:
    """Refuse to reuse a run directory that was launched with a different config (stale results).

    Two checks: the config ablate launched it with, and the resolved config the run wrote
    (``config.yaml``). The second catches a default that changed since: an arm written as ``aer``
    resolves to today's defaults, the run's ``config.yaml`` holds the values it ran with (a field it
    lacks reads as :data:`~entropyctl.config.ABSENT_MEANS` says)."""
    path = spec.run_dir / "ablate_config.yaml"
    written = spec.run_dir / "config.yaml"
    differences: list[str] = []
    if path.exists():
        if canonical_config(_read_yaml(path)) != canonical_config(spec.config):
            differences.append("the config it was launched with differs")
    elif (present := existing_run_files(spec.run_dir)) and not written.exists():
        raise ConfigError(
            f"{spec.run_dir}: holds run files ({', '.join(present)}) but no config "
            "to tell which run; use another --out directory or delete it"
        )
    if not differences and written.exists():  # a run ablate did not launch is read by the config it wrote
        differences = _resolved_differences(_read_yaml(written), spec.config)
    if differences:
        raise ConfigError(
            f"{spec.run_dir}: holds a run of a different config than arm {spec.arm.label!r} at seed {spec.seed} "
            f"now resolves to ({'; '.join(differences[:5])}); use another --out directory or delete it"
        )


def _read_yaml(path: Path) -> Any:
    """A run directory's YAML file, or a one-line error naming it."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(
            f"{path}: unreadable ({type(err).__name__}); restore it or delete the run"
        ) from None


def _check_arm_siblings(spec: RunSpec) -> None:
    """Refuse a new seed of an arm whose folder holds another seed launched with a different config
    (seed aside): the report averages every ``seed*`` folder of an arm as one arm, so a second
    ``ablate`` into the same ``--out`` with a changed base config would mix two configs under one label."""
    spec_config = {k: v for k, v in canonical_config(spec.config).items() if k != SEED_KEY}
    for sibling in sorted(spec.run_dir.parent.glob("seed*")):
        path = sibling / "ablate_config.yaml"
        if sibling == spec.run_dir or not path.exists():
            continue
        previous = canonical_config(_read_yaml(path))
        if not isinstance(previous, Mapping):
            continue
        if {k: v for k, v in previous.items() if k != SEED_KEY} != spec_config:
            raise ConfigError(
                f"{sibling}: a run of arm {spec.arm.label!r} launched with another config than the arm now "
                f"resolves to (seed aside); seed {spec.seed} beside it would be reported as the same arm. "
                "Use another --out directory (or the config those runs were launched with)"
            )
        return  # one sibling with the same config: the others were checked against it when launched


def _resolved_differences(written: Any, config: Mapping[str, Any]) -> list[str]:
    """What a run's written ``config.yaml`` ran with that ``config`` now resolves to otherwise: the
    fields a resume must agree on, and the number of steps ("controller.update.step: 0.05 -> 0.1")."""
    from entropyctl.config import parse_run_config, parse_written_config
    from entropyctl.trainer.run_dir import config_fingerprint, fingerprint_changes

    if not isinstance(written, Mapping):
        return ["its config.yaml is not a mapping"]
    try:
        ran, now = parse_written_config(written), parse_run_config(config)
    except ConfigError as err:
        return [f"its config.yaml does not read: {err}"]
    # the config part only: both sides would hash today's data files (the run's own hashes are in
    # its checkpoint, which train checks on --resume)
    changes = fingerprint_changes({"config": config_fingerprint(ran)}, {"config": config_fingerprint(now)})
    if ran.trainer.steps != now.trainer.steps:
        changes.append(f"trainer.steps: {ran.trainer.steps} -> {now.trainer.steps}")
    return changes


def _train_command(config_path: Path, run_dir: Path, threads: int) -> list[str]:
    # Threads and the progress bar change no result, so they go on the command line, not in the
    # config that decides whether a finished run can be reused.
    # An unfinished run (finished ones are skipped) continues from its last checkpoint, which train
    # checks against this config; without one it is run again from the start.
    start = ["--resume", "auto"] if (run_dir / "checkpoints" / "last.ckpt").is_file() else ["--overwrite"]
    return [
        sys.executable, "-m", "entropyctl.cli", "train", "--config", str(config_path), "--out", str(run_dir),
        "--set", f"trainer.threads={threads}", "--set", "trainer.progress_bar=false", *start,
    ]  # fmt: skip


_STOPPED_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT)  # train's exit after a graceful stop


class _Children:
    """The ``train`` processes of an ablation, and the stop request that ends it.

    The children run in their own sessions, so a Ctrl-C at the terminal reaches ``ablate`` only; the
    first SIGTERM/SIGINT to ``ablate`` stops new launches and sends each running child one SIGTERM (it
    finishes its step, writes ``last.ckpt`` and exits 143); a second one sends another (the child
    abandons its step). Without this a SIGTERM to ``ablate`` left its runs going as orphans.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.stopped: int | None = None
        self._live: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes] | None:
        """Launch ``cmd`` unless a stop was requested (then None)."""
        with self._lock:
            if self.stopped is not None:
                return None
            proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
            self._live.add(proc)
            return proc

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        code = proc.wait()
        with self._lock:
            self._live.discard(proc)
        return code

    def stop(self, signum: int) -> None:
        with self._lock:
            if self.stopped is None:
                self.stopped = int(signum)
            for proc in self._live:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop(signum)

    def __enter__(self) -> _Children:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def _warm_start(config: Mapping[str, Any], log: Callable[[str], None]) -> None:
    """Build the shared warm-start checkpoint once, before parallel runs could race to build it."""
    model = config.get("model") or {}
    if isinstance(model, Mapping) and model.get("kind", "tiny") != "tiny":
        return
    try:
        from entropyctl.models.config import ModelConfig
        from entropyctl.models.warm_start import pretrain
    except ImportError:
        return
    task = None  # a reasoning-gym task: the tiny model warm-starts on it (its own alphabet and cache key)
    data = config.get("data") or {}
    if isinstance(data, Mapping) and data.get("source") == "reasoning_gym":
        from entropyctl.config import parse_run_config
        from entropyctl.trainer.run import reasoning_gym_task

        task = reasoning_gym_task(parse_run_config(config))
    started = time.perf_counter()
    path = pretrain(ModelConfig.model_validate(dict(model)), task=task)
    log(f"warm start: {path} ({time.perf_counter() - started:.0f} s)")


def _run_all(
    todo: Sequence[RunSpec],
    jobs: int,
    threads_per_job: int | None,
    log: Callable[[str], None],
    children: _Children,
) -> tuple[dict[str, Any], list[str]]:
    """Run each spec as an ``entropyctl train`` subprocess, ``jobs`` at a time: (results by run dir,
    the run dirs that failed). After a stop request the runs not yet started are left out."""
    results: dict[str, Any] = {}
    threads = threads_per_job or max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env[PARENT_ENV] = str(os.getpid())  # each run stops when ablate dies, even by SIGKILL

    def launch(spec: RunSpec) -> tuple[RunSpec, int | None, float]:
        if children.stopped is not None:
            return spec, None, 0.0
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        config_path = spec.run_dir / "ablate_config.yaml"
        config_path.write_text(yaml.safe_dump(spec.config, sort_keys=False))
        cmd = _train_command(config_path, spec.run_dir, threads)
        t0 = time.perf_counter()
        # Appended, so a resumed run's log keeps the part before the stop.
        with (spec.run_dir / "train.log").open("a" if "--resume" in cmd else "w") as handle:
            handle.write("$ " + shlex.join(cmd) + "\n")
            handle.flush()
            proc = children.start(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
            code = None if proc is None else children.wait(proc)
        return spec, code, time.perf_counter() - t0

    failed: list[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for spec, code, seconds in pool.map(launch, todo):
            name = f"{spec.arm.label} seed {spec.seed}"
            if code is None:  # not started: the ablation was stopped first
                continue
            ok = code == 0 and is_finished(spec.run_dir)
            results[str(spec.run_dir)] = {"returncode": code, "seconds": seconds, "finished": ok}
            if ok:
                log(f"  done   {name} ({seconds:.0f} s)")
            elif children.stopped is not None and code in _STOPPED_CODES:
                results[str(spec.run_dir)]["stopped"] = True
                log(f"  stopped {name} (exit {code}, {seconds:.0f} s): continues from its last checkpoint")
            else:
                failed.append(str(spec.run_dir))
                log(f"  FAILED {name} (exit {code}, {seconds:.0f} s): see {spec.run_dir / 'train.log'}")
    return results, failed


def _write_manifest(path: Path, manifest: dict[str, Any], arm_list: Sequence[Arm]) -> None:
    """``ablation.json``: this invocation's arms (each with its own seeds: a later ``--arms X --seeds 2``
    into this directory leaves the union in the top-level ``seeds``, and X's runs are these) merged
    into the earlier ones'."""
    manifest["arms"] = [
        {"label": a.label, "slug": a.slug, "controller": a.controller, "overrides": dict(a.overrides)}
        | {"seeds": manifest["seeds"], "base_config": manifest["base_config"], "set": manifest["set"]}
        for a in arm_list
    ]
    write_json_atomic(path, merged_manifest(path, manifest))


def _log_stop(
    log: Callable[[str], None], signum: int, wall: float, results: dict[str, Any], failed: int, todo: int
) -> None:
    finished = sum(r["finished"] for r in results.values())
    stopped = sum(bool(r.get("stopped")) for r in results.values())
    log(
        f"ablation: stopped by signal {signum} after {wall:.0f} s: {finished} runs finished, {stopped} "
        f"stopped, {failed} failed, {todo - len(results)} not started; the same command continues "
        "(finished runs are skipped, stopped ones resume from their last checkpoint)"
    )


def _append_history(path: Path, summary: dict[str, Any], log: Callable[[str], None]) -> None:
    # One entry per invocation, so a resumed ablation keeps the wall time of every part.
    history: list[Any] = []
    if path.exists():
        try:
            history = json.loads(path.read_text())
            if not isinstance(history, list):
                raise ValueError(f"a {type(history).__name__}, not a list")
        except (OSError, ValueError) as err:  # kept aside, not lost; the runs themselves are on disk
            aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            path.rename(aside)
            log(f"ablation: {path} was unreadable ({err}); kept as {aside.name}, a new history started")
            history = []
    history.append({**summary, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_json_atomic(path, history)


def seed_names(seeds: Sequence[int]) -> str:
    """``0-9`` for a run of consecutive seeds, else ``0, 3, 5``: the seeds a plan runs, as the log shows them."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def count_note(count: int, seeds: Sequence[int]) -> str:
    """What a bare ``--seeds N`` ran: a count, not a seed (``--seeds 1`` is seed 0, which cost a
    duplicate run once), and how to ask for seed N alone."""
    return f"  seeds {count} is a count (seeds {seed_names(seeds)}); for seed {count} alone write {count},"


def _arms_and_seeds(
    arms: Sequence[str | Mapping[str, Any] | Arm] | None,
    seeds: int | Sequence[int] | None,
    section: Mapping[str, Any],
    base_path: str,
) -> tuple[list[Arm], list[int]]:
    """The arms and seeds given, else the ``ablation:`` section's (arms are required somewhere)."""
    if arms is None or len(arms) == 0:
        arms = section.get("arms")
        if not arms:
            raise ConfigError(
                f"{base_path}: no arms: pass --arms or give {ABLATION_SECTION}.arms in the config"
            )
    arm_list: list[Arm] = []
    for index, item in enumerate(arms):
        arm_list += [item] if isinstance(item, Arm) else parse_arms([item], where=f"arms[{index}]")
    _check_unique(arm_list, "arms")
    where = "seeds" if seeds is not None else f"{ABLATION_SECTION}.seeds"
    given: Any = section.get("seeds", 1) if seeds is None else seeds
    if _is_int(given):
        if given < 1:
            raise ConfigError(f"{where}: a count of seeds must be ≥ 1 (got {given})")
        seed_list = list(range(operator.index(given)))
    elif (
        isinstance(given, Sequence)
        and not isinstance(given, str)
        and given
        and all(_is_int(s) for s in given)
    ):
        seed_list = [operator.index(s) for s in given]
    else:
        seed_list = []
    if not seed_list or min(seed_list) < 0:
        raise ConfigError(
            f"{where}: expected a count N ≥ 1 or a list of seeds ≥ 0 like [0, 1, 2] (got {given!r})"
        )
    repeated = first_repeated(seed_list)
    if repeated is not None:
        raise ConfigError(f"{where}: seed {repeated} is listed twice (its runs would share one directory)")
    return arm_list, seed_list


def _is_int(value: Any) -> bool:
    """An integer (a numpy one too), not a bool."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _jobs(jobs: int | None, section: Mapping[str, Any]) -> int:
    value = jobs if jobs is not None else section.get("jobs", 1)
    if not _is_int(value) or value < 1:
        where = "--jobs" if jobs is not None else f"{ABLATION_SECTION}.jobs"
        raise ConfigError(f"{where}: expected a number of parallel runs ≥ 1 (got {value!r})")
    return int(value)


def merged_manifest(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` merged into the one already at ``path`` (an earlier ``ablate`` into the same directory):
    the earlier arms stay, in their order, followed by the new ones (an arm in both takes the new entry,
    its seeds the union of both); the top-level seeds are the union of all; ``commands`` lists every
    command in order. Without this, adding arms to a study with a second command hid the first
    command's arms from the report."""
    if not path.exists():
        return {**manifest, "commands": [manifest["command"]]}
    from entropyctl.experiments.aggregate import ReportError, read_manifest

    try:  # the report's own reader: a manifest it would refuse is refused before any run, not after all
        previous = read_manifest(path)
    except ReportError as err:  # replacing it would drop the earlier commands' arms from the report
        raise ConfigError(
            f"{err}; it lists the arms of the earlier commands into this directory: restore it, or delete it to "
            "start the list again with this command's arms"
        ) from None
    new_slugs = {arm["slug"] for arm in manifest["arms"]}
    # each earlier arm keeps the base config and --set it ran with (a later command may change them)
    ran_with = {"base_config": previous.get("base_config"), "set": previous.get("set")}
    earlier = {arm.get("slug"): ran_with | arm for arm in previous.get("arms", [])}
    arms = [earlier[arm.get("slug")] for arm in previous.get("arms", []) if arm.get("slug") not in new_slugs]
    for arm in manifest["arms"]:
        before = earlier.get(arm["slug"], {}).get("seeds", [])
        arms.append({**arm, "seeds": sorted({*before, *arm.get("seeds", [])})} if before else arm)
    seeds = sorted({*previous.get("seeds", []), *manifest["seeds"]})
    commands = list(previous.get("commands", [previous.get("command")] if previous.get("command") else []))
    return {**manifest, "arms": arms, "seeds": seeds, "commands": [*commands, manifest["command"]]}


#: ``entropyctl ablate``'s own lock in its --out (the runs' are ``run.lock`` in theirs)
ABLATE_LOCK = "ablate.lock"


def run_ablation(
    base_config: str | Path | Mapping[str, Any],
    arms: Sequence[str | Mapping[str, Any] | Arm] | None = None,
    seeds: int | Sequence[int] | None = None,
    *,
    out: str | Path = "ablation",
    jobs: int | None = None,
    overrides: Sequence[str] = (),
    threads_per_job: int | None = None,
    report: bool = True,
    warm_start: bool = True,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, Any]:
    """Run every arm × seed (skipping finished runs), then write the report. Returns a summary dict.

    ``base_config``: a YAML path or a dict (a run config, optionally with an ``ablation:`` section
    holding ``arms``, ``seeds`` and ``jobs`` defaults). ``seeds``: a count ``N`` (seeds ``0..N-1``) or
    an explicit list. ``overrides``: ``--set`` style ``a.b=v`` applied to the base for every arm.
    ``jobs``: parallel runs (None: the ``ablation:`` section's ``jobs``, else 1). ``threads_per_job``: torch
    threads per run (default: CPU cores // jobs, at least 1).
    """
    base_path = str(base_config) if not isinstance(base_config, Mapping) else "<dict>"
    base = (
        load_yaml(base_config) if not isinstance(base_config, Mapping) else copy.deepcopy(dict(base_config))
    )
    section = base.get(ABLATION_SECTION) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{base_path}: {ABLATION_SECTION}: must be a mapping with arms/seeds/jobs")
    # as `train --set` does: a switched controller or rule drops the old one's fields
    switch_variants(base, overrides)
    base = apply_overrides(base, overrides)
    arm_list, seed_list = _arms_and_seeds(arms, seeds, section, base_path)
    jobs = _jobs(jobs, section)
    out = Path(out)
    specs = plan_runs(base, arm_list, seed_list, out)
    for spec in specs:
        _check_same_config(spec)
        _check_arm_siblings(spec)

    out.mkdir(parents=True, exist_ok=True)
    # one ablate per directory: a second one opened a live run's train.log afresh before that run's own lock
    # refused it, and the two wrote the manifest over each other
    lock = RunLock(out, name=ABLATE_LOCK, user="entropyctl ablate").acquire()
    try:
        manifest: dict[str, Any] = {"command": command, "base_config": base_path, "set": list(overrides)}
        _write_manifest(out / "ablation.json", {**manifest, "seeds": seed_list, "jobs": jobs}, arm_list)
        plan = _Plan(specs, len(arm_list), seed_list, seeds, jobs, out)
        return _execute(plan, threads_per_job, report, warm_start, log, command)
    finally:
        lock.release()


@dataclass(frozen=True)
class _Plan:
    specs: list[RunSpec]
    arms: int
    seed_list: list[int]
    seeds: Any  # as given: a count is explained in the log
    jobs: int
    out: Path


def _execute(
    plan: _Plan,
    threads_per_job: int | None,
    report: bool,
    warm_start: bool,
    log: Callable[[str], None],
    command: str | None,
) -> dict[str, Any]:
    """Run what a plan has not finished, record the invocation and write the report (under the lock)."""
    specs, seed_list, seeds, jobs, out = plan.specs, plan.seed_list, plan.seeds, plan.jobs, plan.out
    todo = [s for s in specs if not is_finished(s.run_dir)]
    skipped = [s for s in specs if is_finished(s.run_dir)]
    log(
        f"ablation: {plan.arms} arms × {len(seed_list)} seeds ({seed_names(seed_list)}) = {len(specs)} runs; "
        f"{len(skipped)} finished (skipped), {len(todo)} to run with {jobs} job(s) → {out}"
    )
    if isinstance(seeds, int):
        log(count_note(seeds, seed_list))
    if todo and warm_start:
        _warm_start(todo[0].config, log)

    started = time.perf_counter()
    with _Children() as children:
        results, failed = _run_all(todo, jobs, threads_per_job, log, children)
    wall = time.perf_counter() - started
    summary: dict[str, Any] = {
        "command": command,
        "out": str(out),
        "runs": len(specs),
        "skipped": [str(s.run_dir) for s in skipped],
        "ran": results,
        "failed": failed,
        "wall_time_s": wall,
    }
    if children.stopped is not None:
        summary["stopped"] = children.stopped
        _append_history(out / "ablation_runs.json", summary, log)
        _log_stop(log, children.stopped, wall, results, len(failed), len(todo))
        return summary
    log(f"ablation: {len(todo)} runs in {wall:.0f} s wall; {len(failed)} failed")
    _append_history(out / "ablation_runs.json", summary, log)
    if report:
        from entropyctl.experiments.report import write_report

        write_report(out)
        log(f"report: {out / 'report.md'}")
    return summary
