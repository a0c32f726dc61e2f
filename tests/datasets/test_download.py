"""MSD download against a real HTTP server on 127.0.0.1 (started here, with Range support):
resume after a broken transfer, checksum failure, refusal of malicious archive members."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import pytest

from nnpipe.config import study_config
from nnpipe.datasets import download
from nnpipe.datasets.download import (
    MSD_TASKS,
    MsdTask,
    download_file,
    fetch_msd,
    resolve_task,
    safe_extract,
)
from nnpipe.datasets.layout import load_dataset
from nnpipe.datasets.source import fetch_dataset
from nnpipe.errors import DataError


@dataclass
class Served:
    """What the test server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes before hanging up
    ranges: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


def _handler(served: Served) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = served.files.get(self.path)
            rng = self.headers.get("Range")
            served.ranges.append((self.path, rng))
            if body is None:
                self.send_error(404)
                return
            start = 0
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-", rng)
                start = int(m.group(1)) if m else 0
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = served.cut_after.pop(self.path, None)
            # A broken transfer: send part of the promised bytes, then close the connection.
            self.wfile.write(body[start:] if cut is None else body[start:start + cut])
            self.wfile.flush()
            if cut is not None:
                self.close_connection = True

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _nifti_bytes(arr: np.ndarray) -> bytes:
    img = nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0]))
    return img.to_bytes()


def _msd_tar(name: str) -> bytes:
    """A tiny MSD task archive: one training case, plus a macOS ``._`` twin to be skipped."""
    image = np.zeros((6, 6, 4), np.float32)
    image[1:5, 1:5, 1:3] = 7.0
    label = (image > 0).astype(np.uint8)
    meta = {"name": name, "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"},
            "training": [{"image": "./imagesTr/a.nii", "label": "./labelsTr/a.nii"}],
            "test": []}
    return _tar([
        _file(f"{name}/dataset.json", json.dumps(meta).encode()),
        _file(f"{name}/imagesTr/a.nii", _nifti_bytes(image)),
        _file(f"{name}/imagesTr/._a.nii", b"AppleDouble junk"),
        _file(f"{name}/labelsTr/a.nii", _nifti_bytes(label)),
    ])


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    base, served = server
    body = bytes(range(256)) * 4000  # 1 MB
    served.files["/a.tar"] = body
    served.cut_after["/a.tar"] = 300_000
    md5 = hashlib.md5(body).hexdigest()
    out = download_file(f"{base}/a.tar", tmp_path / "a.tar", md5=md5, retry_wait_s=0,
                        progress=False)
    assert out.read_bytes() == body
    assert not (tmp_path / "a.tar.part").exists()
    assert served.ranges == [("/a.tar", None), ("/a.tar", "bytes=300000-")]


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    base, served = server
    body = b"0123456789" * 1000
    served.files["/b.tar"] = body
    (tmp_path / "b.tar.part").write_bytes(body[:4321])
    download_file(f"{base}/b.tar", tmp_path / "b.tar", md5=hashlib.md5(body).hexdigest(),
                  progress=False)
    assert (tmp_path / "b.tar").read_bytes() == body
    assert served.ranges == [("/b.tar", "bytes=4321-")]


def test_complete_partial_file_gets_416_and_is_kept(server, tmp_path):
    base, served = server
    body = b"abc" * 100
    served.files["/c.tar"] = body
    (tmp_path / "c.tar.part").write_bytes(body)
    download_file(f"{base}/c.tar", tmp_path / "c.tar", md5=hashlib.md5(body).hexdigest(),
                  progress=False)
    assert (tmp_path / "c.tar").read_bytes() == body


def test_wrong_checksum_fails_clearly_and_leaves_nothing(server, tmp_path):
    base, served = server
    served.files["/d.tar"] = b"not what was published"
    with pytest.raises(DataError, match=r"checksum mismatch: MD5 [0-9a-f]{32}, expected 0{32}"):
        download_file(f"{base}/d.tar", tmp_path / "d.tar", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_404_is_a_clear_error(server, tmp_path):
    base, _ = server
    with pytest.raises(DataError, match="HTTP 404"):
        download_file(f"{base}/missing.tar", tmp_path / "m.tar", md5="0" * 32, progress=False)


def test_gives_up_after_attempts_and_keeps_the_part(server, tmp_path):
    base, served = server
    body = b"x" * 10_000
    served.files["/e.tar"] = body
    served.cut_after["/e.tar"] = 1000
    with pytest.raises(DataError, match="after 1 attempts.*1000 bytes kept"):
        download_file(f"{base}/e.tar", tmp_path / "e.tar", md5=hashlib.md5(body).hexdigest(),
                      attempts=1, progress=False)
    assert (tmp_path / "e.tar.part").stat().st_size == 1000
    assert not (tmp_path / "e.tar").exists()


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def _hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info, None


def _fifo(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info, None


@pytest.mark.parametrize(
    ("member", "message"),
    [(_file("/etc/evil", b"x"), "absolute path"),
     (_file("T/../../evil", b"x"), r"contains '\.\.'"),
     (_symlink("T/link", "../../outside"), "links to '../../outside' outside"),
     (_symlink("T/abs", "/etc/passwd"), "links to '/etc/passwd' outside"),
     (_hardlink("T/hard", "../x"), "outside"),
     (_fifo("T/pipe"), "device or FIFO")],
)
def test_malicious_member_is_refused(tmp_path, member, message):
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_tar([_file("T/ok.txt", b"fine"), member]))
    with pytest.raises(DataError, match=message):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar"]  # nothing half-written


def test_link_inside_the_archive_is_allowed(tmp_path):
    archive = tmp_path / "ok.tar"
    archive.write_bytes(_tar([_file("T/a/data.txt", b"hi"), _symlink("T/b", "a/data.txt")]))
    out = safe_extract(archive, tmp_path / "out", progress=False)
    assert (out / "T" / "b").read_text() == "hi"


def test_corrupt_archive_is_a_clear_error(tmp_path):
    archive = tmp_path / "broken.tar"
    archive.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError, match="not a readable tar archive"):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["Task04_Hippocampus", "task04", "4", "04", "hippocampus"])
def test_resolve_task(key):
    assert resolve_task(key).name == "Task04_Hippocampus"


def test_table_has_ten_tasks_with_md5():
    assert [t.number for t in MSD_TASKS.values()] == list(range(1, 11))
    assert all(re.fullmatch(r"[0-9a-f]{32}", t.md5) for t in MSD_TASKS.values())
    t1 = MSD_TASKS["Task01_BrainTumour"]
    assert (t1.size_bytes, t1.md5, t1.size_exact) == (7_608_266_240,
                                                      "240a19d752f0d9e9101544901065d872", True)
    assert t1.url() == "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar"
    with pytest.raises(ValueError, match="not an MSD task"):
        resolve_task("Task11_Nothing")


def _serve_task(monkeypatch, served: Served, name: str) -> None:
    body = _msd_tar(name)
    served.files[f"/{name}.tar"] = body
    fake = MsdTask(4, name, hashlib.md5(body).hexdigest(), len(body), True)
    monkeypatch.setitem(download.MSD_TASKS, name, fake)


def test_fetch_msd_end_to_end(server, tmp_path, monkeypatch):
    base, served = server
    _serve_task(monkeypatch, served, "Task04_Hippocampus")
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)
    served.cut_after["/Task04_Hippocampus.tar"] = 2000
    out = fetch_msd("Task04", tmp_path / "raw", cache_dir=tmp_path / "cache", base_url=base,
                    progress=False)
    ds = load_dataset(out)
    assert [c.case_id for c in ds.training] == ["a"]
    assert not (out / "imagesTr" / "._a.nii").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # archive removed after unpacking


def test_msd_source_through_config(server, tmp_path, monkeypatch):
    base, served = server
    _serve_task(monkeypatch, served, "Task04_Hippocampus")
    cfg = study_config({"dataset": {"name": "hippo", "source": "msd", "task": "Task04"}})
    real = download.fetch_msd

    def via_test_server(task, out_dir, **kw):
        return real(task, out_dir, **{**kw, "base_url": base, "progress": False})

    monkeypatch.setattr("nnpipe.datasets.source.fetch_msd", via_test_server)
    dataset_json = fetch_dataset(cfg.dataset, tmp_path / "hippo" / "raw")
    assert dataset_json == tmp_path / "hippo" / "raw" / "dataset.json"
    assert load_dataset(dataset_json.parent).name == "Task04_Hippocampus"
    assert sorted(p.name for p in (tmp_path / "hippo").iterdir()) == ["download", "raw"]


def test_msd_source_needs_a_task(tmp_path):
    cfg = study_config({"dataset": {"source": "msd"}})
    with pytest.raises(DataError, match="dataset.task is empty"):
        fetch_dataset(cfg.dataset, tmp_path / "raw")
    assert list(tmp_path.iterdir()) == []
