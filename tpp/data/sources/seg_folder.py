"""An images/ + masks/ folder pair (same file stems) for segmentation, split here by seed; data.modality is required."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Optional

from tpp.data import Dataset
from tpp.data.file_reading import SAME_READING, FileReading
from tpp.data.segmentation import load_seg_folder
from tpp.data.sources import Source, check_mask_classes, missing_file, register
from tpp.data.sources.seg_npz import MASK_CLASSES_HELP


@dataclass
class SegFolderOptions:
    file: Optional[str] = field(default=None, metadata={
        "help": "the folder holding images/ and masks/, relative to data.root (default: data.root itself)"})
    mask_classes: Literal["binary", "indices"] = field(default="binary", metadata={
        "meaning": "mask classes", "help": MASK_CLASSES_HELP})
    classes: Optional[list] = field(default=None, metadata={
        "meaning": "mask class names", "help": "names of the mask classes, background first"})
    group_key: Optional[str] = field(default=None, metadata={"meaning": "metadata.csv column",
        "help": "a metadata.csv column (beside file_name) whose groups stay in one split, e.g. a patient id"})
    on_bad_file: Literal["error", "skip"] = field(default="error", metadata={"meaning": "unreadable files",
        "help": "an unreadable (or oversized) image or mask fails the run naming it (error), or its pair is left "
                "out and listed in skipped.csv (skip)"})
    max_image_pixels: Optional[int] = field(default=None, metadata={"meaning": SAME_READING,
        "help": "images and masks: " + next(f.metadata["help"] for f in fields(FileReading)
                                            if f.name == "max_image_pixels")})

    def __post_init__(self):
        check_mask_classes(self.mask_classes, self.classes)
        self.file_reading()  # a ConfigError for a pixel budget that is no positive number

    def file_reading(self) -> FileReading:
        """How image and mask files are read: within ``max_image_pixels`` (PNG / JPEG: no frames, slices or
        windows)."""
        return FileReading(max_image_pixels=self.max_image_pixels)


def load(common, options: SegFolderOptions, seed: int, image_size: int, labels: bool = True) -> Dataset:
    """Images (bilinear) and masks (nearest) resized to ``image_size``."""
    return load_seg_folder(common.name, common.root, options.file, image_size=image_size,
                           mask_classes=options.mask_classes, classes=options.classes, group_key=options.group_key,
                           modality=common.modality, val_fraction=common.val_fraction,
                           test_fraction=common.test_fraction, seed=seed, on_bad_file=options.on_bad_file,
                           reading=options.file_reading())


def preflight(common, options: SegFolderOptions, base: Path) -> list[str]:
    return missing_file(options.file, base)


register(Source(name="seg_folder", options_cls=SegFolderOptions, load=load, preflight=preflight, masks=True,
                needs_modality=True))
