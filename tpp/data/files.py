"""Images that stay on disk until read: a folder of 100,000 scans is a list of paths, not 60 GB of pixels."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


class ImageFiles:
    """Images decoded from files on demand: ``files[i]`` is uint8 (H, W[, C]), ``files[index]`` (an
    integer array) the files at those positions (still lazy). ``decode(path) -> uint8 array`` gives every
    file the same shape (``shape``: (H, W[, C]) of one image)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, paths: Sequence[str], decode: Callable[[str], np.ndarray], shape: tuple):
        self.paths, self.decode, self.image_shape = list(paths), decode, tuple(shape)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple:
        return (len(self.paths), *self.image_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.decode(self.paths[index])
        picked = np.arange(len(self.paths))[index]
        return ImageFiles([self.paths[i] for i in picked], self.decode, self.image_shape)

    def __array__(self, dtype=None, copy=None):  # np.asarray(files): every image, decoded (small sets only)
        out = np.stack([self.decode(p) for p in self.paths]) if self.paths else np.zeros(self.shape, np.uint8)
        return out if dtype is None else out.astype(dtype)
