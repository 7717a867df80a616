"""Detection augmentation on torchvision transforms v2 with `tv_tensors.BoundingBoxes` (XYXY pixels).

A sample is `(image, target)`: `image` a uint8 CHW `tv_tensors.Image`, `target` a dict
`{"boxes": BoundingBoxes, "labels": tensor[N]}`. Every transform takes and returns such a pair.
Randomness comes from torch's global generator only, so `torch.manual_seed` makes it repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

FILL = 114  # YOLO's grey: neutral for the network, distinct from black image borders


def make_sample(image: torch.Tensor, boxes, labels) -> tuple[tv_tensors.Image, dict]:
    """Wrap a uint8 CHW tensor, XYXY pixel boxes and labels as a v2 sample."""
    image = tv_tensors.Image(image)
    boxes = tv_tensors.BoundingBoxes(
        torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=tuple(image.shape[-2:])
    )
    return image, {"boxes": boxes, "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1)}


def _with_boxes(target: dict, boxes: torch.Tensor, keep: torch.Tensor, canvas: tuple[int, int]) -> dict:
    out = dict(target)
    out["boxes"] = tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=canvas)
    out["labels"] = target["labels"][keep]
    return out


# --- letterbox -----------------------------------------------------------------------------------


def letterbox(image: torch.Tensor, target: dict, size: int, fill: int = FILL):
    """Resize keeping aspect ratio so the long side is `size`, pad to `size` x `size` (centred).

    Returns `(image, target, scale, (pad_x, pad_y))`; map predictions back with `unletterbox_boxes`.
    """
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    image, boxes = F.resize(image, [nh, nw], antialias=True), F.resize(target["boxes"], [nh, nw])
    padding = [pad_x, pad_y, size - nw - pad_x, size - nh - pad_y]  # left, top, right, bottom
    image, boxes = F.pad(image, padding, fill=fill), F.pad(boxes, padding)
    return image, {**target, "boxes": boxes}, scale, (pad_x, pad_y)


def unletterbox_boxes(boxes: torch.Tensor, scale, pad, orig_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Map XYXY boxes from letterboxed pixels back to the original image (clipped if `orig_size`=(h, w))."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    shift = boxes.new_tensor([pad[0], pad[1], pad[0], pad[1]])
    out = (boxes - shift) / scale
    if orig_size is not None:
        h, w = orig_size
        out = torch.stack(
            [out[..., 0].clamp(0, w), out[..., 1].clamp(0, h), out[..., 2].clamp(0, w), out[..., 3].clamp(0, h)], dim=-1
        )
    return out


class Letterbox:
    """Letterbox as a pipeline step; records `scale`, `pad` and `orig_size` (h, w) in the target."""

    def __init__(self, size: int, fill: int = FILL):
        self.size, self.fill = size, fill

    def __call__(self, image, target):
        orig = tuple(int(v) for v in image.shape[-2:])
        image, target, scale, pad = letterbox(image, target, self.size, self.fill)
        return image, {**target, "scale": scale, "pad": pad, "orig_size": orig}


# --- mosaic --------------------------------------------------------------------------------------


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] from torch's generator (seeded by torch.manual_seed)."""
    return int(torch.randint(lo, hi + 1, ()).item()) if hi > lo else lo


def mosaic(
    samples: Sequence[tuple[torch.Tensor, dict]],
    size: int,
    fill: int = FILL,
    min_size: float = 2.0,
    min_visible: float = 0.2,
):
    """Four samples, each resized to long side `size`, meet at a random centre of a 2S canvas.

    An S x S window containing the centre is cropped out. Boxes are clipped to the window and dropped
    when a side falls under `min_size` px or less than `min_visible` of their area stays visible.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic needs 4 samples, got {len(samples)}")
    s2 = 2 * size
    xc, yc = _randint(size // 2, s2 - size // 2), _randint(size // 2, s2 - size // 2)
    first = samples[0][0]
    canvas = torch.full((first.shape[0], s2, s2), fill, dtype=first.dtype, device=first.device)
    all_boxes, all_labels = [], []
    for k, (image, target) in enumerate(samples):
        h, w = image.shape[-2:]
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image, boxes = F.resize(image, [nh, nw], antialias=True), F.resize(target["boxes"], [nh, nw])
        # quadrant k: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right of the centre
        ox = xc - nw if k in (0, 2) else xc
        oy = yc - nh if k in (0, 1) else yc
        x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + nw, s2), min(oy + nh, s2)
        canvas[:, y0:y1, x0:x1] = image[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        all_boxes.append(boxes.as_subclass(torch.Tensor).float() + boxes.new_tensor([ox, oy, ox, oy]).float())
        all_labels.append(target["labels"])
    # crop window: inside the canvas and containing the centre, so all four images can show
    cx0 = _randint(max(0, xc - size), min(s2 - size, xc))
    cy0 = _randint(max(0, yc - size), min(s2 - size, yc))
    out = tv_tensors.Image(canvas[:, cy0 : cy0 + size, cx0 : cx0 + size].clone())
    boxes = torch.cat(all_boxes)
    boxes = boxes - boxes.new_tensor([cx0, cy0, cx0, cy0])
    labels = torch.cat(all_labels)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = boxes.clamp(0, size)
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (cw >= min_size) & (ch >= min_size) & (cw * ch >= min_visible * area.clamp(min=1e-6))
    target = {k: v for k, v in samples[0][1].items() if k not in ("boxes", "labels")}
    target.update(labels=labels)
    return out, _with_boxes(target, clipped, keep, (size, size))


# --- pipelines -----------------------------------------------------------------------------------


@dataclass
class AffineConfig:
    """Small geometric jitter (v2.RandomAffine); translate/scale are fractions, degrees/shear degrees."""

    degrees: float = 0.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.75, 1.25)
    shear: float = 0.0


@dataclass
class HSVConfig:
    """Colour jitter (v2.ColorJitter): hue in [0, 0.5], saturation/brightness as +- fractions.

    Hue is off by default: its RGB -> HSV -> RGB round trip was 40% of a training sample's CPU time
    (2.5 of 6.5 ms at 192 px), for a shift (YOLOv5's 0.015) that brightness and saturation nearly cover."""

    hue: float = 0.0
    saturation: float = 0.7
    brightness: float = 0.4


def sanitize(min_size: float = 2.0) -> v2.Transform:
    """Clamp boxes to the canvas, then drop degenerate ones together with their labels."""
    return v2.Compose([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=min_size)])


class TrainTransform:
    """Mosaic (with `mosaic_prob`) or letterbox, then affine, HSV, flip and sanitize.

    Call `t(image, target, extras=[(img, tgt)] * 3)`: datasets pass `t.num_extras` other random
    samples so mosaic can happen; without them the sample is only letterboxed.
    """

    def __init__(
        self,
        image_size: int,
        *,
        mosaic_prob: float = 0.0,
        affine: AffineConfig | bool | None = None,
        hsv: HSVConfig | bool | None = None,
        flip: float | bool = 0.5,
        fill: int = FILL,
    ):
        self.size, self.mosaic_prob, self.fill = image_size, mosaic_prob, fill
        # True means "on with defaults", False/None "off"; flip=True is the usual p=0.5
        affine = AffineConfig() if affine is True else (affine or None)
        hsv = HSVConfig() if hsv is True else (hsv or None)
        flip = (0.5 if flip else 0.0) if isinstance(flip, bool) else float(flip)
        steps: list = []
        if affine is not None:
            steps.append(
                v2.RandomAffine(
                    degrees=affine.degrees,
                    translate=(affine.translate,) * 2,
                    scale=affine.scale,
                    shear=affine.shear or None,
                    fill=fill,
                )
            )
        if hsv is not None:
            steps.append(v2.ColorJitter(brightness=hsv.brightness, saturation=hsv.saturation, hue=hsv.hue))
        if flip > 0:
            steps.append(v2.RandomHorizontalFlip(p=flip))
        steps.append(sanitize())
        self.rest = v2.Compose(steps)

    @property
    def num_extras(self) -> int:
        return 3 if self.mosaic_prob > 0 else 0

    def __call__(self, image, target, extras: Sequence[tuple[torch.Tensor, dict]] = ()):
        use_mosaic = self.mosaic_prob > 0 and float(torch.rand(())) < self.mosaic_prob
        if use_mosaic and len(extras) >= 3:
            image, target = mosaic([(image, target), *extras[:3]], self.size, self.fill)
        else:
            image, target, _, _ = letterbox(image, target, self.size, self.fill)
        return self.rest(image, target)


def build_train_transform(
    image_size: int,
    *,
    mosaic_prob: float = 0.5,
    affine: AffineConfig | bool | None = True,
    hsv: HSVConfig | bool | None = True,
    flip: float | bool = 0.5,
) -> TrainTransform:
    """Training pipeline; `affine`/`hsv` take a config, True (defaults) or False/None (off)."""
    return TrainTransform(image_size, mosaic_prob=mosaic_prob, affine=affine, hsv=hsv, flip=flip)


def build_eval_transform(image_size: int) -> v2.Compose:
    """Evaluation pipeline: letterbox only (scale/pad/orig_size recorded in the target)."""
    # min_size 1: only truly degenerate ground truth is dropped at evaluation
    return v2.Compose([Letterbox(image_size), sanitize(min_size=1.0)])
