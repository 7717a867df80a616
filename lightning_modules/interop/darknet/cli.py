"""`visionflow darknet ...` commands; the lead wires them in with `add_darknet_commands(sub)`."""

from __future__ import annotations

import argparse
import json

from lightning_modules.interop.darknet.shapes import format_summary, summary


def _size(text: str) -> int | tuple[int, int]:
    # "416" or "416x608" (height x width)
    if "x" in text:
        h, w = text.lower().split("x", 1)
        return int(h), int(w)
    return int(text)


def _summary(a: argparse.Namespace) -> None:
    d = summary(a.cfg, a.size)
    print(json.dumps(d, indent=2) if a.json else format_summary(d))


def add_darknet_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `darknet` group (`darknet summary CFG [--size S] [--json]`) to `subparsers`."""
    group = subparsers.add_parser("darknet", help="Darknet cfg/weights interoperability")
    sub = group.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "summary",
        help="layers, output shapes, parameters and BFLOPs of a Darknet .cfg (counted as Darknet prints them)",
    )
    s.add_argument("cfg", help="Darknet .cfg file")
    s.add_argument(
        "--size", type=_size, default=None, help="input size S or HxW (default: the cfg's [net] width/height)"
    )
    s.add_argument("--json", action="store_true", help="print JSON (keys params, bflops, layers, ...)")
    s.set_defaults(fn=_summary)
