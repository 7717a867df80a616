"""Darknet cfg reader, model builder, Darknet-style counting and .weights I/O."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
import torch

from lightning_modules.errors import DataError
from lightning_modules.interop.darknet import build_model, load_weights, parse_cfg, save_weights, summary
from lightning_modules.interop.darknet import cfgs as bundled_cfgs
from lightning_modules.interop.darknet.cfg import parse_cfg_text
from lightning_modules.interop.darknet.cli import add_darknet_commands
from lightning_modules.interop.darknet.layers import Reorg, Shortcut, _reorg_index
from lightning_modules.interop.darknet.weights import count_floats, read_header

# Every official Darknet cfg (34, both repositories) ships with the package (lightning_modules/interop/darknet/cfgs,
# with the sha256 each had at its source commit): the tests read nothing outside the checkout.
BUNDLED = bundled_cfgs.DIR


# ---------------------------------------------------------------------------------------------
# Every official cfg parses, builds, and the module agrees with the analytic count


def _check_parses_and_builds(path: Path) -> None:
    d = summary(path)
    with torch.device("meta"):
        model = build_model(path)
        out = model(torch.empty(1, d["channels"], *d["input_size"]))
    assert sum(p.numel() for p in model.parameters()) == d["params"]
    shapes = [tuple(t.shape[1:]) for t in out] if isinstance(out, list) else [tuple(out.shape[1:])]
    heads = [tuple(r["output_shape"]) for r in d["layers"] if r["type"] in ("yolo", "region", "detection")]
    assert shapes == (heads or [tuple(d["layers"][-1]["output_shape"])])


@pytest.mark.parametrize("name", bundled_cfgs.names())
def test_every_bundled_cfg_parses_and_builds(name: str) -> None:
    _check_parses_and_builds(bundled_cfgs.path(name))


def test_bundled_cfgs_match_the_official_hashes_recorded_with_them() -> None:
    """Runs everywhere: each bundled cfg is byte-for-byte the official file whose sha256 the bundle's
    README recorded at its source commit."""
    readme = (BUNDLED / "README.md").read_text()
    recorded = dict(line.split()[::-1] for line in readme.split("```")[1].strip().splitlines())
    assert sorted(recorded) == bundled_cfgs.names()
    actual = {n: hashlib.sha256((BUNDLED / n).read_bytes()).hexdigest() for n in bundled_cfgs.names()}
    assert actual == recorded


def test_bundled_cfg_accessor() -> None:
    assert len(bundled_cfgs.names()) == 34 and (BUNDLED / "README.md").is_file()
    assert bundled_cfgs.path("yolov3") == bundled_cfgs.path("yolov3.cfg") == BUNDLED / "yolov3.cfg"
    assert bundled_cfgs.path("alexeyab/yolov3.cfg").is_file()
    with pytest.raises(FileNotFoundError, match="no bundled Darknet cfg"):
        bundled_cfgs.path("yolov4")


# (cfg, input size, published params or None, published BFLOPs, which layers the figure counts)
PUBLISHED = [
    ("yolov3.cfg", 416, 61_949_149, 65.86, None),
    ("alexeyab/yolov3.cfg", 416, 61_949_149, 65.86, None),
    ("yolov3.cfg", 320, 61_949_149, 38.97, None),
    ("yolov3.cfg", 608, 61_949_149, 140.69, None),
    ("yolov3-spp.cfg", 608, None, 141.45, None),
    ("yolov3-tiny.cfg", 416, None, 5.56, None),  # Darknet's log: 5.565 (the table truncates)
    ("yolov2.cfg", 608, None, 62.94, None),
    ("yolov2-tiny.cfg", 416, None, 5.41, None),
    ("darknet19.cfg", 224, None, 5.58, None),
    ("darknet19.cfg", 256, None, 7.29, None),
    ("alexeyab/darknet19.cfg", 224, None, 5.58, None),
    ("darknet53.cfg", 256, None, 18.57, None),
    ("extraction.cfg", 224, None, 8.52, None),
    ("vgg-16.cfg", None, 138_357_544, 30.69, "convolutional"),  # 256 input cropped to 224
    ("resnet18.cfg", 224, 11_689_512 - 173_824, None, None),  # torchvision minus projections
    ("resnet34.cfg", 224, 21_797_672 - 173_824, None, None),
]


@pytest.mark.parametrize("name,size,params,bflops,only", PUBLISHED, ids=lambda v: str(v))
def test_published_figures(name: str, size, params, bflops, only) -> None:
    d = summary(BUNDLED / name, size)
    if params is not None:
        assert d["params"] == params
    if bflops is not None:
        got = d["bflops_by_type"][only] if only else d["bflops"]
        # Published tables print 2 decimals, some rounded, some truncated (yolov3-tiny: 5.565 -> 5.56).
        assert round(got, 2) == bflops or f"{got:.3f}"[:-1] == f"{bflops:.2f}", got


def test_yolov3_tiny_printed_log_value() -> None:
    assert f"{summary(BUNDLED / 'yolov3-tiny.cfg')['bflops']:.3f}" == "5.565"
    assert f"{summary(BUNDLED / 'yolov3.cfg', 416)['bflops']:.3f}" == "65.864"


# ---------------------------------------------------------------------------------------------
# Forward semantics of the Darknet-specific layers, checked against Darknet's C loops


def _reorg_cpu(x: list[float], w: int, h: int, c: int, stride: int, forward: bool) -> list[float]:
    out = [0.0] * len(x)
    out_c = c // (stride * stride)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                in_index = i + w * (j + h * k)
                c2, offset = k % out_c, k // out_c
                w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                out_index = w2 + w * stride * (h2 + h * stride * c2)
                if forward:
                    out[out_index] = x[in_index]
                else:
                    out[in_index] = x[out_index]
    return out


@pytest.mark.parametrize("mode", ["pjreddie", "alexeyab"])
def test_reorg_matches_darknet_loop(mode: str) -> None:
    cfg = parse_cfg_text("[net]\nwidth=4\nheight=4\nchannels=8\n[reorg]\nstride=2\n")
    layer = Reorg(cfg.layers[0], mode)
    x = torch.arange(2 * 8 * 4 * 4, dtype=torch.float32).reshape(2, 8, 4, 4)
    y = layer(x)
    assert y.shape == (2, 32, 2, 2)
    dims = (4, 4, 8) if mode == "pjreddie" else (2, 2, 32)
    for b in range(2):
        want = _reorg_cpu(x[b].flatten().tolist(), *dims, 2, False)
        assert y[b].flatten().tolist() == want
    assert _reorg_index(2, 2, 32, 2, True).sort().values.tolist() == list(range(128))


def test_shortcut_between_different_sizes_matches_darknet() -> None:
    s = parse_cfg_text("[net]\nwidth=4\nheight=4\nchannels=2\n[shortcut]\nfrom=-1\n").layers[0]
    layer = Shortcut(s)
    prev = torch.randn(1, 4, 2, 2)  # out: w2 = 2, c2 = 4
    add = torch.randn(1, 2, 4, 4)  # from: w1 = 4, c1 = 2 -> stride 2 over the first 2 channels
    y = layer(prev, add)
    want = prev.clone()
    for k in range(2):
        for j in range(2):
            for i in range(2):
                want[0, k, j, i] += add[0, k, 2 * j, 2 * i]
    assert torch.equal(y, want)


def test_maxpool_padding_and_sizes() -> None:
    text = "[net]\nwidth=13\nheight=13\nchannels=1\n[maxpool]\nsize=2\nstride=1\n[maxpool]\nsize=2\nstride=2\n"
    model = build_model(parse_cfg_text(text)).eval()
    x = torch.randn(1, 1, 13, 13)
    y1 = model.layers[0](x)
    assert y1.shape == (1, 1, 13, 13)
    # Darknet pads bottom/right only for size 2: out[j, i] = max over rows j..j+1, cols i..i+1 clipped.
    assert torch.equal(y1[0, 0, 12, 12], x[0, 0, 12, 12])
    assert torch.equal(y1[0, 0, 0, 0], x[0, 0, :2, :2].max())
    assert model(x).shape == (1, 1, 7, 7)  # (13 + 1 - 2) // 2 + 1


def test_fully_convolutional_cfg_runs_on_other_sizes() -> None:
    model = build_model(BUNDLED / "yolov3-tiny.cfg", 64).eval()
    with torch.no_grad():
        for size in (64, 96):
            out = model(torch.rand(1, 3, size, size))
            assert [tuple(t.shape) for t in out] == [(1, 255, size // 32, size // 32), (1, 255, size // 16, size // 16)]
    assert [h.classes for h in model.heads] == [80, 80]


# ---------------------------------------------------------------------------------------------
# .weights round trip


TINY_DET = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=16
size=3
stride=2
pad=1
groups=2
activation=mish

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=swish

[shortcut]
from=-2
activation=linear

[route]
layers=1
groups=2
group_id=1

[reorg]
stride=2

[route]
layers=-1,-3

[upsample]
stride=2

[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,5, 8,9, 12,13
classes=2
num=3
"""

TINY_CLS = """[net]
width=12
height=12
channels=3

[crop]
crop_width=10
crop_height=10

[convolutional]
batch_normalize=1
filters=4
size=3
stride=2
pad=1
activation=relu

[local]
size=3
stride=1
pad=1
filters=3
activation=leaky

[connected]
output=20
batch_normalize=1
activation=logistic

[dropout]
probability=.5

[connected]
output=1715
activation=linear

[detection]
classes=20
coords=4
side=7
num=3
"""


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) * 0.5 + 0.25
                    if t.ndim == 1
                    else torch.randn(t.shape, generator=g) * 0.2
                )


@pytest.mark.parametrize("text,size", [(TINY_DET, 32), (TINY_CLS, 12), (None, 64)], ids=["det", "cls", "yolov3-tiny"])
def test_weights_round_trip(tmp_path: Path, text: str | None, size: int) -> None:
    cfg = parse_cfg_text(text, "tiny.cfg") if text else parse_cfg(BUNDLED / "yolov3-tiny.cfg")
    a = build_model(cfg, size)
    _randomize(a)
    a.header = {"major": 0, "minor": 2, "revision": 5, "seen": 123_456_789_012}
    path = tmp_path / "m.weights"
    n = save_weights(a, path)
    assert n == count_floats(a) and path.stat().st_size == 20 + 4 * n
    b = build_model(cfg, size)
    assert load_weights(b, path) == a.header
    a.eval(), b.eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    ya, yb = (ya, yb) if isinstance(ya, list) else ([ya], [yb])
    assert all(torch.equal(p, q) for p, q in zip(ya, yb))
    save_weights(b, tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == path.read_bytes()


def test_old_header_and_partial_backbone(tmp_path: Path) -> None:
    cfg = parse_cfg_text(TINY_DET, "tiny.cfg")
    a = build_model(cfg)
    _randomize(a, 1)
    a.header = {"major": 0, "minor": 1, "revision": 0, "seen": 77}  # seen as int32
    save_weights(a, tmp_path / "old.weights")
    assert read_header(tmp_path / "old.weights") == (a.header, 16)
    save_weights(a, tmp_path / "part.weights", upto=3)  # like darknet53.conv.74
    b = build_model(cfg)
    load_weights(b, tmp_path / "part.weights", upto=3)
    assert torch.equal(b.layers[2].conv.weight, a.layers[2].conv.weight)
    assert not torch.equal(b.layers[3].conv.weight, a.layers[3].conv.weight)


def test_short_or_long_weights_file_is_a_data_error(tmp_path: Path) -> None:
    model = build_model(parse_cfg_text(TINY_DET, "tiny.cfg"))
    path = tmp_path / "m.weights"
    save_weights(model, path)
    data = path.read_bytes()
    short = tmp_path / "short.weights"
    short.write_bytes(data[:-40])
    with pytest.raises(DataError, match=r"short\.weights.*layer 9 \(convolutional, cfg line \d+\) kernels"):
        load_weights(model, short)
    long = tmp_path / "long.weights"
    long.write_bytes(data + b"\0" * 8)
    with pytest.raises(DataError, match=r"long\.weights.*2 floats left"):
        load_weights(model, long)
    tiny = tmp_path / "tiny.weights"
    tiny.write_bytes(b"\0" * 6)
    with pytest.raises(DataError, match="tiny.weights"):
        load_weights(model, tiny)


# ---------------------------------------------------------------------------------------------
# Bad cfgs


@pytest.mark.parametrize(
    "body,line,pattern",
    [
        ("[convolutional]\nfilters=8\nthis line is wrong\n", 7, "expected key=value"),
        ("[convolutional]\nfilters=eight\n", 6, "bad value for filters"),
        ("[transformer]\n", 5, r"unknown section \[transformer\]"),
        ("[convolutional]\nactivation=sparkly\n", 6, "unknown activation"),
        ("[convolutional]\nbinary=1\n", 6, "not supported"),
        ("[route]\nlayers=-3\n", 5, "not an earlier layer"),
        ("[convolutional]\nfilters=10\n[yolo]\nmask=0\nanchors=1,1\nclasses=1\nnum=1\n", 7, "filters"),
    ],
)
def test_bad_cfg_names_file_and_line(tmp_path: Path, body: str, line: int, pattern: str) -> None:
    path = tmp_path / "bad.cfg"
    path.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n" + body)
    with pytest.raises(DataError, match=pattern) as info:
        build_model(path)
    assert f"bad.cfg:{line}:" in str(info.value)


def test_comments_whitespace_and_aliases() -> None:
    text = (
        "# hi\n[net]\n; note\n width = 8 \nheight=8\nchannels=1\n\n"
        "[conv]\nfilters = 2\nsize=3\npad=1\nactivation=leaky\n"
    )
    cfg = parse_cfg_text(text)
    assert cfg.net.width == 8 and cfg.layers[0].type == "convolutional" and cfg.layers[0].padding == 1
    assert cfg.layers[0].line == 8


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_darknet_commands(parser.add_subparsers(dest="group"))
    args = parser.parse_args(["darknet", "summary", str(BUNDLED / "yolov3.cfg"), "--size", "416", "--json"])
    args.fn(args)
    d = json.loads(capsys.readouterr().out)
    assert d["params"] == 61_949_149 and round(d["bflops"], 2) == 65.86 and len(d["layers"]) == 107
    args = parser.parse_args(["darknet", "summary", str(BUNDLED / "yolov2-tiny.cfg")])
    args.fn(args)
    assert "5.406 BFLOPs" in capsys.readouterr().out
