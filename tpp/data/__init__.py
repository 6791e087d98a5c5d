"""Datasets: sources, seeded splits, label fractions and tensor transforms.

Every source returns a :class:`Dataset`: uint8 images per split (N, H, W) or (N, H, W, C) (an in-memory
array, or ``tpp.data.files.ImageFiles``: files decoded when read), integer
labels (N,) (or None for unlabeled images), for segmentation uint8 class-index masks (N, H, W) (an array, or
``ImageFiles`` of mask files decoded per batch like the images), class names and a DICOM modality code.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

# DICOM Modality codes; X-ray codes count as one modality when adapters are compared.
MODALITY_GROUPS = {"CR": "XRAY", "DX": "XRAY", "RG": "XRAY"}
KNOWN_MODALITIES = {"US", "CR", "DX", "RG", "CT", "MR", "XC", "SM", "OP", "OCT", "PT", "NM", "MG", "ES", "unknown"}


def image_bytes(images):
    """The bytes of uint8 images (N, H, W[, C]) in order, one image at a time (files, ``ImageFiles``, are
    decoded one by one). Their concatenation is the array's C-order bytes."""
    for i in range(len(images)):
        yield np.ascontiguousarray(images[i]).tobytes()


def image_digest(data: bytes, shape: tuple) -> bytes:
    """sha256 of one image: its shape and bytes (the same bytes in another shape are another image)."""
    return hashlib.sha256(f"{tuple(shape)}".encode() + data).digest()


def same_modality(a: str, b: str) -> bool:
    return MODALITY_GROUPS.get(a, a) == MODALITY_GROUPS.get(b, b)


@dataclass
class Split:
    """One split: images uint8 (N, H, W) or (N, H, W, C); labels int64 (N,) or None (unlabeled);
    masks uint8 (N, h, w) class indices for segmentation data (an array or ``ImageFiles``), else None."""
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
    split_files: dict | None = None  # file sources: split -> its files (relative paths); the run's splits.json
    held_out_origins: frozenset | None = None  # file sources: origins of every folder holding a val / test image
    file_resize: bool = False  # images were read from files and brought to the size by tpp.data.images.fit
    hash_labels: bool = False  # the run reads labels: a hash pass may hash them too (pre-training never touches them)
    reading: dict | None = None  # file sources: how each file was decoded (frame, slice_spec, window), if set
    file_formats: frozenset | None = None  # file sources: the formats read (pil, npy, dicom, nifti); None: unknown
    _hash_cache: dict = field(default_factory=dict, repr=False, compare=False)  # labels? -> (splits key, hashes)

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
        """sha256 over all splits' image (and label) bytes: identifies the data without paths. With
        ``labels=False`` labels and masks do not enter it."""
        return self._hashes(labels)["content"]

    def split_sha256(self) -> dict[str, str]:
        """Per split, sha256 (16 hex) over its image bytes: equal hashes mean the same images in that split."""
        return dict(self._image_hashes()["splits"])

    def collection_sha256(self) -> str:
        """sha256 (16 hex) over the sorted digests of every image of every split: the same images give the same
        value whatever their order, split, or ``name`` (which seeds a split). Labels are not read."""
        return self._image_hashes()["collection"]

    def _image_hashes(self) -> dict:
        key = self._splits_key()
        cached = [h for k, h in self._hash_cache.values() if k == key]
        return cached[0] if cached else self._hashes(self.hash_labels)

    def _splits_key(self) -> tuple:
        return tuple((name, id(split), len(split)) for name, split in sorted(self.splits.items()))

    def _hashes(self, labels: bool) -> dict:
        """The content hash and the per-split hashes in one pass over the images (files on disk are decoded
        once, one at a time), cached for these splits: the content hash with labels and without are made in
        that one pass, so a run that asks for both (``init_from``'s check, then the card) decodes every file once."""
        key = self._splits_key()
        if labels in self._hash_cache and self._hash_cache[labels][0] == key:
            return self._hash_cache[labels][1]
        # with labels (and masks) and without; a pre-training run (labels=False) never touches its labels
        content = {with_labels: hashlib.sha256() for with_labels in ((True, False) if labels else (False,))}
        splits, digests = {}, []
        for name in sorted(self.splits):
            split, own = self.splits[name], hashlib.sha256()
            for h in content.values():
                h.update(name.encode())
            for chunk in image_bytes(split.images):
                for h in content.values():
                    h.update(chunk)
                own.update(chunk)
                digests.append(image_digest(chunk, split.images.shape[1:]))
            if labels and split.labels is not None:
                content[True].update(np.ascontiguousarray(split.labels).tobytes())
            if labels and split.masks is not None:  # mask files are decoded one at a time, as the images
                for chunk in image_bytes(split.masks):
                    content[True].update(chunk)
            splits[name] = own.hexdigest()[:16]
        collection = hashlib.sha256(b"".join(sorted(digests))).hexdigest()[:16]
        for with_labels, h in content.items():
            self._hash_cache[with_labels] = (key, {"content": h.hexdigest(), "splits": splits,
                                                   "collection": collection})
        return self._hash_cache[labels][1]

    def describe(self, used: dict | None = None, labels: bool = True) -> dict:
        """What an adapter card records: name, modality, content hash and counts (never paths); for file sources
        also ``split_files_sha256`` (see :meth:`split_files_sha256`).
        With ``labels=False`` (pre-training) the hash covers images only (labels do not enter it)."""
        described = {
            "name": self.name, "modality": self.modality, "content_sha256": self.content_hash(labels),
            "origin": self.origin, "split_id": self.split_id, "split_sha256": self.split_sha256(),
            "collection_sha256": self.collection_sha256(),
            "classes": list(self.class_names),
            "counts": {k: len(v) for k, v in self.splits.items()}, "used": used or {},
        }
        if self.split_files is not None:
            described["split_files_sha256"] = self.split_files_sha256()
        if self.reading:  # predict must read new files the same way (tpp predict --frame / --slice / --window)
            described["reading"] = {"slice" if k == "slice_spec" else k: list(v) if isinstance(v, tuple) else v
                                    for k, v in self.reading.items()}
        return described

    def split_files_sha256(self) -> dict[str, str]:
        """File sources: per split, sha256 (16 hex) over its files' relative paths, one per line, sorted: checks
        a run folder's ``splits.json`` against a card without the card holding any path."""
        return {name: hashlib.sha256("\n".join(sorted(files)).encode("utf-8", "surrogateescape")).hexdigest()[:16]
                for name, files in sorted((self.split_files or {}).items())}
