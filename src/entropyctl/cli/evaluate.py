"""``entropyctl evaluate``: pass@1 / pass@k of a run or model, overall and per level."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from entropyctl.cli.options import add_set_option


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
        default="synthetic",
        metavar="FILE|synthetic",
        help="held-out problems: 'synthetic' or a JSONL/Parquet file",
    )
    parser.add_argument(
        "--k", default=None, help="comma-separated k of pass@k (default: the run's eval.ks, else 1,4,8)"
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="samples per problem (default: the run's eval.n_samples, at least max k)",
    )
    parser.add_argument(
        "--problems", type=int, default=None, help="number of problems (default: the run's eval.n_prompts)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the sampling stream (default: the run's seed; with the run's defaults the numbers "
        "equal its summary.json 'after' evaluation)",
    )
    parser.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: the run's, else 1.0)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="response length limit")
    parser.add_argument("--by", default="level", help="group results by this problem field (default level)")
    add_set_option(
        parser,
        "override a field of the run config used for evaluation",
    )
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the result as JSON")


def _load_for_evaluation(target: str, overrides: Sequence[str]) -> tuple[Any, Any, Any]:
    """(run config, policy, tokenizer) for a run directory, a Lightning checkpoint, a model directory, a
    .gguf file or 'smollm2'."""
    from pathlib import Path

    from entropyctl.config import RunConfig, load_run_config, parse_run_config
    from entropyctl.models.loading import load_policy
    from entropyctl.trainer.checkpoints import CheckpointError, load_checkpoint
    from entropyctl.trainer.run import reasoning_gym_task

    path = Path(target).expanduser()
    ckpt: Path | None = None
    if path.is_file() and path.suffix == ".ckpt":
        ckpt, run_dir = path, path.parent.parent
    elif path.is_dir() and (path / "config.yaml").exists():
        run_dir = path
        ckpt = path / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise FileNotFoundError(f"{path}: run directory without checkpoints/last.ckpt")
    else:
        run_dir = None
    if run_dir is not None:
        config_path = run_dir / "config.yaml"
        if not config_path.exists():
            raise FileNotFoundError(f"{ckpt}: no config.yaml in {run_dir} to rebuild the model from")
        config: RunConfig = load_run_config(config_path, overrides, written=True)
        assert ckpt is not None
        # The checkpoint first: a bad file is reported before the (possibly minutes-long) model build.
        state = load_checkpoint(ckpt)["state_dict"]
        weights = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
        if not weights:
            raise CheckpointError(
                f"{ckpt}: its state_dict holds no policy weights ('policy.*'); nothing to evaluate"
            )
        # a tiny model trained on a reasoning-gym task has that task's alphabet
        task = reasoning_gym_task(config) if config.data.source == "reasoning_gym" else None
        policy, tokenizer = load_policy(config.model, task=task)
        expected = policy.state_dict()
        missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or shapes:
            raise CheckpointError(
                f"{ckpt}: its policy weights do not fit the model of {config_path} (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, other shapes {shapes[:3]}); evaluate it with its own run dir"
            )
        policy.load_state_dict(weights, strict=True)
        return config, policy, tokenizer
    if target == "smollm2" or path.suffix == ".gguf":
        model = {"kind": "gguf", "path": target}
    elif path.is_dir():
        model = {"kind": "hf", "path": str(path)}
    else:
        raise FileNotFoundError(
            f"--checkpoint {target!r}: not a run directory, .ckpt, model directory, .gguf file or 'smollm2'"
        )
    from entropyctl.config import apply_overrides

    config = parse_run_config(apply_overrides({"model": model}, overrides), source="--checkpoint")
    policy, tokenizer = load_policy(config.model)
    return config, policy, tokenizer


def _problems(args: Any, config: Any) -> tuple[Any, list[Any]]:
    """(config, problems): the run's own held-out split (``--data synthetic``) or a dataset file's rows."""
    from entropyctl.trainer.run import build_data

    if args.problems is not None:
        config = config.model_copy(
            update={"eval": config.eval.model_copy(update={"n_prompts": args.problems})}
        )
    if args.data == "synthetic":
        if config.data.source not in ("synthetic", "reasoning_gym"):  # a reasoning-gym run: its own split
            config = config.model_copy(
                update={"data": config.data.model_copy(update={"source": "synthetic"})}
            )
        _, problems = build_data(config)
    else:
        from entropyctl.data.loaders import load_math_dataset

        problems = list(load_math_dataset(args.data, **config.data.options))[: args.problems]
    if not problems:
        raise ValueError(f"--data {args.data}: no problems to evaluate")
    return config, list(problems)


def _sampler(
    args: Any, config: Any, policy: Any, tokenizer: Any, seed: int
) -> tuple[Callable[[Sequence[Any], int], list[list[str]]], float]:
    """(sample_fn, temperature): ``sample_fn(batch, n)`` draws n completions per problem, on the seeded
    stream of ``RLVRModule.evaluate_heldout("after")`` on one process."""
    from dataclasses import replace

    from entropyctl.rollout.hf import HFRolloutEngine
    from entropyctl.rollout.protocol import SamplingSettings
    from entropyctl.trainer.run import build_prompt_encoder
    from entropyctl.trainer.sampler import derive_seed

    engine = HFRolloutEngine(policy, tokenizer)
    encode = build_prompt_encoder(config, tokenizer)
    temperature = (
        args.temperature
        if args.temperature is not None
        else (config.eval.temperature if config.eval.temperature is not None else config.rollout.temperature)
    )
    sampling = SamplingSettings(
        temperature=temperature,
        top_p=config.rollout.top_p,
        top_k=config.rollout.top_k,
        max_new_tokens=args.max_new_tokens or config.eval.max_new_tokens or config.rollout.max_new_tokens,
    )
    calls = [0]

    def sample_fn(batch: Sequence[Any], n_samples: int) -> list[list[str]]:
        calls[0] += 1
        comp = engine.generate(
            [encode(p.prompt) for p in batch],
            n_samples,
            replace(sampling, seed=derive_seed("eval", seed, "after", 0, calls[0])),
        )
        texts = engine.decode(comp)
        return [texts[i * n_samples : (i + 1) * n_samples] for i in range(len(batch))]

    return sample_fn, temperature


def run(args: Any) -> int:
    """`entropyctl evaluate`: pass@1 / pass@k of a run or model, overall and per level, as a table + JSON."""
    import json

    import torch

    from entropyctl.rewards import get_reward
    from entropyctl.trainer.evaluation import evaluate_problems, format_eval_table, parse_ks

    config, policy, tokenizer = _load_for_evaluation(args.checkpoint, args.overrides)
    # Defaults are the run's own evaluation settings, so that with them the result equals summary.json's
    # "after" evaluation: same problems, same samples per problem, same seeded sampling stream.
    ks = parse_ks(args.k) if args.k else list(config.eval.ks)
    n = args.n or max(config.eval.n_samples, max(ks))
    seed = config.seed if args.seed is None else int(args.seed)
    config, problems = _problems(args, config)
    torch.manual_seed(config.seed)
    sample_fn, temperature = _sampler(args, config, policy, tokenizer, seed)

    def group_of(problem: Any) -> Hashable:
        value = getattr(problem, args.by, None)
        if value is None:
            value = (getattr(problem, "meta", None) or {}).get(args.by)
        return value

    reward = get_reward(config.reward.name, **config.reward.options)
    try:
        result = evaluate_problems(
            problems, sample_fn, reward, n=n, ks=ks, batch_size=config.eval.batch_size, group_of=group_of
        )
    finally:
        reward.close()
    # `--data synthetic` means "the run's own held-out split", whatever its source.
    data = f"held-out split ({config.data.source})" if args.data == "synthetic" else args.data
    result.update(seed=seed, n_samples=n, checkpoint=str(args.checkpoint), data=data)
    result["temperature"] = temperature
    print(f"seed {seed}, {n} samples per problem, {len(problems)} problems, temperature {temperature}")
    print(format_eval_table(result, f"{args.checkpoint} on {data}"))
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
