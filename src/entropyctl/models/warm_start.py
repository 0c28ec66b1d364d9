"""Warm start of the embedded tiny model: supervised training on the synthetic arithmetic task, cached.

The cache directory is ``<cache>/tiny/<key>``, where ``key`` hashes everything that changes the weights
(model shape and seed, data levels/weights/seed, steps, batch size, learning-rate schedule, the alphabet
and the cache format). A run writes into a temporary sibling directory and renames it into place, so a
killed run never leaves a half-written cache; concurrent runs (e.g. two DDP ranks) serialise on a lock
file and the second one reuses the first one's result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from entropyctl.cache import default_cache_dir, usual_permissions
from entropyctl.models.config import ModelConfig
from entropyctl.models.tiny import build_char_tokenizer, build_tiny_model
from entropyctl.rollout.protocol import SamplingSettings

__all__ = [
    "CACHE_FORMAT",
    "default_cache_dir",
    "cache_key",
    "cached_checkpoint",
    "pretrain",
    "greedy_accuracy",
    "write_atomically",
]

# Bump when the training recipe changes in a way the config does not capture: old caches become misses.
CACHE_FORMAT = 1
METADATA_FILE = "pretrain.json"


def _synthetic() -> Any:
    from entropyctl.data import synthetic

    return synthetic


def cache_key(cfg: ModelConfig, task: Any = None) -> str:
    """Hash of everything that affects the warm-started weights (``task``: an external task's
    ``identity()`` and alphabet instead of the synthetic task's)."""
    synthetic = _synthetic()
    payload = {
        "format": CACHE_FORMAT,
        "alphabet": synthetic.ALPHABET if task is None else task.alphabet,
        "data_version": getattr(synthetic, "VERSION", None),
        "tiny": cfg.tiny.model_dump(mode="json"),
        "pretrain": cfg.pretrain.model_dump(mode="json"),
    }
    if task is not None:
        payload["task"] = task.identity()
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_checkpoint(cfg: ModelConfig, task: Any = None) -> Path:
    """Where ``pretrain(cfg, task=task)`` puts (or finds) its checkpoint."""
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return root / "tiny" / cache_key(cfg, task)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_task(cfg: ModelConfig, seed: int, task: Any = None) -> Any:
    if task is not None:  # an external task: its own levels; its training stream seeded by `seed`
        if cfg.pretrain.levels is not None or cfg.pretrain.weights is not None:
            raise ValueError(
                "model.pretrain.levels/weights choose synthetic levels; with an external task the warm start "
                "draws from data.levels and data.weights (remove model.pretrain.levels and weights)"
            )
        return task.stream(seed)
    synthetic = _synthetic()
    kwargs: dict[str, Any] = {"seed": seed}
    if cfg.pretrain.levels is not None:
        kwargs["levels"] = cfg.pretrain.levels
    if cfg.pretrain.weights is not None:
        kwargs["weights"] = cfg.pretrain.weights
    return synthetic.SyntheticArithmetic(**kwargs)


def _supervised_batch(
    tokenizer: PreTrainedTokenizerBase, problems: list[Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``<bos> prompt answer <eos>`` with labels only on ``answer <eos>`` (-100 elsewhere)."""
    rows: list[list[int]] = []
    labels: list[list[int]] = []
    for problem in problems:
        prompt = tokenizer(problem.prompt)["input_ids"]
        answer = tokenizer(problem.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, lab) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(row)] = torch.as_tensor(row)
        mask[i, : len(row)] = 1
        target[i, : len(lab)] = torch.as_tensor(lab)
    return ids, mask, target


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def greedy_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Any],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 256,
) -> dict[str, float]:
    """Greedy exact-match accuracy, overall (``"all"``) and per level (``"<level>"``)."""
    from entropyctl.rollout.hf import HFRolloutEngine

    engine = HFRolloutEngine(model, tokenizer)
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=max_new_tokens)
    correct: dict[str, list[float]] = {}
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        completions = engine.generate([tokenizer(p.prompt)["input_ids"] for p in chunk], 1, greedy)
        for problem, text in zip(chunk, engine.decode(completions), strict=True):
            hit = float(text.strip() == problem.answer.strip())
            correct.setdefault("all", []).append(hit)
            correct.setdefault(str(problem.level), []).append(hit)
    return {k: sum(v) / len(v) for k, v in sorted(correct.items())}


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class WarmStartProgress:
    """The warm start's progress on stderr: a bar (steps, loss, ETA) on a terminal, a line every ~10 %
    when the output is a file. Says that the model is built once and where it is cached."""

    WIDTH = 100

    def __init__(self, steps: int, directory: Path, stream: Any = None) -> None:
        self.steps = steps
        self.directory = directory
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = max(1, steps // 10)
        self.started = time.perf_counter()
        self.last_draw = 0.0
        self.recent: list[float] = []

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def start(self) -> None:
        self.started = time.perf_counter()
        self._write(
            f"[entropyctl] warm start: training the tiny model ({self.steps} steps); this happens once, "
            f"the result is cached in {self.directory}\n"
        )

    def __call__(self, step: int, loss: float) -> None:
        self.recent = [*self.recent[-49:], loss]
        elapsed = time.perf_counter() - self.started
        eta = elapsed / step * (self.steps - step)
        mean = sum(self.recent) / len(self.recent)
        if self.tty:
            now = time.perf_counter()
            if now - self.last_draw < 0.2 and step < self.steps:
                return
            self.last_draw = now
            width = 30
            filled = int(width * step / self.steps)
            line = (
                f"  warm start [{'#' * filled}{'.' * (width - filled)}] {step}/{self.steps} "
                f"loss {mean:.3f} ETA {_duration(eta)}"
            )
            self._write("\r" + line[: self.WIDTH - 1].ljust(self.WIDTH - 1))
        elif step % self.every == 0 or step == self.steps:
            self._write(
                f"[entropyctl] warm start {100 * step // self.steps:3d}%: step {step}/{self.steps}, "
                f"loss {mean:.3f}, {_duration(elapsed)} elapsed, ETA {_duration(eta)}\n"
            )

    def finish(self) -> None:
        if self.tty:
            self._write("\n")
        self._write(
            f"[entropyctl] warm start done in {_duration(time.perf_counter() - self.started)}; "
            f"later runs load it from {self.directory}\n"
        )


def _train(
    cfg: ModelConfig,
    log: Callable[[str], None] | None,
    task: Any = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    synthetic = _synthetic()
    if task is not None:
        task.check_gold_answers()
    tokenizer = build_char_tokenizer(synthetic.ALPHABET if task is None else task.alphabet)
    t = cfg.tiny
    model = build_tiny_model(
        tokenizer,
        hidden_size=t.hidden_size,
        layers=t.layers,
        heads=t.heads,
        seed=t.seed,
        intermediate_size=t.intermediate_size,
        max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=t.tie_word_embeddings,
    )
    p = cfg.pretrain
    started = time.perf_counter()
    losses: list[float] = []
    if p.steps > 0:
        stream = _make_task(cfg, p.seed, task)  # its sample() never returns held-out prompts
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=p.lr, weight_decay=p.weight_decay, betas=(0.9, 0.98)
        )
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)
            for step in range(p.steps):
                for group in optimizer.param_groups:
                    group["lr"] = p.lr * _lr_factor(step, p.warmup_steps, p.steps)
                ids, mask, labels = _supervised_batch(tokenizer, stream.sample(p.batch_size))
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                if progress is not None:
                    progress(step + 1, losses[-1])
                if log is not None and (step + 1) % max(1, p.steps // 10) == 0:
                    recent = losses[-max(1, p.steps // 10) :]
                    log(
                        f"pretrain step {step + 1}/{p.steps}  loss {sum(recent) / len(recent):.4f}  "
                        f"{time.perf_counter() - started:.1f}s"
                    )
    model.eval()
    train_seconds = time.perf_counter() - started
    metadata = {
        "cache_format": CACHE_FORMAT,
        "key": cache_key(cfg, task),
        "task": None if task is None else task.identity(),
        "tiny": t.model_dump(mode="json"),
        "pretrain": p.model_dump(mode="json"),
        "parameters": sum(param.numel() for param in model.parameters()),
        "train_seconds": round(train_seconds, 2),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
        "torch_threads": torch.get_num_threads(),
    }
    return model, tokenizer, metadata


def write_atomically(directory: Path, write: Callable[[Path], object]) -> None:
    """Write into a temporary sibling, then rename it onto ``directory`` (one atomic step on POSIX)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write(tmp)
        usual_permissions(tmp)  # not mkdtemp's 0700: a shared cache, a copy handed on
        if directory.exists():
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pretrain(
    cfg: ModelConfig | dict[str, Any] | None = None,
    *,
    force: bool = False,
    evaluate: int = 0,
    log: Callable[[str], None] | None = None,
    task: Any = None,
    progress: bool = True,
) -> Path:
    """Return the directory of the warm-started tiny model for ``cfg``, training it first on a cache miss.

    ``task``: the task to warm-start on (an object with ``sample``, ``held_out``, ``stream``, ``alphabet``
    and ``identity()``, e.g. :class:`~entropyctl.data.reasoning_gym.ReasoningGymTask`); None: the
    synthetic arithmetic task.

    ``force`` retrains even on a hit; ``evaluate=n`` also measures greedy accuracy per level on ``n``
    problems of the task's held-out split and stores it in ``pretrain.json``.
    The directory loads with ``from_pretrained`` (model and tokenizer).
    """
    if cfg is None:
        cfg = ModelConfig.model_validate({})
    elif not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.model_validate(cfg)
    if cfg.kind != "tiny":
        raise ValueError(f"pretrain: model.kind is '{cfg.kind}'; only the 'tiny' model is warm-started here")
    directory = cached_checkpoint(cfg, task)
    if (directory / METADATA_FILE).is_file() and not force:
        return directory
    with _exclusive(directory.parent / f"{directory.name}.lock"):
        if (directory / METADATA_FILE).is_file() and not force:
            return directory  # another process finished it while we waited
        # Library and `entropyctl train` use: report progress (rank 0 only); `entropyctl pretrain` logs.
        reporter = None
        if log is None and progress and os.environ.get("LOCAL_RANK", "0") == "0" and cfg.pretrain.steps > 0:
            reporter = WarmStartProgress(cfg.pretrain.steps, directory)
            reporter.start()
        model, tokenizer, metadata = _train(cfg, log, task, reporter)
        if reporter is not None:
            reporter.finish()
        if evaluate > 0:
            metadata.update(measured_accuracy(model, tokenizer, cfg, task, evaluate))

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")

        write_atomically(directory, write)
        if log is not None:
            log(f"pretrain: wrote {directory}")
    return directory


def measured_accuracy(
    model: Any, tokenizer: Any, cfg: ModelConfig, task: Any, evaluate: int
) -> dict[str, Any]:
    """``greedy_accuracy`` per level on ``evaluate`` problems of the task's held-out split, with the
    count and the seconds it took (``pretrain.json``'s fields)."""
    if task is None:
        problems = _make_task(cfg, cfg.pretrain.seed).held_out(evaluate, seed=0)
    else:
        problems = task.held_out(evaluate)
    started = time.perf_counter()
    longest = max((len(p.answer) for p in problems), default=0)
    accuracy = greedy_accuracy(model, tokenizer, problems, max_new_tokens=max(8, longest + 1))
    return {
        "greedy_accuracy": accuracy,
        "eval_problems": evaluate,
        "eval_seconds": round(time.perf_counter() - started, 2),
    }


def load_pretrained(directory: Path | str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a ``pretrain`` checkpoint (offline; left-padded tokenizer)."""
    # Written by save_pretrained as safetensors: never unpickle a .bin planted in the cache.
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    tokenizer.padding_side = "left"
    return model, tokenizer


# --------------------------------------------------------------------------------------------- CLI
