"""Batched data augmentation in torch, on whatever device the batch lives on.

The transforms and their defaults follow the NVIDIA nnU-Net reference (its DALI pipeline), in
its order: zoom, flips, Gaussian noise, Gaussian blur, brightness, contrast. nnU-Net's own
rotation and scaling (one affine resampling, before the zoom), low-resolution simulation and
gamma (after the contrast) are options, off by default (:meth:`AugmentSettings.from_names`
switches them on with nnU-Net's probabilities). Every decision is
made per sample: the random numbers for the whole batch are drawn at once, and each transform
runs as a few tensor operations (:mod:`nnpipe.data.transforms`) on the subset of samples it
applies to, never as a Python loop over voxels. Running on the GPU is what lets augmentation
keep up with training (a 4-channel 128³ float32 stream at 100 samples/s is about 3.4 GB/s);
the same code runs on CPU in tests.

Shapes: ``image`` is ``(B, C, H, W)`` (2D) or ``(B, C, D, H, W)`` (3D), floating point;
``seg`` is ``(B, 1, *spatial)`` with an integer dtype. Spatial transforms (rotation, scaling,
zoom, flips) move
both identically, so labels stay aligned with the image; intensity transforms touch only the
image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from nnpipe.data import transforms as T
from nnpipe.data.transforms import Range


@dataclass(frozen=True)
class AugmentSettings:
    """Probability (per sample) and parameter range of each transform.

    ``zoom_range`` is the scale factor (>= 1: a region ``1/scale`` of the patch is cropped at a
    random position and resized back to the patch). ``noise_std`` is in units of the normalized
    intensity (nnU-Net's variance range 0-0.1 is a standard deviation up to about 0.32, which
    the reference rounds to 0.33). ``blur_sigma`` is in voxels. ``brightness_range`` multiplies
    the intensities; ``contrast_range`` scales them about the per-channel mean, then clips to
    the channel's original range. ``flip_prob`` applies to each spatial axis independently.

    The nnU-Net options (probability 0 = off, the default; :data:`EXTRA_TRANSFORMS` holds
    nnU-Net's probabilities): ``rotation_range`` in degrees, drawn per spatial axis in 3D and
    once (in-plane) in 2D; ``scaling_range`` magnifies the content by the factor (> 1 zooms
    in) about the patch centre; rotation and scaling share one resampling (image linear, seg
    nearest, zero padding = background where the rotated patch leaves the input).
    ``gamma_range`` is the exponent applied to each channel rescaled to [0, 1] and mapped back
    to its original range (nnU-Net draws below 1 and above 1 equally often, so do we);
    ``gamma_inverted_prob`` is the same on the inverted image (nnU-Net's second gamma).
    ``lowres_range`` is the downsampling factor of the low-resolution simulation (nearest
    down, then cubic (2D) or trilinear (3D) back up).

    ``intensity_channels`` (0: all): only the first that many channels get the intensity
    transforms. A cascade stage's extra channels (the previous stage's one-hot segmentation,
    appended after the image's) move with the spatial transforms, linearly interpolated (soft
    edges where rotated or zoomed), but are never noised, blurred or rescaled.
    """

    enabled: bool = True
    zoom_prob: float = 0.15
    zoom_range: Range = (1.0, 1.4)
    flip_prob: float = 0.5
    noise_prob: float = 0.15
    noise_std: Range = (0.0, 0.33)
    blur_prob: float = 0.15
    blur_sigma: Range = (0.5, 1.5)
    brightness_prob: float = 0.15
    brightness_range: Range = (0.7, 1.3)
    contrast_prob: float = 0.15
    contrast_range: Range = (0.65, 1.5)
    rotation_prob: float = 0.0
    rotation_range: Range = (-30.0, 30.0)
    scaling_prob: float = 0.0
    scaling_range: Range = (0.7, 1.4)
    gamma_prob: float = 0.0
    gamma_inverted_prob: float = 0.0
    gamma_range: Range = (0.7, 1.5)
    lowres_prob: float = 0.0
    lowres_range: Range = (1.0, 2.0)
    intensity_channels: int = 0

    def __post_init__(self) -> None:
        if self.intensity_channels < 0:
            raise ValueError("AugmentSettings.intensity_channels must be >= 0 (0: all), got "
                             f"{self.intensity_channels!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentSettings.{f.name} must lie in [0, 1], got {value!r}")
            if f.name in _RANGE_MINIMA:
                low, high = value
                if not _RANGE_MINIMA[f.name] <= low <= high:
                    raise ValueError(f"AugmentSettings.{f.name} must be (low, high) with "
                                     f"{_RANGE_MINIMA[f.name]} <= low <= high, got {value!r}")
                object.__setattr__(self, f.name, (float(low), float(high)))

    @classmethod
    def disabled(cls) -> AugmentSettings:
        """Settings that leave every batch unchanged (validation, benchmarks of the model)."""
        return cls(enabled=False)

    @classmethod
    def from_names(cls, enabled: bool, extra: Sequence[str]) -> AugmentSettings:
        """The reference's set (if ``enabled``) plus the nnU-Net options named in ``extra``.

        ``extra`` lists names of :data:`EXTRA_TRANSFORMS`; each switches that transform on with
        nnU-Net's probability. With ``enabled=False`` nothing is applied, names or not (they
        are still checked, so a config typo fails whatever the switch says).

        Raises:
            ValueError: for an unknown or repeated name.
        """
        names = list(extra)
        unknown = sorted(set(names) - set(EXTRA_TRANSFORMS))
        if unknown:
            raise ValueError(f"unknown augmentation name(s) {unknown}; "
                             f"choose from {sorted(EXTRA_TRANSFORMS)}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"augmentation name(s) {repeated} given more than once")
        probabilities: dict[str, Any] = {}  # field name -> value, for the dataclass __init__
        for name in names:
            probabilities.update(EXTRA_TRANSFORMS[name])
        return cls(enabled=enabled, **probabilities)

    @property
    def uses_extras(self) -> bool:
        """Whether any nnU-Net option is on (they draw their own block of random numbers)."""
        return any(getattr(self, f"{name}_prob") > 0.0 for name in _EXTRA_COLUMNS)


# The nnU-Net options by name, with nnU-Net's (v2 default trainer) probabilities.
EXTRA_TRANSFORMS: dict[str, dict[str, float]] = {
    "rotation": {"rotation_prob": 0.2},
    "scaling": {"scaling_prob": 0.2},
    "gamma": {"gamma_prob": 0.3},
    "gamma_inverted": {"gamma_inverted_prob": 0.1},
    "lowres": {"lowres_prob": 0.25},
}

# Lowest allowed value of each range; a tiny positive number where zero is meaningless.
_RANGE_MINIMA = {"zoom_range": 1.0, "noise_std": 0.0, "blur_sigma": 1e-3,
                 "brightness_range": 1e-3, "contrast_range": 1e-3, "rotation_range": -180.0,
                 "scaling_range": 1e-2, "gamma_range": 1e-2, "lowres_range": 1.0}

# Columns of the extra block of draws: one "apply" column per option, in this order.
_EXTRA_COLUMNS = ("rotation", "scaling", "gamma", "gamma_inverted", "lowres")


@dataclass(frozen=True)
class Draws:
    """Every per-sample random number of one batch, on the generator's device.

    Public so that the DALI backend (:mod:`nnpipe.data.dali`) takes the same decisions from
    the same generator state as :func:`augment`.
    """

    apply: torch.Tensor  # (B, 5) bool: zoom, noise, blur, brightness, contrast
    value: torch.Tensor  # (B, 5) uniform [0, 1) parameter draws, same columns
    flip: torch.Tensor  # (B, dim) uniform draws compared with flip_prob
    shift: torch.Tensor  # (B, dim) uniform placement of the zoomed region
    # The nnU-Net options, None when all are off: (B, 5) bool in _EXTRA_COLUMNS order, and
    # (B, 9) uniform [0, 1): scaling, gamma side, gamma, inverted-gamma side, inverted gamma,
    # lowres factor, three rotation angles (2D uses the first).
    extra_apply: torch.Tensor | None = None
    extra_value: torch.Tensor | None = None

    @classmethod
    def draw(cls, batch: int, dim: int, settings: AugmentSettings,
             generator: torch.Generator) -> Draws:
        # One draw of fixed shape: the generator advances by the same amount whatever is
        # applied, so a batch's randomness never depends on the previous batch's decisions.
        u = torch.rand((batch, 10 + 2 * dim), generator=generator, device=generator.device)
        probs = torch.tensor([settings.zoom_prob, settings.noise_prob, settings.blur_prob,
                              settings.brightness_prob, settings.contrast_prob],
                             device=generator.device)
        extra_apply = extra_value = None
        if settings.uses_extras:
            # A second fixed-shape block, drawn only when an option is on: runs without the
            # options keep exactly the random stream they had before the options existed.
            e = torch.rand((batch, 14), generator=generator, device=generator.device)
            extra_probs = torch.tensor([getattr(settings, f"{n}_prob") for n in _EXTRA_COLUMNS],
                                       device=generator.device)
            extra_apply, extra_value = e[:, :5] < extra_probs, e[:, 5:]
        return cls(u[:, :5] < probs, u[:, 5:10], u[:, 10: 10 + dim], u[:, 10 + dim:],
                   extra_apply, extra_value)


def _device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device``: ``generator`` itself, or one seeded from it.

    Voxel-wise noise must be drawn where the batch lives (copying it from the host would cost
    what GPU augmentation saves); seeding a device generator from ``generator`` keeps the
    result a function of ``generator``'s state alone.
    """
    if generator.device == device:  # a "cuda" generator vs a "cuda:0" batch reseeds: harmless
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    device_generator = torch.Generator(device=device)
    device_generator.manual_seed(seed)
    return device_generator


def _check(image: torch.Tensor, seg: torch.Tensor) -> None:
    if image.ndim not in (4, 5) or not image.is_floating_point():
        raise ValueError(f"augment needs a floating image of shape (B, C, H, W) or "
                         f"(B, C, D, H, W), got {image.dtype} {tuple(image.shape)}")
    if seg.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(f"augment needs seg of shape (B, 1, *spatial) = "
                         f"{(image.shape[0], 1, *image.shape[2:])}, got {tuple(seg.shape)}")
    if seg.is_floating_point() or seg.is_complex() or seg.dtype == torch.bool:
        raise ValueError(f"augment needs an integer seg, got dtype {seg.dtype}")
    if seg.device != image.device:
        raise ValueError(f"image is on {image.device} but seg is on {seg.device}")


def _selected(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Indices of the samples where ``mask`` (B,) is true, on ``device``.

    The decisions live with the generator (normally the CPU), so finding the indices costs
    no device synchronisation; only the short index vector is copied, without waiting.
    """
    return T.to_device(mask.nonzero().flatten(), device)


def _spatial(image: torch.Tensor, seg: torch.Tensor, draws: Draws,
             settings: AugmentSettings) -> None:
    """Rotation/scaling, zoom, then flip each axis, in place; image and seg move together."""
    device, dim = image.device, image.ndim - 2
    if draws.extra_apply is not None and draws.extra_value is not None:
        rotate, rescale = draws.extra_apply[:, 0], draws.extra_apply[:, 1]
        idx = _selected(rotate | rescale, device)
        if idx.numel():
            angles = T.scaled(draws.extra_value[:, 6:9], settings.rotation_range)
            angles = torch.where(rotate[:, None], angles, torch.zeros_like(angles))
            scale = T.scaled(draws.extra_value[:, 0], settings.scaling_range)
            scale = torch.where(rescale, scale, torch.ones_like(scale))
            keep = (rotate | rescale).nonzero().flatten()
            T.resample(image, seg, idx, T.sampling_matrices(angles[keep], scale[keep], dim))
    idx = _selected(draws.apply[:, 0], device)
    if idx.numel():
        scale = T.to_device(T.scaled(draws.value[:, 0], settings.zoom_range), device)[idx]
        T.zoom(image, seg, idx, scale, T.to_device(draws.shift, device)[idx])
    for axis in range(dim):
        idx = _selected(draws.flip[:, axis] < settings.flip_prob, device)
        if idx.numel():
            image[idx] = image[idx].flip(2 + axis)
            seg[idx] = seg[idx].flip(2 + axis)


def _intensity(image: torch.Tensor, draws: Draws, settings: AugmentSettings,
               noise_generator: torch.Generator) -> None:
    """Noise, blur, brightness, contrast, in place, each on its own subset of samples."""
    device, view = image.device, (-1,) + (1,) * (image.ndim - 1)
    value = T.to_device(draws.value, device)
    idx = _selected(draws.apply[:, 1], device)
    if idx.numel():
        std = T.scaled(value[idx, 1], settings.noise_std).view(view)
        noise = torch.randn((idx.numel(), *image.shape[1:]), generator=noise_generator,
                            device=device, dtype=torch.float32)
        image[idx] = (image[idx] + noise * std).to(image.dtype)
    idx = _selected(draws.apply[:, 2], device)
    if idx.numel():
        radius = math.ceil(3.0 * settings.blur_sigma[1])  # 3 sigma holds 99.7 % of the kernel
        sigma = T.scaled(value[idx, 2], settings.blur_sigma)
        image[idx] = T.gaussian_blur(image[idx], sigma, radius)
    idx = _selected(draws.apply[:, 3], device)
    if idx.numel():
        factor = T.scaled(value[idx, 3], settings.brightness_range).view(view)
        image[idx] = (image[idx] * factor).to(image.dtype)
    idx = _selected(draws.apply[:, 4], device)
    if idx.numel():
        factor = T.scaled(value[idx, 4], settings.contrast_range)
        image[idx] = T.contrast(image[idx], factor).to(image.dtype)
    if draws.extra_apply is not None and draws.extra_value is not None:
        _intensity_extras(image, draws.extra_apply, draws.extra_value, settings)


def _intensity_extras(image: torch.Tensor, apply: torch.Tensor, value: torch.Tensor,
                      settings: AugmentSettings) -> None:
    """nnU-Net's order after contrast: low resolution, inverted gamma, gamma; in place.

    ``apply`` and ``value`` are the host draws: the low-resolution factors size tensors, so
    they are read on the host, and only the gamma draws are copied to the device.
    """
    device = image.device
    idx = _selected(apply[:, 4], device)
    if idx.numel():
        image[idx] = T.lowres(image[idx], T.scaled(value[apply[:, 4], 5], settings.lowres_range))
    value = T.to_device(value, device)
    for column, inverted in ((3, True), (2, False)):
        idx = _selected(apply[:, column], device)
        if idx.numel():
            side, u = (value[idx, 3], value[idx, 4]) if inverted else (value[idx, 1],
                                                                       value[idx, 2])
            gamma = T.gamma_exponents(side, u, settings.gamma_range)
            image[idx] = T.apply_gamma(image[idx], gamma, inverted).to(image.dtype)


def augment(image: torch.Tensor, seg: torch.Tensor, settings: AugmentSettings,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch; new tensors are returned, the inputs are left unchanged.

    Args:
        image: ``(B, C, *spatial)`` floating point, 2 or 3 spatial axes.
        seg: ``(B, 1, *spatial)`` integer labels on the same device.
        settings: probabilities and ranges; ``settings.enabled=False`` returns the inputs.
        generator: the only source of randomness (best on the CPU; the batch's device works
            too), so the same generator state gives the same output.

    Returns:
        ``(image, seg)`` with the input shapes and dtypes; seg holds only values it held before.
    """
    _check(image, seg)
    if not settings.enabled:
        return image, seg
    draws = Draws.draw(image.shape[0], image.ndim - 2, settings, generator)
    noise_generator = _device_generator(generator, image.device)
    image, seg = image.clone(), seg.clone()
    _spatial(image, seg, draws, settings)
    # a view: the in-place writes of the intensity transforms reach `image`
    n = settings.intensity_channels
    _intensity(image[:, :n] if n else image, draws, settings, noise_generator)
    return image, seg
