"""Model summary: parameters, forward FLOPs and per-layer output shapes, without real compute.

FLOPs come from torch.utils.flop_counter (2 x multiply-adds of conv/matmul layers), which is
the convention of Darknet's "Bn ops" and of most papers' GFLOPs-as-2xMACs tables. The model
runs on the meta device by default, so even VGG-16 at 224 px is summarised instantly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.models.registry import build_model


def _top_level_layers(model) -> list[tuple[str, Any]]:
    layers = [(f"body.{n}", m) for n, m in model.body.named_children()]
    layers.append(("pool", model.pool))
    layers += [(f"head.{n}", m) for n, m in model.head.named_children()]
    return layers


def summarize(name: str, *, num_classes: int = 1000, size: int = 224, device: str = "meta", **build_kwargs) -> dict:
    """{"name", "params", "flops", "input_size", "layers": [{"name", "type", "output_shape", "params"}]}."""
    with torch.device(device):
        model = build_model(name, num_classes=num_classes, **build_kwargs)
    model.eval()
    shapes: dict[str, list[int]] = {}
    layers = _top_level_layers(model)
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, key=key: shapes.__setitem__(key, list(out.shape)))
        for key, m in layers
    ]
    x = torch.zeros(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {
        "name": name,
        "params": sum(p.numel() for p in model.parameters()),
        "flops": int(counter.get_total_flops()),
        "input_size": size,
        "layers": [
            {
                "name": key,
                "type": type(m).__name__,
                "output_shape": shapes[key],
                "params": sum(p.numel() for p in m.parameters()),
            }
            for key, m in layers
            if key in shapes  # layers the forward did not use are left out
        ],
    }


def format_summary(d: dict) -> str:
    """A plain-text table of `summarize`'s result."""
    rows = [(r["name"], r["type"], "x".join(map(str, r["output_shape"])), f"{r['params']:,}") for r in d["layers"]]
    head = ("layer", "type", "output", "params")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]

    def line(r):
        return "  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "-" * len(line(head))
    return "\n".join(
        [
            f"{d['name']} at {d['input_size']}x{d['input_size']}",
            rule,
            line(head),
            rule,
            *map(line, rows),
            rule,
            f"params: {d['params']:,}",
            f"FLOPs:  {d['flops'] / 1e9:.3f} G (2 x multiply-adds = Darknet's 'Bn ops')",
        ]
    )
