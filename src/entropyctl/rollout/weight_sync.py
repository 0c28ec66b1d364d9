"""Weights from the trainer to a rollout engine in another process, through shared memory, bucket by bucket.

The sender (the trainer's process) owns shared-memory regions: files under ``/dev/shm`` mapped with
``MAP_SHARED`` (``torch.from_file(..., shared=True)``), so both processes see the same pages and nothing is
serialised. A sync walks the policy's tensors in checkpoint order:

1. ``plan_buckets`` packs them into buckets of at most ``bucket_bytes`` (in the engine's dtype), keeping every
   transformer block (``model.layers.<i>.``, ``transformer.h.<i>.``, ...) and every other module whole in one
   bucket, so the receiver never holds half a layer;
   a layer larger than the bucket gets a bucket of its own (a region is sized to the largest bucket).
2. For each bucket the sender copies its tensors into a region (``copy_``, casting to the engine's dtype)
   and makes one call into the engine with the bucket's layout only: names, shapes, offsets. With two
   regions the copy of bucket k+1 overlaps the engine's load of bucket k.
3. The receiver (``StreamingLoad``, in the engine's worker) feeds zero-copy views of the region to the
   engine's loader, which copies them into its parameters, and returns once the loader asked for the item
   after the bucket's last one, i.e. once it has taken every tensor of the bucket; then the region may be
   overwritten.

Memory: two buckets beyond the two models, never a second copy of the whole model (the serialised path held
the ``torch.save`` buffer, its ``bytes``, the message and the unpickled list at once). Time: one ``copy_`` per
tensor on the sender's side (overlapped) plus one call per bucket, beside what the engine's own load costs.

The receiver runs the engine's loader (one call that consumes an iterator) in a thread of the engine's
process, fed one bucket per call. vLLM's layer-wise reload keeps a layer's tensors until every element of
the layer has come: for a transformer block that is within its bucket (a bucket only ever holds whole
blocks), but an embedding or head that vLLM pads to a multiple of 64 rows never completes before the sync
ends, so its views would be read after the region held later buckets. The receiver therefore hands the
loader views of a block's tensors and copies of the others (:func:`loader_items`).
"""

from __future__ import annotations

import os
import queue
import re
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "Slot",
    "SharedRegion",
    "StreamingLoad",
    "attach_region",
    "bucket_views",
    "layer_key",
    "plan_buckets",
    "region_bytes",
    "region_directory",
    "write_bucket",
]

#: Offsets are multiples of this many bytes (cache lines; any dtype's alignment divides it).
ALIGNMENT = 64

#: a transformer block's prefix in the names transformers gives them: ``model.layers.3.`` (Llama, Qwen,
#: Mistral...), ``transformer.h.3.`` (GPT-2, Falcon, Bloom), ``transformer.blocks.3.`` (MPT), ``layer.3.``
_LAYER = re.compile(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+\.)")


@dataclass(frozen=True)
class Slot:
    """One tensor in a bucket: its checkpoint name, shape, and byte offset into the shared region."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n


def layer_key(name: str) -> str:
    """The unit a bucket keeps whole: ``model.layers.3.`` for a block's tensors, else the module the tensor
    belongs to (``lm_head.`` for ``lm_head.weight`` and ``lm_head.bias``: the engine's loader may keep a
    module's first tensor until its last one has come)."""
    match = _LAYER.match(name)
    if match:
        return match.group(1)
    module, dot, _ = name.rpartition(".")
    return module + dot if dot else name


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def plan_buckets(
    weights: Sequence[tuple[str, torch.Tensor]], *, element_size: int, bucket_bytes: int
) -> list[list[Slot]]:
    """Pack ``weights`` (in order) into buckets of at most ``bucket_bytes``, whole layers per bucket.

    ``element_size`` is the bytes per element in the engine's dtype. A layer larger than ``bucket_bytes``
    gets a bucket of its own. Returns the buckets' slots; ``region_bytes`` gives the region they need.
    """
    if bucket_bytes <= 0 or element_size <= 0:
        raise ValueError(
            f"plan_buckets: bucket_bytes and element_size must be > 0, got {bucket_bytes}, {element_size}"
        )
    groups: list[list[tuple[str, torch.Tensor]]] = []
    for name, tensor in weights:
        if groups and layer_key(groups[-1][-1][0]) == layer_key(name):
            groups[-1].append((name, tensor))
        else:
            groups.append([(name, tensor)])
    buckets: list[list[Slot]] = []
    used = 0
    for group in groups:
        sizes = [_aligned(t.numel() * element_size) for _, t in group]
        if buckets and used + sum(sizes) > bucket_bytes:
            buckets.append([])
            used = 0
        if not buckets:
            buckets.append([])
        for (name, tensor), size in zip(group, sizes, strict=True):
            buckets[-1].append(Slot(name, tuple(tensor.shape), used))
            used += size
    return [bucket for bucket in buckets if bucket]


def region_bytes(buckets: Sequence[Sequence[Slot]], element_size: int) -> int:
    """The shared region's size: the largest bucket (at least one alignment unit)."""
    ends = [slot.offset + _aligned(slot.numel * element_size) for bucket in buckets for slot in bucket]
    return max([ALIGNMENT, *ends])


def _view(region: torch.Tensor, slot: Slot, dtype: torch.dtype) -> torch.Tensor:
    nbytes = slot.numel * torch.empty((), dtype=dtype).element_size()
    return region[slot.offset : slot.offset + nbytes].view(dtype).view(slot.shape)


def write_bucket(
    region: torch.Tensor, slots: Sequence[Slot], tensors: Sequence[torch.Tensor], dtype: torch.dtype
) -> None:
    """Copy ``tensors`` (one per slot) into the region, cast to ``dtype``."""
    with torch.no_grad():
        for slot, tensor in zip(slots, tensors, strict=True):
            _view(region, slot, dtype).copy_(tensor)


def bucket_views(
    region: torch.Tensor, slots: Sequence[Slot], dtype: torch.dtype
) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` views of one bucket in the region (no copy)."""
    return [(slot.name, _view(region, slot, dtype)) for slot in slots]


def loader_items(views: Sequence[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """What the engine's loader gets of a bucket: the views of a transformer block's tensors, which it has
    loaded once it asks for the next item, and copies of every other tensor (embedding, head, final norm:
    vLLM keeps a layer padded beyond what it is sent until the end of the sync)."""
    return [(name, view if _LAYER.match(name) else view.clone()) for name, view in views]


SHM = "/dev/shm"


def region_directory(nbytes: int) -> str | None:
    """``/dev/shm`` when it exists, is writable and has room for the region twice over; else None (the
    temp directory). Containers often cap ``/dev/shm`` (Docker: 64 MiB unless ``--shm-size``)."""
    if not (os.path.isdir(SHM) and os.access(SHM, os.W_OK)):
        return None
    stat = os.statvfs(SHM)
    return SHM if stat.f_bavail * stat.f_frsize >= 2 * nbytes else None


class SharedRegion:
    """A shared-memory region of ``nbytes`` as a ``uint8`` tensor; other processes map it by ``path``.

    The file lives under ``/dev/shm`` when it has room (memory only), else in the temp directory (a mapped
    file: the page cache, same semantics). Its space is reserved up front (``posix_fallocate``), so a full
    file system fails here with an error instead of a bus error at the first write. ``close()`` unmaps and
    deletes it; it is also deleted when the object is collected.
    """

    def __init__(self, nbytes: int, *, prefix: str = "entropyctl-weights-") -> None:
        if nbytes <= 0:
            raise ValueError(f"SharedRegion: nbytes must be > 0, got {nbytes}")
        fd, path = tempfile.mkstemp(prefix=prefix, dir=region_directory(nbytes))
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, nbytes)
            else:  # pragma: no cover - macOS: sparse, like any mmap'd file
                os.ftruncate(fd, nbytes)
        except OSError as err:
            os.close(fd)
            Path(path).unlink(missing_ok=True)
            raise OSError(
                f"weight sync: cannot reserve {nbytes / 2**20:.0f} MiB for a shared region in "
                f"{Path(path).parent} ({err}); lower rollout.options.sync_bucket_mib or free space there"
            ) from err
        os.close(fd)
        self.path = Path(path)
        self.nbytes = nbytes
        self.tensor: torch.Tensor | None = attach_region(self.path, nbytes)
        self._finalizer = weakref.finalize(self, self.path.unlink, missing_ok=True)

    def close(self) -> None:
        self.tensor = None
        self._finalizer()


def attach_region(path: str | os.PathLike[str], nbytes: int) -> torch.Tensor:
    """Map an existing region (``SharedRegion.path``) as a ``uint8`` tensor shared with its owner."""
    return torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)


class StreamingLoad:
    """Runs ``load(iterator)`` in a thread while its items arrive one bucket per ``feed`` call.

    ``feed(items)`` returns once the loader has asked for the item after the last of ``items`` (it has taken
    them all), or raises the loader's error. ``finish()`` ends the iterator, waits for ``load`` to return and
    returns its result (or raises its error). The loader sees one iterator over every item of every bucket.
    """

    def __init__(self, load: Callable[[Iterator[tuple[str, torch.Tensor]]], object]) -> None:
        self._queue: queue.Queue[tuple[list[tuple[str, torch.Tensor]], threading.Event] | None] = (
            queue.Queue()
        )
        self._error: BaseException | None = None
        self._result: object = None
        self._thread = threading.Thread(
            target=self._run, args=(load,), name="entropyctl-weight-load", daemon=True
        )
        self._thread.start()

    def _items(self) -> Iterator[tuple[str, torch.Tensor]]:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            items, taken = entry
            yield from items
            taken.set()  # runs when the loader asks for the next item: it holds none of these any more

    def _run(self, load: Callable[[Iterator[tuple[str, torch.Tensor]]], object]) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                self._result = load(self._items())
        except BaseException as err:  # re-raised in the caller's thread
            self._error = err

    def _wait(self, event: threading.Event) -> None:
        while not event.wait(0.05):
            if not self._thread.is_alive():
                break
        if self._error is not None:
            raise RuntimeError(f"weight load failed in the engine: {self._error!r}") from self._error
        if not event.is_set():
            raise RuntimeError("weight load ended before it took every tensor sent")

    def feed(self, items: list[tuple[str, torch.Tensor]]) -> None:
        taken = threading.Event()
        self._queue.put((items, taken))
        self._wait(taken)

    def finish(self) -> object:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"weight load failed in the engine: {self._error!r}") from self._error
        return self._result
