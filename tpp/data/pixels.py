"""What training and inference agree on about pixels: the 8-bit image both see (:func:`training_mode`),
the pixel budget (:class:`PixelLimits`) and reading an image's size from its header before decoding it.

Shared by the one image reader (:mod:`tpp.data.images`) of training folders and inference;
imports nothing else of tpp but its errors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tpp.errors import TppError


class ImageError(TppError):
    """An input image that cannot be read or converted (HTTP 400 in the service)."""


class ImageTooLarge(ImageError):
    """An image (or a request's images together) above the pixel budget (HTTP 413 in the service)."""


@dataclass(frozen=True)
class PixelLimits:
    """Pixel (voxel) budget: ``max_pixels`` per image, ``max_request_pixels`` for all images of one
    service request together. Defaults: 2**26 = 67,108,864 (one 8192 x 8192 image) and 2**27."""

    max_pixels: int = 2**26
    max_request_pixels: int = 2**27

    def __post_init__(self):
        for key in ("max_pixels", "max_request_pixels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TppError(f"pixel limit {key} must be a positive integer, got {value!r}.")


DEFAULT_LIMITS = PixelLimits()


EXIF_ORIENTATION = 0x0112  # 1 = upright; 2..8 = mirrored and/or rotated; 5..8 swap width and height


def upright(img):
    """``img`` turned the way its EXIF orientation says it is shown (phone and camera photos are stored
    sideways with a tag; every viewer, and so every mask drawn on one, shows them upright); ``img`` itself
    when it has no such tag."""
    from PIL import ImageOps

    if img.getexif().get(EXIF_ORIENTATION) in range(2, 9):
        return ImageOps.exif_transpose(img)
    return img


def upright_size(img) -> tuple[int, int]:
    """(width, height) of ``img`` as :func:`upright` shows it, from its header (a PNG is decoded to look for
    an EXIF chunk after its pixels)."""
    width, height = img.size
    return (height, width) if img.getexif().get(EXIF_ORIENTATION) in range(5, 9) else (width, height)


def training_mode(img, name: str = "image"):
    """The 8-bit image training and inference see, turned :func:`upright`: gray modes -> ``L``, 16-bit /
    32-bit / float gray -> ``L`` by per-image min-max (a 12-bit scan in a 16-bit PNG keeps its contrast),
    everything else -> ``RGB`` (RGBA and LA lose their alpha, palettes are expanded). A float image holding
    NaN or infinite values is an :class:`ImageError` naming ``name`` (it would become a black image)."""
    from PIL import Image

    img = upright(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageError(f"'{name}': the image holds NaN or infinite values; it cannot be scaled to 8 bits.")
        low, high = float(arr.min()), float(arr.max())
        return Image.fromarray(np.round((arr - low) / max(high - low, 1e-12) * 255).astype(np.uint8), "L")
    if img.mode in ("L", "LA", "1"):
        return img.convert("L")
    return img.convert("RGB")


def pil_size(source, name: str | None = None) -> tuple[int, int]:
    """(width, height) of a PIL-readable file or file object from its header (lazy open, nothing decoded);
    PIL's own decompression-bomb refusal becomes :class:`ImageTooLarge` (naming ``name`` when given)."""
    from PIL import Image

    try:
        with Image.open(source) as img:
            return img.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{f'{name!r}: ' if name else ''}too large to decode ({exc})") from None
