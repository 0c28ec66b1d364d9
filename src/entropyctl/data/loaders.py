"""Math datasets from JSONL or Parquet files: GSM8K, MATH and DAPO-Math-17k styles.

Field detection (first present wins, unless a field name is given):

* prompt: ``prompt``, ``problem``, ``question``. A prompt may be a list of chat messages
  (``[{"role": "user", "content": ...}, ...]``, DAPO style): the last user message's content is used.
* answer: ``answer``, ``final_answer``, ``solution``, ``reward_model.ground_truth``. A dotted name
  reads a nested field. Answers are normalized: GSM8K ``... #### 18`` → ``18``; a solution with a
  ``\\boxed{}`` → the boxed content (MATH); numbers → their text. A ``solution`` field with neither a
  ``\\boxed{}`` nor a ``####`` answer is malformed.
* level (only when ``level_field`` is given): an int, or text such as ``"Level 3"`` → 3; MATH's
  ``"Level ?"`` → 0 (unknown).

Every malformed row raises :class:`DatasetError` naming the file, the line (JSONL, 1-based) or row
(Parquet, 0-based) and the field, e.g. ``data.jsonl:7: field 'answer' missing (expected one of: ...)``.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from entropyctl.data.synthetic import Problem
from entropyctl.data.templates import format_prompt, validate_template
from entropyctl.rewards.answers import gold_answer, last_boxed

__all__ = [
    "DatasetError",
    "PROMPT_FIELDS",
    "ANSWER_FIELDS",
    "MAX_LINE_BYTES",
    "load_math_dataset",
    "normalize_answer_field",
    "check_overlap",
    "split_held_out",
]

PROMPT_FIELDS: tuple[str, ...] = ("prompt", "problem", "question")
ANSWER_FIELDS: tuple[str, ...] = ("answer", "final_answer", "solution", "reward_model.ground_truth")


class DatasetError(ValueError):
    """A malformed dataset file or row; ``str()`` reads ``file:line: field 'x' ...``."""

    def __init__(
        self, path: str | Path, location: str | None, message: str, field: str | None = None
    ) -> None:
        self.path = str(path)
        self.location = location
        self.field = field
        where = str(path) if location is None else f"{path}:{location}"  # the path as given
        super().__init__(f"{where}: {message}")


_MISSING = object()


def _get(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _pick(row: Mapping[str, Any], name: str | None, candidates: Sequence[str]) -> tuple[str | None, Any]:
    for candidate in (name,) if name is not None else candidates:
        value = _get(row, candidate)  # type: ignore[arg-type]
        if value is not _MISSING and value is not None:
            return candidate, value
    return None, _MISSING


def _missing(
    row: Mapping[str, Any], where: tuple[Path, str], name: str | None, candidates: Sequence[str]
) -> DatasetError:
    """The error for a row where no field of ``candidates`` (or ``name``) holds a value: a field that is
    there but null is named as null, not as missing."""
    path, location = where
    names = (name,) if name else tuple(candidates)
    null = next((n for n in names if n is not None and _get(row, n) is None), None)
    if null is not None:
        problem = f"field '{null}' is null"
    else:
        problem = f"field '{name or candidates[0]}' missing"
    return DatasetError(path, location, f"{problem} (expected one of: {', '.join(names)})", null or names[0])


def _prompt_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(m, Mapping) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    return None


def normalize_answer_field(value: Any, field: str) -> str | None:
    """The final answer held by an answer field's value, or None when it holds none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # positional digits, never Python's exponent form: 0.00005 is "0.00005" (not "5e-05", which no
        # completion writes and SymPy does not read); NaN and infinity are no answer
        return format(Decimal(repr(value)), "f") if math.isfinite(value) else None
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 1:
        return normalize_answer_field(value[0], field)
    if not isinstance(value, str):
        return None
    if field.rsplit(".", 1)[-1] == "solution" and "####" not in value and last_boxed(value) is None:
        return None  # a worked solution without a marked final answer
    return gold_answer(value) or None


_LEVEL_NUMBER = re.compile(r"-?\d+")


def _level(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _LEVEL_NUMBER.search(value)
        if match:
            return int(match.group())
        if "?" in value:
            return 0
    return None


#: Default cap on one JSONL line (bytes): a math prompt is a few kB; a 50 MB line is a broken file
#: (and tokenizing it aborted the tokenizer). ``max_line_bytes`` changes it.
MAX_LINE_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


def _iter_jsonl(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[str, Any]]:
    """(line number, parsed JSON) per non-blank line; a UTF-8 BOM at the start is accepted. Undecodable
    bytes, invalid JSON and lines over ``max_line_bytes`` are errors naming ``file:line``; a long line
    is never read whole into memory."""
    with path.open("rb") as handle:
        number = 0
        while True:
            raw = handle.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise DatasetError(
                    path,
                    str(number),
                    f"line longer than {max_line_bytes:,} bytes (data.options.max_line_bytes); "
                    "is this a JSONL file with one problem per line?",
                )
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    path,
                    str(number),
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "save the file as UTF-8",
                ) from None
            if not line.strip():
                continue
            try:
                yield str(number), json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    path, str(number), f"invalid JSON ({exc.msg} at column {exc.colno})"
                ) from exc


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DatasetError(path, None, f"cannot read Parquet file ({exc})") from exc
    for index, row in enumerate(table.to_pylist()):
        yield f"row {index}", row


def load_math_dataset(
    path: str | Path,
    *,
    prompt_field: str | None = None,
    answer_field: str | None = None,
    template: str | None = None,
    level_field: str | None = None,
    limit: int | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    keep_columns: bool = False,
) -> list[Problem]:
    """Load a ``.jsonl`` or ``.parquet`` math dataset as :class:`Problem` objects.

    ``template`` is a string with ``{prompt}`` wrapped around each prompt (see
    :func:`entropyctl.data.templates.format_prompt`); ``limit`` keeps the first rows only;
    ``max_line_bytes`` caps one JSONL line (and one Parquet prompt, in characters).
    ``Problem.meta`` holds ``source`` (file name), ``location`` (line / row) and, with ``keep_columns``,
    ``columns`` (the row's columns but the prompt's, handed to a reward function that takes ``info``; kept
    only then: a large file's other columns cost memory on every rank)."""
    path = Path(path)
    if template is not None:
        validate_template(template)
    problems: list[Problem] = []
    # the rows past `limit` are never read (a malformed one there is no error)
    for location, row in itertools.islice(_rows(path, max_line_bytes), limit):
        if not isinstance(row, Mapping):
            raise DatasetError(path, location, f"row is a {type(row).__name__}, expected a JSON object")
        where = (path, location)
        problems.append(
            Problem(
                prompt=format_prompt(template, _row_prompt(row, where, prompt_field, max_line_bytes)),
                answer=_row_answer(row, where, answer_field),
                level=_row_level(row, where, level_field),
                id=f"{path.name}:{location}",
                meta={"source": path.name, "location": location}
                | ({"columns": _other_columns(row, prompt_field)} if keep_columns else {}),
            )
        )
    return problems


def _other_columns(row: Mapping[str, Any], prompt_field: str | None) -> dict[str, Any]:
    """The row's columns but its prompt's (what a reward function's ``info`` holds), as JSON values: a
    Parquet value JSON cannot hold (a date, bytes) becomes its text."""
    name, _ = _pick(row, prompt_field, PROMPT_FIELDS)
    kept = {str(k): v for k, v in row.items() if k != name}
    return dict(json.loads(json.dumps(kept, default=str)))


def _rows(path: Path, max_line_bytes: int) -> Iterator[tuple[str, Any]]:
    if not path.is_file():
        raise DatasetError(path, None, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _iter_jsonl(path, max_line_bytes)
    if suffix == ".parquet":
        return _iter_parquet(path)
    raise DatasetError(path, None, f"unsupported file type {suffix!r}; expected .jsonl or .parquet")


def _row_prompt(
    row: Mapping[str, Any], where: tuple[Path, str], prompt_field: str | None, max_line_bytes: int
) -> str:
    path, location = where
    name, value = _pick(row, prompt_field, PROMPT_FIELDS)
    if name is None:
        raise _missing(row, where, prompt_field, PROMPT_FIELDS)
    prompt = _prompt_text(value)
    if prompt is not None and len(prompt) > max_line_bytes:
        raise DatasetError(
            path,
            location,
            f"prompt longer than {max_line_bytes:,} characters (data.options.max_line_bytes)",
        )
    if prompt is None:
        raise DatasetError(
            path,
            location,
            f"field '{name}' is {type(value).__name__} {str(value)[:60]!r}; expected a string or a list "
            "of chat messages with a user message",
            name,
        )
    if not prompt.strip():
        raise DatasetError(path, location, f"field '{name}' is an empty prompt", name)
    return prompt


def _row_answer(row: Mapping[str, Any], where: tuple[Path, str], answer_field: str | None) -> str:
    path, location = where
    name, value = _pick(row, answer_field, ANSWER_FIELDS)
    if name is None:
        raise _missing(row, where, answer_field, ANSWER_FIELDS)
    answer = normalize_answer_field(value, name)
    if answer is None:
        raise DatasetError(
            path,
            location,
            f"field '{name}' has no final answer ({type(value).__name__} {str(value)[:60]!r}); "
            "expected a string or number, a '#### n' answer or a \\boxed{} solution",
            name,
        )
    return answer


def _row_level(row: Mapping[str, Any], where: tuple[Path, str], level_field: str | None) -> int:
    if level_field is None:
        return 0
    path, location = where
    raw_level = _get(row, level_field)
    if raw_level is _MISSING:
        raise DatasetError(path, location, f"field '{level_field}' missing (the level field)", level_field)
    level = _level(raw_level)
    if level is None:
        raise DatasetError(
            path,
            location,
            f"field '{level_field}' is {raw_level!r}; expected an integer or text like 'Level 3'",
            level_field,
        )
    return level


def check_overlap(train: Sequence[Problem], heldout: Sequence[Problem]) -> list[str]:
    """Warnings (one line each) for prompts repeated within the training rows and for held-out prompts
    that also appear in training (pass@k on them measures memory, not generalisation)."""
    first: dict[str, str] = {}
    repeats: list[str] = []
    for problem in train:
        key = " ".join(problem.prompt.split())
        if key in first:
            repeats.append(f"{problem.id} repeats {first[key]}")
        else:
            first[key] = str(problem.id)
    shared = [f"{p.id} = {first[k]}" for p in heldout if (k := " ".join(p.prompt.split())) in first]
    lines = []
    if repeats:
        lines.append(f"{len(repeats)} training prompt(s) are duplicates, e.g. {'; '.join(repeats[:3])}")
    if shared:
        lines.append(
            f"{len(shared)} of {len(heldout)} held-out prompt(s) also appear in training, e.g. "
            f"{'; '.join(shared[:3])}: pass@k on them is not a held-out measure"
        )
    return lines


def split_held_out(
    rows: Sequence[Problem], n_held_out: int, seed: int
) -> tuple[list[Problem], list[Problem]]:
    """``(training, held-out)``: ``n_held_out`` rows drawn at random (seeded by ``seed``), the rest for
    training, each part in file order. The same rows and seed always give the same split; a file
    sorted by difficulty or source still gets a held-out set drawn from all of it."""
    if not 0 <= n_held_out < len(rows):
        raise ValueError(
            f"cannot hold out {n_held_out} of {len(rows)} rows: at least one must be left for training"
        )
    chosen = set(random.Random(f"held-out:{seed}").sample(range(len(rows)), n_held_out))
    train = [row for i, row in enumerate(rows) if i not in chosen]
    held_out = [row for i, row in enumerate(rows) if i in chosen]
    return train, held_out
