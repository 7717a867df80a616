"""Duplicate images by content: the same bytes under two labels, twice in a split, or in train and a held-out split.

A copy in two classes has no single right label (both are rejected, each naming the other); a copy of a
training image in val/test would make the held-out score measure memory (the held-out copy is rejected);
a second copy within one split only weights that image twice (the later copy is rejected). Hashes are the
md5 of the file bytes, the digest DVC uses too; they also give the prepared set's content hash.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

SPLIT_ORDER = ("train", "val", "test")  # which copy is kept: the training one first

Labelled = list[tuple[str, int]]


def file_md5(path: str) -> str | None:
    """md5 hex digest of a file's bytes; None when it cannot be read (the decoder then names the problem)."""
    h = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def hash_files(paths: list[str], pool=None) -> dict[str, str | None]:
    """{path: md5} for every path, in a process pool when given (reading is the cost)."""
    digests = pool.map(file_md5, paths, chunksize=256) if pool is not None else map(file_md5, paths)
    return dict(zip(paths, digests))


@dataclass
class Deduplicated:
    splits: dict[str, Labelled]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    counts: dict[str, int] = field(default_factory=lambda: {"across_classes": 0, "across_splits": 0, "within_split": 0})


def dedupe(splits: dict[str, Labelled], digests: dict[str, str | None], names: list[str]) -> Deduplicated:
    """Drop duplicate files from `splits` (split -> [(path, label)]); see the module docstring for the rules."""
    groups: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for split in SPLIT_ORDER:
        for path, label in splits.get(split) or []:
            digest = digests.get(path)
            if digest is not None:
                groups[digest].append((split, path, label))
    drop: dict[str, str] = {}
    out = Deduplicated(splits={})
    for copies in groups.values():
        if len(copies) > 1:
            _judge(copies, names, drop, out.counts)
    for split, items in splits.items():
        if items is not None:
            out.splits[split] = [(p, label) for p, label in items if p not in drop]
    out.rejected = [(p, reason) for p, reason in drop.items()]
    return out


def _judge(copies: list[tuple[str, str, int]], names: list[str], drop: dict[str, str], counts: dict[str, int]) -> None:
    labels = {label for _, _, label in copies}
    if len(labels) > 1:
        for _split, path, label in copies:
            others = "; ".join(f"{p} ({s}, class {names[lab]})" for s, p, lab in copies if p != path)
            drop[path] = (
                f"same image as {others}: one image under two classes has no single label "
                f"(here class {names[label]}); remove the wrong copy"
            )
        counts["across_classes"] += len(copies)
        return
    first_split, first, _ = copies[0]
    for split, path, _ in copies[1:]:
        if split == first_split:
            drop[path] = f"duplicate of {first} (same bytes, same class): counted once"
            counts["within_split"] += 1
        else:
            drop[path] = (
                f"duplicate of {first} ({first_split}): a held-out image must not also be a {first_split} image"
            )
            counts["across_splits"] += 1
