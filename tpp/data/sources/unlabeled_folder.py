"""Every image below a folder, unlabeled, as one train split (for pre-training); data.modality is required."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from tpp.data import Dataset
from tpp.data.folders import load_unlabeled_folder
from tpp.data.sources import Source, missing_file, register
from tpp.data.sources.folder import ON_BAD_FILE_HELP
from tpp.data.file_reading import FileReading


@dataclass
class UnlabeledFolderOptions(FileReading):
    file: Optional[str] = field(default=None, metadata={"meaning": "image folder",
        "help": "the folder, relative to data.root (default: data.root itself)"})
    on_bad_file: Literal["error", "skip"] = field(default="error", metadata={"meaning": "unreadable files",
                                                                          "help": ON_BAD_FILE_HELP})


def load(common, options: UnlabeledFolderOptions, seed: int, image_size: int, labels: bool = True) -> Dataset:
    """Images decoded and resized to ``image_size``; labels None."""
    return load_unlabeled_folder(common.name, common.root, options.file, modality=common.modality,
                                 image_size=image_size, on_bad_file=options.on_bad_file,
                                 reading=options.file_reading())


def preflight(common, options: UnlabeledFolderOptions, base: Path) -> list[str]:
    return missing_file(options.file, base)


register(Source(name="unlabeled_folder", options_cls=UnlabeledFolderOptions, load=load, preflight=preflight,
                needs_modality=True))
