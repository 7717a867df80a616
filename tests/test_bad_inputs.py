"""The bad-input corpus: every hostile, broken or surprising input we know of, one row each, with its exact outcome.

Each row builds its input in a fresh folder, runs what a user would run, and asserts one of:
- "error": a named error (VisionflowError, or exit code 2 with the message on stderr), never a traceback;
- "rejected": the run goes on and the file is listed as rejected with its reason;
- "ok": accepted and handled correctly (an extra check says how).
For every row: code inside a file never runs (a booby-trapped pickle would create MARKER), and no file
outside the row's declared output folder is created, changed or deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightning_modules.data.detection_prep import prep_detection
from lightning_modules.data.imagenet_prep import prep_classification
from lightning_modules.errors import VisionflowError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke-classify.yaml"
QUICK = [
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "data.batch_size=16",
    "tracking.log_checkpoint=false",
    "trainer.grad_monitor_every_n_steps=0",
]


# -- what a row sees ----------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    tmp: Path
    request: pytest.FixtureRequest
    writable: list[Path] = field(default_factory=list)  # the only places this row may change

    @property
    def marker(self) -> Path:
        return self.tmp / "MARKER-code-ran"

    def out(self, name: str = "out") -> Path:
        path = self.tmp / name
        self.writable.append(path)
        return path

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.out('tracking')}/mlflow.db"


class _Trap:
    """Unpickling this object opens MARKER for writing, i.e. runs code chosen by the file's author."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def trapped_checkpoint(ctx: Ctx, name: str = "evil.ckpt") -> Path:
    path = ctx.tmp / name
    torch.save(
        {
            "hyper_parameters": {"model": {"name": "resnet18"}, "detection": {}},
            "state_dict": {},
            "payload": _Trap(ctx.marker),
        },
        path,
    )
    return path


def png(path: Path, colour=(90, 120, 200), size=(24, 20), noise: int = 0, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), colour, np.int32)
    if noise:
        arr += np.random.default_rng(zlib.crc32(str(path).encode())).integers(-noise, noise + 1, arr.shape)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert(mode).save(path)
    return path


def png_claiming(path: Path, w: int, h: int) -> Path:
    """A valid 4x4 PNG whose header then claims w x h pixels (CRC fixed): only a decoder would notice."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def imagefolder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 10) -> Path:
    """Distinct noisy images per class (no accidental duplicates)."""
    colours = [(220, 30, 30), (30, 200, 40), (40, 40, 210)]
    for c, colour in zip(classes, colours):
        for i in range(per_class):
            png(root / c / f"{c}_{i}.png", colour, noise=12)
    return root


def yolo_set(root: Path, n: int = 10) -> Path:
    for split, count in (("train", n), ("val", 2)):
        for i in range(count):
            png(
                root / "images" / split / f"{split}{i}.png",
                (90 + 10 * i, 120, 200 if split == "train" else 240),
                size=(64, 48),
            )
            label = root / "labels" / split / f"{split}{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("0 0.5 0.5 0.4 0.4\n")
    (root / "data.yaml").write_text(
        yaml.safe_dump(
            {"path": str(root), "train": "images/train", "val": "images/val", "nc": 2, "names": ["cat", "dog"]}
        )
    )
    return root


def coco_set(root: Path) -> Path:
    for split in ("train", "val"):
        doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}
        for i in range(10 if split == "train" else 2):
            png(
                root / "images" / split / f"{split}{i}.png",
                (80 + 10 * i, 100, 150 if split == "train" else 220),
                size=(64, 48),
            )
            doc["images"].append({"id": i, "file_name": f"{split}{i}.png", "width": 64, "height": 48})
            doc["annotations"].append(
                {"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [8, 8, 20, 20], "area": 400, "iscrowd": 0}
            )
        f = root / "annotations" / f"instances_{split}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(doc))
    return root


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def cli(*argv: str) -> int:
    from lightning_modules.cli import main

    return main([str(a) for a in argv])


def train(ctx: Ctx, data: Path, out: Path, *sets: str, uri: str | None = None) -> int:
    from lightning_modules.train import main

    argv = [str(SMOKE), "--data", str(data), "--out", str(out), "--set", f"tracking.tracking_uri={uri or ctx.uri}"]
    for item in sets:
        argv += ["--set", item]
    return main(argv)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_prepared_imagenet: Path) -> Path:
    """One short finished classification run (last.ckpt and last-prev.ckpt), copied by the rows that need one."""
    from lightning_modules.train import main

    root = tmp_path_factory.mktemp("trained")
    argv = [
        str(SMOKE),
        "--data",
        str(tiny_prepared_imagenet),
        "--out",
        str(root / "run"),
        "--set",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        "--set",
        "trainer.checkpoint_every_n_steps=1",
    ]
    for item in QUICK:
        argv += ["--set", item]
    assert main(argv) == 0
    return root / "run"


def copied_run(ctx: Ctx, finished: bool = False) -> Path:
    """A copy of `trained_run` in this row's output folder; unfinished (no result.json) unless asked.

    Rerun it with `uri=trained_uri(ctx)`: a run folder belongs to one config, its tracking store included."""
    run = ctx.out("run")
    shutil.copytree(ctx.fixture("trained_run"), run)
    if not finished:
        (run / "result.json").unlink()
    return run


def trained_uri(ctx: Ctx) -> str:
    return f"sqlite:///{ctx.fixture('trained_run').parent / 'mlflow.db'}"


# -- the rows ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    id: str
    build: Callable[[Ctx], Callable[[], Any]]  # returns the action a user runs
    expect: str  # "error" | "rejected" | "ok"
    match: str  # regex: the error message / a rejection reason / (ok) a description, unused
    check: Callable[[Any, Ctx], None] | None = None  # more about an accepted result


def _evaluate_trapped(ctx: Ctx):
    evil = trapped_checkpoint(ctx)
    return lambda: cli("evaluate", evil, "--data", ctx.fixture("prepared_transfer"), "--out", ctx.out())


def _predict_trapped(ctx: Ctx):
    evil, image = trapped_checkpoint(ctx), png(ctx.tmp / "photo.png")
    return lambda: cli("predict", evil, image, "--out", ctx.out())


def _pretrained_trapped(ctx: Ctx):
    evil = trapped_checkpoint(ctx)
    return lambda: train(
        ctx, ctx.fixture("tiny_prepared_imagenet"), ctx.out("run"), *QUICK, f"model.pretrained_checkpoint={evil}"
    )


def _resume_trapped(ctx: Ctx):
    run = copied_run(ctx)
    for name in ("last.ckpt", "last-prev.ckpt"):
        shutil.copyfile(trapped_checkpoint(ctx), run / "checkpoints" / name)
    return lambda: train(
        ctx,
        ctx.fixture("tiny_prepared_imagenet"),
        run,
        *QUICK,
        "trainer.checkpoint_every_n_steps=1",
        uri=trained_uri(ctx),
    )


def _registry_trapped(ctx: Ctx):
    from mlflow.tracking import MlflowClient

    from lightning_modules.classification.evaluate import load_classifier
    from lightning_modules.tracking import model_registry as registry

    uri, artifacts = ctx.uri, ctx.out("artifacts")
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("e", artifact_location=str(artifacts)))
    version = registry.log_and_register(
        uri, run.info.run_id, ctx.fixture("trained_run") / "checkpoints" / "best.ckpt", "m", kind="classifier"
    )
    # Someone with write access to the artifact store swaps the weights for a booby-trapped file.
    (stored,) = artifacts.rglob(registry.MODEL_FILE)
    shutil.copyfile(trapped_checkpoint(ctx), stored)
    return lambda: load_classifier(registry.download(uri, f"models:/m/{version}", kind="classifier"))


def _evaluation_asset_trapped(asset_name: str, upstream: str, partition: str | None):
    def build(ctx: Ctx):
        import dagster as dg

        from pipelines.assets.detection import detection_evaluation
        from pipelines.assets.evaluation import classification_evaluation
        from pipelines.launcher import LocalLauncher
        from pipelines.resources import MlflowResource, ProjectResource

        asset = {"classification_evaluation": classification_evaluation, "detection_evaluation": detection_evaluation}
        evil = trapped_checkpoint(ctx)
        project = ctx.out("project")

        def run():
            with dg.instance_for_test() as instance:
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        upstream, partition=partition, metadata={"best_checkpoint": str(evil), "mlflow_run_id": "x"}
                    )
                )
                result = dg.materialize(
                    [asset[asset_name]],
                    instance=instance,
                    partition_key=partition,
                    resources={
                        "project": ProjectResource(root=str(project)),
                        "mlflow": MlflowResource(tracking_uri=ctx.uri),
                        "launcher": LocalLauncher(),
                    },
                    raise_on_error=False,
                )
                failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
                error, messages = failure.step_failure_data.error, []
                while error is not None:  # Dagster wraps the step's own exception: read the whole chain
                    messages.append(error.message)
                    error = error.cause
                raise VisionflowError(" <- ".join(messages))

        return run

    return build


def _prep_into(where: str):
    def build(ctx: Ctx):
        src = imagefolder(ctx.tmp / "photos")
        out = {"src": src, "parent": ctx.tmp, "inside": src / "prepared"}[where]
        return lambda: prep_classification(src, out, image_size=16)

    return build


def _prep_over_foreign(ctx: Ctx):
    src, out = imagefolder(ctx.tmp / "photos"), ctx.tmp / "thesis"
    (out / "chapter1.tex").parent.mkdir()
    (out / "chapter1.tex").write_text("years of work")
    return lambda: prep_classification(src, out, image_size=16)


def _prep_while_another_runs(ctx: Ctx):
    from lightning_modules.data.staging import exclusive_lock

    src, out = imagefolder(ctx.tmp / "photos"), ctx.tmp / "prepared"

    def run():
        with exclusive_lock(out):  # what a prep in another process holds for its whole run
            prep_classification(src, out, image_size=16)

    return run


def _detection_prep_into_source(ctx: Ctx):
    src = yolo_set(ctx.tmp / "det")
    return lambda: prep_detection(src, src, anchor_image_size=64)


def _classification(change: Callable[[Path, Ctx], None], **kw):
    def build(ctx: Ctx):
        src = imagefolder(ctx.tmp / "photos")
        change(src, ctx)
        return lambda: prep_classification(src, ctx.out(), image_size=16, max_rejected_fraction=0.2, **kw)

    return build


def _loop(src: Path, ctx: Ctx) -> None:
    (src / "cat" / "again").symlink_to(src / "cat", target_is_directory=True)


def _link_out(src: Path, ctx: Ctx) -> None:
    (src / "cat" / "borrowed.png").symlink_to(png(ctx.tmp / "elsewhere" / "x.png", noise=5))


def _dvc_cache_links(src: Path, ctx: Ctx) -> None:
    """DVC with `cache.type symlink`: the tracked files are links into the repository's .dvc/cache."""
    cache = ctx.tmp / ".dvc" / "cache" / "files" / "md5" / "ab"
    cache.mkdir(parents=True)
    for f in sorted((src / "dog").iterdir()):
        target = cache / hashlib.md5(f.read_bytes()).hexdigest()
        f.rename(target)
        f.symlink_to(target)


def _two_classes(src: Path, ctx: Ctx) -> None:
    shutil.copyfile(src / "cat" / "cat_0.png", src / "dog" / "dog_same.png")


def _train_and_val(src: Path, ctx: Ctx) -> None:
    for split in ("train", "val"):
        for c in ("cat", "dog", "fox"):
            (src / split / c).mkdir(parents=True)
            for f in sorted((src / c).iterdir())[: 7 if split == "train" else 3]:
                f.rename(src / split / c / f.name)
    for c in ("cat", "dog", "fox"):
        for f in (src / c).iterdir():
            f.unlink()
        (src / c).rmdir()
    shutil.copyfile(src / "train" / "cat" / "cat_0.png", src / "val" / "cat" / "leak.png")


def _truncated(src: Path, ctx: Ctx) -> None:
    data = (src / "cat" / "cat_1.png").read_bytes()
    (src / "cat" / "cat_1.png").write_bytes(data[: len(data) // 2])


def _empty(src: Path, ctx: Ctx) -> None:
    (src / "cat" / "empty.png").write_bytes(b"")


def _text(src: Path, ctx: Ctx) -> None:
    (src / "cat" / "notes.jpg").write_text("not a picture")


def _huge(src: Path, ctx: Ctx) -> None:
    png_claiming(src / "cat" / "bomb.png", 60000, 60000)


def _odd_modes(src: Path, ctx: Ctx) -> None:
    Image.fromarray((np.arange(24 * 20).reshape(20, 24) * 100).astype(np.uint16)).save(src / "cat" / "deep.png")
    png(src / "dog" / "alpha.png", (30, 200, 40), mode="RGBA")
    png(src / "fox" / "grey.png", (40, 40, 210), mode="L")


def _detection(fmt: str, change: Callable[[Path, Ctx], None]):
    def build(ctx: Ctx):
        src = (yolo_set if fmt == "yolo" else coco_set)(ctx.tmp / "det")
        change(src, ctx)
        return lambda: prep_detection(src, ctx.out(), fmt=fmt, anchor_image_size=64, max_rejected_fraction=0.5)

    return build


def _yolo_bomb(size: int):
    def change(src: Path, ctx: Ctx) -> None:
        png_claiming(src / "images" / "train" / "bomb.png", size, size)

    return change


def _nc_five(src: Path, ctx: Ctx) -> None:
    cfg = yaml.safe_load((src / "data.yaml").read_text())
    (src / "data.yaml").write_text(yaml.safe_dump({**cfg, "nc": "five"}))


def _category_without_id(src: Path, ctx: Ctx) -> None:
    edit_json(src / "annotations" / "instances_train.json", lambda d: d["categories"].append({"name": "dog"}))


def _annotation_not_object(src: Path, ctx: Ctx) -> None:
    edit_json(src / "annotations" / "instances_train.json", lambda d: d["annotations"].append(42))


def _file_name_escapes(src: Path, ctx: Ctx) -> None:
    png(ctx.tmp / "secret.png")
    edit_json(
        src / "annotations" / "instances_train.json",
        lambda d: d["images"].append({"id": 99, "file_name": "../../../secret.png", "width": 24, "height": 20}),
    )


def _job(*sets: str, data: str = "tiny_prepared_imagenet"):
    def build(ctx: Ctx):
        return lambda: train(ctx, ctx.fixture(data), ctx.out("run"), *QUICK, *sets)

    return build


def _truncated_last(keep_previous: bool):
    def build(ctx: Ctx):
        run = copied_run(ctx)
        last = run / "checkpoints" / "last.ckpt"
        last.write_bytes(last.read_bytes()[:1000])
        if not keep_previous:
            (run / "checkpoints" / "last-prev.ckpt").unlink()
        return lambda: train(
            ctx,
            ctx.fixture("tiny_prepared_imagenet"),
            run,
            *QUICK,
            "trainer.checkpoint_every_n_steps=1",
            uri=trained_uri(ctx),
        )

    return build


def _evaluate_truncated(ctx: Ctx):
    bad = ctx.tmp / "cut.ckpt"
    data = (ctx.fixture("trained_run") / "checkpoints" / "best.ckpt").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    return lambda: cli("evaluate", bad, "--data", ctx.fixture("prepared_transfer"), "--out", ctx.out())


def _rerun_on_other_data(ctx: Ctx):
    run = copied_run(ctx, finished=True)
    data = ctx.out("prepared")
    shutil.copytree(ctx.fixture("tiny_prepared_imagenet"), data)
    edit_json(data / "manifest.json", lambda m: m.update(content_hash="0" * 32))  # prepared again, other images
    job = json.loads((run / "job.json").read_text())
    (run / "job.json").write_text(json.dumps({**job, "data": str(data)}))
    return lambda: train(ctx, data, run, *QUICK, "trainer.checkpoint_every_n_steps=1", uri=trained_uri(ctx))


def _check_steps(n: int):
    def check(rc: Any, ctx: Ctx) -> None:
        result = json.loads((ctx.tmp / "run" / "result.json").read_text())
        assert result["status"] == "finished" and result["global_step"] == n, result["global_step"]

    return check


def _check_resumed_from_previous(rc: Any, ctx: Ctx) -> None:
    checkpoints = ctx.tmp / "run" / "checkpoints"
    assert (checkpoints / "last-damaged.ckpt").is_file(), "the damaged file is kept aside, not deleted"
    assert json.loads((ctx.tmp / "run" / "result.json").read_text())["status"] == "finished"


def _check_own_version(rc: Any, ctx: Ctx) -> None:
    from mlflow.tracking import MlflowClient

    result = json.loads((ctx.tmp / "run" / "result.json").read_text())
    manifest = json.loads((ctx.fixture("tiny_prepared_imagenet") / "manifest.json").read_text())
    assert result["data_version"] == manifest["data_version"] and result["data_version"].startswith("content:")
    tags = MlflowClient(ctx.uri).get_run(result["mlflow_run_id"]).data.tags
    assert tags["data_version"] == manifest["data_version"]  # never the repository's data.dvc md5


def _check_totals(train_val: int):
    def check(manifest: dict, ctx: Ctx) -> None:
        assert manifest["totals"]["train"] + manifest["totals"]["val"] == train_val, manifest["totals"]

    return check


def _check_two_rejected(manifest: dict, ctx: Ctx) -> None:
    both = {Path(r["path"]).name for r in manifest["rejected"] if "two classes" in r["reason"]}
    assert both == {"cat_0.png", "dog_same.png"}
    assert manifest["duplicates"]["across_classes"] == 2


def _check_leak(manifest: dict, ctx: Ctx) -> None:
    assert manifest["duplicates"]["across_splits"] == 1 and manifest["totals"]["val"] == 9


def _check_no_mlflow(rc: Any, ctx: Ctx) -> None:
    assert not (ctx.tmp / "tracking" / "mlflow.db").exists(), "an MLflow run was opened for a config that fails"


ROWS = [
    # a checkpoint or registry file can run code when loaded
    Row("evaluate-booby-trapped-checkpoint", _evaluate_trapped, "error", r"evil\.ckpt: refused to load"),
    Row("predict-booby-trapped-checkpoint", _predict_trapped, "error", r"evil\.ckpt: refused to load"),
    Row("pretrained-checkpoint-booby-trapped", _pretrained_trapped, "error", r"evil\.ckpt: refused to load"),
    Row("resume-from-booby-trapped-last-ckpt", _resume_trapped, "error", r"last\.ckpt: cannot resume: refused to load"),
    Row("registry-artifact-booby-trapped", _registry_trapped, "error", r"model\.ckpt: refused to load"),
    Row(
        "classification-evaluation-asset-booby-trapped",
        _evaluation_asset_trapped("classification_evaluation", "transfer_finetuned", None),
        "error",
        r"evil\.ckpt: refused to load",
    ),
    Row(
        "detection-evaluation-asset-booby-trapped",
        _evaluation_asset_trapped("detection_evaluation", "yolo_detector", "yolov3"),
        "error",
        r"evil\.ckpt: refused to load",
    ),
    # a prep must never destroy what it did not make
    Row("prep-output-is-the-source", _prep_into("src"), "error", r"the output folder is the source folder itself"),
    Row("prep-output-contains-the-source", _prep_into("parent"), "error", r"the output folder contains the source"),
    Row("prep-output-inside-the-source", _prep_into("inside"), "error", r"the output folder is inside the source"),
    Row(
        "prep-over-a-foreign-folder",
        _prep_over_foreign,
        "error",
        r"thesis: exists and is not an output of a visionflow",
    ),
    Row("prep-while-another-prep-writes", _prep_while_another_runs, "error", r"another prep \(pid \d+\) is writing"),
    Row("detection-prep-output-is-the-source", _detection_prep_into_source, "error", r"is the source folder itself"),
    # sources that lie about their content
    Row("symlink-loop-in-a-class-folder", _classification(_loop), "rejected", r"symlink loop", _check_totals(30)),
    Row("symlink-out-of-the-source", _classification(_link_out), "rejected", r"borrowed\.png.*outside the source"),
    Row(
        "dvc-symlink-cache-links-are-the-data",
        _classification(_dvc_cache_links),
        "ok",
        "all 30 files read",
        _check_totals(30),
    ),
    Row(
        "same-image-in-two-classes",
        _classification(_two_classes),
        "rejected",
        r"under two classes",
        _check_two_rejected,
    ),
    Row(
        "same-image-in-train-and-val",
        _classification(_train_and_val),
        "rejected",
        r"leak\.png.*held-out image must not also be a train image",
        _check_leak,
    ),
    Row(
        "coco-file-name-leaves-the-root",
        _detection("coco", _file_name_escapes),
        "rejected",
        r"file_name '\.\./\.\./\.\./secret\.png' leaves the dataset root",
    ),
    # files that crash decoders or parsers
    Row("truncated-png", _classification(_truncated), "rejected", r"cat_1\.png.*corrupt or truncated"),
    Row("empty-file", _classification(_empty), "rejected", r"empty\.png.*empty file"),
    Row("text-named-jpg", _classification(_text), "rejected", r"notes\.jpg.*not an image"),
    Row(
        "png-header-claims-60000x60000-classification",
        _classification(_huge),
        "rejected",
        r"bomb\.png.*60000x60000 \(3600\.0 MP\), over the max_image_pixels limit",
    ),
    Row("16-bit-grey-rgba-and-grey-images", _classification(_odd_modes), "ok", "converted to RGB", _check_totals(33)),
    Row(
        "yolo-png-claims-60000x60000",
        _detection("yolo", _yolo_bomb(60000)),
        "rejected",
        r"bomb\.png.*60000x60000 .*over the max_image_pixels limit",
    ),
    Row(
        "yolo-png-claims-13000x13000",
        _detection("yolo", _yolo_bomb(13000)),
        "rejected",
        r"bomb\.png.*13000x13000 \(169\.0 MP\), over the max_image_pixels limit",
    ),
    Row("yolo-nc-five", _detection("yolo", _nc_five), "error", r"data\.yaml: `nc` must be a non-negative integer"),
    Row(
        "coco-category-without-id",
        _detection("coco", _category_without_id),
        "error",
        r"instances_train\.json: categories\[1\] has no `id`",
    ),
    Row(
        "coco-annotation-not-an-object",
        _detection("coco", _annotation_not_object),
        "rejected",
        r"annotations\[10\] is not an object",
    ),
    # configs and jobs
    Row("lr-nan", _job("optim.lr=nan"), "error", r"optim\.lr=nan must be a finite number", _check_no_mlflow),
    Row(
        "onecycle-warmup-of-zero-steps",
        _job(
            "data.batch_size=64",
            "trainer.limit_train_batches=1.0",
            "trainer.max_epochs=5",
            "optim.schedule=onecycle",
            "optim.warmup_epochs=1",
        ),
        "ok",
        "trains 5 steps",
        _check_steps(5),
    ),
    Row("set-smaller-than-one-batch", _job("data.batch_size=128"), "error", r"would train zero steps"),
    Row(
        "truncated-last-ckpt-no-previous",
        _truncated_last(False),
        "error",
        r"last\.ckpt: cannot resume: not a readable checkpoint: truncated or corrupt.*Move this file aside",
    ),
    Row(
        "truncated-last-ckpt-with-previous",
        _truncated_last(True),
        "ok",
        "resumes from last-prev.ckpt",
        _check_resumed_from_previous,
    ),
    Row("evaluate-truncated-checkpoint", _evaluate_truncated, "error", r"cut\.ckpt: not a readable checkpoint"),
    Row("rerun-after-data-prepared-again", _rerun_on_other_data, "error", r"use a new --out to train on it"),
    Row("data-outside-the-repo-gets-its-own-version", _job(), "ok", "lineage", _check_own_version),
]


# -- the runner ---------------------------------------------------------------------------------------------------


def _snapshot(root: Path, writable: list[Path]) -> dict[str, str]:
    """Every file under root outside the writable folders: path -> content hash (links: their target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if any(path == w or w in path.parents for w in writable):
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def _outcome(action: Callable[[], Any], capsys: pytest.CaptureFixture) -> tuple[str, Any]:
    capsys.readouterr()
    try:
        value = action()
    except VisionflowError as exc:
        return "error", str(exc)
    if isinstance(value, int):  # a command's exit code: 2 means a named error on stderr
        err = capsys.readouterr().err
        assert value in (0, 2), f"exit code {value}: {err[-2000:]}"
        return ("error", err) if value == 2 else ("ok", value)
    if isinstance(value, dict) and "rejected" in value:  # a prep's manifest
        return ("rejected" if value["rejected"] else "ok"), value
    return "ok", value


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture) -> None:
    ctx = Ctx(tmp_path, request)
    action = row.build(ctx)
    before = _snapshot(tmp_path, ctx.writable)
    kind, value = _outcome(action, capsys)

    assert not ctx.marker.exists(), "code embedded in a file ran"
    assert kind == row.expect, f"expected {row.expect}, got {kind}: {str(value)[:2000]}"
    if kind == "error":
        assert "Traceback" not in value and re.search(row.match, value), value
    elif kind == "rejected":
        reasons = [f"{r['path']}: {r['reason']}" for r in value["rejected"]]
        assert any(re.search(row.match, r) for r in reasons), reasons
    if row.check is not None:
        row.check(value, ctx)
    assert _snapshot(tmp_path, ctx.writable) == before, "a file outside the output folder changed"


def test_every_row_has_a_unique_id() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids)) and subprocess is not None
