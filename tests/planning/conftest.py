"""Hand-built fingerprints for the planning tests (no files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nnpipe.planning.fingerprint import Fingerprint, IntensityStats

STATS = IntensityStats(mean=40.0, std=20.0, min=-50.0, max=300.0, p00_5=-10.0, p99_5=150.0,
                       n_voxels=1000)
LABELS = {0: "background", 1: "tumour", 2: "edema"}


def fingerprint(spacings: Sequence[Sequence[float]], cropped_shapes: Sequence[Sequence[int]],
                is_ct: Sequence[bool] = (False,), labels: Mapping[int, str] = LABELS,
                stats: IntensityStats = STATS) -> Fingerprint:
    """One case per spacing/shape pair (shapes as cropped), one channel per ``is_ct`` entry."""
    n = len(spacings)
    return Fingerprint(
        case_ids=tuple(f"case{i}" for i in range(n)),
        spacings=tuple(tuple(map(float, s)) for s in spacings),
        shapes=tuple(tuple(s) for s in cropped_shapes),
        cropped_shapes=tuple(tuple(s) for s in cropped_shapes),
        intensity=tuple(stats for _ in is_ct),
        num_channels=len(is_ct),
        labels=dict(labels),
        is_ct=tuple(is_ct),
    )


def uniform_fingerprint(n: int, spacing: Sequence[float], shape: Sequence[int],
                        channels: int = 1, labels: Mapping[int, str] = LABELS,
                        stats: IntensityStats = STATS) -> Fingerprint:
    """``n`` cases of one spacing and shape, ``channels`` non-CT channels."""
    return fingerprint([spacing] * n, [shape] * n, (False,) * channels, labels, stats)
