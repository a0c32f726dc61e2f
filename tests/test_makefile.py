"""The Makefile's choices that depend on the machine (read with `make -n`, nothing runs)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make") or "make"
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def _install_line(tmp_path: Path, path: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("EXTRAS", "MAKEFLAGS")}
    env["PATH"] = path
    out = subprocess.run([MAKE, "-n", "-C", str(ROOT), "env", f"VENV={tmp_path / 'v'}",
                          *args], capture_output=True, text=True, env=env, check=True).stdout
    (line,) = [x for x in out.splitlines() if "pip install" in x and " -e " in x]
    return line


def _path_without_nvidia_smi(tmp_path: Path) -> str:
    """PATH with links to the tools make -n needs, and no nvidia-smi."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "uname", "touch", "python3"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_dali_is_installed_only_where_a_gpu_is(tmp_path):
    no_gpu = _path_without_nvidia_smi(tmp_path)
    assert _install_line(tmp_path, no_gpu).endswith('-e ".[dev,formats]"')
    fake = tmp_path / "gpu"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake / "nvidia-smi").chmod(0o755)
    with_gpu = _install_line(tmp_path, f"{fake}{os.pathsep}{no_gpu}")
    if platform.machine() == "x86_64":  # DALI's only wheels
        assert with_gpu.endswith('-e ".[dev,formats,dali]"')
    # on request, without a GPU
    asked = _install_line(tmp_path, no_gpu, "EXTRAS=dev,formats,dali")
    assert asked.endswith('-e ".[dev,formats,dali]"')


def test_clean_keeps_the_top_level_benchmarks_folder():
    """benchmarks/ holds the measuring tools (sources), no longer Snakemake's timings."""
    out = subprocess.run([MAKE, "-n", "-C", str(ROOT), "clean"], capture_output=True,
                         text=True, check=True).stdout
    assert "rm -rf" in out and "benchmarks" not in out and "results" in out
