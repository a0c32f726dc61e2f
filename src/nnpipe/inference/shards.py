"""Prediction across many jobs: disjoint shards of the cases, part records, and the gather.

``nnpipe predict --part I --parts N`` predicts shard ``I`` of ``N``: the case ids sorted (by
code point, as Python sorts strings), then every ``N``-th from position ``I``
(:func:`shard_ids`). Any ``N`` gives disjoint shards that together hold every case once, and
balanced ones (sizes differ by at most one). nnU-Net v2's ``-part_id I -num_parts N`` is the
same rule on sorted identifiers, so ``--part I --parts N`` takes the same cases from the
same folder. A hash of the case id would keep a case in its shard when cases are added, but
gives empty or lopsided shards on small sets; a rerun skips cases already written anyway.

Resumption. Every output is written under a hidden temporary name and renamed when complete
(:func:`nnpipe.io.atomic_path`), the label map last, so a killed job leaves no file that
looks finished, only hidden ``.<case><ending>.XXXXXXXX.part<ending>`` leftovers; a rerun of
the part deletes its own cases' leftovers (:func:`remove_partials`) and, with
``--continue``, predicts only the cases whose outputs are missing.

The workflow (``rules/predict_sets.smk``) runs each part as one job writing into
``predictions/<NAME>.parts/`` and a part record (:func:`write_part_record`) when the part is
complete; :func:`gather` then checks the records (every part once, one listing, every case
in exactly one part) and links every case's files into ``predictions/<NAME>/``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnpipe.datasets.layout import LAYOUTS, Case, is_hidden
from nnpipe.errors import DataError
from nnpipe.imageio import ending_of, strip_ending
from nnpipe.io import atomic_dir, read_json, write_json
from nnpipe.progress import log

RECORD_FORMAT = "nnpipe-predict-part"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# atomic_path's temporary name: "." + final name + "." + mkstemp's random part + ".part" + suffixes
_PARTIAL = re.compile(r"\.(?P<final>.+)\.[A-Za-z0-9_]+\.part(\.[A-Za-z0-9.]+)?")


@dataclass(frozen=True)
class Shard:
    """Part ``part`` (0-based, as nnU-Net v2's ``-part_id``) of ``parts``.

    Raises:
        ValueError: ``parts`` < 1, or ``part`` outside ``0 .. parts - 1``.
    """

    part: int
    parts: int

    def __post_init__(self) -> None:
        if self.parts < 1:
            raise ValueError(f"--parts must be >= 1, got {self.parts}")
        if not 0 <= self.part < self.parts:
            raise ValueError(f"--part must be in 0..{self.parts - 1} for --parts "
                             f"{self.parts}, got {self.part}")

    def __str__(self) -> str:
        return f"part {self.part} of {self.parts}"


def shard_ids(case_ids: Sequence[str], shard: Shard) -> list[str]:
    """The case ids of ``shard``: sorted, then every ``shard.parts``-th from ``shard.part``.

    Raises:
        ValueError: a case id given twice (shards would no longer be disjoint).
    """
    ordered = sorted(case_ids)
    twice = sorted({c for c, n in zip(ordered, ordered[1:], strict=False) if c == n})
    if twice:
        raise ValueError(f"case id(s) given twice: {', '.join(twice[:5])}")
    return ordered[shard.part::shard.parts]


@dataclass(frozen=True)
class PartSelection:
    """The cases of one part, and what the gather checks across parts: the number of cases
    in the whole listing and a digest of their sorted ids."""

    shard: Shard
    cases: tuple[Case, ...]
    total: int
    listing_sha256: str


def select_part(cases: Sequence[Case], shard: Shard, out_dir: Path | str,
                errors: Sequence[DataError] = ()) -> tuple[PartSelection, list[DataError]]:
    """The cases of ``shard`` (:func:`shard_ids` over the ids of ``cases`` and of the cases
    in ``errors``, e.g. with a channel file missing, so each error is reported by one part),
    and the errors of its cases. Deletes what an interrupted run of these cases left in
    ``out_dir`` (:func:`remove_partials`)."""
    ids = [c.case_id for c in cases] + [e.case for e in errors if e.case is not None]
    chosen = set(shard_ids(ids, shard))
    picked = tuple(sorted((c for c in cases if c.case_id in chosen), key=lambda c: c.case_id))
    mine = [e for e in errors if e.case is None or e.case in chosen]
    if shard.parts > 1:
        log(f"{shard}: {len(picked) + len(mine)} of {len(ids)} case(s)")
    remove_partials(out_dir, sorted(chosen))
    return PartSelection(shard, picked, len(ids), listing_digest(ids)), mine


def listing_digest(case_ids: Sequence[str]) -> str:
    """SHA-256 of the sorted case ids, one per line: equal for parts that listed one set."""
    return hashlib.sha256("\n".join(sorted(case_ids)).encode()).hexdigest()


# ---------------------------------------------------------------- leftovers of killed jobs


def remove_partials(out_dir: Path | str, case_ids: Sequence[str]) -> list[Path]:
    """Delete the temporary files a killed job left for ``case_ids`` in ``out_dir``
    (``.<case><ending>.XXXXXXXX.part<ending>`` and ``.<case>.npz.XXXXXXXX.part.npz``);
    returns them. Only the part that owns these cases may call this: another job's file in
    flight would be deleted."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    wanted = set(case_ids)
    removed = []
    for p in out_dir.iterdir():
        m = _PARTIAL.fullmatch(p.name)
        if not m or not p.is_file():
            continue
        final = m.group("final")
        case = final[:-len(".npz")] if final.endswith(".npz") else strip_ending(final)
        if case in wanted:
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log(f"removed {len(removed)} unfinished file(s) of an interrupted run in {out_dir}")
    return removed


# ---------------------------------------------------------------- part records and gather


def case_files(folder: Path | str, case_id: str) -> list[Path]:
    """The finished files of ``case_id`` in ``folder``: its label map (any supported ending)
    and its ``.npz`` probabilities if written; hidden temporary files never count."""
    folder = Path(folder)
    out = []
    for p in folder.glob(f"{_glob_escape(case_id)}.*"):
        if is_hidden(p) or not p.is_file():
            continue
        if p.name == f"{case_id}.npz" or (ending_of(p) and strip_ending(p) == case_id):
            out.append(p)
    return sorted(out)


def write_part_record(path: Path | str, selection: PartSelection, input_dir: Path | str,
                      out_dir: Path | str) -> None:
    """The record of a finished part (JSON, atomically): its shard, the listing it was cut
    from (count and digest), and per case the files it holds in ``out_dir``.

    Raises:
        DataError: a case of the part has no label map in ``out_dir``.
    """
    files = {}
    for case in selection.cases:
        found = case_files(out_dir, case.case_id)
        if not any(p.suffix != ".npz" for p in found):
            raise DataError("has no prediction although its part finished", case=case.case_id,
                            path=out_dir)
        files[case.case_id] = [p.name for p in found]
    write_json(path, {"format": RECORD_FORMAT, "part": selection.shard.part,
                      "parts": selection.shard.parts, "input": str(input_dir),
                      "total": selection.total, "listing_sha256": selection.listing_sha256,
                      "files": files})


def gather(records: Sequence[Path | str], parts_dir: Path | str, out_dir: Path | str) -> int:
    """Check the part records and put every case's files into ``out_dir`` (hard links to
    ``parts_dir``'s files, copies where the file system has none); the folder appears
    complete or not at all (built under a temporary name, then renamed). Returns the number
    of cases.

    Raises:
        ValueError: records of different ``parts``, a part missing or given twice, parts cut
            from different listings, a case in two parts, or cases missing from the listing.
        DataError: a file a record names is missing.
    """
    loaded = [(Path(r), read_json(r)) for r in records]
    for path, rec in loaded:
        if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
            raise ValueError(f"{str(path)!r} is not a part record of `nnpipe predict --part`")
    parts = {rec["parts"] for _, rec in loaded}
    if len(parts) != 1:
        raise ValueError(f"part records of different --parts: {sorted(parts)}")
    n = parts.pop()
    seen = sorted(rec["part"] for _, rec in loaded)
    if seen != list(range(n)):
        raise ValueError(f"expected one record for each part 0..{n - 1}, got parts {seen}")
    listings = {(rec["total"], rec["listing_sha256"]) for _, rec in loaded}
    if len(listings) != 1:
        raise ValueError("the parts listed different sets of cases (the input folder changed "
                         "between parts?): rerun every part")
    total = listings.pop()[0]
    owner: dict[str, int] = {}
    for _, rec in loaded:
        for case in rec["files"]:
            if case in owner:
                raise ValueError(f"case {case!r} is in part {owner[case]} and part "
                                 f"{rec['part']}")
            owner[case] = rec["part"]
    if len(owner) != total:
        raise ValueError(f"the parts hold {len(owner)} case(s), the listing {total}")
    _link_all(loaded, Path(parts_dir), Path(out_dir))
    log(f"gathered {total} case(s) of {n} part(s) into {out_dir}")
    return total


def _link_all(loaded: Sequence[tuple[Path, Mapping[str, Any]]], parts_dir: Path,
              out_dir: Path) -> None:
    with atomic_dir(out_dir) as tmp:
        for _, rec in loaded:
            for case, names in rec["files"].items():
                for name in names:
                    src = parts_dir / name
                    if not src.is_file():
                        raise DataError("file named by its part record is missing",
                                        case=case, path=src)
                    _link_or_copy(src, tmp / name)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


# ---------------------------------------------------------------- the config section


@dataclass(frozen=True)
class PredictionSet:
    """One entry of the study's ``predict:`` section: the images of ``input`` (a folder),
    predicted by ``model`` (``best``: the study's best.json; a run name such as
    ``3d-fp32-1gpu``: its fold models and postprocessing; otherwise a path: a run folder,
    best.json, model.zip or checkpoint; or an nnU-Net v2 model, whose dataset folder or zip
    with several configurations takes ``configuration``) in ``parts`` jobs."""

    name: str
    input: str
    model: str = "best"
    parts: int = 1
    layout: str | None = None
    configuration: str | None = None


def prediction_sets(section: Mapping[str, Any] | None) -> dict[str, PredictionSet]:
    """The ``predict:`` section (NAME -> {input, model, parts, layout}) as typed entries.

    Raises:
        ValueError: naming the set and the key (a bad name, a missing input, parts < 1,
            an unknown layout or key).
    """
    sets = {}
    for name, entry in (section or {}).items():
        where = f"config key predict/{name}"
        if not _NAME.fullmatch(str(name)):
            raise ValueError(f"{where}: a set name is letters, digits, '_' and '-' (it names "
                             "the folder results/<dataset>/predictions/<NAME>)")
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected {{input: DIR, model: ..., parts: N}}, got "
                             f"{entry!r}")
        unknown = sorted(set(entry) - {"input", "model", "parts", "layout", "configuration"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} (known: input, model, parts, "
                             "layout, configuration)")
        if not entry.get("input"):
            raise ValueError(f"{where}: `input` (the folder of images to predict) is required")
        parts = entry.get("parts", 1)
        if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
            raise ValueError(f"{where}/parts: must be an integer >= 1, got {parts!r}")
        layout = entry.get("layout") or None  # "" (the schema's default): the model's
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"{where}/layout: must be one of {LAYOUTS}, got {layout!r}")
        sets[str(name)] = PredictionSet(str(name), str(entry["input"]),
                                        str(entry.get("model", "best")), parts, layout,
                                        str(entry.get("configuration") or "") or None)
    return sets
