"""An official MedMNIST 2D file, <root>/<data.name>.npz (or <root>/medmnist/), with its own splits and labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tpp.data import Dataset
from tpp.data.arrays import MEDMNIST_LICENSES, MEDMNIST_ORIGINS, load_medmnist
from tpp.data.sources import Source, register


@dataclass
class MedMNISTOptions:
    download: bool = field(default=False, metadata={
        "help": "download the file from the MedMNIST record on Zenodo (or TPP_MEDMNIST_URL) when it is absent"})


def load(common, options: MedMNISTOptions, seed: int, image_size: int, labels: bool = True) -> Dataset:
    """``common.name`` is the MedMNIST flag (breastmnist ...); ``labels=False`` leaves the label arrays unread."""
    dataset = load_medmnist(common.name, common.root, options.download, labels)
    dataset.origin = MEDMNIST_ORIGINS.get(common.name)
    return dataset


def preflight(common, options: MedMNISTOptions, base: Path) -> list[str]:
    if options.download or any((base / sub / f"{common.name}.npz").is_file() for sub in ("", "medmnist")):
        return []
    return [f"MedMNIST file '{common.name}.npz' is not in '{base}' or '{base / 'medmnist'}' "
            "(data.download=true fetches it from the MedMNIST record on Zenodo)."]


register(Source(name="medmnist", options_cls=MedMNISTOptions, load=load, preflight=preflight,
                license=MEDMNIST_LICENSES.get))
