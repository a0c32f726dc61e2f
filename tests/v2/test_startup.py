"""Fixed start-up cost of ``nnpipe predict --model <v2 model>`` (issue 19 item 4): what it
imports, and a loaded model that holds the checkpoint's weights and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from nnpipe.v2.model import load_v2_model
from nnpipe.v2.network import canonical_state_dict
from tests.v2.conftest import V2Folder, write_image

# Packages `nnpipe predict` with a v2 model does not use: loading any of them costs start-up
# time on every call (pandas and scipy.spatial 0.4 s, sympy through torch.fx 0.6 s, measured
# on the 2-core VM), so a lazy import that becomes eager again fails here.
NOT_IMPORTED = ("pandas", "sympy", "scipy.spatial", "monai", "snakemake", "matplotlib",
                "skimage", "torch._dynamo", "torch._inductor", "torch.fx.experimental."
                "symbolic_shapes")

_RUN = """
import json, os, sys
from nnpipe.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules),
                  "omp": os.environ.get("OMP_WAIT_POLICY")}))
"""


def _imported(args: list[str], env: dict[str, str] | None = None
              ) -> tuple[int, set[str], str | None]:
    """Run ``nnpipe <args>`` in a fresh interpreter; its exit code, ``sys.modules`` and
    ``OMP_WAIT_POLICY`` at its end."""
    done = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True,
                          text=True, check=True, env=env)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return record["code"], set(record["modules"]), record["omp"]


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in NOT_IMPORTED if m in modules)


def test_v2_predict_imports_only_what_it_uses(v2_folder: V2Folder, tmp_path: Path) -> None:
    model = v2_folder(folds=(0,))
    image = np.zeros((10, 20, 18), np.float32)
    image[2:9, 3:17, 1:15] = np.random.default_rng(0).uniform(-100, 300, (7, 14, 14))
    write_image(tmp_path / "in" / "case_a_0000.nii.gz", image)
    args = ["predict", "--model", str(model), "-i", str(tmp_path / "in"), "-o",
            str(tmp_path / "out"), "--device", "cpu", "--threads", "1"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code, modules, omp = _imported(args, env)
    assert code == 0 and (tmp_path / "out" / "case_a.nii.gz").is_file()
    assert "torch" in modules and "nnpipe.v2.predict" in modules  # it did predict
    assert _heavy(modules) == []
    assert omp == "PASSIVE"  # set before torch started OpenMP
    # a user's own setting is kept
    _, _, omp = _imported([*args, "--continue"], {**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert omp == "ACTIVE"


def test_cli_help_and_import_nnpipe_need_no_torch() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, nnpipe, nnpipe.cli; "
                           "print(' '.join(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True)
    modules = set(done.stdout.split())
    assert "torch" not in modules and _heavy(modules) == []


def test_loaded_folds_hold_the_checkpoint_weights_on_the_cpu(v2_folder: V2Folder) -> None:
    model_dir = v2_folder(folds=(0, 1))
    model = load_v2_model(model_dir)
    for fold in model.folds:
        saved = torch.load(Path(fold.source), weights_only=False)["network_weights"]
        expected = canonical_state_dict(saved, fold.source)
        state = fold.network.state_dict()
        assert set(state) == set(expected)
        for key, value in state.items():
            assert value.device.type == "cpu" and not value.is_meta, key
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
        assert not fold.network.training
    # the two folds are different networks (no shared or leftover parameters)
    a, b = (f.network.state_dict() for f in model.folds)
    assert not torch.equal(a["decoder.seg_layers.1.weight"], b["decoder.seg_layers.1.weight"])
