"""The ``reasoning_gym`` reward: reasoning-gym's own ``score_answer``, under a hard per-answer timeout.

For each completion:

1. our extraction picks the final answer: the last ``\\boxed{...}``, else the last
   ``<answer>...</answer>`` (reasoning-gym's own format), else the last answer line (``Answer: X``,
   ``final answer: X``, ``the answer is X``, ``#### X``) — read as the ``math`` reward reads it (to its
   first clause break, without a trailing period or ``$``) when that reading is a plain number
   (``The answer is 3.`` answers ``3``), else as it stands, a text answer keeping its commas and periods
   —, else the whole completion, stripped (the tiny character model's completion is the answer itself);
2. the dataset's ``score_answer(answer, entry)`` scores it, in a worker process that is killed and
   replaced when it does not reply within ``timeout`` seconds (the answer then scores 0, status
   ``timeout``), the same process-safe mechanism as the ``math`` reward.

The score is the reward, partial credit included (some datasets give scores between 0 and 1);
status ``correct`` means score == 1 exactly, anything else is ``wrong``, an empty completion
``no_answer`` (score 0, the verifier is not asked), a verifier that raises ``parse_error`` (score 0).
A score that is not exactly 1 is clipped to ``[0, BELOW_ONE]``, ``BELOW_ONE`` = 1 − 2⁻²⁴ the largest
float32 below 1: the trainer holds rewards in float32 and counts a solve as reward == 1, and a
verifier's float error must not turn into a solve there (reasoning-gym 0.1.25's ``spell_backward``
scores a wrong answer 0.9999999999999999 or 1.0000000000000002, which float32 rounds to 1).
The gold answers must be :class:`~entropyctl.data.reasoning_gym.GoldAnswer` objects, i.e. problems
from ``data.source: reasoning_gym``.
"""

from __future__ import annotations

import base64
import pickle
import re
import sys
from pathlib import Path
from typing import Any

from entropyctl.rewards.answers import MAX_TEXT_CHARS, final_line_value, last_boxed, read_answer_line
from entropyctl.rewards.base import RewardFunction
from entropyctl.rewards.math import (
    DEFAULT_STARTUP_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    MathVerifier,
    Status,
    _Worker,
    _WorkerDied,
    _WorkerTimeout,
    parse_number,
)

__all__ = ["BELOW_ONE", "ReasoningGymReward", "ReasoningGymVerifier", "extract_final_answer"]

#: The largest float32 below 1: the most a score that is not exactly 1 may give.
BELOW_ONE = 1.0 - 2.0**-24

_ANSWER_TAG = re.compile(r"<(/?)answer>", re.IGNORECASE)


def _last_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` (a closing tag ends the latest opening one before it),
    in one linear pass over the tags (the lazy regex ``<answer>(.*?)</answer>`` is quadratic on repeated
    unclosed openers)."""
    last, opened = None, None
    for match in _ANSWER_TAG.finditer(text):
        if not match.group(1):
            opened = match.end()
        elif opened is not None:
            last, opened = (opened, match.start()), None
    return None if last is None else text[last[0] : last[1]]


def extract_final_answer(text: str) -> str | None:
    """The final answer in a completion (see the module docstring for the order), or None when empty."""
    text = text.replace("\x00", "")[-MAX_TEXT_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    tag = _last_answer_tag(text)
    if tag is not None:
        return tag.strip()
    value = final_line_value(text)
    if value is not None:
        reading = read_answer_line(value)  # "3." answers 3; a prose answer keeps its commas and periods
        if reading and parse_number(reading) is not None:
            return reading
        value = value.strip().strip("*").strip()
        if value.startswith("$") and value.endswith("$") and len(value) >= 2:
            value = value.strip("$").strip()
        if value:
            return value
    return text.strip() or None


def _worker_command() -> list[str]:
    # From source with -c: the child never imports entropyctl, and rewards/ is not put on sys.path.
    return [sys.executable, "-c", (Path(__file__).with_name("_rg_worker.py")).read_text()]


class _ScoreWorker(_Worker):
    """One reasoning-gym scoring process (the math worker's pipe and kill logic, another program)."""

    def __init__(self, startup_timeout: float) -> None:
        super().__init__(startup_timeout, _worker_command())

    label = "reasoning-gym worker"

    def died_hint(self) -> str:
        return (
            "is reasoning-gym installed? "
            f"(pip install 'entropyctl[tasks]'; `{sys.executable} -c 'import reasoning_gym'` shows why)"
        )

    def score(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.send(payload, timeout)


class ReasoningGymVerifier(MathVerifier):
    """A pool of reasoning-gym scoring processes with a hard per-answer timeout (thread- and fork-safe,
    started lazily; see :class:`~entropyctl.rewards.math.MathVerifier`)."""

    def _start_reserved(self) -> _Worker:
        try:
            return _ScoreWorker(self.startup_timeout)
        except BaseException:
            with self._cond:
                self._started -= 1
                self._cond.notify()
            raise

    def score(self, answer: str, gold: Any, timeout: float | None = None) -> tuple[float, Status, str]:
        """``score_answer(answer, gold.entry)`` of ``gold``'s dataset: (score, status, detail)."""
        limit = self.timeout if timeout is None else float(timeout)
        spec = gold.spec
        payload = {
            "spec": {"name": spec.name, "config": spec.config_json, "seed": spec.seed, "size": spec.size},
            "answer": answer,
            "entry": base64.b64encode(pickle.dumps(gold.entry)).decode(),
        }
        worker = self._acquire()
        try:
            assert isinstance(worker, _ScoreWorker)
            reply = worker.score(payload, limit)
        except _WorkerTimeout:
            with self._cond:
                self.timeouts += 1
            self._replace(worker)
            return 0.0, "timeout", f"no reply within {limit:g} s; worker killed and replaced"
        except _WorkerDied:
            self._replace(worker)
            return 0.0, "parse_error", "worker process died (likely out of memory); replaced"
        except BaseException:
            self._replace(worker)
            raise
        self._release(worker)
        if "error" in reply:
            return 0.0, "parse_error", str(reply["error"])
        score = float(reply["score"])
        if score == 1.0:
            return 1.0, "correct", ""
        return min(max(score, 0.0), BELOW_ONE), "wrong", ""


class ReasoningGymReward(RewardFunction):
    """reasoning-gym's ``score_answer`` as the reward (partial credit kept), our extraction in front.

    ``timeout``: hard per-answer limit in seconds; ``num_workers``: scoring processes;
    ``extract``: False scores the whole completion as the answer.
    """

    name = "reasoning_gym"

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT_S,
        num_workers: int = 1,
        *,
        extract: bool = True,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.timeout = float(timeout)
        self.extract = extract
        self.verifier = ReasoningGymVerifier(num_workers, timeout=timeout, startup_timeout=startup_timeout)

    def score_one(self, completion: str, answer: str) -> tuple[float, Status]:
        if not hasattr(answer, "entry") or not hasattr(answer, "spec"):
            raise ValueError(
                "reward 'reasoning_gym' scores problems of data.source 'reasoning_gym' (their gold answers "
                f"carry the dataset entry); got a plain gold answer {str(answer)[:40]!r}"
            )
        predicted = extract_final_answer(completion) if self.extract else completion.strip() or None
        if predicted is None:
            return 0.0, "no_answer"
        score, status, _ = self.verifier.score(predicted, answer, self.timeout)
        return score, status

    def warmup(self) -> None:
        """Start the scoring processes now (they otherwise start on the first answer)."""
        self.verifier.warmup()

    def close(self) -> None:
        self.verifier.close()
