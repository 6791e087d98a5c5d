"""Seeded stratified splits and nested label fractions."""
from __future__ import annotations

import hashlib
import math

import numpy as np


def _rng(*parts) -> np.random.Generator:
    """A generator that depends only on the given parts (stable across processes and runs)."""
    text = "|".join(str(p) for p in parts)
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def label_fraction_index(labels: np.ndarray, fraction: float, dataset: str, seed: int) -> np.ndarray:
    """Indices of a stratified ``fraction`` of ``labels`` (sorted).

    Depends only on (dataset, labels, fraction, seed); nested across fractions (each class is
    permuted once per (dataset, seed) and a prefix is taken); at least one example per class.
    """
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = _rng("label_fraction", dataset, seed)
    keep = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        keep.append(members[: max(1, math.ceil(fraction * len(members)))])
    return np.sort(np.concatenate(keep))


def stratified_split(labels: np.ndarray, val: float, test: float, dataset: str, seed: int,
                     groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Seeded train/val/test indices, stratified by label; with ``groups`` no group spans two splits.

    Grouped splitting assigns whole groups (shuffled) to splits until each split's share is met,
    per majority label of the group, so strata stay roughly balanced.
    """
    rng = _rng("split", dataset, seed)
    units = np.arange(len(labels)) if groups is None else np.unique(groups)
    if groups is None:
        unit_label = labels
        members = {i: np.array([i]) for i in units}
    else:
        members = {g: np.flatnonzero(groups == g) for g in units}
        unit_label = np.array([np.bincount(labels[members[g]]).argmax() for g in units])
    out = {"train": [], "val": [], "test": []}
    for cls in np.unique(unit_label):
        cls_units = units[unit_label == cls]
        cls_units = cls_units[rng.permutation(len(cls_units))]
        n = len(cls_units)
        n_test = int(round(test * n))
        n_val = int(round(val * n))
        for name, chunk in (("test", cls_units[:n_test]), ("val", cls_units[n_test:n_test + n_val]),
                            ("train", cls_units[n_test + n_val:])):
            out[name] += [members[u] for u in chunk]
    return {k: np.sort(np.concatenate(v)) if v else np.array([], dtype=int) for k, v in out.items()}


def seeded_split_id(seed: int, val: float, test: float, group_key: str | None) -> str:
    """Names a seeded split (recorded in cards; two runs with equal ids split identically)."""
    return f"seeded: seed {seed}, val {val}, test {test}, groups {group_key}"
