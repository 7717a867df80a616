"""Darknet interoperability: read `.cfg` files, build PyTorch models from them, count parameters and
BFLOPs as Darknet prints them, and read/write `.weights` files.

The torch half (model.py, weights.py) loads on first use of its names (PEP 562 `__getattr__`): `visionflow
--help` imports this package for the `darknet` commands and must not import torch.
"""

from typing import TYPE_CHECKING, Any

from lightning_modules.interop.darknet.cfg import DarknetCfg, parse_cfg, parse_cfg_text
from lightning_modules.interop.darknet.shapes import format_summary, infer_layers, summary

if TYPE_CHECKING:  # the names __getattr__ loads, for type checkers
    from lightning_modules.interop.darknet.model import DarknetModel, build_model
    from lightning_modules.interop.darknet.weights import count_floats, load_weights, read_header, save_weights

_MODEL = ("DarknetModel", "build_model")
_WEIGHTS = ("count_floats", "load_weights", "read_header", "save_weights")


def __getattr__(name: str) -> Any:
    if name in _MODEL:
        from lightning_modules.interop.darknet import model  # lazy: torch; see the module docstring

        return getattr(model, name)
    if name in _WEIGHTS:
        from lightning_modules.interop.darknet import weights  # lazy: torch; see the module docstring

        return getattr(weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
