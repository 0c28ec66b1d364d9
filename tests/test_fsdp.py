"""``trainer.strategy: fsdp`` (entropyctl.trainer.fsdp): FSDP2 ``fully_shard`` over 2 CPU processes (gloo).

One launch of this file as a script (``python tests/test_fsdp.py OUT``, through Lightning's Trainer and
:class:`FSDPPolicyStrategy`, rank 1 started by Lightning) against a single-process oracle:
- every SGD step of a tiny Llama policy (tied and untied LM head), the fused loss normalised by the GLOBAL
  token count times W, gradient clipping on the global norm, gives the parameters one process gets from
  the same step on the full batch;
- the entropy reading is the exact token-weighted global one (reduced through the strategy) and the
  controller state (aer) is identical on both ranks and equal to the single process's;
- ``generate`` on the sharded policy with a different number of prompts and lengths per rank (synced);
- the full weights for a rollout engine (``full_state_dict``) and the rank-0 checkpoint file.
The config and sharding-plan checks run in this process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

WORLD_SIZE = 2
STEPS = 3
LR, TEMPERATURE = 0.5, 0.8
#: gradient clipping per policy (tied, untied): off for the tied one, so a wrong loss scale (x W) shows;
#: active on the untied one (its global norm is ~1.1), so a per-rank norm would show.
CLIPS = (None, 0.5)
PROMPTS, GROUP = 3, 2  # rank 0: prompts 0-1 (rows 0-3), rank 1: prompt 2 (rows 4-5): uneven tokens
RANK_ROWS = ((0, 4), (4, 6))
ACCURACY = (0.25, 0.75, 0.0)
LEVELS = (1, 2, 3)
CONTROLLER = {"name": "aer", "anchor_steps": 1, "eta": 0.5, "alpha_0": 0.05, "tau": 0.9, "update": "additive"}
TIMEOUT_S = 240


# ------------------------------------------------------------------------------ data and model (both sides)
def build_policy(tied: bool) -> Any:
    from entropyctl.models.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer("0123456789+-=? ")
    return build_tiny_model(tokenizer, hidden_size=16, layers=2, heads=2, tie_word_embeddings=tied, seed=3)


def tokenizer() -> Any:
    from entropyctl.models.tiny import build_char_tokenizer

    return build_char_tokenizer("0123456789+-=? ")


def batch() -> dict[str, Any]:
    """The full batch: PROMPTS x GROUP rows of (prompt, response) with ragged masks, per-token advantages
    and old log-probs, and each row's prompt index."""
    from entropyctl.rollout.protocol import Completions

    vocab = len(tokenizer())
    g = torch.Generator().manual_seed(5)
    rows, lp, lr = PROMPTS * GROUP, 4, 6
    prompt_mask = torch.ones(rows, lp, dtype=torch.long)
    prompt_mask[0, :2] = 0
    lengths = torch.tensor([6, 3, 5, 6, 1, 2])
    response_mask = (torch.arange(lr)[None] < lengths[:, None]).long()
    comp = Completions(
        torch.randint(4, vocab, (rows, lp), generator=g),
        prompt_mask,
        torch.randint(4, vocab, (rows, lr), generator=g),
        response_mask,
        torch.zeros(rows, dtype=torch.bool),
    )
    return {
        "comp": comp,
        "advantages": torch.randn(rows, lr, generator=g),
        "old": -2.5 + 0.3 * torch.randn(rows, lr, generator=g),
        "prompt": torch.arange(rows) // GROUP,
    }


def select(data: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    from entropyctl.rollout.protocol import Completions

    c = data["comp"]
    comp = Completions(
        *(t[lo:hi] for t in (c.prompt_ids, c.prompt_mask, c.response_ids, c.response_mask, c.truncated))
    )
    return {"comp": comp, **{k: data[k][lo:hi] for k in ("advantages", "old", "prompt")}}


def sgd_step(
    policy: Any, opt: Any, data: dict[str, Any], plan: Any, n_global: int, scale: int, step: Any
) -> Any:
    """The trainer's update on ``data`` (this rank's rows): fused loss over the GLOBAL token count N, x W.
    ``step(loss)`` runs backward, clipping and the optimizer step; returns the loss output."""
    from entropyctl.models.forward import response_hidden_states
    from entropyctl.ops.losses import fused_policy_loss

    with torch.no_grad():  # an old-log-prob pass first, as the trainer makes with several mini-batches
        response_hidden_states(policy, data["comp"])
    h = response_hidden_states(policy, data["comp"])
    keep = data["comp"].response_mask.bool()
    coef = plan.coef[data["prompt"]][:, None].expand_as(keep)[keep]
    out = fused_policy_loss(
        h.hidden,
        h.lm_head_weight,
        h.targets,
        data["old"][keep],
        data["advantages"][keep],
        coef,
        torch.ones_like(coef, dtype=torch.bool),
        plan.clip_low,
        plan.clip_high,
        TEMPERATURE,
        chunk_size=4,
        num_tokens=n_global,
    )
    opt.zero_grad(set_to_none=True)
    step(out.loss * scale)
    return out


def levels_of(data: dict[str, Any]) -> torch.Tensor:
    keep = data["comp"].response_mask.bool()
    return (data["prompt"] + 1)[:, None].expand_as(keep)[keep]


# ------------------------------------------------------------------------------------------ the worker
def worker(out_dir: Path) -> None:
    torch.set_num_threads(1)
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from entropyctl.controllers import GroupOutcome, create_controller
    from entropyctl.rollout.hf import HFRolloutEngine
    from entropyctl.rollout.protocol import SamplingSettings
    from entropyctl.trainer.fsdp import FSDPPolicyStrategy, full_state_dict, is_sharded, shard_policy
    from entropyctl.trainer.stats import EntropyStats, ddp_loss_scale, global_token_count

    class OneStep(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.policy, self.untied = build_policy(True), build_policy(False)
            self.controllers = [create_controller(CONTROLLER) for _ in range(2)]
            self.steps: list[dict[str, Any]] = []

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(m.parameters(), lr=LR) for m in (self.policy, self.untied)]

        def train_dataloader(self) -> DataLoader:
            return DataLoader(list(range(STEPS)), batch_size=None)

        def training_step(self, batch_idx: Any, _: int) -> None:
            rank, strategy = self.trainer.global_rank, self.trainer.strategy
            mine = select(batch(), *RANK_ROWS[rank])
            row: dict[str, Any] = {"sharded": [is_sharded(self.policy), is_sharded(self.untied)]}
            n_global = global_token_count(mine["comp"].response_mask.sum(), strategy)
            for i, (policy, opt) in enumerate(
                zip((self.policy, self.untied), self.optimizers(), strict=True)
            ):
                controller = self.controllers[i]
                plan = controller.plan(GroupOutcome(torch.tensor(ACCURACY), GROUP, int(batch_idx)))

                def step(
                    loss: torch.Tensor, opt: Any = opt, policy: Any = policy, clip: Any = CLIPS[i]
                ) -> None:
                    self.manual_backward(loss)
                    grads = [p.grad for p in policy.parameters() if p.grad is not None]
                    row.setdefault("grad_norm", []).append(float(torch.nn.utils.get_total_norm(grads)))
                    if clip is not None:
                        self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
                    opt.step()

                out = sgd_step(policy, opt, mine, plan, n_global, ddp_loss_scale(self), step)
                stats = EntropyStats(LEVELS)
                stats.add(
                    out.entropy.detach(),
                    torch.ones_like(out.entropy, dtype=torch.bool),
                    bucket=levels_of(mine),
                )
                stats.reduce(strategy)
                reading = stats.reading(int(batch_idx))
                controller.observe(reading)
                row.setdefault("reading", []).append([reading.mean_entropy, reading.tokens])
                row.setdefault("local", []).append(
                    [float(out.entropy.double().sum()), int(out.entropy.numel())]
                )
                row.setdefault("controller", []).append(controller.state_dict())
                full = full_state_dict(policy)  # every rank: the full weights (a collective)
                row.setdefault("params", []).append({k: v.reshape(-1).tolist() for k, v in full.items()})
            row["n_global"] = n_global
            self.steps.append(row)

    module = OneStep()
    strategy = FSDPPolicyStrategy(
        WORLD_SIZE,
        shard=lambda m, mesh: [shard_policy(p, mesh) for p in (m.policy, m.untied)],
        process_group_backend="gloo",
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        strategy=strategy,
        max_steps=2 * STEPS,  # Lightning counts optimizer steps: two per training step
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module)
    rank = trainer.global_rank
    # generate on the sharded policy: ranks hold 1 and 2 prompts and stop after 6 and 3 tokens
    tok = tokenizer()
    prompts = (
        [tok("1+2=")["input_ids"]] if rank == 0 else [tok("3+4=")["input_ids"], tok("9-1=")["input_ids"]]
    )
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=6 if rank == 0 else 3, seed=rank)
    generated = HFRolloutEngine(module.policy, tok).generate(prompts, GROUP, sampling)
    rank0_only = full_state_dict(module.policy, rank0_only=True)
    everywhere = full_state_dict(module.policy)  # collectives: every rank calls both
    trainer.save_checkpoint(str(out_dir / "fsdp.ckpt"))  # ModelParallelStrategy: one full file by rank 0
    result = {
        "rank": rank,
        "world_size": trainer.world_size,
        "backend": torch.distributed.get_backend(),
        "steps": module.steps,
        "generated_shape": list(generated.response_ids.shape),
        "rank0_only_keys": sorted(rank0_only),
        "rank0_only_equal": all(torch.equal(v, everywhere[k]) for k, v in rank0_only.items()),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))


# -------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    from multiprocess_launch import run_two_rank_script

    out = tmp_path_factory.mktemp("fsdp_mp")
    log = run_two_rank_script(Path(__file__), out, TIMEOUT_S, "2-process FSDP run")
    results = []
    for r in range(WORLD_SIZE):
        path = out / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote no result:\n{log[-4000:]}"
        results.append({**json.loads(path.read_text()), "out": str(out)})
    return results


def single_process(tied: bool) -> list[dict[str, Any]]:
    """The oracle: the same steps on the full batch in one process (no FSDP, W = 1)."""
    from entropyctl.controllers import create_controller
    from entropyctl.controllers.base import GroupOutcome
    from entropyctl.trainer.stats import EntropyStats

    policy = build_policy(tied)
    clip = CLIPS[0 if tied else 1]
    opt = torch.optim.SGD(policy.parameters(), lr=LR)
    controller = create_controller(CONTROLLER)
    data = batch()
    n = int(data["comp"].response_mask.sum())
    rows = []
    for step in range(STEPS):
        plan = controller.plan(GroupOutcome(torch.tensor(ACCURACY), GROUP, step))

        def backward(loss: torch.Tensor) -> None:
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), clip)
            opt.step()

        out = sgd_step(policy, opt, data, plan, n, 1, backward)
        stats = EntropyStats(LEVELS)
        stats.add(
            out.entropy.detach(), torch.ones_like(out.entropy, dtype=torch.bool), bucket=levels_of(data)
        )
        stats.reduce(None)
        reading = stats.reading(step)
        controller.observe(reading)
        rows.append(
            {
                "params": {k: v.detach().clone() for k, v in policy.state_dict().items()},
                "reading": [reading.mean_entropy, reading.tokens],
                "controller": controller.state_dict(),
            }
        )
    return rows


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("which", [0, 1], ids=["tied", "untied"])
def test_fsdp_steps_equal_one_process_on_the_full_batch(ranks: list[dict[str, Any]], which: int) -> None:
    want = single_process(tied=which == 0)
    initial = build_policy(which == 0).state_dict()
    for r in ranks:
        assert r["world_size"] == WORLD_SIZE and r["backend"] == "gloo"
        assert all(s["sharded"] == [True, True] for s in r["steps"])
    for step, oracle in enumerate(want):
        got = [r["steps"][step]["params"][which] for r in ranks]
        assert got[0] == got[1], f"step {step}: ranks disagree on the full parameters"
        for name, value in oracle["params"].items():
            if name not in got[0]:  # the tied head is the embedding (one tensor in the state dict)
                assert which == 0 and name == "lm_head.weight"
                continue
            p = torch.tensor(got[0][name]).reshape(value.shape)
            # fp32: the sharded run sums the same terms in another order (per-rank partial sums,
            # reduce-scatter); 1e-6 is ~50x the largest difference seen (6e-8), the steps move >1e-2.
            torch.testing.assert_close(p, value, atol=1e-6, rtol=0, msg=f"step {step}: {name}")
        moved = max((oracle["params"][k] - initial[k]).abs().max().item() for k in initial)
        assert moved > 1e-2
    # clipping was active on the untied policy (global norm > its clip), so a per-rank norm would have
    # given other parameters; both ranks measured the same global norm
    norms = [r["steps"][0]["grad_norm"][which] for r in ranks]
    assert norms[0] == pytest.approx(norms[1], rel=1e-6)
    if CLIPS[which] is not None:
        assert norms[0] > CLIPS[which]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("which", [0, 1], ids=["tied", "untied"])
def test_fsdp_reading_is_global_and_controller_state_identical(
    ranks: list[dict[str, Any]], which: int
) -> None:
    want = single_process(tied=which == 0)
    for step, oracle in enumerate(want):
        rows = [r["steps"][step] for r in ranks]
        local = [row["local"][which] for row in rows]
        assert local[0][1] != local[1][1]  # uneven token counts
        exact = (local[0][0] + local[1][0]) / (local[0][1] + local[1][1])
        for row in rows:
            mean, tokens = row["reading"][which]
            assert tokens == local[0][1] + local[1][1] == oracle["reading"][1] == row["n_global"]
            assert mean == pytest.approx(exact, rel=1e-12)
            assert mean == pytest.approx(oracle["reading"][0], rel=1e-5)  # sharded vs single fp32 forward
        assert rows[0]["reading"][which] == rows[1]["reading"][which]
        assert rows[0]["controller"][which] == rows[1]["controller"][which]
        for key, value in oracle["controller"].items():
            got = rows[0]["controller"][which][key]
            assert got == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value), key
    first, last = ranks[0]["steps"][0]["controller"][which], ranks[0]["steps"][-1]["controller"][which]
    assert first != last  # the controller moved


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp_generate_gather_and_checkpoint(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["generated_shape"] == [GROUP, 6] and ranks[1]["generated_shape"] == [2 * GROUP, 3]
    assert ranks[0]["rank0_only_keys"] and ranks[0]["rank0_only_equal"]
    assert ranks[1]["rank0_only_keys"] == []
    checkpoint = torch.load(Path(ranks[0]["out"]) / "fsdp.ckpt", weights_only=True)
    final = ranks[0]["steps"][-1]["params"][0]
    for name, values in final.items():
        saved = checkpoint["state_dict"][f"policy.{name}"]
        assert not hasattr(saved, "placements")  # a full tensor, not a DTensor shard
        assert saved.reshape(-1).tolist() == values, name


@pytest.mark.slow
@pytest.mark.multiprocess
def test_entropyctl_train_with_fsdp(tmp_path: Path) -> None:
    """The real trainer (``entropyctl train``, HF rollouts on the sharded policy, last.ckpt), 2 ranks."""
    import csv

    from multiprocess_launch import run_train_cli
    from trainer_helpers import SMALL, TINY

    run_dir = tmp_path / "run"
    overrides = [
        *TINY,
        *SMALL,
        "trainer.devices=2",
        "trainer.strategy=fsdp",
        "trainer.steps=3",
        # 5 held-out problems: shares of 3 and 2, and each generate is a collective under FSDP; the shorter
        # share is padded, else rank 1 waited in the count's all-reduce while rank 0 waited in generate
        "eval.n_prompts=5",
        "eval.batch_size=1",
    ]
    overrides += [
        "algorithm.mini_batches=2",
        "algorithm.micro_batch_size=5",  # 12 responses a mini-batch: three backwards, each reduce-scattered
        "controller.update=additive",
        "controller.eta=0.5",
        "controller.tau=0.9",
    ]
    run_train_cli(run_dir, overrides, timeout_s=TIMEOUT_S)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    ranks = [json.loads((run_dir / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["parameter_sha256"] == ranks[1]["parameter_sha256"]  # the gathered full weights
    assert ranks[0]["controller_state"] == ranks[1]["controller_state"] == summary["controller_state"]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    for step, row in enumerate(rows):
        local = [ranks[r]["local_steps"][step] for r in (0, 1)]
        assert local[0]["prompts"] != local[1]["prompts"]
        tokens = local[0]["tokens"] + local[1]["tokens"]
        exact = (local[0]["entropy_sum"] + local[1]["entropy_sum"]) / tokens
        assert float(row["entropy"]) == pytest.approx(exact, rel=1e-12)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert all(type(t) is torch.Tensor for t in checkpoint["state_dict"].values())  # full tensors
    assert checkpoint["entropy_controller"] == summary["controller_state"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp_with_token_micro_batches_and_the_kl_in_the_reward(tmp_path: Path) -> None:
    """Micro-batches cut by tokens differ in number between the ranks' shares, and under FSDP every forward
    and backward is a collective: the ranks cut to the same count (else the run hangs until the timeout),
    for the update and for the KL in the reward's pass; the run finishes with the same weights on both."""
    import csv

    from multiprocess_launch import run_train_cli
    from trainer_helpers import SMALL, TINY

    run_dir = tmp_path / "run"
    overrides = [*TINY, *SMALL, "trainer.devices=2", "trainer.strategy=fsdp", "trainer.steps=2"]
    overrides += ["eval.before=false", "eval.after=false", "algorithm.mini_batches=2"]
    overrides += ["algorithm.micro_batch_tokens=40", "algorithm.kl_reward_coef=0.01"]
    run_train_cli(run_dir, overrides, timeout_s=TIMEOUT_S)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2
    ranks = [json.loads((run_dir / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["parameter_sha256"] == ranks[1]["parameter_sha256"]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["kl_reward"]) for r in rows][0] == 0.0 and float(rows[1]["kl_reward"]) != 0.0
    # per step: one cut (the KL pass reads the update's own micro-batches), as cut on its rank and as run
    # (the most of both)
    cuts = [[step["micro_batches"] for step in rank["local_steps"]] for rank in ranks]
    assert all(len(step) == 1 for rank in cuts for step in rank)
    differed = False
    for step0, step1 in zip(*cuts, strict=True):
        for a, b in zip(step0, step1, strict=True):
            assert a["run"] == b["run"] == [max(x, y) for x, y in zip(a["cut"], b["cut"], strict=True)]
            differed |= a["cut"] != b["cut"]
    assert differed  # the ranks' shares were cut into different counts: the split was exercised


# ------------------------------------------------------------------------------ in-process checks
def test_sharding_plan_of_the_tiny_policy() -> None:
    from entropyctl.trainer.fsdp import sharding_plan

    assert sharding_plan(build_policy(True)) == ["model.layers.0", "model.layers.1", ""]


def test_fsdp_config_and_strategy() -> None:
    from trainer_helpers import tiny_config

    from entropyctl.trainer.fsdp import FSDPPolicyStrategy
    from entropyctl.trainer.run import _strategy
    from entropyctl.validation import ConfigError

    config = tiny_config("trainer.devices=2", "trainer.strategy=fsdp", "eval.n_prompts=6")
    strategy = _strategy(config)
    assert isinstance(strategy, FSDPPolicyStrategy) and strategy.process_group_backend == "gloo"
    with pytest.raises(ConfigError) as err:
        _strategy(tiny_config("trainer.strategy=fsdp", "rollout.dynamic_sampling=true"))
    lines = err.value.errors
    assert len(lines) == 2 and "devices >= 2" in lines[0] and "dynamic_sampling" in lines[1]
    # any held-out size: a rank with a shorter share pads it (every rank makes as many generate calls)
    _strategy(tiny_config("trainer.devices=2", "trainer.strategy=fsdp", "eval.n_prompts=5"))
    with pytest.raises(ConfigError, match="rollout.engine=hf only"):
        _strategy(
            tiny_config(
                "trainer.devices=2", "trainer.strategy=fsdp", "eval.n_prompts=6", "rollout.engine=vllm"
            )
        )
    # and before a run directory is written (or a policy and an engine built)
    from entropyctl.trainer.run import run_training

    run_dir = Path(tempfile.mkdtemp()) / "run"
    with pytest.raises(ConfigError, match="rollout.engine=hf only"):
        run_training(
            tiny_config(
                "trainer.devices=2", "trainer.strategy=fsdp", "eval.n_prompts=6", "rollout.engine=vllm"
            ),
            run_dir,
        )
    assert not run_dir.exists()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    worker(Path(sys.argv[1]))
