"""Portable models: one zip file that predicts on another machine with no ``results/``.

``nnpipe export --model RUN_OR_BEST --out model.zip`` writes a
:class:`~nnpipe.inference.model_spec.ModelSpec` as::

    manifest.json                  format, format_version, nnpipe_version, members, files
    dataset.json                   name, labels (value -> name), channel_names, file_ending
    postprocess.json               the largest-component decision (only if there is one)
    members/<run>/plan.json        each member's plan (readable JSON, as planned)
    members/<run>/fold<F>.pt       each fold's weights: torch.save of a dict of tensors
    members/<run>/previous/...     a cascade member's low-resolution stage (plan, folds)

``manifest.json`` lists every other member with its SHA-256. Loading
(:func:`load_archive`) reads the archive in memory and never extracts it; it refuses, naming
the archive and the problem, a file that is not a zip, a member name that is absolute or
climbs out (``..``) or is listed twice, a missing or unlisted member, a hash that differs,
and a ``format_version`` this nnpipe does not read. Weights load with
``torch.load(weights_only=True)`` and must be a flat dict of tensors: no object is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from nnpipe.inference.model_spec import FoldWeights, Member, ModelSpec
from nnpipe.io import atomic_path
from nnpipe.planning.plan import Plan
from nnpipe.version import __version__

FORMAT = "nnpipe-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INFERENCE = "inference.json"  # the study's inference settings, when the source had them


class ArchiveError(ValueError):
    """A model archive that cannot be used; the message names the archive and why."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"model archive {str(path)!r}: {problem}")


# ---------------------------------------------------------------- writing


def export_model(spec: ModelSpec, out: Path | str) -> dict[str, Any]:
    """Write ``spec`` as a model archive at ``out`` (atomically); returns the manifest."""
    files: dict[str, bytes] = {}
    members = [_member_record(m, f"members/{_safe_name(m.name)}", files)
               for m in spec.members]
    labels = {str(k): v for k, v in sorted(spec.labels.items())}
    files["dataset.json"] = _json_bytes({
        "name": spec.dataset_name, "labels": labels,
        "channel_names": {str(i): n for i, n in enumerate(spec.channel_names)},
        "file_ending": spec.file_ending})
    if spec.postprocess is not None:
        files["postprocess.json"] = _json_bytes(spec.postprocess)
    if spec.inference is not None:
        files[INFERENCE] = _json_bytes(dict(spec.inference))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "nnpipe_version": __version__, "source": spec.source, "members": members,
                "dataset": "dataset.json",
                "postprocess": "postprocess.json" if spec.postprocess is not None else None,
                "inference": INFERENCE if spec.inference is not None else None,
                "files": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())}}
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, _json_bytes(manifest))
        for name, data in files.items():
            zf.writestr(name, data)
    return manifest


def _member_record(m: Member, base: str, files: dict[str, bytes]) -> dict[str, Any]:
    """``m``'s manifest entry; its plan and weights are added to ``files`` under ``base``,
    a cascade member's previous stage under ``base/previous``."""
    files[f"{base}/plan.json"] = _json_bytes(m.plan.to_dict())
    folds = []
    for i, f in enumerate(m.folds):
        name = f"{base}/fold{f.fold if f.fold is not None else i}.pt"
        if name in files:
            name = f"{base}/model{i}.pt"
        files[name] = _tensor_bytes(f.weights, f.source)
        folds.append({"fold": f.fold, "weights": name})
    record: dict[str, Any] = {"name": m.name, "plan": f"{base}/plan.json",
                              "regions": m.regions, "folds": folds}
    if m.previous is not None:
        record["previous"] = _member_record(m.previous, f"{base}/previous", files)
    return record


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _tensor_bytes(weights: dict[str, torch.Tensor], source: str) -> bytes:
    buf = io.BytesIO()
    plain = {}
    for k, v in weights.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"weights of {source!r}: {k!r} is a {type(v).__name__}, not a "
                             "tensor")
        plain[k] = v.detach().cpu().contiguous()
    torch.save(plain, buf)
    return buf.getvalue()


def _safe_name(name: str) -> str:
    """A run name as one path component (run names are ``3d-fp32-1gpu``; be strict)."""
    cleaned = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name).strip(".")
    return cleaned or "member"


# ---------------------------------------------------------------- reading


def load_archive(path: Path | str) -> ModelSpec:
    """The :class:`ModelSpec` in a model archive, every member verified.

    Raises:
        ArchiveError: naming the archive and the problem (see the module docstring).
    """
    path = Path(path)
    data = _read_verified(path)
    manifest = json.loads(data[MANIFEST])
    try:
        members = tuple(_member(m, data, path) for m in manifest["members"])
        dataset = json.loads(data[manifest["dataset"]])
        postprocess = (json.loads(data[manifest["postprocess"]])
                       if manifest.get("postprocess") else None)
        inference = (json.loads(data[manifest["inference"]])
                     if manifest.get("inference") else None)
        channels = dataset.get("channel_names", {})
        names = tuple(str(channels[k]) for k in sorted(channels, key=int))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveError(path, f"manifest or member is malformed ({type(exc).__name__}: "
                           f"{exc})") from None
    spec = ModelSpec(str(path), members, postprocess, names, str(dataset.get("name", "")),
                     str(dataset.get("file_ending", ".nii.gz")),
                     extra={"nnpipe_version": manifest.get("nnpipe_version")},
                     inference=inference)
    labels = {int(k): v for k, v in dataset.get("labels", {}).items()}
    if labels != spec.labels:
        raise ArchiveError(path, f"dataset.json labels {labels} differ from the plans' "
                           f"{spec.labels}")
    return spec


def _read_verified(path: Path) -> dict[str, bytes]:
    """Every member's bytes of the archive at ``path``, verified (:func:`_verified_members`).

    Raises:
        FileNotFoundError: no such file. ArchiveError: not a zip, or a check failed.
    """
    if not path.is_file():
        raise FileNotFoundError(f"model archive {str(path)!r} does not exist")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(path, f"is not a zip file ({exc})") from None
    with zf:
        return _verified_members(zf, path)


def _verified_members(zf: zipfile.ZipFile, path: Path) -> dict[str, bytes]:
    """Every member's bytes, after the name, manifest, format and hash checks."""
    names = zf.namelist()
    for name in names:
        pure = PurePosixPath(name)
        if name.startswith(("/", "\\")) or "\\" in name or ".." in pure.parts or (
                len(name) > 1 and name[1] == ":"):
            raise ArchiveError(path, f"member name {name!r} is absolute or leaves the "
                               "archive (path traversal); refusing it")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ArchiveError(path, f"member(s) {dupes} occur more than once")
    if MANIFEST not in names:
        raise ArchiveError(path, f"has no {MANIFEST}; not an nnpipe model archive")
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except ValueError as exc:
        raise ArchiveError(path, f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(path, f"{MANIFEST} does not say format {FORMAT!r}; not an "
                           "nnpipe model archive")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArchiveError(path, f"has format_version {version!r} (written by nnpipe "
                           f"{manifest.get('nnpipe_version', '?')}); this nnpipe {__version__}"
                           f" reads format_version {FORMAT_VERSION}: export it again with "
                           "this version, or predict with the version that wrote it")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ArchiveError(path, f"{MANIFEST} lists no files")
    missing = sorted(set(listed) - set(names))
    if missing:
        raise ArchiveError(path, f"member(s) {missing} listed in {MANIFEST} are missing")
    unlisted = sorted(set(names) - set(listed) - {MANIFEST})
    if unlisted:
        raise ArchiveError(path, f"member(s) {unlisted} are not listed in {MANIFEST} "
                           "(the archive was changed after export)")
    data = {MANIFEST: zf.read(MANIFEST)}
    for name, digest in listed.items():
        raw = zf.read(name)
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ArchiveError(path, f"member {name!r} does not match its SHA-256 in "
                               f"{MANIFEST} (the archive is damaged or was changed)")
        data[name] = raw
    return data


def _member(record: dict[str, Any], data: dict[str, bytes], path: Path) -> Member:
    plan = Plan.from_dict(json.loads(data[record["plan"]]))
    folds = []
    for f in record["folds"]:
        name = f["weights"]
        folds.append(FoldWeights(f["fold"], _load_tensors(data[name], f"{path}:{name}"),
                                 f"{path}:{name}"))
    previous = _member(record["previous"], data, path) if record.get("previous") else None
    return Member(str(record["name"]), plan, bool(record["regions"]), tuple(folds), previous)


def _load_tensors(raw: bytes, where: str) -> dict[str, torch.Tensor]:
    """A dict of tensors, unpickled with ``weights_only=True`` (no code runs)."""
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad or unsafe pickle
        raise ValueError(f"weights {where!r} cannot be loaded as plain tensors "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(f"weights {where!r} are not a dict of named tensors")
    return obj
