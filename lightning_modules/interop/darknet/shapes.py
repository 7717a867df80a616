"""Shapes, parameters and BFLOPs of a Darknet cfg, inferred layer by layer without allocating anything
(`infer_layers`), so `summary` of a 600 MB network costs nothing and needs no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_modules.interop.darknet import cfg as C
from lightning_modules.interop.darknet.cfg import DarknetCfg, Section

Shape = tuple[int, int, int]  # (channels, height, width)


@dataclass
class LayerInfo:
    """What Darknet prints for a layer, plus where its inputs come from."""

    index: int
    section: Section
    in_shape: Shape
    out_shape: Shape
    params: int = 0
    bflops: float = 0.0
    sources: tuple[int, ...] = ()  # route/shortcut inputs (absolute layer indices)

    @property
    def type(self) -> str:
        return self.section.type


def input_hw(size: int | tuple[int, int] | None, net: C.Net) -> tuple[int, int]:
    if size is None:
        return net.height, net.width
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _index(section: Section, i: int, ref: int) -> int:
    """Darknet's indexing: negative is relative to the current layer, otherwise absolute."""
    j = i + ref if ref < 0 else ref
    if not 0 <= j < i:
        raise section.fail(f"layer {i} refers to layer {ref} (-> {j}), which is not an earlier layer")
    return j


def _conv_out(n: int, size: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (n + 2 * pad - dilation * (size - 1) - 1) // stride + 1


def _infer_one(s: Section, i: int, shape: Shape, prev: list[LayerInfo]) -> LayerInfo:
    c, h, w = shape
    info = LayerInfo(i, s, shape, shape)
    if isinstance(s, C.Convolutional):
        if c % s.groups or s.filters % s.groups:
            raise s.fail(f"channels {c} and filters {s.filters} must be divisible by groups={s.groups}")
        oh = _conv_out(h, s.size, s.stride_y, s.padding, s.dilation)
        ow = _conv_out(w, s.size, s.stride_x, s.padding, s.dilation)
        nweights = (c // s.groups) * s.filters * s.size * s.size
        info.out_shape = (s.filters, oh, ow)
        info.params = nweights + (2 if s.batch_normalize else 1) * s.filters
        info.bflops = 2.0 * nweights * oh * ow / 1e9
    elif isinstance(s, C.Local):
        pad = s.size // 2 if s.pad else 0
        oh, ow = _conv_out(h, s.size, s.stride, pad), _conv_out(w, s.size, s.stride, pad)
        nweights = c * s.filters * s.size * s.size * oh * ow  # one kernel per output location
        info.out_shape = (s.filters, oh, ow)
        info.params = nweights + s.filters * oh * ow
        info.bflops = 2.0 * nweights / 1e9
    elif isinstance(s, C.Connected):
        inputs = c * h * w
        info.out_shape = (s.output, 1, 1)
        info.params = inputs * s.output + s.output + (s.output if s.batch_normalize else 0)
        info.bflops = 2.0 * inputs * s.output / 1e9
    elif isinstance(s, C.Maxpool):
        info.out_shape = (c, (h + s.padding - s.size) // s.stride_y + 1, (w + s.padding - s.size) // s.stride_x + 1)
    elif isinstance(s, C.Avgpool):
        info.out_shape = (c, 1, 1)
    elif isinstance(s, C.Route):
        if not s.layers:
            raise s.fail("route without layers=")
        info.sources = tuple(_index(s, i, r) for r in s.layers)
        shapes = [prev[j].out_shape for j in info.sources]
        if len({sh[1:] for sh in shapes}) != 1:
            raise s.fail(f"layer {i} routes maps of different sizes: {shapes}")
        if any(sh[0] % s.groups for sh in shapes) or not 0 <= s.group_id < s.groups:
            raise s.fail(f"groups={s.groups} group_id={s.group_id} do not divide the routed channels {shapes}")
        info.in_shape = shapes[0]
        info.out_shape = (sum(sh[0] for sh in shapes) // s.groups, *shapes[0][1:])
    elif isinstance(s, C.Shortcut):
        if len(s.from_) != 1:
            raise s.fail("shortcut needs exactly one from= layer")
        info.sources = (_index(s, i, s.from_[0]),)
        _check_shortcut(s, prev[info.sources[0]].out_shape, shape)
    elif isinstance(s, C.Upsample):
        k = s.stride
        info.out_shape = (c, h * k, w * k) if k > 0 else (c, h // -k, w // -k)
    elif isinstance(s, C.Reorg):
        k = s.stride
        if s.reverse:
            if c % (k * k):
                raise s.fail(f"reverse reorg needs channels ({c}) divisible by stride^2")
            info.out_shape = (c // (k * k), h * k, w * k)
        else:
            if h % k or w % k:
                raise s.fail(f"reorg stride {k} does not divide the input size {h}x{w}")
            info.out_shape = (c * k * k, h // k, w // k)
    elif isinstance(s, C.Crop):
        info.out_shape = (c, min(s.crop_height, h), min(s.crop_width, w))
    elif isinstance(s, C.Softmax):
        if (c * h * w) % s.groups:
            raise s.fail(f"groups={s.groups} does not divide the {c * h * w} inputs")
        if s.tree:
            raise s.fail("hierarchical (tree) softmax is not supported")
    elif isinstance(s, C.Yolo):
        mask = s.mask or list(range(s.num))
        if c != len(mask) * (s.classes + 5):
            raise s.fail(
                f"the layer before has {c} filters; {len(mask)} masks x (classes {s.classes} + 5) "
                f"= {len(mask) * (s.classes + 5)} expected"
            )
        if len(s.anchors) < 2 * s.num or max(mask, default=0) >= len(s.anchors) // 2:
            raise s.fail(f"mask {mask} / num {s.num} do not match the {len(s.anchors) // 2} anchors")
    elif isinstance(s, C.Region):
        if c != s.num * (s.coords + 1 + s.classes):
            raise s.fail(
                f"the layer before has {c} filters; num {s.num} x (coords {s.coords} + 1 + classes "
                f"{s.classes}) = {s.num * (s.coords + 1 + s.classes)} expected"
            )
    elif isinstance(s, C.Detection):
        want = s.side * s.side * ((1 + s.coords) * s.num + s.classes)
        if c * h * w != want:
            raise s.fail(f"{c * h * w} inputs; side^2 x ((1 + coords) x num + classes) = {want} expected")
    return info


def _check_shortcut(s: Section, add: Shape, out: Shape) -> None:
    # Darknet adds maps of different sizes by striding/sampling; the ratios must be whole numbers.
    (_, h1, w1), (_, h2, w2) = add, out
    big, small = (w1, w2) if w1 >= w2 else (w2, w1)
    bigh, smallh = (h1, h2) if w1 >= w2 else (h2, h1)
    if small == 0 or big % small or bigh % smallh or big // small != bigh // smallh:
        raise s.fail(f"cannot add a {add} map to a {out} map")


def infer_layers(cfg: DarknetCfg, size: int | tuple[int, int] | None = None) -> list[LayerInfo]:
    """Shapes, parameters and BFLOPs of every layer at input `size` (default: the cfg's)."""
    h, w = input_hw(size, cfg.net)
    if h <= 0 or w <= 0 or cfg.net.channels <= 0:
        raise C.DataError(f"{cfg.path}:{cfg.net.line}", "[net] needs width, height and channels (or pass size)")
    shape: Shape = (cfg.net.channels, h, w)
    infos: list[LayerInfo] = []
    for i, s in enumerate(cfg.layers):
        info = _infer_one(s, i, shape, infos)
        if min(info.out_shape) <= 0:
            raise s.fail(
                f"layer {i} gets input {info.in_shape} and would output {info.out_shape}; "
                f"input size {h}x{w} is too small for this cfg"
            )
        infos.append(info)
        shape = info.out_shape
    return infos


def load_cfg(cfg: str | Path | DarknetCfg) -> DarknetCfg:
    return cfg if isinstance(cfg, DarknetCfg) else C.parse_cfg(cfg)


def summary(cfg_path: str | Path | DarknetCfg, size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """Darknet's printout as a dict: `layers`, `params`, `bflops` (2 x multiply-adds of conv, local
    and connected layers), `bflops_by_type`, `input_size` [h, w]."""
    cfg = load_cfg(cfg_path)
    infos = infer_layers(cfg, size)
    layers = []
    by_type: dict[str, float] = {}
    for info in infos:
        s = info.section
        layers.append(
            {
                "index": info.index,
                "type": info.type,
                "line": s.line,
                "filters": getattr(s, "filters", getattr(s, "output", None)),
                "size": getattr(s, "size", None),
                "stride": getattr(s, "stride", None),
                "input_shape": list(info.in_shape),
                "output_shape": list(info.out_shape),
                "bflops": info.bflops,
                "params": info.params,
                **({"sources": list(info.sources)} if info.sources else {}),
            }
        )
        if info.bflops:
            by_type[info.type] = by_type.get(info.type, 0.0) + info.bflops
    return {
        "cfg": cfg.path,
        "input_size": list(input_hw(size, cfg.net)),
        "channels": cfg.net.channels,
        "layers": layers,
        "params": sum(i.params for i in infos),
        "bflops": sum(i.bflops for i in infos),
        "bflops_by_type": by_type,
    }


def format_summary(d: dict[str, Any]) -> str:
    """Darknet-style table."""
    lines = [
        f"{'layer':>5} {'type':<14}{'filters':>8} {'size/strd':>10} {'input':>16}    {'output':>16} "
        f"{'BFLOPs':>8} {'params':>11}"
    ]
    for r in d["layers"]:
        ss = f"{r['size']}x{r['size']}/{r['stride']}" if r["size"] else (f"/{r['stride']}" if r["stride"] else "")
        shp = lambda t: f"{t[2]}x{t[1]}x{t[0]}"  # noqa: E731  Darknet prints w x h x c
        src = f" <- {','.join(map(str, r['sources']))}" if "sources" in r else ""
        lines.append(
            f"{r['index']:>5} {r['type']:<14}{r['filters'] or '':>8} {ss:>10} "
            f"{shp(r['input_shape']):>16} -> {shp(r['output_shape']):>16} "
            f"{r['bflops']:>8.3f} {r['params']:>11,}{src}"
        )
    lines.append(
        f"input {d['input_size'][1]}x{d['input_size'][0]}x{d['channels']}: "
        f"{d['params']:,} parameters, {d['bflops']:.3f} BFLOPs"
    )
    return "\n".join(lines)
