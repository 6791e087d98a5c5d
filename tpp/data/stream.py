"""The streaming data path: images stay as stored and become model input one batch at a time.

A split's images are uint8 (N, H, W[, C]): an in-memory array (MedMNIST, .npz) or ``ImageFiles``,
files on disk decoded when a batch needs them. :class:`ModelInputs` turns a batch of them into the
normalised float tensor (B, C, S, S) the backbone takes (``to_model_tensor``: scale, channel rule,
antialiased resize, mean / std), so memory holds the stored images plus a few batches, never the
whole split as float32 (a 100,000-image site at 224 px would need 60 GB). The conversion runs in the
``torch.utils.data`` worker processes (``data.num_workers``) for training, TPP, evaluation and
prediction alike; converting per batch gives the same numbers as converting the whole split.
"""
from __future__ import annotations


import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tpp.data.build import to_model_tensor
from tpp.data.files import ImageFiles, PackedStrings
from tpp.errors import TppError


def concat_images(parts: list):
    """Several splits' images as one: arrays concatenated, or one ImageFiles over all their files."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    if all(isinstance(p, ImageFiles) for p in parts):
        shapes = {p.image_shape for p in parts}
        if len(shapes) > 1:  # e.g. a folder's own val/ split has colour images and its train/ split none
            raise TppError(f"the splits' images decode to different shapes {sorted(shapes)} (gray in one split, "
                           "colour in another); convert the folder's images to one mode.")
        return ImageFiles(PackedStrings.concat([p.paths for p in parts]), parts[0].decode, parts[0].image_shape)
    return np.concatenate([np.asarray(p) for p in parts])


def stack(images, index) -> np.ndarray:
    """uint8 (B, H, W[, C]) of ``images[index]`` (``index``: integer array) for an array or ImageFiles."""
    if isinstance(images, np.ndarray):
        return images[np.asarray(index)]
    return np.stack([images[int(i)] for i in index])


class MaskTargets:
    """A split's masks as training / evaluation targets, decoded where read: ``targets[i]`` is int64 (h, w),
    ``targets[a:b]`` (or an integer index array) int64 (B, h, w); ``shape`` is (N, h, w). ``masks``: uint8
    (N, h, w), an array or ``ImageFiles`` (mask files, decoded per item), so neither the split's masks nor
    their int64 copy (8 bytes a pixel) are ever held whole."""

    def __init__(self, masks):
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.masks.shape)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return torch.from_numpy(np.asarray(self.masks[int(index)])).long()
        positions = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index).reshape(-1)
        if not len(positions):
            return torch.zeros(0, *self.shape[1:], dtype=torch.long)
        return torch.from_numpy(stack(self.masks, positions)).long()


def target_chunks(targets, size: int):
    """``(start, targets[start:start + size])`` over a tensor or :class:`MaskTargets`, in order; one empty
    chunk for empty targets (so a caller's concatenation has a part)."""
    for start in range(0, max(len(targets), 1), size):
        yield start, targets[start:start + size]


class ModelInputs:
    """Stored images seen as normalised model input: ``inputs[index] -> float32 (B, C, S, S)`` for an
    integer index array, converted on the spot. ``len(inputs)`` is the number of images."""

    def __init__(self, images, channels: int, size: int, mean: list, std: list, frame: int = 0):
        self.images, self.channels, self.size, self.mean, self.std = images, channels, size, mean, std
        self.frame = frame

    @classmethod
    def for_backbone(cls, images, info) -> "ModelInputs":
        return cls(images, info.channels, info.input_size, info.mean, info.std, info.frame)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> torch.Tensor:
        return to_model_tensor(stack(self.images, index), self.channels, self.size, self.mean, self.std, self.frame)


class ConcatInputs:
    """Several datasets' :class:`ModelInputs` as one (a pre-training pool of gray and colour sets, arrays and
    folders): ``inputs[index]`` converts each part's images where they are and returns float32 (B, C, S, S) in
    ``index`` order, so only a batch is ever converted. Every part must give the same C and S."""

    def __init__(self, parts: list[ModelInputs]):
        if len({(p.channels, p.size) for p in parts}) > 1:
            raise ValueError("ConcatInputs parts must convert to the same channels and size")
        self.parts, self.starts = parts, np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index) -> torch.Tensor:
        index = np.asarray(index)
        part = np.searchsorted(self.starts, index, side="right") - 1  # (B,) which part each image is in
        first = self.parts[0]
        out = torch.empty(len(index), first.channels, first.size, first.size)
        for k in np.unique(part):
            rows = part == k
            out[torch.from_numpy(rows)] = self.parts[k][index[rows] - self.starts[k]]
        return out


class _Indexed(Dataset):
    """Item i: (i, target_0[i], ...); the images are fetched per batch by :class:`_Collate`."""

    def __init__(self, n: int, targets: tuple):
        self.n, self.targets = n, targets

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return (i, *(t[i] for t in self.targets))


class _Collate:
    """A batch of indices (+ targets) -> [model input (B, C, S, S), *stacked targets]."""

    def __init__(self, inputs: ModelInputs):
        self.inputs = inputs

    def __call__(self, items: list) -> list:
        index = np.array([item[0] for item in items])
        targets = [torch.stack([item[k] for item in items]) for k in range(1, len(items[0]))]
        return [self.inputs[index], *targets]


def stream_loader(inputs: ModelInputs, *targets: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                  num_workers: int = 0) -> DataLoader:
    """Batches ``[images (B, C, S, S), *targets]``, converted per batch (in ``num_workers`` processes).
    Shuffling draws from its own seeded generator: the order equals that of a TensorDataset loader over the
    converted split with the same seed and batch size."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(_Indexed(len(inputs), targets), batch_size=batch_size, shuffle=shuffle, generator=gen,
                      drop_last=False, collate_fn=_Collate(inputs), num_workers=num_workers)
    # workers are not persistent: a persistent iterator skips the generator draw each new epoch makes, and
    # the order would then depend on data.num_workers


def index_batches(inputs: ModelInputs, index: torch.Tensor, batch_size: int, num_workers: int = 0):
    """Model input batches of ``inputs`` at ``index`` (in order), converted in ``num_workers`` processes."""
    chunks = [c.numpy() for c in index.split(batch_size)]
    if num_workers == 0:
        return (inputs[c] for c in chunks)
    return DataLoader(chunks, batch_size=None, collate_fn=inputs.__getitem__, num_workers=num_workers)
