"""A generic .npz file: train_/val_/test_ split keys, or one image and one label array split here by seed."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tpp.data import Dataset
from tpp.data.arrays import load_npz
from tpp.data.sources import Source, check_classes, missing_file, register


@dataclass
class NpzOptions:
    file: Optional[str] = field(default=None, metadata={"help": "path of the .npz file, relative to data.root"})
    image_key: str = field(default="images", metadata={
        "help": "key of the uint8 images (N, H, W[, C]); a file with its own splits has train_<key>, val_<key> ..."})
    label_key: str = field(default="labels", metadata={"help": "key of the integer labels (N,)"})
    class_names_key: Optional[str] = field(default="class_names", metadata={
        "help": "key of the class names, if the file has them (else the classes are named 0..K-1)"})
    classes: Optional[list] = field(default=None, metadata={"meaning": "class subset",
        "help": "keep only these class names (re-numbered in this order)"})

    def __post_init__(self):
        check_classes(self.classes)


def load(common, options: NpzOptions, seed: int, image_size: int, labels: bool = True) -> Dataset:
    """``labels=False``: a file with its own splits is read without its label arrays."""
    return load_npz(common.name, common.root, options.file, image_key=options.image_key,
                    label_key=options.label_key, class_names_key=options.class_names_key, classes=options.classes,
                    modality=common.modality, val_fraction=common.val_fraction, test_fraction=common.test_fraction,
                    seed=seed, labels=labels)


def preflight(common, options: NpzOptions, base: Path) -> list[str]:
    if not options.file:
        return ["data.source=npz needs data.file (path of the .npz, relative to data.root)."]
    return missing_file(options.file, base)


register(Source(name="npz", options_cls=NpzOptions, load=load, preflight=preflight))
