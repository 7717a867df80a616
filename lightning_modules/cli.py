"""The `visionflow` command line: work outside Dagster, calling the same functions the assets call.

Heavy libraries (torch, Lightning, DVC) are imported inside each command, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lightning_modules.data import versioning
from lightning_modules.data.prep_settings import ClassificationPrepSettings, DetectionPrepSettings, cli_option
from lightning_modules.data.versioning import workspace_version
from lightning_modules.detection.eval_cli import add_detect_eval_command
from lightning_modules.errors import VisionflowError
from lightning_modules.interop.darknet.cli import add_darknet_commands
from lightning_modules.paths import data_dir, project_root


def _synth(a: argparse.Namespace) -> None:
    from lightning_modules.data.synth import synthesize  # lazy: only this command needs it

    summary = synthesize(
        Path(a.out),
        classes=a.classes,
        per_class=a.per_class,
        val_per_class=a.val_per_class,
        transfer_classes=a.transfer_classes,
        transfer_per_class=a.transfer_per_class,
        transfer_val_per_class=a.transfer_val_per_class,
        det_train=a.det_train,
        det_val=a.det_val,
        det_test=a.det_test,
        det_style=a.det_style,
        seed=a.seed,
        workers=a.workers,
        transfer_test_per_class=a.transfer_test_per_class,
        test_per_class=a.test_per_class,
    )
    print(json.dumps(summary, indent=2, default=str))


def _data_version_of(src: Path) -> str | None:
    # Only data inside the DVC-tracked folder, unchanged since `dvc add`, has a DVC version; any
    # other data is versioned by the prep's own content hash.
    if src.resolve().is_relative_to(data_dir().resolve()):
        return workspace_version(project_root())
    return None


def _prep_imagenet(a: argparse.Namespace) -> None:
    from lightning_modules.data.imagenet_prep import prep_classification  # lazy: only this command needs it

    m = prep_classification(
        Path(a.src),
        Path(a.out),
        image_size=a.size,
        val_fraction=a.val_fraction,
        max_rejected_fraction=a.max_rejected,
        workers=a.workers,
        seed=a.seed,
        source_data_version=_data_version_of(Path(a.src)),
        max_image_pixels=a.max_image_pixels,
    )
    print(
        json.dumps(
            {
                "out": a.out,
                "totals": m["totals"],
                "classes": len(m["classes"]),
                "rejected": m["rejected"][:20],
                "mean": m["mean"],
                "std": m["std"],
            },
            indent=2,
        )
    )


def _prep_detection(a: argparse.Namespace) -> None:
    from lightning_modules.data.detection_prep import prep_detection  # lazy: only this command needs it

    m = prep_detection(
        Path(a.src),
        Path(a.out),
        fmt=a.format,
        val_fraction=a.val_fraction,
        max_rejected_fraction=a.max_rejected,
        anchor_image_size=a.anchor_size,
        seed=a.seed,
        source_data_version=_data_version_of(Path(a.src)),
        max_image_pixels=a.max_image_pixels,
    )
    print(
        json.dumps({k: m[k] for k in ("classes", "counts", "anchors", "anchor_stats")}, indent=2)
        + f"\nrejected labels: {len(m['rejected'])}"
    )


def _version(a: argparse.Namespace) -> None:
    root = project_root()
    if a.action == "show":
        print(versioning.read_data_version(root / "data.dvc") or "untracked (no data.dvc)")
    elif a.action == "init":
        versioning.init(root, a.remote or versioning.DEFAULT_REMOTE_URL)
    elif a.action == "add":
        print(versioning.add(root))
    elif a.action == "push":
        print(f"pushed {versioning.push(root)} file(s)")
    elif a.action == "pull":
        versioning.pull(root)
    elif a.action == "status":
        print(json.dumps(versioning.status(root), indent=2, default=str))


def _model_summary(a: argparse.Namespace) -> None:
    from lightning_modules.models.summary import format_summary, summarize  # lazy: torch; --help stays instant

    d = summarize(a.name, num_classes=a.num_classes, size=a.size, width=a.width, activation=a.activation)
    print(json.dumps(d, indent=2) if a.json else format_summary(d))


def _evaluate(a: argparse.Namespace) -> None:
    if _is_detector(Path(a.checkpoint)):
        from lightning_modules.detection.evaluation import evaluate_checkpoint  # lazy: torch; --help stays instant
        from lightning_modules.detection.metrics import format_table  # lazy: torch; --help stays instant

        result = evaluate_checkpoint(
            Path(a.checkpoint),
            Path(a.data),
            split=a.split or "val",
            out_dir=Path(a.out),
            batch_size=min(a.batch_size, 16),
        )
        # per-image matches are for the promotion's bootstrap, in memory only
        shown = {k: v for k, v in result.items() if k not in ("confusion_matrix", "matches")}
        print(json.dumps(shown, indent=2) if a.json else format_table(result))
        return
    from lightning_modules.classification.evaluate import evaluate, format_result  # lazy: torch; --help stays instant

    result = evaluate(
        Path(a.checkpoint), Path(a.data), split=a.split or "test", out_dir=Path(a.out), batch_size=a.batch_size
    )
    print(json.dumps(result, indent=2) if a.json else format_result(result))


def _is_detector(checkpoint: Path) -> bool:
    """A detector checkpoint carries detection hyper-parameters (read without building anything)."""
    from lightning_modules.training.checkpoints import load_checkpoint  # lazy: torch; --help stays instant

    hp = load_checkpoint(checkpoint).get("hyper_parameters")  # DataError naming a missing/damaged/unsafe file
    return isinstance(hp, dict) and "detection" in hp


def _predict(a: argparse.Namespace) -> None:
    from lightning_modules.data.images import image_files  # lazy: PIL; --help stays instant

    files = image_files(a.images)
    if _task_of(Path(a.weights)) == "detection":
        from lightning_modules.detection.evaluation import predict  # lazy: torch; --help stays instant

        path = predict(Path(a.weights), files, Path(a.out), conf=a.conf, iou=a.iou)
    else:
        from lightning_modules.classification.predict import predict_classes  # lazy: torch; --help stays instant

        path = predict_classes(Path(a.weights), files, Path(a.out), top_k=a.top_k)
    for row in json.loads(path.read_text())["images"]:
        if "top" in row:
            found = ", ".join(f"{t['class']} {t['prob']:.2f}" for t in row["top"][:3])
        else:
            found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in row["detections"][:6]) or "nothing"
            found += f" (+{len(row['detections']) - 6})" if len(row["detections"]) > 6 else ""
        print(f"{row['image']}: {found}")
    drawn = path.parent / "drawn"
    print(f"predictions: {path}" + (f"; drawn images: {drawn}" if drawn.is_dir() else ""))


def _task_of(weights: Path) -> str:
    """detection | classification, from an export's export.json or a checkpoint's hyper-parameters."""
    from lightning_modules.export.runtime import is_onnx, read_export  # lazy: torch; --help stays instant

    if is_onnx(weights):
        return read_export(weights)["task"]
    return "detection" if _is_detector(weights) else "classification"


def _export(a: argparse.Namespace) -> None:
    from lightning_modules.export.onnx_export import export  # lazy: torch, onnx; --help stays instant

    doc = export(Path(a.checkpoint), Path(a.out), data=Path(a.data) if a.data else None, fmt=a.format)
    p = doc["parity"]
    print(
        f"exported {doc['task']} to {Path(a.out) / 'model.onnx'} (opset {doc['opset']}); parity on {p['images']} "
        f"{p['split']} images: max_abs_diff {p['max_abs_diff']:.2e} (tolerance {p['tolerance']:g})"
    )


def _search(a: argparse.Namespace, rest: list[str]) -> int:
    from lightning_modules.search import main as search_main  # lazy: only `search` needs the search package

    return search_main(rest)


def _train(a: argparse.Namespace, rest: list[str]) -> int:
    from lightning_modules.train import main as train_main  # lazy: only `train` needs the job code

    return train_main(rest)


def _prep_options(s: argparse.ArgumentParser, settings, **options: str) -> None:
    """--option for each prep setting, with the default, type and help of the one definition (prep_settings)."""
    for flag, field in options.items():
        s.add_argument(f"--{flag.replace('_', '-')}", **cli_option(settings, field))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionflow", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="group", required=True)

    data = sub.add_parser("data", help="make, prepare and version datasets").add_subparsers(dest="cmd", required=True)
    s = data.add_parser("synth", help="generate the embedded ImageNet-style, transfer and detection sets")
    s.add_argument("--out", default="data")
    s.add_argument("--classes", type=int, default=10)
    s.add_argument("--per-class", type=int, default=60)
    s.add_argument("--val-per-class", type=int, default=12)
    s.add_argument("--transfer-classes", type=int, default=5)
    s.add_argument("--transfer-per-class", type=int, default=12)
    s.add_argument("--transfer-val-per-class", type=int, default=20)
    s.add_argument(
        "--transfer-test-per-class",
        type=int,
        default=20,
        help="held-out test images per transfer class (transfer/test/<class>/)",
    )
    s.add_argument(
        "--test-per-class",
        type=int,
        default=0,
        help="held-out test images per ImageNet-style class (imagenet/test/<wnid>/; 0: none)",
    )
    s.add_argument("--det-train", type=int, default=600)
    s.add_argument("--det-val", type=int, default=150)
    s.add_argument("--det-test", type=int, default=150, help="held-out detection test images (images/test; 0: none)")
    s.add_argument(
        "--det-style",
        choices=("mixed", "small"),
        default="mixed",
        help="detection objects: mixed (the first 5 ImageNet-style classes, each with its own look, in COCO's "
        "small/medium/large mix at a 192-px input) or small (generator 2's look-alike set: 5 shapes in random "
        "looks, 160-320 px images, 30%% of objects 8-16 px)",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(fn=_synth)

    s = data.add_parser("prep-imagenet", help="validate, resize and write an ImageNet-layout or ImageFolder set")
    s.add_argument("src")
    s.add_argument("out")
    _prep_options(
        s,
        ClassificationPrepSettings,
        size="image_size",
        val_fraction="val_fraction",
        max_rejected="max_rejected_fraction",
        workers="workers",
        seed="seed",
        max_image_pixels="max_image_pixels",
    )
    s.set_defaults(fn=_prep_imagenet)

    s = data.add_parser("prep-detection", help="read YOLO/COCO/VOC labels, check boxes, compute anchors")
    s.add_argument("src")
    s.add_argument("out")
    s.add_argument("--format", choices=["yolo", "coco", "voc"], default=DetectionPrepSettings().format)
    _prep_options(
        s,
        DetectionPrepSettings,
        val_fraction="val_fraction",
        max_rejected="max_rejected_fraction",
        anchor_size="anchor_image_size",
        seed="seed",
        max_image_pixels="max_image_pixels",
    )
    s.set_defaults(fn=_prep_detection)

    s = data.add_parser("version", help="DVC: show the data version, init, add, push, pull, status")
    s.add_argument("action", choices=["show", "init", "add", "push", "pull", "status"])
    s.add_argument("--remote", help="remote URL for init (default: a dvc-remote/ folder at the root)")
    s.set_defaults(fn=_version)

    model = sub.add_parser("model", help="inspect backbones").add_subparsers(dest="cmd", required=True)
    s = model.add_parser("summary", help="layers, parameter count and FLOPs of a registry backbone")
    s.add_argument("name")
    s.add_argument("--num-classes", type=int, default=1000)
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--width", type=float, default=1.0)
    s.add_argument("--activation", default="relu")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_model_summary)

    add_darknet_commands(sub)
    add_detect_eval_command(sub)

    s = sub.add_parser("evaluate", help="top-1/top-5, per-class accuracy and confusion matrix of a checkpoint")
    s.add_argument("checkpoint", help="a training checkpoint (RUN_DIR/checkpoints/best.ckpt)")
    s.add_argument("--data", required=True, help="prepared classification (or, for a detector, detection) folder")
    s.add_argument(
        "--split",
        default=None,
        choices=["test", "val", "train"],
        help="default test for a classifier (held out, never used for model selection); val for a detector",
    )
    s.add_argument("--out", required=True, help="folder for evaluation.json and the figures")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--json", action="store_true", help="print the whole result as JSON")
    s.set_defaults(fn=_evaluate)

    s = sub.add_parser(
        "predict", help="classify images or detect objects in them: predictions.json (+ drawn boxes for a detector)"
    )
    s.add_argument("weights", help="a checkpoint (RUN_DIR/checkpoints/best.ckpt) or an export's model.onnx")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--out", required=True, help="new (or empty) folder for predictions.json (and drawn/)")
    s.add_argument("--conf", type=float, default=0.25, help="detector: confidence threshold")
    s.add_argument("--iou", type=float, default=None, help="detector: NMS IoU threshold (default: the training's)")
    s.add_argument("--top-k", type=int, default=5, help="classifier: classes listed per image")
    s.set_defaults(fn=_predict)

    s = sub.add_parser("export", help="a classifier or detector checkpoint as ONNX, checked against PyTorch")
    s.add_argument("checkpoint", help="a classifier or detector checkpoint (RUN_DIR/checkpoints/best.ckpt)")
    s.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    s.add_argument("--out", required=True, help="new (or empty) folder for model.onnx and export.json")
    s.add_argument("--data", default=None, help="prepared set for the parity check (default: the run's own)")
    s.set_defaults(fn=_export)

    s = sub.add_parser(
        "search", help="hyperparameter search (same as python -m lightning_modules.search)", add_help=False
    )
    s.set_defaults(fn=_search, passthrough=True)

    s = sub.add_parser("train", help="run a training job (same as python -m lightning_modules.train)", add_help=False)
    s.set_defaults(fn=_train, passthrough=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    if argv[:1] in (["train"], ["search"]):
        args, rest = parser.parse_args(argv[:1]), argv[1:]
    else:
        args, rest = parser.parse_args(argv), []
    try:
        if getattr(args, "passthrough", False):
            return int(args.fn(args, rest) or 0)
        args.fn(args)
        return 0
    except VisionflowError as exc:
        print(f"visionflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
