"""Class catalogues of the synthetic data: which shape, texture and colours each class is drawn with.

A class is a (shape, texture, primary colour, secondary colour) combination. Classes share colours
and shapes with each other on purpose, so no single global colour statistic tells them apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lightning_modules.errors import ConfigError

# Saturated, well-separated colours; objects and distractors use them (jittered per image).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 215, 40),
    "green": (45, 165, 60),
    "teal": (25, 160, 160),
    "blue": (40, 80, 215),
    "purple": (125, 50, 175),
    "pink": (240, 125, 185),
    "brown": (125, 75, 35),
    "white": (245, 245, 240),
    "black": (25, 25, 30),
    "gray": (130, 130, 130),
}
COLOUR_NAMES = tuple(COLOURS)

# The ImageNet-style set and the transfer set use disjoint shape families (same drawing style).
IMAGENET_SHAPES = ("disk", "square", "triangle", "star", "cross", "ring", "hexagon", "rhombus", "heart", "arrow")
TRANSFER_SHAPES = ("crescent", "tee", "chevron", "bowtie", "semicircle", "frame")
DETECTION_SHAPES = ("disk", "square", "triangle", "star", "cross")
TEXTURES = ("solid", "stripes", "checks", "dots", "gradient")

_TEXTURE_WORDS = {"stripes": ("striped", "stripes"), "checks": ("checked", "checks"), "dots": ("dotted", "dots")}


@dataclass(frozen=True)
class ClassSpec:
    """How one class looks: a shape filled with a texture in one or two colours."""

    shape: str
    texture: str
    primary: str
    secondary: str | None  # None for "solid"

    @property
    def name(self) -> str:
        """Readable name, e.g. "blue-striped red disk"."""
        if self.texture == "solid":
            return f"plain {self.primary} {self.shape}"
        if self.texture == "gradient":
            return f"{self.primary}-to-{self.secondary} fading {self.shape}"
        return f"{self.secondary}-{_TEXTURE_WORDS[self.texture][0]} {self.primary} {self.shape}"

    @property
    def other_name(self) -> str:
        """A second name, for the synonym list of LOC_synset_mapping.txt."""
        if self.texture == "solid":
            return f"{self.primary} {self.shape}"
        if self.texture == "gradient":
            return f"{self.primary} {self.shape} fading to {self.secondary}"
        return f"{self.primary} {self.shape} with {self.secondary} {_TEXTURE_WORDS[self.texture][1]}"

    @property
    def folder(self) -> str:
        """File-system friendly name, e.g. "blue_striped_red_disk"."""
        return self.name.replace("-", "_").replace(" ", "_")

    @property
    def colours(self) -> tuple[str, ...]:
        return (self.primary,) if self.secondary is None else (self.primary, self.secondary)


def combos_available(shapes: tuple[str, ...], n_colours: int = len(COLOURS)) -> int:
    """How many distinct classes `shapes` x textures x colours can give with `n_colours` colours."""
    per_shape = n_colours + (len(TEXTURES) - 1) * n_colours * (n_colours - 1)
    return len(shapes) * per_shape


def make_classes(n: int, shapes: tuple[str, ...], rng: np.random.Generator) -> list[ClassSpec]:
    """`n` distinct classes drawn from `shapes`; the first ones picked differ in at least two attributes.

    Only a few colours are used when `n` is small, so classes share colours (a colour histogram
    alone cannot separate them) and the network has to look at shape and texture too.
    """
    if n > combos_available(shapes):
        raise ConfigError(f"classes={n}: at most {combos_available(shapes)} distinct synthetic classes can be made")
    k = min(len(COLOURS), max(3, math.ceil(math.sqrt(n)) + 1))
    while combos_available(shapes, k) < 2 * n and k < len(COLOURS):
        k += 1
    palette = [int(i) for i in rng.permutation(len(COLOURS))[:k]]
    cand = np.array(
        [
            (s, t, p, -1 if t == 0 else q)
            for s in range(len(shapes))
            for t in range(len(TEXTURES))
            for p in palette
            for q in (palette if t else [-1])
            if q != p
        ],
        dtype=np.int64,
    )
    cand = cand[rng.permutation(len(cand))]
    chosen = _greedy_distinct(cand, n)
    return [
        ClassSpec(shapes[s], TEXTURES[t], COLOUR_NAMES[p], None if q < 0 else COLOUR_NAMES[q])
        for s, t, p, q in chosen.tolist()
    ]


def _greedy_distinct(cand: np.ndarray, n: int) -> np.ndarray:
    """Take candidates in order, first those at Hamming distance >= 2 from all taken, then any."""
    taken = np.zeros((n, cand.shape[1]), dtype=cand.dtype)
    used = np.zeros(len(cand), dtype=bool)
    m = 0
    for i, row in enumerate(cand):
        if m == n:
            break
        if m == 0 or (taken[:m] != row).sum(axis=1).min() >= 2:
            taken[m] = row
            used[i] = True
            m += 1
    rest = cand[~used][: n - m]
    taken[m : m + len(rest)] = rest
    return taken


def make_wnids(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct, sorted WordNet-style ids: 'n' + 8 digits, in ImageNet's n01..n14 range."""
    values = rng.choice(14_000_000, size=n, replace=False) + 1_000_000
    return [f"n{v:08d}" for v in sorted(int(v) for v in values)]
