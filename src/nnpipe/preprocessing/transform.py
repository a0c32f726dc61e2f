"""One case transform: forward (preprocess) and inverse (restore), on the host or a device.

A :class:`CaseTransform` is the data that decides how a model's cases are prepared, built
from an nnpipe plan (:meth:`CaseTransform.from_plan`) or from an nnU-Net v2 model's
semantics (:func:`nnpipe.v2.predict.case_transform`); both run the same steps
(:func:`nnpipe.preprocessing.pipeline.crop_normalize_resample` on the host, its ``_torch``
twin on a device): the voxel order, the channels' schemes (which use the nonzero mask, CT
statistics), the target spacing, the resampling rules and the shape's lower bound are fields,
not code paths.

Axis order: ``forward`` takes ``image`` ``(C, A0, A1, A2)`` in the array order its reader gives
(nnpipe: canonical RAS ``(X, Y, Z)``; v2: the file's order reversed, ``(z, y, x)``), permutes
it by ``transpose`` (v2's ``transpose_forward``; identity for nnpipe) and works in that
order; the :class:`~nnpipe.preprocessing.pipeline.CaseMeta` it returns describes the
permuted grid. :meth:`CaseTransform.inverse` brings an output back to it and undoes the
permutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nnpipe.errors import DataError
from nnpipe.geometry import spacing_of
from nnpipe.labels import LabelScheme, outputs_to_labels
from nnpipe.planning.plan import ChannelNorm, Plan
from nnpipe.preprocessing.normalize import check_value_ranges
from nnpipe.preprocessing.pipeline import (
    CaseMeta,
    crop_normalize_resample,
    crop_normalize_resample_torch,
    paste_probabilities,
    restore_channel_torch,
    restore_logits,
)
from nnpipe.preprocessing.resample import (
    IMAGE_RESAMPLING,
    PROBABILITY_RESAMPLING,
    Resampling,
)

if TYPE_CHECKING:
    import torch

Spacing3 = tuple[float, float, float]


@dataclass(frozen=True)
class CaseTransform:
    """How one model's cases are preprocessed and restored (data, no behaviour of its own).

    ``norms``: one :class:`ChannelNorm` per input channel. ``target_spacing``: mm per axis of
    the permuted order; ``keep_axis``: an axis whose spacing a case keeps (a 2D
    configuration's slice axis), None for none. ``transpose``: the permutation applied to
    the image's axes first (v2's ``transpose_forward``). ``crop``: crop to the nonzero box.
    ``resampling`` / ``restore_resampling``: the rules forward (image) and back
    (probabilities; the restore functions apply nnpipe's, linear with the nearest slice on a
    separate axis, which is also v2's default, so :meth:`inverse` reads this field only to
    refuse another). ``min_size``: the resampled shape's lower bound per axis (v2: none).
    """

    norms: tuple[ChannelNorm, ...]
    target_spacing: Spacing3
    keep_axis: int | None = None
    transpose: tuple[int, int, int] = (0, 1, 2)
    crop: bool = True
    resampling: Resampling = IMAGE_RESAMPLING
    restore_resampling: Resampling = PROBABILITY_RESAMPLING
    min_size: int = 1

    @classmethod
    def from_plan(cls, plan: Plan) -> CaseTransform:
        """nnpipe's own model: the plan's norms, full spacing (2D: the slice axis keeps the
        case's own), crop setting; v2's resampling rules, nnpipe's canonical voxel order."""
        full = plan.full_spacing
        keep = plan.slice_axis if plan.dim == 2 else None
        return cls(norms=tuple(plan.channel_norms),
                   target_spacing=(float(full[0]), float(full[1]), float(full[2])),
                   keep_axis=keep, crop=plan.crop_to_nonzero)

    # ------------------------------------------------------------ forward

    def case_target_spacing(self, spacing: Sequence[float]) -> Spacing3:
        """The spacing (mm, permuted order) a case of ``spacing`` is resampled to."""
        t = list(self.target_spacing)
        if self.keep_axis is not None:
            t[self.keep_axis] = float(spacing[self.keep_axis])
        return (t[0], t[1], t[2])

    def _permuted(self, image: np.ndarray, affine: np.ndarray
                  ) -> tuple[np.ndarray, Spacing3]:
        spacing = spacing_of(affine)
        perm = self.transpose
        data = image if perm == (0, 1, 2) else image.transpose(0, *[a + 1 for a in perm])
        return data, (float(spacing[perm[0]]), float(spacing[perm[1]]),
                      float(spacing[perm[2]]))

    def check(self, image: np.ndarray, case_id: str) -> None:
        """Raise :class:`DataError` naming the case for an image that is not
        ``(C, A0, A1, A2)`` with one channel per norm, or holds values a scheme refuses."""
        if image.ndim != 4:
            raise DataError(f"image must be (C, X, Y, Z), got shape {image.shape}", case=case_id)
        if image.shape[0] != len(self.norms):
            raise DataError(f"image has {image.shape[0]} channel(s), the model expects "
                            f"{len(self.norms)}", case=case_id)
        try:
            check_value_ranges(image, self.norms)
        except ValueError as exc:
            raise DataError(str(exc), case=case_id) from exc

    def forward(self, image: np.ndarray, affine: np.ndarray,
                device: torch.device | str | None = None, *, case_id: str = "case"
                ) -> tuple[np.ndarray | torch.Tensor, CaseMeta]:
        """Preprocess ``image`` ``(C, A0, A1, A2)`` (host array; ``affine`` 4x4, its column
        norms the spacing in mm): permute, crop, normalize, resample. Returns the float32
        ``(C, *resampled)`` array (on ``device`` as a tensor when given; the host path's
        numbers to float32 rounding) and the case's meta (of the permuted grid). Raises
        :class:`DataError` naming the case for bad input; ``torch.OutOfMemoryError`` on a
        device that runs out (the caller may retry on the host)."""
        self.check(image, case_id)
        data, spacing = self._permuted(image, affine)
        target = self.case_target_spacing(spacing)
        if device is None:
            out = crop_normalize_resample(data, spacing, target, self.norms, crop=self.crop,
                                          resampling=self.resampling, min_size=self.min_size)
            result: np.ndarray | torch.Tensor = out.data
            bbox, cropped, shape = out.bbox, out.cropped_shape, out.shape
        else:
            result, bbox, cropped, shape = crop_normalize_resample_torch(
                data, spacing, target, self.norms, device, crop=self.crop,
                resampling=self.resampling, min_size=self.min_size)
        meta = CaseMeta(
            case_id=case_id,
            original_shape=(int(data.shape[1]), int(data.shape[2]), int(data.shape[3])),
            affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine)),
            original_spacing=spacing, bbox=bbox, cropped_shape=cropped,
            target_spacing=target, resampled_shape=shape)
        return result, meta

    # ------------------------------------------------------------ inverse

    def inverse(self, logits: np.ndarray, meta: CaseMeta, scheme: LabelScheme, *,
                with_probabilities: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Network logits ``(K, *meta.resampled_shape)`` -> label values ``(A0, A1, A2)`` in
        the image's own grid and axis order and, with ``with_probabilities``, probabilities
        ``(K, A0, A1, A2)`` float32: logits resampled back to the crop box
        (:func:`~nnpipe.preprocessing.pipeline.restore_logits`: linear, the separate axis
        nearest), decided and pasted (:func:`decide_and_paste`: argmax, or sigmoid > 0.5 in
        ``regions_class_order``; label 0 outside the box), then the permutation undone.
        Raises ``NotImplementedError`` for a ``restore_resampling`` the restore functions do
        not apply, ``ValueError`` for logits not of the preprocessed shape."""
        import torch

        self._check_restore_rule()
        cropped = torch.from_numpy(restore_logits(logits, meta))
        labels, probs = decide_and_paste(cropped, meta.bbox, meta.original_shape, scheme,
                                         with_probabilities)
        labels = self._unpermute(labels[None])[0]
        return labels, None if probs is None else self._unpermute(probs)

    def inverse_channel_torch(self, channel: torch.Tensor, meta: CaseMeta) -> torch.Tensor:
        """One channel ``(X', Y', Z')`` on a device back to the cropped grid
        (:func:`~nnpipe.preprocessing.pipeline.restore_channel_torch`); the caller pastes
        it at ``meta.bbox``."""
        self._check_restore_rule()
        return restore_channel_torch(channel, meta)

    def _check_restore_rule(self) -> None:
        if self.restore_resampling != PROBABILITY_RESAMPLING:
            raise NotImplementedError(f"restoring with {self.restore_resampling} (the restore "
                                      f"functions apply {PROBABILITY_RESAMPLING})")

    def _unpermute(self, full: np.ndarray) -> np.ndarray:
        if self.transpose == (0, 1, 2):
            return full
        back = np.argsort(self.transpose)
        return full.transpose(0, *[int(a) + 1 for a in back])


def decide_and_paste(cropped: torch.Tensor, bbox: Sequence[tuple[int, int]],
                     original_shape: Sequence[int], scheme: LabelScheme,
                     with_probabilities: bool, *, labels_from_probabilities: bool = False,
                     dtype: np.dtype | type[np.integer] | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits ``(K, *box)`` already resampled back to the crop box -> label values
    ``original_shape`` (``dtype``, default :attr:`LabelTable.value_dtype`) and, with
    ``with_probabilities``, probabilities ``(K, *original_shape)`` float32.

Classes: argmax (the first maximum wins) of the logits, or of the softmax with
    ``labels_from_probabilities`` (what nnU-Net v2 does when it saves probabilities); regions:
    sigmoid > 0.5, each region's ``regions_class_order`` value written over the earlier ones.
    Outside ``bbox`` the label is 0 and the probabilities those of
    :func:`~nnpipe.preprocessing.pipeline.paste_probabilities`. The one decision for nnpipe's
    own models and nnU-Net v2's (:func:`nnpipe.v2.predict.segmentation`): v2 2.8.1
    ``inference/export_prediction.py``
    ``convert_predicted_logits_to_segmentation_with_correct_shape``, ``LabelManager``."""
    import torch

    regions = bool(scheme.regions)
    probs = None
    if regions or with_probabilities:  # v2's LabelManager.apply_inference_nonlin, float32
        probs = torch.sigmoid(cropped.float()) if regions else torch.softmax(cropped.float(), 0)
    # argmax of the logits is the argmax of the softmax (v2 skips the softmax too)
    decided = probs if probs is not None and (regions or labels_from_probabilities) \
        else cropped
    labels = outputs_to_labels(decided.numpy(), scheme)
    full = np.zeros(tuple(original_shape), dtype=dtype or labels.dtype)
    full[tuple(slice(lo, hi) for lo, hi in bbox)] = labels
    if not with_probabilities:
        return full, None
    assert probs is not None  # computed above when asked for
    return full, paste_probabilities(probs.numpy(), bbox, original_shape, regions=regions)
