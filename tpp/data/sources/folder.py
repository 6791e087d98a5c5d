"""A labelled image folder: DIR/<class>/*, DIR/{train,val,test}/<class>/* or metadata.csv; data.modality is required."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from tpp.data import Dataset
from tpp.data.folders import load_folder
from tpp.data.sources import Source, check_classes, missing_file, register
from tpp.data.file_reading import FileReading

ON_BAD_FILE_HELP = ("an unreadable image fails the run naming it (error) or is left out and listed in skipped.csv "
                    "(skip)")


@dataclass
class FolderOptions(FileReading):
    file: Optional[str] = field(default=None, metadata={"meaning": "image folder",
        "help": "the folder, relative to data.root (default: data.root itself)"})
    classes: Optional[list] = field(default=None, metadata={"meaning": "class subset",
        "help": "keep only these class folders (re-numbered in this order)"})
    group_key: Optional[str] = field(default=None, metadata={"meaning": "metadata.csv column",
        "help": "seeded splits keep each group in one split: a metadata.csv column (beside file_name), e.g. "
                "patient_id (default: patient_id when metadata.csv has that column)"})
    on_bad_file: Literal["error", "skip"] = field(default="error", metadata={"meaning": "unreadable files",
                                                                          "help": ON_BAD_FILE_HELP})

    def __post_init__(self):
        super().__post_init__()
        check_classes(self.classes)


def load(common, options: FolderOptions, seed: int, image_size: int, labels: bool = True) -> Dataset:
    """Images read and resized to ``image_size``; without split folders a seeded, stratified split (recomputed
    on every load, recorded in the run folder's splits.json; nothing is written into the folder)."""
    return load_folder(common.name, common.root, options.file, modality=common.modality, image_size=image_size,
                       classes=options.classes, group_key=options.group_key, val_fraction=common.val_fraction,
                       test_fraction=common.test_fraction, seed=seed, on_bad_file=options.on_bad_file,
                       reading=options.file_reading())


def preflight(common, options: FolderOptions, base: Path) -> list[str]:
    return missing_file(options.file, base)


register(Source(name="folder", options_cls=FolderOptions, load=load, preflight=preflight, needs_modality=True))
