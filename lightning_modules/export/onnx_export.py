"""`visionflow export CKPT --format onnx --out DIR`: a trained classifier or detector as one ONNX file.

The graph takes what the PyTorch model takes, uint8 images [N,3,S,S] (any N), and carries the input
normalisation, so a user feeds raw pixels. A classifier's graph ends in logits; a detector's in the
decoded boxes (xyxy, input pixels) and class scores before NMS: NMS is `detection.decode.postprocess`,
the same function the PyTorch predictor applies, so both give the same detections (runtime.py).

Before anything is kept, the export runs on real prepared images (the model's test split, else val)
in onnxruntime and in PyTorch; `max_abs_diff` of the outputs (boxes in units of the input size) goes to
`export.json` and must be <= 1e-4, or the export fails and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_modules.errors import DataError, VisionflowError

# torch.onnx's own default opset since 2.6, so the exporter writes its ops natively (no version
# conversion); onnxruntime has run opset 18 since 1.14, and its current release (1.2x-1.3x) runs 7-23.
OPSET = 18
INPUT = "images"
TOLERANCE = 1e-4  # fp32: outputs of the same weights in two runtimes, never a learned difference
PARITY_IMAGES = 16
FORMATS = ("onnx",)


class ExportError(VisionflowError, RuntimeError):
    """The export could not be made or did not match the PyTorch model."""


@dataclass
class Exportable:
    """What an export needs to know of a model: the graph and how to feed and read it."""

    graph: nn.Module
    task: str  # classification | detection
    image_size: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    outputs: list[str]
    postprocess: dict[str, Any] = field(default_factory=dict)  # the detector's NMS settings


class _DetectorGraph(nn.Module):
    """The predictor's part before NMS, as a module ONNX export can trace."""

    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictor.raw(images)


def load_exportable(checkpoint: Path) -> Exportable:
    """A classifier or detector checkpoint (ours, read with weights_only) as an Exportable."""
    from lightning_modules.training.checkpoints import load_checkpoint  # lazy: torch-heavy model code

    hp = load_checkpoint(checkpoint).get("hyper_parameters")
    if isinstance(hp, dict) and "detection" in hp:
        from lightning_modules.detection.evaluation import load_predictor  # lazy: the detector stack

        p = load_predictor(checkpoint)
        return Exportable(
            graph=_DetectorGraph(p).eval(),
            task="detection",
            image_size=p.image_size,
            class_names=p.class_names,
            mean=_per_channel(p.mean),
            std=_per_channel(p.std),
            outputs=["boxes", "scores"],
            postprocess=p.nms_settings(),
        )
    from lightning_modules.classification.evaluate import load_classifier  # lazy: the classifier stack

    c = load_classifier(checkpoint)
    size = c.image_size or 0
    names = c.class_names or [str(i) for i in range(_num_classes(c))]
    return Exportable(
        graph=c,
        task="classification",
        image_size=size,  # 0: taken from the parity images (the prepared set's size)
        class_names=names,
        mean=_per_channel(c.mean),
        std=_per_channel(c.std),
        outputs=["logits"],
    )


def _per_channel(buffer: torch.Tensor) -> list[float]:
    return [round(v / 255, 6) for v in buffer.flatten().tolist()]


def _num_classes(classifier: nn.Module) -> int:
    last = [m for m in classifier.modules() if isinstance(m, nn.Linear)][-1]
    return int(last.out_features)


def parity_images(model: Exportable, data: Path, n: int = PARITY_IMAGES) -> tuple[torch.Tensor, str]:
    """Up to n real images of the prepared set, as the model takes them (uint8 [n,3,S,S]), and their split."""
    if model.task == "detection":
        from lightning_modules.detection.augment import build_eval_transform  # lazy: the detector stack
        from lightning_modules.detection.data import DetectionDataset, read_prepared_detection  # lazy: as above

        info = read_prepared_detection(data)
        split = "test" if "test" in info.counts else "val"
        ds = DetectionDataset(info, split, build_eval_transform(model.image_size))
        images = [ds[i][0].as_subclass(torch.Tensor) for i in range(min(n, len(ds)))]
        return torch.stack(images), split
    from lightning_modules.classification.evaluate import split_batches  # lazy: litdata
    from lightning_modules.data.streaming import read_prepared  # lazy: litdata

    info = read_prepared(data)
    split = "test" if (data / "test" / "index.json").is_file() else "val"
    size = model.image_size or info.image_size
    model.image_size = size
    images, _labels = next(split_batches(data, split, n, size))
    return images, split


def export(checkpoint: str | Path, out: str | Path, *, data: str | Path | None = None, fmt: str = "onnx") -> dict:
    """Write OUT/model.onnx and OUT/export.json (input, outputs, normalisation, classes, parity); returns the doc.

    OUT must be new or empty. `data`: the prepared set for the parity check (default: the one the
    checkpoint's run trained on, from its job.json)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, "output folder is not empty; choose a new --out (an earlier export is kept)")
    model = load_exportable(checkpoint)
    data = Path(data) if data else _trained_on(checkpoint)
    images, split = parity_images(model, data)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        onnx_file = staging / "model.onnx"
        _write_onnx(model, images, onnx_file)
        diffs = _parity(model, onnx_file, images)
        doc = _describe(model, checkpoint, onnx_file, diffs, split, data, len(images))
        (staging / "export.json").write_text(json.dumps(doc, indent=1) + "\n")
        if doc["parity"]["max_abs_diff"] > TOLERANCE:
            raise ExportError(
                f"{checkpoint}: the ONNX export differs from the PyTorch model by {doc['parity']['max_abs_diff']:.2e} "
                f"(> {TOLERANCE:g}) on {len(images)} {split} images: {diffs}; nothing was written"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return doc


def _trained_on(checkpoint: Path) -> Path:
    """The prepared set a run trained on (run folder's job.json: checkpoints/x.ckpt -> ../job.json)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        job = folder / "job.json"
        if job.is_file():
            data = json.loads(job.read_text()).get("data")
            if data and Path(data).is_dir():
                return Path(data)
    raise DataError(checkpoint, "no run folder with job.json beside this checkpoint: pass --data PREPARED_SET")


def _write_onnx(model: Exportable, images: torch.Tensor, path: Path) -> None:
    for name in ("onnxscript", "onnx_ir"):  # their graph optimiser logs every pass at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    example = images[:2] if len(images) > 1 else images.repeat(2, 1, 1, 1)  # batch 2: not specialised to 1
    try:
        torch.onnx.export(
            model.graph,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=model.outputs,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),  # by position: the one input
            opset_version=OPSET,
            dynamo=True,
            external_data=False,  # one self-contained file (models here are far below ONNX's 2 GB limit)
            verbose=False,
        )
    except Exception as exc:  # the exporter raises many types; say which model and why, in one line
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:500]}") from exc


@torch.no_grad()
def _parity(model: Exportable, onnx_file: Path, images: torch.Tensor) -> dict[str, float]:
    """max |onnxruntime - PyTorch| per output on the same images. Boxes are compared in units of the
    input size (pixels / S): fp32's spacing grows with the coordinate (1.5e-5 at 192 px, 6e-5 at 608),
    so a fixed tolerance in pixels would tighten as the input grows; `boxes_pixels` keeps the raw figure."""
    from lightning_modules.export.runtime import session  # lazy: onnxruntime only when exporting

    ort_outputs = session(onnx_file).run(None, {INPUT: images.numpy()})
    torch_outputs = model.graph(images)
    torch_outputs = torch_outputs if isinstance(torch_outputs, tuple) else (torch_outputs,)
    diffs = {
        name: float((torch.from_numpy(o) - t).abs().max()) if t.numel() else 0.0
        for name, o, t in zip(model.outputs, ort_outputs, torch_outputs, strict=True)
    }
    if "boxes" in diffs:
        diffs["boxes_pixels"] = diffs["boxes"]
        diffs["boxes"] = diffs["boxes_pixels"] / model.image_size
    return diffs


def _describe(model, checkpoint, onnx_file, diffs, split, data, n) -> dict:
    import onnx  # lazy: only when exporting
    import onnxruntime  # lazy: only when exporting

    s = model.image_size
    return {
        "format": "onnx",
        "task": model.task,
        "opset": OPSET,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "checkpoint": str(checkpoint),
        "sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
        "input": {
            "name": INPUT,
            "dtype": "uint8",
            "shape": ["batch", 3, s, s],
            "layout": "RGB, channels first, 0-255",
            # Applied inside the graph: feed raw pixels.
            "normalisation": {"mean": model.mean, "std": model.std, "in_graph": True},
            "resize": "letterbox to S (detection)" if model.task == "detection" else "shorter side to S, centre crop",
        },
        "outputs": _outputs(model),
        "class_names": model.class_names,
        "postprocess": model.postprocess
        | ({"function": "lightning_modules.detection.decode.postprocess"} if model.task == "detection" else {}),
        "parity": {
            "images": n,
            "split": split,
            "data": str(data),
            "per_output": diffs,
            "max_abs_diff": max(v for k, v in diffs.items() if k in model.outputs),
            "tolerance": TOLERANCE,
        },
    }


def _outputs(model: Exportable) -> list[dict[str, Any]]:
    k = len(model.class_names)
    if model.task == "detection":
        return [
            {"name": "boxes", "shape": ["batch", "candidates", 4], "meaning": "x1, y1, x2, y2 in input pixels"},
            # NMS: detection.decode.postprocess with the settings in "postprocess".
            {"name": "scores", "shape": ["batch", "candidates", k], "meaning": "per-class scores, before NMS"},
        ]
    return [{"name": "logits", "shape": ["batch", k], "meaning": "class logits (softmax for probabilities)"}]
