"""The training batch stream: patches sampled on a background thread, augmented on the device.

A background thread samples the next numpy batches from the memory-mapped cases (a queue of
``prefetch`` batches) while the training step runs; on delivery the batch is copied to the
device (from pinned memory when the device is CUDA, so the copy is asynchronous) and augmented
there (:mod:`nnpipe.data.augment`).

Exact resumption: the sampling thread runs ahead of training, so its generator's current state
is *not* what a checkpoint should hold. Each queued batch carries the numpy generator state as
it was right after that batch was sampled; when a batch is delivered that state becomes the
loader's state, i.e. the state from which the next batch to be *delivered* is sampled.
Augmentation draws from a torch generator in the main thread, in delivery order. Restoring
both with :meth:`BatchLoader.load_state_dict` therefore reproduces the same following batches,
however far the thread had run ahead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnpipe.data.augment import AugmentSettings, augment
from nnpipe.data.sampling import PatchSampler, SamplerSettings

_POLL_S = 0.1  # how often a blocked thread looks at the stop flag, seconds

# A queued item: a batch with the sampler state after it, or the error that ended sampling.
_Item = tuple[torch.Tensor, torch.Tensor, dict[str, Any]] | BaseException


def _put(items: queue.Queue[_Item], item: _Item, stop: threading.Event) -> bool:
    """Put ``item`` unless asked to stop first; True if it was queued."""
    while not stop.is_set():
        try:
            items.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(sampler: PatchSampler, batch_size: int, state: dict[str, Any], pin: bool,
             items: queue.Queue[_Item], stop: threading.Event) -> None:
    """Thread body: sample batches from ``state`` onwards until stopped or failing."""
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    while not stop.is_set():
        try:
            image, seg = sampler.sample(rng, batch_size)
            image_t, seg_t = torch.from_numpy(image), torch.from_numpy(seg)
            if pin:
                image_t, seg_t = image_t.pin_memory(), seg_t.pin_memory()
            item: _Item = (image_t, seg_t, rng.bit_generator.state)
        except Exception as exc:  # handed to the training thread, which re-raises it
            _put(items, exc, stop)
            return
        if not _put(items, item, stop):
            return


class BatchLoader:
    """An endless iterator of augmented training batches on ``device``.

    Args:
        preprocessed_dir: the preprocessed folder (arrays and ``manifest.json``).
        case_ids: the cases to train on (a fold's training split).
        sampler_settings: patch size, dimensionality, foreground probability.
        augment_settings: augmentation probabilities and ranges.
        batch_size: samples per batch.
        seed: seeds both the sampling (numpy) and augmentation (torch) generators.
        device: where batches are delivered and augmented (``"cpu"``, ``"cuda"``, ...).
        prefetch: how many sampled batches may wait in the queue (2-4 is plenty).

    Yields:
        ``(image, seg)``: float32 ``(B, C, *patch)`` and int64 ``(B, 1, *patch)`` on ``device``.
    """

    def __init__(self, preprocessed_dir: Path | str, case_ids: Sequence[str],
                 sampler_settings: SamplerSettings, augment_settings: AugmentSettings,
                 batch_size: int, seed: int, device: torch.device | str, prefetch: int = 2):
        if batch_size < 1:
            raise ValueError(f"BatchLoader batch_size must be at least 1, got {batch_size!r}")
        if prefetch < 1:
            raise ValueError(f"BatchLoader prefetch must be at least 1, got {prefetch!r}")
        self.sampler = PatchSampler(preprocessed_dir, case_ids, sampler_settings)
        self.augment_settings = augment_settings
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.prefetch = prefetch
        self._np_state: dict[str, Any] = np.random.PCG64(seed).state
        self._torch_generator = torch.Generator().manual_seed(seed)
        self._delivered = 0
        self._thread: threading.Thread | None = None
        self._items: queue.Queue[_Item] = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()

    def _start(self) -> None:
        self._items = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce, name="nnpipe-batch-sampler", daemon=True,
            args=(self.sampler, self.batch_size, self._np_state, self.device.type == "cuda",
                  self._items, self._stop))
        self._thread.start()

    def _next_item(self) -> _Item:
        while True:
            try:
                return self._items.get(timeout=_POLL_S)
            except queue.Empty:
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError("the batch sampling thread stopped without a "
                                       "batch or an error") from None

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._thread is None:
            self._start()
        item = self._next_item()
        if isinstance(item, BaseException):
            self.close()
            raise item
        image, seg, self._np_state = item
        self._delivered += 1
        image = image.to(self.device, non_blocking=True)
        seg = seg.to(self.device, non_blocking=True)
        return augment(image, seg, self.augment_settings, self._torch_generator)

    @property
    def batches_delivered(self) -> int:
        return self._delivered

    def state_dict(self) -> dict[str, Any]:
        """The generator states as of the next batch to be delivered (for a checkpoint)."""
        return {"numpy": self._np_state, "torch": self._torch_generator.get_state(),
                "batches_delivered": self._delivered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`); discards prefetched batches."""
        missing = {"numpy", "torch", "batches_delivered"} - set(state)
        if missing:
            raise ValueError(f"BatchLoader state lacks {sorted(missing)}; it has {sorted(state)}")
        self.close()
        np.random.PCG64().state = state["numpy"]  # fails here, with numpy's message, if bad
        self._np_state = state["numpy"]
        self._torch_generator.set_state(state["torch"])
        self._delivered = int(state["batches_delivered"])

    def close(self) -> None:
        """Stop the sampling thread and drop what it prefetched; iterating restarts it."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        while True:  # empty the queue so a blocked put sees the stop flag promptly
            try:
                self._items.get_nowait()
            except queue.Empty:
                break
        thread.join()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_thread", None) is not None:  # absent if __init__ raised
            self.close()


def loader_throughput(loader: BatchLoader, n_batches: int) -> float:
    """Samples per second delivered by ``loader`` over ``n_batches`` batches.

    One batch is drawn first and not timed (it includes starting the thread); on CUDA the
    device is synchronised before the clock stops, so queued augmentation work is counted.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be at least 1, got {n_batches!r}")
    next(loader)
    samples = 0
    start = time.perf_counter()
    for _ in range(n_batches):
        image, _seg = next(loader)
        samples += image.shape[0]
    if loader.device.type == "cuda":
        torch.cuda.synchronize(loader.device)
    return samples / (time.perf_counter() - start)
