"""Images listed in a CSV: ``path,label[,patient_id][,split]``, image paths relative to the CSV's folder."""
from __future__ import annotations

from pathlib import Path

from tpp.data import Dataset
from tpp.data.arrays import check_modality, resolve_root
from tpp.data.file_reading import FileReading
from tpp.data.file_kinds import irregular
from tpp.data.labelled import labelled_files
from tpp.data.tables import (group_spellings, group_value, label_value, numeric_labels, read_table, relative_image,
                             split_value)
from tpp.errors import TppError

PATIENT = "patient_id"


def csv_path(root: str | None, file: str | None) -> Path:
    """``data.file`` (relative to the data root, or absolute) -> the CSV's path."""
    if not file:
        raise TppError("data.source=csv needs data.file: the CSV (columns path,label[,patient_id][,split]), "
                       "relative to data.root.")
    return Path(file) if Path(file).is_absolute() else resolve_root(root) / file


def load_csv(name: str, root: str | None, file: str | None, *, modality: str | None, image_size: int,
             classes: list | None = None, group_key: str | None = None, val_fraction: float = 0.1,
             test_fraction: float = 0.2, seed: int = 0, on_bad_file: str = "error",
             reading: FileReading | None = None) -> Dataset:
    """A label CSV -> Dataset with train/val/test splits (images read at ``image_size``).

    ``split`` column: the splits as given (every row needs train, val or test). Otherwise a seeded stratified
    split, grouped by ``group_key`` (default ``patient_id`` when the CSV has that column): all images of one
    patient land in one split. Labels are strings or integers; classes are the sorted label values (or
    ``classes``). A missing image fails naming the CSV line, or with ``on_bad_file="skip"`` is left out.
    ``reading``: how each file is decoded (:class:`FileReading`: frame, slice, window, pixel budget).
    """
    table = csv_path(root, file)
    modality = check_modality(modality, name, required=True)
    header, rows = read_table(table, ("path", "label"))
    if group_key and group_key not in header:
        raise TppError(f"data.group_key '{group_key}' is not a column of '{table}' (columns: {', '.join(header)}).")
    group_key = group_key or (PATIENT if PATIENT in header else None)
    base, seen, skipped = table.parent, {}, []
    numbers = numeric_labels(row["label"] for _, row in rows)  # 'inf' is a number gone wrong only among numbers
    files, values, groups, given, origins = [], [], [], [], []
    for number, row in rows:
        image = relative_image(row["path"], table, number)
        if image in seen:
            raise TppError(f"label table '{table}', line {number}: image '{image}' is listed again (first on line "
                           f"{seen[image]}); list each image once.")
        seen[image] = number
        group = group_value(row[group_key], table, number, group_key) if group_key else ""  # "1.0" is "1"
        split = split_value(row["split"], table, number) if "split" in header else None
        kind = irregular(base / image)  # a fifo is never opened (reading one waits for a writer for ever)
        if kind or not (base / image).is_file():
            reason = f"is not a regular file ({kind})" if kind else f"does not exist (looked for '{base / image}')"
            if on_bad_file != "skip":
                raise TppError(f"label table '{table}', line {number}: image '{image}' {reason}. Fix the path "
                               "(relative to the CSV's folder), or pass data.on_bad_file=skip to leave such rows "
                               "out (listed in skipped.csv).")
            skipped.append((str(base / image), reason))
            continue
        files.append(image)
        values.append(label_value(row["label"], table, number, numbers))
        groups.append(group)
        given.append(split)
        origins.append(f"line {number} of '{table}'")
    if not files:
        raise TppError(f"label table '{table}': none of its {len(rows)} images exist; paths are relative to "
                       f"'{base}'.")
    if group_key:
        group_spellings(groups, f"label table '{table}'", group_key)
    order = sorted(range(len(files)), key=files.__getitem__)  # the split never depends on the row order
    files, values, groups, given, origins = ([column[i] for i in order]
                                             for column in (files, values, groups, given, origins))
    return labelled_files(name, modality, base, files, values, where=f"label table '{table}'",
                          image_size=image_size, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                          on_bad_file=on_bad_file, skipped=skipped, groups=groups if group_key else None,
                          given=given if "split" in header else None, group_key=group_key, classes=classes,
                          origins=origins, reading=reading)
