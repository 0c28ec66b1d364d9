"""Any entropyctl controller, AER's per-prompt coefficients included, driving TRL's ``GRPOTrainer``.

:class:`GRPOTrainer` is a subclass of ``trl.GRPOTrainer`` that takes every TRL argument plus
``controller=``. Each optimizer step it

1. turns TRL's own rewards into group accuracies ``acc_i`` (a completion is correct when its reward is
   ``>= success_threshold``; ``acc_i`` is the fraction of prompt i's ``num_generations`` completions that are),
2. asks the controller for a :class:`~entropyctl.Plan` (``α_i`` per prompt, clip bounds),
3. runs TRL's loss with the plan's clip bounds, and adds ``−α_i·H_ijt`` on every completion token, using the
   entropies TRL's fused LM head already computes (no extra logits) and aggregating tokens exactly as the
   configured ``loss_type`` aggregates its policy term,
4. sums ``Σ H·m`` and ``Σ m`` over every micro-batch of the accumulation window and every process in one
   collective, and hands that exact token-weighted mean to ``controller.observe``.

The controller's state is saved in each TRL checkpoint (``entropyctl_controller.json``) and restored by
``trainer.train(resume_from_checkpoint=...)``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import trl
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from entropyctl import EntropyController, EntropyReading, GroupOutcome, Plan, create_controller

__all__ = ["CONTROLLER_STATE_FILE", "SUPPORTED_LOSS_TYPES", "WEIGHTED_SUM", "GRPOTrainer", "entropy_term"]

#: TRL loss types whose policy term has (ε_low, ε_high) clip bounds the controller can own.
SUPPORTED_LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
#: the file, inside each ``checkpoint-N`` folder, that holds the controller's state.
CONTROLLER_STATE_FILE = "entropyctl_controller.json"
#: ``accuracy_reward`` for the weighted sum of all reward functions (what TRL's advantages use)
WEIGHTED_SUM = "weighted_sum"

# Per-completion columns added to TRL's batch dict; TRL shuffles and splits them with the rest.
_GROUP = "entropyctl_group"  # index of the completion's prompt in the step's GroupOutcome
_CORRECT = "entropyctl_correct"  # 1.0 if the completion's reward reached success_threshold
_LEVEL = "entropyctl_level"  # index of the prompt's `level` value (only with a `level` column)

# Per-level slots in the packed window statistics: Σ H·m, Σ m, Σ α·m, Σ correct, Σ completions.
_PER_LEVEL = 5


def entropy_term(
    weighted_entropy: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    accumulation_steps: float,
    max_completion_length: int | None = None,
    tokens_per_window: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``Σ α_i·H_ijt·m_ijt`` normalised the way TRL's ``loss_type`` normalises its per-token policy loss.

    ``weighted_entropy``: ``[B, T]`` per-token ``α_i·H``; ``mask``: ``[B, T]`` completion mask.
    grpo: per-sequence token mean, then mean over sequences; bnpo: token mean of the micro-batch;
    dr_grpo: sum / (B·max_completion_length); dapo: sum / tokens of this process's accumulation window
    (``tokens_per_window``); luspo: per-sequence token sum, mean over sequences. All but dapo are divided by
    ``accumulation_steps``, as TRL divides its policy term.
    """
    masked = weighted_entropy * mask
    if loss_type == "grpo":
        term = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        term = masked.sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("entropy_term: loss_type='dr_grpo' needs max_completion_length")
        term = masked.sum() / (masked.size(0) * max_completion_length)
    elif loss_type == "luspo":
        term = masked.sum(-1).mean()
    elif loss_type == "dapo":
        if tokens_per_window is None:
            raise ValueError("entropy_term: loss_type='dapo' needs tokens_per_window")
        return masked.sum() / tokens_per_window
    else:
        raise ValueError(
            f"entropy_term: loss_type={loss_type!r} is not supported; expected one of {list(SUPPORTED_LOSS_TYPES)}"
        )
    return term / accumulation_steps


def _resolve_controller(controller: Any) -> EntropyController:
    if isinstance(controller, EntropyController):
        return controller
    if isinstance(controller, str | Mapping) or hasattr(controller, "model_dump"):
        return create_controller(controller)
    raise TypeError(
        "GRPOTrainer(controller=...): expected a registered controller name (e.g. 'aer'), a dict such as "
        f"{{'name': 'aer', 'tau': 0.4}}, a controller config or an EntropyController; got {type(controller).__name__}"
    )


def _trl_adaptive_as_target(args: Any) -> dict[str, Any]:
    """TRL's adaptive entropy coefficient (``use_adaptive_entropy``) as a ``target`` config: its target in
    nats, its ±δ step and bounds, its start, and its gate (the coefficient only after a step at or below the
    target); the clip bounds are TRL's ``epsilon``/``epsilon_high``. A start outside TRL's bounds (which TRL
    allows, ``alpha_0`` does not) becomes the nearest bound."""
    epsilon = float(getattr(args, "epsilon", 0.2))
    epsilon_high = getattr(args, "epsilon_high", None)
    low = float(getattr(args, "entropy_coef_min", 0.0))
    high = float(getattr(args, "entropy_coef_max", 1.0))
    return {
        "name": "target",
        "alpha_0": min(max(float(getattr(args, "entropy_coef", 0.0)), low), high),
        "anchor": {"mode": "absolute", "target_entropy": float(getattr(args, "entropy_target", 0.2))},
        "update": {
            "rule": "sign",
            "delta": float(getattr(args, "entropy_coef_delta", 0.005)),
            "alpha_min": low,
            "alpha_max": high,
            "apply": "at_or_below_target",
        },
        "clip_low": epsilon,
        "clip_high": epsilon if epsilon_high is None else float(epsilon_high),
    }


def _check_trl_args(args: Any, controller: EntropyController) -> None:
    """Refuse TRL options that would apply a second entropy term or leave the controller's clip bounds unused,
    and TRL clip bounds that disagree with the controller's (which are the ones used)."""
    problems = []
    if controller.acts_per_token():
        problems.append(
            f"controller {controller.name!r} acts on tokens (Clip-Cov, KL-Cov, high-entropy tokens, or a "
            "combined controller's token part), which this integration does not apply: TRL's loss would train "
            "without it; use a coefficient controller (aer, target, fixed, clip_higher) here, or entropyctl's own "
            "trainer (entropyctl train) for token-level methods"
        )
    first = controller.plan(
        GroupOutcome(accuracy=torch.zeros(1), group_size=1, step=0)
    )  # pure: no state change
    epsilon_low = getattr(args, "epsilon", first.clip_low)
    epsilon_high = getattr(args, "epsilon_high", None)
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    if (epsilon_low, epsilon_high) != (first.clip_low, first.clip_high):
        problems.append(
            f"epsilon={epsilon_low}, epsilon_high={epsilon_high} differ from the controller's clip bounds "
            f"clip_low={first.clip_low}, clip_high={first.clip_high}, which are the ones used; set clip_low/clip_high "
            f"in the controller (e.g. {{'name': '{controller.name}', 'clip_high': {epsilon_high}}}) or make "
            "epsilon/epsilon_high match"
        )
    if getattr(args, "use_adaptive_entropy", False):
        trls_rule = _trl_adaptive_as_target(args)
        problems.append(
            "use_adaptive_entropy=True adds TRL's own adaptive entropy bonus on top of the controller's; set it to "
            f"False and use controller={trls_rule} for TRL's rule (it raises its coefficient "
            "at a reading exactly on the target, where `target` holds it"
            + (
                "; your entropy_coef lies outside [entropy_coef_min, entropy_coef_max], so this starts at the "
                "nearest bound"
                if trls_rule["alpha_0"] != float(args.entropy_coef)
                else ""
            )
            + ")"
        )
    elif getattr(args, "entropy_coef", 0.0) != 0.0:
        problems.append(
            f"entropy_coef={args.entropy_coef} adds TRL's fixed entropy bonus on top of the controller's; set it to "
            f"0.0 and use controller={{'name': 'fixed', 'alpha': {args.entropy_coef}}} for a fixed bonus"
        )
    if getattr(args, "loss_type", "dapo") not in SUPPORTED_LOSS_TYPES:
        problems.append(
            f"loss_type={args.loss_type!r} has no (epsilon_low, epsilon_high) clip bounds for the controller to "
            f"set; use one of {list(SUPPORTED_LOSS_TYPES)}"
        )
    if getattr(args, "top_entropy_quantile", 1.0) < 1.0:
        problems.append(
            f"top_entropy_quantile={args.top_entropy_quantile} (a high-entropy token mask) is not supported; set 1.0"
        )
    if problems:
        raise ValueError(
            "entropyctl GRPOTrainer: unsupported GRPOConfig options:\n- " + "\n- ".join(problems)
        )


def _dataset_levels(dataset: Any) -> list[Any]:
    """Sorted distinct values of a ``level`` column (an in-memory ``datasets.Dataset``), else ``[]``: an
    ``IterableDataset`` is never read here (its column would be a stream read to its end, an endless one
    never, a Hub stream downloaded in full)."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        return []
    names = getattr(dataset, "column_names", None)
    if not names or "level" not in names:
        return []
    try:
        values = dataset["level"]
    except Exception:  # an IterableDataset cannot be indexed by column: no per-level numbers
        return []
    return sorted(set(values), key=lambda v: (str(type(v)), v))


class GRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` whose entropy bonus and clip bounds come from an entropyctl controller.

    controller: a registered name (``"aer"``), a dict (``{"name": "aer", "tau": 0.4}``), a controller config
        or an :class:`~entropyctl.EntropyController`.
    success_threshold: a completion counts as correct for the group accuracy when its reward is ``>=`` this
        (TRL's ``accuracy_reward`` gives 1.0 / 0.0, hence the default 1.0).
    accuracy_reward: the name of the reward function whose value decides correctness; ``"weighted_sum"``
        the weighted sum of all reward functions (what TRL's advantages use); ``None`` (the default): the
        one reward function's weighted value, and with several an error (a format reward beside the accuracy one
        would count a well-formatted wrong answer as correct).
    Everything else is passed to ``trl.GRPOTrainer`` unchanged.
    """

    def __init__(
        self,
        *args: Any,
        controller: Any = "aer",
        success_threshold: float = 1.0,
        accuracy_reward: str | None = None,
        **kwargs: Any,
    ) -> None:
        bound = inspect.signature(trl.GRPOTrainer.__init__).bind_partial(None, *args, **kwargs)
        self.controller = _resolve_controller(controller)
        if bound.arguments.get("args") is not None:
            _check_trl_args(bound.arguments["args"], self.controller)  # fail before the model is loaded
        if not math.isfinite(success_threshold):
            raise ValueError(
                f"GRPOTrainer: success_threshold must be a finite number, got {success_threshold}"
            )
        self.success_threshold = float(success_threshold)
        super().__init__(*args, **kwargs)
        _check_trl_args(self.args, self.controller)
        self._accuracy_column = self._resolve_accuracy_reward(accuracy_reward)
        self.levels: list[Any] = _dataset_levels(self.train_dataset)
        self._level_index = {level: i for i, level in enumerate(self.levels)}
        self._outcome: dict[str, GroupOutcome] = {}
        self._window: torch.Tensor | None = None
        self._rewards_per_func: torch.Tensor | None = None
        self._capturing = False
        self._captured_entropies: torch.Tensor | None = None
        #: the last reading handed to ``controller.observe`` (global, token-weighted).
        self.last_reading: EntropyReading | None = None

    def _resolve_accuracy_reward(self, accuracy_reward: str | None) -> int | None:
        names = list(self.reward_func_names)
        if accuracy_reward is None and len(names) > 1:
            raise ValueError(
                f"GRPOTrainer: {len(names)} reward functions ({names}): name the one that decides whether a "
                f"completion is correct, e.g. accuracy_reward={names[0]!r}, or accuracy_reward="
                f"{WEIGHTED_SUM!r} to count the weighted sum >= success_threshold as correct (with a format "
                "reward beside the accuracy one, a well-formatted wrong answer would count as correct and "
                "AER would withhold the bonus from the prompts the model fails)"
            )
        if accuracy_reward is None or (accuracy_reward == WEIGHTED_SUM and WEIGHTED_SUM not in names):
            return None
        if accuracy_reward not in names:
            raise ValueError(
                f"GRPOTrainer: accuracy_reward={accuracy_reward!r} is not a reward function; got {names}"
            )
        return names.index(accuracy_reward)

    # ---- group accuracies from TRL's rewards --------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[no-untyped-def]
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # every process's completions, in global order
        return rewards_per_func

    def _completion_correct(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        if self._accuracy_column is None:
            weights = self.reward_weights.to(rewards_per_func.device)
            rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
            rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan  # unscorable: not correct
        else:
            rewards = rewards_per_func[:, self._accuracy_column]
        return (rewards >= self.success_threshold).float()  # NaN compares False

    def _generate_and_score_completions(self, inputs):  # type: ignore[no-untyped-def]
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        assert self._rewards_per_func is not None, "TRL scored no rewards for this batch"
        correct = self._completion_correct(self._rewards_per_func).cpu()
        self._rewards_per_func = None  # never reused by a later batch
        self._outcome[mode] = GroupOutcome(
            accuracy=correct.view(-1, group_size).mean(dim=1),
            group_size=group_size,
            step=self.state.global_step,
        )
        # TRL's sampler puts a prompt's completions in consecutive global rows; process k holds rows [k·n, (k+1)·n).
        start = self.accelerator.process_index * len(inputs)
        rows = torch.arange(start, start + len(inputs))
        device = self.accelerator.device
        output[_GROUP] = (rows // group_size).to(device)
        output[_CORRECT] = correct[rows].to(device)
        if self.levels:
            output[_LEVEL] = torch.tensor(
                [self._level_index.get(x.get("level"), -1) for x in inputs], device=device
            )
        return output

    # ---- the loss -----------------------------------------------------------------------------------------

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._capturing:
            self._captured_entropies = entropies  # TRL's own fused-LM-head entropies, with their graph
        return logps, entropies, aux

    def current_plan(self, mode: str = "train") -> Plan:
        """The controller's plan for the latest generation batch (pure: ``plan`` never changes state)."""
        outcome = self._outcome.get(mode)
        if outcome is None:
            raise RuntimeError("GRPOTrainer.current_plan: no completions have been scored yet")
        outcome = GroupOutcome(outcome.accuracy, outcome.group_size, step=self.state.global_step)
        return self.controller.plan(outcome)

    def _compute_loss(self, model, inputs):  # type: ignore[no-untyped-def]
        mode = "train" if self.model.training else "eval"
        plan = self.current_plan(mode)
        self.epsilon_low, self.epsilon_high = plan.clip_low, plan.clip_high
        self._capturing = True
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._capturing = False
        entropies, self._captured_entropies = self._captured_entropies, None
        assert entropies is not None
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        mask = mask.to(entropies.dtype)
        coef = plan.coef.to(entropies.device, entropies.dtype)[inputs[_GROUP]]  # α_i of each completion
        loss = loss - self._entropy_term(coef.unsqueeze(1) * entropies, mask, inputs, mode)
        if mode == "train":
            self._accumulate(entropies.detach(), mask, coef.detach(), inputs)
            if self.accelerator.sync_gradients:
                self._observe_window(plan)
        return loss

    def _entropy_term(
        self, weighted: torch.Tensor, mask: torch.Tensor, inputs: Any, mode: str
    ) -> torch.Tensor:
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        tokens = None
        if self.loss_type == "dapo":
            # TRL's dapo normaliser: the generation batch's tokens, per process, per accumulation window
            tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                tokens = tokens * self.current_gradient_accumulation_steps / self.args.steps_per_generation  # type: ignore[attr-defined]
        return entropy_term(
            weighted,
            mask,
            self.loss_type,
            accumulation_steps=accumulation,
            max_completion_length=self.max_completion_length,
            tokens_per_window=tokens,
        )

    # ---- the exact global reading -------------------------------------------------------------------------

    def _accumulate(
        self, entropies: torch.Tensor, mask: torch.Tensor, coef: torch.Tensor, inputs: Any
    ) -> None:
        stats = torch.zeros(2 + _PER_LEVEL * len(self.levels), dtype=torch.float64, device=entropies.device)
        token_entropy = (entropies * mask).sum(-1).double()  # per completion
        tokens = mask.sum(-1).double()
        stats[0], stats[1] = token_entropy.sum(), tokens.sum()
        if self.levels:
            level = inputs[_LEVEL]
            per_completion = torch.stack(
                [
                    token_entropy,
                    tokens,
                    coef.double() * tokens,
                    inputs[_CORRECT].double(),
                    torch.ones_like(tokens),
                ],
                dim=1,
            )
            known = level >= 0
            per_level = torch.zeros(len(self.levels), _PER_LEVEL, dtype=torch.float64, device=stats.device)
            per_level.index_add_(0, level[known], per_completion[known])
            stats[2:] = per_level.flatten()
        self._window = stats if self._window is None else self._window + stats

    def _observe_window(self, plan: Plan) -> None:
        """One collective for the whole window, then ``observe`` with identical numbers on every rank."""
        assert self._window is not None
        totals = self.accelerator.reduce(self._window, reduction="sum").cpu()
        self._window = None
        entropy_sum, tokens = float(totals[0]), float(totals[1])
        reading = EntropyReading(
            mean_entropy=entropy_sum / tokens if tokens > 0 else math.nan,
            tokens=int(tokens),
            step=self.state.global_step,
        )
        self.controller.observe(reading)
        self.last_reading = reading
        self._log_step(reading, plan, totals[2:].view(-1, _PER_LEVEL) if self.levels else None)

    def _log_step(self, reading: EntropyReading, plan: Plan, per_level: torch.Tensor | None) -> None:
        """Into TRL's metric buffers (averaged and reported by ``trainer.log``). Undefined values (H0 before
        anchoring, a level with no completions this step) are left out rather than logged as NaN/None."""
        metrics = self.controller.metrics()
        values = {
            "entropyctl/entropy": reading.mean_entropy,
            "entropyctl/coef_mean": float(plan.coef.float().mean()) if plan.coef.numel() else math.nan,
            "entropyctl/clip_low": plan.clip_low,
            "entropyctl/clip_high": plan.clip_high,
        }
        for key in ("alpha", "target_entropy", "h0", "readings_ignored"):
            values[f"entropyctl/{key}"] = float(metrics.get(key, math.nan))
        if per_level is not None:
            for level, (h_sum, tokens, coef_tokens, correct, completions) in zip(
                self.levels, per_level.tolist(), strict=True
            ):
                if completions > 0:
                    values[f"entropyctl/acc_level_{level}"] = correct / completions
                if tokens > 0:
                    values[f"entropyctl/entropy_level_{level}"] = h_sum / tokens
                    values[f"entropyctl/coef_level_{level}"] = coef_tokens / tokens
        for key, value in values.items():
            if math.isfinite(value):
                self._metrics["train"][key].append(value)

    # ---- checkpoints --------------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):  # type: ignore[no-untyped-def]
        # written before transformers' own files: its save ends with the Hub push of the folder
        # (push_to_hub with hub_strategy checkpoint), which must find the controller's state there
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            payload = {"controller": self.controller.name, "state": self.controller.state_dict()}
            with open(os.path.join(folder, CONTROLLER_STATE_FILE), "w") as f:
                json.dump(payload, f, indent=1)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):  # type: ignore[no-untyped-def]
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, CONTROLLER_STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"resume_from_checkpoint={checkpoint!r}: {CONTROLLER_STATE_FILE} is missing, so the entropy "
                "controller's state (alpha, H0, ...) cannot be restored; resume from a checkpoint written by "
                "entropyctl.integrations.trl.GRPOTrainer"
            )
        with open(path) as f:
            payload = json.load(f)
        if payload.get("controller") != self.controller.name:
            raise ValueError(
                f"{path}: saved by controller {payload.get('controller')!r}, but this trainer runs "
                f"{self.controller.name!r}; resume with the same controller"
            )
        self.controller.load_state_dict(payload["state"])
