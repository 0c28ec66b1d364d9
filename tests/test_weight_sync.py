"""The shared-memory weight transport (rollout/weight_sync.py) without vLLM: the bucket plan, and the whole
protocol across two real processes (the receiver maps the sender's region and loads views of it, one bucket
per message), exactly as the vLLM engine's worker does it."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator

import pytest
import torch

from entropyctl.rollout.weight_sync import (
    ALIGNMENT,
    SharedRegion,
    StreamingLoad,
    attach_region,
    bucket_views,
    layer_key,
    plan_buckets,
    region_bytes,
    write_bucket,
)


def _weights(layers: int = 4, width: int = 24, vocab: int = 50) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    weights = [("model.embed_tokens.weight", torch.randn(vocab, width, generator=g))]
    for i in range(layers):
        for part, shape in [
            ("self_attn.q_proj.weight", (width, width)),
            ("self_attn.k_proj.weight", (width // 2, width)),
            ("self_attn.v_proj.weight", (width // 2, width)),
            ("mlp.up_proj.weight", (2 * width, width)),
            ("input_layernorm.weight", (width,)),
        ]:
            weights.append((f"model.layers.{i}.{part}", torch.randn(*shape, generator=g)))
    weights.append(("model.norm.weight", torch.randn(width, generator=g)))
    return weights


def test_layer_key_keeps_a_transformer_layer_together():
    assert layer_key("model.layers.12.mlp.up_proj.weight") == "model.layers.12."
    assert layer_key("model.layers.1.self_attn.q_proj.weight") == "model.layers.1."
    assert layer_key("model.embed_tokens.weight") == "model.embed_tokens."
    # GPT-2 / Falcon / Bloom name their blocks h.<i>, MPT blocks.<i>: one unit too (a split c_attn weight and
    # bias, in two buckets, let the next bucket's write overwrite a tensor vLLM's loader still held)
    assert layer_key("transformer.h.3.attn.c_attn.weight") == layer_key("transformer.h.3.attn.c_attn.bias")
    assert layer_key("transformer.h.3.attn.c_attn.bias") == "transformer.h.3."
    assert layer_key("transformer.blocks.0.ffn.up_proj.weight") == "transformer.blocks.0."
    assert (
        layer_key("lm_head.weight") == layer_key("lm_head.bias") == "lm_head."
    )  # a module outside the blocks
    assert layer_key("weight") == "weight"
    assert (
        layer_key("model.hidden.0.w.weight") == "model.hidden.0.w."
    )  # "hidden" is no block name: the module


@pytest.mark.parametrize("bucket_bytes", [1, 4096, 9000, 10**9])
@pytest.mark.parametrize("element_size", [2, 4])
def test_plan_covers_every_tensor_once_in_order_with_whole_layers(bucket_bytes, element_size):
    weights = _weights()
    buckets = plan_buckets(weights, element_size=element_size, bucket_bytes=bucket_bytes)
    flat = [slot for bucket in buckets for slot in bucket]
    assert [s.name for s in flat] == [name for name, _ in weights]
    assert [s.shape for s in flat] == [tuple(t.shape) for _, t in weights]
    owner = {s.name: i for i, bucket in enumerate(buckets) for s in bucket}
    for name, _ in weights:  # a layer never straddles two buckets
        assert owner[name] == owner[[n for n, _ in weights if layer_key(n) == layer_key(name)][0]]
    for bucket in buckets:
        ends = 0
        for slot in bucket:  # aligned, in order, no overlap
            assert slot.offset % ALIGNMENT == 0 and slot.offset >= ends
            ends = slot.offset + slot.numel * element_size
        layers = {layer_key(s.name) for s in bucket}
        if len(layers) > 1:  # several layers share a bucket only within its budget
            assert ends <= bucket_bytes
    assert region_bytes(buckets, element_size) >= max(
        s.offset + s.numel * element_size for b in buckets for s in b
    )
    if bucket_bytes >= 10**9:
        assert len(buckets) == 1
    if bucket_bytes == 1:  # every layer alone
        assert len(buckets) == len({layer_key(n) for n, _ in weights})


def test_region_is_shared_with_a_second_mapping_and_deleted_on_close():
    region = SharedRegion(4096)
    other = attach_region(region.path, 4096)
    assert region.tensor is not None
    region.tensor[:8] = torch.arange(8, dtype=torch.uint8)
    assert other[:8].tolist() == list(range(8))
    path = region.path
    region.close()
    assert not path.exists()


def test_region_leaves_a_full_dev_shm_for_the_temp_directory(monkeypatch):
    """A container's /dev/shm is often 64 MiB: a region that does not fit twice goes to the temp
    directory (a mapped file, the same semantics) instead of dying of SIGBUS at the first write."""
    import os
    import tempfile
    from pathlib import Path

    from entropyctl.rollout import weight_sync

    real = os.statvfs

    def tiny_shm(path):
        stat = real(path)
        if str(path) == weight_sync.SHM:
            return os.statvfs_result((*stat[:4], 1, *stat[5:]))  # 1 block available
        return stat

    monkeypatch.setattr(os, "statvfs", tiny_shm)
    assert weight_sync.region_directory(4096) is None
    region = SharedRegion(4096)
    try:
        assert region.path.parent == Path(tempfile.gettempdir())
        other = attach_region(region.path, 4096)
        assert region.tensor is not None
        region.tensor[:4] = 7
        assert other[:4].tolist() == [7, 7, 7, 7]
    finally:
        region.close()


def test_streaming_load_hands_every_item_over_and_returns_the_result():
    seen: list[str] = []

    def load(items: Iterator[tuple[str, torch.Tensor]]) -> int:
        for name, _ in items:
            assert not torch.is_grad_enabled()  # the loader's thread runs under no_grad
            seen.append(name)
        return len(seen)

    receiver = StreamingLoad(load)
    receiver.feed([("a", torch.zeros(1)), ("b", torch.zeros(1))])
    assert seen == ["a", "b"]  # feed returns only once the loader took the whole bucket
    receiver.feed([("c", torch.zeros(1))])
    assert receiver.finish() == 3


def test_streaming_load_reports_the_loaders_error_and_an_early_stop():
    def fails(items: Iterator[tuple[str, torch.Tensor]]) -> None:
        for name, _ in items:
            if name == "bad":
                raise KeyError(name)

    receiver = StreamingLoad(fails)
    with pytest.raises(RuntimeError, match="weight load failed.*KeyError"):
        receiver.feed([("ok", torch.zeros(1)), ("bad", torch.zeros(1))])

    def stops(items: Iterator[tuple[str, torch.Tensor]]) -> None:
        next(items)

    receiver = StreamingLoad(stops)
    with pytest.raises(RuntimeError, match="before it took every tensor"):
        receiver.feed([("a", torch.zeros(1)), ("b", torch.zeros(1))])


def _receiver_process(connection, path: str, nbytes: int, dtype: torch.dtype) -> None:
    """The engine's side: map the region, load each bucket's views into its own tensors, reply per bucket."""
    region = attach_region(path, nbytes)
    received: dict[str, torch.Tensor] = {}

    def load(items: Iterator[tuple[str, torch.Tensor]]) -> int:
        for name, view in items:
            received[name] = view.clone()  # the engine's own parameter storage
        return len(received)

    receiver = StreamingLoad(load)
    while (slots := connection.recv()) is not None:
        receiver.feed(bucket_views(region, slots, dtype))
        connection.send("taken")
    count = receiver.finish()
    # As numpy (fp32 holds bf16 exactly): torch tensors would travel as file descriptors of this process.
    connection.send((count, {name: (str(t.dtype), t.float().numpy()) for name, t in received.items()}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_processes_receive_exactly_the_senders_tensors_bucket_by_bucket(dtype):
    weights = _weights()
    element_size = torch.empty((), dtype=dtype).element_size()
    buckets = plan_buckets(weights, element_size=element_size, bucket_bytes=6000)
    assert len(buckets) > 2  # the region is reused, bucket after bucket
    region = SharedRegion(region_bytes(buckets, element_size))
    assert region.tensor is not None
    by_name = dict(weights)
    context = mp.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_receiver_process, args=(theirs, str(region.path), region.nbytes, dtype))
    child.start()
    try:
        for slots in buckets:
            write_bucket(region.tensor, slots, [by_name[s.name] for s in slots], dtype)
            ours.send(slots)
            assert ours.recv() == "taken"
        ours.send(None)
        count, received = ours.recv()
    finally:
        child.join(timeout=60)
        region.close()
    assert child.exitcode == 0
    assert count == len(weights) and list(received) == [name for name, _ in weights]
    for name, tensor in weights:
        dtype_name, values = received[name]
        assert dtype_name == str(dtype)
        assert torch.equal(torch.from_numpy(values), tensor.to(dtype).float()), name


class _PaddingWorker:
    """vLLM's layer-wise reload as it treats a padded layer: a block's tensors are copied in as they come,
    but a layer vLLM pads beyond what it is sent (its embedding, to a multiple of 64 rows) is only copied
    when the sync ends — the loader keeps the tensors it was given until then."""

    def __init__(self) -> None:
        self.loaded: dict[str, torch.Tensor] = {}

    def reload_weights(self, weights_iterator: Iterator[tuple[str, torch.Tensor]], **_: object) -> None:
        kept = []
        for name, tensor in weights_iterator:
            if name.startswith("model.layers."):
                self.loaded[name] = tensor.clone()
            else:
                kept.append((name, tensor))  # the layer is not complete: its tensors wait
        for name, tensor in kept:  # vLLM's finalize_layerwise_reload
            self.loaded[name] = tensor.clone()

    def get_model(self) -> torch.nn.Module:
        return torch.nn.Module()


class _InProcessLLM:
    def __init__(self, worker: _PaddingWorker) -> None:
        self.worker = worker

    def collective_rpc(self, method, args=()):  # type: ignore[no-untyped-def]
        return [method(self.worker, *args)]


def test_a_layer_the_engine_holds_to_the_end_of_the_sync_gets_its_own_tensors():
    """The engine's side of a shared-memory sync in several buckets (the regions reused): a layer the loader
    keeps until the sync ends (an embedding vLLM pads) still ends up with the values sent, not with those of
    a later bucket written over its region."""
    from entropyctl.rollout.vllm import VLLMConfig, VLLMEngine

    weights = _weights(layers=6, vocab=22)
    worker = _PaddingWorker()
    engine = VLLMEngine.__new__(VLLMEngine)
    engine.config = VLLMConfig(sync_bucket_mib=6000 / 2**20)
    engine._regions = []
    engine.llm = _InProcessLLM(worker)
    try:
        engine._sync_through_shared_memory(weights)
    finally:
        for region in engine._regions:
            region.close()
    assert engine.last_sync_buckets > 2  # bucket 0's region holds bucket 2 before the sync ends
    assert list(worker.loaded) == [name for name, _ in weights if name.startswith("model.layers.")] + [
        "model.embed_tokens.weight",
        "model.norm.weight",
    ]
    for name, tensor in weights:
        assert torch.equal(worker.loaded[name], tensor), name
