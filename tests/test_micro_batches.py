"""``algorithm.micro_batch_size``: a mini-batch run in micro-batches (gradients accumulated, one optimizer
step) is the same update as the whole mini-batch at once, up to float rounding — for every part of the
loss that sees more than one response at a time: the global token and response counts (token-mean,
GRPO's per-response mean), the sequence-level ratio (GSPO), the KL reference, the sampler correction, and
a token-level controller whose selection is over the whole mini-batch. Compared in float64, where the
only difference is the order of the sums (a few ulps, 1e-16 relative, grown through two steps of Adam)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_helpers import SIGNAL_STEP, read_metrics, tiny_config

from entropyctl.trainer.run import build_module

#: 6 prompts × 4 = 24 responses a step, 2 mini-batches of 12: micro-batches of 5 are 5, 5 and 2 rows
SHAPE = [
    *(o for o in SIGNAL_STEP if not o.startswith("controller.")),
    "trainer.steps=2",
    "algorithm.ppo_epochs=2",
    "algorithm.mini_batches=2",
]
NO_BONUS = ["controller.name=fixed", "controller.alpha=0.0"]

VARIANTS = {
    "token_mean": NO_BONUS,
    "aer": ["controller.name=aer", "controller.alpha_0=0.05"],  # per-prompt α, moved by the readings
    # a bound just above 1: the second epoch's ratios pass it under negative advantages
    "dual_clip": [*NO_BONUS, "algorithm.dual_clip=1.001"],
    "gspo_kl_correction": [
        *NO_BONUS,
        "algorithm.loss_agg=seq-mean-token-mean",
        "algorithm.importance_level=sequence",
        "algorithm.kl_coef=0.1",
        "algorithm.rollout_correction.mode=sequence_truncate",
        "algorithm.rollout_correction.clip_max=2.0",
    ],
    "low_var_kl": [*NO_BONUS, "algorithm.kl_coef=0.1", "algorithm.kl_estimator=low_var_kl"],
    "clip_cov_dr_grpo": [
        "controller.name=clip_cov",
        "algorithm.loss_agg=seq-mean-token-sum-norm",
        "algorithm.rollout_correction.mode=token_truncate",
        "algorithm.rollout_correction.clip_max=2.0",
    ],
}


def _train(run_dir: Path, overrides: list[str]) -> tuple[Any, list[tuple[int, int]]]:
    """Two steps in float64; (rows, padded tokens) of every forward with gradients (the micro-batches)."""
    run_dir.mkdir()
    module = build_module(tiny_config(*SHAPE, *overrides), run_dir)
    shapes: list[tuple[int, int]] = []
    forward = module._forward_tokens

    def counting(model: Any, comp: Any, grad: bool) -> Any:
        if grad:
            rows, width = comp.response_ids.shape[0], comp.prompt_ids.shape[1] + comp.response_ids.shape[1]
            shapes.append((int(rows), int(rows * width)))
        return forward(model, comp, grad)

    module._forward_tokens = counting
    pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="64-true",
        max_steps=2 * module.optimizer_steps_per_rlvr_step,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module)
    return module, shapes


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_micro_batches_give_the_same_update(tmp_path: Path, variant: str) -> None:
    whole, whole_shapes = _train(tmp_path / "whole", VARIANTS[variant])
    micro, micro_shapes = _train(tmp_path / "micro", [*VARIANTS[variant], "algorithm.micro_batch_size=5"])
    whole_rows, micro_rows = [r for r, _ in whole_shapes], [r for r, _ in micro_shapes]
    # 2 steps × 2 epochs × 2 mini-batches: one forward of 12 rows each, or three of 5, 5 and 2
    assert whole_rows == [12] * 8
    assert micro_rows == [5, 5, 2] * 8
    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "micro")
    assert len(a) == len(b) == 2
    assert a[0]["grad_norm"] > 0 and a[0]["pg_loss"] != 0.0  # the steps carry a signal
    dual = [row["clip_frac_dual"] for row in a]
    assert (max(dual) > 0) if variant == "dual_clip" else dual == [0.0, 0.0]
    for row_a, row_b in zip(a, b, strict=True):
        for key, value in row_a.items():
            if key.startswith("time"):  # wall-clock seconds
                continue
            if math.isnan(value):  # a column this run does not fill
                assert math.isnan(row_b[key]), key
                continue
            assert row_b[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    for p, q in zip(whole.policy.parameters(), micro.policy.parameters(), strict=True):
        assert p.dtype == torch.float64
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)
    assert whole.controller.state_dict() == pytest.approx(micro.controller.state_dict(), rel=1e-9)


def test_a_micro_batch_larger_than_the_mini_batch_is_the_whole_mini_batch(tmp_path: Path) -> None:
    _, shapes = _train(tmp_path / "run", [*NO_BONUS, "algorithm.micro_batch_size=64"])
    assert [rows for rows, _ in shapes] == [12] * 8


def test_micro_batches_by_tokens_give_the_same_update_within_their_budget(tmp_path: Path) -> None:
    """algorithm.micro_batch_tokens: each mini-batch cut, in its order, into micro-batches of at most that
    many padded tokens (rows × (longest prompt + longest response)); the update is the whole mini-batch's
    up to float rounding, as with micro_batch_size, and with both set both bounds hold."""
    whole, _ = _train(tmp_path / "whole", NO_BONUS)
    # 60 tokens: 2-5 rows of ~12-16; with 2 rows at most, 30 tokens: 1 or 2 rows
    for name, budget, extra in [("tokens", 60, []), ("both", 30, ["algorithm.micro_batch_size=2"])]:
        module, shapes = _train(
            tmp_path / name, [*NO_BONUS, f"algorithm.micro_batch_tokens={budget}", *extra]
        )
        # 2 steps × 2 epochs × 2 mini-batches of 12 rows: every row once per mini-batch, in pieces
        assert sum(rows for rows, _ in shapes) == 12 * 8
        assert len(shapes) > 8 and len({rows for rows, _ in shapes}) > 1  # cut, and not evenly
        assert all(tokens <= budget or rows == 1 for rows, tokens in shapes)
        if name == "both":
            assert max(rows for rows, _ in shapes) <= 2
        for p, q in zip(whole.policy.parameters(), module.policy.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-12)


def test_token_micro_batches_take_the_longest_rows_first(tmp_path: Path) -> None:
    """Cut by tokens, a mini-batch's rows go into micro-batches longest first (prompt + response), so rows
    of like length share a piece: long and short rows in turn, in their order, would pad every piece to
    the long rows' width. Ties keep the mini-batch's order; micro_batch_size alone keeps its order."""
    from entropyctl.rollout.protocol import Completions

    module = build_module(tiny_config(*SHAPE, *NO_BONUS, "algorithm.micro_batch_tokens=30"), tmp_path)
    lengths = [8, 1, 8, 1, 8, 1]  # prompts of 2: rows of 10 and 3 tokens in turn
    comp = Completions(
        prompt_ids=torch.ones(6, 2, dtype=torch.long),
        prompt_mask=torch.ones(6, 2, dtype=torch.long),
        response_ids=torch.ones(6, 8, dtype=torch.long),
        response_mask=torch.tensor([[1] * k + [0] * (8 - k) for k in lengths]),
        truncated=torch.zeros(6, dtype=torch.bool),
    )
    rows = torch.tensor([5, 0, 1, 2, 3, 4])
    pieces = module._micro_pieces(comp, rows)
    # in the mini-batch's order: [1, 8, 1] [8, 1, 8] (2 pieces of 3 × 10 tokens); longest first: [8, 8, 8]
    # (30 tokens) and [1, 1, 1] (9 tokens)
    assert [p.tolist() for p in pieces] == [[0, 2, 4], [5, 1, 3]]
    module.config.algorithm.micro_batch_tokens = None
    module.config.algorithm.micro_batch_size = 4
    assert [p.tolist() for p in module._micro_pieces(comp, rows)] == [[5, 0, 1, 2], [3, 4]]


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 60)), min_size=1, max_size=30),
    budget=st.integers(1, 400),
    size=st.none() | st.integers(1, 8),
    longest_first=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_cut_by_tokens_keeps_every_row_once_within_its_bounds(
    lengths: list[tuple[int, int]], budget: int, size: int | None, longest_first: bool, seed: int
) -> None:
    """Any rows, in any order: every row in exactly one piece; a piece of more than one row within the
    budget (rows × (longest prompt + longest response)) and ``size``; pieces cut as late as the bounds
    allow (one more row would break one); longest first, the rows run from the longest down, ties in
    their given order; otherwise in their given order."""
    from entropyctl.trainer.module import cut_by_tokens

    prompt = torch.tensor([p for p, _ in lengths])
    response = torch.tensor([r for _, r in lengths])
    rows = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed))
    pieces = cut_by_tokens(rows, prompt, response, budget, size, longest_first=longest_first)
    flat = torch.cat(pieces)
    assert sorted(flat.tolist()) == sorted(rows.tolist())

    def cost(piece: torch.Tensor) -> int:
        return len(piece) * int(prompt[piece].max() + response[piece].max())

    limit = size or len(rows)
    for i, piece in enumerate(pieces):
        assert len(piece) >= 1 and len(piece) <= limit
        assert len(piece) == 1 or cost(piece) <= budget
        if i + 1 < len(pieces):  # the next row did not fit
            grown = torch.cat([piece, pieces[i + 1][:1]])
            assert len(grown) > limit or cost(grown) > budget
    total = (prompt + response)[flat].tolist()
    if longest_first:
        assert total == sorted(total, reverse=True)
        for a, b in zip(flat.tolist(), flat.tolist()[1:], strict=False):  # ties keep the given order
            if int(prompt[a] + response[a]) == int(prompt[b] + response[b]):
                assert rows.tolist().index(a) < rows.tolist().index(b)
    else:
        assert flat.tolist() == rows.tolist()


def test_token_micro_batches_are_as_many_on_every_process(tmp_path: Path) -> None:
    """Cut by tokens, one process's mini-batch may need more forwards than another's; under FSDP each is
    a collective, so every process splits its largest pieces to the most any process has (rank 0 of 2
    here, the other rank's counts given by the reduction), keeping every row once and in order."""
    from types import MethodType

    module = build_module(tiny_config(*SHAPE, *NO_BONUS, "algorithm.micro_batch_tokens=60"), tmp_path)
    pieces = [[torch.arange(0, 6), torch.arange(6, 12)], [torch.arange(12, 24)]]
    other = torch.tensor([4.0, 3.0], dtype=torch.float64)  # rank 1's piece counts per mini-batch
    module._micro_pieces = MethodType(lambda self, comp, rows: pieces.pop(0), module)  # type: ignore[method-assign]
    module._world = MethodType(lambda self: (0, 2), module)  # type: ignore[method-assign]
    module._reducer = MethodType(
        lambda self: lambda t: t + torch.cat([torch.zeros(2, dtype=t.dtype), other]), module
    )  # type: ignore[method-assign]
    rows = [torch.arange(0, 12), torch.arange(12, 24)]
    out = module._micro_pieces_all(None, rows)  # type: ignore[arg-type]
    assert [len(p) for p in out] == [4, 3]
    for mini, cut in zip(rows, out, strict=True):
        assert torch.equal(torch.cat(cut), mini)
    assert [len(p) for p in out[0]] == [3, 3, 3, 3] and [len(p) for p in out[1]] == [3, 3, 6]
