from __future__ import annotations

import itertools
import math

import pytest
import torch

from nnpipe.inference.sliding_window import (
    MIN_WEIGHT,
    blend_weight,
    gaussian_weight,
    predict_volume_2d,
    sliding_window,
    tile_grid,
    tile_starts,
)

# ---------------------------------------------------------------- tile placement (golden values)


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "expected"),
    [
        (128, 128, 0.5, [0]),
        (100, 128, 0.5, [0]),  # smaller than the patch: one tile, the image gets padded
        (155, 128, 0.5, [0, 27]),
        (240, 128, 0.5, [0, 56, 112]),
        (256, 128, 0.5, [0, 64, 128]),
        (129, 128, 0.5, [0, 1]),
        (10, 4, 0.5, [0, 2, 4, 6]),
        (10, 4, 0.0, [0, 3, 6]),  # target step 4 -> 3 tiles, spread evenly (step 3)
        (11, 4, 0.5, [0, 2, 4, 5, 7]),  # step 7/4 = 1.75: 0, 1.75, 3.5, 5.25, 7 rounded
        (7, 3, 0.25, [0, 2, 4]),  # target step 2.25 -> ceil(4 / 2.25) + 1 = 3 tiles
        # halves to even, as nnU-Net v2's np.round (issue 19 row 5): 22.5 -> 22, 18.5 -> 18
        (109, 64, 0.5, [0, 22, 45]),
        (101, 64, 0.5, [0, 18, 37]),
        (105, 64, 0.5, [0, 20, 41]),
    ],
)
def test_tile_starts_golden(size: int, patch: int, overlap: float, expected: list[int]) -> None:
    assert tile_starts(size, patch, overlap) == expected


@pytest.mark.parametrize(("size", "patch", "overlap"), [(0, 4, 0.5), (4, 0, 0.5), (8, 4, 1.0),
                                                        (8, 4, -0.1)])
def test_tile_starts_rejects_bad_arguments(size: int, patch: int, overlap: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        tile_starts(size, patch, overlap)


@pytest.mark.parametrize(("shape", "patch", "overlap"),
                         [((13, 9), (4, 4), 0.5), ((7, 11, 5), (3, 4, 5), 0.33),
                          ((20, 6), (7, 6), 0.0)])
def test_tile_grid_covers_every_voxel(shape: tuple[int, ...], patch: tuple[int, ...],
                                      overlap: float) -> None:
    count = torch.zeros(shape)
    tiles = tile_grid(shape, patch, overlap)
    for tile in tiles:
        assert tuple(s.stop - s.start for s in tile) == patch
        count[tile] += 1
    assert count.min() >= 1
    per_axis = [len(tile_starts(s, p, overlap)) for s, p in zip(shape, patch, strict=True)]
    expected_n = math.prod(per_axis)
    assert len(tiles) == expected_n


def test_tile_grid_rejects_shape_smaller_than_patch() -> None:
    with pytest.raises(ValueError, match="smaller than patch"):
        tile_grid((3, 8), (4, 4), 0.5)


# ---------------------------------------------------------------- blending weights


def test_gaussian_weight_peak_symmetry_and_floor() -> None:
    w = gaussian_weight((9, 8, 7))
    assert w.shape == (9, 8, 7)
    assert w.dtype == torch.float32
    assert w.max().item() == pytest.approx(1.0)
    assert w[4, 3:5, 3].tolist() == pytest.approx([1.0, 1.0])  # even axis: two centre voxels
    assert w.min().item() == pytest.approx(MIN_WEIGHT)  # corners are clamped, never zero
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1)) and torch.equal(w, w.flip(2))


def test_gaussian_weight_values_on_one_axis() -> None:
    # patch 5, sigma = 0.5 * 5 = 2.5: weight at distance d is exp(-d^2 / (2 * 2.5^2)).
    w = gaussian_weight((5,), sigma_scale=0.5)
    expected = [math.exp(-(d**2) / 12.5) for d in (2, 1, 0, 1, 2)]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


def test_blend_weight_constant_and_bad_name() -> None:
    assert torch.equal(blend_weight((3, 4), "constant"), torch.ones(3, 4))
    with pytest.raises(ValueError, match="gaussian, constant"):
        blend_weight((3, 4), "cosine")
    with pytest.raises(ValueError, match="sigma_scale"):
        gaussian_weight((3, 4), sigma_scale=0.0)


# ---------------------------------------------------------------- sliding window


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """Logits (B, 3, ...) that depend only on each voxel's values: [0, x0, x0 - x1]."""
    return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0], x[:, 0] - x[:, 1]], dim=1)


def box3(x: torch.Tensor) -> torch.Tensor:
    """A flip-equivariant but non-pointwise predict: a 3x3 box filter of channel 0 (2D)."""
    smooth = torch.nn.functional.avg_pool2d(x[:, :1], 3, stride=1, padding=1)
    return torch.cat([torch.zeros_like(smooth), 3 * smooth], dim=1)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape", [(2, 11, 13), (2, 9, 10, 7), (2, 3, 5), (2, 3, 2, 5)])
def test_pointwise_predict_is_reproduced_exactly(blend: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    image = torch.randn(shape)
    patch = (4,) * (len(shape) - 1)  # some shapes are smaller than the patch along an axis
    out = sliding_window(pointwise, image, patch, num_classes=3, overlap=0.5, blend=blend,
                         batch_size=3)
    expected = pointwise(image.unsqueeze(0))[0]  # logits: no softmax unless asked for
    assert out.shape == (3, *shape[1:])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    probs = sliding_window(pointwise, image, patch, num_classes=3, overlap=0.5, blend=blend,
                           batch_size=3, activation="softmax")
    torch.testing.assert_close(probs, torch.softmax(expected, 0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(0), torch.ones(shape[1:]), rtol=0, atol=1e-6)


def test_constant_blend_averages_overlapping_tiles_logits() -> None:
    # Columns 0..5, patch 4, overlap 0.5 -> tiles start at columns 0 and 2. The predict gives
    # every voxel of a tile the tile's mean: tile 0 mean 1.5, tile 1 mean 3.5. The logits are
    # averaged where the tiles overlap and the softmax comes once, after (issue 19 row 4).
    image = torch.arange(6.0).expand(4, 6).unsqueeze(0)  # (1, 4, 6), value = column index

    def tile_mean(x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[2:])
        return torch.cat([torch.zeros_like(m), m], dim=1)

    out = sliding_window(tile_mean, image, (4, 4), num_classes=2, blend="constant",
                         activation="softmax")
    s1, s2, s12 = (torch.sigmoid(torch.tensor(v)).item() for v in (1.5, 3.5, 2.5))
    expected_row = [s1, s1, s12, s12, s2, s2]  # not (s1 + s2) / 2: logits were averaged
    for row in range(4):
        assert out[1, row].tolist() == pytest.approx(expected_row, rel=1e-6)
    logits = sliding_window(tile_mean, image, (4, 4), num_classes=2, blend="constant")
    assert logits[1, 0].tolist() == pytest.approx([1.5, 1.5, 2.5, 2.5, 3.5, 3.5], rel=1e-6)


def test_tta_with_flip_equivariant_predict_equals_no_tta() -> None:
    torch.manual_seed(1)
    image = torch.randn(1, 10, 9)
    plain = sliding_window(box3, image, (6, 6), num_classes=2)
    tta = sliding_window(box3, image, (6, 6), num_classes=2, tta_flips=True)
    torch.testing.assert_close(tta, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("shape", "n_flips"), [((1, 4, 4), 4), ((1, 4, 4, 4), 8)])
def test_tta_predicts_every_flip_combination(shape: tuple[int, ...], n_flips: int) -> None:
    seen: list[torch.Tensor] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return pointwise(torch.cat([x, x], dim=1))

    image = torch.arange(float(math.prod(shape))).reshape(shape)
    sliding_window(record, image, shape[1:], num_classes=3, tta_flips=True)
    assert len(seen) == n_flips
    distinct = {tuple(s.flatten().tolist()) for s in seen}
    assert len(distinct) == n_flips  # each call saw a different flip of the same tile


def test_deep_supervision_output_uses_first_head() -> None:
    image = torch.randn(2, 6, 6)

    def heads(x: torch.Tensor) -> list[torch.Tensor]:
        return [pointwise(x), torch.zeros(x.shape[0], 3, 3, 3)]

    out = sliding_window(heads, image, (4, 4), num_classes=3)
    torch.testing.assert_close(out, sliding_window(pointwise, image, (4, 4), num_classes=3))


def test_accumulate_on_cpu_and_bad_output_shape() -> None:
    image = torch.randn(2, 5, 5)
    out = sliding_window(pointwise, image, (4, 4), num_classes=3, accumulate_device="cpu")
    assert out.device.type == "cpu"
    with pytest.raises(ValueError, match=r"expected \(2, 4, 4, 4\)"):
        sliding_window(pointwise, image, (4, 4), num_classes=4)
    with pytest.raises(ValueError, match="2 spatial axes"):
        sliding_window(pointwise, torch.randn(5, 5), (4, 4), num_classes=3)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_predict_volume_2d_slice_by_slice(slice_axis: int) -> None:
    torch.manual_seed(2)
    image = torch.randn(2, 5, 6, 7)
    calls: list[int] = []

    def model_2d(x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4  # (B, C, a, b): a 2D model
        calls.append(x.shape[0])
        return pointwise(x)

    out = predict_volume_2d(model_2d, image, slice_axis, (4, 4), num_classes=3, batch_size=4)
    assert out.shape == (3, 5, 6, 7)
    expected = pointwise(image.unsqueeze(0))[0]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert max(calls) == 4  # tiles of several slices share a forward pass


def test_predict_volume_2d_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="slice_axis"):
        predict_volume_2d(pointwise, torch.randn(2, 4, 4, 4), 3, (4, 4), num_classes=3)
    with pytest.raises(ValueError, match="2 sizes"):
        predict_volume_2d(pointwise, torch.randn(2, 4, 4, 4), 0, (4, 4, 4), num_classes=3)


def test_tile_starts_are_nnunet_v2s_for_sizes_64_to_200() -> None:
    """The v2 golden table (computed once with nnU-Net v2 2.8.1's
    ``compute_steps_for_sliding_window``, pinned in tests/v2): nnpipe's own grid is v2's."""
    from tests.v2.test_semantics import TILES_64

    assert sorted(TILES_64) == list(range(64, 201))
    for size, starts in TILES_64.items():
        assert tile_starts(size, 64, 0.5) == starts, size


def test_logits_are_averaged_over_flips_then_one_softmax() -> None:
    """A predict that is not flip-equivariant: the TTA result is the softmax of the mean of
    the flipped-back logits, not the mean of the softmaxes (issue 19 row 4)."""
    torch.manual_seed(3)
    image = torch.randn(1, 4, 4)
    ramp = torch.arange(16.0).reshape(1, 1, 4, 4)

    def skewed(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 3 * x + ramp], dim=1)

    got = sliding_window(skewed, image, (4, 4), num_classes=2, tta_flips=True,
                         blend="constant", activation="softmax")
    x = image.unsqueeze(0)
    flips = [(), (2,), (3,), (2, 3)]
    logits = sum(skewed(x.flip(a) if a else x).flip(a) if a else skewed(x) for a in flips) / 4
    torch.testing.assert_close(got, torch.softmax(logits[0], 0), rtol=1e-5, atol=1e-6)
    mean_of_softmax = sum(torch.softmax((skewed(x.flip(a)).flip(a) if a else skewed(x))[0], 0)
                          for a in flips) / 4
    assert (got - mean_of_softmax).abs().max() > 1e-2  # the two rules really differ here


@pytest.mark.parametrize(("mirror_axes", "n_flips"), [((), 1), ((0,), 2), ((1, 2), 4)])
def test_tta_flips_only_the_mirror_axes(mirror_axes: tuple[int, ...], n_flips: int) -> None:
    seen: list[torch.Tensor] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return pointwise(torch.cat([x, x], dim=1))

    image = torch.arange(64.0).reshape(1, 4, 4, 4)
    sliding_window(record, image, (4, 4, 4), num_classes=3, tta_flips=True,
                   mirror_axes=mirror_axes)
    tile = image.unsqueeze(0)
    allowed = [tile.flip([a + 2 for a in c]) if c else tile
               for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    assert len(seen) == n_flips
    for x, expected in zip(seen, allowed, strict=True):  # v2's order, no other axis flipped
        assert torch.equal(x, expected)
    with pytest.raises(ValueError, match="mirror_axes"):
        sliding_window(record, image, (4, 4, 4), num_classes=3, tta_flips=True,
                       mirror_axes=(3,))


def test_given_weight_and_float16_accumulation() -> None:
    """A tile weight passed as data (v2's importance map) and float16 sums (v2's): the
    blended logits are rounded to float16 and a weight of the wrong shape is refused."""
    image = torch.randn(2, 6, 6)
    weight = torch.rand(4, 4) + 0.5
    got = sliding_window(pointwise, image, (4, 4), num_classes=3, blend=weight,
                         accumulate_dtype=torch.float16)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), pointwise(image.unsqueeze(0))[0], atol=2e-2,
                               rtol=1e-2)
    with pytest.raises(ValueError, match="does not fit patch"):
        sliding_window(pointwise, image, (4, 4), num_classes=3, blend=torch.ones(3, 4))
