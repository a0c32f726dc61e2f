"""keep_freed_memory: glibc's thresholds set once, the user's environment respected."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from nnpipe import allocator

PROBE = ("import nnpipe.allocator as a; t = a.PREDICTION_TRIM_BYTES; "
         "print(a.keep_freed_memory(t), a.keep_freed_memory(t), a._applied == t)")


def _run(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, text=True,
                          capture_output=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_sets_the_thresholds_once_on_glibc():
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert _run(env) == "True True True"


def test_user_settings_win():
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="131072")
    assert _run(env) == "False False False"


def test_thresholds_are_glibcs_limits():
    assert allocator.MMAP_THRESHOLD_BYTES == 32 * 2**20  # glibc rejects more on 64-bit
    assert allocator.PREDICTION_TRIM_BYTES == 256 * 2**20  # measured: 64 MiB re-faults TTA
    assert allocator.TRAINING_TRIM_BYTES == 2**30
