"""Download and unpack the ten Medical Segmentation Decathlon tasks, safely and resumably.

* One table (:data:`MSD_TASKS`) holds every task's archive name, size and MD5. The MD5s are
  the ones MONAI's ``DecathlonDataset`` publishes for the same archives; the URLs are the
  public mirror MONAI downloads from. The data are CC BY-SA 4.0.
* :func:`download_file` streams to ``<archive>.part`` and resumes an interrupted transfer
  with an HTTP ``Range`` request; the archive gets its final name only after its MD5 matched,
  so a partial or corrupt download never looks done.
* :func:`safe_extract` refuses members with absolute paths, ``..`` components, links whose
  target leaves the folder, and devices; it unpacks into a hidden temporary folder that is
  renamed into place only when every member is out.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nnpipe.errors import DataError
from nnpipe.progress import log

MSD_BASE_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
CHUNK_BYTES = 1 << 20
# Attempts per download; each resumes where the previous one stopped.
MAX_ATTEMPTS = 5
RETRY_WAIT_S = 2.0  # pause before resuming a broken transfer


@dataclass(frozen=True)
class MsdTask:
    """One MSD task archive. ``size_bytes`` is exact for Task01 (published with the reference)
    and approximate (within a few %) for the others: it only sizes the free-disk check and
    the progress lines; the MD5 is what proves an archive complete and intact."""

    number: int
    name: str  # e.g. "Task01_BrainTumour": the archive's name and its top-level folder
    md5: str
    size_bytes: int
    size_exact: bool = False

    @property
    def archive(self) -> str:
        return f"{self.name}.tar"

    def url(self, base_url: str = MSD_BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.archive}"


_GB = 1_000_000_000
MSD_TASKS: dict[str, MsdTask] = {t.name: t for t in (
    MsdTask(1, "Task01_BrainTumour", "240a19d752f0d9e9101544901065d872", 7_608_266_240, True),
    MsdTask(2, "Task02_Heart", "06ee59366e1e5124267b774dbd654057", int(0.44 * _GB)),
    MsdTask(3, "Task03_Liver", "a90ec6c4aa7f6a3d087205e23d4e6397", int(28.6 * _GB)),
    MsdTask(4, "Task04_Hippocampus", "9d24dba78a72977dbd1d2e110310f31b", int(0.028 * _GB)),
    MsdTask(5, "Task05_Prostate", "35138f08b1efaef89d7424d2bcc928db", int(0.23 * _GB)),
    MsdTask(6, "Task06_Lung", "8afd997733c7fc0432f71255ba4e52dc", int(8.5 * _GB)),
    MsdTask(7, "Task07_Pancreas", "4f7080cfca169fa8066d17ce6eb061e4", int(11.4 * _GB)),
    MsdTask(8, "Task08_HepaticVessel", "641d79e80ec66453921d997fbf12a29c", int(8.8 * _GB)),
    MsdTask(9, "Task09_Spleen", "410d4a301da4e5b2f6f86ec3ddba524e", int(1.5 * _GB)),
    MsdTask(10, "Task10_Colon", "bad7a188931dc2f6acf72b08eb6202d0", int(5.9 * _GB)),
)}


def resolve_task(task: str) -> MsdTask:
    """The table entry for ``task``: ``Task01_BrainTumour``, ``Task01``, ``1``, ``01`` or
    ``BrainTumour`` (case-insensitive)."""
    key = task.strip()
    for t in MSD_TASKS.values():
        short = t.name.split("_", 1)[1]
        if key.lower() in (t.name.lower(), f"task{t.number:02d}", short.lower()) or (
                key.isdigit() and int(key) == t.number):
            return t
    raise ValueError(f"dataset.task {task!r} is not an MSD task; known: "
                     f"{', '.join(MSD_TASKS)}")


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> bool:
    """One HTTP request appending to ``part`` from its current size; True once complete.

    A ``206`` answer must start exactly where ``part`` ends; a ``200`` (the server ignores
    ``Range``) restarts from byte 0; a ``416`` means ``part`` already holds everything.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset > 0:
            return True
        raise
    with response:
        if response.status == 206:
            m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise DataError(f"server answered Range {offset}- with Content-Range "
                                f"{response.headers.get('Content-Range')!r}", path=url)
            total = None if m.group(3) == "*" else int(m.group(3))
            mode = "ab"
        else:
            if offset:
                log(f"server ignored the Range request; restarting {part.name} from byte 0")
            length = response.headers.get("Content-Length")
            total = None if length is None else int(length)
            offset, mode = 0, "wb"
        done, last_log = offset, time.monotonic()
        with open(part, mode) as fh:
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                fh.write(block)
                done += len(block)
                if progress and time.monotonic() - last_log > 10:
                    last_log = time.monotonic()
                    of = f" of {total / 1e9:.2f} GB" if total else ""
                    log(f"download {part.name}: {done / 1e9:.2f} GB{of}")
            fh.flush()
            os.fsync(fh.fileno())
        if total is not None and done < total:
            raise ConnectionError(f"connection closed at byte {done} of {total}")
    return True


def download_file(url: str, dest: Path | str, *, md5: str, timeout: float = 60.0,
                  attempts: int = MAX_ATTEMPTS, retry_wait_s: float | None = None,
                  progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and check its MD5; return ``dest``.

    Bytes go to ``dest + ".part"``; a broken connection is retried up to ``attempts`` times,
    each resuming with ``Range: bytes=<size of .part>-``, and a later call resumes the same
    way. ``dest`` appears (by rename) only after the MD5 matched. A wrong MD5 deletes the
    ``.part`` (resuming a corrupt file cannot fix it) and raises :class:`DataError` giving
    both sums. An existing ``dest`` with the right MD5 is reused.
    """
    dest = Path(dest)
    if dest.exists():
        if file_md5(dest) == md5:
            return dest
        raise DataError(f"exists but its MD5 is not {md5}; delete it to download again",
                        path=dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except (ConnectionError, TimeoutError, http.client.HTTPException,
                urllib.error.URLError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                raise DataError(f"HTTP {exc.code} {exc.reason}", path=url) from exc
            have = part.stat().st_size if part.exists() else 0
            if attempt == attempts:
                raise DataError(f"download failed after {attempts} attempts ({exc}); "
                                f"{have} bytes kept in {part.name}, run again to resume",
                                path=url) from exc
            log(f"download {dest.name}: {exc}; resuming at byte {have} "
                f"(attempt {attempt + 1}/{attempts})")
            time.sleep(RETRY_WAIT_S if retry_wait_s is None else retry_wait_s)
    got = file_md5(part)
    if got != md5:
        part.unlink()
        raise DataError(f"checksum mismatch: MD5 {got}, expected {md5}; the partial file was "
                        f"deleted, run again to download afresh", path=url)
    os.replace(part, dest)
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse a member that could write outside the extraction folder."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"member {name!r} has an absolute path; refusing to extract", path=archive)
    if ".." in parts:
        raise DataError(f"member {name!r} contains '..'; refusing to extract", path=archive)
    if member.issym() or member.islnk():
        target = member.linkname
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise DataError(f"member {name!r} links to {target!r} outside the archive; refusing "
                            f"to extract", path=archive)
    elif not (member.isfile() or member.isdir()):
        raise DataError(f"member {name!r} is a device or FIFO; refusing to extract",
                        path=archive)


def _is_junk(member: tarfile.TarInfo) -> bool:
    """macOS AppleDouble files (``._name``) that the MSD archives carry next to every image:
    they end in ``.nii.gz`` but are not images."""
    return posixpath.basename(member.name).startswith("._")


def safe_extract(archive: Path | str, out_dir: Path | str, progress: bool = True) -> Path:
    """Unpack the tar ``archive`` into the new folder ``out_dir``; return ``out_dir``.

    Every member is checked before anything is written (absolute paths, ``..``, links leaving
    the folder, devices: :class:`DataError`). Members go to a hidden sibling folder, renamed
    to ``out_dir`` at the end, so an interrupted extraction leaves no ``out_dir``.
    """
    archive, out = Path(archive), Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    tmp = out.with_name(f".{out.name}.extract-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if not _is_junk(m)]
            for m in members:
                _check_member(m, archive)
            tmp.mkdir(parents=True)
            # The "data" filter (Python >= 3.11.4) repeats these checks and drops set-uid bits.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)
        if progress:
            log(f"extracted {len(members)} members of {archive.name}")
        os.replace(tmp, out)
    except tarfile.TarError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"not a readable tar archive ({exc})", path=archive) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def fetch_msd(task: str, out_dir: Path | str, *, cache_dir: Path | str,
              base_url: str = MSD_BASE_URL, keep_archive: bool = False,
              progress: bool = True) -> Path:
    """Download and unpack MSD ``task`` so that ``out_dir`` holds its ``dataset.json``.

    The archive is kept in ``cache_dir`` while incomplete (the next call resumes it) and
    deleted after a successful extraction unless ``keep_archive``. ``out_dir`` must not exist;
    it appears only when complete.
    """
    t = resolve_task(task)
    cache, out = Path(cache_dir), Path(out_dir)
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    need = 2.2 * t.size_bytes if not (cache / t.archive).exists() else 1.2 * t.size_bytes
    if free < need:
        raise DataError(f"{t.name} needs about {need / 1e9:.1f} GB free (archive + extracted), "
                        f"{free / 1e9:.1f} GB are", path=cache)
    if progress:
        log(f"download {t.name} ({t.size_bytes / 1e9:.2f} GB) from {t.url(base_url)}")
    archive = download_file(t.url(base_url), cache / t.archive, md5=t.md5, progress=progress)
    unpacked = safe_extract(archive, cache / f"{t.name}.unpacked", progress=progress)
    try:
        roots = [p.parent for p in unpacked.rglob("dataset.json")]
        if len(roots) != 1:
            raise DataError(f"expected one dataset.json in the archive, found {len(roots)}",
                            path=archive)
        os.replace(roots[0], out)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    return out
