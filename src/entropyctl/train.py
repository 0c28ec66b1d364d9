"""`entropyctl train`: resolve a run config, build the pieces, run Lightning, write the run directory.

Run directory (read by `entropyctl ablate` / `report`)::

    config.yaml      the resolved RunConfig
    metrics.csv      one row per RLVR step (columns: integrations.lightning.metric_columns)
    summary.json     {"status", "steps", "wall_time_s", "final_entropy", "h0", "alpha",
                      "before": EVAL, "after": EVAL, ...}; "status" is "running" until the end
    checkpoints/     step-NNNNNN.ckpt every trainer.checkpoint_every steps, and last.ckpt
    tensorboard/     when tensorboard is installed

Multi-process (``trainer.devices > 1``): Lightning's ``ddp`` strategy re-launches this very command
once per extra rank, so everything before ``Trainer.fit`` runs in every process (the warm-start cache is
built by rank 0 before the others start). The run directory reaches the other ranks through the
``ENTROPYCTL_RUN_DIR`` environment variable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from entropyctl.config import RunConfig, load_run_config

__all__ = [
    "run_training",
    "build_module",
    "parameter_checksum",
    "resolve_run_dir",
    "build_data",
    "build_prompt_encoder",
    "RUN_DIR_ENV",
]

RUN_DIR_ENV = "ENTROPYCTL_RUN_DIR"


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def resolve_run_dir(config: RunConfig, out: str | Path | None = None) -> Path:
    """``out``, else ``$ENTROPYCTL_RUN_DIR`` (set for DDP children), else ``output_dir/run_name``
    (``run_name`` default: ``<time>-<controller>``)."""
    if out is not None:
        return Path(out)
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    name = config.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{config.controller.name}"
    return Path(config.output_dir) / name


def build_data(config: RunConfig) -> tuple[Any, list[Any]]:
    """(training PromptSampler, held-out problems) for ``config.data`` and ``config.eval``."""
    from entropyctl.integrations.lightning import PromptSampler

    d, e = config.data, config.eval
    if d.source == "synthetic":
        from entropyctl.data.synthetic import SyntheticArithmetic

        task = SyntheticArithmetic(**_level_kwargs(d.levels, d.weights), seed=d.seed)
        sampler = PromptSampler(task.sample, task.levels, config.seed)
        # Held-out: balanced over levels (difficulty-resolved pass@k), disjoint from training prompts.
        heldout: list[Any] = []
        per_level, extra = divmod(e.n_prompts, len(task.levels))
        for i, level in enumerate(task.levels):
            count = per_level + (1 if i < extra else 0)
            if count:
                heldout += SyntheticArithmetic(levels=[level], seed=d.seed).held_out(
                    count, seed=d.seed + level
                )
        return sampler, heldout
    from entropyctl.data.loaders import load_math_dataset

    assert d.path is not None
    rows = list(load_math_dataset(d.path, **d.options))
    if d.eval_path:
        heldout = list(load_math_dataset(d.eval_path, **d.options))[: e.n_prompts]
        train = rows
    else:
        if e.n_prompts >= len(rows):
            raise ValueError(
                f"data.path={d.path!r} has {len(rows)} rows; eval.n_prompts={e.n_prompts} "
                "leaves none for training (set data.eval_path or lower eval.n_prompts)"
            )
        train, heldout = (
            (rows[: len(rows) - e.n_prompts], rows[len(rows) - e.n_prompts :]) if e.n_prompts else (rows, [])
        )
    return PromptSampler.from_list(train, config.seed), heldout


def _level_kwargs(levels: Sequence[int] | None, weights: Sequence[float] | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if levels is not None:
        kwargs["levels"] = list(levels)
    if weights is not None:
        kwargs["weights"] = list(weights)
    return kwargs


def build_prompt_encoder(config: RunConfig, tokenizer: Any) -> Any:
    """``text -> token ids``: the data template, then the chat template if asked. Plain prompts go
    through ``tokenizer(text)`` (the tiny tokenizer prepends ``<bos>``, as in the warm start)."""
    from entropyctl.data.templates import apply_chat_template, format_prompt

    d = config.data

    def encode(text: str) -> list[int]:
        text = format_prompt(d.template, text)
        if d.chat_template:
            text = apply_chat_template(tokenizer, text, d.system)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(tokenizer(text)["input_ids"])

    return encode


def build_engine(config: RunConfig, model: Any, tokenizer: Any) -> Any:
    if config.rollout.engine == "hf":
        from entropyctl.integrations.transformers import HFRolloutEngine

        return HFRolloutEngine(model, tokenizer)
    # rollout.options is the engine's VLLMConfig; vllm itself is imported (with a clear error) by the engine
    from entropyctl.integrations.vllm import VLLMEngine

    return VLLMEngine.from_policy(model, tokenizer, dict(config.rollout.options))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def parameter_checksum(model: Any) -> str:
    """SHA-256 over every parameter's name and bytes (identical parameters ⇔ identical digest)."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _strategy(config: RunConfig) -> Any:
    t = config.trainer
    if t.devices == 1 and t.strategy == "auto":
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    backend = "gloo" if t.accelerator == "cpu" else None
    if t.strategy == "ddp_spawn":
        return DDPStrategy(process_group_backend=backend, start_method="spawn")
    return DDPStrategy(process_group_backend=backend, start_method="popen")


def build_module(config: RunConfig, run_dir: str | Path | None = None) -> Any:
    """The policy (warm-started / loaded), rollout engine, reward, data and controller of ``config``,
    assembled into an :class:`~entropyctl.integrations.lightning.RLVRModule` (no Trainer yet)."""
    from entropyctl.controllers.registry import create_controller
    from entropyctl.integrations.lightning import RLVRModule
    from entropyctl.integrations.transformers import load_policy
    from entropyctl.rewards import get_reward

    policy, tokenizer = load_policy(config.model)
    engine = build_engine(config, policy, tokenizer)
    reward = get_reward(config.reward.name, **config.reward.options)
    sampler, heldout = build_data(config)
    controller = create_controller(config.controller)
    return RLVRModule(
        config,
        policy,
        tokenizer,
        engine,
        reward,
        sampler,
        controller,
        heldout,
        run_dir,
        encode_prompt=build_prompt_encoder(config, tokenizer),
    )


def run_training(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: str | Path | None = None,
    progress_bar: bool | None = None,
    callbacks: Sequence[Any] = (),
    log: Any = print,
) -> dict[str, Any]:
    """Train with ``config``, writing the run directory; returns the summary (also ``summary.json``).

    ``resume``: a checkpoint path, or ``"auto"`` to continue from ``run_dir/checkpoints/last.ckpt`` when it
    exists. ``progress_bar``: overrides ``trainer.progress_bar``. ``callbacks``: extra Lightning callbacks.
    With several processes, every rank also writes ``ranks/rank<r>.json`` (its controller state, a checksum
    of its parameters, and its local per-step statistics) so that their agreement can be checked.
    """
    import lightning.pytorch as pl
    import torch

    from entropyctl.integrations.lightning import RLVRCheckpoint

    started = time.perf_counter()
    cpu_started = time.process_time()
    run_dir = Path(run_dir)
    rank0 = _local_rank() == 0
    t = config.trainer
    if t.devices > 1:  # DDP children re-run the command line: they re-resolve the same directory
        os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / "summary.json"
    if rank0:
        (run_dir / "config.yaml").write_text(config.to_yaml())
        _write_json(summary_path, {"status": "running", "steps": 0})
    threads = t.threads or max(1, (os.cpu_count() or 1) // t.devices)
    torch.set_num_threads(threads)
    pl.seed_everything(config.seed, workers=False, verbose=False)

    t_warm = time.perf_counter()
    module = build_module(config, run_dir)
    policy, controller, reward = module.policy, module.controller, module.reward
    warm_start_s = time.perf_counter() - t_warm
    if rank0:
        log(
            f"[entropyctl] policy ready in {warm_start_s:.1f} s ({sum(p.numel() for p in policy.parameters()):,} "
            f"parameters); run dir {run_dir}"
        )

    loggers: Any = False
    if t.tensorboard and importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers = TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    ckpt_dir = run_dir / "checkpoints"
    show_bar = t.progress_bar if progress_bar is None else progress_bar
    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=_strategy(config),
        precision=t.precision,  # type: ignore[arg-type]
        max_steps=t.steps * module.optimizer_steps_per_rlvr_step,
        logger=loggers,
        callbacks=[RLVRCheckpoint(ckpt_dir, t.checkpoint_every, t.steps, save_last=t.save_last), *callbacks],
        enable_checkpointing=False,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=str(run_dir),
    )
    ckpt_path: str | None = None
    if resume == "auto":
        last = ckpt_dir / "last.ckpt"
        ckpt_path = str(last) if last.exists() else None
    elif resume is not None:
        ckpt_path = str(resume)
    t_fit = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
        # The policy stays in eval mode on purpose: no dropout, so training log-probs match the sampler's.
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        try:
            trainer.fit(module, ckpt_path=ckpt_path)
        except BaseException as err:
            if trainer.global_rank == 0:
                _write_json(
                    summary_path,
                    {"status": "failed", "steps": module.rlvr_step, "error": f"{type(err).__name__}: {err}"},
                )
            raise
        finally:
            with contextlib.suppress(Exception):
                reward.close()
            close_engine = getattr(module.engine, "close", None)
            if close_engine is not None:
                with contextlib.suppress(Exception):
                    close_engine()
            if rank0:
                os.environ.pop(RUN_DIR_ENV, None)
    fit_s = time.perf_counter() - t_fit
    cm = controller.metrics()
    last = module.last_metrics
    finished = module.rlvr_step >= t.steps
    summary: dict[str, Any] = {
        "status": "finished" if finished else "stopped",
        "steps": module.rlvr_step,
        "controller": config.controller.name,
        "seed": config.seed,
        "world_size": trainer.world_size,
        "wall_time_s": time.perf_counter() - started,
        # CPU seconds of this process (all its threads): with 1 thread, ≈ the wall time on an idle core
        "cpu_time_s": time.process_time() - cpu_started,
        "loadavg": list(os.getloadavg()),
        "time_warm_start_s": warm_start_s,
        "time_fit_s": fit_s,
        "time_eval_s": module.eval_seconds,
        "time_rl_s": fit_s - module.eval_seconds,
        "final_entropy": _finite_or_none(last.get("entropy")),
        "h0": _finite_or_none(cm.get("h0")),
        "alpha": _finite_or_none(cm.get("alpha")),
        "target_entropy": _finite_or_none(cm.get("target_entropy")),
        "final_reward": _finite_or_none(last.get("reward")),
        "controller_metrics": {k: _finite_or_none(v) for k, v in cm.items()},
        "controller_state": controller.state_dict(),
        "before": module.eval_results.get("before"),
        "after": module.eval_results.get("after"),
        "evals": module.eval_results,
        "threads": threads,
    }
    if trainer.world_size > 1:
        (run_dir / "ranks").mkdir(exist_ok=True)
        _write_json(
            run_dir / "ranks" / f"rank{trainer.global_rank}.json",
            {
                "rank": trainer.global_rank,
                "controller_state": controller.state_dict(),
                "parameter_sha256": parameter_checksum(policy),
                "local_steps": module.local_history,
            },
        )
    if trainer.global_rank == 0:
        _write_json(summary_path, summary)
        log(
            f"[entropyctl] {summary['status']}: {module.rlvr_step} steps in {summary['wall_time_s']:.0f} s "
            f"(warm start {warm_start_s:.0f} s); summary in {summary_path}"
        )
    return summary


def train_from_cli(
    config_path: str | None,
    overrides: Sequence[str],
    out: str | None,
    *,
    resume: str | None = None,
    threads: int | None = None,
    progress_bar: bool | None = None,
) -> dict[str, Any]:
    """What `entropyctl train` does (cli.py parses the arguments)."""
    extra = list(overrides)
    if threads is not None:
        extra.append(f"trainer.threads={threads}")
    config = load_run_config(config_path, extra)
    run_dir = resolve_run_dir(config, out)
    return run_training(config, run_dir, resume=resume, progress_bar=progress_bar)


def run_train_cli(args: Any) -> int:
    """`entropyctl train` (arguments parsed by cli.py)."""
    summary = train_from_cli(
        args.config,
        args.overrides,
        args.out,
        resume=args.resume,
        threads=args.threads,
        progress_bar=args.progress_bar,
    )
    return 0 if summary.get("status") == "finished" else 1
