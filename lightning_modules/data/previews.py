"""A captioned grid of sample images, saved as PNG, so a user can eyeball what was prepared."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAPTION_HEIGHT = 14
PAD = 4


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """PIL image or uint8 array (HWC, CHW or HW; a float array is taken as 0..1) -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = np.clip(arr * 255.0 if arr.max(initial=0) <= 1.0 else arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def save_grid(
    images: list[Image.Image | np.ndarray],
    captions: list[str],
    path: str | Path,
    *,
    columns: int | None = None,
    tile: int = 128,
) -> Path:
    """Save `images` as a grid of `tile`-pixel tiles with one caption under each; returns the path."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    path = Path(path)
    n = max(len(images), 1)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    cell_w, cell_h = tile + PAD, tile + CAPTION_HEIGHT + PAD
    grid = Image.new("RGB", (columns * cell_w + PAD, rows * cell_h + PAD), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, (image, caption) in enumerate(zip(images, captions)):
        pil = to_pil(image)
        scale = tile / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BILINEAR)
        x, y = PAD + (i % columns) * cell_w, PAD + (i // columns) * cell_h
        grid.paste(pil, (x + (tile - pil.width) // 2, y + (tile - pil.height) // 2))
        draw.text((x, y + tile + 1), _fit(draw, caption, font, tile), fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, compress_level=1)  # fast; a preview need not be small
    return path


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten `text` with an ellipsis until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
