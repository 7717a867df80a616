"""Training augmentation on whole batches, on the training device: random resized crop, flip, colour jitter.

Once the prepared format removed decoding, per-sample Python transforms in the loader were the input
pipeline's cost (issue 16). Here the loader only stacks the stored uint8 images; the module applies this to
the batch after it reached the device (`on_after_batch_transfer`). Every image still gets its own crop,
flip and jitter: the crops become one batch of affine sampling grids and a single `grid_sample` call
resamples them all (bilinear, as torchvision's RandomResizedCrop; no antialiasing, which only matters
when a crop is shrunk, i.e. when the prepared size is larger than the training size).

torchvision's v2 transforms draw one set of parameters per call, so on a batch every image would get the
same crop: that is why this is written with plain tensor operations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_ATTEMPTS = 10  # as torchvision's RandomResizedCrop.get_params


class BatchAugment(nn.Module):
    """uint8 (or float, 0-255) images [N,3,H,W] -> float [N,3,size,size] on the 0-255 scale."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.35, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        color_jitter: float = 0.0,
    ):
        super().__init__()
        self.size = size
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.flip = flip
        self.color_jitter = color_jitter

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float()
        theta = self.crop_transforms(x.shape[0], x.shape[-2], x.shape[-1], x.device, generator)
        out = F.grid_sample(x, self.grid(theta), mode="bilinear", padding_mode="border", align_corners=False)
        if self.color_jitter > 0:
            out = self.jitter(out, generator)
        return out

    def crop_transforms(
        self, n: int, h: int, w: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """[N,2,3] affine maps from output to input coordinates (normalised), one random crop (+flip) each.

        The crop is drawn as RandomResizedCrop draws it: area fraction in `scale`, log-uniform aspect ratio,
        the first of 10 attempts that fits, else the whole image.
        """

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(shape, device=device, generator=generator)

        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * uniform(n, _ATTEMPTS))
        aspect = torch.exp(self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * uniform(n, _ATTEMPTS))
        cw, ch = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
        fits = (cw <= w) & (ch <= h)
        first = torch.argmax(fits.int(), dim=1, keepdim=True)  # index of the first attempt that fits
        any_fit = fits.any(dim=1)
        cw = torch.where(any_fit, cw.gather(1, first).squeeze(1), torch.full_like(any_fit, w, dtype=cw.dtype))
        ch = torch.where(any_fit, ch.gather(1, first).squeeze(1), torch.full_like(any_fit, h, dtype=ch.dtype))
        x0 = (w - cw) * uniform(n)
        y0 = (h - ch) * uniform(n)
        sign = torch.where(uniform(n) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n, device=device)
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0] = cw / w * sign
        theta[:, 0, 2] = (2 * x0 + cw) / w - 1
        theta[:, 1, 1] = ch / h
        theta[:, 1, 2] = (2 * y0 + ch) / h - 1
        return theta

    def grid(self, theta: torch.Tensor) -> torch.Tensor:
        """F.affine_grid(theta, [N, C, size, size], align_corners=False) for crop maps (no rotation or shear).

        A crop maps x and y separately, so the grid is two outer sums: a third of affine_grid's time,
        which builds a general [size*size, 3] x [3, 2] product per image."""
        n, s = theta.shape[0], self.size
        base = (torch.arange(s, device=theta.device, dtype=theta.dtype) * 2 + 1) / s - 1  # pixel centres
        gx = theta[:, 0, 0, None] * base + theta[:, 0, 2, None]  # [N, size]: input x of each output column
        gy = theta[:, 1, 1, None] * base + theta[:, 1, 2, None]  # [N, size]: input y of each output row
        return torch.stack((gx[:, None, :].expand(n, s, s), gy[:, :, None].expand(n, s, s)), dim=-1)

    def jitter(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Brightness, contrast and saturation, each by a factor in [1 - s, 1 + s] drawn per image."""
        n, s = x.shape[0], self.color_jitter
        factors = 1 + s * (2 * torch.rand(3, n, 1, 1, 1, device=x.device, generator=generator) - 1)
        x = x * factors[0]
        mean = _gray(x).mean(dim=(-2, -1), keepdim=True)
        x = (x - mean) * factors[1] + mean
        gray = _gray(x)
        x = (x - gray) * factors[2] + gray
        return x.clamp(0, 255)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, [N,1,H,W] (what torchvision's rgb_to_grayscale uses)."""
    r, g, b = x.unbind(dim=1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)
