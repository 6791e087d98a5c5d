"""An official MedMNIST 2D file, <root>/<data.name>.npz (or <root>/medmnist/), with its own splits and labels."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from tpp.data import Dataset
from tpp.data.arrays import MEDMNIST, MEDMNIST_LICENSES, known_origin, load_medmnist
from tpp.data.sources import Source, register


@dataclass
class MedMNISTOptions:
    download: bool = field(default=False, metadata={
        "help": "download the file from the MedMNIST record on Zenodo (or TPP_MEDMNIST_URL) when it is absent"})


def load(common, options: MedMNISTOptions, seed: int, image_size: int, labels: bool = True) -> Dataset:
    """``common.name`` is the MedMNIST flag (breastmnist ...); ``labels=False`` leaves the label arrays unread."""
    dataset = load_medmnist(common.name, common.root, options.download, labels)
    dataset.origin = known_origin(common.name)
    return dataset


def preflight(common, options: MedMNISTOptions, base: Path) -> list[str]:
    if common.name not in MEDMNIST:  # a typo: no download can fix it
        close = difflib.get_close_matches(str(common.name), sorted(MEDMNIST), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return [f"data.name: '{common.name}' is no MedMNIST dataset.{hint} Known: {', '.join(sorted(MEDMNIST))}. "
                "For other files use data.source=npz or folder."]
    if options.download or any((base / sub / f"{common.name}.npz").is_file() for sub in ("", "medmnist")):
        return []
    return [f"MedMNIST file '{common.name}.npz' is not in '{base}' or '{base / 'medmnist'}' "
            "(data.download=true fetches it from the MedMNIST record on Zenodo)."]


register(Source(name="medmnist", options_cls=MedMNISTOptions, load=load, preflight=preflight,
                license=MEDMNIST_LICENSES.get))
