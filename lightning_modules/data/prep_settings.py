"""The settings of the two preps, defined once: the functions, the `visionflow data` commands and the
Dagster assets' config (which embeds these models) all take their defaults, bounds and help from here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lightning_modules.data.images import DEFAULT_MAX_IMAGE_PIXELS


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ClassificationPrepSettings(_Settings):
    image_size: int = Field(64, ge=8, le=4096, description="side of the stored square images (px)")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="stratified val split when the source has no val/")
    max_rejected_fraction: float = Field(0.05, ge=0, le=1, description="fail when more files than this are unusable")
    workers: int = Field(2, ge=1, description="decode/validate processes")
    seed: int = Field(0, description="seed of the val split and the train order")
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        gt=0,
        description="reject images whose header claims more pixels (checked before any decoding)",
    )


class DetectionPrepSettings(_Settings):
    format: Literal["yolo", "coco", "voc"] = Field("yolo", description="label format of the source")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="seeded val split when the source has none")
    max_rejected_fraction: float = Field(
        0.1, ge=0, le=1, description="fail when more boxes (or images) than this are bad"
    )
    anchor_image_size: int = Field(416, gt=0, description="anchors are in pixels at this letterboxed size")
    seed: int = Field(0, description="seed of the val split and the k-means anchors")
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        gt=0,
        description="reject images whose header claims more pixels (checked before any decoding)",
    )


CLASSIFICATION = ClassificationPrepSettings()
DETECTION = DetectionPrepSettings()


def cli_option(settings: type[BaseModel], field: str) -> dict[str, Any]:
    """argparse keywords (default, type, help) for one setting, so the command line repeats nothing."""
    info = settings.model_fields[field]
    return {"default": info.default, "type": type(info.default), "help": info.description}
