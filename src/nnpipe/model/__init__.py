"""The network, built from a plan (:func:`build_unet` finds it in :mod:`~nnpipe.model.registry`)."""

from nnpipe.model.registry import BUILDERS, build_unet
from nnpipe.model.unet import count_parameters

__all__ = ["BUILDERS", "build_unet", "count_parameters"]
