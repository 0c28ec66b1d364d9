"""Math answer extraction and verification with a hard per-answer timeout.

Extraction: :func:`~entropyctl.rewards.answers.extract_answer` (the rules are listed there).

Verification (:func:`check_answer`, :func:`verify_answer`):

* Fast path, in-process, microseconds: when both the extracted answer and the gold answer are plain
  numbers (integer, decimal with optional thousands commas, ``a/b``, ``\\frac{a}{b}``) they are compared
  exactly as rationals. The synthetic arithmetic task never leaves this path. When the gold answer
  is a plain number and the prediction is unevaluated arithmetic (only digits and ``+-*/^().=``,
  e.g. ``12+7``) it is ``wrong`` without SymPy: otherwise echoing the prompt would be rewarded. An
  equation chain whose last side is a plain number and whose other sides are one name or arithmetic
  evaluating exactly to it (``12+7=19``, ``x = 19``) is that number, on the fast path (``7 = 19`` is not).
* Otherwise math-verify's parser and SymPy comparison run in a persistent worker PROCESS
  (:mod:`entropyctl.rewards._worker`, started with :class:`subprocess.Popen`, so it works from any
  thread, from spawned/forked processes and from daemonic processes, which may not have
  ``multiprocessing`` children). If the worker does not reply within ``timeout`` seconds it is
  killed, a replacement is started at once, the answer scores 0 with status ``timeout``.
  math-verify's own timeout uses ``signal.alarm``: it raises off the main thread (the bug that
  silently zeroed another framework's rewards), so it is disabled inside the worker.
* Cheap guards before SymPy: NUL bytes are removed; an extracted answer longer than
  ``MAX_ANSWER_CHARS`` is a ``parse_error`` without touching SymPy. The hard timeout remains the
  real guarantee.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from entropyctl.rewards.answers import MAX_TEXT_CHARS, extract_answer, gold_answer

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_TEXT_CHARS",
    "Status",
    "VerifyResult",
    "MathVerifier",
    "extract_answer",
    "check_answer",
    "verify_answer",
    "parse_number",
    "default_verifier",
    "check_timeout",
]

Status = Literal["correct", "wrong", "no_answer", "parse_error", "timeout"]
STATUSES: tuple[Status, ...] = ("correct", "wrong", "no_answer", "parse_error", "timeout")

#: Extracted answers longer than this never reach SymPy: they score 0 as ``parse_error``.
MAX_ANSWER_CHARS = 1_000
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_STARTUP_TIMEOUT_S = 120.0

# ---------------------------------------------------------------------------------------------
# Fast numeric path
# ---------------------------------------------------------------------------------------------

_PLAIN_NUMBER = re.compile(r"[+-]?(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+")
_PLAIN_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_LATEX_FRACTION = re.compile(
    r"([+-]?)\\[dt]?frac\s*\{\s*([+-]?\d+(?:\.\d+)?)\s*\}\s*\{\s*(\d+(?:\.\d+)?)\s*\}"
)
#: a mixed number (``2\frac{1}{2}``, ``-1 \tfrac{3}{4}``): a whole number, then a proper fraction
_MIXED_NUMBER = re.compile(r"([+-]?)(\d+)\s*\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_MAX_FAST_DIGITS = 200
_ARITHMETIC = re.compile(r"[\d\s.,+\-*/^()=]+")


#: an earlier side of an equation chain whose last side may be read as the answer: arithmetic on numbers
#: (no comma: "x=5, y=19" is two equations) or one name, optionally applied ("x", "f(x)", "a_1")
_ARITHMETIC_SIDE = re.compile(r"[\d\s.+\-*/^()]+")
_NAME_SIDE = re.compile(r"[A-Za-z]\w*(?:\([^()=,;]*\))?")
_ARITH_TOKEN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+|\*\*|[-+*/^()])")
_MAX_ARITH_DEPTH = 32  # nested parentheses / signs
_MAX_EXPONENT = 64


#: LaTeX an arithmetic side may be written in: spacing commands and ``$`` are dropped, ``\times`` /
#: ``\cdot`` / ``\div`` become operators, a ``\frac{a}{b}`` of plain parts a division
_LATEX_SPACING = re.compile(r"\$|\\[,;:! ]")
_LATEX_OPERATORS = {"\\times": "*", "\\cdot": "*", "\\div": "/"}
_SIMPLE_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _unevaluated(text: str) -> bool:
    """Arithmetic left for the reader (``12+7``, ``12 \\times 7``, ``2^{3}``): numbers joined by an
    operator, in plain or LaTeX form; not a number with a unit (``36\\text{ cm}^2``), in braces or
    spacing (``{36}``, ``\\;5``), and not scientific notation (``3 \\times 10^8``)."""
    plain = _plain_arithmetic(text)
    if not _ARITHMETIC.fullmatch(plain) or _SCIENTIFIC.fullmatch(plain.replace(" ", "")):
        return False
    return _OPERATOR_BETWEEN.search(plain) is not None


#: an operator after a number or a closing parenthesis, or two numbers side by side
_OPERATOR_BETWEEN = re.compile(r"[\d)]\s*[-+*/^=,]|\d\s+\d")
_SCIENTIFIC = re.compile(r"[+-]?\d+(?:\.\d+)?\*10\^\(?[+-]?\d+\)?")


def _plain_arithmetic(text: str) -> str:
    """``text`` with LaTeX arithmetic written plainly (``12 \\times 7``, ``2^{3}``, ``\\;12+7``, a
    ``\\text{...}`` unit dropped), for the "unevaluated arithmetic" rule."""
    text = _TEXT_GROUP.sub("", _plain_equation(_LEFT_RIGHT.sub("", text)))
    return text.replace("{", "(").replace("}", ")")


_TEXT_GROUP = re.compile(r"\\(?:text|mathrm|textrm|mbox)\s*\{[^{}]*\}(?:\s*\^\s*(?:\{\s*[23]\s*\}|[23]))?")


def _plain_equation(text: str) -> str:
    text = _LATEX_SPACING.sub("", text)
    for command, operator in _LATEX_OPERATORS.items():
        text = text.replace(command, operator)
    return _SIMPLE_FRAC.sub(r"((\1)/(\2))", text)


#: a unit after a number: a word (``dollars``, ``km/h``, ``cm^2``), a ``\\text{...}``-like group or ``°`` —
#: not a percent (50% is 0.5: math-verify reads it), a function or constant (``pi``, ``sqrt``), a connective
#: (``12 or more``), a scale (``3 million``), or a two-letter group that is no unit (``5 xy``)
_UNIT = r"(?:\\(?:text|mathrm|textrm|mbox)\s*\{[^{}]*\}|°|\\circ|[A-Za-z]{2,}(?:/[A-Za-z]+)?(?:\^?[23])?)"
_NUMBER_WITH_UNITS = re.compile(
    rf"(?:\\?\$)?\s*(?P<number>[^\s$]+?)\s*\$?(?P<units>(?:\s*{_UNIT}){{1,2}})\s*\.?"
)
_NOT_UNITS = {
    *("pi", "sqrt", "ln", "log", "exp", "sin", "cos", "tan", "cot", "sec", "csc", "mod", "times", "cdot"),
    *("and", "or", "not", "to", "is", "are", "was", "be", "more", "less", "fewer", "than", "of", "plus"),
    *("minus", "over", "the", "percent", "pct", "hundred", "thousand", "million", "billion", "trillion"),
    *("dozen", "half", "halves", "quarter", "quarters", "third", "thirds", "tenth", "tenths"),
    *("hundreds", "thousands", "millions", "billions", "dozens", "times"),
}
#: no unit when it is the only word after the number (``5 squared``, ``3 fifths``), a unit's part beside
#: another (``36 units squared``, ``7 fifth graders``)
_NOT_UNITS_ALONE = {
    *("squared", "cubed", "factorial", "fourth", "fourths", "fifth", "fifths", "sixth", "sixths", "seventh"),
    *(
        "sevenths",
        "eighth",
        "eighths",
        "ninth",
        "ninths",
        "hundredth",
        "hundredths",
        "thousandth",
        "thousandths",
    ),
}
_MAX_UNITS_CHARS = 80
#: the two-letter units (a longer word may be one: ``dollars``, ``apples``)
_SHORT_UNITS = {
    "cm",
    "mm",
    "km",
    "kg",
    "mg",
    "ml",
    "ft",
    "yd",
    "mi",
    "lb",
    "oz",
    "hr",
    "kw",
    "kb",
    "mb",
    "gb",
}


def _unit_match(text: str) -> tuple[re.Match[str], list[str]] | None:
    """``text`` (stripped) as a plain number followed by one or two words, and those words (inside
    ``\\text{}`` too, not the command names: ``18\\text{million}``); None for anything else. A number and
    two units fit in 80 characters; the match is cubic in a long run of letters (in the trainer)."""
    if len(text) > _MAX_UNITS_CHARS or not any(c.isdigit() for c in text):
        return None
    match = _NUMBER_WITH_UNITS.fullmatch(text)
    return None if match is None else (match, re.findall(r"(?<!\\)\b[A-Za-z]+", match.group("units")))


def _scaled(text: str) -> bool:
    """A number followed by a scale word (``18 million``, ``18\\text{million}``, ``3 dozens``): not the
    number itself, whatever a reader that drops ``\\text{}`` makes of it."""
    found = _unit_match(text.strip())
    return found is not None and any(w.lower() in _SCALES for w in found[1])


_SCALES = {"hundred", "thousand", "million", "billion", "trillion", "dozen"}
_SCALES |= {f"{w}s" for w in _SCALES}


def _number_with_units(text: str) -> Fraction | None:
    """A plain number followed by at most two units (``18 dollars``, ``$18$ dollars``, ``18\\text{ cm}``,
    ``5 km/h``) as its number; None for anything else (``5x``, ``2 pi``, ``18 and 19``)."""
    text = text.strip()
    found = _unit_match(text)
    if found is None:
        return None
    match, words = found
    if any(w.lower() in _NOT_UNITS or (len(w) == 2 and w.lower() not in _SHORT_UNITS) for w in words):
        return None
    if len(words) == 1 and words[0].lower() in _NOT_UNITS_ALONE:
        return None
    if text[match.end("number")].isalpha():
        return None  # a word glued to the number is a product (``5x``, ``2pi``), not a unit
    return parse_number(match.group("number"))


def _final_side_number(text: str) -> tuple[Fraction | None, bool]:
    """An equation chain read as its answer: ``(value, False)`` when the last side is a plain number and every
    earlier side is one name or arithmetic that evaluates exactly to it (``12+7=19``, ``x = 19``,
    ``12 \\times 7 = 84``); ``(None, True)`` when such a chain is false (``7 = 19``, ``x = 12+7 = 20``);
    ``(None, False)`` for anything else (``x=5, y=19``, ``x <= 19``), which goes on as before. A worked
    line ending in its value is an answer, a false one is wrong; the unevaluated-arithmetic rule still
    refuses ``12+7``, ``12+7=`` and ``19 = 12+7``."""
    *sides, last = _plain_equation(text).replace("{", "(").replace("}", ")").split("=")
    value = parse_number(last) if sides else None
    if value is None:
        return None, False
    false = False
    for side in (s.strip() for s in sides):
        if _NAME_SIDE.fullmatch(side):
            continue
        if not _ARITHMETIC_SIDE.fullmatch(side):
            return None, False
        evaluated = _evaluate_arithmetic(side)
        if evaluated is None:
            return None, False
        false = false or evaluated != value
    return (None, True) if false else (value, False)


def _evaluate_arithmetic(text: str) -> Fraction | None:
    """Numbers with + - * / ^ (or **) and parentheses, evaluated exactly; None for anything else, a division
    by zero, an exponent that is not an integer of at most 64, a result past the fast path's digits, or
    parentheses / signs nested deeper than 32."""
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        match = _ARITH_TOKEN.match(text, pos)
        if match is None:
            if text[pos:].strip():
                return None
            break
        tokens.append(match.group(1))
        pos = match.end()
    parser = _Arithmetic(tokens)
    try:
        value = parser.expr(0)
    except (ArithmeticError, ValueError):  # ZeroDivisionError is an ArithmeticError
        return None
    return value if parser.at == len(tokens) else None


class _Arithmetic:
    """Recursive descent over :func:`_evaluate_arithmetic`'s tokens: expr = term (± term)*, term = unary
    (×/÷ unary)*, unary = ± unary | power, power = atom (^ unary)?, atom = number | ( expr )."""

    LIMIT = Fraction(10**_MAX_FAST_DIGITS)

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.at = tokens, 0

    def _peek(self, *ops: str) -> str | None:
        if self.at < len(self.tokens) and self.tokens[self.at] in ops:
            self.at += 1
            return self.tokens[self.at - 1]
        return None

    def _fits(self, x: Fraction) -> Fraction:
        if abs(x.numerator) > self.LIMIT or x.denominator > self.LIMIT:
            raise ArithmeticError("too many digits")
        return x

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while (op := self._peek("+", "-")) is not None:
            right = self.term(depth)
            value = self._fits(value + right if op == "+" else value - right)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.unary(depth)
        while (op := self._peek("*", "/")) is not None:
            right = self.unary(depth)
            value = self._fits(value * right if op == "*" else value / right)  # / 0: ZeroDivisionError
        return value

    def unary(self, depth: int) -> Fraction:
        if depth > _MAX_ARITH_DEPTH:
            raise ArithmeticError("nested too deep")
        if (op := self._peek("+", "-")) is not None:
            value = self.unary(depth + 1)
            return -value if op == "-" else value
        base = self.atom(depth)
        if self._peek("^", "**") is None:
            return base
        exponent = self.unary(depth + 1)  # right-associative: 2^3^2 = 2^9
        if exponent.denominator != 1 or abs(exponent) > _MAX_EXPONENT:
            raise ArithmeticError("exponent")
        return self._fits(base ** int(exponent))

    def atom(self, depth: int) -> Fraction:
        if self.at >= len(self.tokens):
            raise ArithmeticError("missing operand")
        token = self.tokens[self.at]
        self.at += 1
        if token == "(":
            value = self.expr(depth + 1)
            if self._peek(")") is None:
                raise ArithmeticError("unclosed parenthesis")
            return value
        if token[0].isdigit() or token[0] == ".":
            if len(token) > _MAX_FAST_DIGITS:
                raise ArithmeticError("too many digits")
            return Fraction(token)
        raise ArithmeticError(f"unexpected {token!r}")


#: a space between digit groups (``1\\,000``, ``1{,}000``, ``1~000``, ``1 000``) or a comma with LaTeX
#: spacing after it (MATH's ``10,\\!000``): read as a thousands comma
_GROUP_SPACE = re.compile(r"(?<=\d)(?:,?\\[,!; ]|\{,\}|~|[ \t])(?=\d{3}(?!\d))")
#: LaTeX around a number that does not change it: ``\\left`` / ``\\right`` before a delimiter, and
#: spacing commands at either end (``\\frac{1}{2}\\,``)
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_EDGE_SPACING = re.compile(r"^(?:\\[,;:! ]|\s)+|(?:\\[,;:! ]|\s)+$")
_SIGN_SPACE = re.compile(r"^([+-])\s+(?=[\d.\\])")
_WRAPPED = re.compile(r"\(\s*([^()]*?)\s*\)")


def _unwrapped(text: str) -> str:
    """``text`` without braces that enclose all of it (``{\\frac{1}{2}}``), ``\\left`` / ``\\right`` and
    spacing commands at its ends."""
    text = _EDGE_SPACING.sub("", _LEFT_RIGHT.sub("", text))
    while text.startswith("{") and text.endswith("}"):
        depth = 0
        for i, char in enumerate(text):
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0 and i < len(text) - 1:
                return text  # ``{1}{2}``: the first brace closes early
        text = _EDGE_SPACING.sub("", text[1:-1])
    return text


def parse_number(text: str) -> Fraction | None:
    """A plain number (``18``, ``-3.50``, ``1,000``, ``1\\,000``, ``10,\\!000``, ``1/2``, ``\\frac{1}{2}``,
    ``\\frac{1.5}{3}``, a mixed number ``2\\frac{1}{2}``, ``- 5``, ``(-5)``, ``\\left(\\frac{1}{2}\\right)``,
    ``{\\frac{1}{2}}``) as an exact Fraction, else None."""
    text = text.strip()
    if text.startswith("\\$"):
        text = text[2:]
    text = text.strip("$ ").rstrip(".").strip()
    if not text or len(text) > _MAX_FAST_DIGITS:
        return None
    text = _unwrapped(text)
    wrapped = _WRAPPED.fullmatch(text)
    if wrapped and "," not in wrapped.group(1):  # (-5) is a number; (0,100) a pair or an interval
        text = wrapped.group(1)
    text = _SIGN_SPACE.sub(r"\1", _GROUP_SPACE.sub(",", text))
    if _PLAIN_NUMBER.fullmatch(text):
        return Fraction(text.replace(",", ""))
    match = _PLAIN_FRACTION.fullmatch(text)
    if match:
        den = int(match.group(2))
        return Fraction(int(match.group(1)), den) if den else None
    match = _LATEX_FRACTION.fullmatch(text)
    if match:
        divisor = Fraction(match.group(3))
        if not divisor:
            return None
        value = Fraction(match.group(2)) / divisor
        return -value if match.group(1) == "-" else value
    match = _MIXED_NUMBER.fullmatch(text)
    if match and int(match.group(3)) < int(match.group(4)):  # 2\frac{3}{2} is no mixed number
        value = int(match.group(2)) + Fraction(int(match.group(3)), int(match.group(4)))
        return -value if match.group(1) == "-" else value
    return None


# ---------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------


def check_timeout(timeout: float, name: str = "timeout") -> float:
    """``timeout`` as a float, or ValueError unless it is a finite number of seconds > 0
    (NaN would time every answer out at once; inf overflows the wait)."""
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a number of seconds > 0 (got {timeout!r})") from None
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"{name}: must be a finite number of seconds > 0 (got {timeout!r})")
    return value


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of one check: ``score`` is 1.0 only for ``correct``."""

    status: Status
    score: float
    extracted: str | None
    detail: str = ""
    seconds: float = 0.0


class _WorkerTimeout(Exception):
    pass


class _WorkerDied(Exception):
    pass


def _worker_command() -> list[str]:
    # Run the worker from its source with -c: the child then never imports entropyctl (fast start,
    # and no package on sys.path is needed), and the rewards/ directory (which holds math.py) is not
    # put on sys.path, where it would shadow the standard library's math.
    source = (Path(__file__).with_name("_worker.py")).read_text()
    return [sys.executable, "-c", source]


class _Worker:
    """One verification process and its reply pipe. Not thread-safe: the pool hands it to one caller."""

    def __init__(self, startup_timeout: float, command: list[str] | None = None) -> None:
        self.startup_timeout = startup_timeout
        self.proc = subprocess.Popen(
            command if command is not None else _worker_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self._buffer = b""
        self.ready = False

    def _read_line(self, deadline: float | None) -> dict:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([fd], [], [], wait)
            if not readable:
                raise _WorkerTimeout()
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerDied()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    #: how errors name this worker, and what to try when it dies while starting
    label = "reward worker"

    def died_hint(self) -> str:
        return f"for math, run `{sys.executable} -m entropyctl.rewards._worker` to see why (is math-verify installed?)"

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            reply = self._read_line(time.monotonic() + self.startup_timeout)
        except _WorkerTimeout as exc:
            self.kill()
            raise RuntimeError(f"{self.label} did not start within {self.startup_timeout:.0f} s") from exc
        except _WorkerDied as exc:
            raise RuntimeError(f"{self.label} exited during start-up; {self.died_hint()}") from exc
        if not reply.get("ready"):
            raise RuntimeError(reply.get("error") or f"{self.label} sent an unexpected greeting: {reply!r}")
        self.ready = True

    def send(self, payload: dict[str, Any], timeout: float) -> dict:
        """One request and its reply within ``timeout`` seconds (start-up time is not charged to it)."""
        self.wait_ready()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(payload, default=str) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _WorkerDied() from exc
        return self._read_line(time.monotonic() + timeout)

    def request(self, pred: str, gold: str, timeout: float, info: Mapping[str, Any] | None = None) -> dict:
        payload: dict[str, Any] = {"pred": pred, "gold": gold}
        if info is not None:
            payload["info"] = info
        return self.send(payload, timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def close(self) -> None:
        # Closing stdin ends a ready worker's read loop; one still importing is simply killed.
        if not self.ready:
            self.kill()
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


_LIVE_VERIFIERS: weakref.WeakSet[MathVerifier] = weakref.WeakSet()


class MathVerifier:
    """A pool of verification worker processes with a hard per-answer timeout.

    Thread-safe: concurrent callers each take an idle worker (at most ``num_workers`` run at once).
    Fork-safe: a copy inherited by a forked child drops the parent's workers and starts its own.
    Workers start lazily on the first answer that needs SymPy; :meth:`warmup` starts them eagerly.
    """

    def __init__(
        self,
        num_workers: int = 1,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
        worker_command: list[str] | None = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        check_timeout(timeout)
        self.num_workers = num_workers
        self.worker_command = worker_command  # None: the math-verify worker
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self.timeouts = 0  # workers killed for a late reply, over this verifier's life
        self._reset_for_pid()
        _LIVE_VERIFIERS.add(self)

    def _reset_for_pid(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._started = 0
        self._closed = False

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            # Inherited through fork: those processes belong to the parent; never signal them.
            self._reset_for_pid()

    def _acquire(self) -> _Worker:
        self._check_pid()
        with self._cond:
            if self._closed:
                raise RuntimeError("MathVerifier is closed")
            while not self._idle and self._started >= self.num_workers:
                self._cond.wait()
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                worker.kill()  # died while idle (e.g. killed from outside): start a fresh one
                self._started -= 1
            self._started += 1
        return self._start_reserved()

    def _start_reserved(self) -> _Worker:
        """Start a worker for a slot already counted in ``_started``; give the slot back if it fails."""
        try:
            return _Worker(self.startup_timeout, self.worker_command)
        except BaseException:
            with self._cond:
                self._started -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            if worker is not None and not self._closed:
                self._idle.append(worker)
            else:
                self._started -= 1
                if worker is not None:
                    worker.kill()
            self._cond.notify()

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._started -= 1
        # Start the replacement now so its import overlaps with the caller's next work.
        try:
            fresh = self._spawn_slot()
        except Exception:
            fresh = None
        if fresh is not None:
            self._release(fresh)
        else:
            with self._cond:
                self._cond.notify()

    def _spawn_slot(self) -> _Worker | None:
        with self._cond:
            if self._closed or self._started >= self.num_workers:
                return None
            self._started += 1
        return self._start_reserved()

    def warmup(self) -> None:
        """Start every worker and wait until each has imported math-verify."""
        self._check_pid()
        workers = []
        while True:
            fresh = self._spawn_slot()
            if fresh is None:
                break
            workers.append(fresh)
        with self._cond:
            workers.extend(self._idle)
            self._idle.clear()
        for worker in workers:
            try:
                worker.wait_ready()
            finally:
                self._release(worker)

    def request(
        self, pred: str, gold: str, timeout: float | None = None, *, info: Mapping[str, Any] | None = None
    ) -> dict:
        """One request to a worker: its reply, or ``{"status": "timeout" | "parse_error", "detail"}``
        when it is late (killed and replaced) or died. ``info`` goes with it (a function reward's)."""
        limit = self.timeout if timeout is None else float(timeout)
        worker = self._acquire()
        try:
            reply = worker.request(pred, gold, limit, info)
        except _WorkerTimeout:
            with self._cond:
                self.timeouts += 1
            self._replace(worker)
            return {"status": "timeout", "detail": f"no reply within {limit:g} s; worker killed and replaced"}
        except _WorkerDied:
            self._replace(worker)
            return {"status": "parse_error", "detail": "worker process died (likely out of memory); replaced"}
        except BaseException:
            self._replace(worker)
            raise
        self._release(worker)
        return reply

    def compare(self, pred: str, gold: str, timeout: float | None = None) -> tuple[Status, str]:
        """SymPy comparison of two answer strings in a worker; (status, detail)."""
        reply = self.request(pred, gold, timeout)
        return reply["status"], reply.get("detail", "")

    def close(self) -> None:
        """Stop all workers (idempotent). Busy workers are killed when their caller returns them."""
        if self._pid != os.getpid():
            self._reset_for_pid()
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()
            with self._cond:
                self._started -= 1

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for verifier in list(_LIVE_VERIFIERS):
        if verifier._pid == os.getpid():
            verifier.close()


_DEFAULT: MathVerifier | None = None
_DEFAULT_LOCK = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide verifier used by :func:`check_answer` when none is given (one worker)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._pid != os.getpid() or _DEFAULT._closed:
            _DEFAULT = MathVerifier()
        return _DEFAULT


# ---------------------------------------------------------------------------------------------
# Public checks
# ---------------------------------------------------------------------------------------------


def check_answer(
    text: str,
    gold: str,
    timeout: float | None = None,
    *,
    verifier: MathVerifier | None = None,
    last_number: bool = True,
) -> VerifyResult:
    """Extract the answer from ``text`` and compare it with ``gold``; never raises on bad input.

    ``gold`` may be a bare answer, a ``\\boxed{}`` solution or a GSM8K ``#### n`` solution.
    ``timeout`` (seconds) bounds the SymPy comparison; None uses the verifier's default.
    """
    start = time.perf_counter()
    extracted = extract_answer(text, last_number=last_number)
    # Extraction (linear, at most MAX_TEXT_CHARS) is charged to the answer's time budget.
    extract_s = time.perf_counter() - start
    if timeout is not None and extract_s >= timeout:
        return VerifyResult("timeout", 0.0, None, f"extraction took {extract_s:.3g} s", extract_s)
    if extracted is None:
        return VerifyResult("no_answer", 0.0, None, "no final answer found", time.perf_counter() - start)
    if len(extracted) > MAX_ANSWER_CHARS:
        return VerifyResult(
            "parse_error",
            0.0,
            extracted[:80],
            f"answer longer than {MAX_ANSWER_CHARS} characters",
            time.perf_counter() - start,
        )
    reference = gold_answer(gold)
    pred_number = parse_number(extracted)
    gold_number = parse_number(reference)
    if pred_number is None and gold_number is not None:
        pred_number, false_equation = _final_side_number(extracted)
        if false_equation:  # SymPy would read its last side alone
            return VerifyResult("wrong", 0.0, extracted, "false equation", time.perf_counter() - start)
        if pred_number is None:  # "18 dollars": math-verify knows some units and not others
            pred_number = _number_with_units(extracted)
        if pred_number is None and _scaled(extracted):
            return VerifyResult(
                "wrong", 0.0, extracted, "a scale after the number", time.perf_counter() - start
            )
    if pred_number is not None and gold_number is not None:
        status: Status = "correct" if pred_number == gold_number else "wrong"
        return VerifyResult(status, float(status == "correct"), extracted, "", time.perf_counter() - start)
    if gold_number is not None and pred_number is None and _unevaluated(extracted):
        # An unevaluated expression such as "12+7" is not a final answer; SymPy would evaluate it and
        # pay a policy that echoes the synthetic prompt.
        return VerifyResult("wrong", 0.0, extracted, "unevaluated arithmetic", time.perf_counter() - start)
    if pred_number is None and gold_number is None and extracted == reference:
        return VerifyResult("correct", 1.0, extracted, "identical strings", time.perf_counter() - start)
    verifier = verifier if verifier is not None else default_verifier()
    budget = (verifier.timeout if timeout is None else float(timeout)) - (time.perf_counter() - start)
    if budget <= 0:
        return VerifyResult(
            "timeout", 0.0, extracted, "time budget spent before SymPy", time.perf_counter() - start
        )
    status, detail = verifier.compare(extracted, reference, budget)
    return VerifyResult(status, float(status == "correct"), extracted, detail, time.perf_counter() - start)


def verify_answer(text: str, gold: str, timeout: float | None = None, **kwargs: object) -> float:
    """1.0 when the final answer in ``text`` equals ``gold`` (exactly or symbolically), else 0.0."""
    return check_answer(text, gold, timeout, **kwargs).score  # type: ignore[arg-type]
