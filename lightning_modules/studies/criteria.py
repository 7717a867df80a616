"""Declared verdict rules, judged on intervals over seeds.

A study states its criteria before it runs: each `Rule` names a figure the study's verdict computes
(e.g. `plain.deep_over_shallow`), a comparison and a threshold, with the claim it tests. The runner
computes the figure once per seed, and a rule is

- "confirmed" when the whole 95% interval of the mean over seeds lies on the claim's side of the threshold,
- "refuted" when the whole interval lies on the other side,
- "not distinguishable" otherwise (the interval straddles the threshold, fewer than 2 seeds, or no value).

The interval is Student's t over seeds (mean +- t(0.975, n-1) * sd / sqrt(n)): with 3 seeds t = 4.30, so
a claim needs an effect well beyond the seed-to-seed spread. A study's verdict is "confirmed" when every
rule is, "refuted" when any rule is, else "not distinguishable".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["confirmed", "refuted", "not distinguishable"]
CONFIRMED: Verdict = "confirmed"
REFUTED: Verdict = "refuted"
UNCLEAR: Verdict = "not distinguishable"


class Rule(BaseModel):
    """One declared criterion: `figure op threshold` must hold for the whole 95% interval over seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    claim: str = Field(description="what the rule tests, in words")
    figure: str = Field(description="a number the study's verdict computes per seed")
    op: Literal["<", ">"] = Field(description="the claim's side of the threshold")
    threshold: float = Field(description="the null: no effect (chosen before any run)")

    def describe(self) -> str:
        return f"{self.claim}: `{self.figure}` {self.op} {self.threshold:g}, for the whole 95% interval over seeds"


@dataclass(frozen=True)
class Figure:
    """A figure over seeds: the per-seed values (None where a seed had none), mean and 95% interval."""

    values: list[float | None]

    @property
    def present(self) -> list[float]:
        return [v for v in self.values if v is not None and math.isfinite(v)]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.present) if self.present else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        """Student's t interval of the mean; None below 2 values (no spread to judge by)."""
        xs = self.present
        if len(xs) < 2:
            return None
        from scipy.stats import t  # lazy: scipy is slow to import and only the verdict needs it

        half = float(t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
        mean = statistics.fmean(xs)
        return (mean - half, mean + half)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci95": list(self.ci95) if self.ci95 else None, "values": self.values}


def judge(rule: Rule, figure: Figure) -> Verdict:
    interval = figure.ci95
    if interval is None:
        return UNCLEAR
    low, high = interval
    below, above = high < rule.threshold, low > rule.threshold
    if (below and rule.op == "<") or (above and rule.op == ">"):
        return CONFIRMED
    if below or above:
        return REFUTED
    return UNCLEAR


def overall(verdicts: list[Verdict]) -> Verdict:
    if verdicts and all(v == CONFIRMED for v in verdicts):
        return CONFIRMED
    return REFUTED if REFUTED in verdicts else UNCLEAR


def evaluate(rules: list[Rule], per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The rules judged on per-seed verdict numbers: the figures, each rule's verdict, and the study's."""
    figures = {r.figure: Figure([_num(n.get(r.figure)) for n in per_seed]) for r in rules}
    judged = [{**r.model_dump(), "verdict": judge(r, figures[r.figure])} for r in rules]
    return {
        "rule": [r.model_dump() for r in rules],
        "figures": {name: f.as_dict() for name, f in figures.items()},
        "rules": judged,
        "verdict": overall([j["verdict"] for j in judged]),
    }


def intervals(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every number the verdict computes, as mean and 95% interval over seeds (not only the rules' figures)."""
    keys = sorted(set().union(*(n.keys() for n in per_seed)))
    figures = {k: Figure([_num(n.get(k)) for n in per_seed]) for k in keys}
    return {k: f.as_dict() for k, f in figures.items() if f.present}


def summary(evaluated: dict[str, Any]) -> str:
    """One sentence per rule: the claim, the mean and interval, and what they decide."""
    parts = []
    for r in evaluated["rules"]:
        f = evaluated["figures"][r["figure"]]
        ci = f["ci95"]
        where = "no interval (fewer than 2 seeds)" if ci is None else f"95% interval [{ci[0]:.4g}, {ci[1]:.4g}]"
        mean = "n/a" if f["mean"] is None else f"{f['mean']:.4g}"
        parts.append(f"{r['claim']} ({r['figure']} {r['op']} {r['threshold']:g}): mean {mean}, {where}: {r['verdict']}")
    return "; ".join(parts) + "."


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None
