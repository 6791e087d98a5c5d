"""Datasets as in-memory arrays: sources, seeded splits, label fractions and tensor transforms.

Every source returns a :class:`Dataset`: uint8 images per split (N, H, W) or (N, H, W, C), integer
labels (N,) (or None for unlabeled images), for segmentation uint8 class-index masks (N, H, W), class
names and a DICOM modality code.
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
    """One split: images uint8 (N, H, W) or (N, H, W, C); labels int64 (N,) or None (unlabeled);
    masks uint8 (N, h, w) class indices for segmentation data, else None."""
    images: np.ndarray
    labels: np.ndarray | None
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> "Split":
        def pick(a):
            return None if a is None else a[index]

        return Split(self.images[index], pick(self.labels), pick(self.masks))


@dataclass
class Dataset:
    name: str
    modality: str
    class_names: list
    splits: dict = field(default_factory=dict)  # "train" / "val" / "test" -> Split
    skipped: list = field(default_factory=list)  # [(file, reason)] left out with data.on_bad_file=skip
    split_id: str = "official"  # how the splits were made; seeded splits differ per seed
    origin: str | None = None  # the image collection behind the data (BreastMNIST and BUSI share "BUSI")
    source: str | None = None  # where it was read ('FILE', folder ...), for error messages; never in cards

    @property
    def is_segmentation(self) -> bool:
        return any(s.masks is not None for s in self.splits.values())

    def split(self, name: str) -> Split:
        """The split ``name``; a missing or empty one is an error naming the data's source."""
        from tpp.errors import TppError

        if name not in self.splits:
            raise TppError(f"dataset '{self.name}' has no '{name}' split (it has {', '.join(self.splits)}).")
        if len(self.splits[name]) == 0:
            where = f"dataset '{self.name}'" + (f" ({self.source})" if self.source else "")
            hint = ("raise data.val_fraction / data.test_fraction or add images"
                    if self.split_id.startswith("seeded") else "add images to it")
            raise TppError(f"{where}: the '{name}' split is empty (0 images); {hint}.")
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
            if labels and split.masks is not None:
                digest.update(np.ascontiguousarray(split.masks).tobytes())
        return digest.hexdigest()

    def split_sha256(self) -> dict[str, str]:
        """Per split, sha256 (16 hex) over its image bytes: equal hashes mean the same images in that split."""
        return {name: hashlib.sha256(np.ascontiguousarray(split.images).tobytes()).hexdigest()[:16]
                for name, split in sorted(self.splits.items())}

    def describe(self, used: dict | None = None, labels: bool = True) -> dict:
        """What an adapter card records: name, modality, content hash and counts (never paths).
        With ``labels=False`` (pre-training) the hash covers images only and labels are not touched."""
        return {
            "name": self.name, "modality": self.modality, "content_sha256": self.content_hash(labels),
            "origin": self.origin, "split_id": self.split_id, "split_sha256": self.split_sha256(),
            "classes": list(self.class_names),
            "counts": {k: len(v) for k, v in self.splits.items()}, "used": used or {},
        }
