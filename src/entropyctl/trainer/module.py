"""The RLVR trainer as a LightningModule (design.md §5): one GRPO/DAPO step per ``training_step``.

A step on every rank::

    prompts (seeded by seed, rank, step) ──► G rollouts (engine) ──► rewards (verifier)
        ──► group accuracy acc_i, advantages A_ij ──► plan = controller.plan(GroupOutcome)
        ──► old log-probs (no grad, before the first update)
        ──► for each PPO epoch and mini-batch: fused loss (token-mean over the GLOBAL token count)
            ──► manual_backward(W · L_r) ──► clip ──► optimizer step
        ──► EntropyStats.reduce (ONE collective) ──► controller.observe(reading)   (same on every rank)
        ──► metrics (ONE collective) ──► metrics.csv / loggers

Why ``W · L_r``: DDP averages gradients over the W ranks while the loss is normalised by the global
token count N, so each rank back-propagates W times its share (see ``trainer/stats.py``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from entropyctl.config import RunConfig
from entropyctl.config.run import kl_horizon_problem
from entropyctl.controllers.base import (
    EntropyController,
    EntropyReading,
    Plan,
    TokenAction,
    TokenCollective,
    TokenStatistics,
)
from entropyctl.controllers.token_level import step_token_action
from entropyctl.ops.entropy import fused_logprob_entropy, token_logprob_entropy
from entropyctl.ops.losses import PolicyLossOutput, fused_policy_loss, policy_loss
from entropyctl.ops.sampler_correction import sampler_correction
from entropyctl.rewards.base import call_reward
from entropyctl.rollout.protocol import Completions, RolloutEngine, SamplingSettings, decode_responses
from entropyctl.trainer.evaluation import ProblemOutcome, count_correct, eval_set_of, summarize_pass_at_k
from entropyctl.trainer.phases import (
    CLIP_PARTS,
    LOSS_PARTS,
    MISMATCH_SUMS,
    Collected,
    Planned,
    Scored,
    StepResult,
    TokenForward,
    Updated,
    adapted_kl_coef,
    local_sums,
    metrics_row,
    observe,
    plan_groups,
    score,
    shaped_rewards,
)
from entropyctl.trainer.run_dir import (
    SHAPING_PREFIX,
    CompletionsWriter,
    MetricsWriter,
    RunStopped,
    StopSignals,
    coefficient_acted,
    metric_columns,
    read_metrics,
    step_checkpoints,
    write_atomic,
)
from entropyctl.trainer.sampler import PromptSampler, derive_seed
from entropyctl.trainer.stats import EntropyStats, all_reduce_sum

__all__ = [
    "RLVRModule",
    "RLVRCheckpoint",
    "merge_completions",
]


# --------------------------------------------------------------------------------------------- prompts


# --------------------------------------------------------------------------------------------- rollouts


def merge_completions(parts: Sequence[tuple[Completions, Sequence[int]]], pad_id: int) -> Completions:
    """Rows ``rows`` of each ``Completions``, in order, re-padded to common widths (prompts stay left-padded,
    responses right-padded)."""
    prompt_w = max(int(c.prompt_ids.shape[1]) for c, _ in parts)
    resp_w = max(int(c.response_ids.shape[1]) for c, _ in parts)
    out: dict[str, list[Tensor]] = {k: [] for k in ("pi", "pm", "ri", "rm", "tr", "lp")}
    for comp, rows in parts:
        index = torch.as_tensor(list(rows), dtype=torch.long)
        pi, pm = comp.prompt_ids[index], comp.prompt_mask[index]
        ri, rm = comp.response_ids[index], comp.response_mask[index]
        lp_pad = prompt_w - pi.shape[1]
        rp_pad = resp_w - ri.shape[1]
        out["pi"].append(torch.nn.functional.pad(pi, (lp_pad, 0), value=pad_id))
        out["pm"].append(torch.nn.functional.pad(pm, (lp_pad, 0), value=0))
        out["ri"].append(torch.nn.functional.pad(ri, (0, rp_pad), value=pad_id))
        out["rm"].append(torch.nn.functional.pad(rm, (0, rp_pad), value=0))
        out["tr"].append(comp.truncated[index])
        if comp.logprobs is not None:
            out["lp"].append(torch.nn.functional.pad(comp.logprobs[index], (0, rp_pad), value=0.0))
    return Completions(
        prompt_ids=torch.cat(out["pi"]),
        prompt_mask=torch.cat(out["pm"]),
        response_ids=torch.cat(out["ri"]),
        response_mask=torch.cat(out["rm"]),
        truncated=torch.cat(out["tr"]),
        logprobs=torch.cat(out["lp"]) if len(out["lp"]) == len(parts) else None,
    )


def _select_rows(comp: Completions, rows: Tensor, pad_id: int) -> Completions:
    """A mini-batch of rows with all-padding columns trimmed (so a short mini-batch costs less)."""
    sub = merge_completions([(comp, rows.tolist())], pad_id)
    keep_p = sub.prompt_mask.sum(0) > 0
    first = int(keep_p.nonzero()[0]) if bool(keep_p.any()) else sub.prompt_mask.shape[1] - 1
    resp_len = int(sub.response_mask.sum(1).max())
    return Completions(
        prompt_ids=sub.prompt_ids[:, first:],
        prompt_mask=sub.prompt_mask[:, first:],
        response_ids=sub.response_ids[:, :resp_len],
        response_mask=sub.response_mask[:, :resp_len],
        truncated=sub.truncated,
        logprobs=None if sub.logprobs is None else sub.logprobs[:, :resp_len],
    )


def cut_by_tokens(
    rows: Tensor,
    prompt_len: Tensor,
    response_len: Tensor,
    budget: int,
    size: int | None = None,
    longest_first: bool = True,
) -> list[Tensor]:
    """``rows`` cut into pieces of at most ``budget`` padded tokens — rows × (longest prompt + longest
    response) of the piece, as :func:`_select_rows` trims it — and at most ``size`` rows; a row over the
    budget alone. Greedy, taking the rows longest first (prompt + response; ties in ``rows``' order) so
    that a piece holds rows of like length and pads less, or in ``rows``' order (``longest_first``
    false, the rule before; ``benchmarks/micro_batch_packing.py`` compares the two).
    ``prompt_len``/``response_len``: every row's lengths, indexed by the values of ``rows``."""
    size = size or len(rows)
    if longest_first:
        rows = rows[torch.sort(prompt_len[rows] + response_len[rows], descending=True, stable=True).indices]
    pieces: list[Tensor] = []
    start, longest_p, longest_r = 0, 0, 0
    for i, row in enumerate(rows.tolist()):
        p, r = max(longest_p, int(prompt_len[row])), max(longest_r, int(response_len[row]))
        if i > start and ((i + 1 - start) * (p + r) > budget or i - start >= size):
            pieces.append(rows[start:i])
            start, p, r = i, int(prompt_len[row]), int(response_len[row])
        longest_p, longest_r = p, r
    pieces.append(rows[start:])
    return pieces


# --------------------------------------------------------------------------------------------- metrics


#: The prefix of the controller's own metrics in ``metrics.csv`` and the loggers (``controller/alpha``...).


class _Ticks(IterableDataset):
    """An endless stream of dummy batches: each ``training_step`` draws its own prompts."""

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, whole or not at all: ``torch.save`` streams into a hidden temp file
    beside the target, flushed to disk and renamed over it (:func:`~entropyctl.trainer.run_dir.write_atomic`);
    a kill or a full disk leaves the previous checkpoint as it was and no temp file. (Lightning's own
    writer first holds the whole checkpoint in a bytes buffer, then writes a temp file in ``$TMPDIR`` and
    moves it: from another file system that move copies into the target, so a kill during it left a
    truncated ``last.ckpt``.) Reading is Lightning's, with ``weights_only`` as the trainer asks."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, lambda f: torch.save(checkpoint, f))


class RLVRCheckpoint(pl.Callback):
    """Saves ``step-NNNNNN.ckpt`` every ``every`` RLVR steps (0: never) and ``last.ckpt`` at those steps and
    at the final step. Checkpoints carry the controller state and the RLVR step (``RLVRModule``).

    ``stop`` (a :class:`~entropyctl.trainer.run_dir.StopSignals`): SIGTERM/SIGINT during training let the
    step in progress finish; then ``last.ckpt`` is written (every rank agrees on the step: one small
    collective when several processes run) and :class:`~entropyctl.trainer.run_dir.RunStopped` is raised.

    ``keep`` (``trainer.keep_checkpoints``): after each periodic save, rank 0 deletes the step checkpoints
    of earlier steps beyond the ``keep`` most recent (the one just written counts). ``last.ckpt`` and any
    step checkpoint of a *later* step (left by an abandoned continuation of this run) are never touched.
    """

    def __init__(
        self,
        dirpath: str | Path,
        every: int,
        total_steps: int,
        *,
        save_last: bool = True,
        keep: int | None = None,
        stop: StopSignals | None = None,
    ) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be None or >= 1, got {keep}")
        self.dirpath = Path(dirpath)
        self.every = int(every)
        self.total_steps = int(total_steps)
        self.save_last = save_last
        self.keep = keep
        self.stop = stop

    def _prune(self, step: int) -> None:
        """Delete the step checkpoints of steps before ``step`` beyond the ``keep - 1`` most recent."""
        if self.keep is None:
            return
        earlier = [(k, path) for k, path in step_checkpoints(self.dirpath) if k < step]
        for _, path in sorted(earlier, reverse=True)[self.keep - 1 :]:
            path.unlink(missing_ok=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stop is not None:
            # Lightning registered its own SIGTERM handler when fit began; ours decides (and tells
            # the other processes: Lightning's launcher forwards the signal to them).
            launcher = trainer.strategy.launcher
            if trainer.global_rank == 0 and launcher is not None and hasattr(launcher, "kill"):
                self.stop.forward = launcher.kill
            self.stop.install()
            self.stop.graceful = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stop is not None:
            self.stop.graceful = False  # the evaluation after the last step: a signal stops it at once
            if self.stop.requested is not None:  # asked during the last step: every step is saved
                raise RunStopped(self.stop.requested)

    def _stop_signal(self, trainer: pl.Trainer) -> int | None:
        signum = self.stop.requested if self.stop is not None else None
        if trainer.world_size > 1:  # every rank must stop after the same step
            flag = torch.tensor([float(signum or 0)], device=trainer.strategy.root_device)
            total = trainer.strategy.reduce(flag, reduce_op="sum")
            if float(total.max()) > 0 and signum is None:
                signum = 15
        return signum

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.stop is not None:  # the step ended in time: its checkpoints are written without a deadline
            self.stop.saving = True  # a signal during the saves below starts no grace timer either
            self.stop.cancel_grace()
        step = int(getattr(pl_module, "rlvr_step", 0))
        periodic = self.every > 0 and step % self.every == 0
        final = self.save_last and step >= self.total_steps
        try:
            if periodic:
                trainer.save_checkpoint(str(self.dirpath / f"step-{step:06d}.ckpt"), weights_only=False)
                if trainer.is_global_zero:
                    self._prune(step)
            if periodic or final:
                trainer.save_checkpoint(str(self.dirpath / "last.ckpt"), weights_only=False)
        finally:
            if self.stop is not None:
                self.stop.saving = False
        signum = self._stop_signal(trainer) if self.stop is not None else None
        if signum is not None and self.stop is not None:
            # the agreed signal, on every rank: at the last step on_train_end stops them all (a rank
            # that got none would otherwise go on into the evaluation's collectives, alone)
            self.stop.requested = self.stop.requested or signum
        if signum is not None and step < self.total_steps:
            if not (periodic or final):
                trainer.save_checkpoint(str(self.dirpath / "last.ckpt"), weights_only=False)
            raise RunStopped(signum)


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RLVRProgress(pl.Callback):
    """What the user sees while training: ``step k/N`` with entropy, α, H*, reward and accuracy.

    On a terminal one line is redrawn in place (at most 100 columns); when the output is a file, one line
    every ``every`` steps (default: ~10 lines per run) and at the last step. At the end, one line on what
    the controller did (:func:`controller_story`). Rank 0 only; replaces Lightning's epoch-based bar.
    """

    WIDTH = 100

    def __init__(
        self, total_steps: int, every: int | None = None, stream: Any = None, tty: bool | None = None
    ):
        import sys

        self.total = int(total_steps)
        self.every = int(every) if every else max(1, self.total // 10)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.rows: list[dict[str, float]] = []
        self.started = time.perf_counter()
        self.first_step = 0  # the run's step before this process's first (a resume's checkpoint step)
        self._drawn = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()
        self.first_step = int(getattr(pl_module, "rlvr_step", 0))

    def line(self, row: dict[str, float]) -> str:
        step = int(row["step"])
        done = step - self.first_step
        per_step = (time.perf_counter() - self.started) / max(1, done)
        target = row.get("target_entropy", math.nan)
        parts = [
            f"step {step}/{self.total}",
            f"H {row.get('entropy', math.nan):.3f}",
            *([f"H* {target:.3f}"] if math.isfinite(target) else []),  # fixed, clip_higher: no target
            f"α {row.get('alpha', math.nan):.3g}",
            f"reward {row.get('reward', math.nan):.3f}",
            f"acc {row.get('accuracy', math.nan):.3f}",
            f"{per_step:.2f}s/step",
            f"ETA {_fmt_seconds(per_step * (self.total - step))}",
        ]
        return "  ".join(parts)[: self.WIDTH - 1]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank != 0:
            return
        row = dict(getattr(pl_module, "last_metrics", {}) or {})
        if not row or (self.rows and self.rows[-1]["step"] == row["step"]):
            return  # several optimizer steps per RLVR step: report each RLVR step once
        self.rows.append({k: float(v) for k, v in row.items() if isinstance(v, (int, float))})
        step = int(row["step"])
        if self.tty:
            self.stream.write("\r" + self.line(self.rows[-1]).ljust(self.WIDTH - 1))
            self._drawn = True
        elif step % self.every == 0 or step >= self.total:
            self.stream.write("[entropyctl] " + self.line(self.rows[-1]) + "\n")
        self.stream.flush()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        if self._drawn:
            self.stream.write("\n")
        story = controller_story(self._earlier_rows(pl_module) + self.rows)
        if story:
            self.stream.write(f"[entropyctl] {story}\n")
        self.stream.flush()

    def _earlier_rows(self, pl_module: pl.LightningModule) -> list[dict[str, float]]:
        """A resumed run's rows before this process's first step, from its metrics.csv: the end-of-run
        line tells the whole run, as the band line after it does (none without a run directory)."""
        run_dir = getattr(pl_module, "run_dir", None)
        if not self.first_step or run_dir is None or not (Path(run_dir) / "metrics.csv").exists():
            return []
        columns = read_metrics(Path(run_dir) / "metrics.csv")
        rows = [
            {name: float(values[i]) for name, values in columns.items()} for i in range(len(columns["step"]))
        ]
        return [row for row in rows if row["step"] <= self.first_step]


def controller_story(rows: Sequence[dict[str, float]]) -> str:
    """One sentence on what the controller did over ``rows`` (metrics.csv rows of this run)."""
    if not rows:
        return ""
    n = len(rows)
    alphas = [r.get("alpha", math.nan) for r in rows]
    targets = [r.get("target_entropy", math.nan) for r in rows]
    entropies = [r.get("entropy", math.nan) for r in rows]
    first_h, last_h = entropies[0], entropies[-1]
    finite_targets = [t for t in targets if math.isfinite(t)]
    zero = sum(1 for a in alphas if a == 0)
    if not finite_targets:  # fixed / clip_higher: no target
        values = sorted({round(a, 6) for a in alphas if math.isfinite(a)})
        alpha_text = (
            f"α = {values[0]:g} throughout" if len(values) == 1 else f"α in [{values[0]:g}, {values[-1]:g}]"
        )
        return f"{alpha_text} (no entropy target); entropy {first_h:.3f} -> {last_h:.3f} over {n} steps"
    target = finite_targets[-1]
    above = sum(1 for h, t in zip(entropies, targets, strict=True) if math.isfinite(t) and h > t)
    if zero == n:
        return (
            f"α was 0 on {zero}/{n} steps: entropy stayed above H* = {target:.3g} "
            f"({first_h:.3f} -> {last_h:.3f}), the bonus never engaged"
            if above == sum(1 for t in targets if math.isfinite(t))
            else f"α was 0 on {zero}/{n} steps (H* = {target:.3g}; entropy {first_h:.3f} -> {last_h:.3f})"
        )
    finite_alphas = [a for a in alphas if math.isfinite(a)]
    return (
        f"α was 0 on {zero}/{n} steps, up to {max(finite_alphas):.3g} (last {alphas[-1]:.3g}); entropy "
        f"{first_h:.3f} -> {last_h:.3f}, above H* = {target:.3g} on {above}/{n} steps"
        + _bonus_note(rows)
        + _reach_note(rows)
    )


#: below this share of α reaching the rollouts' tokens, the end-of-run line says so
REACH_NOTE_BELOW = 0.5


def _bonus_note(rows: Sequence[dict[str, float]]) -> str:
    """The mean coefficient the tokens got (``coef_mean``, 0 on a skipped step) over the run, and
    over its first and last quarter: α's range alone does not say how much bonus a run had, nor when."""
    acted = [coefficient_acted(row) for row in rows]
    if not acted or not all(math.isfinite(c) for c in acted):
        return ""
    note = f"; mean bonus on the tokens {sum(acted) / len(acted):.2g}"
    quarter = len(acted) // 4
    if quarter >= 2:
        first, last = acted[:quarter], acted[-quarter:]
        note += f" (first quarter {sum(first) / quarter:.2g}, last {sum(last) / quarter:.2g})"
    return note


def _reach_note(rows: Sequence[dict[str, float]]) -> str:
    """How much of α the tokens got: sum of ``coef_mean`` over the α each step held (a row's
    ``alpha`` is the one the next step holds), told only when it is under :data:`REACH_NOTE_BELOW`
    — an allocation that gives most prompts no bonus (``threshold`` on a task the policy solves),
    steps skipped for want of signal, or ``update.apply``'s gate shut above H*, while α keeps moving
    on the global entropy."""
    pairs = [
        (coefficient_acted(row), float(previous.get("alpha", math.nan)))
        for previous, row in zip(rows[:-1], rows[1:], strict=True)
    ]
    pairs = [(c, a) for c, a in pairs if math.isfinite(c) and math.isfinite(a) and a > 0]
    if not pairs:
        return ""
    reach = sum(c for c, _ in pairs) / sum(a for _, a in pairs)
    if reach >= REACH_NOTE_BELOW:
        return ""
    return f"; the rollouts' tokens got {reach:.0%} of α (the allocation, skipped steps or update.apply's gate withheld the rest)"


def lr_factor(warmup: int, schedule: str, min_ratio: float, total: int) -> Callable[[int], float]:
    """The lr of optimizer step ``s`` (0-based) as a fraction of ``optim.lr``: a linear warm-up over
    ``warmup`` steps ((s + 1) / warmup), then 1 (``constant``), or a decay from 1 at the end of the
    warm-up to ``min_ratio`` at the last step ``total − 1`` (``linear``; ``cosine``: half a cosine)."""

    def factor(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - 1 - warmup))
        shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_ratio + (1.0 - min_ratio) * shape

    return factor


class _Frozen:
    """Holds a frozen reference policy without registering it as a submodule (no DDP, no checkpoint)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module


@torch.no_grad()
def mix_into_reference(reference: torch.nn.Module, policy: torch.nn.Module, mix: float) -> None:
    """π_ref ← (1 − mix)·π_ref + mix·π, parameter by parameter (``algorithm.ref_sync_steps``; TRL's
    sync_ref_model). The two hold the same parameters by name: the reference is a deep copy."""
    policy_params = dict(policy.named_parameters())
    for name, ref in reference.named_parameters():
        source = policy_params[name].detach().to(device=ref.device, dtype=ref.dtype)
        if mix == 1.0:
            ref.copy_(source)
        else:
            ref.mul_(1.0 - mix).add_(source, alpha=mix)


# --------------------------------------------------------------------------------------------- the module


@dataclass
class _Micro:
    """One forward/backward of a mini-batch (some of its rows, by ``algorithm.micro_batch_size`` and
    ``micro_batch_tokens``; all of them by default)."""

    rows: Tensor  # its rows of the step's completions
    comp: Completions  # those rows, re-padded, on the device
    old: Tensor | None  # log-probs before the first update (None: the current ones, ρ = 1)
    ref: Tensor | None  # the reference policy's log-probs (KL penalty), or None


@dataclass
class _Cut:
    """A step's mini-batches (a seeded shuffle of its rows, ``rows``) and each one's micro-batches
    (``pieces``, :meth:`RLVRModule._micro_pieces_all`)."""

    rows: list[Tensor]
    pieces: list[list[Tensor]]


@dataclass
class _KLPass:
    """The KL in the reward's pass over a step's responses, before its first update: each response's
    Σ_t (log π_old − log π_ref) (``sums``, ``[P·G]`` float64 on the CPU), read over the update's own
    mini-batches (``rows``) and micro-batches (``micro``: each with π_old's log-probs as ``old`` and
    π_ref's as ``ref``), which the update reuses instead of re-padding the rows and a second forward of
    either model — the same forwards of the same micro-batches, so the same numbers to the bit."""

    sums: Tensor
    rows: list[Tensor]
    micro: list[list[_Micro]]


@dataclass
class _MiniBatches:
    micro: list[list[_Micro]]  # each mini-batch's micro-batches, in row order
    global_tokens: Tensor  # [M] each mini-batch's token count summed over ranks
    global_seqs: Tensor  # [M] each mini-batch's count of responses in the loss, summed over ranks


@dataclass
class _TokenBatch:
    """Per-token inputs of the loss for one mini-batch."""

    adv: Tensor
    coef: Tensor
    mask: Tensor
    old: Tensor
    ref: Tensor | None
    action: TokenAction | None = None  # the controller's per-token action (token-level controllers)
    loss_weight: Tensor | None = None  # u of ops.losses (algorithm.loss_agg other than token-mean)


class RLVRModule(pl.LightningModule):
    """GRPO/DAPO with an entropy controller; manual optimization, one RLVR step per ``training_step``.

    policy: a ``transformers`` causal LM; tokenizer: its tokenizer (pad token set); engine: a
    :class:`RolloutEngine` sampling from ``policy``; reward: ``(completions, answers) -> rewards`` with
    ``metrics()``/``reset_metrics()``; sampler: the training prompts; controller: any registered controller;
    eval_problems: the held-out split for pass@k; run_dir: where ``metrics.csv`` is written (None: nowhere).
    """

    #: the run's segment its checkpoints record (0: the first; n: after the n-th resume; set by trainer.run)
    segment: int = 0
    #: the digest of the policy's weights as the run started (trainer.run.weights_digest; checkpoints record it)
    initial_weights: str | None = None

    def __init__(
        self,
        config: RunConfig,
        policy: torch.nn.Module,
        tokenizer: Any,
        engine: RolloutEngine,
        reward: Any,
        sampler: PromptSampler,
        controller: EntropyController,
        eval_problems: Sequence[Any] = (),
        run_dir: str | Path | None = None,
        encode_prompt: Callable[[str], list[int]] | None = None,
        shaping_rewards: Sequence[Any] = (),
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.config = config
        self.policy = policy
        self.tokenizer = tokenizer
        self.engine = engine
        self.reward = reward
        #: reward.shaping's rewards, in its order (each called like ``reward``); weighted into the shaped reward
        self.shaping_rewards = list(shaping_rewards)
        if len(self.shaping_rewards) != len(config.reward.shaping):
            raise ValueError(
                f"RLVRModule: {len(self.shaping_rewards)} shaping rewards for the config's "
                f"{len(config.reward.shaping)} reward.shaping entries"
            )
        self.sampler = sampler
        self.controller = controller
        self.eval_problems = list(eval_problems)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.encode_prompt = encode_prompt or (lambda text: list(tokenizer(text)["input_ids"]))
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.levels = list(sampler.levels)
        self.rlvr_step = 0  # completed RLVR steps (global_step counts optimizer steps)
        self._resumed = False  # loaded from a checkpoint (on_load_checkpoint)
        #: the config + data fingerprint saved in checkpoints (set by run_training; plain dicts)
        self.run_fingerprint: dict[str, Any] | None = None
        self.eval_results: dict[str, Any] = {}
        self.eval_seconds = 0.0
        self.last_metrics: dict[str, float] = {}
        #: this rank's own per-step numbers before any collective (checks of the multi-process path)
        self.local_history: list[dict[str, Any]] = []
        self._micro_cuts: list[dict[str, list[int]]] = []  # this step's (_micro_pieces_all: cut, run)
        self.kl_reward_beta = float(config.algorithm.kl_reward_coef)  # the step's β_r (_adapt_kl_reward)
        self._reference: _Frozen | None = None
        #: a LoRA run's KL reference is its base model: the policy with its adapters off (no copy)
        a = config.algorithm
        needs_reference = a.kl_coef > 0 or a.kl_reward_coef > 0
        self._reference_is_base = needs_reference and config.model.lora is not None
        self._grad_norm = 0.0  # the last optimizer step's gradient norm (on_before_optimizer_step)
        # an optimizer step with gradients since the engine's last sync: the engine must load the weights
        # whatever its own change check says (a fused AdamW step leaves the tensors' version counters as
        # they were, which that check reads)
        self._stepped = False
        if needs_reference and not self._reference_is_base:
            import copy

            reference = copy.deepcopy(policy).eval()
            for p in reference.parameters():
                p.requires_grad_(False)
            self._reference = _Frozen(reference)
        from entropyctl.models.forward import check_head, enable_gradient_checkpointing, supports_fused_head

        check_head(policy)  # type: ignore[arg-type]
        if config.model.gradient_checkpointing:  # after the reference's copy: it never runs backward
            enable_gradient_checkpointing(policy)  # type: ignore[arg-type]
        self.use_fused = config.algorithm.fused and supports_fused_head(policy)  # type: ignore[arg-type]
        #: the controller's metric keys before the first step fix its ``controller/<key>`` columns
        self.controller_metric_keys = [str(k) for k in controller.metrics()]
        columns = metric_columns(self.levels, self.controller_metric_keys, config.reward.shaping_labels())
        self.metrics_writer = MetricsWriter(self.run_dir / "metrics.csv", columns) if self.run_dir else None
        # made whenever there is a run directory: a resume drops a file's rows past its checkpoint even when
        # the resumed run writes none
        self.completions_writer = (
            CompletionsWriter(self.run_dir / "completions.jsonl") if self.run_dir else None
        )

    # ----------------------------------------------------------------------------- Lightning plumbing
    def configure_optimizers(self) -> Any:
        o = self.config.optim
        opt = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad],
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(), batch_size=None, num_workers=0)

    def _lr_factor(self) -> Callable[[int], float]:
        """The schedule's factor of ``optim.lr`` at an optimizer step, over the run's optimizer steps."""
        o = self.config.optim
        total = self.config.trainer.steps * self.optimizer_steps_per_rlvr_step
        return lr_factor(o.warmup_steps, o.schedule, o.min_lr_ratio, total)

    @property
    def optimizer_steps_per_rlvr_step(self) -> int:
        return self.config.algorithm.updates_per_batch

    def _world(self) -> tuple[int, int]:
        trainer = self._trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _reducer(self) -> Any:
        trainer = self._trainer
        return None if trainer is None or trainer.world_size == 1 else trainer.strategy

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["entropy_controller"] = self.controller.state_dict()
        if self.run_fingerprint is not None:  # compared on resume (entropyctl.trainer.run_dir)
            checkpoint["run_fingerprint"] = self.run_fingerprint
        checkpoint["rlvr"] = {
            "step": self.rlvr_step,
            "sampler": self.sampler.state_dict(),
            "eval_results": self.eval_results,
            "kl_reward_coef": self.kl_reward_beta,
            "segment": self.segment,
            "initial_weights": self.initial_weights,
        }
        if self.config.algorithm.ref_sync_steps is not None and self._reference is not None:
            checkpoint["reference"] = self._reference.module.state_dict()  # moved by the syncs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "entropy_controller" not in checkpoint:
            raise KeyError("checkpoint has no 'entropy_controller' entry: it was not written by RLVRModule")
        self.controller.load_state_dict(checkpoint["entropy_controller"])
        state = checkpoint.get("rlvr", {})
        self.rlvr_step = int(state.get("step", 0))
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])
        self.eval_results = dict(state.get("eval_results", {}))
        moved = checkpoint.get("reference")  # the reference where algorithm.ref_sync_steps moved it
        if moved is not None and self._reference is not None:
            self._reference.module.load_state_dict(moved)
        if self.config.algorithm.kl_reward_target is not None and "kl_reward_coef" in state:
            self.kl_reward_beta = float(state["kl_reward_coef"])  # the adaptive β_r where it was
        self._resumed = True  # the optimizer's settings are the config's once Lightning restored it

    @property
    def has_reference_copy(self) -> bool:
        """Whether the KL reference is a frozen copy of the initial policy (not a LoRA run's base model)."""
        return self._reference is not None

    def _optim_settings_over(self) -> None:
        """A resumed run's optimizer and scheduler (restored from the checkpoint by then, under every
        strategy) take the config's ``optim`` settings — lr and its schedule, weight decay, betas, eps: a
        resume that changes them (``--allow-resume-changes``) runs with them, as its record says.
        Unchanged settings give the same values (the rate is base · factor(step), as the scheduler
        computes it)."""
        o = self.config.optim
        factor = self._lr_factor()
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [o.lr for _ in scheduler.base_lrs]
            step = int(scheduler.last_epoch)
            for group in scheduler.optimizer.param_groups:
                group.update(lr=o.lr * factor(step), initial_lr=o.lr, weight_decay=o.weight_decay)
                group.update(betas=tuple(o.betas), eps=o.eps)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]

    def on_fit_start(self) -> None:
        # The reference policy is hidden from nn.Module (no DDP, no checkpoint), so Lightning's device
        # move and precision conversion (bf16-true, 16-true) skip it: give it the policy's device and
        # floating dtype here, after both. (Left on the CPU, a GPU run would compute every reference
        # log-prob on the CPU, or fail on a device mismatch on the unfused path.)
        if self._reference is not None:
            dtype = next((p.dtype for p in self.policy.parameters() if p.is_floating_point()), None)
            self._reference.module.to(device=self.device, dtype=dtype)

    def on_train_start(self) -> None:
        r = self.config.rollout
        responses = r.prompts_per_step * r.group_size * self._world()[1]
        problem = kl_horizon_problem(self.config.algorithm, responses, "all processes")
        if problem is not None:
            raise ValueError(problem)
        if self._resumed:
            self._optim_settings_over()
        rank, _ = self._world()
        if rank == 0 and self.metrics_writer is not None:
            self.metrics_writer.truncate_after(self.rlvr_step)
        if rank == 0 and self.completions_writer is not None:
            self.completions_writer.truncate_after(self.rlvr_step)
        if self.config.eval.before and "before" not in self.eval_results and self.rlvr_step == 0:
            self.eval_results["before"] = self.evaluate_heldout("before")
        # a continuation of a run whose last step was a periodic evaluation's: that one was left to the
        # evaluation after training, which no checkpoint holds; made now (the same weights and seeds),
        # so the continued run's evaluations are the uninterrupted run's
        e, step = self.config.eval, self.rlvr_step
        due = e.every and 0 < step < self.config.trainer.steps and step % e.every == 0
        if due and f"step_{step}" not in self.eval_results:
            self.eval_results[f"step_{step}"] = self.evaluate_heldout(f"step_{step}")

    def on_train_end(self) -> None:
        if self.config.eval.after:
            self.eval_results["after"] = self.evaluate_heldout("after")

    # ----------------------------------------------------------------------------- one RLVR step
    def _sampling(self, seed: int, *, eval_mode: bool = False) -> SamplingSettings:
        r = self.config.rollout
        if eval_mode:
            return SamplingSettings(**self.config.eval_sampling(), seed=seed)
        return SamplingSettings(
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            max_new_tokens=r.max_new_tokens,
            seed=seed,
            # the engine's own log-probs of the sampled tokens: the rollout correction's q
            return_logprobs=self.config.algorithm.rollout_correction is not None,
        )

    def _decode(self, comp: Completions) -> list[str]:
        decode = getattr(self.engine, "decode", None)
        if decode is not None:
            return list(decode(comp))
        return decode_responses(self.tokenizer, comp)

    def _rollout(
        self, problems: Sequence[Any], seed: int, timers: dict[str, float]
    ) -> tuple[Completions, Tensor, Tensor | None]:
        """G completions per problem, their rewards ``[P, G]`` (the verifier's, unshaped) and each shaping
        reward's scores ``[P, G, K]`` (None without ``reward.shaping``)."""
        G = self.config.rollout.group_size
        t0 = time.perf_counter()
        comp = self.engine.generate([self.encode_prompt(p.prompt) for p in problems], G, self._sampling(seed))
        texts = self._decode(comp)
        t1 = time.perf_counter()
        rewards = torch.tensor(call_reward(self.reward, texts, problems, G), dtype=torch.float32)
        rewards = rewards.reshape(len(problems), G)
        shaping = None
        if self.shaping_rewards:
            scores = [
                torch.tensor(call_reward(r, texts, problems, G), dtype=torch.float32)
                for r in self.shaping_rewards
            ]
            shaping = torch.stack(scores, dim=-1).reshape(len(problems), G, len(scores))
            if not bool(torch.isfinite(shaping).all()):
                labels = self.config.reward.shaping_labels()
                bad = [labels[k] for k in range(len(scores)) if not bool(torch.isfinite(scores[k]).all())]
                raise ValueError(f"reward.shaping: {', '.join(bad)} returned a NaN or infinite score")
        timers["rollout"] += t1 - t0
        timers["reward"] += time.perf_counter() - t1
        return comp, rewards, shaping

    def collect(self, step: int, rank: int, timers: dict[str, float]) -> Collected:
        """collect: this rank's P groups: rollouts, rewards, and (dynamic sampling) refills of all-equal
        groups."""
        cfg = self.config.rollout
        P, G = cfg.prompts_per_step, cfg.group_size
        # (problem, completions, row of group, rewards[G], shaping scores [G, K] or None)
        kept: list[tuple[Any, Completions, int, Tensor, Tensor | None]] = []
        spare: list[tuple[Any, Completions, int, Tensor, Tensor | None]] = []
        weights = [s.weight for s in self.config.reward.shaping]
        dropped = 0
        attempts = 1 + (cfg.max_refills if cfg.dynamic_sampling else 0)
        for attempt in range(attempts):
            need = P - len(kept)
            problems = self.sampler.sample(
                P if attempt == 0 else need, step=step, rank=rank, attempt=attempt, world=self._world()[1]
            )
            comp, rewards, shaping = self._rollout(
                problems, derive_seed("rollout", self.config.seed, rank, step, attempt), timers
            )
            # the all-equal test of dynamic sampling reads the reward the advantages come from
            combined = shaped_rewards(rewards, shaping, weights, comp.response_mask.sum(1), cfg)
            for i, problem in enumerate(problems):
                group = (problem, comp, i, rewards[i], None if shaping is None else shaping[i])
                if cfg.dynamic_sampling and bool(combined[i].max() == combined[i].min()):
                    dropped += 1
                    spare.append(group)
                else:
                    kept.append(group)
            if len(kept) >= P:
                break
        kept = kept[:P]
        fillers = 0
        while len(kept) < P:  # not enough informative groups: top up with dropped ones (plain GRPO for them)
            kept.append(spare.pop(0))
            fillers += 1
        parts = [(comp, range(i * G, (i + 1) * G)) for _, comp, i, _, _ in kept]
        return Collected(
            problems=[k[0] for k in kept],
            completions=merge_completions(parts, self.pad_id),
            rewards=torch.stack([k[3] for k in kept]),
            dropped=dropped,
            fillers=fillers,
            shaping=torch.stack([k[4] for k in kept]) if self.shaping_rewards else None,  # type: ignore[misc]
        )

    def _forward_tokens(self, model: torch.nn.Module, comp: Completions, grad: bool) -> TokenForward:
        """Hidden states (fused path) or logits (reference path) of the response tokens of ``comp``."""
        from entropyctl.models.forward import response_hidden_states, response_logits

        with torch.set_grad_enabled(grad):
            if self.use_fused:
                h = response_hidden_states(model, comp)  # type: ignore[arg-type]
                return TokenForward(
                    targets=h.targets,
                    seq_index=h.seq_index,
                    hidden=h.hidden,
                    weight=h.lm_head_weight,
                    bias=h.lm_head_bias,
                )
            lg = response_logits(model, comp)  # type: ignore[arg-type]
            return TokenForward(targets=lg.targets, seq_index=lg.seq_index, logits=lg.logits)

    def _logprob_no_grad(self, fwd: TokenForward) -> Tensor:
        return self._logprob_entropy_no_grad(fwd)[0]

    def _logprob_entropy_no_grad(self, fwd: TokenForward) -> tuple[Tensor, Tensor]:
        """Per-token (log-prob, entropy) of the current policy, no grad (fused: no [N, V] tensor)."""
        T = self.config.rollout.temperature
        with torch.no_grad():
            if fwd.hidden is not None:
                assert fwd.weight is not None
                lp, ent = fused_logprob_entropy(
                    fwd.hidden.detach(),
                    fwd.weight.detach(),
                    fwd.targets,
                    temperature=T,
                    chunk_size=self.config.algorithm.chunk_size,
                    bias=None if fwd.bias is None else fwd.bias.detach(),
                )
            else:
                assert fwd.logits is not None
                lp, ent = token_logprob_entropy(fwd.logits.detach(), fwd.targets, temperature=T)
        return lp, ent

    def _token_action(
        self, current: tuple[Tensor, Tensor], tokens: _TokenBatch, step: int
    ) -> TokenAction | None:
        """The controller's token action for this optimizer step (its selection is over all ranks)."""
        rank, world = self._world()
        gather = (lambda t: self.all_gather(t)) if world > 1 else None  # [W, *t.shape], rank order
        collective = TokenCollective(rank, world, gather)  # type: ignore[arg-type]
        stats = TokenStatistics(current[0], tokens.old, current[1], tokens.adv, tokens.mask, step)
        return step_token_action(self.controller, stats, collective)

    def _correct_for_sampler(
        self, tokens: _TokenBatch, comp: Completions, seq: Tensor, updated: Updated | None
    ) -> None:
        """``algorithm.rollout_correction``: the importance weight of each token's policy-gradient term
        (π_train / π_sampler of its old log-prob and the engine's), multiplied into the token action's
        weight; the mismatch's sums added to ``updated`` (the first epoch's pass: every token once)."""
        rc = self.config.algorithm.rollout_correction
        assert rc is not None
        if comp.logprobs is None:
            raise RuntimeError(
                f"algorithm.rollout_correction: the {self.config.rollout.engine} engine returned no log-probs"
            )
        sampler = comp.logprobs.to(self.device)[comp.response_mask.to(self.device).bool()]
        keep = tokens.mask > 0  # the loss's tokens (not an overlong-masked or dropped response's)
        # a token outside the loss keeps q = p: weight 1, nothing measured
        q = torch.where(keep, sampler.to(tokens.old.dtype), tokens.old)
        out = sampler_correction(tokens.old, q, seq.to(self.device), rc.mode, rc.clip_min, rc.clip_max)
        weight = out.weight.to(tokens.old.dtype)  # ≤ clip_max (required by every correcting mode): finite
        action = tokens.action or TokenAction()
        tokens.action = TokenAction(
            weight=weight if action.weight is None else action.weight * weight,
            detach=action.detach,
            kl_coef=action.kl_coef,
        )
        if updated is not None:
            m = keep.to(torch.float64)
            parts = (m, out.kl * m, out.abs_diff * m, out.weight * m, out.bounded.to(torch.float64) * m)
            for key, value in zip(MISMATCH_SUMS, parts, strict=True):
                updated.mismatch[key] += float(value.sum())

    def _loss(self, fwd: TokenForward, tokens: _TokenBatch, plan: Plan, num_tokens: int) -> PolicyLossOutput:
        a = self.config.algorithm
        T = self.config.rollout.temperature
        ref = tokens.ref
        kl = a.kl_coef if ref is not None else 0.0
        seq = fwd.seq_index if a.importance_level == "sequence" else None  # GSPO: a response's ratio
        if fwd.hidden is not None:
            assert fwd.weight is not None
            return fused_policy_loss(
                fwd.hidden,
                fwd.weight,
                fwd.targets,
                tokens.old,
                tokens.adv,
                tokens.coef,
                tokens.mask,
                plan.clip_low,
                plan.clip_high,
                T,
                chunk_size=a.chunk_size,
                num_tokens=num_tokens,
                ref_logprob=ref,
                kl_coef=kl,
                bias=fwd.bias,
                token_action=tokens.action,
                loss_weight=tokens.loss_weight,
                seq_index=seq,
                dual_clip=a.dual_clip,
                kl_estimator=a.kl_estimator,
            )
        assert fwd.logits is not None
        logprob, entropy = token_logprob_entropy(fwd.logits, fwd.targets, temperature=T)
        return policy_loss(
            logprob,
            entropy,
            tokens.old,
            tokens.adv,
            tokens.coef,
            tokens.mask,
            plan.clip_low,
            plan.clip_high,
            num_tokens=num_tokens,
            ref_logprob=ref,
            kl_coef=kl,
            token_action=tokens.action,
            loss_weight=tokens.loss_weight,
            seq_index=seq,
            dual_clip=a.dual_clip,
            kl_estimator=a.kl_estimator,
        )

    def _loss_weight(self, comp: Completions, tok_rows: Tensor, tokens: float, seqs: float) -> Tensor | None:
        """u_t of ``algorithm.loss_agg`` for the tokens of one mini-batch (rows ``tok_rows`` of ``comp``,
        its global token and response counts): with the loss's 1/N, Σ m·u·x / N is GRPO's mean over
        responses of each response's token mean (N / (S·|o_i|)), Dr.GRPO's token sum over S·L
        (N / (S·L)) or verl's seq-mean-token-sum, the token sum over S (N / S); None for token-mean."""
        mode = self.config.algorithm.loss_agg
        if mode == "token-mean":
            return None
        S = max(seqs, 1.0)
        if mode == "seq-mean-token-mean":
            lengths = comp.response_mask.sum(1).to("cpu", torch.float64)[tok_rows].clamp_min(1.0)
            u = tokens / (S * lengths)
        else:  # the token sums over S (seq-mean-token-sum), over S·L (seq-mean-token-sum-norm)
            L = self.config.rollout.max_new_tokens if mode == "seq-mean-token-sum-norm" else 1
            u = torch.full((len(tok_rows),), tokens / (S * L), dtype=torch.float64)
        # the loss casts u to its own dtype: a float64 run keeps u exact (MPS has no float64)
        device = torch.device(self.device)
        return u.to(device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)

    def _cut(self, comp: Completions, step: int, rank: int) -> _Cut:
        """The step's mini-batches (a seeded shuffle) cut into micro-batches (:meth:`_micro_pieces_all`)."""
        cfg = self.config
        M = cfg.algorithm.mini_batches
        n = comp.response_ids.shape[0]
        generator = torch.Generator().manual_seed(derive_seed("minibatch", cfg.seed, rank, step) % 2**62)
        order = torch.randperm(n, generator=generator) if M > 1 else torch.arange(n)
        rows = list(torch.tensor_split(order, M))
        return _Cut(rows, self._micro_pieces_all(comp, rows))

    def _minibatches(
        self,
        comp: Completions,
        planned: Planned,
        step: int,
        rank: int,
        signal: bool = True,
        kl_pass: _KLPass | None = None,
    ) -> _MiniBatches:
        """The step's mini-batches and micro-batches (:meth:`_cut`; ``kl_pass``'s, when the KL in the
        reward has cut them), their GLOBAL token counts (one collective), and the old / reference
        log-probs before the first update (when needed: a step without ``signal`` updates nothing, so its
        old log-probs are the current ones), one micro-batch at a time — ``kl_pass``'s, when it read them."""
        cfg = self.config
        M = cfg.algorithm.mini_batches
        need_old = signal and cfg.algorithm.updates_per_batch > 1  # else the ratio is 1: no old log-probs
        need_ref = cfg.algorithm.kl_coef > 0
        if kl_pass is not None:  # its micro-batches, with the log-probs this update uses
            rows = kl_pass.rows
            micro = [
                [replace(p, old=p.old if need_old else None, ref=p.ref if need_ref else None) for p in parts]
                for parts in kl_pass.micro
            ]
        else:
            cut = self._cut(comp, step, rank)
            rows, micro = cut.rows, []
            for pieces in cut.pieces:
                parts = []
                for piece in pieces:
                    sub = _select_rows(comp, piece, self.pad_id).to(self.device)
                    old = (
                        self._logprob_no_grad(self._forward_tokens(self.policy, sub, grad=False))
                        if need_old
                        else None
                    )
                    parts.append(_Micro(piece, sub, old, self._reference_logprob(sub) if need_ref else None))
                micro.append(parts)
        local_tokens = torch.stack(
            [(comp.response_mask[r].sum(1).float() * planned.seq_mask[r]).sum() for r in rows]
        ).to(torch.float64)
        local_seqs = torch.stack([(planned.seq_mask[r] > 0).sum() for r in rows]).to(torch.float64)
        counts = all_reduce_sum(torch.cat([local_tokens, local_seqs]), self._reducer()).cpu()
        return _MiniBatches(micro, counts[:M], counts[M:])

    def _micro_pieces(self, comp: Completions, rows: Tensor) -> list[Tensor]:
        """``rows`` (a mini-batch) cut into micro-batches: at most ``algorithm.micro_batch_size`` rows (in
        the mini-batch's order) and, with ``algorithm.micro_batch_tokens``, by :func:`cut_by_tokens`
        (longest rows first). Neither set: ``rows`` whole."""
        a = self.config.algorithm
        size, budget = a.micro_batch_size or len(rows), a.micro_batch_tokens
        if budget is None:
            return [rows] if len(rows) <= size else list(torch.split(rows, size))
        return cut_by_tokens(rows, comp.prompt_mask.sum(1), comp.response_mask.sum(1), budget, size)

    def _micro_pieces_all(self, comp: Completions, rows: Sequence[Tensor]) -> list[list[Tensor]]:
        """:meth:`_micro_pieces` of each mini-batch of ``rows``, as many on every process: cut by tokens,
        one process's share may need more forwards than another's, and under FSDP every forward and
        backward is a collective, so each process splits its largest pieces until it has the most any
        process has (one collective, under DDP too; every process holds as many rows, so that count can
        be reached). The counts, as cut and as run, go to the step's ``local_history`` entry."""
        pieces = [self._micro_pieces(comp, r) for r in rows]
        rank, world = self._world()
        if world == 1 or self.config.algorithm.micro_batch_tokens is None:
            return pieces
        cut = [len(p) for p in pieces]
        counts = torch.zeros(world * len(rows), dtype=torch.float64)
        counts[rank * len(rows) : (rank + 1) * len(rows)] = torch.tensor(cut)
        most = all_reduce_sum(counts, self._reducer()).cpu().reshape(world, len(rows)).amax(0)
        for m, need in enumerate(most.long().tolist()):
            while len(pieces[m]) < need:
                largest = max(range(len(pieces[m])), key=lambda i: len(pieces[m][i]))
                if len(pieces[m][largest]) < 2:  # every row alone already (not reached: as many rows)
                    raise RuntimeError(f"cannot cut mini-batch {m} into {need} micro-batches")
                piece = pieces[m].pop(largest)
                half = len(piece) // 2
                pieces[m][largest:largest] = [piece[:half], piece[half:]]
        self._micro_cuts.append({"cut": cut, "run": [len(p) for p in pieces]})
        return pieces

    def _reference_logprob(self, comp: Completions) -> Tensor | None:
        """The KL reference's log-probs of ``comp``'s response tokens (None without a KL reference)."""
        if self._reference is not None:
            return self._logprob_no_grad(self._forward_tokens(self._reference.module, comp, grad=False))
        if self._reference_is_base:
            from entropyctl.models.lora import adapters_disabled

            with adapters_disabled(self.policy):
                return self._logprob_no_grad(self._forward_tokens(self.policy, comp, grad=False))
        return None

    def _kl_in_reward(self, comp: Completions, step: int, rank: int) -> _KLPass | None:
        """Each of this rank's responses' Σ_t (log π_old − log π_ref) over its tokens (k1), read one
        micro-batch of the update's own cut (:meth:`_cut`) at a time, with the per-token log-probs it read
        (:class:`_KLPass`); None when ``algorithm.kl_reward_coef`` is 0."""
        if self.config.algorithm.kl_reward_coef == 0:
            return None
        cut = self._cut(comp, step, rank)
        known = _KLPass(torch.zeros(comp.response_ids.shape[0], dtype=torch.float64), cut.rows, [])
        for pieces in cut.pieces:
            known.micro.append([])
            for rows in pieces:
                sub = _select_rows(comp, rows, self.pad_id).to(self.device)
                fwd = self._forward_tokens(self.policy, sub, grad=False)
                policy, ref = self._logprob_no_grad(fwd), self._reference_logprob(sub)
                assert ref is not None  # built whenever kl_reward_coef > 0
                known.micro[-1].append(_Micro(rows, sub, policy, ref))
                k1 = (policy.double() - ref.double()).cpu()
                known.sums.index_add_(0, rows[fwd.seq_index.to("cpu")], k1)
        return known

    def _backward(self, loss: Tensor, sync: bool) -> None:
        """Accumulate ``loss``'s gradient; ``sync`` false (a micro-batch before the last of an optimizer
        step) skips DDP's gradient all-reduce, which the last one's backward does for the sum."""
        _, world = self._world()
        block = None if sync else getattr(self.trainer.strategy, "block_backward_sync", None)
        with block() if block is not None else contextlib.nullcontext():
            self.manual_backward(loss * world)  # DDP averages over W ranks (module docstring)

    def _optimizer_step(self, opt: Any, sched: Any) -> float:
        """One optimizer step on the accumulated gradients; the global gradient norm before clipping,
        clipped or not (measured, and clipped, in ``on_before_optimizer_step``)."""
        self._grad_norm = 0.0
        opt.step()
        sched.step()
        self._stepped = True
        return self._grad_norm

    def _sync_engine(self) -> None:
        """The rollout engine samples from the current weights (forced after an optimizer step of ours)."""
        self.engine.sync_weights(self.policy, force=self._stepped)
        self._stepped = False

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """The gradient norm and the clip, taken where Lightning calls this: inside ``opt.step()``,
        after the precision plugin has unscaled the gradients. Under fp16 loss scaling
        (``16-mixed``) the gradients are still multiplied by the loss scale between backward and
        ``opt.step()``: a norm read there is ~the scale too large, and a clip there shrinks the real
        gradient by the scale. A skipped step has no gradients: norm 0, nothing clipped."""
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        if not grads:
            self._grad_norm = 0.0
            return
        self._grad_norm = float(torch.nn.utils.get_total_norm(grads))
        if self.config.optim.grad_clip is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.config.optim.grad_clip, gradient_clip_algorithm="norm"
            )

    def _skip_step(self, opt: Any, sched: Any) -> float:
        """An optimizer step that changes nothing (``algorithm.skip_no_signal``): no backward, every
        gradient None, so the optimizer leaves each weight and its moments as they are; the step is still
        counted (Lightning's global step, the lr schedule), so the run keeps its length. Returns 0.0, the
        ``grad_norm`` logged for such a step."""
        opt.zero_grad(set_to_none=True)
        opt.step()
        sched.step()
        return 0.0

    def has_signal(self, planned: Planned) -> bool:
        """Whether any response token on ANY process has a nonzero advantage (one collective); with the KL
        in the reward, a nonzero advantage before its penalty (the penalty alone is no signal)."""
        nonzero = planned.seq_adv != 0 if planned.seq_signal is None else planned.seq_signal
        local = float(bool((nonzero & (planned.seq_mask > 0)).any()))
        total = all_reduce_sum(torch.tensor([local], dtype=torch.float64), self._reducer())
        return bool(float(total.cpu()[0]) > 0)

    def _token_batch(
        self, planned: Planned, tok_rows: Tensor, old: Tensor, ref: Tensor | None
    ) -> _TokenBatch:
        """The loss's per-token inputs of the tokens whose rows of the step are ``tok_rows``."""
        return _TokenBatch(
            adv=planned.seq_adv[tok_rows].to(self.device),
            coef=planned.seq_coef[tok_rows].to(self.device),
            mask=planned.seq_mask[tok_rows].to(self.device),
            old=old,
            ref=ref,
        )

    def _micro_actions(
        self, parts: Sequence[_Micro], planned: Planned, step: int
    ) -> list[TokenAction | None]:
        """The controller's token action over a mini-batch of several micro-batches, from a no-grad pass
        over them (one micro-batch's activations at a time), cut back into the micro-batches' shares: the
        same selection as one pass over the whole mini-batch."""
        current, olds, rows = [], [], []
        for part in parts:
            fwd = self._forward_tokens(self.policy, part.comp, grad=False)
            lp, ent = self._logprob_entropy_no_grad(fwd)
            current.append((lp, ent))
            olds.append(lp if part.old is None else part.old)
            rows.append(part.rows[fwd.seq_index.to("cpu")])
        lp_all = torch.cat([c[0] for c in current])
        ent_all = torch.cat([c[1] for c in current])
        tokens = self._token_batch(planned, torch.cat(rows), torch.cat(olds), None)
        action = self._token_action((lp_all, ent_all), tokens, step)
        if action is None:
            return [None] * len(parts)
        bounds = torch.tensor([0] + [len(r) for r in rows]).cumsum(0).tolist()
        return [
            action.rows(torch.arange(a, b, device=lp_all.device))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    def update(
        self,
        comp: Completions,
        planned: Planned,
        step: int,
        rank: int,
        signal: bool = True,
        kl_pass: _KLPass | None = None,
    ) -> Updated:
        """update: PPO epochs x mini-batches of the clipped surrogate with the planned entropy term; with
        ``signal`` false (``algorithm.skip_no_signal`` and no advantage anywhere), one no-grad pass that
        reads the entropy, then as many optimizer steps as a step makes, each changing nothing (so that
        the run's optimizer-step count, which ends it, and the lr schedule keep their pace)."""
        E = self.config.algorithm.ppo_epochs
        mb = self._minibatches(comp, planned, step, rank, signal, kl_pass)
        # Each mini-batch's loss parts and clip fractions are normalised by ITS global token count N_m;
        # weighting them by N_m / Σ N_m (and 1/E) gives the token-weighted value over the step's global
        # batch, averaged over epochs (a plain sum over mini-batches would be ~M times too large). With a
        # per-response loss_agg the loss parts are means over responses: weighted by S_m / Σ S_m.
        token_weights = (mb.global_tokens / mb.global_tokens.sum().clamp_min(1.0)).tolist()
        by = mb.global_tokens if self.config.algorithm.loss_agg == "token-mean" else mb.global_seqs
        weights = (by / by.sum().clamp_min(1.0)).tolist()
        opt: Any = self.optimizers()  # one LightningOptimizer (configure_optimizers returns one)
        sched: Any = self.lr_schedulers()
        updated = Updated(stats=EntropyStats(self.levels), skipped=not signal)
        per_token = self.controller.acts_per_token()
        for epoch in range(E):
            for m, parts in enumerate(mb.micro):
                if not signal and epoch > 0:  # the first epoch read every token; nothing to step
                    updated.grad_norm = self._skip_step(opt, sched)
                    continue
                # a token action is chosen over the whole mini-batch (and all ranks): with several
                # micro-batches, from a no-grad pass over them first
                actions = self._micro_actions(parts, planned, step) if per_token and len(parts) > 1 else None
                if signal:
                    opt.zero_grad(set_to_none=True)
                for c, part in enumerate(parts):
                    fwd = self._forward_tokens(self.policy, part.comp, grad=signal)
                    seq = fwd.seq_index.to("cpu")  # each token's row of the micro-batch
                    tok_rows = part.rows[seq]
                    old, current = part.old, None
                    if per_token and actions is None:  # the token statistics: (log-prob, entropy) now
                        current = self._logprob_entropy_no_grad(fwd)
                    if old is None:  # one epoch, one mini-batch: old = current (ρ = 1), same numerics
                        old = self._logprob_no_grad(fwd) if current is None else current[0]
                    tokens = self._token_batch(planned, tok_rows, old, part.ref)
                    tokens.loss_weight = self._loss_weight(
                        part.comp, seq, float(mb.global_tokens[m]), float(mb.global_seqs[m])
                    )
                    if actions is not None:
                        tokens.action = actions[c]
                    elif current is not None:
                        tokens.action = self._token_action(current, tokens, step)
                    if self.config.algorithm.rollout_correction is not None:
                        self._correct_for_sampler(tokens, part.comp, seq, updated if epoch == 0 else None)
                    out = self._loss(fwd, tokens, planned.plan, int(round(float(mb.global_tokens[m]))))
                    if signal:
                        self._backward(out.loss, sync=c == len(parts) - 1)
                    if epoch == 0:  # every response token exactly once
                        level = planned.seq_level[tok_rows].to(self.device)
                        updated.stats.add(out.entropy, tokens.mask, bucket=level, coef=tokens.coef)
                        updated.entropy_sum += float((out.entropy.double() * tokens.mask.double()).sum())
                        updated.token_sum += float(tokens.mask.sum())
                    per = E if signal else 1  # a skipped step's parts: its one pass
                    values: tuple[Tensor, ...] = (out.clip_frac_low, out.clip_frac_high, out.loss.detach())
                    values += (out.pg_loss, out.entropy_loss, out.kl_loss, out.clip_frac_dual)  # LOSS_PARTS
                    # each part is normalised by the mini-batch's global counts: the micro-batches' sum
                    for key, value in zip(LOSS_PARTS, values, strict=True):
                        # the clip fractions are token shares whatever loss_agg averages the loss over
                        w = token_weights[m] if key in CLIP_PARTS else weights[m]
                        updated.sums[key] += float(value) * w / per
                if signal:
                    updated.grad_norm = self._optimizer_step(opt, sched)
                else:
                    updated.grad_norm = self._skip_step(opt, sched)
        updated.lr = float(sched.get_last_lr()[0])
        return updated

    def log_step(
        self,
        step: int,
        collected: Collected,
        scored: Scored,
        updated: Updated,
        reading: EntropyReading,
        timers: dict[str, float],
    ) -> dict[str, Any]:
        """log: the metrics row (local sums packed into ONE collective), written and logged (rank 0)."""
        rank, _ = self._world()
        reward_metrics = self.reward.metrics() if hasattr(self.reward, "metrics") else {}
        local = local_sums(collected, scored, updated, reward_metrics, self.levels)
        packed = all_reduce_sum(torch.tensor(local, dtype=torch.float64), self._reducer()).cpu().tolist()
        timers["step"] = time.perf_counter() - timers["start"]
        row = metrics_row(
            step,
            packed,
            reading,
            updated,
            self.controller.metrics(),
            self.levels,
            timers,
            self.config.reward.shaping_labels(),
        )
        # data.order: epochs: the passes over the training rows read by the end of this step (NaN: random)
        row["kl_reward_coef"] = self.kl_reward_beta if self.config.algorithm.kl_reward_coef > 0 else math.nan
        row["data_epoch"] = self.sampler.epoch_of(
            step, self.config.rollout.prompts_per_step, self._world()[1]
        )
        self.last_metrics = row
        self.local_history.append(
            {
                "step": step,
                "prompts": [p.prompt for p in collected.problems],
                "entropy_sum": updated.entropy_sum,
                "tokens": updated.token_sum,
                "global_entropy": reading.mean_entropy,
                "global_tokens": reading.tokens,
                "micro_batches": self._micro_cuts,
            }
        )
        self._micro_cuts = []
        if rank == 0 and self.metrics_writer is not None:
            self.metrics_writer.write(row)
        shown = {"reward", "entropy", "alpha"}
        has_logger = self._trainer is not None and self.trainer.logger is not None
        if has_logger:
            # "step" (the RLVR step, metrics.csv's) is the loggers' x-axis: Lightning takes a logged "step"
            # as the step for TensorBoard and W&B (else its count of optimizer steps, from 0)
            self.log_dict(
                {k: float(v) for k, v in row.items() if k not in shown},
                on_step=True,
                prog_bar=False,
                logger=True,
                rank_zero_only=True,
            )
        self.log_dict(
            {k: float(row[k]) for k in shown},
            on_step=True,
            prog_bar=True,
            logger=has_logger,
            rank_zero_only=True,
        )
        return row

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, StepResult]:
        """One RLVR step: collect → score → plan → update → observe → log. Callbacks receive the
        :class:`~entropyctl.trainer.phases.StepResult` as ``outputs["step"]``."""
        cfg = self.config
        rank, _ = self._world()
        step = self.rlvr_step + 1  # 1-based number of the step being made
        timers = {"start": time.perf_counter(), "sync": 0.0, "rollout": 0.0, "reward": 0.0, "update": 0.0}
        if hasattr(self.reward, "reset_metrics"):
            self.reward.reset_metrics()
        self._sync_engine()
        timers["sync"] = time.perf_counter() - timers["start"]
        collected = self.collect(step, rank, timers)
        kl_pass = self._kl_in_reward(collected.completions, step, rank)
        collected.kl_sums = None if kl_pass is None else kl_pass.sums
        scored = score(
            collected,
            cfg.rollout,
            cfg.algorithm.advantage_scale,
            baseline=cfg.algorithm.advantage_baseline,
            reduce=lambda t: all_reduce_sum(t, self._reducer()),
            shaping_weights=[s.weight for s in cfg.reward.shaping],
            kl_reward_coef=self.kl_reward_beta,
        )
        planned = plan_groups(self.controller, scored, step, mask_overlong=cfg.rollout.overlong == "mask")
        t_update = time.perf_counter()
        signal = self.has_signal(planned) if cfg.algorithm.skip_no_signal else True
        updated = self.update(collected.completions, planned, step, rank, signal=signal, kl_pass=kl_pass)
        timers["update"] = time.perf_counter() - t_update
        sync = cfg.algorithm.ref_sync_steps
        if sync is not None and step % sync == 0 and self._reference is not None:
            mix_into_reference(self._reference.module, self.policy, cfg.algorithm.ref_sync_mix)
        reading = observe(self.controller, updated.stats, self._reducer(), step)
        self.rlvr_step = step
        row = self.log_step(step, collected, scored, updated, reading, timers)
        self._adapt_kl_reward(row, collected.rewards.numel())
        every = cfg.trainer.completions_every
        if rank == 0 and self.completions_writer is not None and every and (step == 1 or step % every == 0):
            self.completions_writer.write(self.completion_rows(step, collected, scored))
        # at the last step the evaluation after training stands for it (when there is one)
        if cfg.eval.every and step % cfg.eval.every == 0 and (step < cfg.trainer.steps or not cfg.eval.after):
            self.eval_results[f"step_{step}"] = self.evaluate_heldout(f"step_{step}")
        return {"step": StepResult(step, collected, scored, planned, reading, row)}

    def _adapt_kl_reward(self, row: Mapping[str, Any], local_responses: int) -> None:
        """The adaptive β_r's step (``algorithm.kl_reward_target``) from the row's global reading: every
        process reads the same row, so β_r stays the same on all of them."""
        a = self.config.algorithm
        if a.kl_reward_target is None:
            return
        responses = local_responses * self._world()[1]
        self.kl_reward_beta = adapted_kl_coef(
            self.kl_reward_beta,
            float(row["kl_reward_token_mean"]),
            a.kl_reward_target,
            responses,
            a.kl_reward_horizon,
        )

    def completion_rows(self, step: int, collected: Collected, scored: Scored) -> list[dict[str, Any]]:
        """One ``completions.jsonl`` row per rollout of this rank's step (prompt-major)."""
        G = self.config.rollout.group_size
        texts = self._decode(collected.completions)
        rows = []
        for k, text in enumerate(texts):
            i, j = divmod(k, G)
            problem = collected.problems[i]
            row: dict[str, Any] = {
                "step": step,
                "group": i,
                "prompt": problem.prompt,
                "completion": text,
                "answer": problem.answer,
                "level": int(getattr(problem, "level", 0)),
                "reward": float(collected.rewards[i, j]),  # the verifier's
                "shaped_reward": float(scored.shaped[i, j]),  # what the advantage comes from
                "advantage": float(scored.advantages[i, j]),
                "length": int(scored.lengths[k]),
                "truncated": bool(scored.truncated[k]),
            }
            if collected.shaping is not None:
                for label, value in zip(
                    self.config.reward.shaping_labels(), collected.shaping[i, j], strict=True
                ):
                    row[SHAPING_PREFIX + label] = float(value)
            rows.append(row)
        return rows

    # ----------------------------------------------------------------------------- validation
    def sample_texts(self, problems: Sequence[Any], n: int, seed: int) -> list[list[str]]:
        """``n`` decoded completions per problem with the eval sampling settings."""
        comp = self.engine.generate(
            [self.encode_prompt(p.prompt) for p in problems], n, self._sampling(seed, eval_mode=True)
        )
        texts = self._decode(comp)
        return [texts[i * n : (i + 1) * n] for i in range(len(problems))]

    def evaluate_heldout(self, tag: str) -> dict[str, Any]:
        """pass@k on the held-out problems, split across ranks; the counts are summed (one collective)."""
        e = self.config.eval
        rank, world = self._world()
        problems = self.eval_problems
        if not problems:
            return {}
        started = time.perf_counter()
        mine = list(range(rank, len(problems), world))
        calls = [0]

        def sample_fn(batch: Sequence[Any], n: int) -> list[list[str]]:
            calls[0] += 1
            return self.sample_texts(batch, n, derive_seed("eval", self.config.seed, tag, rank, calls[0]))

        from entropyctl.trainer.fsdp import is_sharded

        share = [problems[i] for i in mine]
        if is_sharded(self.policy):  # each generate is a collective: every rank makes as many calls
            share += [problems[0]] * (-(-len(problems) // world) - len(mine))  # counts dropped below
        self._sync_engine()
        counts = count_correct(share, sample_fn, self.reward, n=e.n_samples, batch_size=e.batch_size)[
            : len(mine)
        ]
        full = torch.zeros(len(problems), dtype=torch.float64)
        full[mine] = torch.tensor(counts, dtype=torch.float64)
        full = all_reduce_sum(full, self._reducer()).cpu()
        outcomes = [
            ProblemOutcome(e.n_samples, int(round(float(c))), int(getattr(p, "level", 0)), eval_set_of(p))
            for p, c in zip(problems, full, strict=True)
        ]
        result = summarize_pass_at_k(outcomes, e.ks)
        result["seed"] = int(self.config.seed)
        self.eval_seconds += time.perf_counter() - started
        if rank == 0:
            keys = [k for k in result if k.startswith("pass@")]
            print(
                f"[entropyctl] eval {tag}: "
                + ", ".join(f"{k}={result[k]:.3f}" for k in keys)
                + f" (seed {self.config.seed}, {e.n_samples} samples x {len(problems)} problems)",
                flush=True,
            )
            for name, entry in result.get("by_set", {}).items():
                scores = ", ".join(f"{k}={entry[k]:.3f}" for k in keys)
                print(
                    f"[entropyctl] eval {tag} [{name}]: {scores} ({entry['n_problems']} problems)", flush=True
                )
        return result
