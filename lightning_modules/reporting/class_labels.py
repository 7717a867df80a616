"""Class names on plot axes: long names ("brown_to_teal_fading_crescent") were cut off or overlapped.

Short names stay on the axes; when any name is longer than fits, the axes show numbers and a legend
beside the plot lists every number with its full name (as torchmetrics' and Ultralytics' confusion
matrices would need for ImageNet's names).
"""

from __future__ import annotations

AXIS_CHARS = 14  # what fits under a rotated tick at fontsize 7 without crowding the next one
LEGEND_ROWS = 40  # beyond this many classes no names are drawn at all (the plot itself has no ticks)


def axis_labels(names: list[str]) -> tuple[list[str], str | None]:
    """(tick labels, legend text or None): the names themselves if all are short, else numbers + a legend."""
    if all(len(n) <= AXIS_CHARS for n in names):
        return list(names), None
    return [str(i) for i in range(len(names))], "\n".join(f"{i}: {n}" for i, n in enumerate(names))


def add_legend(fig, legend: str | None) -> None:
    """The number -> name table to the right of the axes (saved with bbox_inches='tight')."""
    if legend:
        fig.text(1.0, 0.5, legend, ha="left", va="center", fontsize=7, family="monospace")
