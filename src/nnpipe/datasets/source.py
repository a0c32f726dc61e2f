"""The download stage: put a dataset in MSD or nnU-Net v2 layout under ``results/{name}/raw``.

``embedded`` generates the built-in dataset (no network); ``local`` links the subfolders of a
dataset the user already has (nothing is copied, so a 7 GB BraTS costs no disk); ``msd``
downloads one of the ten Medical Segmentation Decathlon tasks (``dataset.task``), checks its
MD5 and unpacks it (the archive waits in ``results/{name}/download/`` while incomplete, so a
rerun resumes it, and is deleted once unpacked). Either way the
new ``raw/`` is assembled under a temporary name and swapped into place only when complete, so
``raw/dataset.json`` (the workflow's output) exists only for a finished dataset.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nnpipe.config import DatasetSettings
from nnpipe.datasets.download import fetch_msd
from nnpipe.datasets.embedded import generate_embedded
from nnpipe.datasets.layout import load_dataset
from nnpipe.errors import DataError
from nnpipe.progress import log
from nnpipe.study import DOWNLOAD_CACHE

_LINKED = ("imagesTr", "labelsTr", "imagesTs")


def _link_local(src: Path, out: Path) -> None:
    load_dataset(src)  # validates dataset.json and that every listed file exists
    out.mkdir(parents=True)
    for name in _LINKED:
        if (src / name).is_dir():
            os.symlink((src / name).resolve(), out / name, target_is_directory=True)
    shutil.copy2(src / "dataset.json", out / "dataset.json")


def fetch_dataset(settings: DatasetSettings, out_dir: Path | str) -> Path:
    """Create ``out_dir`` (the ``raw`` folder) for ``settings``; returns its dataset.json."""
    out = Path(out_dir)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    try:
        if settings.source == "embedded":
            e = settings.embedded
            generate_embedded(partial, n_train=e.n_train, n_test=e.n_test, seed=e.seed,
                              resolution_mm=e.resolution_mm, annotate_every=e.annotate_every)
        elif settings.source == "local":
            if not settings.path:
                raise DataError("dataset.source is 'local' but dataset.path is empty")
            _link_local(Path(settings.path), partial)
        elif settings.source == "msd":
            if not settings.task:
                raise DataError("dataset.source is 'msd' but dataset.task is empty "
                                "(e.g. Task04_Hippocampus)")
            fetch_msd(settings.task, partial, cache_dir=out.parent / DOWNLOAD_CACHE)
            load_dataset(partial)  # the unpacked dataset must read back before it counts
        else:
            raise ValueError(f"dataset.source {settings.source!r} is unknown")
        if out.is_symlink() or out.is_file():
            out.unlink()
        elif out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log(f"dataset {settings.name!r} ready in {out}")
    return out / "dataset.json"
