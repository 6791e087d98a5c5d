"""Context sets: K labelled examples that define a task for in-context prediction.

A context set is read from a folder or a CSV, from a published store version (:mod:`tpp.serve.contexts`), or
given inline (the service's JSON requests, the Python API):

- a folder of class sub-folders (``DIR/<class>/<image>``): classification;
- a folder with ``images/`` and ``masks/`` (a mask per image, same file stem): binary segmentation;
- a CSV with columns ``image,label`` (classification) or ``image,mask`` (segmentation), paths relative to the
  CSV's folder.

Images go through the one image reader of tpp (:mod:`tpp.data.images`) under its pixel budget; masks hold
0/1 or 0/255. A set has at most ``max_k`` examples (default 256), a classification set at least two classes,
a segmentation set at least one non-empty mask. Examples are kept in a canonical order (by label, then by
content), so nothing downstream depends on the order in which they were listed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tpp.errors import TppError
from tpp.data import images as readers
from tpp.data.filesets import pair_masks, walk_images
from tpp.data.tables import class_names

MAX_K = 256
CLASSIFICATION, SEGMENTATION = "classification", "segmentation"
SEG_CLASSES = ["background", "foreground"]


@dataclass
class ContextSet:
    """``images``: uint8 (H, W) or (H, W, 3); ``labels``: class names (classification) or ``masks``: uint8 (H, W)
    0/1 at each image's size (segmentation); ``names``: where each example came from (for messages)."""
    task: str
    images: list
    labels: list | None = None
    masks: list | None = None
    names: list = field(default_factory=list)
    source: str = "context"

    @property
    def k(self) -> int:
        return len(self.images)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels)) if self.task == CLASSIFICATION else list(SEG_CLASSES)

    @property
    def channels(self) -> int:
        """1 when every context image is gray, else 3 (queries are brought to the same)."""
        return 3 if any(a.ndim == 3 for a in self.images) else 1

    def label_indices(self) -> np.ndarray:
        """(K,) int64 class indices into :attr:`classes`."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[v] for v in self.labels], dtype=np.int64)

    def digest(self, i: int) -> str:
        """Content hash of example ``i`` (image, shape and label or mask)."""
        h = hashlib.sha256()
        for part in (self.images[i], self.masks[i] if self.masks else None):
            if part is not None:
                h.update(str(part.shape).encode() + np.ascontiguousarray(part).tobytes())
        h.update(str(self.labels[i] if self.labels else "").encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def canonical(self) -> "ContextSet":
        """The same examples in a canonical order: by label, then by content (the listing order is lost)."""
        order = sorted(range(self.k), key=lambda i: (str(self.labels[i]) if self.labels else "", self.digest(i)))
        pick = lambda xs: [xs[i] for i in order] if xs is not None else None  # noqa: E731
        return ContextSet(self.task, pick(self.images), pick(self.labels), pick(self.masks),
                          pick(self.names) if self.names else [], self.source)


def check(ctx: ContextSet, max_k: int = MAX_K) -> ContextSet:
    """Refuse a set that cannot define a task: no examples, more than ``max_k``, one class, masks that do not
    fit their images, no foreground at all. Returns it in canonical order."""
    where = f"context set '{ctx.source}'"
    if max_k < 1:
        raise TppError(f"the maximum context size must be at least 1, got {max_k}.")
    if ctx.k == 0:
        raise TppError(f"{where} holds no examples.")
    if ctx.k > max_k:
        raise TppError(f"{where} holds {ctx.k} examples, more than the maximum of {max_k} (--max-context); "
                       "use fewer examples or raise the limit.")
    if ctx.task == CLASSIFICATION:
        if len(set(ctx.labels)) < 2:
            raise TppError(f"{where} has one class only ({ctx.labels[0]!r}); classification needs examples of at "
                           "least two classes.")
        class_names(list(set(ctx.labels)), where)  # 'Benign' and 'benign' are one class written two ways
    elif ctx.task == SEGMENTATION:
        for image, mask, name in zip(ctx.images, ctx.masks, ctx.names or [""] * ctx.k):
            if mask.shape != image.shape[:2]:
                raise TppError(f"{where}: the mask of '{name}' is {mask.shape[1]}x{mask.shape[0]} pixels but its "
                               f"image is {image.shape[1]}x{image.shape[0]}; masks must match their images.")
        if not any(m.any() for m in ctx.masks):
            raise TppError(f"{where}: every mask is empty; at least one context mask must mark some foreground.")
        if all(m.all() for m in ctx.masks):
            raise TppError(f"{where}: every mask is all foreground; the context needs some background pixels.")
    else:
        raise TppError(f"{where}: unknown task {ctx.task!r}.")
    return ctx.canonical()


def binary_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """A mask as read (uint8 (H, W), or (H, W, 3) with equal channels) -> uint8 0/1; values 0/1 or 0/255."""
    if mask.ndim == 3:
        if not (np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2])):
            raise TppError(f"mask '{name}' is a colour image; masks are gray images of 0/1 or 0/255.")
        mask = mask[..., 0]
    values = set(np.unique(mask).tolist())
    if values <= {0, 1}:
        return mask.astype(np.uint8)
    if values <= {0, 255}:
        return (mask > 0).astype(np.uint8)
    raise TppError(f"mask '{name}' holds the values {sorted(values)[:8]}; binary masks hold 0/1 or 0/255.")


def read_context(source: str | Path, max_k: int = MAX_K,
                 limits: readers.PixelLimits = readers.DEFAULT_LIMITS) -> ContextSet:
    """A context folder or CSV (module docstring) -> a checked :class:`ContextSet`."""
    path = Path(source)
    if path.is_dir():
        entries = _folder_entries(path)
    elif path.is_file():
        entries = _csv_entries(path)
    else:
        raise TppError(f"context '{path}' does not exist; give a folder (class sub-folders, or images/ + masks/) "
                       "or a CSV with columns image,label or image,mask.")
    task = SEGMENTATION if entries and entries[0][2] is not None else CLASSIFICATION
    if len(entries) > max_k:  # before a single image is decoded
        raise TppError(f"context set '{path}' holds {len(entries)} examples, more than the maximum of {max_k} "
                       "(--max-context); use fewer examples or raise the limit.")
    images, labels, masks = [], [], []
    for image, label, mask in entries:
        images.append(_read(image, limits))
        labels.append(label)
        if mask is not None:
            masks.append(binary_mask(_read(mask, limits), str(mask)))
    ctx = ContextSet(task, images, labels if task == CLASSIFICATION else None,
                     masks if task == SEGMENTATION else None, [str(e[0]) for e in entries], str(path))
    return check(ctx, max_k)


def _read(path: Path, limits) -> np.ndarray:
    try:
        return readers.read(path, limits=limits)
    except (readers.ImageError, OSError, ValueError) as exc:
        reason = str(exc) if isinstance(exc, TppError) else f"{type(exc).__name__}: {exc}"
        raise TppError(f"context image '{path}' cannot be read ({reason.rstrip('.')}).") from None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and readers.is_image_file(p))


def _folder_entries(path: Path) -> list[tuple[Path, str | None, Path | None]]:
    """(image, label, mask) per example of a context folder: images/ + masks/, or class folders read as training
    reads them (every image below each, hidden ones left out). An images/ without masks/ (or the reverse), an
    image outside a class folder and an empty class folder are refused: each would silently change the task."""
    has = [sub for sub in ("images", "masks") if (path / sub).is_dir()]
    if has == ["images", "masks"]:
        pairs = pair_masks(_images_in(path / "images"), _images_in(path / "masks"), str(path))
        if not pairs:
            raise TppError(f"context folder '{path}/images' holds no images.")
        return [(image, None, mask) for image, mask in pairs]
    if has:
        raise TppError(f"context folder '{path}' has {has[0]}/ but no {({'images', 'masks'} - set(has)).pop()}/: a "
                       "segmentation context needs both (masks named as their images); a classification context "
                       "has one folder per class.")
    files = walk_images(path, "error")[0]
    flat = [f for f in files if "/" not in f]
    if flat:
        raise TppError(f"context folder '{path}' holds '{flat[0]}' outside any class sub-folder, so it has no label; "
                       "lay it out as DIR/<class>/<image> (classification) or DIR/images + DIR/masks (segmentation).")
    entries = [(path / f, f.split("/")[0], None) for f in files]
    labels = {label for _, label, _ in entries}
    for folder in sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if folder.name not in labels:
            raise TppError(f"class folder '{folder}' of the context holds no images; remove it or add its images.")
    if not entries:
        raise TppError(f"context folder '{path}' holds no class sub-folders with images; lay it out as "
                       "DIR/<class>/<image> (classification) or DIR/images + DIR/masks (segmentation).")
    return entries


def _csv_entries(path: Path) -> list[tuple[Path, str | None, Path | None]]:
    """(image, label, mask) per row of a context CSV (columns image,label or image,mask)."""
    from tpp.data.tables import read_table, relative_image

    header, rows = read_table(path, ("image",))
    kinds = [c for c in ("label", "mask") if c in header]
    if len(kinds) != 1:
        raise TppError(f"context table '{path}' needs the columns image,label (classification) or image,mask "
                       f"(segmentation), one of the two (line 1 has: {', '.join(header)}).")
    entries, lines = [], {}
    for number, row in rows:
        if not row[kinds[0]]:
            raise TppError(f"context table '{path}', line {number}: empty {kinds[0]}.")
        image = path.parent / relative_image(row["image"], path, number)
        if image in lines:  # counted twice (or with two labels): the prototypes and neighbours would lean on it
            raise TppError(f"context table '{path}', line {number}: image '{row['image']}' is listed twice (first "
                           f"on line {lines[image]}).")
        lines[image] = number
        if kinds[0] == "label":
            entries.append((image, row["label"], None))
        else:
            entries.append((image, None, path.parent / relative_image(row["mask"], path, number)))
    return entries


def from_pairs(pairs, read, max_k: int = MAX_K) -> ContextSet:
    """A context set from (image, label) pairs (classification) or (image, mask) pairs (segmentation; a mask is a 2-D
    array, a PIL image or a ``pathlib.Path`` to an image file: a ``str`` is always a class label). ``read(item,
    index)``: how an image item (path, PIL image, array) is read (:func:`tpp.api.read_image`)."""
    pairs = list(pairs)
    if len(pairs) > max_k:
        raise TppError(f"the context holds {len(pairs)} examples, more than the maximum of {max_k}; use fewer "
                       "examples or raise max_k.")
    if not pairs or any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in pairs):
        raise TppError("give the context as a folder, a CSV, or a list of (image, label) or (image, mask) pairs.")
    kinds = [_pair_kind(label, i) for i, (_, label) in enumerate(pairs)]  # every pair, not the first one only
    for i, kind in enumerate(kinds):
        if kind != kinds[0]:
            raise TppError(f"context pair {i} has a {kind} ({type(pairs[i][1]).__name__}) but pair 0 has a "
                           f"{kinds[0]} ({type(pairs[0][1]).__name__}); give every pair a class label "
                           "(classification) or every pair a mask (segmentation).")
    seg = kinds[0] == "mask"
    images = [read(image, i) for i, (image, _) in enumerate(pairs)]
    if seg:
        masks = [binary_mask(_mask_array(m, i, read), f"mask {i}") for i, (_, m) in enumerate(pairs)]
        return check(ContextSet(SEGMENTATION, images, masks=masks, names=[f"example {i}" for i in range(len(pairs))],
                                source="in-memory context"), max_k)
    labels = [str(label) for _, label in pairs]
    return check(ContextSet(CLASSIFICATION, images, labels, names=[f"example {i}" for i in range(len(pairs))],
                            source="in-memory context"), max_k)


def _pair_kind(label, i: int) -> str:
    """``"class label"`` (a str, an int, a bool: class names) or ``"mask"`` (an array, a PIL image, a
    ``pathlib.Path``) for the second item of context pair ``i``; anything else (a float, None, ...) is a TppError
    naming the pair."""
    if isinstance(label, (str, int, np.integer, np.bool_)):  # bool is an int
        return "class label"
    if not isinstance(label, (float, np.generic)) and (isinstance(label, (np.ndarray, Path, list)) or _is_pil(label)
                                                       or hasattr(label, "__array__")):
        return "mask"
    raise TppError(f"context pair {i}: its label is a {type(label).__name__} ({repr(label)[:40]}), neither a class "
                   "label (a str or an int; a float is no class name) nor a mask (a 2-D array, a PIL image or a "
                   "pathlib.Path to an image file).")


def _is_pil(item) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a dependency
        return False
    return isinstance(item, Image.Image)


def _mask_array(mask, i: int, read) -> np.ndarray:
    """The mask of context pair ``i`` as an array: a ``pathlib.Path`` is read as an image; the array must be
    (H, W) or (H, W, 3) of numbers (anything else is a TppError naming the pair)."""
    if hasattr(mask, "getexif"):  # a PIL image: turned upright as its image is (tpp.data.pixels.upright)
        from tpp.data.pixels import upright

        mask = upright(mask)
    array = read(mask, i) if isinstance(mask, Path) else np.asarray(mask)
    if array.dtype.kind not in "biuf" or not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise TppError(f"context pair {i}: its mask is a {type(mask).__name__} of shape {tuple(array.shape)} and "
                       f"dtype {array.dtype}; a mask is a 2-D array (H, W) of 0/1 or 0/255 at its image's size.")
    return array
