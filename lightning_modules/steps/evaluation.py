"""Held-out evaluation of the trained classifier and detector; each registers its model and decides on
`champion` (steps/promotion.py). Run by `python -m lightning_modules.steps classification_evaluation|...`."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from lightning_modules import tracking
from lightning_modules.data.lineage import prepared_version
from lightning_modules.steps.promotion import finish, register_and_promote
from lightning_modules.steps.report import Check, StepReport, image, plain, typed
from lightning_modules.steps.specs import ClassificationEvaluationSpec, DetectionEvaluationSpec
from lightning_modules.tracking.bootstrap import Interval, accuracy, paired_bootstrap
from lightning_modules.tracking.model_registry import IncomparableChampion


def accuracy_gate(floor: float, margin_over_chance: float, classes: int) -> float:
    """The top-1 a model must reach: the configured floor, and never less than chance plus a margin."""
    return max(floor, 1.0 / classes + margin_over_chance)


def same_classes(champion: list[str] | None, test_set: list[str]) -> None:
    """A champion made for other classes cannot be scored on this test set: the data's task changed."""
    if champion is not None and list(champion) != list(test_set):
        raise IncomparableChampion(f"it predicts {list(champion)}, the test set has {list(test_set)}")


def classification(spec: ClassificationEvaluationSpec) -> StepReport:
    from lightning_modules.classification import evaluate as ev  # lazy: torch; every step's process loads this module

    data, out, uri, run_id = Path(spec.data), spec.out_dir, spec.tracking_uri, spec.run_id
    cfg = spec.settings
    res = ev.evaluate(Path(spec.checkpoint), data, split=cfg.split, out_dir=out)
    floor = accuracy_gate(cfg.accuracy_floor, cfg.margin_over_chance, len(res["classes"]))
    passed_floor, finite = res["top1"] >= floor, not res["nan"]
    s = cfg.split
    tracking.log_metrics(
        uri, run_id, {f"{s}_acc1": res["top1"], f"{s}_acc5": res["top5"], f"{s}_loss": res["mean_loss"]}
    )
    for fig in res["figures"]:
        tracking.log_figure(uri, run_id, Path(fig))

    def compare(model: Path) -> Interval:
        champion = ev.load_classifier(model)
        same_classes(champion.class_names, res["classes"])
        theirs = ev.evaluate_module(champion, data, split=s, out_dir=out / "champion", write=False)["correct"]
        return paired_bootstrap(accuracy(res["correct"]), accuracy(theirs), len(theirs))

    size = json.loads((data / "manifest.json").read_text())["image_size"]
    promo = register_and_promote(
        uri,
        run_id,
        checkpoint=spec.checkpoint,
        name=cfg.model_name,
        kind="classifier",
        data=data,
        score=res["top1"],
        score_tag=f"{s}_acc1",
        gates_passed=passed_floor and finite,
        compare=compare,
        spec={"input": [3, size, size], "dtype": "uint8", "classes": res["classes"]},
    )
    finish(uri, run_id)
    d = promo.decision
    metadata = {
        f"{s}_acc1": res["top1"],
        f"{s}_acc5": res["top5"],
        "images": res["n"],
        "per_class_accuracy": plain(res["per_class"]),
        "registered_version": promo.version,
        "promoted": d.promoted,
        "promotion": d.reason,
        "champion_score": d.champion_score if d.champion_score is not None else -1.0,
        "onnx": promo.onnx,
        "data_version": prepared_version(data),
        "checkpoint": typed(spec.checkpoint, "path"),
        "mlflow_run": typed(tracking.run_url(uri, run_id, spec.mlflow_ui), "url"),
        **{Path(f).stem: image(f, Path(f).stem) for f in res["figures"]},
    }
    checks = [
        Check("accuracy_floor", passed_floor, {"top1": res["top1"], "floor": floor, "chance": 1 / len(res["classes"])}),
        Check("no_nan", finite, {"non_finite_logits": res["nan"]}),
    ]
    return StepReport(metadata, checks, f"model {cfg.model_name} v{promo.version}: {d.reason}")


def detection(spec: DetectionEvaluationSpec) -> StepReport:
    from lightning_modules.detection import evaluation as ev  # lazy: torch; every step's process loads this module

    cfg = spec.settings
    data, out, uri, run_id, s = Path(spec.data), spec.out_dir, spec.tracking_uri, spec.run_id, cfg.split
    predictor = ev.load_predictor(spec.checkpoint)
    res = ev.evaluate_predictor(predictor, data, split=s, out_dir=out)
    passed_floor, finite = res["map_50"] >= cfg.map50_floor, not res["nan"]
    numbers = {k: float(res[k]) for k in ("map", "map_50", "map_75", "mar_100", "voc07_ap50", "voc10_ap50")}
    tracking.log_metrics(uri, run_id, {f"{s}_{k}": v for k, v in numbers.items()})
    for path in [*res["figure_paths"], out / "metrics.json", out / "gt_coco.json", out / "pred_coco.json"]:
        tracking.log_artifact(uri, run_id, Path(path), "evaluation")

    def compare(model: Path) -> Interval:
        from lightning_modules.detection.image_matches import map_score  # lazy: torch (see above)

        champion = ev.load_predictor(model)
        same_classes(champion.class_names, predictor.class_names)
        theirs = ev.evaluate_predictor(champion, data, split=s, out_dir=out / "champion")["matches"]
        mine = res["matches"]
        return paired_bootstrap(partial(map_score, mine), partial(map_score, theirs), len(mine))

    size = predictor.image_size
    promo = register_and_promote(
        uri,
        run_id,
        checkpoint=spec.checkpoint,
        name=cfg.model_name,
        kind="detector",
        data=data,
        score=res["map"],
        score_tag=f"{s}_map",
        gates_passed=passed_floor and finite,
        compare=compare,
        spec={"input": [3, size, size], "dtype": "uint8", "classes": predictor.class_names},
    )
    finish(uri, run_id)
    d = promo.decision
    metadata = {
        **{f"{s}_{k}": round(v, 4) for k, v in numbers.items()},
        "images": res["n"],
        "per_class_ap50": plain({c: round(r["ap50"], 4) for c, r in res["per_class"].items()}),
        "registered_model": cfg.model_name,
        "registered_version": promo.version,
        "promoted": d.promoted,
        "promotion": d.reason,
        "onnx": promo.onnx,
        "data_version": prepared_version(data),
        "checkpoint": typed(spec.checkpoint, "path"),
        "mlflow_run": typed(tracking.run_url(uri, run_id, spec.mlflow_ui), "url"),
        **{Path(f).stem: image(f, Path(f).stem) for f in res["figure_paths"]},
    }
    checks = [
        Check("map50_floor", passed_floor, {"map_50": res["map_50"], "floor": cfg.map50_floor}),
        Check("no_nan", finite),
    ]
    return StepReport(metadata, checks, f"model {cfg.model_name} v{promo.version}: {d.reason}")
