"""Networks are found through one registry: every plannable network has a builder."""

from __future__ import annotations

import dataclasses

import pytest

from nnpipe.model import BUILDERS, build_unet
from nnpipe.model.resenc import ResEncUNet
from nnpipe.model.unet import UNet
from nnpipe.planning.network import NETWORKS, encoder_blocks
from nnpipe.planning.task01 import task01_plan


def test_every_planned_network_has_a_builder():
    assert set(BUILDERS) == set(NETWORKS)


@pytest.mark.parametrize(("network", "cls"), [("plain", UNet), ("resenc_m", ResEncUNet),
                                              ("resenc_l", ResEncUNet)])
def test_build_unet_builds_the_plans_network(network, cls):
    plan = task01_plan(2)
    plan = dataclasses.replace(plan, network=network,
                               encoder_blocks=encoder_blocks(network, len(plan.strides)))
    assert isinstance(build_unet(plan, onednn=False), cls)


def test_unknown_network_is_refused_with_the_known_ones():
    plan = dataclasses.replace(task01_plan(2), network="transformer")
    with pytest.raises(ValueError, match="'transformer'; known: plain, resenc_m, resenc_l"):
        build_unet(plan)
