"""``entropyctl evaluate``: pass@1 / pass@k of a run or model, overall and per level."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entropyctl.cli.options import add_set_option, add_threads_option

#: ``--data`` values that mean the run's own held-out split ('synthetic': its name from before runs could
#: train on files; it means the same)
RUN_SPLIT = ("run", "synthetic")
#: ``--by``: the problem's difficulty level (synthetic level, a file's data.options.level_field, a
#: reasoning-gym level), or no grouping
GROUPINGS = ("level", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_OR_MODEL",
        help="a run directory (its last checkpoint), a .ckpt file, a model directory, "
        "a .gguf file, or 'smollm2'",
    )
    parser.add_argument(
        "--data",
        default="run",
        metavar="run|FILE[,FILE...]",
        help="problems to score. 'run' (default): the run's own held-out split, the problems of its "
        "summary.json 'after' evaluation (a run on a file: the eval.n_prompts rows it held out of data.path, "
        "or the rows of data.eval_path; a model without a run: the synthetic task's held-out split); "
        "'synthetic' is its old name and means the same. FILE: every row of a JSONL/Parquet file (with "
        "--problems N, the first N rows), its training rows too if the run trained on it; FILE,FILE,...: "
        "several files, each a held-out set with its own pass@k (and the pass@k over all of them)",
    )
    parser.add_argument(
        "--k",
        default=None,
        help="comma-separated k of pass@k, each ≥ 1 and ≤ --n (default: the run's eval.ks, else 1,4,8)",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="samples per problem (default: the run's eval.n_samples, at least max k)",
    )
    parser.add_argument(
        "--problems",
        type=int,
        default=None,
        metavar="N",
        help="number of problems (default: the run's eval.n_prompts). With --data run: a synthetic or "
        "reasoning-gym split of N problems; for a run on a file, the first N of its held-out split (at most "
        "eval.n_prompts, unless it has a data.eval_path; the first N of each when it lists several files)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the sampling stream (default: the run's seed; with the run's defaults the numbers "
        "equal its summary.json 'after' evaluation)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature, ≥ 0; 0: greedy (default: the run's eval.temperature, else its "
        "rollout.temperature)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="response length limit")
    parser.add_argument(
        "--by",
        default="level",
        metavar="level|none",
        help="group results by the problems' difficulty level, or not at all (default level)",
    )
    add_set_option(
        parser,
        "override a field of the run config used for evaluation",
    )
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the result as JSON")
    add_threads_option(parser, "torch intra-op threads")


@dataclass(frozen=True)
class Target:
    """What ``--checkpoint`` names, read without loading a checkpoint or building a model."""

    config: Any  # the RunConfig to evaluate with (the run's own, with --set applied)
    checkpoint: Path | None  # a run's checkpoint; None: a model without a run
    source: str  # where the config came from, for messages: the run's config.yaml, or '--checkpoint'


def _check_options(args: Any) -> list[int] | None:
    """The options that need no run config; ``--k`` parsed (None: unset). A :class:`ConfigError` (one line
    at the command line) names the option."""
    from entropyctl.config import ConfigError
    from entropyctl.rollout.protocol import GREEDY_BELOW
    from entropyctl.trainer.evaluation import parse_ks
    from entropyctl.validation import first_repeated

    ks = None
    if args.k is not None:
        try:
            ks = parse_ks(args.k)
        except ValueError:
            raise ConfigError(
                f"--k: expected comma-separated integers ≥ 1 like 1,4,8 (got {args.k!r})"
            ) from None
    counts = {"--n": args.n, "--problems": args.problems, "--max-new-tokens": args.max_new_tokens}
    for option, value in counts.items():
        if value is not None and value < 1:
            raise ConfigError(f"{option}: must be ≥ 1 (got {value})")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ConfigError(f"--temperature: must be ≥ 0 and finite, 0 for greedy (got {args.temperature})")
    if args.temperature is not None and 0 < args.temperature < GREEDY_BELOW:
        raise ConfigError(
            f"--temperature {args.temperature}: greedy decoding in vLLM and sampling in the HF engine; write 0 "
            "for greedy"
        )
    if args.temperature == 0 and (args.n != 1 or ks != [1]):
        raise ConfigError(
            "--temperature 0: greedy decoding gives equal samples, so every pass@k would be pass@1; "
            "add --n 1 --k 1, or sample at a temperature above 0"
        )
    if args.by not in GROUPINGS:
        raise ConfigError(f"--by: expected one of {', '.join(map(repr, GROUPINGS))} (got {args.by!r})")
    if args.json is not None:
        json_path = Path(args.json).expanduser()
        if not json_path.parent.is_dir():
            raise ConfigError(f"--json {args.json}: no directory '{json_path.parent}' to write it in")
        if json_path.is_dir():
            raise ConfigError(f"--json {args.json}: a directory; expected a file name")
    if args.data not in RUN_SPLIT:
        files = data_files(args.data)
        missing = [path for path in files if not Path(path).is_file()]
        if missing:
            which = f" ({missing[0]})" if len(files) > 1 else ""
            raise ConfigError(
                f"--data {args.data}: no such file{which} (expected 'run', or .jsonl / .parquet files)"
            )
        repeated = first_repeated([Path(path).resolve() for path in files])
        if repeated is not None:
            raise ConfigError(f"--data {args.data}: {repeated} is listed twice")
    return ks


def resolve_target(target: str, overrides: Sequence[str], *, scores: bool = True) -> Target:
    """The run config of a run directory or a Lightning checkpoint (in its run directory), or a config
    holding just the model for a model directory, a .gguf file or 'smollm2'. Reads no weights.
    ``scores=False``: the run's reward is not loaded (:func:`~entropyctl.config.load_run_config`)."""
    from entropyctl.config import apply_overrides, load_run_config, parse_run_config

    path = Path(target).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        ckpt, run_dir = path, path.parent.parent
    elif path.is_dir() and (path / "config.yaml").exists():
        run_dir, ckpt = path, path / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise FileNotFoundError(f"{path}: run directory without checkpoints/last.ckpt")
    else:
        if target == "smollm2" or path.suffix == ".gguf":
            model = {"kind": "gguf", "path": target}
        elif path.is_dir():
            model = {"kind": "hf", "path": str(path)}
        else:
            raise FileNotFoundError(
                f"--checkpoint {target!r}: not a run directory, .ckpt, model directory, .gguf file or 'smollm2'"
            )
        config = parse_run_config(apply_overrides({"model": model}, overrides), source="--checkpoint")
        return Target(config, None, "--checkpoint")
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{ckpt}: no config.yaml in {run_dir} to rebuild the model from")
    # the verifier alone scores here: the shaping rewards' plugins need not be importable
    config = load_run_config(config_path, overrides, written=True, scores=scores, shaping=False)
    return Target(config, ckpt, str(config_path))


def _check_against_run(args: Any, target: Target, ks: list[int]) -> None:
    """The options checked against the run config, and the run's data files when its split is scored."""
    from entropyctl.config import ConfigError

    top = max(ks)  # eval.ks as written: not necessarily in order
    if args.n is not None and top > args.n:
        where = (
            f"--k {args.k}"
            if args.k is not None
            else f"eval.ks {ks} of {target.source} (set others with --k)"
        )
        raise ConfigError(f"{where}: pass@{top} needs at least {top} samples per problem; --n is {args.n}")
    n = args.n or max(target.config.eval.n_samples, top)
    if (
        args.temperature is None
        and target.config.eval_sampling()["temperature"] == 0
        and (n != 1 or ks != [1])
    ):
        raise ConfigError(  # --temperature 0 itself is checked before the run config is read
            f"eval.temperature 0 of {target.source}: greedy decoding gives equal samples, so every pass@k "
            f"would be pass@1 (here {n} samples, pass@{','.join(map(str, ks))}); add --n 1 --k 1, or "
            "sample with --temperature above 0"
        )
    d = target.config.data
    if args.data not in RUN_SPLIT or d.source != "file":
        return
    field = "eval_path" if d.eval_path else "path"
    for value in d.held_out_source():
        if value and not Path(value).is_file():
            raise FileNotFoundError(
                f"data.{field} {value!r} of {target.source}: no such file (a relative path is read from the "
                f"directory entropyctl runs in, here {Path.cwd()}); run from the directory the run was "
                f"trained in, or point to the file with --set data.{field}=FILE"
            )
    if args.problems is not None and not d.eval_path and args.problems > target.config.eval.n_prompts:
        raise ConfigError(
            f"--problems {args.problems}: the run held out only {target.config.eval.n_prompts} rows of "
            f"{d.path} (eval.n_prompts), the others trained it; to score every row: --data {d.path}"
        )


def load_target_policy(target: Target) -> tuple[Any, Any, dict[str, Any] | None]:
    """(policy, tokenizer, the checkpoint's run fingerprint) of a run's checkpoint, or of a model."""
    from entropyctl.models.loading import load_policy
    from entropyctl.trainer.checkpoints import CheckpointError, load_checkpoint
    from entropyctl.trainer.run import reasoning_gym_task

    config, ckpt = target.config, target.checkpoint
    if ckpt is None:
        policy, tokenizer = load_policy(config.model)
        return policy, tokenizer, None
    # The checkpoint first: a bad file is reported before the (possibly minutes-long) model build.
    checkpoint = load_checkpoint(ckpt)
    state = checkpoint["state_dict"]
    weights = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
    if not weights:
        raise CheckpointError(
            f"{ckpt}: its state_dict holds no policy weights ('policy.*'); no policy to load"
        )
    # a tiny model trained on a reasoning-gym task has that task's alphabet
    task = reasoning_gym_task(config) if config.data.source == "reasoning_gym" else None
    policy, tokenizer = load_policy(config.model, task=task)
    expected = policy.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{ckpt}: its policy weights do not fit the model of {target.source} (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shapes {shapes[:3]}); load it with its own run dir"
        )
    policy.load_state_dict(weights, strict=True)
    return policy, tokenizer, checkpoint.get("run_fingerprint")


def _note(message: str) -> None:
    print(f"[entropyctl] {message}", file=sys.stderr, flush=True)


def _run_split(args: Any, config: Any, policy: Any, tokenizer: Any) -> list[Any]:
    """The run's own held-out split, built as training built it (:func:`~entropyctl.trainer.run.build_run_data`); ``--problems N``:
    a synthetic or reasoning-gym split of N problems, the first N rows of a data.eval_path, or the first N
    of a file's held-out rows (a new draw of N rows could hold rows the run trained on)."""
    from entropyctl.trainer.run import build_prompt_encoder, build_run_data

    if args.problems is not None and (config.data.source != "file" or config.data.eval_path):
        config = config.model_copy(
            update={"eval": config.eval.model_copy(update={"n_prompts": args.problems})}
        )
    # built as training built it (the same checks, or drops, of prompts against the model's context)
    encode = build_prompt_encoder(config, tokenizer)
    _, held_out = build_run_data(config, policy, tokenizer, encode, held_out_only=True)
    return held_out if isinstance(config.data.eval_path, list) else held_out[: args.problems]


def data_files(value: str) -> list[str]:
    """``--data``'s files: one file, or several separated by commas (each a set of its own), a file whose
    name holds a comma being read as that file."""
    if "," not in value or Path(value).is_file():
        return [value]
    files = [part.strip() for part in value.split(",")]
    if not all(files):
        from entropyctl.config import ConfigError

        raise ConfigError(f"--data {value}: an empty file name in the list")
    return files


def _problems(
    args: Any, config: Any, policy: Any, tokenizer: Any, fingerprint: dict[str, Any] | None
) -> tuple[list[Any], str]:
    """(problems, what they are): the run's own held-out split (``--data run``) or a dataset file's rows."""
    d = config.data
    if args.data in RUN_SPLIT:
        if d.source == "file":
            from entropyctl.trainer.run_dir import run_fingerprint

            label = f"held-out split (file {', '.join(d.held_out_source())})"
            if args.data == "synthetic":
                _note(
                    f"note: --data synthetic is the old name of --data run: this run's own {label}; for the "
                    "synthetic task's held-out split: --set data.source=synthetic"
                )
            # the scored files' SHA-256 among those the run trained with (a moved file keeps its bytes)
            saved = set((fingerprint or {}).get("data", {}).values())
            current = run_fingerprint(config)["data"]
            changed = [path for path in d.held_out_source() if saved and current[path] not in saved]
            if changed:
                named = " and ".join(changed)
                _note(
                    f"warning: {named} changed since the run was trained (SHA-256 other than its checkpoint's): "
                    "these are not the problems of its summary.json 'after' evaluation, and may include rows "
                    "it trained on"
                )
        else:
            label = f"held-out split ({d.source})"
        problems = _run_split(args, config, policy, tokenizer)
    else:
        from entropyctl.trainer.run import held_out_files, rewards_take_info

        label, files = args.data, data_files(args.data)
        options = {**d.options, "keep_columns": rewards_take_info(config)}
        problems = held_out_files(files, args.problems, len(files) > 1, options, lambda rows: rows)
        for path in files:
            if d.source == "file" and Path(path).resolve() == Path(d.path).resolve():
                _note(
                    f"note: {path} is the file this run trained on; the rows scored include the run's "
                    "training rows (its held-out split alone: --data run)"
                )
    if not problems:
        from entropyctl.config import ConfigError

        raise ConfigError(f"--data {args.data}: no problems to evaluate")
    return problems, label


def _sampler(
    args: Any, config: Any, engine: Any, tokenizer: Any, seed: int
) -> tuple[Callable[[Sequence[Any], int], list[list[str]]], float]:
    """(sample_fn, temperature): ``sample_fn(batch, n)`` draws n completions per problem from ``engine``
    (the run's ``rollout.engine``), on the seeded stream of ``RLVRModule.evaluate_heldout("after")`` on
    one process."""
    from dataclasses import replace

    from entropyctl.rollout.protocol import SamplingSettings, decode_responses
    from entropyctl.trainer.run import build_prompt_encoder
    from entropyctl.trainer.sampler import derive_seed

    encode = build_prompt_encoder(config, tokenizer)
    sampling = SamplingSettings(**config.eval_sampling())  # the run's evaluations' settings, then the options
    if args.temperature is not None:
        sampling = replace(sampling, temperature=args.temperature)
    if args.max_new_tokens:
        sampling = replace(sampling, max_new_tokens=args.max_new_tokens)
    temperature = sampling.temperature
    calls = [0]

    def sample_fn(batch: Sequence[Any], n_samples: int) -> list[list[str]]:
        calls[0] += 1
        comp = engine.generate(
            [encode(p.prompt) for p in batch],
            n_samples,
            replace(sampling, seed=derive_seed("eval", seed, "after", 0, calls[0])),
        )
        texts = decode_responses(tokenizer, comp)
        return [texts[i * n_samples : (i + 1) * n_samples] for i in range(len(batch))]

    return sample_fn, temperature


def run(args: Any) -> int:
    """`entropyctl evaluate`: pass@1 / pass@k of a run or model, overall and per level, as a table + JSON."""
    import json

    import torch

    from entropyctl.rewards import get_reward
    from entropyctl.trainer.evaluation import evaluate_problems, format_eval_table

    # Every option is checked before a checkpoint is read or a model built (minutes for a large one).
    ks = _check_options(args)
    target = resolve_target(args.checkpoint, args.overrides)
    config = target.config
    # Defaults are the run's own evaluation settings, so that with them the result equals summary.json's
    # "after" evaluation: same problems, same samples per problem, same seeded sampling stream.
    ks = ks or list(config.eval.ks)
    _check_against_run(args, target, ks)
    n = args.n or max(config.eval.n_samples, max(ks))
    seed = config.seed if args.seed is None else int(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    policy, tokenizer, fingerprint = load_target_policy(target)
    problems, data = _problems(args, config, policy, tokenizer, fingerprint)
    from entropyctl.trainer.run import build_engine

    def group_of(problem: Any) -> Hashable:
        return getattr(problem, "level", None) if args.by == "level" else None

    with contextlib.ExitStack() as cleanup:
        # the reward first: a bad reward fails before a (minutes-long) vLLM start
        reward = get_reward(config.reward.name, **config.reward.options)
        cleanup.callback(reward.close)
        torch.manual_seed(config.seed)
        # the run's rollout.engine (--set rollout.engine=... for another)
        engine = build_engine(config, policy, tokenizer)
        if hasattr(engine, "close"):
            cleanup.callback(engine.close)
        sample_fn, temperature = _sampler(args, config, engine, tokenizer, seed)
        result = evaluate_problems(
            problems, sample_fn, reward, n=n, ks=ks, batch_size=config.eval.batch_size, group_of=group_of
        )
    result.update(seed=seed, n_samples=n, checkpoint=str(args.checkpoint), data=data)
    result["temperature"] = temperature
    print(f"seed {seed}, {n} samples per problem, {len(problems)} problems, temperature {temperature}")
    print(format_eval_table(result, f"{args.checkpoint} on {data}"))
    print(json.dumps(result, indent=2))
    if args.json:
        with open(Path(args.json).expanduser(), "w") as f:
            json.dump(result, f, indent=2)
    return 0
