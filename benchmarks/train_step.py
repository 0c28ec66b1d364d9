"""Seconds per RLVR step of the tiny model at the embedded default's shape before 2026-12-03 (32 prompts × 8
completions, one PPO epoch; pinned here so the committed results stay comparable), split into rollout,
reward and update, beside bare baselines measured in the same run on the same model and tokens:

- bare generate: ``model.generate`` of the same prompts × G with the same sampling settings and seed
  (no position ids, no log-prob recording, no decoding);
- bare update: one forward + backward + AdamW step on the step's own completions with a plain
  full-logits loss ``−mean(log p(token))`` on a copy of the policy (no fused path, no PPO bookkeeping).

Targets (measured, not asserted): rollout ≤ 1.2× bare generate, update ≤ 1.3× bare fwd+bwd+step,
reward ≤ 5% of the step. Prints a table and writes JSON (default benchmarks/results/train_step.json).

    python benchmarks/train_step.py [--steps 8] [--warmup 2] [--threads 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from entropyctl.config import load_run_config
from entropyctl.trainer.run import build_module


class _Bare(pl.Callback):
    """After each RLVR step: time the bare baselines on that step's prompts and completions."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.rows: list[dict[str, float]] = []
        self.copy: torch.nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        cfg = module.config
        result = outputs["step"]  # the step's StepResult (entropyctl.trainer.phases)
        problems = result.collected.problems
        comp = result.collected.completions
        G = cfg.rollout.group_size
        policy, tok = module.policy, module.tokenizer
        if self.copy is None:
            self.copy = copy.deepcopy(policy)
            self.opt = torch.optim.AdamW(self.copy.parameters(), lr=cfg.optim.lr)

        # bare generate: same prompts, same settings, same seed stream
        prompts = [module.encode_prompt(p.prompt) for p in problems]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts]).repeat_interleave(
            G, 0
        )
        mask = torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]
        mask = mask.long().repeat_interleave(G, 0)
        policy.eval()
        torch.manual_seed(module.rlvr_step)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = policy.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=cfg.rollout.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=cfg.rollout.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        bare_generate = time.perf_counter() - t0
        generated = int((out[:, width:] != tok.pad_token_id).sum())

        # bare forward + backward + optimizer step on the step's own tokens, plain logits loss
        assert self.copy is not None and self.opt is not None
        input_ids = torch.cat([comp.prompt_ids, comp.response_ids], 1)
        attention = torch.cat([comp.prompt_mask, comp.response_mask], 1)
        lp = comp.prompt_ids.shape[1]
        t0 = time.perf_counter()
        logits = self.copy(input_ids=input_ids, attention_mask=attention).logits[:, lp - 1 : -1]
        logp = torch.log_softmax(logits.float() / cfg.rollout.temperature, -1)
        logp = logp.gather(-1, comp.response_ids.unsqueeze(-1)).squeeze(-1)
        m = comp.response_mask.float()
        loss = -(logp * m).sum() / m.sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.copy.parameters(), 1.0)
        self.opt.step()
        bare_update = time.perf_counter() - t0

        row = dict(result.row)
        if module.rlvr_step > self.warmup:
            self.rows.append(
                {
                    "step": module.rlvr_step,
                    "rollout": row["time_rollout"],
                    "reward": row["time_reward"],
                    "update": row["time_update"],
                    "step_total": row["time_step"],
                    "bare_generate": bare_generate,
                    "bare_update": bare_update,
                    "response_tokens": float(comp.response_mask.sum()),
                    "bare_generated_tokens": float(generated),
                }
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="measured steps (after the warm-up steps)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_run_config(
        None,
        [
            # the step this benchmark has measured since the first release (the embedded default
            # before 2026-12-03): 32 prompts x 8, up to 8 new tokens, one PPO epoch, all five levels
            "data.levels=[1,2,3,4,5]",
            "rollout.prompts_per_step=32",
            "rollout.max_new_tokens=8",
            "algorithm.ppo_epochs=1",
            "optim.lr=1e-4",
            "optim.warmup_steps=0",
            f"trainer.steps={args.steps + args.warmup}",
            "eval.before=false",
            "eval.after=false",
            "trainer.save_last=false",
            "trainer.progress_bar=false",
            *args.overrides,
        ],
    )
    load_before = os.getloadavg()
    module = build_module(config, None)
    bare = _Bare(args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=config.trainer.steps * module.optimizer_steps_per_rlvr_step,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[bare],
            default_root_dir=tmp,
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )
        cpu0 = time.process_time()
        trainer.fit(module)
        cpu_s = time.process_time() - cpu0
    module.reward.close()
    rows = bare.rows
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "step"}
    result = {
        "config": {
            "prompts_per_step": config.rollout.prompts_per_step,
            "group_size": config.rollout.group_size,
            "max_new_tokens": config.rollout.max_new_tokens,
            "model": config.model.model_dump(mode="json"),
            "parameters": sum(p.numel() for p in module.policy.parameters()),
            "fused": module.use_fused,
        },
        "conditions": {
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "process_cpu_seconds": cpu_s,
        },
        "median_seconds": med,
        "ratios": {
            "rollout_over_bare_generate": med["rollout"] / med["bare_generate"],
            "update_over_bare_update": med["update"] / med["bare_update"],
            "reward_share_of_step": med["reward"] / med["step_total"],
        },
        "targets": {
            "rollout_over_bare_generate": 1.2,
            "update_over_bare_update": 1.3,
            "reward_share_of_step": 0.05,
        },
        "steps": rows,
    }
    print(
        f"RLVR step on the embedded default: {config.rollout.prompts_per_step} prompts × "
        f"{config.rollout.group_size}, {result['config']['parameters']:,} params, {args.threads} threads, "
        f"torch {torch.__version__}, load avg {load_before[0]:.1f} → {os.getloadavg()[0]:.1f}"
    )
    print(f"{'part':<28}{'median s':>10}")
    for key in ("rollout", "reward", "update", "step_total", "bare_generate", "bare_update"):
        print(f"{key:<28}{med[key]:>10.3f}")
    print(
        f"{'response tokens / step':<28}{med['response_tokens']:>10.0f}  (bare generate: "
        f"{med['bare_generated_tokens']:.0f})"
    )
    for key, value in result["ratios"].items():
        print(f"{key:<28}{value:>10.2f}  (target {'≤'} {result['targets'][key]})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
