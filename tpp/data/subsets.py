"""Seeded stratified splits and nested label fractions."""
from __future__ import annotations

import hashlib
import math

import numpy as np


def _rng(*parts) -> np.random.Generator:
    """A generator that depends only on the given parts (stable across processes and runs)."""
    text = "|".join(str(p) for p in parts)
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()  # a name that is no UTF-8 too
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


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
    """Names a seeded split (recorded in cards and splits.json; two runs with equal ids split identically).
    ``seed`` is ``data.split_seed``; ids of runs made before it existed say ``seed N`` (the run's seed, which
    then drew the split) and so never equal a new id."""
    return f"seeded: split_seed {seed}, val {val}, test {test}, groups {group_key}"


MIN_SELECTION_IMAGES = 10  # fewer validation images than this: no best-step selection, the last step is kept


def val_fraction_used(label_fraction: float, val_label_fraction: float | None) -> float:
    """The fraction of the val split a fine-tune uses: ``data.val_label_fraction`` when given, else
    ``data.label_fraction`` (a site with 10% of its labels has 10% of its validation labels too)."""
    return label_fraction if val_label_fraction is None else val_label_fraction


def val_subset_index(labels: np.ndarray | None, count: int, fraction: float, dataset: str, seed: int) -> np.ndarray:
    """Indices (sorted) of a stratified ``fraction`` of a val split of ``count`` images, at least one per class
    (``labels`` (count,)); without labels (segmentation without per-image labels) a plain seeded fraction, at
    least one image. Nested across fractions like :func:`label_fraction_index`; an empty split stays empty."""
    if count == 0:
        return np.arange(0)
    strata = labels if labels is not None else np.zeros(count, dtype=np.int64)
    return label_fraction_index(strata, fraction, f"{dataset}/val", seed)


def selection_rule(select_best: bool, val_images: int) -> tuple[bool, str]:
    """Whether a fine-tune selects its best step on validation, and the phrase its summary line says.
    ``val_images``: validation images used; fewer than :data:`MIN_SELECTION_IMAGES` turn selection off."""
    if not select_best:
        return False, f"last step kept (train.select_best=false; {val_images} val images)"
    if val_images < MIN_SELECTION_IMAGES:
        return False, (f"last step kept: {val_images} val images are too few to select a step on "
                       f"(fewer than {MIN_SELECTION_IMAGES})")
    return True, f"best step selected on {val_images} val images"
