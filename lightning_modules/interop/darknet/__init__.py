"""Darknet interoperability: read `.cfg` files, build PyTorch models from them, count parameters and
BFLOPs as Darknet prints them, and read/write `.weights` files."""

from lightning_modules.interop.darknet.cfg import DarknetCfg, parse_cfg, parse_cfg_text
from lightning_modules.interop.darknet.model import DarknetModel, build_model
from lightning_modules.interop.darknet.shapes import format_summary, infer_layers, summary
from lightning_modules.interop.darknet.weights import count_floats, load_weights, read_header, save_weights

__all__ = [
    "DarknetCfg",
    "DarknetModel",
    "build_model",
    "count_floats",
    "format_summary",
    "infer_layers",
    "load_weights",
    "parse_cfg",
    "parse_cfg_text",
    "read_header",
    "save_weights",
    "summary",
]
