"""The tensor operations behind :func:`nnpipe.data.augment.augment`, one per transform.

Each works on a whole batch, or on the subset of samples ``idx`` it applies to, as a few
tensor operations on the batch's device; :mod:`nnpipe.data.augment` draws the random numbers
and decides which samples each transform touches. Shapes as there: ``image``
``(B, C, *spatial)`` floating point, ``seg`` ``(B, 1, *spatial)`` integer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Range = tuple[float, float]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor ``t`` on ``device``, without making the host wait for the device.

    A plain ``.to("cuda")`` from pageable memory returns only after the copy, and the copy
    waits for every kernel queued before it: a synchronisation per call. Staged in pinned
    memory, the copy is queued like a kernel (the caching host allocator keeps the block until
    the copy has run).
    """
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def scaled(u: torch.Tensor, bounds: Range) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def zoom(image: torch.Tensor, seg: torch.Tensor, idx: torch.Tensor, scale: torch.Tensor,
          shift_u: torch.Tensor) -> None:
    """Zoom the samples ``idx`` in place by ``scale`` (n,) at a random offset (``shift_u`` (n, d)).

    An affine grid maps the output patch onto a region ``1/scale`` as large; ``shift_u`` in
    [0, 1) places that region anywhere inside the patch (normalized coordinates, so the region
    never leaves the volume). Image: (tri)linear; seg: nearest, so labels stay labels.
    """
    n, dim = shift_u.shape
    inverse = 1.0 / scale
    theta = torch.zeros((n, dim, dim + 1), dtype=torch.float32, device=image.device)
    axes = torch.arange(dim, device=image.device)
    theta[:, axes, axes] = inverse[:, None]
    theta[:, :, dim] = (2.0 * shift_u - 1.0) * (1.0 - inverse)[:, None]
    grid = F.affine_grid(theta, [n, 1, *image.shape[2:]], align_corners=False)
    sub = image[idx]
    image[idx] = F.grid_sample(sub.float(), grid, mode="bilinear", padding_mode="border",
                               align_corners=False).to(image.dtype)
    labels = F.grid_sample(seg[idx].float(), grid, mode="nearest", padding_mode="border",
                           align_corners=False)
    seg[idx] = labels.round().to(seg.dtype)


def rotation_matrices(angles: torch.Tensor, dim: int) -> torch.Tensor:
    """Rotation matrices (n, dim, dim) for ``angles`` (n, 3) in radians, tensor-axis order.

    2D: one in-plane rotation by ``angles[:, 0]``. 3D: ``angles[:, k]`` rotates about spatial
    axis ``k`` (the plane of the other two), composed as R0 @ R1 @ R2.
    """
    n = angles.shape[0]
    eye = torch.eye(dim, dtype=angles.dtype, device=angles.device).repeat(n, 1, 1)
    planes = [(0, 1)] if dim == 2 else [(1, 2), (0, 2), (0, 1)]
    result = eye
    for k, (i, j) in enumerate(planes):
        c, s = torch.cos(angles[:, k]), torch.sin(angles[:, k])
        r = eye.clone()
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        result = result @ r
    return result


def sampling_matrices(angles_deg: torch.Tensor, scale: torch.Tensor, dim: int) -> torch.Tensor:
    """Where each output voxel reads its input: (n, dim, dim), tensor-axis order, in voxels.

    The content is rotated by ``angles_deg`` (n, 3) degrees and magnified by ``scale`` (n,)
    about the patch centre, so an output offset ``o`` (voxels from the centre) reads the input
    at ``R^T o / scale``. Shared with the DALI backend so both resample the same way.
    """
    rot = rotation_matrices(torch.deg2rad(angles_deg.double()), dim)
    return (rot.transpose(1, 2) / scale.double()[:, None, None]).float()


def resample(image: torch.Tensor, seg: torch.Tensor, idx: torch.Tensor,
              matrices: torch.Tensor) -> None:
    """Resample the samples ``idx`` in place through centred voxel matrices (n, dim, dim).

    ``affine_grid`` works in normalized coordinates with the axes reversed (x is the last
    axis); the voxel matrix is converted so that rotations stay rotations on a non-cubic
    patch. Outside the input: image 0 and seg 0 (background), like the sampler's padding.
    """
    n, dim = matrices.shape[0], image.ndim - 2
    # theta is built where the matrices are (the host, in augment) and copied in one go
    reversed_matrices = matrices.flip(1).flip(2)
    half = torch.tensor(image.shape[2:][::-1], dtype=torch.float32, device=matrices.device) / 2
    theta = torch.zeros((n, dim, dim + 1), dtype=torch.float32, device=matrices.device)
    theta[:, :, :dim] = reversed_matrices * half[None, None, :] / half[None, :, None]
    grid = F.affine_grid(to_device(theta, image.device), [n, 1, *image.shape[2:]],
                         align_corners=False)
    image[idx] = F.grid_sample(image[idx].float(), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False).to(image.dtype)
    labels = F.grid_sample(seg[idx].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)
    seg[idx] = labels.round().to(seg.dtype)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur each sample of ``x`` (n, C, *spatial) with its own ``sigma`` (n,), in voxels.

    Separable: one depthwise convolution per axis, all samples and channels as groups of a
    single convolution; borders replicate the edge voxel so the intensity level is kept.
    """
    n, channels, *spatial = x.shape
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    conv = F.conv3d if len(spatial) == 3 else F.conv2d
    out = x.float().reshape(1, n * channels, *spatial)
    for axis in range(len(spatial)):
        shape = [n * channels, 1] + [1] * len(spatial)
        shape[2 + axis] = 2 * radius + 1
        pad = [0, 0] * len(spatial)
        last = len(spatial) - 1 - axis  # F.pad lists the last axis first
        pad[2 * last: 2 * last + 2] = [radius, radius]
        out = conv(F.pad(out, pad, mode="replicate"), kernel.reshape(shape),
                   groups=n * channels)
    return out.reshape(x.shape).to(x.dtype)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale ``x`` (n, C, *spatial) about its per-channel mean; clip to each channel's range."""
    dims = tuple(range(2, x.ndim))
    view = (-1,) + (1,) * (x.ndim - 1)
    mean = x.mean(dim=dims, keepdim=True)
    low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    return torch.clamp((x - mean) * factor.view(view) + mean, low, high)


def gamma_exponents(side: torch.Tensor, u: torch.Tensor, bounds: Range) -> torch.Tensor:
    """Gamma per sample as nnU-Net draws it: below and above 1 equally often when the range
    straddles 1 (``side`` < 0.5 picks [low, 1)), uniform over the range otherwise."""
    low, high = bounds
    if low < 1.0 < high:
        return torch.where(side < 0.5, low + (1.0 - low) * u, 1.0 + (high - 1.0) * u)
    return scaled(u, bounds)


def apply_gamma(x: torch.Tensor, gamma: torch.Tensor, inverted: bool) -> torch.Tensor:
    """Gamma on each channel of ``x`` (n, C, *spatial) rescaled to [0, 1], range kept.

    ``inverted`` applies it to the inverted image (the channel maximum maps to 0). A constant
    channel is left unchanged.
    """
    dims = tuple(range(2, x.ndim))
    view = (-1,) + (1,) * (x.ndim - 1)
    x = x.float()
    low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    spread = high - low
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    unit = ((high - x) if inverted else (x - low)) / safe
    curved = unit.clamp(0.0, 1.0) ** gamma.view(view)
    return high - curved * spread if inverted else low + curved * spread


def lowres(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Simulate a resolution ``factor`` (n,) times coarser: nearest down, smooth back up.

    Up is bicubic in 2D and trilinear in 3D (torch has no tricubic). Each sample has its own
    coarse size, so this loops over the (few) selected samples.
    """
    spatial = x.shape[2:]
    mode = "bicubic" if len(spatial) == 2 else "trilinear"
    out = torch.empty_like(x)
    for k in range(x.shape[0]):
        coarse = [max(1, round(s / float(factor[k]))) for s in spatial]
        small = F.interpolate(x[k: k + 1].float(), size=coarse, mode="nearest")
        out[k] = F.interpolate(small, size=list(spatial), mode=mode,
                               align_corners=False)[0].to(x.dtype)
    return out
