"""What a measurement ran on: CPU model, GPU model, library versions."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_model() -> str | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """A flat description for table captions and result JSONs."""
    import os

    return {
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores)",
        "gpu": gpu_model() or "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": _version("monai"),
        "nnpipe": _version("nnpipe"),
        "snakemake": _version("snakemake"),
    }
