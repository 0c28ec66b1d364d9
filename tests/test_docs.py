"""The docs tell the truth about the code: every `entropyctl` command shown in README.md and docs/
parses (and its config and `--set` overrides validate), every YAML config snippet validates, every
relative link and every repository path named in backticks exists, and every Python snippet runs as
shown (the few that are parts of a larger program compile).

Nothing here trains or evaluates: commands are checked with the CLI's own argument parser and the
config loader, as `--help` and a dry run would.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from entropyctl.cli import build_parser
from entropyctl.config import (
    ConfigError,
    apply_overrides,
    load_run_config,
    parse_controller_config,
    parse_run_config,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^\1```", re.S | re.M)
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
_INLINE = re.compile(r"`([^`\n]+)`")
#: Words in a shown command that stand for something the reader fills in.
_PLACEHOLDER = re.compile(r"<[^>]+>|\.\.\.|\bOUT\b|\bFILE\b|\bDIR\b|my_run|mine\b")
#: Top-level keys that mark a YAML block as a run config (anything else is some other file).
_RUN_KEYS = {"controller", "model", "data", "reward", "rollout", "algorithm", "optim", "trainer", "eval"}


def _blocks(path: Path) -> list[tuple[str, str]]:
    return [(lang, body) for _, lang, body in _FENCE.findall(path.read_text(encoding="utf-8"))]


def _commands(path: Path) -> list[str]:
    """`entropyctl ...` command lines: from bash blocks (continuations joined, comments dropped)
    and from inline code spans."""
    found: list[str] = []
    for lang, body in _blocks(path):
        if lang not in ("bash", "sh", ""):
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            line = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", line)  # ENV=value prefixes
            line = re.sub(r"^/usr/bin/time\s+", "", line)
            if line.startswith("entropyctl "):
                found.append(line)
    for span in _INLINE.findall(path.read_text(encoding="utf-8")):
        span = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", span.strip())
        if span.startswith("entropyctl ") and "|" not in span:
            found.append(span)
    return found


def _subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # argparse's own record
        return set(getattr(action, "choices", {}) or {})
    return set()


def _check_command(command: str) -> None:
    argv = shlex.split(command)[1:]
    if len(argv) == 1 and not argv[0].startswith("-"):
        # Prose naming a subcommand (`entropyctl evaluate`): it must exist.
        assert argv[0] in _subcommands(), f"`{command}`: no such subcommand"
        return
    if _PLACEHOLDER.search(command):
        # A template (`--out OUT/<arm>/...`): the subcommand and its flags must still exist; the
        # reader's values stand in as a path that does not exist (so no config is loaded from it).
        argv = ["placeholder/does-not-exist" if _PLACEHOLDER.search(a) else a for a in argv]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports to stderr and exits 2
        raise AssertionError(f"`{command}` does not parse (exit {exc.code})") from None
    overrides = list(getattr(args, "set", None) or getattr(args, "overrides", None) or [])
    if args.command == "train":
        config = getattr(args, "config", None)
        if config is None or (ROOT / config).exists():
            load_run_config(None if config is None else ROOT / config, overrides)
    if args.command == "simulate" and getattr(args, "config", None) is None:
        # as the CLI does: dotted keys nest, a `controller.` prefix is optional
        name = getattr(args, "controller", None) or "aer"
        mapping = apply_overrides({"name": name}, [o.removeprefix("controller.") for o in overrides])
        if mapping["name"] in ("aer", "target", "fixed", "clip_higher"):
            parse_controller_config(mapping)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_shown_command_parses_and_its_config_validates(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The docs' commands run from the repository root, some with PYTHONPATH=. (a reward function of
    # examples/, which the config check imports): the root on the import path, as there.
    monkeypatch.syspath_prepend(str(ROOT))
    commands = _commands(path)
    failures = []
    for command in commands:
        try:
            _check_command(command)
        except (AssertionError, ConfigError) as err:
            failures.append(f"{path.name}: {err}")
    assert not failures, "\n".join(failures)


def test_the_docs_show_commands_at_all() -> None:
    # Guards the extractor: if it silently found nothing, every check above would pass vacuously.
    assert len(_commands(ROOT / "README.md")) >= 5
    assert sum(len(_commands(p)) for p in DOCS) >= 20


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_yaml_run_config_snippet_validates(path: Path) -> None:
    for lang, body in _blocks(path):
        if lang != "yaml":
            continue
        data = yaml.safe_load(body)
        if isinstance(data, dict) and (data.get("controller") or {}).get("name") == "linear_decay":
            continue  # the example plugin's: validated with the plugin installed (tests/test_plugin.py)
        if isinstance(data, dict) and set(data) & _RUN_KEYS:
            parse_run_config(data, source=f"{path.name} (yaml snippet)")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_relative_link_exists(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    missing = []
    for target in _LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (path.parent / target).exists():
            missing.append(target)
    assert not missing, f"{path.name}: links to missing files: {missing}"


_REPO_PATH = re.compile(
    r"^(?:src/entropyctl|configs|docs|benchmarks|examples|tests|constraints|\.ci)/[\w./-]+$"
)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_repository_path_in_backticks_exists(path: Path) -> None:
    missing = []
    for span in _INLINE.findall(path.read_text(encoding="utf-8")):
        candidate = span.strip().split("::")[0]
        if _REPO_PATH.match(candidate) and not _PLACEHOLDER.search(candidate) and "*" not in candidate:
            if not (ROOT / candidate).exists():
                missing.append(candidate)
    assert not missing, f"{path.name}: names paths that do not exist: {missing}"


_ANCHOR_LINK = re.compile(r"\]\(([^)#\s]*\.md)?#([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, spaces and
    hyphens kept), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:  # a '#' line in a code block is no heading
            prose.append(line)
    return {_slug(h) for h in _HEADING.findall("\n".join(prose))}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_link_to_a_heading_finds_it(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    missing = []
    for target, anchor in _ANCHOR_LINK.findall(text):
        page = (path.parent / target) if target else path
        if page.exists() and anchor.lower() not in _anchors(page):
            missing.append(f"{target}#{anchor}")
    assert not missing, f"{path.name}: links to headings that do not exist: {missing}"


#: Python blocks that are parts of a larger program (they use names their page defines in prose, or a
#: model or run directory the reader has), by page and index among the page's Python blocks, with why:
#: compiled, not run.
_PY_FRAGMENTS = {
    ("extending.md", 1): "a token-level controller's methods, shown in the class the page describes",
    ("trl.md", 0): "a TRL trainer built around the reader's model and dataset",
    ("tuning.md", 0): "reads a run directory of the reader's",
}


def _python_blocks() -> list[tuple[str, int, str]]:
    found = []
    for path in DOCS:
        bodies = [body for lang, body in _blocks(path) if lang == "python"]
        found += [(path.name, i, body) for i, body in enumerate(bodies)]
    return found


@pytest.mark.parametrize(
    "page,index,body", [pytest.param(*block, id=f"{block[0]}[{block[1]}]") for block in _python_blocks()]
)
def test_every_python_snippet_runs(page: str, index: int, body: str, tmp_path: Path) -> None:
    """Each Python block a reader would paste runs as shown (in a fresh interpreter, an empty working
    directory); the fragments listed above must at least compile."""
    import subprocess
    import sys

    compile(body, f"{page}[{index}]", "exec")
    if (page, index) in _PY_FRAGMENTS:
        return
    done = subprocess.run(
        [sys.executable, "-c", body], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{page}, Python block {index} fails:\n{done.stderr[-2000:]}"


def test_the_listed_python_fragments_exist() -> None:
    shown = {(page, index) for page, index, _ in _python_blocks()}
    assert set(_PY_FRAGMENTS) <= shown, set(_PY_FRAGMENTS) - shown
