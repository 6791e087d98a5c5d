"""Datasets as in-memory arrays: sources, seeded splits, label fractions and tensor transforms.

Every source returns a :class:`Dataset`: uint8 images per split (N, H, W) or (N, H, W, C), integer
labels (N,) (or None for unlabeled images), class names and a DICOM modality code.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# DICOM Modality codes; X-ray codes count as one modality when adapters are compared.
MODALITY_GROUPS = {"CR": "XRAY", "DX": "XRAY", "RG": "XRAY"}
KNOWN_MODALITIES = {"US", "CR", "DX", "RG", "CT", "MR", "XC", "SM", "OP", "OCT", "PT", "NM", "MG", "ES", "unknown"}


def same_modality(a: str, b: str) -> bool:
    return MODALITY_GROUPS.get(a, a) == MODALITY_GROUPS.get(b, b)


@dataclass
class Split:
    """One split: images uint8 (N, H, W) or (N, H, W, C); labels int64 (N,) or None (unlabeled)."""
    images: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "Split":
        return Split(self.images[index], None if self.labels is None else self.labels[index])


@dataclass
class Dataset:
    name: str
    modality: str
    class_names: list
    splits: dict = field(default_factory=dict)  # "train" / "val" / "test" -> Split
    skipped: list = field(default_factory=list)  # [(file, reason)] left out with data.on_bad_file=skip

    def split(self, name: str) -> Split:
        if name not in self.splits:
            from tpp.errors import TppError

            raise TppError(f"dataset '{self.name}' has no '{name}' split (it has {', '.join(self.splits)}).")
        return self.splits[name]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def content_hash(self, labels: bool = True) -> str:
        """sha256 over all splits' image (and label) bytes: identifies the data without paths."""
        digest = hashlib.sha256()
        for name in sorted(self.splits):
            split = self.splits[name]
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(split.images).tobytes())
            if labels and split.labels is not None:
                digest.update(np.ascontiguousarray(split.labels).tobytes())
        return digest.hexdigest()

    def describe(self, used: dict | None = None, labels: bool = True) -> dict:
        """What an adapter card records: name, modality, content hash and counts (never paths).
        With ``labels=False`` (pre-training) the hash covers images only and labels are not touched."""
        return {
            "name": self.name, "modality": self.modality, "content_sha256": self.content_hash(labels),
            "classes": list(self.class_names),
            "counts": {k: len(v) for k, v in self.splits.items()}, "used": used or {},
        }
