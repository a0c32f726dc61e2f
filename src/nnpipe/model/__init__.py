"""The network, built from a plan."""

from nnpipe.model.unet import build_unet, count_parameters

__all__ = ["build_unet", "count_parameters"]
