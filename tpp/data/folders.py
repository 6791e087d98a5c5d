"""A hospital's image folders, read by tpp itself (no ``datasets`` download machinery, nothing written).

Labelled: ``DIR/<class>/<image>`` or ``DIR/{train,val,test}/<class>/<image>``, or labels in a
``metadata.csv`` (``datasets``' imagefolder convention: ``file_name,label[,...]``, paths relative to the
table's folder) in ``DIR`` or in each split folder. Without split folders a seeded stratified split is made on
every load (the same for the same files and seed), optionally grouped by a ``metadata.csv`` column
(``data.group_key``, e.g. ``patient_id``) so no group crosses splits. Unlabeled: every image below ``DIR``.
Images: PNG/JPEG/..., ``.npy``, DICOM (also extensionless, found by its preamble), NIfTI (2D), all read by
:mod:`tpp.data.images`.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from tpp.capped_read import list_folder
from tpp.data import Dataset, Split
from tpp.data.arrays import check_modality, resolve_root
from tpp.data.file_reading import FileReading, applied
from tpp.data.files import PackedStrings
from tpp.data.filesets import check_files, walk_images
from tpp.data.file_kinds import irregular
from tpp.data.labelled import files_origin, labelled_files
from tpp.data.tables import (SPLIT_NAMES, group_spellings, group_value, label_value, numeric_labels, read_table,
                             relative_image)
from tpp.errors import TppError

METADATA = "metadata.csv"


def image_folder(root: str | None, file: str | None) -> Path:
    """The folder ``data.root`` / ``data.file`` name (``file`` absolute: itself); a TppError when it is none."""
    path = Path(file) if file and Path(file).is_absolute() else resolve_root(root) / (file or "")
    if not path.is_dir():
        raise TppError(f"image folder '{path}' does not exist. Set data.root (and data.file for a sub-folder).")
    return path


def _metadata(path: Path, split_dirs: list[str]) -> dict[str, tuple[str, int, dict]]:
    """The rows of ``metadata.csv`` in ``path`` and in its split folders: image (relative to ``path``) ->
    (table, line, row)."""
    rows: dict = {}
    for folder in ["", *split_dirs]:
        table = path / folder / METADATA
        if not table.is_file() and not irregular(table):  # a fifo named metadata.csv: refused by read_table
            continue
        for number, row in read_table(table, ("file_name",))[1]:
            image = (PurePosixPath(folder) / relative_image(row["file_name"], table, number)).as_posix()
            if image in rows:
                raise TppError(f"'{table}', line {number}: image '{row['file_name']}' is listed twice "
                               f"(first in '{rows[image][0]}', line {rows[image][1]}).")
            rows[image] = (table, number, row)
    return rows


def _hint_flat(path: Path) -> str:
    """What to do with a folder whose images have no class: a CSV beside them, or unlabeled use."""
    tables = sorted(p.name for p in path.glob("*.csv") if p.name != METADATA)
    hint = (f" It holds '{tables[0]}': read labels from it with data.source=csv data.file=<this folder>/{tables[0]} "
            "(columns path,label), or rename it metadata.csv with columns file_name,label." if tables else
            f" Put each class in its own sub-folder (DIR/<class>/<image>) or add a {METADATA} with columns "
            "file_name,label.")
    return hint + " For unlabeled images (TPP) use data.source=unlabeled_folder."


def load_folder(name: str, root: str | None, file: str | None, *, modality: str | None, image_size: int,
                classes: list | None = None, group_key: str | None = None, val_fraction: float = 0.1,
                test_fraction: float = 0.2, seed: int = 0, on_bad_file: str = "error",
                reading: FileReading | None = None) -> Dataset:
    """Labelled image folder -> Dataset with train/val/test splits (images read at ``image_size``).

    Labels come from ``metadata.csv``'s ``label`` column when it has one, else from the class folders.
    ``reading``: how each file is decoded (:class:`FileReading`: frame, slice, window, pixel budget).
    Unreadable images fail or are skipped (``on_bad_file``; ``Dataset.skipped`` lists them); an empty class
    folder, an image missing from a metadata.csv that labels, fewer than two classes, or a class with no
    training image are always errors: never train on a silently wrong label set.
    """
    path = image_folder(root, file)
    modality = check_modality(modality, name, required=True)
    files, skipped = walk_images(path, on_bad_file)
    if not files:
        raise TppError(f"image folder '{path}' holds no images (PNG, JPEG, .npy, DICOM or NIfTI).")
    split_dirs = sorted({f.split("/")[0] for f in files if "/" in f and f.split("/")[0].lower() in SPLIT_NAMES})
    table = _metadata(path, split_dirs)
    given = None
    if split_dirs:
        outside = [f for f in files if f.split("/")[0] not in split_dirs]
        if outside:
            raise TppError(f"image folder '{path}' has split folders ({', '.join(split_dirs)}) but also "
                           f"'{outside[0]}' outside them; move it into one.")
        given = [SPLIT_NAMES[f.split("/")[0].lower()] for f in files]
    labelled_rows = any("label" in row for _, _, row in table.values())
    values = _table_labels(path, files, table) if labelled_rows else _folder_labels(path, files, split_dirs)
    if len(set(values)) < 2:
        raise TppError(f"image folder '{path}' has only one class ({values[0]}); classification needs two or more."
                       + _hint_flat(path))
    if group_key is None and any("patient_id" in row for _, _, row in table.values()):
        group_key = "patient_id"  # as the CSV source: a patient's images stay in one split
    groups = _groups(path, files, table, group_key) if group_key else None
    return labelled_files(name, modality, path, files, values, where=f"image folder '{path}'", image_size=image_size,
                          val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, on_bad_file=on_bad_file,
                          skipped=skipped, groups=groups, given=given, group_key=group_key, classes=classes,
                          reading=reading)


def _table_labels(path: Path, files: list[str], table: dict) -> list[str]:
    """Each image's ``label`` from metadata.csv; an image without a row, or a row naming no image, is an error."""
    found = set(files)
    for image, (csv_file, number, _) in table.items():
        if image not in found:
            raise TppError(f"'{csv_file}', line {number}: image '{image}' is not an image file in '{path}' "
                           "(missing, hidden, or not PNG/JPEG/.npy/DICOM/NIfTI). Fix the row or add the file.")
    values, numbers = [], numeric_labels(row.get("label") or "" for _, _, row in table.values())
    for image in files:
        if image not in table:
            raise TppError(f"image '{path / image}' has no row in {METADATA}; add a row (file_name,label) or "
                           "remove the image.")
        csv_file, number, row = table[image]
        if not row.get("label"):
            raise TppError(f"'{csv_file}', line {number}: empty label.")
        values.append(label_value(row["label"], csv_file, number, numbers))
    return values


def _folder_labels(path: Path, files: list[str], split_dirs: list[str]) -> list[str]:
    """Each image's class folder (the folder below ``path`` or below its split folder)."""
    depth = 1 if split_dirs else 0
    flat = [f for f in files if len(f.split("/")) < depth + 2]
    if flat:
        raise TppError(f"image folder '{path}' has images without a class sub-folder (e.g. '{flat[0]}') and no "
                       f"{METADATA} with a label column, so they have no label." + _hint_flat(path))
    values = [f.split("/")[depth] for f in files]
    for parent in ([path / d for d in split_dirs] if split_dirs else [path]):
        for folder in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in values:
                _listable(folder)
                raise TppError(f"class folder '{folder}' holds no images (the classes: {', '.join(sorted(set(values)))}"
                               "). Remove it or add its images.")
    return values


def _listable(folder: Path) -> None:
    """A TppError naming a class folder that cannot be listed (with ``data.on_bad_file=skip`` the walk left its
    images out: the class would have none)."""
    list_folder(folder, f"class '{folder.name}' has no images to learn from: make it readable or remove it")


def _groups(path: Path, files: list[str], table: dict, group_key: str) -> list[str]:
    """Each image's ``group_key`` value from metadata.csv (images of one group stay in one split)."""
    columns = sorted({c for _, _, row in table.values() for c in row})
    if not table or group_key not in columns:
        raise TppError(f"data.group_key '{group_key}' is not a column of '{path / METADATA}' "
                       f"(columns: {', '.join(c for c in columns if c != 'file_name') or 'no metadata.csv'}).")
    missing = [f for f in files if f not in table or not table[f][2].get(group_key)]
    if missing:
        raise TppError(f"image '{path / missing[0]}' has no {group_key} in {METADATA}; every image needs one "
                       "(data.group_key).")
    groups = [group_value(table[f][2][group_key], table[f][0], table[f][1], group_key) for f in files]
    group_spellings(groups, f"'{path / METADATA}'", group_key)
    return groups


def load_unlabeled_folder(name: str, root: str | None, file: str | None, *, modality: str | None,
                          image_size: int, on_bad_file: str = "error",
                          reading: FileReading | None = None) -> Dataset:
    """Every image below a folder as one unlabeled 'train' split (labels None, split id "all images"), each file
    read as ``reading`` says (:class:`FileReading`)."""
    path = image_folder(root, file)
    modality = check_modality(modality, name, required=True)
    files, skipped = walk_images(path, on_bad_file)
    if not files:
        raise TppError(f"image folder '{path}' holds no images (PNG, JPEG, .npy, DICOM or NIfTI).")
    images, kept, bad = check_files([os.path.join(str(path), f) for f in files], image_size, on_bad_file,
                                    reading=reading)
    recorded, formats = applied(reading, list(images.paths), f"image folder '{path}'")
    dataset = Dataset(name, modality, [], {"train": Split(images, None)}, skipped=skipped + bad,
                      split_id="all images", source=f"folder '{path}'", origin=files_origin(path, files),
                      reading=recorded)
    dataset.split_files = {"train": PackedStrings(files).take(kept)}
    dataset.file_resize, dataset.file_formats = True, formats
    return dataset
