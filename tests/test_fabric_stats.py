"""Single-process tests of EntropyStats and the token-count helper (entropyctl.trainer.stats)."""

from __future__ import annotations

import math

import pytest
import torch

from entropyctl.controllers.base import EntropyReading
from entropyctl.trainer.stats import EntropyStats, ddp_loss_scale, global_token_count

LEVELS = (1, 2, 3, 4)


def _micro_batches(seed: int, n_batches: int = 4) -> list[dict[str, torch.Tensor]]:
    """Ragged micro-batches [B, T] with padding (mask 0, entropy NaN there), levels per sequence."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n_batches):
        b, t = 2 + k, 5 + 3 * k
        entropy = torch.rand(b, t, generator=g) * 3.0
        lengths = torch.randint(0, t + 1, (b,), generator=g)
        mask = torch.arange(t)[None, :] < lengths[:, None]
        entropy = entropy.masked_fill(~mask, float("nan"))  # padding garbage must not leak
        level = torch.randint(1, 4, (b,), generator=g)  # levels 1..3 only: level 4 stays empty
        coef = torch.rand(b, generator=g) * 0.01
        out.append({"entropy": entropy, "mask": mask, "level": level, "coef": coef})
    return out


def _direct(batches: list[dict[str, torch.Tensor]]) -> dict[str, object]:
    """The oracle: concatenate every token, then compute the means in float64."""
    h = torch.cat([b["entropy"].reshape(-1) for b in batches]).double()
    m = torch.cat([b["mask"].reshape(-1) for b in batches])
    lvl = torch.cat([b["level"][:, None].expand_as(b["mask"]).reshape(-1) for b in batches])
    c = torch.cat([b["coef"][:, None].expand_as(b["mask"]).reshape(-1) for b in batches]).double()
    res: dict[str, object] = {"mean": h[m].mean().item(), "tokens": int(m.sum()), "coef": c[m].mean().item()}
    res["levels"] = {
        k: (h[m & (lvl == k)].mean().item() if (m & (lvl == k)).any() else math.nan) for k in LEVELS
    }
    res["level_coef"] = {
        k: (c[m & (lvl == k)].mean().item() if (m & (lvl == k)).any() else math.nan) for k in LEVELS
    }
    return res


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_micro_batch_accumulation_equals_concatenation() -> None:
    batches = _micro_batches(seed=0)
    stats = EntropyStats(buckets=4)
    for b in batches:
        # bucket/coef given per sequence [B] for entropy [B, T] (a leading-prefix shape).
        stats.add(b["entropy"], b["mask"], bucket=b["level"], coef=b["coef"])
    stats.reduce()
    want = _direct(batches)
    r = stats.reading(step=7)
    assert isinstance(r, EntropyReading) and r.step == 7
    assert r.tokens == want["tokens"] and r.tokens > 0
    assert r.mean_entropy == pytest.approx(want["mean"], rel=1e-12)
    assert stats.mean_coef() == pytest.approx(want["coef"], rel=1e-12)
    assert stats.collectives == 0  # no reducer: no collective


def test_bucket_means_and_coef_means_per_level() -> None:
    batches = _micro_batches(seed=1)
    stats = EntropyStats(buckets=list(LEVELS))
    for b in batches:
        per_token_level = b["level"][:, None].expand_as(b["mask"])  # same-shape form also accepted
        stats.add(
            b["entropy"], b["mask"], bucket=per_token_level, coef=b["coef"][:, None].expand_as(b["mask"])
        )
    stats.reduce()
    want = _direct(batches)
    got = stats.bucket_means()
    assert set(got) == set(LEVELS)
    for k in LEVELS:
        assert _same(got[k], want["levels"][k]), (k, got[k], want["levels"][k])  # type: ignore[index]
        assert _same(stats.bucket_coef_means()[k], want["level_coef"][k])  # type: ignore[index]
    assert math.isnan(got[4]) and stats.bucket_tokens()[4] == 0
    assert sum(stats.bucket_tokens().values()) == want["tokens"]
    # The per-level means are not all equal to the global mean (the check can fail).
    assert any(abs(got[k] - float(want["mean"])) > 1e-3 for k in (1, 2, 3))  # type: ignore[arg-type]


def test_empty_step_reads_nan_with_zero_tokens() -> None:
    stats = EntropyStats(buckets=2)
    stats.reduce()  # a rank with no tokens still reduces (zeros)
    r = stats.reading(step=3)
    assert math.isnan(r.mean_entropy) and r.tokens == 0
    assert math.isnan(stats.mean_coef())
    assert all(math.isnan(v) for v in stats.bucket_means().values())
    # All-masked tokens are an empty step too, even with NaN entropy underneath.
    stats.add(torch.full((3, 4), float("nan")), torch.zeros(3, 4, dtype=torch.bool), bucket=1, coef=0.5)
    stats.reduce()
    r = stats.reading(step=4)
    assert math.isnan(r.mean_entropy) and r.tokens == 0


def test_scalar_bucket_and_coef_and_partial_coef() -> None:
    stats = EntropyStats(buckets=3)
    stats.add(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0]), bucket=2, coef=0.25)
    stats.add(torch.tensor([5.0]), torch.tensor([1.0]), bucket=3)  # no coef for this micro-batch
    stats.reduce()
    assert stats.reading(0).mean_entropy == pytest.approx((1 + 2 + 5) / 3)
    assert stats.mean_coef() == 0.25  # only tokens that carried a coef count
    assert stats.bucket_means()[2] == pytest.approx(1.5)
    assert stats.bucket_coef_means()[2] == 0.25 and math.isnan(stats.bucket_coef_means()[3])


def test_reduce_uses_one_collective_and_sums_over_ranks() -> None:
    calls: list[torch.Tensor] = []

    def two_identical_ranks(t: torch.Tensor) -> torch.Tensor:  # stands in for an all_reduce(sum), W=2
        calls.append(t.clone())
        assert t.dtype == torch.float64
        return t * 2

    stats = EntropyStats(buckets=2)
    stats.add(torch.tensor([1.0, 3.0]), torch.tensor([1, 1]), bucket=torch.tensor([1, 2]))
    stats.reduce(two_identical_ranks)
    assert len(calls) == 1 and calls[0].numel() == stats.size == 12
    assert stats.collectives == 1
    assert stats.reading(0) == EntropyReading(mean_entropy=2.0, tokens=4, step=0)
    stats.reduce(two_identical_ranks)  # idempotent: reduces the local sums again, not the totals
    assert stats.reading(0).tokens == 4 and stats.collectives == 2
    stats.reset()
    assert stats.collectives == 2 and stats.reading(1).tokens == 0


def test_misuse_gives_clear_errors() -> None:
    stats = EntropyStats(buckets=2)
    stats.add(torch.ones(3), torch.ones(3), bucket=torch.tensor([1, 2, 2]))
    with pytest.raises(RuntimeError, match="call reduce"):
        stats.reading(0)
    with pytest.raises(ValueError, match=r"levels \[5\] were not declared"):
        stats.add(torch.ones(2), torch.ones(2), bucket=torch.tensor([1, 5]))
    with pytest.raises(ValueError, match="mask shape"):
        stats.add(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="leading prefix"):
        stats.add(torch.ones(2, 3), torch.ones(2, 3), bucket=torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="no levels were declared"):
        EntropyStats().add(torch.ones(2), torch.ones(2), bucket=1)
    with pytest.raises(TypeError, match="reducer"):
        stats.reduce(reducer=object())
    # A masked-out token with an undeclared level is not an error (padding carries junk levels).
    stats.add(torch.ones(2), torch.tensor([1, 0]), bucket=torch.tensor([1, 0]))


def test_global_token_count_and_loss_scale_single_process() -> None:
    assert global_token_count(torch.tensor(17.0), None) == 17
    assert global_token_count(torch.tensor(5), lambda t: t * 3) == 15
    assert ddp_loss_scale(None) == 1


def test_reduce_through_a_single_device_fabric() -> None:
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    stats = EntropyStats(buckets=1)
    stats.add(torch.tensor([0.5, 1.5, 4.0]), torch.tensor([1, 1, 0]), bucket=1)
    stats.reduce(fabric)
    assert stats.reading(2).mean_entropy == pytest.approx(1.0) and stats.collectives == 1
    assert global_token_count(torch.tensor(3.0), fabric) == 3
    assert ddp_loss_scale(fabric) == 1


def test_reduce_from_inside_a_lightning_module_under_a_trainer(tmp_path: pytest.TempPathFactory) -> None:
    """The trainer's call pattern: ``stats.reduce(self)`` (or ``self.trainer.strategy``) in a step."""
    import lightning.pytorch as pl

    seen: dict[str, object] = {}

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: object, batch_idx: int) -> None:
            stats = EntropyStats(buckets=2)
            stats.add(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([1, 1, 1]), bucket=torch.tensor([1, 1, 2]))
            stats.reduce(self)
            stats.reduce(self.trainer.strategy)
            seen["reading"] = stats.reading(self.global_step)
            seen["levels"] = stats.bucket_means()
            seen["collectives"] = stats.collectives
            seen["tokens"] = global_token_count(torch.tensor(3), self)
            seen["scale"] = ddp_loss_scale(self)

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(torch.zeros(1, 2), batch_size=1)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Module())
    assert seen["reading"] == EntropyReading(mean_entropy=3.0, tokens=3, step=0)
    assert seen["levels"] == {1: 1.5, 2: 6.0}
    assert seen["collectives"] == 2 and seen["tokens"] == 3 and seen["scale"] == 1
    with pytest.raises(ValueError, match="not attached to a Trainer"):
        EntropyStats().reduce(Module())


def test_fractional_weights_below_one_half_still_make_a_usable_reading() -> None:
    from entropyctl.controllers.base import is_usable_reading

    stats = EntropyStats()
    stats.add(torch.tensor([0.7, 0.9]), torch.tensor([0.2, 0.2]))
    stats.reduce(None)
    reading = stats.reading(3)
    assert reading.mean_entropy == pytest.approx(0.8) and reading.tokens == 1 and is_usable_reading(reading)


def test_a_float_token_count_is_summed_exactly_above_two_to_the_24() -> None:
    assert global_token_count(2.0**24 + 1, None) == 2**24 + 1  # float32 would round it to 2**24
