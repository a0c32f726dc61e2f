"""Channel names -> normalization schemes, as nnU-Net users write them in dataset.json.

Planning records each channel's scheme in the plan (:class:`nnpipe.planning.plan.ChannelNorm`);
:mod:`nnpipe.preprocessing.normalize` applies it. The name, case-folded with surrounding
blanks dropped, is looked up as nnU-Net v2 does (its ``map_channel_name_to_normalization``:
``ct``, ``nonorm``, ``rescale_to_0_1``, ``rgb_to_0_1``); any other name is z-scored. A name
that looks like one of those but is not (``no_norm``, ``Ct scan``, ``rescale01``) is
reported by :func:`near_miss` and :func:`channel_name_warnings`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

# Channel names in dataset.json (case-folded, surrounding blanks dropped) -> scheme, as
# nnU-Net v2 maps them (nnunetv2/preprocessing/normalization/map_channel_name_to_normalization.py).
# v2's 'zscore' and every other name get nnpipe's z-score, ``zscore_nonzero``; the planner
# makes it ``zscore`` (no mask) where cropping removes less than a quarter of the median case
# (nnpipe.planning.planner.uses_mask_for_norm, nnU-Net's rule).
CHANNEL_NAME_SCHEMES: dict[str, str] = {
    "ct": "ct",
    "nonorm": "none",
    "rescale_to_0_1": "rescale_0_1",
    "rgb_to_0_1": "rgb_0_1",
}
DEFAULT_SCHEME = "zscore_nonzero"
# The names as nnU-Net users write them (for messages).
CHANNEL_NAME_SPELLING = {"ct": "CT", "nonorm": "noNorm", "rescale_to_0_1": "rescale_to_0_1",
                         "rgb_to_0_1": "rgb_to_0_1"}


def scheme_for_channel(name: str) -> str:
    """The normalization scheme of a channel named ``name`` in dataset.json.

    ``CT`` -> ``ct``, ``noNorm`` -> ``none``, ``rescale_to_0_1`` -> ``rescale_0_1``,
    ``rgb_to_0_1`` -> ``rgb_0_1``, case-insensitive as in nnU-Net v2 (surrounding blanks are
    ignored too); anything else -> ``zscore_nonzero``.
    """
    return CHANNEL_NAME_SCHEMES.get(name.strip().casefold(), DEFAULT_SCHEME)


def _squash(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.casefold())


def _words(text: str) -> list[str]:
    """``"Ct scan"`` -> ``["ct", "scan"]``; camelCase and digits split too (``"CTscan"``
    stays one word: upper-case runs are one word)."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return [w for w in re.split(r"[^0-9a-zA-Z]+", spaced.casefold()) if w]


def near_miss(name: str) -> str | None:
    """The nnU-Net channel name ``name`` seems meant to be, if it is not one itself.

    A name is a near miss when, without case, blanks and punctuation, it equals one of
    :data:`CHANNEL_NAME_SCHEMES`' names (``no_norm``, ``No Norm``, ``RGB-to-0-1``), when one
    of its words is ``ct`` or it starts with ``ct`` followed by letters (``Ct scan``,
    ``CT_arterial``, ``CTscan``), when it starts with ``nonorm`` (``no_normalization``) or is
    ``none``, or
    when it is close in spelling (difflib ratio >= 0.8 on the squashed names: ``rescale01``,
    ``rgb_0_1``). Returns the intended name as users write it (``"noNorm"``), or None for
    an exact name and for ordinary channel names (``T1``, ``FLAIR``, ``MRI``, ``PET``).
    """
    if name.strip().casefold() in CHANNEL_NAME_SCHEMES:
        return None
    squashed = _squash(name)
    keys = {_squash(k): k for k in CHANNEL_NAME_SCHEMES}
    if squashed in keys:
        return CHANNEL_NAME_SPELLING[keys[squashed]]
    words = _words(name)
    if "ct" in words or re.fullmatch(r"ct[a-z]+", squashed):
        return CHANNEL_NAME_SPELLING["ct"]
    if squashed.startswith("nonorm") or squashed == "none":
        return CHANNEL_NAME_SPELLING["nonorm"]
    close = difflib.get_close_matches(squashed, [k for k in keys if len(k) > 2], n=1,
                                      cutoff=0.8)
    return CHANNEL_NAME_SPELLING[keys[close[0]]] if close else None


def channel_name_warnings(names: Sequence[str]) -> list[str]:
    """One line per channel whose name looks like a normalization name but is not one."""
    lines = []
    for c, name in enumerate(names):
        meant = near_miss(name)
        if meant is not None:
            lines.append(
                f"warning: channel {c} is named {name!r}, which is not one of nnU-Net's "
                f"normalization names ({', '.join(CHANNEL_NAME_SPELLING.values())}; any other "
                f"name is z-scored) but looks like {meant!r}: it is normalized with "
                f"{scheme_for_channel(name)!r}; write {meant!r} in dataset.json if "
                f"{scheme_for_channel(meant)!r} was meant")
    return lines
