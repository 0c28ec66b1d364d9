"""``trainer.strategy: fsdp``: the policy sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Why FSDP2 and not Lightning's ``FSDPStrategy`` (FSDP1): on a machine without CUDA, Lightning 2.6 refuses
``FSDPStrategy`` with ``accelerator="cpu"`` ("The strategy `fsdp` requires a GPU accelerator") and torch's
``FullyShardedDataParallel`` itself raises "FSDP needs a non-CPU accelerator device, but no accelerator
device is detected". ``fully_shard`` runs on CPU (gloo) as well as on CUDA (nccl), so one code path is
tested here and used on GPUs. Lightning drives it through its ``ModelParallelStrategy`` (data-parallel
mesh of all ranks, tensor-parallel size 1); :class:`FSDPPolicyStrategy` applies the sharding plan itself,
so the LightningModule needs no ``configure_model``.

Sharding plan (:func:`sharding_plan`): every transformer block (the classes a ``transformers`` model lists
in ``_no_split_modules``) is one FSDP unit, the whole ``*ForCausalLM`` (embeddings, final norm, LM head,
tied or not) the root unit. The fused loss runs the decoder backbone directly and reads the LM head's
weight outside ``forward``; :func:`shard_policy` routes both calls through the root's FSDP hooks, so the
weight is the gathered full parameter and its gradient is reduce-scattered with the others.

Loss scale: FSDP2 averages gradients over the data-parallel ranks, as DDP does, so the trainer's rule
(loss normalised by the GLOBAL token count, times W) is unchanged; the entropy statistics are summed
through the strategy (``trainer.stats``), one collective per step, as under DDP.

Rollouts: the HF engine calls ``generate`` on the sharded policy; each forward is a collective, so
:func:`shard_policy` marks the model ``_is_fsdp_managed_module`` and ``transformers`` then generates with
``synced_gpus`` (a rank that finished keeps stepping until all have). An engine in another process
(vLLM) needs the full weights: :func:`full_state_dict` gathers them (every rank must call it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn

from entropyctl.validation import ConfigError

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.distributed.device_mesh import DeviceMesh

    from entropyctl.config import RunConfig

__all__ = [
    "FSDPPolicyStrategy",
    "fsdp_strategy",
    "check_fsdp_config",
    "sharding_plan",
    "shard_policy",
    "full_state_dict",
    "is_sharded",
]


def check_fsdp_config(config: RunConfig) -> None:
    """:class:`ConfigError` for the settings ``trainer.strategy: fsdp`` cannot run with (one line each)."""
    t, r = config.trainer, config.rollout
    errors = []
    if t.devices < 2:
        errors.append(
            f"trainer.strategy: fsdp shards over processes; needs trainer.devices >= 2 (got {t.devices})"
        )
    if r.engine != "hf":
        errors.append(
            f"trainer.strategy: fsdp runs with rollout.engine=hf only (got {r.engine!r}): the vLLM engine's "
            "weight sync reads the local state dict, which holds shards under FSDP"
        )
    if r.engine == "hf" and r.dynamic_sampling:
        errors.append(
            "trainer.strategy: fsdp with rollout.dynamic_sampling=true: ranks would call generate (a collective "
            "under FSDP) a different number of times and hang; set rollout.dynamic_sampling=false"
        )
    if errors:
        raise ConfigError(errors)


def sharding_plan(model: torch.nn.Module) -> list[str]:
    """The FSDP units of ``model``, innermost first: every instance of a class in the model's
    ``_no_split_modules`` (its transformer blocks), then the root ``""`` (embeddings, final norm, LM
    head, tied or not: one unit, so a tied head stays tied)."""
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    return [*(name for name, m in model.named_modules() if name and type(m).__name__ in blocks), ""]


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    if not isinstance(backbone, torch.nn.Module) or backbone is model:
        raise ValueError(f"{type(model).__name__}: no decoder backbone under base_model_prefix={prefix!r}")
    return backbone


def _route_through_root(model: torch.nn.Module) -> None:
    """Make the trainer's two calls outside ``forward`` see the gathered root unit.

    The fused path (``models.forward.response_hidden_states``) takes ``model.get_output_embeddings().weight``
    and runs the decoder backbone directly; FSDP only hooks the root's ``forward``. So, outside the root's
    own forward, both calls run the root's FSDP pre/post-forward (``register_fsdp_forward_method``): the
    root unit (embeddings, final norm, LM head) is gathered first, and the head's weight is then the full
    parameter whose gradient FSDP reduce-scatters (as FSDP root it stays gathered until backward).
    Inside the root's forward (``generate``) the plain methods run: its hooks have already gathered."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    inside_root = [False]

    def enter(module: torch.nn.Module, args: Any) -> None:
        inside_root[0] = True

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        inside_root[0] = False

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)

    def routed(owner: Any, name: str, original: Callable[..., Any]) -> None:
        hooked = f"_fsdp_root_{name}"
        setattr(model, hooked, original)
        register_fsdp_forward_method(model, hooked)

        def method(*args: Any, **kwargs: Any) -> Any:
            if inside_root[0]:
                return original(*args, **kwargs)
            return getattr(model, hooked)(*args, **kwargs)

        setattr(owner, name, method)

    backbone = _backbone(model)
    routed(backbone, "forward", backbone.forward)
    routed(model, "get_output_embeddings", model.get_output_embeddings)  # type: ignore[arg-type]


def shard_policy(model: torch.nn.Module, mesh: DeviceMesh) -> list[str]:
    """Apply ``fully_shard`` along :func:`sharding_plan` on ``mesh`` (in place); returns the plan."""
    from torch.distributed.fsdp import fully_shard

    plan = sharding_plan(model)
    for name in plan:
        fully_shard(model.get_submodule(name), mesh=mesh)
    _route_through_root(model)
    # transformers' generate then runs with synced_gpus (every forward is a collective)
    model._is_fsdp_managed_module = True  # type: ignore[assignment]
    return plan


def is_sharded(model: torch.nn.Module) -> bool:
    """True when ``model``'s parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: torch.nn.Module, *, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of ``model``, e.g. for a rollout engine; a collective: every rank
    calls it. ``rank0_only``: only rank 0 receives the tensors (on CPU), the others an empty dict."""
    if not is_sharded(model):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
    state = get_model_state_dict(model, options=options)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _shard_attribute(name: str) -> Callable[[pl.LightningModule, DeviceMesh], None]:
    def shard(module: pl.LightningModule, mesh: DeviceMesh) -> None:
        shard_policy(getattr(module, name), mesh)

    return shard


class FSDPPolicyStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as plain FSDP2 data parallelism over every rank.

    ``shard``: ``(lightning_module, data_parallel_mesh) -> None`` applies ``fully_shard`` (default: the
    module's ``policy`` along :func:`sharding_plan`). Checkpoints are one full file written by rank 0
    (``save_distributed_checkpoint=False``), the format the trainer's resume reads.
    """

    def __init__(
        self,
        devices: int,
        *,
        shard: Callable[[pl.LightningModule, DeviceMesh], None] | None = None,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            data_parallel_size=devices,
            tensor_parallel_size=1,
            save_distributed_checkpoint=False,
            process_group_backend=process_group_backend,
        )
        self._shard = shard or _shard_attribute("policy")

    def setup(self, trainer: pl.Trainer) -> None:
        # ModelParallelStrategy.setup without its configure_model requirement: the plan is applied here.
        from lightning.fabric.utilities.optimizer import _optimizers_to_device

        assert self.model is not None and self.accelerator is not None and self.lightning_module is not None
        self.accelerator.setup(trainer)
        self._shard(self.lightning_module, self.device_mesh["data_parallel"])
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)


def fsdp_strategy(config: RunConfig) -> Any:
    """The strategy for ``trainer.strategy: fsdp`` (after :func:`check_fsdp_config`)."""
    check_fsdp_config(config)
    t = config.trainer
    return FSDPPolicyStrategy(t.devices, process_group_backend="gloo" if t.accelerator == "cpu" else None)
