"""The model zoo: one registry of backbones with a uniform interface (see backbone.Backbone)."""

from lightning_modules.models.activations import ACTIVATIONS, build_activation
from lightning_modules.models.backbone import Backbone, DropoutConfig, load_torchvision_weights
from lightning_modules.models.registry import MODEL_REGISTRY, build_model

__all__ = [
    "ACTIVATIONS",
    "MODEL_REGISTRY",
    "Backbone",
    "DropoutConfig",
    "build_activation",
    "build_model",
    "load_torchvision_weights",
]
