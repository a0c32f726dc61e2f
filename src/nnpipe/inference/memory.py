"""Memory before voxels: a case's peak RAM for prediction estimated from its header(s), and
the check that refuses a case over the limit before it is read
(``inference.memory_gb``; :func:`nnpipe.inference.predict.predict_cases` calls it)."""

from __future__ import annotations

import math
import os

from nnpipe.datasets.layout import Case
from nnpipe.errors import DataError
from nnpipe.imageio import read_header
from nnpipe.planning.plan import Plan
from nnpipe.preprocessing.pipeline import case_target_spacing
from nnpipe.preprocessing.resample import target_shape

GiB = 1024**3



def machine_memory_gb() -> float:
    """Physical RAM of this machine in GiB (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):
        return 0.0


def estimate_peak_bytes(case: Case, plan: Plan, out_channels: int) -> int:
    """Peak RAM (bytes) of predicting ``case`` with ``plan``, from its header(s) alone.

    With ``C`` channels, ``n`` voxels as stored, ``m`` after resampling to the plan's
    spacing and ``K`` network outputs: the float32 image and its resampled copy
    (``4C(n + m)``), the sliding window's logit and weight sums (``8Km``), the
    logits resampled back and their probabilities (``8Kn``), and the labels (``8n``).
    A cascade stage adds its previous-stage input (:func:`predict_image`): the previous
    stage's labels turned into class indices through an int64 lookup (``8n``), resampled to
    uint8 (``m``), ``P`` = ``plan.previous_channels`` float32 one-hot channels (``4Pm``), and
    the network input they are concatenated into, image channels first (``4(C + P)m``).
    """
    headers = [read_header(p, case=case.case_id) for p in case.images]
    shape, spacing = headers[0].shape, headers[0].spacing
    channels = sum(h.channels for h in headers)
    target = case_target_spacing(plan, spacing)
    n = math.prod(shape)
    m = math.prod(target_shape(shape, spacing, target))
    p = plan.previous_channels
    previous = 8 * n + m + 4 * p * m + 4 * (channels + p) * m if p else 0
    return (4 * channels * (n + m) + 8 * out_channels * m + 8 * out_channels * n + 8 * n
            + previous)


def check_memory(case: Case, plan: Plan, out_channels: int, limit_gb: float) -> None:
    """Raise :class:`DataError` naming the case and the GiB if its estimated peak exceeds
    ``limit_gb`` (0: the machine's RAM; no check where that is unknown)."""
    limit = limit_gb or machine_memory_gb()
    if limit <= 0:
        return
    need = estimate_peak_bytes(case, plan, out_channels) / GiB
    if need > limit:
        raise DataError(f"needs about {need:.1f} GiB to predict (image size after resampling "
                        f"to {tuple(round(s, 3) for s in plan.full_spacing)} mm x "
                        f"{out_channels} classes), over the {limit:.1f} GiB allowed "
                        f"(inference.memory_gb); not read", case=case.case_id,
                        path=case.images[0])
