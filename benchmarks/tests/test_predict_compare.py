"""The timing helper of the nnU-Net v2 prediction comparison (the comparison itself needs
nnU-Net v2 installed and is run by hand; see README, "Prediction compared with nnU-Net v2")."""

import sys

import pytest

from benchmarks.predict_compare import run_timed

TOUCH_300_MIB = "b = bytearray(300 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1"


def test_run_timed_reports_each_commands_own_peak_memory():
    big = run_timed([sys.executable, "-c", TOUCH_300_MIB])
    small = run_timed([sys.executable, "-c", "pass"])
    assert big["peak_rss_gib"] > 0.28  # the 300 MiB it touched
    assert small["peak_rss_gib"] < 0.1  # not the earlier command's peak
    assert big["wall_s"] > 0


def test_run_timed_names_the_failure():
    fail = "import sys; print('boom', file=sys.stderr); sys.exit(3)"
    with pytest.raises(RuntimeError, match=r"failed \(3\):\n.*boom"):
        run_timed([sys.executable, "-c", fail])
