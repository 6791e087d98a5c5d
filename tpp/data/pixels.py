"""What training and inference agree on about pixels: the 8-bit image both see (:func:`training_mode`),
the pixel budget (:class:`PixelLimits`) and reading an image's size from its header before decoding it.

Shared by the one image reader (:mod:`tpp.data.images`) of training folders and inference;
imports nothing else of tpp but its errors.
"""
from __future__ import annotations

import re
import threading
from contextlib import contextmanager
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


class _PilLimit:
    """PIL's global bomb limit raised for tpp's reads in progress (every thread's): ``budgets`` of the scopes open,
    ``own`` the limit PIL's owner set (PIL's default, or the site's code), ``ours`` the value set here (None while
    PIL's limit is its owner's)."""

    def __init__(self):
        self.lock, self.budgets, self.own, self.ours = threading.Lock(), [], None, None

    def update(self, image_module) -> None:
        """Set PIL's limit to the largest of its owner's and the open budgets (its owner's when none is open or
        the owner switched the check off). Called with ``lock`` held."""
        current = image_module.MAX_IMAGE_PIXELS
        if self.ours is None or current != self.ours:  # PIL's owner's value (set again meanwhile: theirs now)
            self.own = current
        want = self.own if self.own is None or not self.budgets else max(self.own, *self.budgets)
        image_module.MAX_IMAGE_PIXELS = want
        self.ours = None if want == self.own else want


_PIL_LIMIT = _PilLimit()


@contextmanager
def pil_budget(max_pixels: int):
    """PIL reads inside obey tpp's per-image budget ``max_pixels`` instead of PIL's bomb limit
    (``Image.MAX_IMAGE_PIXELS``, ~89M pixels, refused past twice that) where the budget is larger: PIL's limit is
    raised to it while the block runs and put back after (never lowered; left off when the site switched it off).
    Used around tpp's own opens, whose header is checked against ``max_pixels`` before anything is decoded, so an
    image within the budget neither warns nor fails in PIL. Thread-safe: scopes of several threads raise the limit
    to the largest budget open and the last one out restores it; a value other code sets meanwhile is kept. PIL
    reads of other threads in that time see the raised limit (at most the largest budget a site configured)."""
    from PIL import Image

    with _PIL_LIMIT.lock:
        _PIL_LIMIT.budgets.append(max_pixels)
        _PIL_LIMIT.update(Image)
    try:
        yield
    finally:
        with _PIL_LIMIT.lock:
            _PIL_LIMIT.budgets.remove(max_pixels)
            _PIL_LIMIT.update(Image)


def bomb_pixels(exc: Exception) -> int | None:
    """The pixel count PIL's ``DecompressionBombError`` names ("Image size (N pixels) exceeds ..."), None when it
    names none."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


def pil_pixels(source, name: str, max_pixels: int) -> int:
    """width x height of a PIL-readable file or file object from its header (lazy open, nothing decoded), under
    :func:`pil_budget` ``max_pixels``. A header PIL refuses even so (past twice the budget) gives the count PIL
    names, which the caller refuses as above the budget; :class:`ImageTooLarge` naming ``name`` when PIL names none."""
    from PIL import Image

    try:
        with pil_budget(max_pixels), Image.open(source) as img:
            return img.width * img.height
    except Image.DecompressionBombError as exc:
        count = bomb_pixels(exc)
        if count is None:
            raise ImageTooLarge(f"'{name}': too large to decode ({exc})") from None
        return count
