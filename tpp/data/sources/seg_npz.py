"""A .npz file of images and segmentation masks (optional per-image labels and groups), split here by seed."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from tpp.data import Dataset
from tpp.data.segmentation import load_seg_npz
from tpp.data.sources import Source, check_mask_classes, missing_file, register

MASK_CLASSES_HELP = ("binary masks (0/1 or 0/255; data.classes may rename the two); indices (values 0..K-1 named "
                     "by data.classes, background first)")


@dataclass
class SegNpzOptions:
    file: Optional[str] = field(default=None, metadata={"help": "path of the .npz file, relative to data.root"})
    image_key: str = field(default="images", metadata={"help": "key of the uint8 images (N, H, W[, C])"})
    mask_key: str = field(default="masks", metadata={"help": "key of the uint8 class-index masks (N, H, W)"})
    label_key: str = field(default="labels", metadata={
        "help": "key of per-image labels (N,), if any: splits are stratified by them"})
    class_names_key: Optional[str] = field(default="class_names", metadata={"help": "key of the label names, if any"})
    mask_classes: Literal["binary", "indices", "from_label"] = field(default="binary", metadata={
        "meaning": "mask classes",
        "help": MASK_CLASSES_HELP + "; from_label (foreground = 1 + the image's label: background / one lesion "
                "class per label name)"})
    classes: Optional[list] = field(default=None, metadata={
        "meaning": "mask class names", "help": "names of the mask classes, background first"})
    group_key: Optional[str] = field(default=None, metadata={
        "help": "key of per-image group ids (N,) whose groups stay in one split, e.g. a patient id or dup_group"})

    def __post_init__(self):
        check_mask_classes(self.mask_classes, self.classes)


def load(common, options: SegNpzOptions, seed: int, image_size: int, labels: bool = True) -> Dataset:
    """Images and masks as stored (their own size); labels stratify the split and are always read."""
    return load_seg_npz(common.name, common.root, options.file, image_key=options.image_key,
                        mask_key=options.mask_key, label_key=options.label_key,
                        class_names_key=options.class_names_key, mask_classes=options.mask_classes,
                        classes=options.classes, group_key=options.group_key, modality=common.modality,
                        val_fraction=common.val_fraction, test_fraction=common.test_fraction, seed=seed)


def preflight(common, options: SegNpzOptions, base: Path) -> list[str]:
    if not options.file:
        return ["data.source=seg_npz needs data.file (path of the .npz, relative to data.root)."]
    return missing_file(options.file, base)


register(Source(name="seg_npz", options_cls=SegNpzOptions, load=load, preflight=preflight, masks=True))
