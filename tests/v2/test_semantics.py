"""Golden numbers of v2's rules, computed once with nnU-Net v2 2.8.1 itself
(``compute_steps_for_sliding_window``, ``compute_gaussian``, ``determine_do_sep_z_and_axis``,
``compute_new_shape``, ``resample_data_or_seg_to_shape``) and pinned here; nnU-Net is never
imported by the tests."""

from __future__ import annotations

import numpy as np
import pytest

from nnpipe.inference.sliding_window import _pad_to_patch, tile_starts
from nnpipe.v2.semantics import (
    Resampling,
    bounding_box,
    gaussian_importance,
    new_shape,
    nonzero_mask,
    resample,
    separate_axis,
)

# v2 tile starts along an axis of SIZE voxels, patch 64, tile step 0.5
TILES_64 = {
    64: [0],
    65: [0, 1],
    66: [0, 2],
    67: [0, 3],
    68: [0, 4],
    69: [0, 5],
    70: [0, 6],
    71: [0, 7],
    72: [0, 8],
    73: [0, 9],
    74: [0, 10],
    75: [0, 11],
    76: [0, 12],
    77: [0, 13],
    78: [0, 14],
    79: [0, 15],
    80: [0, 16],
    81: [0, 17],
    82: [0, 18],
    83: [0, 19],
    84: [0, 20],
    85: [0, 21],
    86: [0, 22],
    87: [0, 23],
    88: [0, 24],
    89: [0, 25],
    90: [0, 26],
    91: [0, 27],
    92: [0, 28],
    93: [0, 29],
    94: [0, 30],
    95: [0, 31],
    96: [0, 32],
    97: [0, 16, 33],
    98: [0, 17, 34],
    99: [0, 18, 35],
    100: [0, 18, 36],
    101: [0, 18, 37],
    102: [0, 19, 38],
    103: [0, 20, 39],
    104: [0, 20, 40],
    105: [0, 20, 41],
    106: [0, 21, 42],
    107: [0, 22, 43],
    108: [0, 22, 44],
    109: [0, 22, 45],
    110: [0, 23, 46],
    111: [0, 24, 47],
    112: [0, 24, 48],
    113: [0, 24, 49],
    114: [0, 25, 50],
    115: [0, 26, 51],
    116: [0, 26, 52],
    117: [0, 26, 53],
    118: [0, 27, 54],
    119: [0, 28, 55],
    120: [0, 28, 56],
    121: [0, 28, 57],
    122: [0, 29, 58],
    123: [0, 30, 59],
    124: [0, 30, 60],
    125: [0, 30, 61],
    126: [0, 31, 62],
    127: [0, 32, 63],
    128: [0, 32, 64],
    129: [0, 22, 43, 65],
    130: [0, 22, 44, 66],
    131: [0, 22, 45, 67],
    132: [0, 23, 45, 68],
    133: [0, 23, 46, 69],
    134: [0, 23, 47, 70],
    135: [0, 24, 47, 71],
    136: [0, 24, 48, 72],
    137: [0, 24, 49, 73],
    138: [0, 25, 49, 74],
    139: [0, 25, 50, 75],
    140: [0, 25, 51, 76],
    141: [0, 26, 51, 77],
    142: [0, 26, 52, 78],
    143: [0, 26, 53, 79],
    144: [0, 27, 53, 80],
    145: [0, 27, 54, 81],
    146: [0, 27, 55, 82],
    147: [0, 28, 55, 83],
    148: [0, 28, 56, 84],
    149: [0, 28, 57, 85],
    150: [0, 29, 57, 86],
    151: [0, 29, 58, 87],
    152: [0, 29, 59, 88],
    153: [0, 30, 59, 89],
    154: [0, 30, 60, 90],
    155: [0, 30, 61, 91],
    156: [0, 31, 61, 92],
    157: [0, 31, 62, 93],
    158: [0, 31, 63, 94],
    159: [0, 32, 63, 95],
    160: [0, 32, 64, 96],
    161: [0, 24, 48, 73, 97],
    162: [0, 24, 49, 74, 98],
    163: [0, 25, 50, 74, 99],
    164: [0, 25, 50, 75, 100],
    165: [0, 25, 50, 76, 101],
    166: [0, 26, 51, 76, 102],
    167: [0, 26, 52, 77, 103],
    168: [0, 26, 52, 78, 104],
    169: [0, 26, 52, 79, 105],
    170: [0, 26, 53, 80, 106],
    171: [0, 27, 54, 80, 107],
    172: [0, 27, 54, 81, 108],
    173: [0, 27, 54, 82, 109],
    174: [0, 28, 55, 82, 110],
    175: [0, 28, 56, 83, 111],
    176: [0, 28, 56, 84, 112],
    177: [0, 28, 56, 85, 113],
    178: [0, 28, 57, 86, 114],
    179: [0, 29, 58, 86, 115],
    180: [0, 29, 58, 87, 116],
    181: [0, 29, 58, 88, 117],
    182: [0, 30, 59, 88, 118],
    183: [0, 30, 60, 89, 119],
    184: [0, 30, 60, 90, 120],
    185: [0, 30, 60, 91, 121],
    186: [0, 30, 61, 92, 122],
    187: [0, 31, 62, 92, 123],
    188: [0, 31, 62, 93, 124],
    189: [0, 31, 62, 94, 125],
    190: [0, 32, 63, 94, 126],
    191: [0, 32, 64, 95, 127],
    192: [0, 32, 64, 96, 128],
    193: [0, 26, 52, 77, 103, 129],
    194: [0, 26, 52, 78, 104, 130],
    195: [0, 26, 52, 79, 105, 131],
    196: [0, 26, 53, 79, 106, 132],
    197: [0, 27, 53, 80, 106, 133],
    198: [0, 27, 54, 80, 107, 134],
    199: [0, 27, 54, 81, 108, 135],
    200: [0, 27, 54, 82, 109, 136],
}


def test_tile_starts_match_v2_for_sizes_64_to_200() -> None:
    """nnpipe's one tile rule (v2 models and nnpipe's own) is v2's; overlap = 1 - step."""
    assert sorted(TILES_64) == list(range(64, 201))
    for size, starts in TILES_64.items():
        assert tile_starts(size, 64, 1 - 0.5) == starts, size


def test_tile_starts_round_half_to_even() -> None:
    # (109 - 64) / 2 = 22.5: v2 rounds to 22 (rounding halves up would give 23)
    assert tile_starts(109, 64, 0.5) == [0, 22, 45]


GAUSSIAN_5x6 = np.array(
    [
        (2.00473241e-05, 0.00170708087, 0.0245681647, 0.0597602278, 0.0245681647, 0.00170708087),
        (0.000932711235, 0.0794227496, 1.14304554, 2.7803731, 1.14304554, 0.0794227496),
        (0.00335462624, 0.285655022, 4.11112309, 10, 4.11112309, 0.285655022),
        (0.000932711235, 0.0794227496, 1.14304554, 2.7803731, 1.14304554, 0.0794227496),
        (2.00473241e-05, 0.00170708087, 0.0245681647, 0.0597602278, 0.0245681647, 0.00170708087),
    ],
    dtype=np.float32,
)


def test_gaussian_importance_matches_v2() -> None:
    np.testing.assert_allclose(gaussian_importance((5, 6)), GAUSSIAN_5x6, rtol=1e-6)
    g = gaussian_importance((9, 12, 7))
    assert g.dtype == np.float32 and g.shape == (9, 12, 7)
    golden = {
        (4, 6, 3): 10.0,
        (0, 0, 0): 1.6899976529316518e-08,
        (4, 0, 3): 0.00335462624207139,
        (8, 11, 6): 1.9475778856303805e-07,
        (2, 3, 1): 0.020447254180908203,
    }
    for index, value in golden.items():
        assert g[index] == pytest.approx(value, rel=1e-6), index
    # the peak is 10 at patch // 2; v2 replaces exact zeros by the smallest weight
    assert g.max() == 10.0 and g.argmax() == np.ravel_multi_index((4, 6, 3), g.shape)
    assert g.min() > 0


# (current spacing, target spacing, v2's separate axis or None)
SEPARATE = [
    ((1, 1, 1), (1, 1, 1), None),
    ((3, 1, 1), (1, 1, 1), None),
    ((3.1, 1, 1), (1, 1, 1), 0),
    ((5, 1, 1), (5, 1, 1), 0),
    ((1, 5, 5), (1, 1, 1), None),
    ((1, 1, 4), (1, 1, 1), 2),
    ((1, 1, 1), (4, 1, 1), 0),
    ((1, 1, 1), (1, 4, 4), None),
    ((2, 2, 0.5), (1, 1, 1), None),
    ((0.7, 0.7, 3), (2, 1, 1), 2),
    ((1, 2, 1), (1, 1, 7), 2),
    ((4, 4, 4), (1, 1, 1), None),
    ((1, 1, 1), (1, 3, 1), None),
    ((1, 1, 1), (1, 3.0001, 1), 1),
]


@pytest.mark.parametrize(("spacing", "target", "axis"), SEPARATE)
def test_separate_axis_matches_v2(
    spacing: tuple[float, ...], target: tuple[float, ...], axis: int | None
) -> None:
    assert separate_axis(spacing, target) == axis


def test_separate_axis_forced() -> None:
    assert separate_axis((1, 1, 1), (1, 1, 1), Resampling(force_separate_z=False)) is None
    assert separate_axis((1, 1, 5), (1, 1, 1), Resampling(force_separate_z=False)) is None
    assert separate_axis((1, 1, 2), (1, 1, 1), Resampling(force_separate_z=True)) == 2


SHAPES = [
    ((10, 11, 13), (1, 1, 1), (2, 2, 2), (5, 6, 6)),
    ((5, 7, 9), (1.5, 1.5, 1.5), (1, 1, 1), (8, 10, 14)),
    ((3, 3, 3), (1, 1, 1), (0.4, 0.4, 0.4), (8, 8, 8)),
    ((100, 25, 33), (0.7, 2.5, 1.3), (1.1, 1.1, 1.1), (64, 57, 39)),
    ((1, 1, 1), (1, 1, 1), (3, 3, 3), (0, 0, 0)),
]


@pytest.mark.parametrize(("shape", "spacing", "target", "expected"), SHAPES)
def test_new_shape_matches_v2(
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    target: tuple[float, ...],
    expected: tuple[int, ...],
) -> None:
    assert new_shape(shape, spacing, target) == expected


def _step() -> np.ndarray:
    data = np.zeros((1, 4, 4, 6), np.float32)
    data[..., 3:] = 100.0
    data[0, 2, 1, 0] = -50
    return data


def test_cubic_resampling_is_clipped_to_the_input_range() -> None:
    out = resample(_step(), (4, 4, 9), (1, 1, 1), (1, 1, 1))
    np.testing.assert_allclose(
        out[0, 1, 1],
        [
            -0.555053174495697,
            2.6923787593841553,
            -3.4336562156677246,
            -7.730893611907959,
            50.0,
            100.0,
            100.0,
            97.30762481689453,
            100.0,
        ],
        rtol=1e-5,
        atol=1e-4,
    )
    assert (out.min(), out.max()) == (-50.0, 100.0)  # no overshoot past the input's range


def test_separate_axis_resampling_matches_v2() -> None:
    # spacing 4 x 1 x 1: axis 0 is resampled with order 0, the others cubic per slice
    out = resample(_step(), (7, 5, 9), (4, 1, 1), (2, 1, 0.66))
    np.testing.assert_allclose(
        out[0, :, 2, 4],
        [50.0, 50.0, 50.0, 49.1916389465332, 49.1916389465332, 50.0, 50.0],
        rtol=1e-5,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        out[0, 3, 2],
        [
            -32.90022659301758,
            -12.319644927978516,
            -1.1125291585922241,
            -6.699970722198486,
            49.1916389465332,
            100.0,
            100.0,
            97.24958038330078,
            100.0,
        ],
        rtol=1e-5,
        atol=1e-4,
    )


def test_resample_same_shape_is_the_input() -> None:
    data = _step()
    assert resample(data, (4, 4, 6), (1, 1, 1), (2, 2, 2)) is data


def test_crop_mask_fills_holes_and_box() -> None:
    data = np.zeros((2, 6, 7, 8), np.float32)
    data[0, 1:4, 2:6, 3:7] = 1
    data[0, 2, 3:5, 4:6] = 0  # a hole: inside the mask after filling
    data[1, 5, 6, 7] = 2  # the other channel extends the box
    mask = nonzero_mask(data)
    assert mask[2, 3, 4] and mask.sum() == 3 * 4 * 4 + 1
    assert bounding_box(mask) == ((1, 6), (2, 7), (3, 8))
    assert bounding_box(np.zeros((3, 3), bool)) == ((0, 3), (0, 3))


def test_pad_to_patch_smaller_half_first() -> None:
    """v2's ``pad_nd_image``: the difference split with the smaller half before; nnpipe's
    sliding window pads the same way (the crop back says where the image is)."""
    import torch

    padded, crop = _pad_to_patch(torch.ones(2, 5, 30, 64), (32, 64))
    assert padded.shape == (2, 5, 32, 64) and crop == (slice(1, 31), slice(0, 64))
    padded, crop = _pad_to_patch(torch.ones(1, 1, 3, 4, 5), (8, 4, 8))  # pads (2, 3), (1, 2)
    assert crop == (slice(2, 5), slice(0, 4), slice(1, 6))
    assert padded[0, 0, :, 0, 1].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert padded[0, 0, 2, 0, :].tolist() == [0, 1, 1, 1, 1, 1, 0, 0]


@pytest.mark.parametrize(
    ("patch", "minimum", "count", "total"),
    [((9, 12, 7), 1.7881393432617188e-07, 12, 232.50647699832916),
     ((16, 32, 32), 5.960464477539063e-08, 171, 5038.61512362957)],
)
def test_float16_gaussian_matches_v2(patch: tuple[int, ...], minimum: float, count: int,
                                     total: float) -> None:
    """v2 predicts with a float16 Gaussian: zeros after the cast (underflow) become the
    smallest float16 weight (golden: compute_gaussian(dtype=torch.float16))."""
    g = gaussian_importance(patch, dtype=np.float16)
    assert g.dtype == np.float16
    assert float(g.min()) == minimum and int((g == g.min()).sum()) == count
    assert float(g.astype(np.float64).sum()) == pytest.approx(total, rel=1e-12)


def test_resample_keeps_float16_logits() -> None:
    logits = np.linspace(-3, 3, 2 * 4 * 4 * 6, dtype=np.float16).reshape(2, 4, 4, 6)
    out = resample(logits, (3, 5, 6), (1, 1, 1), (1, 1, 1), Resampling(order=1))
    assert out.dtype == np.float16
