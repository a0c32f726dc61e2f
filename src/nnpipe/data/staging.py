"""Host staging: patches sampled by background threads into (pinned) buffers, in order.

Sampling a 4-channel 128³ patch from memory-mapped cases is a strided copy of 32 MB; one
thread does about 40 samples/s on a small VM (see the loader's measurement in the issue notes),
which is below what one GPU trains at. So ``workers`` threads sample batches concurrently (numpy's
copies release the GIL) and the consumer takes them in batch order.

Exact resumption with several threads: batch ``k`` of a stream is drawn from its own generator,
``numpy.random.default_rng([seed, k])``, so its content depends on ``(seed, k)`` alone, never
on which thread sampled it or on what ran ahead. A checkpoint therefore needs only the seed and
the index of the next batch to deliver, however many batches were prefetched.

Buffers: on CUDA each batch is written straight into page-locked memory (``torch.empty(...,
pin_memory=True)``; PyTorch's caching host allocator reuses a block only after the
asynchronous copies that used it have finished), so the host-to-device copy is asynchronous
and no extra host copy is made. Labels are staged as uint8 (the preprocessed labels are uint8)
and widened to int64 on the device: 8x less to copy.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from typing import Any

import numpy as np
import torch

from nnpipe.data.sampling import PatchSampler

_POLL_S = 0.1  # how often a blocked thread looks at the stop flag, seconds
STAGED_SEG_DTYPE = np.uint8

# A queued item: one staged batch, or the error that ended a worker.
_Item = tuple[torch.Tensor, torch.Tensor] | BaseException


def default_workers() -> int:
    """Sampling threads when not given: one per core, at most 4 (memory bandwidth, not
    compute, limits a crop, so more threads than that gain little)."""
    return max(1, min(4, os.cpu_count() or 1))


def check_loader_args(loader: str, batch_size: int, prefetch: int, seed: int) -> None:
    """The arguments every loader backend shares; ``ValueError`` naming ``loader``.

    Here rather than in :mod:`nnpipe.data.loader` so that both backends (``loader`` and
    ``dali``) import it from a module neither of them is imported by.
    """
    if batch_size < 1:
        raise ValueError(f"{loader} batch_size must be at least 1, got {batch_size!r}")
    if prefetch < 1:
        raise ValueError(f"{loader} prefetch must be at least 1, got {prefetch!r}")
    if seed < 0:
        raise ValueError(f"{loader} seed must be non-negative, got {seed!r}")


def batch_generator(seed: int, index: int) -> np.random.Generator:
    """The generator batch ``index`` of the stream seeded ``seed`` is sampled from."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and batch index must be non-negative, got {seed!r}, {index!r}")
    return np.random.default_rng([seed, index])


def _put(items: queue.Queue[_Item], item: _Item, stop: threading.Event) -> bool:
    """Put ``item`` unless asked to stop first; True if it was queued."""
    while not stop.is_set():
        try:
            items.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _sample_batch(sampler: PatchSampler, rng: np.random.Generator, batch_size: int,
                  pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    patch = sampler.settings.patch_size
    image = torch.empty((batch_size, sampler.num_channels, *patch), dtype=torch.float32,
                        pin_memory=pin)
    seg = torch.empty((batch_size, 1, *patch), dtype=torch.uint8, pin_memory=pin)
    sampler.sample_into(rng, image.numpy(), seg.numpy())
    return image, seg


def _work(sampler: PatchSampler, batch_size: int, seed: int, first: int, step: int, pin: bool,
          items: queue.Queue[_Item], stop: threading.Event) -> None:
    """Thread body: sample batches ``first, first + step, ...`` until stopped or failing."""
    index = first
    while not stop.is_set():
        try:
            item: _Item = _sample_batch(sampler, batch_generator(seed, index), batch_size, pin)
        except Exception as exc:  # handed to the consumer, which re-raises it
            _put(items, exc, stop)
            return
        if not _put(items, item, stop):
            return
        index += step


class BatchStager:
    """Batches ``k, k+1, ...`` of a seeded stream, sampled ahead by ``workers`` threads.

    Args:
        sampler: where patches come from.
        batch_size: samples per batch.
        seed: the stream's seed (non-negative).
        workers: sampling threads; the batches do not depend on it.
        prefetch: batches that may wait, sampled, in all (at least one per worker).
        pin: stage in page-locked memory (for a CUDA device).
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, seed: int, workers: int,
                 prefetch: int, pin: bool):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch!r}")
        batch_generator(seed, 0)  # rejects a negative seed now rather than in a thread
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed
        self.workers, self.prefetch, self.pin = workers, prefetch, pin
        self.next_index = 0
        self._queues: list[queue.Queue[_Item]] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._first = 0

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def queued(self) -> int:
        """Sampled batches waiting (for tests and diagnostics)."""
        return sum(q.qsize() for q in self._queues)

    def _start(self) -> None:
        depth = max(1, math.ceil(self.prefetch / self.workers))
        self._stop = threading.Event()
        self._first = self.next_index
        self._queues = [queue.Queue(maxsize=depth) for _ in range(self.workers)]
        self._threads = [
            threading.Thread(target=_work, name=f"nnpipe-sampler-{w}", daemon=True,
                             args=(self.sampler, self.batch_size, self.seed, self._first + w,
                                   self.workers, self.pin, self._queues[w], self._stop))
            for w in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch in order: float32 image, uint8 seg, on the host."""
        if not self._threads:
            self._start()
        worker = (self.next_index - self._first) % self.workers
        while True:
            try:
                item = self._queues[worker].get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._threads[worker].is_alive():
                    self.close()
                    raise RuntimeError("a batch sampling thread stopped without a batch or "
                                       "an error") from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        self.next_index += 1
        return item

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "next_batch": self.next_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state["next_batch"]`` of the stream ``state["seed"]``."""
        seed, index = int(state["seed"]), int(state["next_batch"])
        batch_generator(seed, index)
        self.close()
        self.seed, self.next_index = seed, index

    def close(self) -> None:
        """Stop the threads and drop what they prefetched; ``next`` restarts them."""
        threads, self._threads = self._threads, []
        if not threads:
            return
        self._stop.set()
        for items in self._queues:  # empty the queues so a blocked put sees the stop flag
            while True:
                try:
                    items.get_nowait()
                except queue.Empty:
                    break
        for thread in threads:
            thread.join()
        self._queues = []
