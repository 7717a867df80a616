"""images.py: the header-only pixel limit in open_rgb / load_chw (used by the classification prep)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_modules.data.images import DEFAULT_MAX_IMAGE_PIXELS, BadImage, load_chw, open_image, open_rgb


def _png_claiming(path: Path, w: int, h: int) -> Path:
    """A tiny valid PNG whose IHDR then claims w x h pixels (CRC fixed): only a decode would notice."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_default_limit_is_100_megapixels():
    assert DEFAULT_MAX_IMAGE_PIXELS == 100_000_000


@pytest.mark.parametrize("w, h, mp", [(60000, 60000, "3600.0"), (13000, 13000, "169.0")])
def test_huge_header_rejected_before_decoding(tmp_path, w, h, mp):
    path = _png_claiming(tmp_path / "big.png", w, h)
    for load in (lambda: open_rgb(path), lambda: load_chw(path, 32)):
        with pytest.raises(BadImage) as e:
            load()
        assert str(e.value) == f"image is {w}x{h} ({mp} MP), over the max_image_pixels limit of 100 MP"
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's own guard is back in place afterwards


def test_our_limit_decides_not_pils(tmp_path):
    # 95 MP is over PIL's warning threshold (89 MP) but under ours: the header passes, the (fake) data fails
    path = _png_claiming(tmp_path / "big.png", 10000, 9500)
    with pytest.raises(BadImage, match="corrupt or truncated"):
        open_rgb(path)
    with pytest.raises(BadImage, match=r"limit of 90 MP"):
        load_chw(path, 32, max_pixels=90_000_000)


def test_normal_images_still_load(tmp_path):
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "a.png")
    assert open_rgb(tmp_path / "a.png").size == (40, 30)
    chw = load_chw(tmp_path / "a.png", 16, max_pixels=1200)  # exactly at the limit passes
    assert chw.shape == (3, 16, 16) and chw.dtype == np.uint8
    with pytest.raises(BadImage, match="over the max_image_pixels limit"):
        open_rgb(tmp_path / "a.png", max_pixels=1199)
    with open_image(tmp_path / "a.png") as im:
        assert im.size == (40, 30)
