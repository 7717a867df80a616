"""Read Darknet `.cfg` files (pjreddie/darknet and AlexeyAB/darknet) into typed sections.

The syntax follows Darknet's `read_cfg`: `[section]` headers, `key=value` lines, blanks and lines
starting with `#` or `;` ignored, all whitespace inside a line removed. Keys a section does not model
(training settings, augmentation) are kept in `extra`; options that change the network in a way this
reader does not implement are refused, so a model is never silently wrong.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lightning_modules.errors import DataError

ACTIVATION_NAMES = (
    "linear",
    "leaky",
    "relu",
    "relu6",
    "logistic",
    "tanh",
    "elu",
    "selu",
    "swish",
    "mish",
    "hard_mish",
    "gelu",
    "relie",
    "ramp",
    "loggy",
    "plse",
    "hardtan",
    "lhtan",
)


@dataclass
class Section:
    """One `[section]` of a cfg. `line` is the 1-based line of its header."""

    path: str = ""
    line: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    type: typing.ClassVar[str] = ""
    # Options whose behaviour is not implemented here: refusing them beats building a wrong model.
    unsupported: typing.ClassVar[tuple[str, ...]] = ()

    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def fail(self, problem: str) -> DataError:
        return DataError(self.where(), f"[{self.type}] {problem}")


@dataclass
class Net(Section):
    type: typing.ClassVar[str] = "net"
    width: int = 0
    height: int = 0
    channels: int = 0
    batch: int = 1
    subdivisions: int = 1


@dataclass
class Convolutional(Section):
    type: typing.ClassVar[str] = "convolutional"
    unsupported: typing.ClassVar[tuple[str, ...]] = (
        "binary",
        "xnor",
        "deform",
        "antialiasing",
        "share_index",
        "assisted_excitation",
        "sway",
        "rotate",
        "stretch",
        "stretch_sway",
    )
    filters: int = 1
    size: int = 1
    stride: int = 1
    stride_x: int = -1
    stride_y: int = -1
    pad: int = 0
    padding: int = 0
    groups: int = 1
    dilation: int = 1
    batch_normalize: int = 0
    activation: str = "logistic"

    def __post_init__(self) -> None:
        # Darknet: `pad=1` means "same" padding (size/2) and overrides `padding`.
        if self.pad:
            self.padding = self.size // 2
        if self.stride_x < 1:
            self.stride_x = self.stride
        if self.stride_y < 1:
            self.stride_y = self.stride


@dataclass
class Local(Section):
    """pjreddie's locally connected layer (YOLOv1): a conv without weight sharing."""

    type: typing.ClassVar[str] = "local"
    filters: int = 1
    size: int = 1
    stride: int = 1
    pad: int = 0
    activation: str = "logistic"


@dataclass
class Connected(Section):
    type: typing.ClassVar[str] = "connected"
    output: int = 1
    batch_normalize: int = 0
    activation: str = "logistic"


@dataclass
class Maxpool(Section):
    type: typing.ClassVar[str] = "maxpool"
    unsupported: typing.ClassVar[tuple[str, ...]] = ("maxpool_depth", "antialiasing", "out_channels")
    stride: int = 1
    size: int = 0  # 0: same as stride (Darknet's default)
    padding: int = -1  # -1: size - 1 (Darknet's default), split top/left = padding // 2
    stride_x: int = -1
    stride_y: int = -1

    def __post_init__(self) -> None:
        if self.size <= 0:
            self.size = self.stride
        if self.padding < 0:
            self.padding = self.size - 1
        if self.stride_x < 1:
            self.stride_x = self.stride
        if self.stride_y < 1:
            self.stride_y = self.stride


@dataclass
class Avgpool(Section):
    """Global average pooling (Darknet's `[avgpool]`)."""

    type: typing.ClassVar[str] = "avgpool"
    unsupported: typing.ClassVar[tuple[str, ...]] = ("size", "stride")


@dataclass
class Route(Section):
    type: typing.ClassVar[str] = "route"
    layers: list[int] = field(default_factory=list)
    groups: int = 1
    group_id: int = 0


@dataclass
class Shortcut(Section):
    type: typing.ClassVar[str] = "shortcut"
    unsupported: typing.ClassVar[tuple[str, ...]] = ("weights_type", "weights_normalization")
    from_: list[int] = field(default_factory=list, metadata={"key": "from"})
    activation: str = "linear"
    alpha: float = 1.0
    beta: float = 1.0


@dataclass
class Upsample(Section):
    """Nearest-neighbour upsampling; a negative stride sums stride x stride blocks instead."""

    type: typing.ClassVar[str] = "upsample"
    stride: int = 2
    scale: float = 1.0


@dataclass
class Reorg(Section):
    """YOLOv2's passthrough layer (space to depth, in Darknet's own element order)."""

    type: typing.ClassVar[str] = "reorg"
    unsupported: typing.ClassVar[tuple[str, ...]] = ("flatten", "extra")
    stride: int = 1
    reverse: int = 0


@dataclass
class Dropout(Section):
    type: typing.ClassVar[str] = "dropout"
    probability: float = 0.5


@dataclass
class Softmax(Section):
    type: typing.ClassVar[str] = "softmax"
    groups: int = 1
    temperature: float = 1.0
    tree: str = ""


@dataclass
class Crop(Section):
    """Centre crop at inference; also maps [0, 1] pixels to [-1, 1] unless `noadjust=1`."""

    type: typing.ClassVar[str] = "crop"
    crop_height: int = 1
    crop_width: int = 1
    noadjust: int = 0


@dataclass
class Cost(Section):
    type: typing.ClassVar[str] = "cost"
    type_: str = field(default="sse", metadata={"key": "type"})
    scale: float = 1.0


@dataclass
class Region(Section):
    """YOLOv2 head: num anchors (w, h in grid cells), each coords + 1 + classes channels."""

    type: typing.ClassVar[str] = "region"
    anchors: list[float] = field(default_factory=list)
    classes: int = 20
    coords: int = 4
    num: int = 1
    softmax: int = 0
    bias_match: int = 0
    thresh: float = 0.5
    tree: str = ""
    map: str = ""


@dataclass
class Yolo(Section):
    """YOLOv3 head: the anchors picked by `mask` (pixels at the net size), 5 + classes each."""

    type: typing.ClassVar[str] = "yolo"
    mask: list[int] = field(default_factory=list)
    anchors: list[float] = field(default_factory=list)
    classes: int = 20
    num: int = 1
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    jitter: float = 0.2


@dataclass
class Detection(Section):
    """YOLOv1 head: side x side cells, each num boxes (coords + 1) and classes probabilities."""

    type: typing.ClassVar[str] = "detection"
    classes: int = 1
    coords: int = 1
    side: int = 7
    num: int = 1
    sqrt: int = 0
    softmax: int = 0
    rescore: int = 0


SECTION_TYPES: dict[str, type[Section]] = {
    "net": Net,
    "network": Net,
    "convolutional": Convolutional,
    "conv": Convolutional,
    "local": Local,
    "connected": Connected,
    "conn": Connected,
    "maxpool": Maxpool,
    "max": Maxpool,
    "avgpool": Avgpool,
    "avg": Avgpool,
    "route": Route,
    "shortcut": Shortcut,
    "upsample": Upsample,
    "reorg": Reorg,
    "dropout": Dropout,
    "softmax": Softmax,
    "soft": Softmax,
    "crop": Crop,
    "cost": Cost,
    "region": Region,
    "yolo": Yolo,
    "detection": Detection,
}

HEAD_TYPES = ("region", "yolo", "detection")


@dataclass
class DarknetCfg:
    """A parsed cfg: the `[net]` section and the layers that follow it, in order."""

    path: str
    net: Net
    layers: list[Section]


def _convert(value: str, kind: typing.Any) -> typing.Any:
    if kind is int:
        return int(float(value)) if "." in value or "e" in value.lower() else int(value)
    if kind is float:
        return float(value)
    if kind is str:
        return value
    item = typing.get_args(kind)[0]  # list[int] / list[float]
    return [_convert(v, item) for v in value.split(",") if v != ""]


def _build(cls: type[Section], path: str, line: int, options: dict[str, tuple[str, int]]) -> Section:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, typing.Any] = {}
    known = set()
    for f in dataclasses.fields(cls):
        if f.name in ("path", "line", "extra"):
            continue
        key = f.metadata.get("key", f.name)
        known.add(key)
        if key not in options:
            continue
        value, vline = options[key]
        try:
            kwargs[f.name] = _convert(value, hints[f.name])
        except (ValueError, IndexError):
            raise DataError(f"{path}:{vline}", f"[{cls.type}] bad value for {key}: {value!r}") from None
    extra = {k: v for k, (v, _) in options.items() if k not in known}
    for key in cls.unsupported:
        if key in extra and extra[key] not in ("0", "none", ""):
            raise DataError(f"{path}:{options[key][1]}", f"[{cls.type}] option {key}={extra[key]} is not supported")
    section = cls(path=path, line=line, extra=extra, **kwargs)
    activation = getattr(section, "activation", None)
    if activation is not None and activation not in ACTIVATION_NAMES:
        raise DataError(f"{path}:{options['activation'][1]}", f"[{cls.type}] unknown activation {activation!r}")
    return section


def parse_cfg_text(text: str, path: str | Path = "<string>") -> DarknetCfg:
    """Parse cfg text; `path` only labels error messages."""
    path = str(path)
    raw: list[tuple[str, int, dict[str, tuple[str, int]]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = "".join(line.split())  # Darknet's strip(): drop every whitespace character
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise DataError(f"{path}:{number}", f"bad section header {line!r}")
            name = line[1:-1].lower()
            if name not in SECTION_TYPES:
                raise DataError(f"{path}:{number}", f"unknown section [{name}]")
            raw.append((name, number, {}))
            continue
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise DataError(f"{path}:{number}", f"expected key=value, got {line!r}")
        if not raw:
            raise DataError(f"{path}:{number}", "option before the first [section]")
        raw[-1][2][key] = (value, number)
    if not raw or SECTION_TYPES[raw[0][0]] is not Net:
        raise DataError(path, "the first section must be [net]")
    sections = [_build(SECTION_TYPES[name], path, number, opts) for name, number, opts in raw]
    net = typing.cast(Net, sections[0])
    if any(isinstance(s, Net) for s in sections[1:]):
        extra_net = next(s for s in sections[1:] if isinstance(s, Net))
        raise extra_net.fail("a second [net] section")
    return DarknetCfg(path=path, net=net, layers=sections[1:])


def parse_cfg(path: str | Path) -> DarknetCfg:
    """Parse a `.cfg` file. Errors name `file:line`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(path, f"cannot read cfg: {e.strerror or e}") from None
    return parse_cfg_text(text, path)
