"""An nnU-Net v2 model behind :class:`nnpipe.Predictor`: loaded once, predicting arrays,
files and image objects with v2's semantics (:mod:`nnpipe.v2.predict`).

Every image becomes the :class:`~nnpipe.v2.imageio.V2Image` v2's reader would make of it,
then goes through the same functions as ``nnpipe predict --model <v2 model>``
(:func:`~nnpipe.v2.predict.preprocess`, :func:`~nnpipe.v2.predict.sliding_window_logits`,
:func:`~nnpipe.v2.predict.segmentation`), so the labels are the command's. Results come
back in the input's own voxel order ``(X, Y, Z)`` (v2 works in ``(z, y, x)``):

* a file or image object is read by the plans' reader (``SimpleITKIO``: the file's index
  axes reversed, and back; ``NibabelIOWithReorient``: reoriented to RAS, and back);
* an array ``(C, X, Y, Z)`` is taken as that reader's voxels of a file with this geometry:
  its axes reversed to ``(C, Z, Y, X)``, the spacing (``spacing=`` or the column lengths of
  ``affine=``) reversed with them; ``NibabelIOWithReorient`` reorients it by ``affine``
  first (and refuses a bare ``spacing``, which says nothing of orientation).

Probabilities are v2's ``--save_probabilities`` (:func:`~nnpipe.v2.predict.segmentation`):
the fold- and flip-averaged logits resampled back to the cropped grid with the plans'
probabilities rule, softmax (sigmoid for regions) in float32, pasted into the uncropped grid
(background probability 1 outside the crop box in label mode, 0 everywhere in region mode);
the labels are then their argmax, as v2 takes them when it saves probabilities.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from nnpipe.errors import DataError
from nnpipe.inference.predict import PredictionFailed
from nnpipe.progress import log
from nnpipe.v2.imageio import V2Image, read_v2_image, write_v2_segmentation
from nnpipe.v2.model import V2Model, find_model_dir, load_v2_model, to_device
from nnpipe.v2.predict import (
    predict_v2_folder,
    preprocess,
    segmentation,
    sliding_window_logits,
)


def label_names(path: Path | str, model: V2Model, configuration: str | None) -> dict[str, Any]:
    """dataset.json's ``labels`` (name -> value, or list of values for a region) of the
    model read from ``path`` (a folder, dataset folder or v2 zip)."""
    import json

    path = Path(path)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist()
                     if n.endswith(f"{model.folder}/dataset.json")]
            if not names:
                raise ValueError(f"zip {str(path)!r} holds no {model.folder}/dataset.json")
            dataset = json.loads(zf.read(names[0]))
    else:
        dataset = json.loads((find_model_dir(path, configuration) / "dataset.json").read_text())
    return dict(dataset["labels"])


class V2Predictor:
    """A loaded v2 model (see the module docstring); what :class:`nnpipe.Predictor` holds
    for one.

    Args:
        path: a v2 trained-model folder, its dataset folder or a v2 zip.
        configuration, folds, checkpoint: as ``nnpipe predict --configuration --folds
            --checkpoint``.
        device: a torch device.
        tta: mirroring over the checkpoint's mirror axes.
        batch_size: tiles per forward pass.

    Raises:
        ValueError / FileNotFoundError: the model cannot be read (naming file and field).
    """

    def __init__(self, path: Path | str, device: torch.device, *, tta: bool, batch_size: int,
                 configuration: str | None = None,
                 folds: Sequence[str | int] | None = None, checkpoint: str = "final") -> None:
        self.model = load_v2_model(path, configuration, folds, checkpoint)
        self.device = device
        self.tta = tta
        self.batch_size = batch_size
        self.nets = to_device(self.model, device)
        sem = self.model.configuration.semantics
        self.memory_format = (torch.channels_last_3d if device.type == "cpu" and sem.dim == 3
                              else torch.contiguous_format)
        self._labels = label_names(path, self.model, configuration)

    # ---------------------------------------------------------------- what the model is

    @property
    def num_channels(self) -> int:
        return self.model.configuration.input_channels

    @property
    def labels(self) -> dict[int, str]:
        """Label value -> name of the label maps (region mode: the value each region is
        written as, ``regions_class_order``)."""
        sem = self.model.configuration.semantics
        out: dict[int, str] = {}
        if sem.regions is None:
            for name, value in self._labels.items():
                if name != "ignore" and not isinstance(value, list | tuple):
                    out[int(value)] = name
            return dict(sorted(out.items()))
        assert sem.regions_class_order is not None  # read with the regions
        regions = self._region_names()
        out[0] = next((n for n, v in self._labels.items() if v in (0, [0])), "background")
        for name, value in zip(regions, sem.regions_class_order, strict=True):
            out[value] = name
        return dict(sorted(out.items()))

    def _region_names(self) -> list[str]:
        """dataset.json's region names in file order, background left out (v2's order of
        the network's outputs)."""
        out = []
        for name, value in self._labels.items():
            group = value if isinstance(value, list | tuple) else [value]
            if name != "ignore" and set(group) != {0}:
                out.append(name)
        return out

    @property
    def class_names(self) -> list[str]:
        """Names of the probability channels ``K``: labels by value, or the regions."""
        sem = self.model.configuration.semantics
        if sem.regions is not None:
            return self._region_names()
        names = self.labels
        return [names.get(v, str(v)) for v in sem.labels]

    # ---------------------------------------------------------------- images

    def image_from_array(self, data: np.ndarray, affine: np.ndarray) -> V2Image:
        """``data`` ``(C, X, Y, Z)`` float32 with its ``affine`` (voxel -> mm) as the plans'
        reader would read it (module docstring)."""
        reader = self.model.configuration.semantics.reader
        geometry: dict[str, Any] = {"original_affine": affine}
        if reader == "NibabelIOWithReorient":
            ornt = io_orientation(affine)
            channels = [nib.Nifti1Image(c, affine).as_reoriented(ornt) for c in data]
            geometry["reoriented_affine"] = channels[0].affine
            zooms = channels[0].header.get_zooms()[:3]
            data = np.stack([np.asarray(c.dataobj) for c in channels])
        else:
            zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
        return V2Image(np.ascontiguousarray(data.transpose(0, 3, 2, 1), dtype=np.float32),
                       tuple(float(z) for z in zooms[::-1]), reader, geometry)

    def read(self, files: Sequence[Path], name: str) -> V2Image:
        """One case's channel files read by the plans' reader."""
        return read_v2_image(files, self.model.configuration.semantics.reader, name)

    def input_order(self, array: np.ndarray, image: V2Image, channel_first: bool) -> np.ndarray:
        """``array`` in the reader's ``(z, y, x)`` order back to the input's voxel order."""
        if channel_first:
            return np.stack([self.input_order(a, image, False) for a in array])
        if image.reader == "SimpleITKIO" and array.ndim == 3 and len(image.geometry.get(
                "spacing", (0, 0, 0))) == 2:  # a 2D file: (1, y, x) -> (x, y, 1)
            return np.ascontiguousarray(array.transpose(2, 1, 0))
        out = array.transpose(2, 1, 0)
        if image.reader == "NibabelIOWithReorient":
            back = ornt_transform(axcodes2ornt("RAS"),
                                  io_orientation(image.geometry["original_affine"]))
            out = nib.orientations.apply_orientation(out, back)
        return np.ascontiguousarray(out)

    def predict(self, image: V2Image, probabilities: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels ``(z, y, x)`` of one case as ``nnpipe predict`` writes them, and with
        ``probabilities`` the ``(K, z, y, x)`` float32 probabilities (module docstring)."""
        config = self.model.configuration
        sem = config.semantics
        if image.data.shape[0] != config.input_channels:
            raise ValueError(f"image has {image.data.shape[0]} channel(s); the model expects "
                             f"{config.input_channels} (give per-channel files as a list)")
        prepared = preprocess(image, sem)
        logits = sliding_window_logits(self.nets, prepared.data, sem, self.device, self.tta,
                                       self.batch_size, self.memory_format)
        return segmentation(logits, prepared, sem, with_probabilities=probabilities)

    # ---------------------------------------------------------------- files

    def predict_folder(self, folder: Path, out_dir: Path, skip_existing: bool) -> list[Path]:
        """``nnpipe predict --model <v2 model> -i folder -o out_dir`` with the loaded model."""
        return predict_v2_folder(self.model, folder, out_dir, device=self.device, tta=self.tta,
                                 batch_size=self.batch_size, skip_existing=skip_existing)

    def predict_file_list(self, files: Sequence[Path], out_dir: Path,
                          skip_existing: bool) -> list[Path]:
        """Each file one case (all its channels in it, so a one-channel model), written as
        ``out_dir/<case><ending>`` (the case: the file name without ending and without a
        ``_0000`` channel suffix)."""
        from nnpipe.imageio import ending_of, strip_ending

        out_dir.mkdir(parents=True, exist_ok=True)
        written, failed = [], []
        for f in files:
            case_id = strip_ending(f).removesuffix("_0000")
            target = out_dir / f"{case_id}{ending_of(f) or '.nii.gz'}"
            if skip_existing and target.is_file():
                written.append(target)
                continue
            t0 = time.monotonic()
            try:
                image = self.read([f], case_id)
                labels, _ = self.predict(image, False)
                write_v2_segmentation(target, labels, image,
                                      self.model.configuration.semantics.output_dtype)
            except Exception as exc:  # one bad case: name it and go on
                msg = DataError.of(exc, case=case_id, path=f)
                failed.append(str(msg))
                log(f"{case_id}: FAILED: {msg}")
                continue
            written.append(target)
            log(f"{case_id}: {time.monotonic() - t0:.1f}s -> {target}")
        if failed:
            raise PredictionFailed(f"{len(failed)} case(s) failed, the others were written:\n  "
                                   + "\n  ".join(failed))
        return written

