"""What a study is: base job config, variants (config overrides), a verdict and a plot from the runs.

A study never trains by itself: `runner.run_study` launches one training job per `Variant` and hands
the finished jobs (`VariantResult`, i.e. their result.json and run folder) to the study's `verdict`
and `plot`. Verdicts are numbers computed from those runs plus one paragraph built from the numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lightning_modules.config_messages import first_error
from lightning_modules.errors import ConfigError
from lightning_modules.studies.criteria import Rule

SIZES = ("default", "tiny", "paper")
# What every paper-size job adds: full width, the GPU defaults (bf16 autocast, channels-last memory).
PAPER_GPU = ["model.width=1.0", "trainer.precision=bf16-mixed", "trainer.channels_last=true"]


class StudyParams(BaseModel):
    """A study's own knobs (what it varies, and its verdict's thresholds), typed: each study subclasses
    this with its fields and defaults; `--param key=value` and the Dagster config set them by name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        description="repeat every variant once per seed; the rules are judged on intervals over them "
        "([]: one run per variant, and no interval)",
    )
    # The verdict's declared criteria (studies/criteria.py): each study sets its defaults, chosen before
    # any run; changing them is a config change, recorded as params of the study's MLflow run.
    rules: list[Rule] = Field(default_factory=list, description="the declared verdict rules")

    @field_validator("seeds", mode="before")
    @classmethod
    def _one_seed(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value  # `seeds=3`


@dataclass(frozen=True)
class Variant:
    """One training job of a study: its folder name, `--set` overrides and tags (what it varies)."""

    name: str
    overrides: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class VariantResult:
    """A finished (or failed) job of a study."""

    name: str
    tags: dict[str, str]
    run_dir: Path | None  # None: no job of it ever started (every seed failed before)
    result: dict[str, Any]  # the job's result.json; {} when it failed
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.result.get("status") == "finished"

    @property
    def history(self) -> list[dict[str, Any]]:
        return sorted(self.result.get("history") or [], key=lambda r: r["epoch"])

    def curve(self, key: str) -> list[float | None]:
        """The history column `key` per epoch (None where an epoch lacks it)."""
        return [_num(r.get(key)) for r in self.history]

    def gradient_flow(self) -> list[dict[str, Any]]:
        """RUN_DIR/gradient_flow.jsonl records ({step, layers, norms}), in step order."""
        path = self.run_dir / "gradient_flow.jsonl" if self.run_dir else None
        if path is None or not path.is_file():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by_step = {r["step"]: r for r in records}  # a resumed run may repeat a step: keep the last
        return [by_step[s] for s in sorted(by_step)]


@dataclass
class StudyResults:
    """Everything a verdict or plot sees: the variants' results, the study params, extra measurements."""

    variants: list[VariantResult]
    params: Any = field(default_factory=StudyParams)  # the study's own StudyParams subclass
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the batch study's tuner picks

    def get(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r} (have {', '.join(v.name for v in self.variants)})")

    @property
    def ok(self) -> list[VariantResult]:
        return [v for v in self.variants if v.ok]


@dataclass(frozen=True)
class Study:
    """A measured study.

    variants(params) -> the jobs; verdict(results) -> {"numbers": {name: float|None}, "text": str, ...};
    plot(results, path) -> path. `params` is the study's StudyParams subclass (fields and defaults);
    `sizes[size]` holds `overrides` (applied to every job before the user's and the variant's own) and
    `params` (values that size sets before the user's). `extra(ctx)` runs after the
    jobs, in this process, for measurements that are not training jobs (the batch study's tuner).
    """

    name: str
    title: str
    config: str  # file name in configs/
    dataset: str  # the prepared set it expects under a prepared root: "imagenet" or "transfer"
    variants: Callable[[Any], list[Variant]]
    verdict: Callable[[StudyResults], dict[str, Any]]
    plot: Callable[[StudyResults, Path], Path]
    params: type[StudyParams] = StudyParams
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    tolerate_failures: bool = False  # a diverging variant is a result (activations), not a broken study
    question: str = ""

    def params_for(self, size: str, params: dict[str, Any] | None = None) -> Any:
        """The params of one run: the defaults, then the size's values, then the user's; a bad or unknown
        key is a ConfigError naming the study and the field."""
        values = {**self.sizes.get(size, {}).get("params", {}), **(params or {})}
        try:
            return self.params.model_validate(values)
        except ValidationError as exc:
            known = ", ".join(self.params.model_fields)
            raise ConfigError(f"study {self.name}: param {first_error(exc)} (params: {known})") from None

    def size_overrides(self, size: str) -> list[str]:
        return list(self.sizes.get(size, {}).get("overrides", []))


# -- small helpers the verdicts share ------------------------------------------------------------


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def present(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def last(values: list[float | None]) -> float | None:
    vals = present(values)
    return vals[-1] if vals else None


def best(values: list[float | None], mode: str = "max") -> float | None:
    vals = present(values)
    if not vals:
        return None
    return max(vals) if mode == "max" else min(vals)


def epochs_to(values: list[float | None], threshold: float | None, mode: str = "max") -> int | None:
    """First epoch (1-based) whose value reaches `threshold` (>= for max, <= for min); None: never."""
    if threshold is None:
        return None
    for i, v in enumerate(values, start=1):
        if v is not None and (v >= threshold if mode == "max" else v <= threshold):
            return i
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for the verdict text; "n/a" when it was not measured."""
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return str(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.{max(1, digits - 1)}e}"
    if abs(v) >= 10**digits:
        return f"{v:.0f}"  # .3g would print 1590 as 1.59e+03
    return f"{v:.{digits}g}"


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def signed_pct(new: float | None, old: float | None) -> str:
    r = ratio(new, old)
    return "n/a" if r is None else f"{100 * (r - 1):+.0f}%"


def setup_axes():
    """A fresh Agg figure helper (matplotlib imported lazily: it is slow and not always needed)."""
    import matplotlib  # lazy: slow to import; the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend (see above)

    return plt


def save(fig, path: Path) -> Path:
    plt = setup_axes()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def finish(fig, axes, path: Path, title: str, xlabel: str = "epoch", legend_size: int = 7) -> Path:
    """The common end of a study plot: x label, grid and legend on every panel, title, save."""
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.suptitle(title)
    return save(fig, path)


def tiny(
    train_batches: int,
    epochs: int | None = None,
    *extra: str,
    batch: int | None = 8,
    params: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """`Study.sizes` with the `tiny` size (tests): eighth-width nets, a few train batches, one val batch."""
    overrides = ["model.width=0.125", f"trainer.limit_train_batches={train_batches}", "trainer.limit_val_batches=1"]
    overrides += [f"trainer.max_epochs={epochs}"] if epochs is not None else []
    overrides += [f"data.batch_size={batch}"] if batch is not None else []
    # one run per variant unless a test asks for seeds: the tiny size checks the machinery, not the claim
    return {"tiny": {"overrides": [*overrides, *extra], "params": {"seeds": [], **(params or {})}}}


def paper(*overrides: str, params: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """`Study.sizes` with the `paper` size: the scale of the study's source, meant for a GPU."""
    return {"paper": {"overrides": [*PAPER_GPU, *overrides], **({"params": params} if params else {})}}


def failed_note(results: StudyResults) -> str:
    bad = [v for v in results.variants if not v.ok]
    if not bad:
        return ""
    return (
        " Failed variants (no numbers): "
        + "; ".join(f"{v.name} ({(v.error or 'unfinished')[:120]})" for v in bad)
        + "."
    )
