"""v2 key mapping on state dicts in v2's layout, and the allowlisted checkpoint loader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nnpipe.v2.checkpoint import load_v2_checkpoint
from nnpipe.v2.network import build_network, canonical_state_dict, load_weights
from tests.v2.conftest import PLAIN_KWARGS, RESENC_KWARGS, v2_aliases, write_checkpoint


@pytest.mark.parametrize(("arch", "kwargs"), [("PlainConvUNet", PLAIN_KWARGS),
                                              ("ResidualEncoderUNet", RESENC_KWARGS)])
def test_aliases_and_prefixes_map_onto_the_network(arch: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    source = build_network(arch, kwargs, 1, 3).eval()
    state = source.state_dict()
    v2 = v2_aliases(state)
    assert "decoder.encoder.stages.0.0.convs.0.all_modules.0.weight" in v2 or arch != \
        "PlainConvUNet"
    assert any(".all_modules.1." in k for k in v2)
    compiled = {f"_orig_mod.{k}": v for k, v in v2.items()}
    ddp = {f"module.{k}": v for k, v in v2.items()}
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        expected = source(x)
    for weights in (v2, compiled, ddp):
        assert set(canonical_state_dict(weights, "t")) == set(state)
        torch.manual_seed(1)  # other random weights, replaced by the load
        net = build_network(arch, kwargs, 1, 3).eval()
        load_weights(net, weights, "t")
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected)


def test_alias_only_is_renamed_and_conflicting_alias_refused() -> None:
    w = torch.ones(2)
    assert canonical_state_dict({"a.all_modules.0.weight": w}, "t") == {"a.conv.weight": w}
    assert canonical_state_dict({"a.all_modules.1.bias": w}, "t") == {"a.norm.bias": w}
    with pytest.raises(ValueError, match=r"'decoder.encoder.x' should be an alias of 'encoder.x'"):
        canonical_state_dict({"encoder.x": w, "decoder.encoder.x": w * 2}, "f.pth")


def test_missing_and_unexpected_keys_named() -> None:
    net = build_network("PlainConvUNet", PLAIN_KWARGS, 1, 3)
    state = dict(net.state_dict())
    state.pop("decoder.seg_layers.1.bias")
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"ck.pth.*missing: decoder.seg_layers.1.bias; "
                                         r"unexpected: decoder.extra.weight"):
        load_weights(net, state, "ck.pth")


def test_loader_reads_v2_checkpoint_with_numpy_logging(tmp_path: Path) -> None:
    net = build_network("PlainConvUNet", PLAIN_KWARGS, 1, 3)
    path = tmp_path / "fold_0" / "checkpoint_final.pth"
    write_checkpoint(path, v2_aliases(net.state_dict()), "3d_fullres", mirror=(0, 2))
    ck = load_v2_checkpoint(path)
    assert ck.configuration == "3d_fullres" and ck.mirror_axes == (0, 2)
    assert ck.trainer_name == "nnUNetTrainer"
    assert "encoder.stages.0.0.convs.0.conv.weight" in ck.weights


class Payload:
    """An object whose unpickling would run code (``os.system`` stands for any call)."""

    def __reduce__(self) -> tuple:
        return (print, ("this must never run",))


def test_loader_refuses_a_pickled_object(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "trainer": Payload()}, path)
    with pytest.raises(ValueError, match=r"checkpoint_final.pth.*holds objects nnpipe does not "
                                         "unpickle"):
        load_v2_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out
    # and a plain pickle (not a torch file) is refused too, not executed
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="raw.pth"):
        load_v2_checkpoint(raw)
    assert "must never run" not in capsys.readouterr().out


def test_loader_refuses_a_file_without_network_weights(tmp_path: Path) -> None:
    path = tmp_path / "final.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": np.int64(3)}, path)
    with pytest.raises(ValueError, match="not an nnU-Net v2 checkpoint"):
        load_v2_checkpoint(path)


def test_allowlist_is_scoped_to_the_v2_loader(tmp_path: Path) -> None:
    # torch keeps its own allowlist in no fixed order: compare as sets
    before = set(torch.serialization.get_safe_globals())
    net = build_network("PlainConvUNet", PLAIN_KWARGS, 1, 3)
    path = tmp_path / "checkpoint_final.pth"
    write_checkpoint(path, net.state_dict(), "3d_fullres")
    load_v2_checkpoint(path)
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(pickle.UnpicklingError):  # NumPy scalars are not allowed elsewhere
        torch.load(path, weights_only=True)
