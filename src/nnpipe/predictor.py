"""The Python API: segment images from code (a notebook, a viewer plug-in, a service).

``Predictor(model)`` reads and loads a model once (anything ``nnpipe predict --model``
takes: a run folder, best.json, model.zip, fold checkpoints;
:func:`nnpipe.inference.model_spec.resolve_model`; or an nnU-Net v2 trained-model folder,
its dataset folder or a v2 zip), then predicts as many images as asked::

    from nnpipe import Predictor

    predictor = Predictor("model.zip", device="cpu", tta=False)
    labels = predictor.predict("case.nii.gz")           # (X, Y, Z) label values
    labels = predictor.predict(array, spacing=(1, 1, 3))  # array (C, X, Y, Z), spacing in mm

Every image goes through the same code as ``nnpipe predict``
(:func:`nnpipe.inference.predict.predict_members_image`: crop, resample, normalize, sliding
window, back to the input's grid, postprocessing); files through the one reader
(:func:`nnpipe.datasets.layout.read_case_image`). A nibabel or SimpleITK image is written to
a temporary uncompressed file and read back by that reader, so its header means what it
means to the command line (NIfTI units, sform/qform rule, SimpleITK's LPS+ directions); this
costs one write and one read of the voxels.

An nnU-Net v2 model (:func:`nnpipe.v2.model.is_v2_model`) is predicted with v2's semantics
by the functions ``nnpipe predict --model <v2 model>`` uses (:mod:`nnpipe.v2.api`): files
are read by the plans' reader, arrays are taken as that reader's voxels; the labels and
files are the command's.

A predictor holds its networks and settings and nothing global: two predictors (two models,
two devices) coexist in one process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

import numpy as np

from nnpipe.config import InferenceSettings, study_config
from nnpipe.datasets.layout import LAYOUTS, Case, find_cases, read_case_image
from nnpipe.errors import DataError
from nnpipe.geometry import Orientation, orientation_of
from nnpipe.imageio import strip_ending
from nnpipe.inference.model_spec import ModelSpec
from nnpipe.inference.predict import (
    load_configuration,
    predict_cases,
    predict_members_image,
)
from nnpipe.inference.resolve import resolve_model
from nnpipe.v2.model import is_v2_model

if TYPE_CHECKING:
    import torch

    from nnpipe.v2.api import V2Predictor

PathLike: TypeAlias = str | os.PathLike[str]
# An image: an array (C, X, Y, Z) (or (X, Y, Z) for a one-channel model) with spacing= or
# affine=; a file path (or, for per-channel files, a list of paths); a nibabel or SimpleITK
# image (typed Any: both libraries are optional at type-checking time).
Image: TypeAlias = "np.ndarray | PathLike | Sequence[PathLike] | Any"


class Predictor:
    """A loaded model that segments images.

    Args:
        model: what ``nnpipe predict --model`` takes: a run folder ``train/RUN``, a
            ``best.json``, a ``model.zip``, a fold folder or checkpoint, a list of
            checkpoints (averaged), or a :class:`~nnpipe.inference.model_spec.ModelSpec`;
            or an nnU-Net v2 trained-model folder, its dataset folder, or a v2 zip.
        device: ``auto`` (the first GPU if any, else the CPU), ``cpu``, ``cuda``, ``cuda:1``.
        tta: average over the flips of the spatial axes (8 in 3D, 4 in 2D); None keeps the
            setting of ``settings``.
        settings: the inference settings (overlap, blend, batch size, precision, runtime);
            default: those stored with the model (best.json, or a model.zip exported from
            it), else the schema's defaults, as ``nnpipe predict`` without ``--config``.
        postprocess: a postprocessing decision JSON that replaces the model's own (not for
            v2 models).
        configuration, folds, checkpoint: for an nnU-Net v2 model, as ``nnpipe predict
            --configuration --folds --checkpoint``: the configuration of a dataset folder
            or zip holding several, the folds to average (default: every ``fold_N``), the
            checkpoint file (``final`` or ``best``).

    Raises:
        ValueError / FileNotFoundError: the model cannot be read (naming the path and why).
    """

    def __init__(self, model: PathLike | Sequence[PathLike] | ModelSpec, *,
                 device: str = "auto", tta: bool | None = None,
                 settings: InferenceSettings | None = None,
                 postprocess: PathLike | None = None, configuration: str | None = None,
                 folds: Sequence[int | str] | None = None,
                 checkpoint: str = "final") -> None:
        self._v2: V2Predictor | None = None
        if isinstance(model, str | os.PathLike) and is_v2_model(Path(model)):
            self._init_v2(Path(model), device, tta, settings, postprocess, configuration,
                          folds, checkpoint)
            return
        if configuration is not None or folds is not None or checkpoint != "final":
            raise ValueError(f"configuration=, folds= and checkpoint= are for nnU-Net v2 "
                             f"models; {model!s} is not one")
        if isinstance(model, ModelSpec):
            spec = model
        elif isinstance(model, str | os.PathLike):
            spec = resolve_model([Path(model)])
        else:
            spec = resolve_model([Path(m) for m in model])
        settings = settings or stored_settings(spec)
        self.settings: InferenceSettings = settings if tta is None else replace(settings,
                                                                               tta=tta)
        self.spec = spec
        self._groups, self._postprocess, self.source, self._previous = load_configuration(
            spec, device, postprocess=None if postprocess is None else Path(postprocess))

    def _init_v2(self, path: Path, device: str, tta: bool | None,
                 settings: InferenceSettings | None, postprocess: PathLike | None,
                 configuration: str | None, folds: Sequence[int | str] | None,
                 checkpoint: str) -> None:
        """An nnU-Net v2 model: the settings' ``tta`` and ``batch_size`` apply, as for
        ``nnpipe predict --model <v2 model>`` (default: the schema's)."""
        from nnpipe.inference.predict import select_device
        from nnpipe.v2.api import V2Predictor

        if postprocess is not None:
            raise ValueError(f"postprocess=: not available for nnU-Net v2 models ({path})")
        settings = settings or study_config({}).inference
        self.settings = settings if tta is None else replace(settings, tta=tta)
        self._v2 = V2Predictor(path, select_device(device), tta=self.settings.tta,
                               batch_size=self.settings.batch_size,
                               configuration=configuration, folds=folds, checkpoint=checkpoint)
        self.source = self._v2.model.source

    # ---------------------------------------------------------------- what the model is

    @property
    def num_channels(self) -> int:
        """Input channels the model takes (``C`` of an image ``(C, X, Y, Z)``)."""
        if self._v2 is not None:
            return self._v2.num_channels
        return self._plan.num_channels

    @property
    def labels(self) -> dict[int, str]:
        """Label value -> name (background 0 included) of the label maps it returns."""
        if self._v2 is not None:
            return self._v2.labels
        return dict(self._plan.labels)

    @property
    def class_names(self) -> list[str]:
        """Names of the probability channels ``K`` (classes by value, or regions)."""
        if self._v2 is not None:
            return self._v2.class_names
        from nnpipe.inference.predict import class_names

        return class_names(self._groups[0][0])

    @property
    def device(self) -> torch.device:
        if self._v2 is not None:
            return self._v2.device
        return self._groups[0][0].device

    @property
    def _plan(self) -> Any:
        return self._groups[0][0].plan

    def __repr__(self) -> str:
        n = len(self._v2.nets) if self._v2 is not None else sum(len(g) for g in self._groups)
        return (f"Predictor({self.source!r}, {n} network(s), device={str(self.device)!r}, "
                f"tta={self.settings.tta})")

    # ---------------------------------------------------------------- one image

    @overload
    def predict(self, image: Image, *, spacing: Sequence[float] | None = ...,
                affine: np.ndarray | None = ...,
                probabilities: Literal[False] = ...) -> np.ndarray: ...

    @overload
    def predict(self, image: Image, *, spacing: Sequence[float] | None = ...,
                affine: np.ndarray | None = ...,
                probabilities: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...

    def predict(self, image: Image, *, spacing: Sequence[float] | None = None,
                affine: np.ndarray | None = None, probabilities: bool = False
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment one image; the result is on the input's own grid and voxel order.

        Args:
            image: an array ``(C, X, Y, Z)`` (``(X, Y, Z)`` for a one-channel model; a 2D
                image is ``Z = 1``) with ``spacing`` or ``affine``; a file path (any format
                nnpipe reads) or a list of per-channel files; a nibabel or SimpleITK image.
            spacing: voxel size in mm along ``X, Y, Z`` of an array (axes taken as RAS+).
            affine: ``(4, 4)`` voxel index -> world (RAS+ mm) of an array, e.g. nibabel's
                ``img.affine``; gives orientation as well as spacing.
            probabilities: also return the class (or region) probabilities.

        Returns:
            The label map ``(X, Y, Z)`` of label values (dataset.json's; the smallest
            unsigned dtype holding them), and with ``probabilities=True`` also
            ``(K, X, Y, Z)`` float32 probabilities (``K``: :attr:`class_names`).

        Raises:
            ValueError: an array without exactly one of spacing and affine, a wrong shape or
                channel count, NaN or Inf voxels, a non-invertible affine.
            DataError: a file that cannot be read (naming it).
        """
        if self._v2 is not None:
            return self._predict_v2(image, spacing, affine, probabilities)
        data, grid_affine, o, name = self._canonical(image, spacing, affine)
        result = predict_members_image(self._groups, data, grid_affine, self.settings, name,
                                       postprocess=self._postprocess,
                                       with_probabilities=probabilities,
                                       previous=self._previous)
        labels = np.ascontiguousarray(o.undo(result.labels))
        if not probabilities:
            return labels
        assert result.probabilities is not None  # asked for above
        return labels, np.ascontiguousarray(o.undo(result.probabilities, channel_first=True))

    def _predict_v2(self, image: Image, spacing: Sequence[float] | None,
                    affine: np.ndarray | None, probabilities: bool
                    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` of an nnU-Net v2 model (:mod:`nnpipe.v2.api`)."""
        v2 = self._v2
        assert v2 is not None  # called for a v2 model only
        if isinstance(image, np.ndarray):
            data, grid = self._from_array(image, spacing, affine)
            if affine is None and v2.model.configuration.semantics.reader == \
                    "NibabelIOWithReorient":
                raise ValueError("this v2 model reads images reoriented to RAS "
                                 "(NibabelIOWithReorient): give affine=, not spacing=")
            v2_image = v2.image_from_array(data, grid)
        else:
            if spacing is not None or affine is not None:
                raise ValueError("spacing= and affine= are for arrays; a file or image object "
                                 "carries its own geometry")
            with tempfile.TemporaryDirectory(prefix="nnpipe-predictor-") as tmp:
                if isinstance(image, str | os.PathLike):
                    paths = [Path(image)]
                elif isinstance(image, Sequence) and image and all(
                        isinstance(p, str | os.PathLike) for p in image):
                    paths = [Path(p) for p in image]
                else:  # NIfTI: every v2 reader reads it (nibabel's do not read .mha)
                    paths = [_to_file(image, Path(tmp), sitk_ending=".nii")]
                v2_image = v2.read(paths, strip_ending(paths[0]))
        labels, probs = v2.predict(v2_image, probabilities)
        labels = v2.input_order(labels, v2_image, channel_first=False)
        if probs is None:
            return labels
        return labels, v2.input_order(probs, v2_image, channel_first=True)

    def _canonical(self, image: Image, spacing: Sequence[float] | None,
                   affine: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, Orientation, str]:
        """The image as the reader gives it: ``(C, X, Y, Z)`` float32 in the canonical voxel
        order, the canonical affine (mm), the orientation back to the input's order, a name
        for messages."""
        if isinstance(image, np.ndarray):
            data, grid = self._from_array(image, spacing, affine)
            o = orientation_of(grid, data.shape[1:])
            data = np.moveaxis(o.apply(np.moveaxis(data, 0, -1)), -1, 0)
            return np.ascontiguousarray(data), o.canonical_affine(grid), o, "array"
        if spacing is not None or affine is not None:
            raise ValueError("spacing= and affine= are for arrays; a file or image object "
                             "carries its own geometry")
        if isinstance(image, str | os.PathLike):
            return self._from_files([Path(image)])
        if isinstance(image, Sequence) and image and all(
                isinstance(p, str | os.PathLike) for p in image):
            return self._from_files([Path(p) for p in image])
        with tempfile.TemporaryDirectory(prefix="nnpipe-predictor-") as tmp:
            return self._from_files([_to_file(image, Path(tmp))])

    def _from_files(self, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, Orientation, str]:
        case = Case(strip_ending(paths[0]), tuple(paths))
        ci = read_case_image(case, self.num_channels)
        return ci.image, ci.affine, ci.orientation, case.case_id

    def _from_array(self, image: np.ndarray, spacing: Sequence[float] | None,
                    affine: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(C, X, Y, Z)`` float32 in the array's own order, and its affine."""
        if image.ndim == 3 and self.num_channels == 1:
            image = image[None]
        if image.ndim != 4 or image.shape[0] != self.num_channels:
            raise ValueError(f"image of shape {image.shape}: the model takes (C, X, Y, Z) with "
                             f"C = {self.num_channels} channel(s)"
                             + (" ((X, Y, Z) also works)" if self.num_channels == 1 else ""))
        if (spacing is None) == (affine is None):
            raise ValueError("give the voxel geometry of an array: spacing=(sx, sy, sz) in mm "
                             "or affine= (4x4 voxel -> RAS+ mm), not both")
        if affine is None:
            assert spacing is not None  # one of the two, checked above
            if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
                raise ValueError(f"spacing must be three voxel sizes > 0 in mm, got {spacing}")
            affine = np.diag([*map(float, spacing), 1.0])
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(
                np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("affine must be a finite, invertible 4x4 matrix (voxel -> mm)")
        data = np.asarray(image, dtype=np.float32)
        if not np.isfinite(data).all():
            raise ValueError("image contains NaN or Inf voxels")
        return data, affine

    # ---------------------------------------------------------------- many files

    def predict_files(self, inputs: PathLike | Sequence[PathLike], out_dir: PathLike, *,
                      layout: str | None = None, skip_existing: bool = False,
                      save_probabilities: bool | None = None) -> list[Path]:
        """Segment files into ``out_dir`` as ``nnpipe predict --input`` does: each label map
        ``<case><ending>`` in its input's format, grid and header (and ``<case>.npz`` with
        ``save_probabilities``), written atomically; the networks stay loaded.

        Args:
            inputs: a folder (cases found by ``layout``, default the one the model was
                trained on) or a list of image files, one case each (all channels in it).
            skip_existing: skip cases whose outputs exist (``--continue``).
            save_probabilities: None keeps ``settings.save_probabilities``.

        Returns:
            The label map paths written (or skipped), in case order.

        Raises:
            DataError: a missing folder, one without images, or (after the others were
                predicted) every case that failed, each named.
        """
        if self._v2 is not None:
            if layout not in (None, "nnunetv2") or save_probabilities:
                raise ValueError("an nnU-Net v2 model reads the nnunetv2 layout and writes "
                                 "label maps only (layout=, save_probabilities=)")
            if isinstance(inputs, str | os.PathLike):
                return self._v2.predict_folder(Path(inputs), Path(out_dir), skip_existing)
            return self._v2.predict_file_list([Path(p) for p in inputs], Path(out_dir),
                                              skip_existing)
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        errors: list[DataError] = []
        if isinstance(inputs, str | os.PathLike):
            cases, errors = find_cases(Path(inputs), layout=layout or self._plan.layout,
                                       num_channels=self.num_channels)
            if not cases and not errors:
                raise DataError("holds no images", path=Path(inputs))
        else:
            cases = [Case(strip_ending(Path(p)), (Path(p),)) for p in inputs]
        settings = self.settings if save_probabilities is None else replace(
            self.settings, save_probabilities=save_probabilities)
        return predict_cases(self._groups, cases, Path(out_dir), settings,
                             skip_existing=skip_existing, postprocess=self._postprocess,
                             errors=errors, previous=self._previous)


def stored_settings(spec: ModelSpec) -> InferenceSettings:
    """The inference settings stored with ``spec`` (best.json, or a model.zip exported from
    it), else the schema's defaults: what ``nnpipe predict`` uses without ``--config``.

    Raises:
        ValueError: the stored settings are not valid for this nnpipe.
    """
    if spec.inference is None:
        return study_config({}).inference
    try:
        return study_config({"inference": dict(spec.inference)}).inference
    except ValueError as exc:
        raise ValueError(f"the inference settings stored with {spec.source} are not valid "
                         f"for this nnpipe ({exc}); pass settings=") from None


def _to_file(image: Any, folder: Path, sitk_ending: str = ".mha") -> Path:
    """A nibabel or SimpleITK image written uncompressed into ``folder`` for the one reader
    (a SimpleITK image as ``sitk_ending``).

    Raises:
        TypeError: anything else.
    """
    kind = type(image).__module__.split(".")[0]
    if kind == "nibabel" and hasattr(image, "affine") and hasattr(image, "header"):
        import nibabel as nib

        path = folder / "image.nii"
        nib.save(image, str(path))
        return path
    if kind == "SimpleITK":
        import SimpleITK as sitk

        path = folder / f"image{sitk_ending}"
        sitk.WriteImage(image, str(path), False)  # False: no compression
        return path
    raise TypeError(f"cannot predict a {type(image).__name__}: give an array (C, X, Y, Z) with "
                    "spacing= or affine=, a file path, or a nibabel or SimpleITK image")
