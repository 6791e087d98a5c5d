"""Images listed in a CSV (path,label[,patient_id][,split]; paths relative to the CSV); data.modality is required."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from tpp.data import Dataset
from tpp.data.csvfiles import PATIENT, load_csv
from tpp.data.sources import Source, check_classes, missing_file, register
from tpp.data.sources.folder import ON_BAD_FILE_HELP
from tpp.data.file_reading import FileReading
from tpp.data.tables import group_value, label_value, numeric_labels, read_table
from tpp.errors import TppError


@dataclass
class CsvOptions(FileReading):
    file: Optional[str] = field(default=None, metadata={
        "help": "the CSV, relative to data.root: a header row path,label[,patient_id][,split], one row per image"})
    classes: Optional[list] = field(default=None, metadata={"meaning": "class subset",
        "help": "keep only these labels (re-numbered in this order; default: every label, sorted)"})
    group_key: Optional[str] = field(default=None, metadata={
        "help": "seeded splits keep each group in one split: a CSV column (default: patient_id when present)"})
    on_bad_file: Literal["error", "skip"] = field(default="error", metadata={"meaning": "unreadable files",
                                                                          "help": ON_BAD_FILE_HELP})

    def __post_init__(self):
        super().__post_init__()
        check_classes(self.classes)


def load(common, options: CsvOptions, seed: int, image_size: int, labels: bool = True) -> Dataset:
    """Images read and resized to ``image_size``; the CSV's split column, else a seeded, stratified split
    grouped by patient (recomputed on every load, recorded in the run folder's splits.json)."""
    return load_csv(common.name, common.root, options.file, modality=common.modality, image_size=image_size,
                    classes=options.classes, group_key=options.group_key, val_fraction=common.val_fraction,
                    test_fraction=common.test_fraction, seed=seed, on_bad_file=options.on_bad_file,
                    reading=options.file_reading())


def preflight(common, options: CsvOptions, base: Path) -> list[str]:
    if not options.file:
        return ["data.source=csv needs data.file: the CSV (columns path,label[,patient_id][,split]), relative to "
                "data.root."]
    problems = missing_file(options.file, base)
    path = Path(options.file) if Path(options.file).is_absolute() else base / options.file
    if not problems and path.is_file():
        try:  # the columns, rows and labels, before any image is read
            header, rows = read_table(path, ("path", "label"))
            group_key = options.group_key or (PATIENT if PATIENT in header else None)
            numbers = numeric_labels(row["label"] for _, row in rows)
            for number, row in rows:
                label_value(row["label"], path, number, numbers)
                if group_key in row:
                    group_value(row[group_key], path, number, group_key)
        except TppError as exc:
            problems.append(str(exc))
    return problems


register(Source(name="csv", options_cls=CsvOptions, load=load, preflight=preflight, needs_modality=True))
