"""The training batch stream: patches sampled by background threads, augmented on the device.

Background threads (:mod:`nnpipe.data.staging`) sample the next batches from the memory-mapped
cases into pinned host buffers (up to ``prefetch`` batches ahead) while the training step runs;
on delivery the batch is copied to the device (asynchronously from pinned memory when the
device is CUDA) and augmented there (:mod:`nnpipe.data.augment`).

Exact resumption: batch ``k`` is sampled from a generator derived from ``(seed, k)``, so the
sampling threads running ahead do not matter; augmentation draws from a torch generator in the
main thread, in delivery order. :meth:`BatchLoader.state_dict` holds the seed, the torch
generator state and the number of batches delivered, and restoring it reproduces the same
following batches exactly, whatever the number of workers or the prefetch depth.

:func:`make_loader` picks the backend by name: ``"torch"`` (this module) or ``"dali"``
(:mod:`nnpipe.data.dali`, needs nvidia-dali).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

# default_workers and check_loader_args live in staging (shared by both backends) so that
# dali.py need not import this module, which imports dali.py (on demand): no import cycle.
from nnpipe.data.augment import AugmentSettings, augment
from nnpipe.data.sampling import PatchSampler, SamplerSettings
from nnpipe.data.staging import BatchStager, check_loader_args, default_workers


class BatchLoader:
    """An endless iterator of augmented training batches on ``device``.

    Args:
        preprocessed_dir: the preprocessed folder (arrays and ``manifest.json``).
        case_ids: the cases to train on (a fold's training split).
        sampler_settings: patch size, dimensionality, foreground probability.
        augment_settings: augmentation probabilities and ranges.
        batch_size: samples per batch.
        seed: seeds both the sampling (numpy, per batch) and augmentation (torch) generators;
            non-negative.
        device: where batches are delivered and augmented (``"cpu"``, ``"cuda"``, ...).
        prefetch: how many sampled batches may wait (2-4 is plenty; at least one per worker
            is kept).
        workers: sampling threads (default :func:`default_workers`); batches do not depend
            on it.

    Yields:
        ``(image, seg)``: float32 ``(B, C, *patch)`` and int64 ``(B, 1, *patch)`` on ``device``.
    """

    def __init__(self, preprocessed_dir: Path | str, case_ids: Sequence[str],
                 sampler_settings: SamplerSettings, augment_settings: AugmentSettings,
                 batch_size: int, seed: int, device: torch.device | str, prefetch: int = 2,
                 workers: int | None = None):
        check_loader_args("BatchLoader", batch_size, prefetch, seed)
        self.sampler = PatchSampler(preprocessed_dir, case_ids, sampler_settings)
        self.augment_settings = augment_settings
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.seed = seed
        self._stager = BatchStager(self.sampler, batch_size, seed,
                                   workers or default_workers(), prefetch,
                                   pin=self.device.type == "cuda")
        self._torch_generator = torch.Generator().manual_seed(seed)
        self._delivered = 0

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        image, seg = self._stager.next()
        self._delivered += 1
        image = image.to(self.device, non_blocking=True)
        seg = seg.to(self.device, non_blocking=True).long()
        return augment(image, seg, self.augment_settings, self._torch_generator)

    @property
    def batches_delivered(self) -> int:
        return self._delivered

    def state_dict(self) -> dict[str, Any]:
        """Everything the next batches depend on (for a checkpoint): exact resume."""
        return {"backend": "torch", "seed": self._stager.seed,
                "torch": self._torch_generator.get_state(),
                "batches_delivered": self._delivered}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`); discards prefetched batches."""
        missing = {"seed", "torch", "batches_delivered"} - set(state)
        if missing:
            raise ValueError(f"BatchLoader state lacks {sorted(missing)}; it has {sorted(state)}")
        if state.get("backend", "torch") != "torch":
            raise ValueError(f"BatchLoader cannot resume from a {state['backend']!r} loader state")
        delivered = int(state["batches_delivered"])
        self._stager.load_state_dict({"seed": state["seed"], "next_batch": delivered})
        self._torch_generator.set_state(state["torch"])
        self._delivered = delivered

    def close(self) -> None:
        """Stop the sampling threads and drop what they prefetched; iterating restarts them."""
        self._stager.close()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_stager", None) is not None:  # absent if __init__ raised
            self.close()


class Loader(Protocol):
    """What every backend delivers: endless ``(image, seg)`` batches on ``device``."""

    device: torch.device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _dali_loader(*args: Any, **kwargs: Any) -> Loader:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as exc:
        raise ValueError("loader backend 'dali' needs nvidia-dali, which is not installed "
                         "(pip install 'nnpipe[dali]', i.e. nvidia-dali-cuda120); "
                         "use backend 'torch'") from exc
    from nnpipe.data.dali import DaliLoader

    return DaliLoader(*args, **kwargs)


# The loader backends by name (STYLE.md rule 6: one explicit table).
LOADER_BACKENDS: dict[str, Callable[..., Loader]] = {
    "torch": BatchLoader,
    "dali": _dali_loader,
}


def make_loader(backend: str, preprocessed_dir: Path | str, case_ids: Sequence[str],
                sampler_settings: SamplerSettings, augment_settings: AugmentSettings,
                batch_size: int, seed: int, device: torch.device | str, prefetch: int = 2,
                workers: int | None = None) -> Loader:
    """The training loader of backend ``backend`` (a key of :data:`LOADER_BACKENDS`).

    Both backends sample the same patches and take the same augmentation decisions for the
    same seed; see :class:`BatchLoader` and :class:`nnpipe.data.dali.DaliLoader` for what
    their states restore.

    Raises:
        ValueError: for an unknown backend, or ``"dali"`` without nvidia-dali installed.
    """
    if backend not in LOADER_BACKENDS:
        raise ValueError(f"unknown loader backend {backend!r}; choose from "
                         f"{sorted(LOADER_BACKENDS)}")
    return LOADER_BACKENDS[backend](preprocessed_dir, case_ids, sampler_settings,
                                    augment_settings, batch_size, seed, device,
                                    prefetch=prefetch, workers=workers)


def loader_throughput(loader: Loader, n_batches: int) -> float:
    """Samples per second delivered by ``loader`` over ``n_batches`` batches.

    One batch is drawn first and not timed (it includes starting the threads); on CUDA the
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
