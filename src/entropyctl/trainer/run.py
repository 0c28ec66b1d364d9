"""`entropyctl train`: resolve a run config, build the pieces, run Lightning, write the run directory.

Run directory (read by `entropyctl ablate` / `report`)::

    config.yaml      the resolved RunConfig
    metrics.csv      one row per RLVR step (columns: trainer.run_dir.metric_columns)
    summary.json     trainer.run_dir.Summary: {"status", "steps", "wall_time_s", "final_entropy", "h0",
                      "alpha", "before": EVAL, "after": EVAL, ...}; "status" is "running" until the end
    checkpoints/     step-NNNNNN.ckpt every trainer.checkpoint_every steps, and last.ckpt
    tensorboard/     when tensorboard is installed
    completions.jsonl  with trainer.completions_every: step 1's and every N-th step's rollouts, one per line

Multi-process (``trainer.devices > 1``): Lightning's ``ddp`` strategy re-launches this very command
once per extra rank, so everything before ``Trainer.fit`` runs in every process (the warm-start cache is
built by rank 0 before the others start). The run directory reaches the other ranks through the
``ENTROPYCTL_RUN_DIR`` environment variable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from entropyctl.config import RunConfig
from entropyctl.trainer.run_dir import (
    FIXED_ON_RESUME,
    LOCK_FILE,
    ResumeMismatchError,
    RunDirError,
    RunLock,
    RunStatus,
    RunStopped,
    StopSignals,
    Summary,
    fingerprint_changes,
    prepare_run_dir,
    read_band_health,
    read_metrics,
    read_resumes,
    record_resume,
    remove_stale_temp_files,
    run_fingerprint,
    step_checkpoints,
    write_json_atomic,
)

__all__ = [
    "run_training",
    "build_module",
    "parameter_checksum",
    "resolve_run_dir",
    "check_resume_target",
    "build_data",
    "build_prompt_encoder",
    "RUN_DIR_ENV",
    "check_resume",
    "build_run_data",
    "check_response_fits",
    "fit_prompts_to_context",
]

RUN_DIR_ENV = "ENTROPYCTL_RUN_DIR"


def global_rank(devices: int) -> int:
    """This process's global rank before the Trainer exists (the Trainer's ``global_rank`` after):
    ``RANK`` when a launcher set it, else ``NODE_RANK x devices + LOCAL_RANK`` as Lightning's launcher
    sets them (0 in a single process)."""
    if os.environ.get("RANK"):
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK") or 0) * devices + int(os.environ.get("LOCAL_RANK") or 0)


def resolve_run_dir(config: RunConfig, out: str | Path | None = None) -> Path:
    """``out``, else ``$ENTROPYCTL_RUN_DIR`` (set for DDP children), else ``output_dir/run_name``, else a new
    ``output_dir/<time>-<controller>``, made here (``-2``, ``-3``, ... when runs start in the same second)."""
    if out is not None:
        return Path(out).expanduser()
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    parent = Path(config.output_dir).expanduser()  # `output_dir: ~/runs` made a folder named '~'
    if config.run_name:
        return parent / config.run_name
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{config.controller.name}"
    parent.mkdir(parents=True, exist_ok=True)
    for k in itertools.count(1):
        candidate = parent / (stamp if k == 1 else f"{stamp}-{k}")
        with contextlib.suppress(FileExistsError):
            candidate.mkdir()  # made, not just looked for: two runs of one second get two directories
            return candidate
    raise AssertionError("unreachable")


def check_resume_target(config: RunConfig, out: str | Path | None, resume: str | Path | None) -> None:
    """``--resume auto`` continues the run in ``--out`` (or ``output_dir/run_name``): without either, the run
    directory is a new time-stamped one, which holds nothing to continue (it started a new run, exit 0)."""
    if resume == "auto" and out is None and config.run_name is None and not os.environ.get(RUN_DIR_ENV):
        raise RunDirError(
            "--resume auto: continues the run in --out (or output_dir/run_name), and neither is given: a new "
            "time-stamped directory has nothing to continue; pass --out RUN_DIR"
        )


def build_data(
    config: RunConfig, fit: Callable[[list[Any]], list[Any]] | None = None, *, held_out_only: bool = False
) -> tuple[Any, list[Any]]:
    """(training PromptSampler, held-out problems) for ``config.data`` and ``config.eval``.

    File data sets: ``fit`` (e.g. :func:`fit_prompts_to_context`) checks or filters the rows of each
    file before use; prompts repeated in training, or shared by training and held-out rows, are warned
    about. ``held_out_only`` with a ``data.eval_path``: the held-out sets alone, ``data.path`` unread
    (the sampler is None)."""
    from entropyctl.trainer.sampler import PromptSampler

    d, e = config.data, config.eval
    if d.source == "reasoning_gym":
        task = reasoning_gym_task(config)
        return PromptSampler(task.sample, task.levels, config.seed), task.held_out()
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
    from entropyctl.data.loaders import check_overlap, load_math_dataset, split_held_out

    assert d.path is not None
    fit = fit or (lambda problems: problems)
    options = {**d.options, "keep_columns": rewards_take_info(config)}
    if d.eval_path:
        heldout = held_out_files(d.eval_files(), e.n_prompts, isinstance(d.eval_path, list), options, fit)
        if held_out_only:
            return None, heldout
    rows = fit(list(load_math_dataset(d.path, **options)))
    if d.eval_path:
        train = rows
    else:
        if e.n_prompts >= len(rows):
            raise ValueError(
                f"data.path={d.path!r} has {len(rows)} rows; eval.n_prompts={e.n_prompts} "
                "leaves none for training (set data.eval_path or lower eval.n_prompts)"
            )
        # a seeded random draw of eval.n_prompts rows (data.seed), not the file's last rows
        train, heldout = split_held_out(rows, e.n_prompts, d.seed)
    for line in check_overlap(train, heldout):
        warnings.warn(f"data: {line}", UserWarning, stacklevel=2)
    return PromptSampler.from_list(train, config.seed, d.order), heldout


def held_out_files(
    paths: Sequence[str],
    n_prompts: int | None,
    named: bool,
    options: Mapping[str, Any],
    fit: Callable[[list[Any]], list[Any]],
) -> list[Any]:
    """The first ``n_prompts`` rows of each held-out file (after ``fit``; None: every row); ``named``: each problem's
    ``meta["eval_set"]`` is its file's set name (:func:`~entropyctl.config.run.eval_set_names`), which the
    evaluation reports pass@k by."""
    from entropyctl.config.run import eval_set_names
    from entropyctl.data.loaders import load_math_dataset

    heldout: list[Any] = []
    for path, name in zip(paths, eval_set_names(paths), strict=True):
        rows = list(load_math_dataset(path, **options))
        if named:  # rows named by the path as given: two sets' test.jsonl:3 would read alike in messages
            rows = [
                replace(
                    p, id=f"{path}:{p.meta['location']}", meta={**p.meta, "source": path, "eval_set": name}
                )
                for p in rows
            ]
        rows = fit(rows)[:n_prompts]
        if named and not rows:
            raise ValueError(f"data.eval_path: {path} (held-out set {name!r}) has no rows left to evaluate")
        heldout += rows
    return heldout


def rewards_take_info(config: RunConfig) -> bool:
    """Whether the verifier or a shaping reward of ``config`` reads each row's ``info`` (the loader then
    keeps the rows' other columns)."""
    from entropyctl.rewards.registry import reward_takes_info

    return any(
        reward_takes_info(name) for name in [config.reward.name, *(s.name for s in config.reward.shaping)]
    )


def run_context(config: RunConfig, policy: Any) -> tuple[int | None, str]:
    """(tokens, what sets them) a prompt and its response must fit in: the model's context, or the vllm
    engine's ``rollout.options.max_model_len`` when that is shorter (None: no limit known)."""
    context = getattr(getattr(policy, "config", None), "max_position_embeddings", None)
    if config.rollout.engine == "vllm":
        from entropyctl.rollout.vllm import VLLMConfig

        engine_len = VLLMConfig.model_validate(dict(config.rollout.options)).max_model_len
        if context is None or engine_len < context:
            return engine_len, "rollout.options.max_model_len"
    return context, "the model's context"


def check_response_fits(config: RunConfig, context: int | None, limit: str = "the model's context") -> None:
    """A response of ``rollout.max_new_tokens`` (or ``eval.max_new_tokens``) must leave room for a prompt
    in ``context`` tokens (``limit`` says what sets them), whatever the data source (a
    :class:`ConfigError` naming the field)."""
    from entropyctl.config import ConfigError

    if context is None:
        return
    for field, value in (
        ("rollout.max_new_tokens", config.rollout.max_new_tokens),
        ("eval.max_new_tokens", config.eval.max_new_tokens),
    ):
        if value is not None and value >= context:
            raise ConfigError(
                f"{field}: responses of up to {value} tokens leave no room for a prompt in {limit} of "
                f"{context} tokens (got {value})"
            )


#: what the tiny model makes of characters outside its task's alphabet (a warning: a run on such data
#: still runs, e.g. to exercise the plumbing, but learns from <unk>s)
UNREADABLE = (
    "the model's tokenizer reads characters of it as <unk> (the tiny model knows only its task's "
    "characters): it trains on <unk>s; write the prompts in those characters, or train a pretrained model "
    "(model.kind: gguf or hf)"
)


def unreadable_tokens(ids: Sequence[int], unknown_id: int | None) -> int:
    """How many of a prompt's token ids are the tokenizer's unknown token (0 for a tokenizer without one)."""
    return 0 if unknown_id is None else sum(1 for i in ids if i == unknown_id)


def warn_unreadable(
    problems: Sequence[Any], ids: Sequence[Sequence[int]], unknown_id: int | None, what: str
) -> None:
    """One warning when prompts of ``problems`` (``ids``: each one's tokens, templated as the model sees
    them) hold characters the tokenizer reads as ``unknown_id``: how many, and the first one's row."""
    if unknown_id is None:
        return
    bad = [p for p, tokens in zip(problems, ids, strict=True) if unreadable_tokens(tokens, unknown_id)]
    if bad:
        meta = getattr(bad[0], "meta", None) or {}
        where = f"{meta['source']}:{meta['location']}" if meta.get("location") else repr(bad[0].prompt[:40])
        warnings.warn(
            f"data: {len(bad)} of {len(problems)} {what} (e.g. {where}): {UNREADABLE}",
            UserWarning,
            stacklevel=3,
        )


def fit_prompts_to_context(
    config: RunConfig,
    encode: Callable[[str], list[int]],
    context: int | None,
    unknown_id: int | None = None,
    limit: str = "the model's context",
) -> Callable[[list[Any]], list[Any]]:
    """A ``fit`` for :func:`build_data`: every prompt (templated, as the model sees it) plus the longest
    response (``rollout.max_new_tokens``, ``eval.max_new_tokens``) must fit in ``context`` tokens (``limit``:
    what sets them, :func:`run_context`), and
    the prompt must be at most ``data.max_prompt_tokens`` when that is set.
    ``data.overlong_prompts``: ``error`` (a :class:`DatasetError` naming ``file:line``, the prompt's
    tokens and the limit) or ``drop`` (such rows are left out, with a warning counting them). Prompts
    with characters the tokenizer reads as ``unknown_id`` are warned of (:func:`warn_unreadable`)."""
    from entropyctl.data.loaders import DatasetError

    r, e = config.rollout, config.eval
    response = max(r.max_new_tokens, e.max_new_tokens or 0)
    cap = config.data.max_prompt_tokens
    budget = None if context is None else context - response
    if cap is not None and (budget is None or cap < budget):
        budget, why = cap, f"data.max_prompt_tokens is {cap}"
    else:
        why = f"with responses of up to {response} tokens {limit} of {context} leaves {budget}"

    def fit(problems: list[Any]) -> list[Any]:
        source = (getattr(problems[0], "meta", None) or {}).get("source", "data") if problems else "data"
        if unknown_id is None and budget is None:
            return problems
        ids = [encode(problem.prompt) for problem in problems]  # each prompt encoded once, for both checks
        warn_unreadable(problems, ids, unknown_id, f"prompts of {source}")
        if budget is None:
            return problems
        kept = []
        for problem, prompt_ids in zip(problems, ids, strict=True):
            tokens = len(prompt_ids)
            if tokens <= budget:
                kept.append(problem)
                continue
            meta = getattr(problem, "meta", None) or {}
            if config.data.overlong_prompts == "error":
                raise DatasetError(
                    meta.get("source", "data"),
                    meta.get("location"),
                    f"prompt is {tokens} tokens; {why} (shorten it, raise the limit, or set "
                    "data.overlong_prompts=drop)",
                )
        if len(kept) < len(problems):
            warnings.warn(
                f"data: dropped {len(problems) - len(kept)} of {len(problems)} rows of {source} whose prompt "
                f"is over {budget} tokens ({why})",
                UserWarning,
                stacklevel=2,
            )
        return kept

    return fit


def reasoning_gym_task(config: RunConfig) -> Any:
    """The :class:`~entropyctl.data.reasoning_gym.ReasoningGymTask` of ``config.data`` (its held-out split
    holds ``eval.n_prompts`` problems)."""
    from entropyctl.data.reasoning_gym import ReasoningGymTask

    d = config.data
    assert d.name is not None and not isinstance(d.levels, list)  # the config validator guarantees it
    return ReasoningGymTask(
        d.name,
        d.options,
        d.levels,
        d.weights,
        d.seed,
        held_out_size=config.eval.n_prompts,
        strip_prefix=d.strip_prefix,
    )


def _level_kwargs(levels: Iterable[int] | None, weights: Sequence[float] | None) -> dict[str, Any]:
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
            text = apply_chat_template(tokenizer, text, d.system, d.chat_template_kwargs)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(tokenizer(text)["input_ids"])

    return encode


def build_engine(config: RunConfig, model: Any, tokenizer: Any) -> Any:
    if config.rollout.engine == "hf":
        from entropyctl.rollout.hf import HFRolloutEngine

        return HFRolloutEngine(model, tokenizer)
    # rollout.options is the engine's VLLMConfig; vllm itself is imported (with a clear error) by the engine
    from entropyctl.rollout.vllm import VLLMEngine

    return VLLMEngine.from_policy(model, tokenizer, dict(config.rollout.options))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json_atomic(path, data)


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def parameter_checksum(model: Any) -> str:
    """SHA-256 over every parameter's name and bytes (identical parameters ⇔ identical digest); under
    FSDP the full tensors, so every rank must call it."""
    import hashlib

    import torch

    from entropyctl.trainer.fsdp import full_state_dict

    digest = hashlib.sha256()
    for name, param in sorted(full_state_dict(model).items()):  # FSDP shards: gathered (a collective)
        digest.update(name.encode())
        # the raw bytes, whatever the dtype (numpy has no bfloat16: .numpy() of a bf16 tensor raised at the
        # end of every multi-process bf16-true run)
        digest.update(param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Versions of the packages a run's numbers depend on (a warm start or a run that differs across
    machines with the same config is first checked against these)."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    names = ("entropyctl", "torch", "transformers", "lightning", "numpy", "reasoning-gym", "vllm")
    return {"python": platform.python_version(), **{name: version(name) for name in names}}


def _strategy(config: RunConfig) -> Any:
    t = config.trainer
    if t.strategy == "fsdp":
        from entropyctl.trainer.fsdp import fsdp_strategy

        return fsdp_strategy(config)
    if t.devices == 1 and t.strategy == "auto":
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    backend = "gloo" if t.accelerator == "cpu" else None
    return DDPStrategy(process_group_backend=backend, start_method="popen")


def build_run_data(
    config: RunConfig,
    policy: Any,
    tokenizer: Any,
    encode: Callable[[str], list[int]],
    *,
    held_out_only: bool = False,
) -> tuple[Any, list[Any]]:
    """:func:`build_data` with the checks that need the policy (the response must fit its context; file
    prompts too, or are dropped; prompts the tiny model cannot read are warned of): the training data and
    held-out split a run trains and is evaluated on, for the trainer and ``entropyctl evaluate`` alike
    (``held_out_only``: as in :func:`build_data`)."""
    context, limit = run_context(config, policy)
    check_response_fits(config, context, limit)
    # the char tokenizer's <unk> is a character it lacks; a pretrained tokenizer's may double as a special
    unknown_id = getattr(tokenizer, "unk_token_id", None) if config.model.kind == "tiny" else None
    fit = fit_prompts_to_context(config, encode, context, unknown_id, limit)
    sampler, heldout = build_data(config, fit, held_out_only=held_out_only)
    if config.data.source != "file" and unknown_id is not None:  # file rows: warned of by the fit
        ids = [encode(problem.prompt) for problem in heldout]
        warn_unreadable(heldout, ids, unknown_id, "held-out prompts as templated (data.template?)")
    return sampler, list(heldout)


def build_module(config: RunConfig, run_dir: str | Path | None = None) -> Any:
    """The policy (warm-started / loaded), rollout engine, reward, data and controller of ``config``,
    assembled into an :class:`~entropyctl.trainer.module.RLVRModule` (no Trainer yet)."""
    from entropyctl.controllers.registry import create_controller
    from entropyctl.models.loading import load_policy
    from entropyctl.rewards import get_reward
    from entropyctl.trainer.module import RLVRModule

    # the tiny model warm-starts on the task it will train on (an external task: its own characters)
    task = reasoning_gym_task(config) if config.data.source == "reasoning_gym" else None
    policy, tokenizer = load_policy(config.model, task=task)
    engine = build_engine(config, policy, tokenizer)
    reward = get_reward(config.reward.name, **config.reward.options)
    shaping = [get_reward(item.name, **item.options) for item in config.reward.shaping]
    encode = build_prompt_encoder(config, tokenizer)
    sampler, heldout = build_run_data(config, policy, tokenizer, encode)
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
        encode_prompt=encode,
        shaping_rewards=shaping,
    )


def _checkpoint_to_resume(resume: str | Path | None, ckpt_dir: Path) -> str | None:
    if resume == "auto":
        last = ckpt_dir / "last.ckpt"
        return str(last) if last.exists() else None
    if resume is not None and Path(resume).is_dir():  # a run directory, as evaluate and export take
        raise RunDirError(
            f"--resume {resume}: a directory, not a checkpoint file; --resume auto --out {resume} continues "
            f"that run from {Path(resume) / 'checkpoints' / 'last.ckpt'}, or name a checkpoint file"
        )
    if resume is not None and not Path(resume).is_file():
        raise RunDirError(f"--resume {resume}: no such checkpoint file")
    return None if resume is None else str(resume)


def check_resume(
    ckpt_path: str, fingerprint: dict[str, Any], *, allow_changes: bool, log: Any = print
) -> dict[str, Any]:
    """Compare the checkpoint's run fingerprint with this run's; raise :class:`ResumeMismatchError`
    listing every difference unless ``allow_changes``. Returns the record kept in the summary."""
    from entropyctl.trainer.checkpoints import CheckpointError, load_checkpoint

    try:
        checkpoint = load_checkpoint(ckpt_path, mmap=True)
    except CheckpointError as err:  # one line: which file, what is wrong, what to do
        raise RunDirError(f"--resume {err}") from None
    saved = checkpoint.get("run_fingerprint")
    if saved is None:
        changes = ["the checkpoint carries no run fingerprint (written by an older entropyctl); cannot check"]
    else:
        changes = fingerprint_changes(saved, fingerprint)
    record = {
        "checkpoint": ckpt_path,
        "step": int(checkpoint.get("rlvr", {}).get("step", 0)),
        # the run segment that wrote it (None: a checkpoint from before segments were recorded)
        "segment": checkpoint.get("rlvr", {}).get("segment"),
        # the policy's weights as the run started (its KL reference's, unless ref_sync_steps moved it)
        "initial_weights": checkpoint.get("rlvr", {}).get("initial_weights"),
        "allow_changes": allow_changes,
        "changes": changes,
        "changes_allowed": bool(changes and allow_changes),
    }
    fixed = [
        f"{line} ({FIXED_ON_RESUME[key]})"
        for line in changes
        for key in FIXED_ON_RESUME
        if line.startswith(f"{key}:")
    ]
    if fixed:
        raise ResumeMismatchError(
            f"--resume {ckpt_path}: a resume cannot change, even with --allow-resume-changes:\n  "
            + "\n  ".join(fixed)
        )
    if changes and not allow_changes:
        raise ResumeMismatchError(
            f"--resume {ckpt_path}: this run differs from the checkpoint's:\n  "
            + "\n  ".join(changes)
            + "\nresume with the checkpoint's config (its run dir's config.yaml), or pass "
            "--allow-resume-changes to continue anyway (recorded in summary.json)"
        )
    if changes:
        log("[entropyctl] resuming despite changes (--allow-resume-changes): " + "; ".join(changes))
    return record


def check_rows_reach(run_dir: Path, ckpt_path: str, step: int, segment: int | None = None) -> None:
    """A resume continues from a checkpoint whose step the run's ``metrics.csv`` reaches. Rows that end
    before it mean the checkpoint is of another branch of the run — a continuation from an earlier step
    checkpoint stopped before its next save, and left the first branch's ``last.ckpt`` — and continuing
    would splice the two (the rows between missing, the weights of the other branch): a
    :class:`RunDirError` naming a step checkpoint of the rows' own branch. A directory without rows (a
    continuation into a new ``--out``) is not checked. ``segment``: the run segment that wrote the
    checkpoint: where the rows do reach its step, :func:`check_branch_of` still refuses one of another
    branch."""
    try:
        steps = read_metrics(run_dir / "metrics.csv").get("step")
    except (OSError, RunDirError):
        return
    logged = [float(x) for x in (steps if steps is not None else []) if math.isfinite(float(x))]
    if not logged or max(logged) >= step:
        check_branch_of(run_dir, ckpt_path, step, segment)
        return
    last = int(max(logged))
    # a step checkpoint at or before the latest resume's step is of the rows' own branch (a later one may be
    # the abandoned branch's, which the rows' branch did not overwrite)
    branch_point = min([last, *(int(r.get("step", last)) for r in read_resumes(run_dir)[-1:])])
    raise RunDirError(
        f"--resume {ckpt_path}: a checkpoint of step {step}, but {run_dir / 'metrics.csv'} ends at step {last} — "
        f"the checkpoint is of an earlier branch of this run (a continuation from an earlier step stopped "
        f"before its next checkpoint), and continuing from it would splice the two; continue this run's "
        f"rows with {_own_branch_advice(run_dir, branch_point)}"
    )


def _own_branch_advice(run_dir: Path, branch_point: int) -> str:
    """``--resume`` of the latest step checkpoint at or before ``branch_point`` (of the rows' own branch),
    else ``--overwrite``."""
    reached = sorted((k, path) for k, path in step_checkpoints(run_dir / "checkpoints") if k <= branch_point)
    return f"--resume {reached[-1][1]}" if reached else "--overwrite to start afresh"


def check_branch_of(run_dir: Path, ckpt_path: str, step: int, segment: int | None) -> None:
    """A checkpoint written before a later resume of the run (its ``segment`` below the resumes
    recorded) while that resume's segments, which saved nothing, started from an earlier step: its
    weights are of the branch those segments abandoned, the rows after their start theirs, and
    continuing would splice the two even where the rows reach the checkpoint's step (a continuation
    from an earlier step checkpoint killed before its first save leaves the first branch's
    ``last.ckpt``): a :class:`RunDirError` naming a step checkpoint of the rows' own branch."""
    resumes = read_resumes(run_dir)
    if segment is None or not 0 <= int(segment) < len(resumes):
        return
    branch_point = min(int(r.get("step", 0)) for r in resumes[int(segment) :])
    if step <= branch_point:
        return
    raise RunDirError(
        f"--resume {ckpt_path}: a checkpoint of step {step} written before this run was resumed from step "
        f"{branch_point}, and that continuation saved nothing since: its rows from step {branch_point + 1} are "
        f"of another branch than the checkpoint's weights, and continuing would splice the two; continue this "
        f"run's rows with {_own_branch_advice(run_dir, branch_point)}"
    )


#: Policies up to this many parameters get a digest of their weights in summary.json (a few tenths of
#: a second at SmolLM2's 135M on a CPU; larger models skip it).
DIGEST_MAX_PARAMETERS = 200_000_000


def weights_digest(model: Any) -> str | None:
    """The first 16 hex digits of the SHA-256 of the model's weights (names, dtypes, shapes, bytes), as
    loaded before RL: two runs that should start from the same warm start can be checked to (the tiny
    model's warm start is rebuilt per machine, and two builds have differed). None above
    DIGEST_MAX_PARAMETERS."""
    import hashlib

    import torch

    state = model.state_dict()
    if sum(t.numel() for t in state.values()) > DIGEST_MAX_PARAMETERS:
        return None
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_accelerator(config: RunConfig) -> None:
    """``trainer.accelerator`` gpu / cuda / mps on a machine where torch has none: a :class:`ConfigError`
    (Lightning would refuse it only once the run directory had been written)."""
    import torch

    from entropyctl.config import ConfigError

    accelerator = config.trainer.accelerator
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    missing = {"cuda": not cuda, "gpu": not (cuda or mps), "mps": not mps}.get(accelerator, False)
    if missing:
        raise ConfigError(
            f"trainer.accelerator: torch {torch.__version__} finds no {accelerator.upper()} device on this "
            f"machine; trainer.accelerator=cpu (or auto) runs anywhere (got {accelerator!r})"
        )
    # Lightning's auto and gpu pick MPS where there is no CUDA device
    if accelerator == "mps" or (accelerator in ("auto", "gpu") and mps and not cuda):
        raise ConfigError(
            f"trainer.accelerator: Apple's MPS is not supported (the trainer's exact entropy statistics and "
            f"token counts are float64, which MPS lacks); use trainer.accelerator=cpu (got {accelerator!r}, "
            "which picks MPS on this machine)"
        )


def check_loggers(config: RunConfig) -> None:
    """``trainer.wandb`` without the wandb package: a :class:`ConfigError` before anything is written."""
    from entropyctl.config import ConfigError

    if config.trainer.wandb is not None and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "trainer.wandb: needs the wandb package (pip install 'entropyctl[wandb]'); or leave trainer.wandb "
            "out (metrics.csv and TensorBoard still get every metric)"
        )


def _wandb_logger(config: RunConfig, run_dir: Path, resuming: bool) -> Any:
    """Lightning's WandbLogger for ``trainer.wandb``, writing under ``<run dir>/wandb``. The W&B run id
    is kept in ``<run dir>/wandb/run_id``: a resumed run continues the same W&B run, a new or
    overwritten run starts another."""
    import secrets

    from lightning.pytorch.loggers import WandbLogger

    settings = config.trainer.wandb
    assert settings is not None
    folder = run_dir / "wandb"
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / "run_id"
    run_id = id_file.read_text().strip() if resuming and id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    return WandbLogger(
        project=settings.project,
        name=settings.name or run_dir.resolve().name,
        entity=settings.entity,
        group=settings.group,
        tags=list(settings.tags),
        offline=settings.mode == "offline",
        save_dir=str(run_dir),
        id=run_id,
        resume="allow",
        config=config.model_dump(mode="json"),
    )


def run_training(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    allow_resume_changes: bool = False,
    progress_bar: bool | None = None,
    callbacks: Sequence[Any] = (),
    log: Any = print,
    made_dir: bool = False,
) -> dict[str, Any]:
    """Train with ``config``, writing the run directory; returns the summary (also ``summary.json``).

    ``resume``: a checkpoint path, or ``"auto"`` to continue from ``run_dir/checkpoints/last.ckpt`` when it
    exists; the checkpoint's config and data fingerprint must match (else :class:`ResumeMismatchError`,
    unless ``allow_resume_changes``). A directory that already holds a run is refused
    (:class:`RunDirError`) unless resuming or ``overwrite`` (which removes only the run's own files,
    :data:`~entropyctl.trainer.run_dir.RUN_FILES`). The directory is locked for the run's lifetime
    (:class:`RunLockedError` for a second run). SIGTERM/SIGINT: the step in progress finishes,
    ``last.ckpt`` is written, the summary says ``"stopped"`` and :class:`RunStopped` is raised (its
    ``exit_code`` is 143 / 130). ``progress_bar``: overrides ``trainer.progress_bar``. ``callbacks``: extra
    Lightning callbacks. With several processes, every rank also writes ``ranks/rank<r>.json`` (its
    controller state, a checksum of its parameters, and its local per-step statistics). ``made_dir``:
    ``run_dir`` is :func:`resolve_run_dir`'s new one, which a refused run removes as one it made.
    """
    # before the run directory is written: a refused run leaves nothing
    if resume == "auto" and overwrite:  # (another run's checkpoint --overwrite this one: that is a choice)
        raise RunDirError(
            "--resume auto and --overwrite: one continues the run in --out, the other removes it; keep one"
        )
    check_accelerator(config)
    check_loggers(config)
    if config.trainer.strategy == "fsdp":
        from entropyctl.trainer.fsdp import check_fsdp_config

        check_fsdp_config(config)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: a file, not a directory; choose another --out for the run")
    rank0 = global_rank(config.trainer.devices) == 0
    if config.trainer.devices > 1:  # DDP children re-run the command line: they re-resolve the same directory
        os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    created = run_dir if made_dir else _first_missing(run_dir)  # the outermost folder this run made
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire() if rank0 else None  # DDP children run under rank 0's lock
    stop = StopSignals(grace_s=config.trainer.stop_grace_s)
    try:
        if lock is not None and lock.stale:
            log(f"[entropyctl] {lock.path}: took over a stale lock (pid {lock.stale.get('pid')} is gone)")
        ckpt_path = _checkpoint_to_resume(resume, run_dir / "checkpoints")
        fingerprint = run_fingerprint(config)
        status: RunStatus | None = None
        resume_record = None
        if rank0:
            # `--resume auto` that finds no last.ckpt starts afresh: not over a run it would truncate
            prepare_run_dir(
                run_dir, resume=None if ckpt_path is None else Path(ckpt_path), overwrite=overwrite, log=log
            )
            remove_stale_temp_files(run_dir, log)  # writes a kill cut short (we hold the lock)
            if ckpt_path is not None:
                resume_record = _checked_resume(run_dir, ckpt_path, fingerprint, allow_resume_changes, log)
            (run_dir / "config.yaml").write_text(config.to_yaml())
            for line in config.inert_settings():
                log(f"[entropyctl] note: {line}")
            status = RunStatus(run_dir / "summary.json").start()
        stop.install()
        run = _Run(config, run_dir, status, stop, fingerprint, resume_record, log)
        return run.train(ckpt_path, progress_bar, callbacks)
    finally:
        stop.restore()
        if lock is not None:
            if created is not None:  # refused before it wrote anything (a bad --resume...): no trace
                _remove_if_only_the_lock(run_dir, created)
            lock.release()
        if rank0:
            os.environ.pop(RUN_DIR_ENV, None)


def _checked_resume(
    run_dir: Path, ckpt_path: str, fingerprint: dict[str, Any], allow_changes: bool, log: Any
) -> dict[str, Any]:
    """The resume's record once the checkpoint fits this run (:func:`check_resume`) and the run's rows
    are of its branch (:func:`check_rows_reach`)."""
    record = check_resume(ckpt_path, fingerprint, allow_changes=allow_changes, log=log)
    check_rows_reach(run_dir, ckpt_path, int(record.get("step", 0)), record.get("segment"))
    return record


def _first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (None: ``path`` exists)."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_if_only_the_lock(run_dir: Path, created: Path) -> None:
    """Remove a run directory this call created (and the parents it created, up to ``created``) when
    nothing but its lock file is in it — while the lock is still held: a process that opened the file
    before is refused as in use (or, once it is unlinked, by :meth:`RunLock.acquire`'s check that its
    file is still the one at the path), and one that creates it afresh leaves the folder non-empty (it
    then stays)."""
    with contextlib.suppress(OSError):
        if [p.name for p in run_dir.iterdir()] != [LOCK_FILE]:
            return
        (run_dir / LOCK_FILE).unlink()
        for folder in [run_dir, *run_dir.parents]:
            folder.rmdir()  # an OSError (not empty: someone else's) ends the walk
            if folder == created:
                break


def _last_logged_row(path: Path) -> dict[str, float]:
    """The last row of a run's ``metrics.csv`` as numbers ({} when it has none), read as the report reads it."""
    try:
        columns = read_metrics(path)
    except (OSError, RunDirError):
        return {}
    return {name: float(values[-1]) for name, values in columns.items() if len(values)}


class _Run:
    """One training run after the directory checks: build, fit, and write the summary whatever happens."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        status: RunStatus | None,
        stop: StopSignals,
        fingerprint: dict[str, Any],
        resume_record: dict[str, Any] | None,
        log: Any,
    ) -> None:
        self.config, self.run_dir, self.status, self.stop = config, run_dir, status, stop
        self.fingerprint, self.resume_record, self.log = fingerprint, resume_record, log
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.module: Any = None
        self.trainer: Any = None
        self.warm_start_s = 0.0
        self.initial_weights: str | None = None
        self.fit_s = 0.0
        self.threads = 1
        self.band_sentence: str | None = None  # the end-of-run line on the entropy band (summary())

    def _end(self, state: str, error: BaseException | None = None) -> dict[str, Any]:
        summary = self.summary(state)
        if error is not None:
            summary["error"] = f"{type(error).__name__}: {error}"
        if self.status is not None and (self.trainer is None or self.trainer.global_rank == 0):
            self.status.finish(summary)
        return summary

    def train(
        self, ckpt_path: str | None, progress_bar: bool | None, callbacks: Sequence[Any]
    ) -> dict[str, Any]:
        try:
            self._build()
            self._trim_rows_past_the_checkpoint()
            self._record_the_resume()
            self._fit(ckpt_path, progress_bar, callbacks)
            self._evaluate_after_if_missing()
        except RunStopped as stopped:
            self._end("stopped", stopped)
            saved = (self.run_dir / "checkpoints" / "last.ckpt").is_file()
            advice = (
                "resume with --resume auto"
                if saved
                else "no checkpoint was written yet, so nothing to resume: run it again with --overwrite"
            )
            self.log(f"[entropyctl] stopped by signal {stopped.signum} after step {self.steps}; {advice}")
            raise
        except BaseException as err:
            self._end("failed", err)
            raise
        finally:
            self._close()
        summary = self._end("finished" if self.steps >= self.config.trainer.steps else "stopped")
        self._write_rank_file()
        if self.status is not None:
            self.log(
                f"[entropyctl] {summary['status']}: {self.steps} steps in {summary['wall_time_s']:.0f} s "
                f"(warm start {self.warm_start_s:.0f} s); summary in {self.run_dir / 'summary.json'}"
            )
            if self.band_sentence is not None:
                self.log(f"[entropyctl] {self.band_sentence}")
        return summary

    @property
    def steps(self) -> int:
        return int(self.module.rlvr_step) if self.module is not None else 0

    def _record_the_resume(self) -> None:
        """Append the resume to the run's ``resumes.jsonl`` once it has taken effect (the policy built,
        the rows past its checkpoint dropped): a resume that failed before, e.g. in the warm start, is no
        branch point of the run (:func:`check_branch_of`). Its checkpoints belong to the segment it opens."""
        record, module = self.resume_record, self.module
        if record is None or module is None:
            return
        earlier = record_resume(self.run_dir, record)
        self.resume_record = {**record, "earlier": earlier}
        module.segment = len(earlier) + 1

    def _trim_rows_past_the_checkpoint(self) -> None:
        """A resume drops the rows past its checkpoint before the fit: the module does it at the train
        start too, which Lightning skips when the checkpoint's step is already the run's last (a resume
        with a shorter trainer.steps kept the later rows, and summary.json read its final entropy there)."""
        record, module = self.resume_record, self.module
        if record is None or module is None:
            return
        for writer in (module.metrics_writer, module.completions_writer):
            if writer is not None:
                writer.truncate_after(int(record.get("step", 0)))

    def _check_reference_source(self) -> None:
        """A resumed run with a KL rebuilds its frozen reference from the model source (the warm-start
        cache, ``model.path``): weights other than those the run started from (their digest in the
        checkpoint) would be another reference, silently. Refused unless ``--allow-resume-changes``; not
        checked where the checkpoint holds the reference (``algorithm.ref_sync_steps``) or no digest
        (above DIGEST_MAX_PARAMETERS, or a checkpoint from before 2026-12-07)."""
        record, module = self.resume_record, self.module
        if record is None or module is None or not module.has_reference_copy:
            return
        saved = record.get("initial_weights")
        if saved is None or self.initial_weights is None or saved == self.initial_weights:
            return
        if self.config.algorithm.ref_sync_steps is not None:
            return
        what = (
            f"the run started from weights {saved} and the model source now gives {self.initial_weights}: the KL "
            "reference, rebuilt from it, would be another one (the warm-start cache or model.path changed)"
        )
        if not record.get("allow_changes"):
            raise ResumeMismatchError(
                f"--resume {record.get('checkpoint')}: {what}; resume where the run's model source is (its "
                "ENTROPYCTL_CACHE, its model.path), or pass --allow-resume-changes to go on with the new reference"
            )
        self.log(f"[entropyctl] resuming despite a new KL reference (--allow-resume-changes): {what}")

    def _evaluate_after_if_missing(self) -> None:
        """The evaluation after training of a run resumed at its last step (a finished run resumed again, or
        one stopped during that evaluation): Lightning then trains nothing and calls no train hooks, and the
        summary lost its ``after`` (same weights and seeds: the numbers the evaluation would have given)."""
        module = self.module
        if module is None or not self.config.eval.after or "after" in module.eval_results:
            return
        if self.steps >= self.config.trainer.steps:
            from entropyctl.trainer.fsdp import is_sharded

            started = time.perf_counter()
            if self.trainer is not None and not is_sharded(module.policy):
                module.to(self.trainer.strategy.root_device)  # fit's teardown left it on the CPU
            module.eval_results["after"] = module.evaluate_heldout("after")
            # counted as the run's, like the evaluation it stands for
            self.fit_s += time.perf_counter() - started

    def _build(self) -> None:
        import lightning.pytorch as pl
        import torch

        t = self.config.trainer
        self.threads = t.threads or max(1, (os.cpu_count() or 1) // t.devices)
        torch.set_num_threads(self.threads)
        pl.seed_everything(self.config.seed, workers=False, verbose=False)
        t_warm = time.perf_counter()
        self.module = build_module(self.config, self.run_dir)
        self.module.run_fingerprint = self.fingerprint
        # which segment of the run (0: the first, n: after its n-th resume) its checkpoints belong to
        self.module.segment = len(read_resumes(self.run_dir))
        self.warm_start_s = time.perf_counter() - t_warm
        self.initial_weights = weights_digest(self.module.policy)
        self.module.initial_weights = self.initial_weights
        self._check_reference_source()
        if self.status is not None:
            n_params = sum(p.numel() for p in self.module.policy.parameters())
            self.log(
                f"[entropyctl] policy ready in {self.warm_start_s:.1f} s ({n_params:,} parameters); "
                f"run dir {self.run_dir}"
            )

    def _fit(self, ckpt_path: str | None, progress_bar: bool | None, callbacks: Sequence[Any]) -> None:
        import lightning.pytorch as pl

        from entropyctl.trainer.module import AtomicCheckpointIO, RLVRCheckpoint, RLVRProgress

        t, run_dir, module = self.config.trainer, self.run_dir, self.module
        loggers: list[Any] = []
        if t.tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(
                TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False)
            )
        wandb = None
        if t.wandb is not None and global_rank(t.devices) == 0:
            wandb = _wandb_logger(self.config, run_dir, resuming=ckpt_path is not None)
            loggers.append(wandb)
        checkpoint = RLVRCheckpoint(
            run_dir / "checkpoints",
            t.checkpoint_every,
            t.steps,
            save_last=t.save_last,
            keep=t.keep_checkpoints,
            stop=self.stop,
        )
        bar = t.progress_bar if progress_bar is None else progress_bar
        # A redrawn line on a terminal (unless the bar is off); a line every log_every steps otherwise.
        progress = RLVRProgress(t.steps, every=t.log_every, tty=None if bar else False)
        self.trainer = pl.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            strategy=_strategy(self.config),
            precision=t.precision,  # type: ignore[arg-type]
            max_steps=t.steps * module.optimizer_steps_per_rlvr_step,
            logger=loggers or False,
            callbacks=[checkpoint, _heartbeat_callback(self.status), progress, *callbacks],
            enable_checkpointing=False,
            enable_progress_bar=False,  # RLVRProgress: step k/N with the controller's numbers
            enable_model_summary=False,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            use_distributed_sampler=False,
            default_root_dir=str(run_dir),
            plugins=[AtomicCheckpointIO()],  # every .ckpt whole or absent (Lightning's moves from $TMPDIR)
        )
        t_fit = time.perf_counter()
        failed = True
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
                # The policy stays in eval mode on purpose: no dropout, so training log-probs match the sampler's.
                warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
                # weights_only: the resume never unpickles code (entropyctl.trainer.checkpoints).
                self.trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
            failed = False
        finally:
            self.fit_s = time.perf_counter() - t_fit
            # a W&B run ends with the fit (its files flushed), failed or not; `experiment` would start one
            if wandb is not None and wandb._experiment is not None:
                wandb.experiment.finish(exit_code=1 if failed else 0)

    def _close(self) -> None:
        if self.module is None:
            return
        for reward in (self.module.reward, *self.module.shaping_rewards):
            with contextlib.suppress(Exception):
                reward.close()
        close_engine = getattr(self.module.engine, "close", None)
        if close_engine is not None:
            with contextlib.suppress(Exception):
                close_engine()

    def summary(self, state: str) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "status": state,
            "steps": self.steps,
            "controller": self.config.controller.name,
            "seed": self.config.seed,
            "wall_time_s": time.perf_counter() - self.started,
            # CPU seconds of this process (all its threads): with 1 thread, ≈ the wall time on an idle core
            "cpu_time_s": time.process_time() - self.cpu_started,
            "loadavg": list(os.getloadavg()),
            "time_warm_start_s": self.warm_start_s,
            "initial_weights_sha256": self.initial_weights,
            "threads": self.threads,
            "versions": library_versions(),
        }
        if self.resume_record is not None:
            summary["resume"] = self.resume_record
        module = self.module
        if module is None:
            return summary
        cm = module.controller.metrics()
        # a run resumed at its last step trained no step here: its last logged row speaks for it
        last = module.last_metrics or _last_logged_row(self.run_dir / "metrics.csv")
        summary.update(
            {
                "world_size": self.trainer.world_size if self.trainer is not None else 1,
                "time_fit_s": self.fit_s,
                "time_eval_s": module.eval_seconds,
                "time_rl_s": self.fit_s - module.eval_seconds,
                "final_entropy": _finite_or_none(last.get("entropy")),
                "h0": _finite_or_none(cm.get("h0")),
                "alpha": _finite_or_none(cm.get("alpha")),
                "target_entropy": _finite_or_none(cm.get("target_entropy")),
                "final_reward": _finite_or_none(last.get("reward")),
                "controller_metrics": {k: _finite_or_none(v) for k, v in cm.items()},
                "controller_state": module.controller.state_dict(),
                "before": module.eval_results.get("before"),
                "after": module.eval_results.get("after"),
                "evals": module.eval_results,
            }
        )
        band = read_band_health(
            self.run_dir / "metrics.csv", getattr(self.config.controller, "alpha_reading_bounds", None)
        )
        if band is not None:
            summary["band"] = band.as_dict()
            self.band_sentence = band.sentence()
        Summary.model_validate(summary)  # the run-directory contract (trainer/run_dir.py)
        return summary

    def _write_rank_file(self) -> None:
        trainer, module = self.trainer, self.module
        if trainer is None or trainer.world_size <= 1:
            return
        (self.run_dir / "ranks").mkdir(exist_ok=True)
        _write_json(
            self.run_dir / "ranks" / f"rank{trainer.global_rank}.json",
            {
                "rank": trainer.global_rank,
                "controller_state": module.controller.state_dict(),
                "parameter_sha256": parameter_checksum(module.policy),
                "local_steps": module.local_history,
            },
        )


def _heartbeat_callback(status: RunStatus | None) -> Any:
    """A Lightning callback writing the step count into the running ``summary.json`` after every step."""
    import lightning.pytorch as pl

    class _Heartbeat(pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if status is not None and trainer.global_rank == 0:
                status.update(steps=int(pl_module.rlvr_step))

    return _Heartbeat()
