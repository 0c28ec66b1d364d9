"""Reward functions picked by name: ``math``, ``exact``, ``reasoning_gym``, or a ``module:function`` path.

Every reward is an object with ``__call__(completions, answers) -> list[float]``, ``metrics()``
(counts per status since the last ``reset_metrics()``) and ``close()``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from entropyctl.rewards.base import RewardFunction, takes_info
from entropyctl.rewards.math import (
    DEFAULT_TIMEOUT_S,
    MathVerifier,
    Status,
    check_answer,
    check_timeout,
    extract_answer,
)
from entropyctl.rewards.reasoning_gym import ReasoningGymReward
from entropyctl.validation import keyword_options, unknown_option

__all__ = [
    "RewardFunction",
    "MathReward",
    "ExactReward",
    "FunctionReward",
    "ProcessFunctionReward",
    "register_reward",
    "available_rewards",
    "check_reward",
    "get_reward",
    "reward_options",
    "reward_takes_info",
]


class MathReward(RewardFunction):
    """1.0 when the completion's final answer equals the gold answer (integer fast path, else SymPy).

    ``timeout`` is the hard per-answer limit in seconds (worker killed and replaced when exceeded);
    ``num_workers`` verification processes serve concurrent callers.
    """

    name = "math"

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT_S,
        num_workers: int = 1,
        *,
        last_number: bool = True,
        verifier: MathVerifier | None = None,
    ) -> None:
        super().__init__()
        self.timeout = check_timeout(timeout)
        self.last_number = last_number
        self._owns_verifier = verifier is None
        self.verifier = verifier if verifier is not None else MathVerifier(num_workers, timeout=timeout)

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        result = check_answer(
            completion, answer, self.timeout, verifier=self.verifier, last_number=self.last_number
        )
        return result.score, result.status

    def warmup(self) -> None:
        """Start the worker processes now (they otherwise start on the first non-numeric answer)."""
        self.verifier.warmup()

    def close(self) -> None:
        if self._owns_verifier:
            self.verifier.close()


def normalize_answer(text: str) -> str:
    """Lower-case, NUL-free, whitespace-collapsed text without surrounding ``$`` or a final period."""
    text = text.replace("\x00", "").strip().strip("$").strip().rstrip(".").strip()
    return re.sub(r"\s+", " ", text).lower()


class ExactReward(RewardFunction):
    """1.0 when the normalized final answer equals the normalized gold answer (no SymPy).

    The final answer is :func:`extract_answer`'s result when it finds one, else the whole completion.
    """

    name = "exact"

    def __init__(self, *, extract: bool = True) -> None:
        super().__init__()
        self.extract = extract

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        candidate = extract_answer(completion, last_number=False) if self.extract else None
        if candidate is None:
            candidate = completion
        predicted = normalize_answer(candidate)
        if not predicted:
            return 0.0, "no_answer"
        ok = predicted == normalize_answer(answer)
        return float(ok), "correct" if ok else "wrong"


class FunctionReward(RewardFunction):
    """Wraps a plain ``fn(completion, answer) -> float``; a score > 0 counts as ``correct``.

    Runs ``fn`` in this process with no timeout (for trusted in-memory callables);
    ``get_reward("package.module:function")`` gives a :class:`ProcessFunctionReward` instead."""

    def __init__(self, fn: Callable[..., float], name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name = name if name is not None else str(getattr(fn, "__qualname__", repr(fn)))
        self.takes_info = takes_info(fn)

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        return _verdict(float(self.fn(completion, answer)))

    def score_with_info(self, completion: str, answer: str, info: Mapping[str, Any]) -> tuple[float, Status]:
        return _verdict(float(self.fn(completion, answer, info=info)))


def _verdict(score: float) -> tuple[float, Status]:
    """A function reward's score and status: a score above 0 counts as ``correct``."""
    return score, "correct" if score > 0 else "wrong"


class ProcessFunctionReward(RewardFunction):
    """A ``package.module:function`` reward run in worker processes under a hard per-answer timeout.

    The function, ``fn(completion, answer) -> float`` (or ``fn(completion, answer, info)``: called with
    the row's :func:`~entropyctl.rewards.base.reward_info` as ``info=``), is imported and called in
    ``num_workers`` separate processes; an answer not scored within ``timeout`` seconds scores 0 with status ``timeout`` (counted
    per step as ``reward_timeout``) and its worker is killed and replaced, so a function that never
    returns cannot hang training. An exception in the function is raised here with its traceback.
    """

    def __init__(self, path: str, *, timeout: float = DEFAULT_TIMEOUT_S, num_workers: int = 1) -> None:
        super().__init__()
        self.name = path
        self.timeout = check_timeout(timeout, f"reward {path!r}: timeout")
        self.takes_info = takes_info(_import_function(path))  # imported here too: its signature decides
        source = (Path(__file__).with_name("_function_worker.py")).read_text()
        # the worker imports the function with this process's sys.path ('' = the current directory)
        search_path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.pool = MathVerifier(
            num_workers,
            timeout=self.timeout,
            worker_command=[sys.executable, "-c", source, path, search_path],
        )

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        return self._scored(self.pool.request(completion, answer))

    def score_with_info(self, completion: str, answer: str, info: Mapping[str, Any]) -> tuple[float, Status]:
        return self._scored(self.pool.request(completion, answer, info=info))

    def _scored(self, reply: dict[str, Any]) -> tuple[float, Status]:
        status = reply["status"]
        if status == "error":
            raise RuntimeError(
                f"reward {self.name!r} raised in its worker process:\n{reply.get('detail', '')}"
            )
        if status in ("timeout", "parse_error"):
            return 0.0, status
        return float(reply["score"]), status

    def warmup(self) -> None:
        """Start the workers now (import the function) instead of on the first answer."""
        self.pool.warmup()

    def close(self) -> None:
        self.pool.close()


_REGISTRY: dict[str, Callable[..., RewardFunction]] = {}


def register_reward(name: str) -> Callable[[Callable[..., RewardFunction]], Callable[..., RewardFunction]]:
    """Decorator: make a reward class or factory available to :func:`get_reward` under ``name``.

    Its keyword arguments are the reward's options (``reward.options`` of a run config, checked when the
    config is loaded); a factory taking ``**kwargs`` accepts any."""

    def decorate(factory: Callable[..., RewardFunction]) -> Callable[..., RewardFunction]:
        if ":" in name:
            raise ValueError(f"reward name {name!r} may not contain ':' (reserved for module:function paths)")
        _REGISTRY[name] = factory
        return factory

    return decorate


register_reward("math")(MathReward)
register_reward("exact")(ExactReward)
register_reward("reasoning_gym")(ReasoningGymReward)  # reasoning-gym itself is imported by its worker


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def reward_options(name_or_path: str) -> list[str] | None:
    """The options (keyword arguments of :func:`get_reward`) reward ``name_or_path`` takes, read from its
    factory's signature; None: any (the factory takes ``**kwargs``). A ``package.module:function`` takes
    those of :class:`ProcessFunctionReward`."""
    factory = _REGISTRY.get(name_or_path)
    if factory is not None:
        return keyword_options(factory)
    return keyword_options(ProcessFunctionReward, skip=1)  # its first argument is the path


def _import_hint(module_name: str, exc: BaseException) -> str:
    """Why ``module_name`` could not be imported, when it looks like an import-path problem ('' if not)."""
    if module_name.endswith(".py"):  # verl's custom_reward_function.path habit: a file, not a module
        return (
            f"; name the module, not its file: {module_name.removesuffix('.py').replace('/', '.')}:function"
        )
    if isinstance(exc, ImportError) and "relative import" in str(exc):
        return (
            "; a module with relative imports must be named with its package (package.module:function), "
            "the folder holding the package on PYTHONPATH"
        )
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing is None or not (module_name == missing or module_name.startswith(f"{missing}.")):
        return ""  # not the reward's own module: something it imports is missing (the message says what)
    relative = Path(*module_name.split("."))
    for found in (relative.with_suffix(".py"), relative / "__init__.py"):
        if found.is_file():
            return (
                f"; {found} is under the current directory, which is not on the import path: put that folder "
                "on PYTHONPATH (e.g. PYTHONPATH=. entropyctl train ...)"
            )
    top = module_name.split(".")[0]
    return f"; install it, or put the folder that holds {top!r} on PYTHONPATH"


def _import_function(path: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names (its module imported); ValueError saying why not."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the module's own code runs: it may raise anything
        raise ValueError(
            f"cannot import module {module_name!r} ({type(exc).__name__}: {exc}){_import_hint(module_name, exc)}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(
            f"{module_name}:{attr} is not callable; expected a function (completion, answer) -> float"
        )
    return target


def _call_problem(fn: Callable[..., Any]) -> str | None:
    """Why ``fn`` cannot be called as a reward, ``fn(completion, answer)`` (with ``info=`` when it takes
    it), or None: found from its signature, not by calling it (verl's ``compute_score(data_source,
    solution_str, ground_truth, extra_info)`` failed at the first score, after the model had loaded)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # no signature to read (a builtin): called as it is
    try:
        signature.bind("completion", "answer", **({"info": {}} if takes_info(fn) else {}))
    except TypeError:
        return (
            f"cannot be called as fn(completion, answer) or fn(completion, answer, info) (it takes {signature}); "
            "wrap it, e.g. def score(completion, answer, info): return compute_score(info['data_source'], "
            "completion, answer, info.get('extra_info'))"
        )
    return None


def _unknown_name(name_or_path: str) -> str | None:
    """Why ``name_or_path`` is neither a registered name nor a ``package.module:function`` (None: it is one)."""
    if name_or_path in _REGISTRY:
        return None
    module_name, sep, attr = name_or_path.partition(":")
    valid = f"one of {available_rewards()} or 'package.module:function'"
    if not sep:
        return f"unknown reward {name_or_path!r}; expected {valid}"
    if not module_name or not attr:
        return f"reward path {name_or_path!r} is malformed; expected {valid}"
    return None


def reward_takes_info(name_or_path: str) -> bool:
    """Whether the reward ``name_or_path`` names is called with each row's ``info`` (a registered reward:
    its class's ``takes_info``; a ``package.module:function``: a parameter named ``info``). Imports a
    function's module, as :func:`check_reward` does; False for a name neither knows."""
    factory = _REGISTRY.get(name_or_path)
    if factory is not None:
        return bool(getattr(factory, "takes_info", False))
    if _unknown_name(name_or_path) is not None:
        return False
    try:
        return takes_info(_import_function(name_or_path))
    except ValueError:
        return False


def check_reward(name_or_path: str, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What :func:`get_reward` would refuse in ``name_or_path`` and ``options``, found without building the
    reward: one ``(field, problem)`` per problem, ``field`` being ``"name"`` or ``"options.<key>"``.

    A ``package.module:function`` is imported (its module is what a run imports); a registered name
    imports nothing. Unknown option keys are found from the factory's signature, not by calling it."""
    unknown = _unknown_name(name_or_path)
    if unknown is not None:
        return [("name", unknown)]
    if name_or_path not in _REGISTRY:
        try:
            called = _call_problem(_import_function(name_or_path))
        except ValueError as err:
            return [("name", str(err))]
        if called is not None:
            return [("name", f"{name_or_path}: {called}")]
    accepted = reward_options(name_or_path)
    problems = [
        (f"options.{key}", unknown_option(str(key), accepted, f"reward {name_or_path!r}"))
        for key in options
        if accepted is not None and key not in accepted
    ]
    if "timeout" in options and (accepted is None or "timeout" in accepted):
        try:
            check_timeout(options["timeout"])
        except ValueError as err:
            key, _, problem = str(err).partition(": ")
            problems.append((f"options.{key}", problem))
    return problems


def get_reward(name_or_path: str, **kwargs: Any) -> RewardFunction:
    """A reward by registered name (``math``, ``exact``) or ``package.module:function`` path.

    ``kwargs`` go to the registered factory (e.g. ``get_reward("math", timeout=2.0)``); they are checked
    first (:func:`check_reward`), so an unknown one is a ValueError naming the ones the reward takes.
    """
    unknown = _unknown_name(name_or_path)
    if unknown is not None:
        raise ValueError(unknown)
    problems = check_reward(name_or_path, kwargs)
    if problems:
        field, problem = problems[0]
        where = "" if field == "name" else f"{field}: "
        raise ValueError(f"reward {name_or_path!r}: {where}{problem}")
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path](**kwargs)
    return ProcessFunctionReward(name_or_path, **kwargs)
