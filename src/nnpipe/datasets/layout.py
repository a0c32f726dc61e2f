"""The one reader: dataset folders, their cases, images and label maps.

Everything a user brings passes through here, and only here: fingerprint, preprocess,
training (through preprocess), ``nnpipe predict`` (``--raw`` and ``--input``), the ensemble
rule, evaluation and the plots. Two layouts:

* **MSD** (Medical Segmentation Decathlon): ``dataset.json`` with ``modality``, ``labels``
  and the ``training`` / ``test`` lists; one file per case holding every channel
  (``(X, Y, Z, C)``, 3D for one channel). The case id is the whole file stem, ``_0007``
  included.
* **nnU-Net v2 raw**: ``dataset.json`` with ``channel_names``, ``labels`` and
  ``file_ending``; one file per channel, ``imagesTr/<case>_0000<ending>``; cases come from
  the folders.

Cases come from dataset.json's lists where the layout has them, else from the folder by one
rule (:func:`find_cases`): hidden files and macOS ``._`` twins are ignored (one log line),
every ending of :data:`nnpipe.imageio.ENDINGS` is accepted, and a file that matches no rule
is named in a warning.

Images come out channel-first ``(C, X, Y, Z)`` float32 in the canonical voxel order
(:mod:`nnpipe.geometry`), with the canonical affine in mm; label maps ``(X, Y, Z)`` int64
holding the values users wrote (rounded where they are integers up to float round-off,
:func:`nnpipe.labels.integer_labels`). :func:`write_prediction` is the way back out: the
canonical label map goes back to the file's own voxel order, format and header.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nnpipe.errors import DataError
from nnpipe.geometry import Orientation, grid_difference, orientation_of
from nnpipe.imageio import (
    ENDINGS,
    ImageFile,
    ending_of,
    is_companion,
    read_file,
    strip_ending,
    write_like,
)
from nnpipe.labels import LabelScheme, LabelTable, integer_labels, parse_labels
from nnpipe.progress import log

LAYOUTS = ("msd", "nnunetv2")
CHANNEL_SUFFIX_LEN = len("_0000")


@dataclass(frozen=True)
class Case:
    """One case: its id, its image file(s) and (for training cases) its label file."""

    case_id: str
    images: tuple[Path, ...]  # one file holding every channel (MSD) or one per channel (v2)
    label: Path | None = None


@dataclass(frozen=True)
class Dataset:
    root: Path
    name: str
    layout: str  # "msd" or "nnunetv2"
    channels: tuple[str, ...]  # channel names ("FLAIR", "T1w", "CT", ...)
    labels: dict[int, str]  # label value -> name, background 0 included, sorted by value
    training: tuple[Case, ...]
    test: tuple[Case, ...]
    file_ending: str = ".nii.gz"
    # the label concept of dataset.json (regions, ignore); None: every listed value a class
    label_scheme: LabelScheme | None = None

    @property
    def scheme(self) -> LabelScheme:
        """dataset.json's label concept (:meth:`LabelScheme.from_dataset_json`)."""
        if self.label_scheme is not None:
            return self.label_scheme
        return LabelScheme.from_dataset_json({str(k): v for k, v in self.labels.items()},
                                             layout="msd", path=self.root / "dataset.json")

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def num_classes(self) -> int:
        """Number of label values, background included."""
        return len(self.labels)

    @property
    def label_table(self) -> LabelTable:
        return self.scheme.table

    @property
    def is_ct(self) -> tuple[bool, ...]:
        """Per channel: normalize as CT (clip to foreground percentiles) rather than MRI."""
        return tuple(c.strip().upper() == "CT" for c in self.channels)

    def case(self, case_id: str) -> Case:
        for c in self.training + self.test:
            if c.case_id == case_id:
                return c
        raise DataError("no such case in the dataset", case=case_id, path=self.root)

    def label_of(self, case_id: str) -> Path:
        """The reference label file of ``case_id``; :class:`DataError` naming the case when it
        has none (a test case, e.g. listed by a splits file meant for another dataset)."""
        label = self.case(case_id).label
        if label is None:
            raise DataError("has no label file to score against (a test case, not a training "
                            "case)", case=case_id, path=self.root)
        return label


# ---------------------------------------------------------------- finding cases


def is_hidden(path: Path) -> bool:
    """Dot-files, macOS ``._`` AppleDouble twins among them: never cases."""
    return path.name.startswith(".")


def _listing(folder: Path) -> list[Path]:
    """The files of ``folder`` that could be images, hidden ones dropped with one log line."""
    files = sorted(p for p in folder.iterdir() if p.is_file() or p.is_symlink())
    hidden = [p for p in files if is_hidden(p)]
    if hidden:
        twins = sum(p.name.startswith("._") for p in hidden)
        log(f"{folder}: ignored {len(hidden)} hidden file(s)"
            + (f" ({twins} macOS '._' twins)" if twins else ""))
    return [p for p in files if not is_hidden(p) and not is_companion(p)]


def find_cases(folder: Path | str, *, layout: str, num_channels: int,
               label_folder: Path | None = None) -> tuple[list[Case], list[DataError]]:
    """The cases of a folder of images, by the layout's rule.

    ``msd``: every supported file is one case whose id is the whole stem. ``nnunetv2``:
    ``<case>_<NNNN><ending>``, one file per channel; a case with missing or extra channel
    files becomes an error. Files with an unsupported ending are named in a warning. Returns
    the cases sorted by id and the per-case errors; two files giving one case id (``x.nii``
    beside ``x.nii.gz``) raise :class:`DataError` naming both.
    """
    folder = Path(folder)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not folder.is_dir():
        raise DataError("input folder does not exist", path=folder)
    files: dict[str, Path] = {}
    for p in _listing(folder):
        if ending_of(p) is None:
            log(f"warning: {p}: not a supported image file ({', '.join(ENDINGS)}); ignored")
            continue
        stem = strip_ending(p)
        if stem in files:
            raise DataError(f"two files give case/channel {stem!r}: {files[stem].name} and "
                            f"{p.name}; keep one", path=folder)
        files[stem] = p
    labels = _label_files(label_folder) if label_folder is not None else {}
    if layout == "msd":
        return [Case(s, (p,), labels.get(s)) for s, p in sorted(files.items())], []
    return _group_channels(files, num_channels, labels, folder)


def _group_channels(files: dict[str, Path], num_channels: int, labels: dict[str, Path],
                    folder: Path) -> tuple[list[Case], list[DataError]]:
    per_case: dict[str, dict[int, Path]] = {}
    for stem, p in files.items():
        suffix = stem[-CHANNEL_SUFFIX_LEN:]
        if len(stem) > CHANNEL_SUFFIX_LEN and suffix[0] == "_" and suffix[1:].isdigit():
            per_case.setdefault(stem[:-CHANNEL_SUFFIX_LEN], {})[int(suffix[1:])] = p
        else:
            log(f"warning: {p}: no _NNNN channel suffix (nnU-Net v2 layout: "
                f"<case>_0000{ending_of(p)}); ignored")
    cases, errors = [], []
    for cid, chans in sorted(per_case.items()):
        if sorted(chans) != list(range(num_channels)):
            errors.append(DataError(f"has channel files {sorted(chans)}; expected _0000 to "
                                    f"_{num_channels - 1:04d}", case=cid, path=folder))
            continue
        cases.append(Case(cid, tuple(chans[i] for i in range(num_channels)), labels.get(cid)))
    return cases, errors


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {strip_ending(p): p for p in _listing(folder) if ending_of(p) is not None}


# ---------------------------------------------------------------- dataset.json


def load_dataset(root: Path | str) -> Dataset:
    """Read ``root/dataset.json``, detect the layout from its keys, and find the cases.

    Files listed but missing are reported here, before any work starts.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError("dataset.json is missing; is this an MSD or nnU-Net v2 dataset folder?",
                        path=meta_path)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc})", path=meta_path) from exc
    if not isinstance(meta, dict):
        raise DataError("must hold a JSON object", path=meta_path)
    if "channel_names" in meta:
        ds = _load_nnunetv2(root, meta)
    elif "modality" in meta:
        ds = _load_msd(root, meta)
    else:
        raise DataError("has neither 'modality' (MSD) nor 'channel_names' (nnU-Net v2)",
                        path=meta_path)
    for case in ds.training + ds.test:
        for p in case.images + ((case.label,) if case.label else ()):
            if not p.is_file():
                raise DataError("listed in dataset.json but missing", case=case.case_id, path=p)
    if not ds.training:
        raise DataError("lists no training cases", path=meta_path)
    ids = [c.case_id for c in ds.training + ds.test]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise DataError(f"case ids {dupes} occur more than once", path=meta_path)
    return ds


def _channel_names(meta: dict, key: str, path: Path) -> tuple[str, ...]:
    value = meta[key]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        log(f"{path}: '{key}' is a list; read as channels 0 to {len(value) - 1} in its order")
        value = {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict) or not value:
        raise DataError(f"'{key}' must map channel numbers to names, e.g. {{\"0\": \"T1\"}}",
                        path=path)
    try:
        order = sorted(value, key=int)
    except ValueError as exc:
        raise DataError(f"'{key}' keys must be channel numbers \"0\", \"1\", ... ({exc})",
                        path=path) from exc
    return tuple(str(value[k]) for k in order)


def _entry_text(entry: object, key: str, meta_path: Path) -> str:
    rel = entry.get(key) if isinstance(entry, dict) else entry
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"an entry of '{key}' lists is not a file name: {entry!r}",
                        path=meta_path)
    return rel


def entry_candidates(root: Path, rel: str) -> list[Path]:
    """Where a dataset.json file entry ``rel`` may be, most literal first.

    Entries are written on any OS: a backslash is a separator (``.\\imagesTr\\x.nii.gz``;
    no dataset has one inside a file name), ``.`` parts and surrounding blanks mean nothing.
    A relative entry is under ``root``; an absolute one (``/home/me/Task05/imagesTr/x.nii.gz``,
    ``C:\\data\\...``, written on another machine) is tried as it is (POSIX only) and then as
    its last folder and file under ``root`` (``imagesTr/x.nii.gz``).
    """
    text = rel.strip().replace("\\", "/")
    drive = re.match(r"^[A-Za-z]:/", text) is not None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if drive:
        parts = parts[1:]
    out: list[Path] = []
    if text.startswith("/") or drive:
        if not drive:
            out.append(Path(text))
        out += [root.joinpath(*parts[-2:]), root / parts[-1]] if parts else []
    else:
        out.append(root.joinpath(*parts) if parts else root)
        if len(parts) > 2:  # a longer relative path: its last folder and file under root
            out.append(root.joinpath(*parts[-2:]))
    return list(dict.fromkeys(out))


def _case_insensitive(root: Path, candidate: Path) -> Path | None:
    """``candidate`` (under ``root``) matched component by component without regard to case
    (``ImagesTr/Case_001.NII.GZ`` written on Windows or macOS, whose file systems ignore case),
    if exactly one file matches."""
    if not candidate.is_relative_to(root):
        return None
    here = root
    for part in candidate.relative_to(root).parts:
        if (here / part).exists():
            here = here / part
            continue
        if not here.is_dir():
            return None
        found = [p for p in here.iterdir() if p.name.casefold() == part.casefold()]
        if len(found) != 1:
            return None
        here = found[0]
    return here if here.is_file() else None


def _resolve_entry(root: Path, rel: str, meta_path: Path, notes: list[str],
                   num_channels: int = 0) -> tuple[Path, ...]:
    """The file(s) a dataset.json entry names (:func:`entry_candidates`, then the same
    without regard to case). With ``num_channels`` (an image entry), an entry that names no
    file but whose ``<stem>_0000<ending>`` ... ``_NNNN`` files all exist is nnU-Net v1's
    raw format (dataset.json names the case, one file per channel): those files, in channel
    order. An entry read other than literally goes into ``notes``; one that resolves nowhere
    raises :class:`DataError` naming the entry and every path tried."""
    tried = entry_candidates(root, rel)
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        found = _case_insensitive(root, tried[0])
        tried.append(Path(f"{tried[0]} (any case)"))
    if found is not None:
        if found != root / rel:
            shown = found.relative_to(root) if found.is_relative_to(root) else found
            notes.append(f"{rel!r} -> {shown}")
        return (found,)
    if num_channels:
        ending = ending_of(tried[0]) or ""
        for base in [p for p in tried if not str(p).endswith("(any case)")]:
            files = tuple(base.with_name(f"{strip_ending(base)}_{c:04d}{ending}")
                          for c in range(num_channels))
            if all(f.is_file() for f in files):
                notes.append(f"{rel!r} -> {files[0].name} ... (nnU-Net v1: one file per "
                             f"channel)")
                return files
        tried.append(tried[0].with_name(f"{strip_ending(tried[0])}_0000{ending}"))
    hint = " (backslashes were read as separators)" if "\\" in rel else ""
    raise DataError(f"listed in dataset.json as {rel!r} but missing{hint}; tried: "
                    + ", ".join(str(p) for p in tried), case=strip_ending(tried[0]),
                    path=tried[0])


def _load_msd(root: Path, meta: dict) -> Dataset:
    meta_path = root / "dataset.json"
    channels = _channel_names(meta, "modality", meta_path)
    labels = parse_labels(meta.get("labels"), layout="msd", path=meta_path)
    notes: list[str] = []

    def entry(e: object, key: str, num_channels: int = 0) -> tuple[Path, ...]:
        return _resolve_entry(root, _entry_text(e, key, meta_path), meta_path, notes,
                              num_channels)

    def image_case(e: object, labelled: bool) -> Case:
        files = entry(e, "image", len(channels))
        cid = strip_ending(files[0])
        if len(files) > 1:
            cid = cid[:-CHANNEL_SUFFIX_LEN]
        return Case(cid, files, entry(e, "label")[0] if labelled else None)

    training = [image_case(e, True) for e in meta.get("training", [])]
    if "test" in meta:
        test = [image_case(e, False) for e in meta["test"]]
    else:  # no list: the folder rule
        test = find_cases(root / "imagesTs", layout="msd", num_channels=len(channels))[0] \
            if (root / "imagesTs").is_dir() else []
    if notes:
        log(f"{meta_path}: {len(notes)} file entr{'y' if len(notes) == 1 else 'ies'} read as "
            f"paths on this machine (backslashes and '.' parts as separators, other machines' "
            f"absolute paths by folder and file, names without regard to case): "
            f"{', '.join(notes[:3])}" + (" ..." if len(notes) > 3 else ""))
    for key, listed in (("numTraining", training), ("numTest", test)):
        if key in meta and str(meta[key]) != str(len(listed)):
            log(f"warning: {meta_path}: {key} is {meta[key]!r} but the list holds "
                f"{len(listed)} case(s); the list is used")
    _warn_unlisted(root / "imagesTr", {p.name for c in training for p in c.images}, "training")
    _warn_unlisted(root / "imagesTs", {p.name for c in test for p in c.images}, "test")
    return Dataset(root, str(meta.get("name", root.name)), "msd", channels, labels,
                   tuple(training), tuple(test), str(meta.get("file_ending", ".nii.gz")),
                   _scheme(meta, "msd", meta_path))


def _scheme(meta: dict, layout: str, path: Path) -> LabelScheme:
    return LabelScheme.from_dataset_json(meta.get("labels"), layout=layout, path=path,
                                         regions_class_order=meta.get("regions_class_order"))


def _warn_unlisted(folder: Path, listed: set[str], key: str) -> None:
    """MSD: image files that dataset.json does not list are named, not silently skipped."""
    if not folder.is_dir():
        return
    extra = [p.name for p in _listing(folder) if p.name not in listed]
    if extra:
        log(f"warning: {folder}: {len(extra)} file(s) not listed in dataset.json's {key!r} "
            f"and not used: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")


def _load_nnunetv2(root: Path, meta: dict) -> Dataset:
    meta_path = root / "dataset.json"
    channels = _channel_names(meta, "channel_names", meta_path)
    labels = parse_labels(meta.get("labels"), layout="nnunetv2", path=meta_path)
    ending = str(meta.get("file_ending", ".nii.gz"))

    def cases(folder: str, label_folder: Path | None) -> tuple[Case, ...]:
        d = root / folder
        if not d.is_dir():
            return ()
        found, errors = find_cases(d, layout="nnunetv2", num_channels=len(channels),
                                   label_folder=label_folder)
        if errors:
            raise errors[0]
        return tuple(found)

    training = cases("imagesTr", root / "labelsTr")
    for c in training:
        if c.label is None:
            raise DataError(f"has no label file in labelsTr (expected {c.case_id}{ending})",
                            case=c.case_id, path=root / "labelsTr")
    return Dataset(root, str(meta.get("name", root.name)), "nnunetv2", channels, labels,
                   training, cases("imagesTs", None), ending,
                   _scheme(meta, "nnunetv2", meta_path))


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class CaseImage:
    """One case's image as the pipeline sees it, and what is needed to go back.

    ``image``: ``(C, X, Y, Z)`` float32 in the canonical voxel order; ``affine``: the
    canonical grid's voxel -> world RAS+ mm; ``orientation``: file order -> canonical;
    ``source``: the first image file's header (voxels dropped), for writing predictions.
    """

    case_id: str
    image: np.ndarray
    affine: np.ndarray
    orientation: Orientation
    source: ImageFile
    file_affine: np.ndarray  # the file grid's affine (mm), for checking labels against it

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        s = self.image.shape
        return (int(s[1]), int(s[2]), int(s[3]))


def _what_file_holds(f: ImageFile) -> str:
    stored = f.source.get_data_dtype() if f.family == "nifti" else f.data.dtype
    names = getattr(stored, "names", None)
    kind = (f"RGB{'A' if len(names) == 4 else ''}{8 * stored.itemsize} voxels "
            f"({len(names)} components each)" if names else f"dtype {stored}")
    return f"{f.channels} channel(s), voxel shape {f.spatial_shape}, {kind}"


def _channel_hint(case: Case, total: int) -> str:
    """How to fix a channel-count mismatch: per-channel files (``<case>_0000``) read as
    cases of their own need the nnU-Net v2 grouping; otherwise dataset.json is wrong."""
    if len(case.images) == 1 and re.search(r"_\d{4}$", case.case_id):
        return ("the file name ends in a 4-digit channel suffix, as nnU-Net v2's per-channel "
                "files do: group them into cases with `--layout nnunetv2` (nnpipe predict), "
                f"or list {total} channel(s) in dataset.json if each file is a whole case")
    return f"list {total} channel(s) in dataset.json to use them"


def read_case_image(case: Case, num_channels: int, channel_names: Sequence[str] = ()
                    ) -> CaseImage:
    """Read ``case``'s image file(s) into a :class:`CaseImage`.

    Channel files must share one grid (:func:`nnpipe.geometry.grid_difference` names what
    differs); the total channel count must equal ``num_channels``; every voxel must be finite.
    Raises :class:`DataError` naming the case, the file and the problem.
    """
    files = [read_file(p, case=case.case_id) for p in case.images]
    first = files[0]
    for f in files[1:]:
        diff = grid_difference(first.spatial_shape, first.affine, f.spatial_shape, f.affine)
        if diff:
            raise DataError(f"channel grid differs from the first channel's "
                            f"({first.path.name}): {diff}", case=case.case_id, path=f.path)
    total = sum(f.channels for f in files)
    if total != num_channels:
        listed = f" ({', '.join(channel_names)})" if channel_names else ""
        holds = "; ".join(f"{f.path.name} holds {_what_file_holds(f)}" for f in files)
        raise DataError(f"has {total} channel(s) but dataset.json lists {num_channels}"
                        f"{listed}: {holds}; {_channel_hint(case, total)}",
                        case=case.case_id, path=first.path)
    data = files[0].data if len(files) == 1 else np.concatenate([f.data for f in files], -1)
    for note in first.notes:
        log(f"case {case.case_id!r}, file {str(first.path)!r}: {note}")
    o = orientation_of(first.affine, first.spatial_shape)
    image = np.moveaxis(o.apply(data), -1, 0).astype(np.float32, copy=False)
    image = np.ascontiguousarray(image)
    if not np.isfinite(image).all():
        raise DataError("contains NaN or Inf voxels", case=case.case_id, path=first.path)
    for f in files:  # keep the header, not the voxels
        f.data = np.broadcast_to(np.zeros((), f.data.dtype), f.data.shape)
    return CaseImage(case.case_id, image, o.canonical_affine(first.affine), o, first,
                     first.affine)


def read_image(ds: Dataset, case: Case) -> CaseImage:
    """:func:`read_case_image` with the dataset's channels."""
    return read_case_image(case, ds.num_channels, ds.channels)


# ---------------------------------------------------------------- labels


class Label(NamedTuple):
    """A label map ``(X, Y, Z)`` int64 of label values, canonical order; ``rounded`` when
    float values were rounded to the nearest integer."""

    values: np.ndarray
    rounded: bool


def read_label(ds: Dataset, case: Case, image: CaseImage | None = None) -> Label:
    """Read ``case``'s label map, checked against dataset.json's labels and (when given) the
    image's grid. Raises :class:`DataError` naming the case, the file and the problem."""
    if case.label is None:
        raise DataError("has no label file", case=case.case_id)
    f = read_file(case.label, case=case.case_id)
    if f.channels != 1:
        raise DataError(f"label must hold one value per voxel, got {f.channels} components "
                        f"(shape {tuple(f.data.shape)})", case=case.case_id, path=case.label)
    said = set(image.source.notes) if image is not None else set()
    for note in f.notes:  # what the image's own notes did not already say (units, say)
        if note not in said:
            log(f"case {case.case_id!r}, file {str(case.label)!r}: {note}")
    if image is not None:
        _check_label_grid(f, image, case)
    values, rounded = integer_labels(f.data[..., 0], case=case.case_id, path=case.label)
    o = image.orientation if image is not None else orientation_of(f.affine, f.spatial_shape)
    values = np.ascontiguousarray(o.apply(values))
    present = np.unique(values)
    unknown = sorted(set(present.tolist()) - set(ds.labels))
    if unknown:
        raise DataError(f"label values {unknown[:10]} are not listed in dataset.json "
                        f"(listed: {sorted(ds.labels)})", case=case.case_id, path=case.label)
    if present.size == 1 and present[0] == 0:
        # usable (a background-only example), so a warning rather than an error
        log(f"warning: case {case.case_id!r}, file {str(case.label)!r}: label is empty (no "
            f"foreground); the case is kept as background only")
    return Label(values, rounded)


def _check_label_grid(f: ImageFile, image: CaseImage, case: Case) -> None:
    src = image.source
    diff = grid_difference(src.spatial_shape, image.file_affine, f.spatial_shape, f.affine)
    if diff is None:
        return
    # NIfTI: a label written with the image's other form (qform vs sform) is the same grid
    # in the tool that wrote it; accept it and say so.
    for mine, theirs, what in ((f.affine, src.other_affine, "the image's qform"),
                               (f.other_affine, image.file_affine, "the image's sform")):
        if theirs is not None and mine is not None and grid_difference(
                src.spatial_shape, theirs, f.spatial_shape, mine) is None:
            log(f"warning: case {case.case_id!r}, file {str(f.path)!r}: label grid matches "
                f"{what}, not the form the NIfTI rule picks (sform when sform_code > 0); "
                f"accepted on the image's grid")
            return
    raise DataError(f"label grid differs from the image's: {diff}", case=case.case_id,
                    path=f.path)


def read_label_file(path: Path | str, *, case: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A label map file on its own (a prediction, or a reference for evaluation):
    ``(values (X, Y, Z) int64 canonical, canonical affine (mm))``."""
    f = read_file(path, case=case)
    if f.channels != 1:
        raise DataError(f"label map must hold one value per voxel, got {f.channels} "
                        "components", case=case, path=path)
    values, _ = integer_labels(f.data[..., 0], case=case, path=path)
    o = orientation_of(f.affine, f.spatial_shape)
    return np.ascontiguousarray(o.apply(values)), o.canonical_affine(f.affine)


# ---------------------------------------------------------------- predictions out


def prediction_name(image: CaseImage) -> str:
    """``<case><ending>``: a prediction keeps its input's format (``.nii`` stays ``.nii``)."""
    return f"{image.case_id}{ending_of(image.source.path)}"


def write_prediction(out_dir: Path | str, labels: np.ndarray, image: CaseImage) -> Path:
    """Write a label map ``(X, Y, Z)`` of label values in the canonical order back onto the
    case's own grid, voxel order, format and header; returns the path written."""
    out = Path(out_dir) / prediction_name(image)
    write_like(out, image.orientation.undo(labels), image.source)
    return out


def prediction_path(folder: Path | str, case_id: str) -> Path:
    """The prediction file of ``case_id`` in ``folder`` (any supported ending). Raises
    :class:`DataError` if there is none or more than one."""
    folder = Path(folder)
    found = [p for p in folder.glob(f"{_glob_escape(case_id)}.*")
             if not is_hidden(p) and ending_of(p) and strip_ending(p) == case_id]
    if len(found) != 1:
        problem = "prediction is missing" if not found else (
            f"several predictions: {', '.join(sorted(p.name for p in found))}")
        raise DataError(problem, case=case_id, path=folder / f"{case_id}.*")
    return found[0]


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
