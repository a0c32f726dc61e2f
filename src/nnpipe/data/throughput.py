"""Loader-alone throughput: samples/s and CPU use of each backend, no model.

``python -m nnpipe.data.throughput --device cpu`` writes a BraTS-sized synthetic preprocessed
folder (4 channels, 240x240x155 float32 cases, memory-mapped like the real ones) unless
``--preprocessed`` names one, then prints one line per (patch, backend, augmentation, workers).
On a GPU box pass ``--device cuda``: batches are then staged pinned, copied and augmented on the
device, and the clock includes the device work.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nnpipe.data.augment import AugmentSettings
from nnpipe.data.loader import LOADER_BACKENDS, loader_throughput, make_loader
from nnpipe.data.sampling import SamplerSettings, read_manifest


def write_synthetic_cases(folder: Path, n_cases: int = 4, shape: Sequence[int] = (240, 240, 155),
                          channels: int = 4, seed: int = 0) -> list[str]:
    """Random cases with one foreground box each (labels 1, 2) and a manifest; their ids."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases = {}
    for k in range(n_cases):
        case_id = f"case{k:03d}"
        image = rng.standard_normal((channels, *shape), dtype=np.float32)
        seg = np.zeros(shape, np.uint8)
        centre = [s // 2 for s in shape]
        seg[tuple(slice(c - s // 6, c + s // 6) for c, s in zip(centre, shape, strict=True))] = 1
        seg[tuple(slice(c - 4, c + 4) for c in centre)] = 2
        np.save(folder / f"{case_id}.npy", image)
        np.save(folder / f"{case_id}_seg.npy", seg)
        cases[case_id] = {"class_locations": {str(label): np.argwhere(seg == label)[::97].tolist()
                                              for label in (1, 2)}}
    (folder / "manifest.json").write_text(json.dumps({"plan": {}, "cases": cases}))
    return sorted(cases)


def measure(preprocessed: Path, patch: tuple[int, ...], backend: str, augment: AugmentSettings,
            batch_size: int, device: str, workers: int, n_batches: int) -> dict[str, float]:
    """Samples/s and process CPU seconds per wall second of one loader configuration."""
    cases = sorted(read_manifest(preprocessed)["cases"])
    loader = make_loader(backend, preprocessed, cases, SamplerSettings(patch, 0.4), augment,
                         batch_size, seed=0, device=device, prefetch=max(2, workers),
                         workers=workers)
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        rate = loader_throughput(loader, n_batches)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    finally:
        loader.close()
    return {"samples_per_s": rate, "cpu_cores_busy": cpu}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preprocessed", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--patches", default="128,32", help="cubic patch edges, comma-separated")
    parser.add_argument("--workers", default="1,2", help="sampler threads, comma-separated")
    parser.add_argument("--backends", default=",".join(LOADER_BACKENDS))
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads (CPU augmentation); 1 leaves the other "
                             "cores to the sampler threads and avoids OpenMP oversubscription")
    parser.add_argument("--voxels", type=float, default=2.5e7,
                        help="timed voxels per configuration (sets the number of batches)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="nnpipe-loader-") as tmp:
        preprocessed = args.preprocessed
        if preprocessed is None:
            preprocessed = Path(tmp)
            write_synthetic_cases(preprocessed)
        augments = {"none": AugmentSettings.disabled(), "reference": AugmentSettings(),
                    "reference+nnunet": AugmentSettings.from_names(
                        True, ["rotation", "scaling", "gamma", "lowres"])}
        print(f"{'patch':>6} {'backend':>7} {'augment':>16} {'workers':>7} "
              f"{'samples/s':>10} {'cpu busy':>8}")
        for edge in (int(e) for e in args.patches.split(",")):
            n_batches = max(5, int(args.voxels / (args.batch_size * edge**3)))
            for backend in args.backends.split(","):
                for name, augment in augments.items():
                    for workers in (int(w) for w in args.workers.split(",")):
                        result = measure(preprocessed, (edge,) * 3, backend, augment,
                                         args.batch_size, args.device, workers, n_batches)
                        print(f"{edge:>5}³ {backend:>7} {name:>16} {workers:>7} "
                              f"{result['samples_per_s']:>10.1f} "
                              f"{result['cpu_cores_busy']:>8.2f}", flush=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
