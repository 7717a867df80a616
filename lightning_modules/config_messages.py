"""Config errors a user can act on: `{file}: {dotted.key}={value!r} {problem}`, and unknown keys listed
with the keys the section does know. Used by config.py (the job) and the other typed configs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from lightning_modules.errors import ConfigError


def first_error(exc: ValidationError, prefix: str = "") -> str:
    """pydantic's first complaint as `dotted.field: message` (under `prefix`, e.g. "dropout")."""
    first = exc.errors()[0]
    where = ".".join(str(x) for x in (prefix, *first["loc"]) if str(x))
    return f"{where}: {first['msg']}" if where else first["msg"]


def section_of(field: Any) -> type[BaseModel] | None:
    """The nested model a field holds (a config section), if any."""
    cls = field.annotation
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def unknown_key(key: str, section: type[BaseModel], source: str) -> ConfigError:
    known = ", ".join(section.model_fields)
    return ConfigError(f"{source}: unknown key '{key}' (known in this section: {known})")


def check_keys(data: dict[str, Any], cls: type[BaseModel], source: str, prefix: str = "") -> None:
    """Key names only, per file, so that a typo names the file it is in (values are checked once merged)."""
    for key, value in data.items():
        if key not in cls.model_fields:
            raise unknown_key(f"{prefix}{key}", cls, source)
        sub = section_of(cls.model_fields[key])
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{prefix}{key}' must be a mapping of {sub.__name__} fields")
            check_keys(value, sub, source, f"{prefix}{key}.")


_PROBLEMS = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "finite_number": "must be a finite number",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "is not one of {expected}",
}


def message(exc: ValidationError, data: dict[str, Any], source: str, root: type[BaseModel]) -> str:
    """The first error as `{source}: {dotted.key}={value!r} {problem}`; `root` is the validated model."""
    errors = exc.errors()
    first = errors[0]
    if first["type"] == "value_error":  # a cross-field rule: its message names the keys
        return f"{source}: {first['ctx']['error']}"
    name, value = _locate(first["loc"], data)
    if first["type"] == "extra_forbidden":
        section = root
        for part in first["loc"][:-1]:
            section = section_of(section.model_fields[str(part)]) or section
        return str(unknown_key(name, section, source))
    # One key failing several ways is a union (`limit_train_batches: float | int | None`): name them all.
    problems = [_problem(e) for e in errors if _locate(e["loc"], data)[0] == name]
    problem = " or ".join(dict.fromkeys(problems)).replace(" or must be ", " or ")
    if first["type"] == "finite_number":
        value = float(value)  # "nan" from YAML is a string
    return f"{source}: {name}={value!r} {problem}"


def _problem(error: Any) -> str:
    template = _PROBLEMS.get(error["type"])
    if template is None:
        return error["msg"].replace("Input should", "should")
    return template.format(**error.get("ctx", {}))


def _locate(loc: tuple[int | str, ...], data: Any) -> tuple[str, Any]:
    """The dotted key and the value given for it at a pydantic error location (union member tags dropped)."""
    name, value = "", data
    for part in loc:
        if isinstance(value, dict) and part in value:
            name, value = f"{name}.{part}" if name else str(part), value[part]
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            name, value = f"{name}[{part}]", value[part]
        else:
            break
    return name, value
