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

from tpp.data import Dataset, Split
from tpp.data.sources import check_modality, filter_classes, resolve_root
from tpp.data.subsets import stratified_split
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


def training_mode(img):
    """Gray modes become 8-bit gray ``L``, everything else ``RGB`` (training and inference alike)."""
    return img.convert("L") if img.mode in ("L", "I;16", "I", "1") else img.convert("RGB")


def _decode(paths: list[str], size: int) -> np.ndarray:
    """Decode images to uint8 (N, size, size) gray or (N, size, size, 3) RGB (RGB when any image has colour)."""
    from PIL import Image, UnidentifiedImageError

    loaded = []
    for p in paths:
        try:
            with Image.open(p) as img:
                img.load()
                loaded.append(training_mode(img))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise TppError(f"image '{p}' cannot be read ({exc}). Remove or replace it.") from None
    mode = "RGB" if any(img.mode == "RGB" for img in loaded) else "L"
    arrays = [np.asarray(img.convert(mode).resize((size, size), Image.BILINEAR)) for img in loaded]
    return np.stack(arrays).astype(np.uint8)


def load_folder(name: str, root: str | None, file: str | None, modality: str | None, image_size: int,
                classes: list | None, group_key: str | None, val_fraction: float, test_fraction: float,
                seed: int) -> Dataset:
    """Labelled image folder -> Dataset with train/val/test splits (images resized to ``image_size``)."""
    path = _folder(root, file)
    modality = check_modality(modality, name, required=True)
    ds = _load_builder(path, drop_labels=False)
    if "label" not in ds[next(iter(ds))].features:
        raise TppError(f"image folder '{path}' has no class sub-folders; use data.source=unlabeled_folder.")
    names = list(ds[next(iter(ds))].features["label"].names)
    rename = {"validation": "val"}
    if len(ds) > 1:
        splits = {rename.get(k, k): _split(v, image_size) for k, v in ds.items()}
    else:
        splits = _seeded_split(path, next(iter(ds.values())), image_size, group_key, name,
                               val_fraction, test_fraction, seed)
    missing = {"train", "val", "test"} - set(splits)
    if missing:
        raise TppError(f"image folder '{path}' has split folders but lacks {sorted(missing)}.")
    dataset = Dataset(name, modality, names, splits)
    if classes:
        dataset.splits, dataset.class_names = filter_classes(dataset.splits, names, classes, path)
    return dataset


def _split(hf_split, image_size: int) -> Split:
    paths = [row["path"] for row in hf_split["image"]]
    return Split(_decode(paths, image_size), np.asarray(hf_split["label"], dtype=np.int64))


def _seeded_split(path: Path, hf_split, image_size: int, group_key: str | None, name: str,
                  val: float, test: float, seed: int) -> dict:
    labels = np.asarray(hf_split["label"], dtype=np.int64)
    groups = None
    if group_key:
        if group_key not in hf_split.column_names:
            raise TppError(f"data.group_key '{group_key}' is not a column of '{path / 'metadata.csv'}' "
                           f"(columns: {', '.join(c for c in hf_split.column_names if c not in ('image', 'label'))}).")
        groups = np.unique(np.asarray([str(g) for g in hf_split[group_key]]), return_inverse=True)[1]
    index = stratified_split(labels, val, test, name, seed, groups)
    paths = [row["path"] for row in hf_split["image"]]
    _write_splits(path, {k: sorted(os.path.relpath(paths[i], path) for i in v) for k, v in index.items()}, seed)
    images = _decode(paths, image_size)
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


def load_unlabeled_folder(name: str, root: str | None, file: str | None, modality: str | None,
                          image_size: int) -> Dataset:
    """Every image below a folder as one unlabeled 'train' split (labels None)."""
    path = _folder(root, file)
    modality = check_modality(modality, name, required=True)
    ds = _load_builder(path, drop_labels=True)
    paths = [row["path"] for split in ds.values() for row in split["image"]]
    if not paths:
        raise TppError(f"image folder '{path}' holds no images.")
    return Dataset(name, modality, [], {"train": Split(_decode(paths, image_size), None)})
