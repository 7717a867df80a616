"""Trial parameters (dotted job-config keys) as `--set` overrides and as an overlay config (best.yaml)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from lightning_modules.config import JobConfig, to_dict


def overrides(values: dict[str, Any], base: JobConfig) -> list[str]:
    """`key=value` items for `--set`, from dotted keys.

    Keys inside a mapping-valued field (model.dropout.classifier) become one item for the whole
    mapping, merged with the base config's: the job config replaces such mappings as a whole, so
    two separate items would keep only the last.
    """
    return [f"{k}={_yaml_value(v)}" for k, v in _grouped(values, base).items()]


def overlay(values: dict[str, Any], base: JobConfig) -> dict[str, Any]:
    """The nested overlay config (as in best.yaml) that sets `values` on top of `base`."""
    out: dict[str, Any] = {}
    for key, value in _grouped(values, base).items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _grouped(values: dict[str, Any], base: JobConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        field_key, rest = _split_field(key)
        if not rest:
            out[key] = value
            continue
        if field_key not in out:
            current = _get(to_dict(base), field_key)
            out[field_key] = dict(current) if isinstance(current, dict) else {}
        out[field_key][rest] = value
    return out


def _split_field(key: str) -> tuple[str, str]:
    """("model.dropout", "classifier") for a key inside a mapping field; (key, "") otherwise."""
    cls: Any = JobConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part not in cls.model_fields:
            return key, ""  # unknown: load_config names it
        cls = cls.model_fields[part].annotation
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return ".".join(parts[: i + 1]), ".".join(parts[i + 1 :])
    return key, ""


def _get(d: Any, key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _yaml_value(value: Any) -> str:
    """A value as `--set` reads it back (YAML): 1e-06 would come back as a string, 1.0e-06 as a float."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)
