from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from nnpipe.data.augment import EXTRA_TRANSFORMS, AugmentSettings, augment
from nnpipe.data.transforms import gamma_exponents

NOTHING = dict(zoom_prob=0.0, flip_prob=0.0, noise_prob=0.0, blur_prob=0.0,
               brightness_prob=0.0, contrast_prob=0.0)


def only(**kwargs: object) -> AugmentSettings:
    """Settings with every transform off except those given."""
    return AugmentSettings(**{**NOTHING, **kwargs})


def blocky_seg(batch: int, spatial: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Labels 0-3 constant on blocks of 4 voxels per axis: (B, 1, *spatial) int64."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (batch, 1, *(s // 4 for s in spatial)), generator=g)
    for axis in range(len(spatial)):
        coarse = coarse.repeat_interleave(4, dim=2 + axis)
    return coarse


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("spatial", [(8, 12), (8, 4, 12)])
def test_flips_with_probability_one_flip_every_axis(spatial: tuple[int, ...]) -> None:
    image = torch.randn(3, 2, *spatial)
    seg = blocky_seg(3, spatial)
    out, out_seg = augment(image, seg, only(flip_prob=1.0), gen(0))
    dims = list(range(2, 2 + len(spatial)))
    assert torch.equal(out, image.flip(dims)) and torch.equal(out_seg, seg.flip(dims))


@pytest.mark.parametrize("spatial", [(8, 12), (8, 4, 12)])
def test_random_flips_are_exact_permutations_per_sample(spatial: tuple[int, ...]) -> None:
    image = torch.randn(16, 2, *spatial)
    seg = blocky_seg(16, spatial)
    out, out_seg = augment(image, seg, only(flip_prob=0.5), gen(1))
    dims = list(range(1, 1 + len(spatial)))  # spatial axes of one sample (C, *spatial)
    combos = [[d for k, d in enumerate(dims) if mask >> k & 1] for mask in range(2 ** len(dims))]
    seen = set()
    for b in range(16):
        matches = [i for i, c in enumerate(combos) if torch.equal(out[b], image[b].flip(c))]
        assert len(matches) == 1, f"sample {b} is not a flip of its input"
        assert torch.equal(out_seg[b], seg[b].flip(combos[matches[0]]))
        seen.add(matches[0])
    assert len(seen) > 2  # decisions differ between samples


@pytest.mark.parametrize("spatial", [(16, 20), (12, 16, 8)])
def test_zoom_keeps_seg_aligned_with_image(spatial: tuple[int, ...]) -> None:
    seg = blocky_seg(6, spatial)
    image = seg.float()
    out, out_seg = augment(image, seg, only(zoom_prob=1.0, zoom_range=(1.2, 1.4)), gen(2))
    assert out_seg.dtype == torch.int64
    assert set(out_seg.unique().tolist()) <= set(seg.unique().tolist())
    assert not torch.equal(out_seg, seg)  # it did zoom
    # Linear and nearest interpolation agree except next to a label boundary of the output
    # (a boundary may lie just outside the patch, so its outermost voxels are not checked).
    mismatch, boundary = _mismatch_only_at_label_boundaries(out, out_seg)
    assert 0.0 < mismatch.float().mean() < boundary.float().mean()


@pytest.mark.parametrize("spatial", [(16, 20), (12, 16, 8)])
def test_all_transforms_keep_seg_labels_and_shapes(spatial: tuple[int, ...]) -> None:
    seg = blocky_seg(8, spatial)
    image = torch.randn(8, 3, *spatial)
    everything = AugmentSettings(zoom_prob=1.0, noise_prob=1.0, blur_prob=1.0,
                                 brightness_prob=1.0, contrast_prob=1.0)
    out, out_seg = augment(image, seg, everything, gen(3))
    assert out.shape == image.shape and out.dtype == torch.float32
    assert out_seg.shape == seg.shape and out_seg.dtype == torch.int64
    assert set(out_seg.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.isfinite(out).all()


def test_intensity_transforms_leave_seg_alone() -> None:
    seg = blocky_seg(4, (8, 8, 8))
    settings = only(noise_prob=1.0, blur_prob=1.0, brightness_prob=1.0, contrast_prob=1.0)
    _, out_seg = augment(torch.randn(4, 1, 8, 8, 8), seg, settings, gen(4))
    assert torch.equal(out_seg, seg)


def test_intensity_transforms_spare_channels_after_intensity_channels() -> None:
    """A cascade stage's one-hot previous-stage channels are never noised or rescaled,
    but move with the spatial transforms like the image."""
    seg = blocky_seg(4, (8, 8, 8))
    hot = (seg == 1).float()
    image = torch.cat([torch.randn(4, 2, 8, 8, 8), hot], dim=1)
    settings = only(noise_prob=1.0, blur_prob=1.0, brightness_prob=1.0, contrast_prob=1.0,
                    flip_prob=1.0, intensity_channels=2)
    out, out_seg = augment(image, seg, settings, gen(4))
    assert torch.equal(out[:, 2:], (out_seg == 1).float())  # flipped with seg, not altered
    assert not torch.allclose(out[:, :2], image[:, :2].flip(2, 3, 4))  # the image was
    with pytest.raises(ValueError, match="intensity_channels"):
        only(intensity_channels=-1)


def test_brightness_multiplies() -> None:
    image = torch.randn(3, 2, 8, 8)
    out, _ = augment(image, blocky_seg(3, (8, 8)),
                     only(brightness_prob=1.0, brightness_range=(2.0, 2.0)), gen(5))
    assert torch.equal(out, image * 2.0)


def test_contrast_keeps_channel_mean_and_scales_spread() -> None:
    image = torch.randn(3, 2, 8, 8, 8) * 3.0 + 1.0
    out, _ = augment(image, blocky_seg(3, (8, 8, 8)),
                     only(contrast_prob=1.0, contrast_range=(0.65, 0.65)), gen(6))
    dims = (2, 3, 4)
    torch.testing.assert_close(out.mean(dim=dims), image.mean(dim=dims), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=dims), 0.65 * image.std(dim=dims))


def test_contrast_increase_is_clipped_to_the_original_range() -> None:
    image = torch.randn(2, 1, 8, 8, 8)
    out, _ = augment(image, blocky_seg(2, (8, 8, 8)),
                     only(contrast_prob=1.0, contrast_range=(1.5, 1.5)), gen(7))
    assert torch.equal(out.amax(dim=(2, 3, 4)), image.amax(dim=(2, 3, 4)))
    assert torch.equal(out.amin(dim=(2, 3, 4)), image.amin(dim=(2, 3, 4)))


def test_noise_has_the_drawn_standard_deviation() -> None:
    image = torch.zeros(2, 1, 32, 32, 32)
    out, _ = augment(image, blocky_seg(2, (32, 32, 32)),
                     only(noise_prob=1.0, noise_std=(0.1, 0.1)), gen(8))
    assert out.std().item() == pytest.approx(0.1, rel=0.02)
    assert out.mean().item() == pytest.approx(0.0, abs=0.002)


def test_blur_spreads_an_impulse_like_a_gaussian() -> None:
    image = torch.zeros(1, 1, 15, 15, 15)
    image[0, 0, 7, 7, 7] = 1.0
    out, _ = augment(image, blocky_seg(1, (16, 16, 16))[:, :, :15, :15, :15],
                     only(blur_prob=1.0, blur_sigma=(1.0, 1.0)), gen(9))
    taps = sum(math.exp(-0.5 * x * x) for x in range(-3, 4))  # radius ceil(3 * 1.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 0, 7, 7, 7].item() == pytest.approx(taps ** -3, rel=1e-5)
    assert out[0, 0, 8, 7, 7].item() == pytest.approx(math.exp(-0.5) * taps ** -3, rel=1e-5)


def test_blur_keeps_a_constant_image_constant() -> None:
    image = torch.full((2, 1, 9, 10), 4.0)
    out, _ = augment(image, blocky_seg(2, (8, 8))[:, :, :1, :1].expand(2, 1, 9, 10),
                     only(blur_prob=1.0), gen(10))
    torch.testing.assert_close(out, image)


def test_probabilities_are_per_sample() -> None:
    image = torch.ones(64, 1, 4, 4)
    out, _ = augment(image, blocky_seg(64, (4, 4)),
                     only(brightness_prob=0.5, brightness_range=(2.0, 2.0)), gen(11))
    changed = (out[:, 0, 0, 0] == 2.0).sum().item()
    assert 16 < changed < 48
    assert ((out == 1.0) | (out == 2.0)).all()


def test_same_generator_state_same_output_and_inputs_untouched() -> None:
    image, seg = torch.randn(6, 2, 8, 8, 8), blocky_seg(6, (8, 8, 8))
    image_copy, seg_copy = image.clone(), seg.clone()
    everything = AugmentSettings(zoom_prob=0.5, noise_prob=0.5, blur_prob=0.5,
                                 brightness_prob=0.5, contrast_prob=0.5)
    first = augment(image, seg, everything, gen(12))
    again = augment(image, seg, everything, gen(12))
    other = augment(image, seg, everything, gen(13))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert torch.equal(image, image_copy) and torch.equal(seg, seg_copy)


def test_disabled_returns_the_batch() -> None:
    image, seg = torch.randn(2, 1, 4, 4), blocky_seg(2, (4, 4))
    out, out_seg = augment(image, seg, AugmentSettings.disabled(), gen(14))
    assert out is image and out_seg is seg


@pytest.mark.parametrize(("image_shape", "seg_shape", "seg_dtype", "message"), [
    ((2, 1, 4), (2, 1, 4), torch.int64, "floating image"),
    ((2, 1, 4, 4), (2, 2, 4, 4), torch.int64, "seg of shape"),
    ((2, 1, 4, 4), (2, 1, 4, 4), torch.float32, "integer seg"),
])
def test_bad_batches_are_rejected(image_shape: tuple[int, ...], seg_shape: tuple[int, ...],
                                  seg_dtype: torch.dtype, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        augment(torch.zeros(image_shape), torch.zeros(seg_shape, dtype=seg_dtype),
                AugmentSettings(), gen(15))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"flip_prob": 1.2}, "flip_prob"),
    ({"zoom_range": (0.8, 1.2)}, "zoom_range"),
    ({"blur_sigma": (1.5, 0.5)}, "blur_sigma"),
    ({"noise_std": (-0.1, 0.1)}, "noise_std"),
])
def test_settings_reject_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentSettings(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_with_cpu_generator() -> None:
    image, seg = torch.randn(4, 2, 16, 16, 16), blocky_seg(4, (16, 16, 16))
    spatial = only(zoom_prob=0.5, flip_prob=0.5)
    cpu = augment(image, seg, spatial, gen(16))
    cuda = augment(image.cuda(), seg.cuda(), spatial, gen(16))
    torch.testing.assert_close(cuda[0].cpu(), cpu[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(cuda[1].cpu(), cpu[1])
    everything = AugmentSettings(zoom_prob=1.0, noise_prob=1.0, blur_prob=1.0,
                                 brightness_prob=1.0, contrast_prob=1.0)
    first = augment(image.cuda(), seg.cuda(), everything, gen(17))
    again = augment(image.cuda(), seg.cuda(), everything, gen(17))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


# --- nnU-Net options: rotation, scaling, gamma, low resolution -------------------------------

def ramps(spatial: tuple[int, ...]) -> torch.Tensor:
    """(1, dim, *spatial): channel k is the voxel offset from the patch centre along axis k."""
    axes = [torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in spatial]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def test_rotation_by_90_degrees_in_2d_is_rot90() -> None:
    image, seg = torch.randn(3, 2, 6, 6), blocky_seg(3, (8, 8))[:, :, 1:7, 1:7]
    out, out_seg = augment(image, seg, only(rotation_prob=1.0, rotation_range=(90.0, 90.0)),
                           gen(20))
    torch.testing.assert_close(out, image.rot90(1, (2, 3)), atol=1e-5, rtol=0)
    assert torch.equal(out_seg, seg.rot90(1, (2, 3)))


def test_rotation_by_90_degrees_about_every_axis_in_3d_permutes_axes() -> None:
    image, seg = torch.randn(2, 1, 6, 6, 6), blocky_seg(2, (8, 8, 8))[:, :, 1:7, 1:7, 1:7]
    out, out_seg = augment(image, seg, only(rotation_prob=1.0, rotation_range=(90.0, 90.0)),
                           gen(21))
    # R0 @ R1 @ R2 with 90 degrees each swaps the first and last axis and mirrors the first.
    torch.testing.assert_close(out, image.permute(0, 1, 4, 3, 2).flip(2), atol=1e-5, rtol=0)
    assert torch.equal(out_seg, seg.permute(0, 1, 4, 3, 2).flip(2))


def test_rotation_on_a_non_square_patch_rotates_voxel_geometry() -> None:
    # Linear ramps are reproduced exactly by linear interpolation, so a 90 degree turn of a
    # 12x16 patch must map the offset (i, j) to the input offset (j, -i) where it is inside.
    image = ramps((12, 16))
    seg = torch.zeros(1, 1, 12, 16, dtype=torch.int64)
    out, _ = augment(image, seg, only(rotation_prob=1.0, rotation_range=(90.0, 90.0)), gen(22))
    inside = slice(3, 13)  # columns whose offset j - 7.5 lies within the 12 input rows
    torch.testing.assert_close(out[0, 0, :, inside], image[0, 1, :, inside], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, 1, :, inside], -image[0, 0, :, inside], atol=1e-5, rtol=0)


def test_scaling_magnifies_about_the_centre() -> None:
    image = ramps((8, 12, 6))
    seg = torch.zeros(1, 1, 8, 12, 6, dtype=torch.int64)
    out, _ = augment(image, seg, only(scaling_prob=1.0, scaling_range=(2.0, 2.0)), gen(23))
    torch.testing.assert_close(out, image / 2.0, atol=1e-5, rtol=0)


def test_scaling_down_pads_with_zero_image_and_background() -> None:
    image = ramps((12, 12)) + 100.0
    seg = torch.ones(1, 1, 12, 12, dtype=torch.int64)
    out, out_seg = augment(image, seg, only(scaling_prob=1.0, scaling_range=(0.5, 0.5)),
                           gen(24))
    centre = (slice(None), slice(None), slice(4, 8), slice(4, 8))
    torch.testing.assert_close(out[centre], (image[centre] - 100.0) * 2.0 + 100.0)
    assert (out[..., 0, :] == 0).all() and (out_seg[..., 0, :] == 0).all()
    assert (out_seg[centre] == 1).all()


@pytest.mark.parametrize("spatial", [(16, 20), (12, 16, 8)])
def test_rotation_and_scaling_keep_seg_aligned_with_image(spatial: tuple[int, ...]) -> None:
    seg = blocky_seg(6, spatial, seed=1)
    out, out_seg = augment(seg.float(), seg, only(rotation_prob=1.0, scaling_prob=1.0), gen(25))
    assert out_seg.dtype == torch.int64 and not torch.equal(out_seg, seg)
    assert set(out_seg.unique().tolist()) <= set(seg.unique().tolist())
    _mismatch_only_at_label_boundaries(out, out_seg)


def test_gamma_curves_each_channel_and_keeps_its_range() -> None:
    image = torch.rand(3, 2, 6, 6, 6) * 4.0 - 1.0
    dims = (2, 3, 4)
    low, high = image.amin(dim=dims, keepdim=True), image.amax(dim=dims, keepdim=True)
    out, _ = augment(image, blocky_seg(3, (8, 8, 8))[:, :, :6, :6, :6],
                     only(gamma_prob=1.0, gamma_range=(2.0, 2.0)), gen(26))
    torch.testing.assert_close(out, low + ((image - low) / (high - low)) ** 2 * (high - low))
    torch.testing.assert_close(out.amin(dim=dims), image.amin(dim=dims))
    torch.testing.assert_close(out.amax(dim=dims), image.amax(dim=dims))


def test_inverted_gamma_curves_from_the_maximum() -> None:
    image = torch.rand(2, 1, 5, 7) * 3.0
    low, high = image.amin(dim=(2, 3), keepdim=True), image.amax(dim=(2, 3), keepdim=True)
    out, _ = augment(image, blocky_seg(2, (8, 8))[:, :, :5, :7],
                     only(gamma_inverted_prob=1.0, gamma_range=(2.0, 2.0)), gen(27))
    torch.testing.assert_close(out, high - ((high - image) / (high - low)) ** 2 * (high - low))


def test_gamma_of_a_constant_channel_is_the_identity() -> None:
    image = torch.full((2, 1, 4, 4), 3.0)
    out, _ = augment(image, blocky_seg(2, (4, 4)), only(gamma_prob=1.0), gen(28))
    assert torch.equal(out, image)


def test_gamma_exponents_fall_below_and_above_one_equally_often() -> None:
    g = gen(29)
    gamma = gamma_exponents(torch.rand(4000, generator=g), torch.rand(4000, generator=g),
                            (0.7, 1.5))
    assert gamma.min() >= 0.7 and gamma.max() <= 1.5
    assert (gamma < 1.0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    only_above = gamma_exponents(torch.zeros(3), torch.tensor([0.0, 0.5, 1.0]), (1.2, 1.6))
    torch.testing.assert_close(only_above, torch.tensor([1.2, 1.4, 1.6]))


@pytest.mark.parametrize(("spatial", "mode"), [((12, 10), "bicubic"), ((8, 12, 6), "trilinear")])
def test_lowres_is_nearest_down_then_smooth_up(spatial: tuple[int, ...], mode: str) -> None:
    image = torch.randn(2, 2, *spatial)
    out, _ = augment(image, blocky_seg(2, tuple(s + 4 for s in spatial))[
        (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)],
        only(lowres_prob=1.0, lowres_range=(2.0, 2.0)), gen(30))
    small = F.interpolate(image, size=[s // 2 for s in spatial], mode="nearest")
    expected = F.interpolate(small, size=list(spatial), mode=mode, align_corners=False)
    torch.testing.assert_close(out, expected)
    assert out.std() < image.std()  # detail is lost


def test_lowres_by_factor_one_is_the_identity() -> None:
    image = torch.randn(2, 1, 6, 6, 6)
    out, _ = augment(image, blocky_seg(2, (8, 8, 8))[:, :, :6, :6, :6],
                     only(lowres_prob=1.0, lowres_range=(1.0, 1.0)), gen(31))
    torch.testing.assert_close(out, image)


@pytest.mark.parametrize("spatial", [(16, 20), (12, 16, 8)])
def test_every_option_keeps_shapes_labels_and_determinism(spatial: tuple[int, ...]) -> None:
    seg, image = blocky_seg(8, spatial), torch.randn(8, 3, *spatial)
    settings = AugmentSettings(zoom_prob=0.5, noise_prob=0.5, blur_prob=0.5, rotation_prob=1.0,
                               scaling_prob=1.0, gamma_prob=1.0, gamma_inverted_prob=1.0,
                               lowres_prob=1.0)
    out, out_seg = augment(image, seg, settings, gen(32))
    again = augment(image, seg, settings, gen(32))
    assert out.shape == image.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out_seg.shape == seg.shape and out_seg.dtype == torch.int64
    assert set(out_seg.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(out, again[0]) and torch.equal(out_seg, again[1])


def test_options_off_leave_the_random_stream_of_the_reference_set() -> None:
    image, seg = torch.randn(4, 1, 8, 8, 8), blocky_seg(4, (8, 8, 8))
    reference = AugmentSettings(zoom_prob=0.5, noise_prob=0.5)
    g_a, g_b = gen(33), gen(33)
    augment(image, seg, reference, g_a)
    augment(image, seg, reference, g_b)
    assert torch.equal(g_a.get_state(), g_b.get_state())
    with_option = gen(33)
    augment(image, seg, replace(reference, gamma_prob=0.3), with_option)
    assert not torch.equal(with_option.get_state(), g_a.get_state())  # it draws its own block
    assert not AugmentSettings().uses_extras


def test_from_names_switches_on_nnunet_probabilities() -> None:
    settings = AugmentSettings.from_names(True, ["rotation", "lowres", "gamma"])
    assert (settings.rotation_prob, settings.lowres_prob, settings.gamma_prob) == (0.2, 0.25, 0.3)
    assert settings.scaling_prob == 0.0 and settings.gamma_inverted_prob == 0.0
    assert settings.zoom_prob == AugmentSettings().zoom_prob and settings.enabled
    assert AugmentSettings.from_names(True, []) == AugmentSettings()
    everything = AugmentSettings.from_names(True, sorted(EXTRA_TRANSFORMS))
    assert (everything.scaling_prob, everything.gamma_inverted_prob) == (0.2, 0.1)
    assert not AugmentSettings.from_names(False, ["scaling"]).enabled


@pytest.mark.parametrize(("names", "message"), [
    (["rotation", "mirror"], r"unknown augmentation name\(s\) \['mirror'\]"),
    (["gamma", "gamma"], r"\['gamma'\] given more than once"),
])
def test_from_names_rejects_bad_names(names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentSettings.from_names(True, names)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rotation_range": (30.0, -30.0)}, "rotation_range"),
    ({"scaling_range": (0.0, 1.4)}, "scaling_range"),
    ({"lowres_range": (0.5, 2.0)}, "lowres_range"),
    ({"gamma_prob": 1.5}, "gamma_prob"),
])
def test_option_settings_reject_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentSettings(**kwargs)


def _mismatch_only_at_label_boundaries(out: torch.Tensor, out_seg: torch.Tensor
                                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Assert that the image resampled linearly (``out``, made from the labels) equals the
    labels resampled by nearest neighbour (``out_seg``) except next to a label boundary;
    return the mismatch and boundary masks of the inner voxels (the outermost are skipped:
    a boundary may lie just outside the patch)."""
    spatial = out_seg.shape[2:]
    pool = F.max_pool3d if len(spatial) == 3 else F.max_pool2d
    labels = out_seg.float()
    boundary = pool(labels, 3, 1, 1) != -pool(-labels, 3, 1, 1)
    mismatch = (out - labels).abs() > 1e-4
    inner = (slice(None), slice(None)) + (slice(1, -1),) * len(spatial)
    assert not (mismatch & ~boundary)[inner].any()
    return mismatch[inner], boundary[inner]
