"""Exact global entropy statistics across processes (design.md §4).

Every controller acts on ``H_t``, the token-weighted mean entropy of the step's response tokens
over the *whole* global batch::

    H_t = Σ_ranks Σ_tokens H·m  /  Σ_ranks Σ_tokens m

not the mean of per-rank means (biased whenever ranks hold different token counts).
:class:`EntropyStats` accumulates the local sums over micro-batches and PPO mini-batches in
float64, packs them into ONE tensor with a fixed layout (identical on every rank, declared at
construction), and sums it across ranks in ONE collective (``reduce_op="sum"``) through Lightning:

- a ``lightning.fabric.Fabric``          → ``fabric.all_reduce(t, reduce_op="sum")``
- a Fabric strategy                       → ``strategy.all_reduce(t, reduce_op="sum")``
- a Lightning (Trainer) ``Strategy``      → ``strategy.reduce(t, reduce_op="sum")``
- a ``LightningModule`` attached to a Trainer → ``module.trainer.strategy.reduce(...)``
- a plain callable ``f(t) -> t_summed``   → ``f(t)`` (e.g. a raw ``torch.distributed`` wrapper)
- ``None``                                → one process, no collective.

Every rank must call :meth:`EntropyStats.reduce` once per step, including a rank that holds no
tokens (its packed tensor is all zeros): skipping the call on one rank deadlocks the others.

Distributed token-mean loss and DDP (read this before writing a trainer)
-----------------------------------------------------------------------
The loss of design.md §2 is a token-mean over the GLOBAL batch, ``L = (1/N) Σ_all tokens ℓ`` with
``N`` the number of response tokens summed over all ranks (:func:`global_token_count`). Rank r
computes ``L_r = (1/N) Σ_{tokens on r} ℓ``, so ``Σ_r L_r = L`` and ``Σ_r ∇L_r = ∇L``. But DDP
(torch DDP, Fabric's and Trainer's ``strategy="ddp"``) AVERAGES gradients over the W ranks:
``grad = (1/W) Σ_r ∇L_r = ∇L / W``. To get exactly ``∇L`` — the same update one process would
make on the full batch — each rank back-propagates ``W · L_r`` (:func:`ddp_loss_scale` returns W).
Normalising by the LOCAL token count instead (``L_r = mean over rank r``) gives
``(1/W) Σ_r mean_r``, a mean of means: wrong whenever ranks hold different token counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from entropyctl.controllers.base import EntropyReading

__all__ = ["EntropyStats", "global_token_count", "ddp_loss_scale", "all_reduce_sum", "Reducer"]

#: What :func:`all_reduce_sum` accepts (see the module docstring).
Reducer = Any

# Per-slot fields of the packed tensor, in order: Σ H·m, Σ m, Σ coef·m, Σ m over tokens that
# carried a coefficient (so mean_coef stays exact when some micro-batches pass no coef).
_FIELDS = ("entropy_sum", "tokens", "coef_sum", "coef_tokens")
_NF = len(_FIELDS)


def _resolve(reducer: Reducer) -> tuple[Callable[[Tensor], Tensor], torch.device | None]:
    """Map a reducer to ``(sum_over_ranks(t) -> t, device the tensor must live on)``."""
    if (
        not isinstance(reducer, torch.nn.Module)
        and callable(reducer)
        and not hasattr(reducer, "all_reduce")
        and not hasattr(reducer, "reduce")
    ):
        return reducer, None

    from lightning.fabric import Fabric
    from lightning.fabric.strategies import Strategy as FabricStrategy
    from lightning.pytorch import LightningModule
    from lightning.pytorch.strategies import Strategy as TrainerStrategy

    if isinstance(reducer, LightningModule):
        # `module.trainer` raises when the module is not attached to a Trainer; say so clearly.
        trainer = reducer._trainer
        if trainer is None:
            raise ValueError(
                "EntropyStats.reduce(module): the LightningModule is not attached to a Trainer; "
                "pass the Fabric / strategy explicitly, or None for a single process"
            )
        reducer = trainer.strategy
    if isinstance(reducer, Fabric):
        fabric = reducer

        # Fabric.all_reduce moves the tensor to fabric.device itself; reduce_op defaults to "mean".
        def fabric_sum(t: Tensor) -> Tensor:
            out = fabric.all_reduce(t, reduce_op="sum")
            assert isinstance(out, Tensor)
            return out

        return fabric_sum, fabric.device
    if isinstance(reducer, FabricStrategy):
        fstrategy = reducer
        return (lambda t: fstrategy.all_reduce(t, reduce_op="sum")), fstrategy.root_device
    if isinstance(reducer, TrainerStrategy):
        tstrategy = reducer
        # Strategy.reduce does not move the tensor: nccl needs it on the strategy's device.
        return (lambda t: tstrategy.reduce(t, reduce_op="sum")), tstrategy.root_device
    raise TypeError(
        f"reducer: expected a lightning Fabric, a Lightning Strategy, a LightningModule, a callable "
        f"t -> sum over ranks, or None; got {type(reducer).__name__}"
    )


def all_reduce_sum(tensor: Tensor, reducer: Reducer) -> Tensor:
    """Sum ``tensor`` over all ranks with ONE collective through ``reducer`` (None: identity)."""
    if reducer is None:
        return tensor
    fn, device = _resolve(reducer)
    if device is not None:
        tensor = tensor.to(device)
    out = fn(tensor)
    if not isinstance(out, Tensor) or out.shape != tensor.shape:
        raise RuntimeError(
            f"reducer returned {type(out).__name__} {getattr(out, 'shape', '')}, "
            f"expected a tensor of shape {tuple(tensor.shape)}"
        )
    return out


def global_token_count(local_mask_sum: Tensor | float | int, reducer: Reducer) -> int:
    """``N`` = response tokens summed over all ranks, with one all_reduce (sum) through ``reducer``.

    Use it as ``num_tokens`` of the policy loss and multiply the per-rank loss by
    :func:`ddp_loss_scale` (W) before backward under DDP — see the module docstring for why.
    Every rank must call it, including one with zero tokens.
    """
    # a Python number in float64: torch's default for a float, fp32, rounds 2**24 + 1
    value = (
        local_mask_sum.detach()
        if isinstance(local_mask_sum, Tensor)
        else torch.tensor(local_mask_sum, dtype=torch.float64)
    )
    if value.numel() != 1:
        raise ValueError(
            f"global_token_count: local_mask_sum must be a scalar, got shape {tuple(value.shape)}"
        )
    # float64 is exact for integer counts below 2**53 and gloo/nccl both sum it.
    packed = value.reshape(1).to(torch.float64)
    total = all_reduce_sum(packed, reducer)
    return int(round(float(total.item())))


def ddp_loss_scale(reducer: Reducer) -> int:
    """World size W: multiply a loss normalised by the GLOBAL token count by W before backward,
    because DDP averages gradients over W ranks (module docstring). 1 for None / one process."""
    if reducer is None:
        return 1
    from lightning.pytorch import LightningModule

    if isinstance(reducer, LightningModule):
        return int(reducer.trainer.world_size)
    world_size = getattr(reducer, "world_size", None)
    if world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return 1
    return int(world_size)


def _levels_from(buckets: int | Iterable[int] | None) -> tuple[int, ...]:
    if buckets is None:
        return ()
    if isinstance(buckets, int):
        if buckets < 0:
            raise ValueError(f"EntropyStats(buckets={buckets}): expected a count ≥ 0 or a list of levels")
        return tuple(range(1, buckets + 1))
    levels = tuple(int(b) for b in buckets)
    if len(set(levels)) != len(levels):
        raise ValueError(f"EntropyStats(buckets={list(levels)}): levels must be distinct")
    return tuple(sorted(levels))


class EntropyStats:
    """Σ H·m, Σ m, Σ coef·m (globally and per difficulty level) for one step, exact across ranks.

    ``buckets``: the difficulty levels to keep per-level sums for — an int ``n`` means levels
    ``1..n``, or an explicit list. Declare the same on every rank: it fixes the packed layout.

    Per step: ``add`` for every micro-batch / mini-batch, then ``reduce(reducer)`` on EVERY rank,
    then ``reading(step)`` (identical on every rank), then ``reset()``.

    ``device``: where the packed tensor lives (default: the first ``add``'s device). A Fabric, a
    strategy or a module moves it to its own device; a plain callable gets it where it is, so a rank
    that added nothing sends its zeros on the CPU unless ``device`` is given — pass it (e.g. the rank's
    CUDA device) with a plain callable over NCCL.
    """

    def __init__(
        self, buckets: int | Iterable[int] | None = None, *, device: torch.device | str | None = None
    ):
        self.levels: tuple[int, ...] = _levels_from(buckets)
        self._device = torch.device(device) if device is not None else None
        #: number of collectives issued by :meth:`reduce` over this object's life (not reset).
        self.collectives = 0
        self._local: Tensor | None = None  # lazily allocated on the first add's device
        self._global: Tensor | None = None  # the last reduce's result (float64, on CPU)
        self._dirty = False  # adds since the last reduce

    # ----------------------------------------------------------------------------- layout
    @property
    def size(self) -> int:
        """Length of the packed tensor: ``4 · (1 + number of levels)``."""
        return _NF * (1 + len(self.levels))

    def _buffer(self, device: torch.device) -> Tensor:
        if self._local is None:
            self._local = torch.zeros(1 + len(self.levels), _NF, dtype=torch.float64, device=device)
        return self._local

    # -------------------------------------------------------------------------------- add
    def add(
        self,
        entropy: Tensor,
        mask: Tensor,
        *,
        bucket: Tensor | int | None = None,
        coef: Tensor | float | None = None,
    ) -> None:
        """Accumulate one (micro-)batch.

        entropy: per-token entropy (any shape; detached, summed in float64).
        mask: same shape; 1/True for response tokens (float weights allowed). Tokens with mask 0
            never contribute, even when their entropy is NaN/inf (padding).
        bucket: difficulty level per token — same shape as ``entropy``, or a leading prefix of it
            (e.g. ``[B]`` per sequence for entropy ``[B, T]``), or one int for the whole batch;
            every value must be a declared level. None: counted only in the global sums.
        coef: entropy coefficient α per token (same shape rules as ``bucket``, or a float).
        """
        if entropy.shape != mask.shape:
            raise ValueError(
                f"EntropyStats.add: entropy shape {tuple(entropy.shape)} != mask shape {tuple(mask.shape)}"
            )
        device = entropy.device if self._device is None else self._device
        buf = self._buffer(device)
        m = mask.detach().to(device=buf.device, dtype=torch.float64).reshape(-1)
        h = entropy.detach().to(device=buf.device, dtype=torch.float64).reshape(-1)
        on = m != 0
        hm = torch.where(on, h * m, torch.zeros_like(h))

        cm: Tensor | None = None
        if coef is not None:
            c = self._per_token(coef, entropy.shape, "coef", buf.device).to(torch.float64)
            cm = torch.where(on, c * m, torch.zeros_like(c))

        rows = torch.zeros(_NF, dtype=torch.float64, device=buf.device)
        rows[0] = hm.sum()
        rows[1] = m.sum()
        if cm is not None:
            rows[2] = cm.sum()
            rows[3] = m.sum()
        buf[0] += rows

        if bucket is not None:
            if not self.levels:
                raise ValueError(
                    "EntropyStats.add: bucket given but no levels were declared "
                    "(construct with EntropyStats(buckets=n or [levels]))"
                )
            b = self._per_token(bucket, entropy.shape, "bucket", buf.device)
            if b.is_floating_point():
                raise ValueError(f"EntropyStats.add: bucket must hold integer levels, got dtype {b.dtype}")
            levels = torch.tensor(self.levels, dtype=torch.int64, device=buf.device)
            b = b.to(torch.int64)
            idx = torch.searchsorted(levels, b).clamp_(max=len(self.levels) - 1)
            bad = (levels[idx] != b) & on
            if bool(bad.any()):
                unknown = sorted({int(v) for v in b[bad].unique().tolist()})
                raise ValueError(
                    f"EntropyStats.add: bucket levels {unknown} were not declared; "
                    f"declared levels: {list(self.levels)}"
                )
            per = torch.zeros(len(self.levels), _NF, dtype=torch.float64, device=buf.device)
            per[:, 0].index_add_(0, idx, hm)
            per[:, 1].index_add_(0, idx, m)
            if cm is not None:
                per[:, 2].index_add_(0, idx, cm)
                per[:, 3].index_add_(0, idx, m)
            buf[1:] += per
        self._dirty = True

    @staticmethod
    def _per_token(value: Tensor | float | int, shape: torch.Size, name: str, device: torch.device) -> Tensor:
        """Broadcast a scalar, a same-shape tensor, or a leading-prefix-shape tensor to ``shape``, flat."""
        if isinstance(value, Tensor):
            t = value.detach().to(device)
        else:  # a Python number: keep it exact (float64 / int64)
            t = torch.tensor(value, device=device, dtype=torch.float64 if isinstance(value, float) else None)
        if t.dim() == 0:
            return t.expand(shape).reshape(-1).contiguous()
        if tuple(t.shape) != tuple(shape[: t.dim()]):
            raise ValueError(
                f"EntropyStats.add: {name} shape {tuple(t.shape)} must equal the entropy shape "
                f"{tuple(shape)} or a leading prefix of it"
            )
        t = t.reshape(*t.shape, *([1] * (len(shape) - t.dim())))
        return t.expand(shape).reshape(-1).contiguous()

    # ----------------------------------------------------------------------------- reduce
    def reduce(self, reducer: Reducer = None) -> None:
        """Sum the local sums over all ranks in ONE collective (``reduce_op="sum"``).

        Call it on every rank every step — also on a rank that added nothing (it sends zeros).
        Idempotent: it always reduces the local sums, so a second call gives the same totals.
        """
        device = self._device
        if device is None and self._local is not None:
            device = self._local.device
        packed = (
            self._local
            if self._local is not None
            else torch.zeros(1 + len(self.levels), _NF, dtype=torch.float64, device=device)
        )
        packed = packed.reshape(-1).clone()  # the collective works in place: keep the local sums
        if reducer is not None:
            packed = all_reduce_sum(packed, reducer)
            self.collectives += 1
        self._global = packed.detach().to("cpu", torch.float64).reshape(1 + len(self.levels), _NF)
        self._dirty = False

    def _totals(self) -> Tensor:
        if self._dirty or self._global is None:
            if self._global is None and self._local is None:
                return torch.zeros(1 + len(self.levels), _NF, dtype=torch.float64)
            raise RuntimeError(
                "EntropyStats: call reduce(reducer) (on every rank) after the last add() "
                "and before reading the statistics"
            )
        return self._global

    # ---------------------------------------------------------------------------- readings
    @staticmethod
    def _ratio(num: float, den: float) -> float:
        return num / den if den > 0 else math.nan

    def reading(self, step: int) -> EntropyReading:
        """The global token-weighted mean entropy ``ΣH·m / Σm`` and ``Σm``; an empty step gives
        ``mean_entropy = NaN, tokens = 0`` (controllers ignore such readings)."""
        g = self._totals()
        tokens = float(g[0, 1])
        # fractional weights summing below ½ still make a reading of one token
        count = int(round(tokens)) or (1 if tokens > 0 else 0)
        return EntropyReading(mean_entropy=self._ratio(float(g[0, 0]), tokens), tokens=count, step=int(step))

    def bucket_means(self) -> dict[int, float]:
        """Token-weighted mean entropy per declared level (NaN for a level with no tokens)."""
        g = self._totals()
        return {lvl: self._ratio(float(g[i + 1, 0]), float(g[i + 1, 1])) for i, lvl in enumerate(self.levels)}

    def bucket_tokens(self) -> dict[int, int]:
        """Global token count per declared level."""
        g = self._totals()
        return {lvl: int(round(float(g[i + 1, 1]))) for i, lvl in enumerate(self.levels)}

    def bucket_coef_means(self) -> dict[int, float]:
        """Token-weighted mean coefficient α per level (NaN where no token carried a coef)."""
        g = self._totals()
        return {lvl: self._ratio(float(g[i + 1, 2]), float(g[i + 1, 3])) for i, lvl in enumerate(self.levels)}

    def mean_coef(self) -> float:
        """Token-weighted mean coefficient ``Σ coef·m / Σ m`` over tokens that carried a coef."""
        g = self._totals()
        return self._ratio(float(g[0, 2]), float(g[0, 3]))

    def reset(self) -> None:
        """Forget this step's sums (the collective counter is kept)."""
        self._local = None
        self._global = None
        self._dirty = False

    def packed_layout(self) -> Sequence[str]:
        """Names of the packed tensor's entries, in order (for debugging / docs)."""
        names = [f"all.{f}" for f in _FIELDS]
        for lvl in self.levels:
            names += [f"level_{lvl}.{f}" for f in _FIELDS]
        return names
