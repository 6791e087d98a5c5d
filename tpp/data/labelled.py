"""Labelled image files -> a Dataset: the part the folder and CSV sources share.

The seeded split is recomputed on every load from the files' relative paths (sorted, so the listing order of
the file system never matters), the labels, the groups, ``data.name`` and the seed: TPP, fine-tuning and
evaluation of one folder get the same split without writing anything into it. The split is recorded in the
run folder (``splits.json``, by :func:`tpp.builders.record_skipped`) and by hash in the adapter card.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from tpp.data import Dataset, Split
from tpp.data.file_reading import FileReading, applied
from tpp.data.files import PackedStrings
from tpp.data.filesets import check_files
from tpp.data.subsets import seeded_split_id, stratified_split
from tpp.data.tables import class_names, label_index
from tpp.errors import TppError

MIN_CLASS_IMAGES = 3  # a seeded split needs this many images of a class (one for each of train, val, test)


def folder_origin(folder: str) -> str:
    """The origin naming an image folder (an absolute path, links resolved), by hash: cards never hold paths."""
    return "files:" + hashlib.sha256(folder.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def files_origin(base: Path, files: list[str]) -> str:
    """The image collection behind file data, by hash (cards never hold paths): the deepest folder holding
    all ``files`` (paths relative to ``base``), links resolved. A TPP adapter and a fine-tuning run over the
    same images share it however they reach them (an image folder, a CSV in the folder above, a linked
    path), so the leakage check compares their splits. A copy of the images elsewhere is another
    collection: name both with the same ``data.origin`` to have them checked."""
    folders = {os.path.dirname(os.path.realpath(base / f)) for f in files}
    common = os.path.commonpath(sorted(folders)) if folders else str(Path(base).resolve())
    return folder_origin(common)


def holding_origins(base: Path, files) -> frozenset[str]:
    """The origins (:func:`folder_origin`) of every folder holding one of ``files`` at any depth: each file's
    folder and every folder above it, links resolved. With the held-out (val and test) files, a parent
    adapter pre-trained on a sub-folder or a folder above is caught by the leakage check, which compares
    origins only."""
    origins, seen = set(), set()
    for f in files:
        folder = os.path.dirname(os.path.realpath(os.path.join(base, f)))
        while folder not in seen:  # a folder seen before has had its ancestors added too
            seen.add(folder)
            origins.add(folder_origin(folder))
            folder, above = os.path.dirname(folder), folder
            if folder == above:
                break
    return frozenset(origins)


def _check_groups_in_one_split(groups: list[str], given: np.ndarray, where: str, group_key: str | None) -> None:
    """A split given by the data must keep each group (patient) in one split: else test images share a
    patient with training images, and the test score says less than it seems."""
    splits: dict[str, set] = {}
    for group, split in zip(groups, given):
        splits.setdefault(group, set()).add(str(split))
    mixed = sorted(g for g, s in splits.items() if len(s) > 1)
    if mixed:
        key, first = group_key or "group", mixed[0]
        raise TppError(f"{where} gives {key} '{first}' images in {' and '.join(sorted(splits[first]))} ({len(mixed)} "
                       f"{key}(s) span splits); put each patient's images in one split (or drop the given split "
                       "and let tpp make a grouped seeded split).")


def labelled_files(name: str, modality: str, base: Path, files: list[str], values: list[str], *, where: str,
                   image_size: int, val_fraction: float, test_fraction: float, seed: int, on_bad_file: str,
                   skipped: list, groups: list[str] | None = None, given: list[str] | None = None,
                   group_key: str | None = None, classes: list | None = None,
                   origins: list[str] | None = None, reading: FileReading | None = None) -> Dataset:
    """Images ``files`` (POSIX paths relative to ``base``) with label values (strings) -> Dataset.

    ``given``: each file's split (train / val / test) when the data fix it, else a seeded stratified split
    (grouped by ``groups``: no group in two splits). ``classes`` keeps (and orders) a subset of the classes;
    otherwise classes are the sorted label values. ``where`` names the data in errors, ``origins`` each file's
    source (e.g. its table line). Unreadable files fail or are skipped (``on_bad_file``, listed in ``skipped``).
    ``reading``: how each file is decoded (:class:`FileReading`: frame, slice, window, pixel budget).
    """
    names = class_names(values, where)
    if classes:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise TppError(f"data.classes {unknown} are not labels of {where} (labels: {', '.join(names)}).")
        keep = [i for i, v in enumerate(values) if v in classes]
        files, values = [files[i] for i in keep], [values[i] for i in keep]
        groups = groups and [groups[i] for i in keep]
        given = given and [given[i] for i in keep]
        origins = origins and [origins[i] for i in keep]
        names = list(classes)
    top = str(base)  # files are normalised POSIX paths: joining strings equals str(base / f), without a Path each
    _refuse_one_file_twice(top, files, where)
    images, kept, bad = check_files([os.path.join(top, f) for f in files], image_size, on_bad_file, origins=origins,
                                    reading=reading)
    skipped += bad
    labels = label_index(values, names)[kept]
    files = [files[i] for i in kept]
    recorded, formats = applied(reading, [os.path.join(top, f) for f in files], where)
    if given is not None:
        given_kept = np.array([given[i] for i in kept])
        if groups is not None:
            _check_groups_in_one_split([groups[i] for i in kept], given_kept, where, group_key)
        index = {s: np.flatnonzero(given_kept == s) for s in ("train", "val", "test")}
        split_id = "the data's own"
    else:
        _check_class_sizes(labels, names, where)
        codes = None if groups is None else np.unique([groups[i] for i in kept], return_inverse=True)[1]
        index = stratified_split(labels, val_fraction, test_fraction, name, seed, codes)
        split_id = seeded_split_id(seed, val_fraction, test_fraction, group_key)
    missing = [s for s, i in index.items() if not len(i)]
    if given is not None and missing:
        raise TppError(f"{where} gives no image to the split(s) {missing}; every one of train, val and test needs "
                       "images (or leave the split out and let tpp make a seeded split).")
    untrained = [n for k, n in enumerate(names) if not (labels[index["train"]] == k).any()]
    if untrained:
        raise TppError(f"{where}: class(es) {untrained} have images in val/test but none in train (or all of "
                       "theirs were skipped); the model could never learn them. Add training images or remove the "
                       "class.")
    splits = {s: Split(images[i], labels[i]) for s, i in index.items()}
    dataset = Dataset(name, modality, names, splits, skipped=skipped, split_id=split_id, source=where,
                      origin=files_origin(base, files), reading=recorded)
    packed = PackedStrings(files)  # relative paths, packed: no str per image kept alive
    dataset.split_files = {s: packed.take(i) for s, i in index.items()}
    dataset.held_out_origins = holding_origins(base, [files[i] for s in ("val", "test") for i in index[s]])
    dataset.file_resize, dataset.file_formats = True, formats
    return dataset


def _refuse_one_file_twice(top: str, files: list[str], where: str) -> None:
    """Two paths of one file through a symbolic link (``a/x.png`` and ``b/x.png`` -> ``a/x.png``) are refused:
    the image could land in train and in test, or count twice with two labels. Hard links and copies are
    separate files to tpp (a folder of hard links is a cheap way to make many test images)."""
    seen: dict[str, str] = {}
    for f in files:
        real = os.path.realpath(os.path.join(top, f))
        if real in seen:
            raise TppError(f"{where}: '{seen[real]}' and '{f}' are one file (a symbolic link), so the image would "
                           "count twice, perhaps in train and in test. Remove one.")
        seen[real] = f


def _check_class_sizes(labels: np.ndarray, names: list, where: str) -> None:
    """A seeded split needs :data:`MIN_CLASS_IMAGES` readable images per class."""
    counts = np.bincount(labels, minlength=len(names))
    small = {n: int(c) for n, c in zip(names, counts) if c < MIN_CLASS_IMAGES}
    if small:
        raise TppError(f"{where}: class(es) {small} have fewer than {MIN_CLASS_IMAGES} readable images, too few "
                       "for a train/val/test split. Add images, or leave the class out with data.classes.")
