"""A hospital's image folders through ``datasets``' imagefolder builder.

Labelled: ``DIR/<class>/<image>`` or ``DIR/{train,val,test}/<class>/<image>``; without split
folders a seeded stratified split is made and saved to ``DIR/splits.json``, optionally grouped by a
``metadata.csv`` column (``file_name`` + e.g. ``patient_id``) so no group crosses splits.
Unlabeled: every image below ``DIR`` (for target parameter pre-training).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tpp.data import Dataset, Split
from tpp.data.arrays import check_modality, filter_classes, resolve_root
from tpp.data.pixels import DEFAULT_LIMITS, ImageTooLarge, pil_size, training_mode
from tpp.data.files import ImageFiles
from tpp.data.subsets import seeded_split_id, stratified_split
from tpp.errors import TppError


def _folder(root: str | None, file: str | None) -> Path:
    path = Path(file) if file and Path(file).is_absolute() else resolve_root(root) / (file or "")
    if not path.is_dir():
        raise TppError(f"image folder '{path}' does not exist. Set data.root (and data.file for a sub-folder).")
    return path


def _load_builder(path: Path, drop_labels: bool):
    import datasets

    try:
        ds = datasets.load_dataset("imagefolder", data_dir=str(path), drop_labels=drop_labels)
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as exc:
        raise TppError(f"image folder '{path}' could not be read as an image folder: {exc}") from None
    return ds.cast_column("image", datasets.Image(decode=False))


class FolderDecoder:
    """A file -> uint8 (size, size) gray or (size, size, 3) RGB: the 8-bit training mode, then ``mode`` and a
    bilinear resize (what every image of the folder gets, read when a batch needs it)."""

    def __init__(self, size: int, mode: str):
        self.size, self.mode = size, mode

    def __call__(self, path: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:  # checked at load; a file replaced or removed since then is named, never a raw PIL error
            width, height = pil_size(path)
            if width * height > DEFAULT_LIMITS.max_pixels:
                raise ImageTooLarge(f"{width}x{height} pixels, more than the per-image limit")
            with Image.open(path) as img:
                img.load()
                img = training_mode(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImageTooLarge) as exc:
            raise TppError(f"image '{path}' changed or disappeared since the data was loaded "
                           f"({type(exc).__name__}: {exc}); restart the run.") from None
        return np.asarray(img.convert(self.mode).resize((self.size, self.size), Image.BILINEAR), dtype=np.uint8)


def _decode(paths: list[str], size: int, on_bad_file: str = "error",
            max_pixels: int | None = None) -> tuple[ImageFiles, list[int], list]:
    """Check every image by decoding it once (one at a time: memory stays flat in the number of files) and
    return them as :class:`ImageFiles` at ``size`` x ``size``, gray, or RGB when any image has colour,
    decoded again when read.

    Unreadable files (zero bytes, truncated, not an image, more than ``max_pixels`` pixels by their header:
    default :class:`tpp.data.pixels.PixelLimits`' per-image limit) fail at once naming the file, or with
    ``on_bad_file="skip"`` are left out. Returns (images, indices of the decoded paths, [(path, reason)]).
    """
    from PIL import Image, UnidentifiedImageError

    limit = max_pixels or DEFAULT_LIMITS.max_pixels
    kept, skipped, colour = [], [], False
    for i, p in enumerate(tqdm(paths, desc="checking images", unit="image", disable=len(paths) < 2000,
                               mininterval=10.0)):
        try:
            if os.path.getsize(p) == 0:
                raise ValueError("empty file (0 bytes)")
            width, height = pil_size(p)  # header only: a decompression bomb is refused before decoding
            if width * height > limit:
                raise ImageTooLarge(f"{width}x{height} = {width * height:,} pixels, more than the per-image "
                                    f"limit of {limit:,}")
            with Image.open(p) as img:
                img.load()
                colour = colour or training_mode(img).mode == "RGB"
            kept.append(i)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImageTooLarge) as exc:
            _bad_file(p, f"{type(exc).__name__}: {exc}", on_bad_file, skipped)
    if not kept:
        raise TppError(f"none of the {len(paths)} images could be read (first: {paths[0] if paths else '-'}).")
    mode = "RGB" if colour else "L"
    shape = (size, size, 3) if colour else (size, size)
    return ImageFiles([paths[i] for i in kept], FolderDecoder(size, mode), shape), kept, skipped


def _bad_file(path, reason: str, on_bad_file: str, skipped: list) -> None:
    """An unreadable image: an error naming it, or with ``on_bad_file="skip"`` a (path, reason) row in ``skipped``."""
    if on_bad_file != "skip":
        raise TppError(f"image '{path}' cannot be read ({reason}). Remove or replace it, or pass "
                       "data.on_bad_file=skip to leave such files out (listed in skipped.csv).")
    skipped.append((str(path), reason))


def _dangling_links(path: Path, on_bad_file: str) -> list:
    """Symbolic links below ``path`` whose target is missing (``datasets`` drops them silently): reported
    like any unreadable image (an error, or [(path, reason)] rows with ``on_bad_file="skip"``)."""
    skipped: list = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            link = Path(folder) / name
            if not name.startswith(".") and link.is_symlink() and not link.exists():
                _bad_file(link, f"dangling symbolic link: its target '{os.readlink(link)}' does not exist",
                          on_bad_file, skipped)
    return skipped


def load_folder(name: str, root: str | None, file: str | None, *, modality: str | None, image_size: int,
                classes: list | None = None, group_key: str | None = None, val_fraction: float = 0.1,
                test_fraction: float = 0.2, seed: int = 0, on_bad_file: str = "error") -> Dataset:
    """Labelled image folder -> Dataset with train/val/test splits (images resized to ``image_size``).

    Unreadable images fail or are skipped (``on_bad_file``; ``Dataset.skipped`` lists them); an empty
    class folder, or a class with no training image, is always an error: never train on a silently
    wrong label set.
    """
    path = _folder(root, file)
    modality = check_modality(modality, name, required=True)
    dangling = _dangling_links(path, on_bad_file)  # before the builder, which drops them silently
    ds = _load_builder(path, drop_labels=False)
    if "label" not in ds[next(iter(ds))].features:
        raise TppError(f"image folder '{path}' has no class sub-folders; use data.source=unlabeled_folder.")
    names = list(ds[next(iter(ds))].features["label"].names)
    _check_class_folders(path, names, split_layout=len(ds) > 1)
    rename, skipped = {"validation": "val"}, dangling
    if len(ds) > 1:
        splits = {rename.get(k, k): _split(v, image_size, on_bad_file, skipped) for k, v in ds.items()}
    else:
        splits = _seeded_split(path, next(iter(ds.values())), image_size, group_key, name,
                               val_fraction, test_fraction, seed, on_bad_file, skipped)
    missing = {"train", "val", "test"} - set(splits)
    if missing:
        raise TppError(f"image folder '{path}' has split folders but lacks {sorted(missing)}.")
    untrained = [n for k, n in enumerate(names) if not (splits["train"].labels == k).any()]
    if untrained:
        raise TppError(f"image folder '{path}': class(es) {untrained} have images in val/test but none in train "
                       "(or all of theirs were skipped); the model could never learn them. Add training images "
                       "or remove the class.")
    split_id = "the folder's own" if len(ds) > 1 else seeded_split_id(seed, val_fraction, test_fraction, group_key)
    dataset = Dataset(name, modality, names, splits, skipped=skipped, split_id=split_id, source=f"folder '{path}'")
    if classes:
        dataset.splits, dataset.class_names = filter_classes(dataset.splits, names, classes, path)
    return dataset


def _check_class_folders(path: Path, names: list, split_layout: bool) -> None:
    """Every class folder must hold images (``datasets`` silently drops empty ones)."""
    parents = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")] if split_layout else [path]
    for parent in parents:
        for folder in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in names:
                raise TppError(f"class folder '{folder}' holds no images (the other classes: {', '.join(names)}). "
                               "Remove it or add its images.")


def _split(hf_split, image_size: int, on_bad_file: str, skipped: list) -> Split:
    paths = [row["path"] for row in hf_split["image"]]
    images, kept, bad = _decode(paths, image_size, on_bad_file)
    skipped += bad
    return Split(images, np.asarray(hf_split["label"], dtype=np.int64)[kept])


def _seeded_split(path: Path, hf_split, image_size: int, group_key: str | None, name: str,
                  val: float, test: float, seed: int, on_bad_file: str, skipped: list) -> dict:
    paths = [row["path"] for row in hf_split["image"]]
    images, kept, bad = _decode(paths, image_size, on_bad_file)  # decode first: skipped files join no split
    skipped += bad
    labels = np.asarray(hf_split["label"], dtype=np.int64)[kept]
    groups = None
    if group_key:
        if group_key not in hf_split.column_names:
            raise TppError(f"data.group_key '{group_key}' is not a column of '{path / 'metadata.csv'}' "
                           f"(columns: {', '.join(c for c in hf_split.column_names if c not in ('image', 'label'))}).")
        column = hf_split[group_key]
        groups = np.unique(np.asarray([str(column[i]) for i in kept]), return_inverse=True)[1]
    index = stratified_split(labels, val, test, name, seed, groups)
    kept_paths = [paths[i] for i in kept]
    _write_splits(path, {k: sorted(os.path.relpath(kept_paths[i], path) for i in v) for k, v in index.items()}, seed)
    return {k: Split(images[v], labels[v]) for k, v in index.items()}


def _write_splits(path: Path, splits: dict, seed: int) -> None:
    """Record the seeded split beside the images (atomically); skipped when the folder is read-only."""
    target = path / "splits.json"
    tmp = path / f".splits.json.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"seed": seed, **splits}, indent=1))
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)


def load_unlabeled_folder(name: str, root: str | None, file: str | None, *, modality: str | None,
                          image_size: int, on_bad_file: str = "error") -> Dataset:
    """Every image below a folder as one unlabeled 'train' split (labels None, split id "all images")."""
    path = _folder(root, file)
    modality = check_modality(modality, name, required=True)
    dangling = _dangling_links(path, on_bad_file)  # before the builder, which drops them silently
    ds = _load_builder(path, drop_labels=True)
    paths = [row["path"] for split in ds.values() for row in split["image"]]
    if not paths:
        raise TppError(f"image folder '{path}' holds no images.")
    images, _, skipped = _decode(paths, image_size, on_bad_file)
    return Dataset(name, modality, [], {"train": Split(images, None)}, skipped=dangling + skipped,
                   split_id="all images", source=f"folder '{path}'")
