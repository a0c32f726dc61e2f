"""Atomic file output, JSON, and the NIfTI writer of generated data.

Every file nnpipe writes goes through :func:`atomic_path`: the data are written under a
temporary name in the same folder and renamed into place only when complete, so an
interrupted job never leaves a file that Snakemake or a later run could take for finished.
Reading images is :mod:`nnpipe.datasets.layout`'s job (the one reader), writing
predictions :func:`nnpipe.datasets.layout.write_prediction`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from nnpipe.geometry import spacing_of  # noqa: F401  (re-exported: nnpipe.io.spacing_of)

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary name keeps the final suffixes (``.nii.gz`` stays ``.nii.gz``) so that
    libraries choosing a format from the file name still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp creates 0600; give the usual umask-based permissions
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; if the block succeeds it replaces ``path``
    (a folder or file already there is removed first), else it is deleted: a folder that
    looks finished is always complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy(path: Path | str, array: np.ndarray) -> None:
    """Save an uncompressed ``.npy`` atomically (memory-mappable by the training loader)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def save_nifti(path: Path | str, array: np.ndarray, affine: np.ndarray,
               header: nib.Nifti1Header | None = None) -> None:
    """Write ``array`` (``(X, Y, Z[, C])``) with ``affine`` atomically.

    Both qform and sform are set from ``affine`` with code 1 (scanner), so every viewer
    places the image where the source image was.
    """
    img = nib.Nifti1Image(array, affine, header=header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.set_data_dtype(array.dtype)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
