"""Image + mask pairs for segmentation: ``.npz`` files and ``images/`` + ``masks/`` folders.

Masks are uint8 class indices (N, H, W), 0 = background: an array (``.npz``) or, for folders, ``ImageFiles``
decoded per batch as the images are (each mask checked once at load, none held). Binary masks stored as 0/255 are
mapped to 0/1. With ``data.mask_classes=from_label`` the foreground of each mask becomes ``1 + label`` of its
image (BUSI: background / benign lesion / malignant lesion). Splits are seeded, stratified by the
image label when there is one, and keep every ``data.group_key`` group inside one split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tpp.capped_read import list_folder
from tpp.data import Dataset, Split
from tpp.data.arrays import (check_modality, checked_images, label_values, not_empty, npz_array, npz_class_names,
                             open_npz, resolve_root)
from tpp.data.pixels import DEFAULT_LIMITS, bomb_pixels, pil_budget, upright, upright_size
from tpp.data.subsets import seeded_split_id, stratified_split
from tpp.errors import TppError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def class_indices(mask: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """A mask's values as uint8 class indices: binary {0, 255} -> {0, 1}; otherwise every value must
    be an integer in 0..K-1 (negative values, floats and values >= K are errors naming ``where``)."""
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise TppError(f"{where}: masks must hold integer class indices, not {mask.dtype}.")
    values = np.unique(mask)
    if num_classes == 2 and set(values.tolist()) <= {0, 255} and 255 in values:
        return (mask > 0).astype(np.uint8)
    if values.min() < 0 or values.max() >= num_classes:
        bad = values[(values < 0) | (values >= num_classes)]
        raise TppError(f"{where}: mask value {int(bad[0])} is not a class index 0..{num_classes - 1} "
                       f"(values found: {values.tolist()[:10]}). Masks hold class indices (0/255 for binary); "
                       "multi-class masks need data.mask_classes=indices and data.classes naming every value.")
    return mask.astype(np.uint8)


def mask_class_names(mask_classes: str, classes: list | None, label_names: list | None) -> list[str]:
    """Names of the mask values. ``binary``: background + foreground (``classes`` may rename the two);
    ``indices``: ``classes`` names values 0..K-1; ``from_label``: background + one lesion class per
    image label (``classes``, if given, must equal those names)."""
    if mask_classes == "indices":
        if not classes or len(classes) < 2:
            raise TppError("data.mask_classes=indices needs data.classes: the names of mask values 0..K-1, "
                           "background first.")
        return list(classes)
    if mask_classes == "from_label":
        if not label_names:
            raise TppError("data.mask_classes=from_label needs per-image labels with names (seg_npz: data.label_key "
                           "and data.class_names_key).")
        names = ["background"] + [n if "lesion" in n else f"{n} lesion" for n in label_names]
        if classes and list(classes) != names:
            raise TppError(f"data.classes {list(classes)} differ from the classes derived from the labels "
                           f"({names}); omit data.classes or list exactly those, in that order.")
        return names
    if classes and len(classes) != 2:
        raise TppError(f"data.classes names {len(classes)} classes, binary masks have 2 (background, "
                       "foreground); for more classes use data.mask_classes=indices.")
    return list(classes) if classes else ["background", "foreground"]


def load_seg_npz(name: str, root: str | None, file: str | None, *, image_key: str = "images",
                 mask_key: str = "masks", label_key: str = "labels", class_names_key: str | None = "class_names",
                 mask_classes: str = "binary", classes: list | None = None, group_key: str | None = None,
                 modality: str | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0) -> Dataset:
    """``file`` with keys ``image_key`` (N, H, W[, C]) and ``mask_key`` (N, H, W); optional per-image labels
    (``label_key``, for stratification and ``mask_classes=from_label``) and groups (``group_key``), split
    here by ``seed``."""
    if not file:
        raise TppError("data.source=seg_npz needs data.file (path of the .npz, relative to data.root).")
    path = Path(file) if Path(file).is_absolute() else resolve_root(root) / file
    if not path.exists():  # a folder or a fifo of that name: said by open_npz
        raise TppError(f"npz file '{path}' does not exist. Check data.root and data.file.")
    npz = open_npz(path)
    images = checked_images(npz_array(npz, image_key, path), f"'{path}' {image_key}")
    not_empty(images, f"'{path}' {image_key}")
    masks = npz_array(npz, mask_key, path)
    if masks.shape != images.shape[:3]:
        raise TppError(f"'{path}': masks have shape {masks.shape}, images {images.shape}; every image needs "
                       "one mask of its own height and width.")
    labels = label_names = None
    if label_key in npz.files:
        labels = label_values(npz_array(npz, label_key, path), f"'{path}' {label_key}")
        if len(labels) != len(images):
            raise TppError(f"'{path}': {len(labels)} labels for {len(images)} images.")
        if class_names_key and class_names_key in npz.files:
            label_names = npz_class_names(npz_array(npz, class_names_key, path), f"'{path}' {class_names_key}")
    names = mask_class_names(mask_classes, classes, label_names)
    masks = class_indices(masks, 2 if mask_classes == "from_label" else len(names), f"'{path}' {mask_key}")
    if mask_classes == "from_label":
        if labels.min() < 0 or labels.max() >= len(names) - 1:
            raise TppError(f"'{path}' {label_key}: labels must lie in 0..{len(names) - 2} "
                           f"({class_names_key} names {len(names) - 1}).")
        masks = (masks > 0) * (1 + labels[:, None, None]).astype(np.uint8)
    groups = None
    if group_key:
        groups = np.asarray(npz_array(npz, group_key, path)).reshape(-1)
        if groups.dtype.kind in "fc" and not np.isfinite(groups).all():  # NaN: a missing id, equal to no other
            raise TppError(f"'{path}' {group_key}: {int((~np.isfinite(groups)).sum())} group id(s) are not finite "
                           "numbers (NaN marks a missing id); every image needs one.")
        if len(groups) != len(images):
            raise TppError(f"'{path}': {len(groups)} group ids ({group_key}) for {len(images)} images.")
    split = dict(name=name, modality=modality, val_fraction=val_fraction, test_fraction=test_fraction,
                 group_key=group_key, seed=seed)
    dataset = _split(images, masks.astype(np.uint8), labels, groups, names, **split)[0]
    dataset.source = f"'{path}'"
    return dataset


def load_seg_folder(name: str, root: str | None, file: str | None, *, image_size: int, mask_classes: str = "binary",
                    classes: list | None = None, group_key: str | None = None, modality: str | None = None,
                    val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                    on_bad_file: str = "error", reading=None) -> Dataset:
    """``DIR/images/<name>`` + ``DIR/masks/<name>`` (paired by :func:`tpp.data.filesets.pair_masks`), resized
    to ``image_size`` (images bilinear, masks nearest), split here by ``seed``. Groups: a ``metadata.csv``
    column (``file_name`` + ``group_key``). ``reading`` (:class:`tpp.data.file_reading.FileReading`): the
    per-file pixel budget of images and masks alike (``data.max_image_pixels``; default 2**26). ``on_bad_file``:
    an image or mask file that cannot be read or is past that budget fails naming it, or (``skip``) its pair is
    left out and listed in ``Dataset.skipped``."""
    from tpp.data.file_reading import FileReading
    from tpp.data.files import PackedStrings
    from tpp.data.filesets import check_files, image_stem, pair_masks
    from tpp.data.labelled import files_origin, holding_origins
    from tpp.data.folders import image_folder

    root = image_folder(root, file)
    image_dir, mask_dir = root / "images", root / "masks"
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise TppError(f"segmentation folder '{root}' needs images/ and masks/ sub-folders ('{d}' is missing).")
    listed = [_image_entries(d) for d in (image_dir, mask_dir)]
    pairs = pair_masks(*listed, where=str(root))
    if not pairs:
        raise TppError(f"'{image_dir}' holds no images.")
    image_files = {image_stem(image): image for image, _ in pairs}
    mask_files = {image_stem(image): mask for image, mask in pairs}
    stems = sorted(image_files)
    reading = reading or FileReading()
    images, kept, skipped = check_files([str(image_files[s]) for s in stems], image_size, on_bad_file,
                                        reading=reading)
    stems = [stems[i] for i in kept]
    names = mask_class_names(mask_classes, classes, None)
    masks, kept = check_masks([mask_files[s] for s in stems], [image_files[s] for s in stems], image_size,
                              len(names), reading.pixel_limits().max_pixels, on_bad_file, skipped)
    if len(kept) < len(stems):  # pairs whose mask is a bad file (data.on_bad_file=skip): their images go too
        stems, images = [stems[i] for i in kept], images[np.asarray(kept, dtype=np.int64)]
    groups = _folder_groups(root, stems, image_files, group_key) if group_key else None
    split = dict(name=name, modality=modality, val_fraction=val_fraction, test_fraction=test_fraction,
                 group_key=group_key, seed=seed)
    dataset, index = _split(images, masks, None, groups, names, **split)
    dataset.skipped, dataset.source, dataset.file_resize = skipped, f"folder '{root}'", True
    files = [f"images/{image_files[s].name}" for s in stems]  # relative to the folder, as the other file sources
    packed = PackedStrings(files)
    dataset.split_files = {s: packed.take(i) for s, i in index.items()}
    dataset.origin = files_origin(root, files)  # so the leakage check compares a parent pre-trained on these images
    dataset.held_out_origins = holding_origins(root, [files[i] for s in ("val", "test") for i in index[s]])
    return dataset


class BadMaskFile(TppError):
    """A mask file that cannot be read (empty, truncated, not an image, gone) or is past the per-file pixel budget
    (``data.max_image_pixels``): with ``data.on_bad_file=skip`` its pair is left out at load, as a bad image is.
    ``reason``: the problem without the file's name. Other mask problems (values, shape) always fail."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class MaskDecoder:
    """``decoder(path) -> uint8 (size, size)``: a mask file as class indices (:func:`_read_mask`), the checks of
    load time included: its shape is compared with the one it had when it was checked against its image
    (``shapes``: path -> upright (width, height)), so a mask replaced since then by one of another shape is refused
    by name. ``max_pixels``: the per-file pixel budget. Picklable, so data-loader workers decode masks per batch
    as they do images."""

    def __init__(self, size: int, num_classes: int, shapes: dict[str, tuple[int, int]] | None = None,
                 max_pixels: int = DEFAULT_LIMITS.max_pixels):
        self.size, self.num_classes, self.shapes, self.max_pixels = size, num_classes, shapes or {}, max_pixels

    def __call__(self, path: str) -> np.ndarray:
        from tpp.data.files import DataChanged

        try:
            return _read_mask(Path(path), self.size, self.num_classes, loaded_as=self.shapes.get(path),
                              max_pixels=self.max_pixels)
        except BadMaskFile as exc:  # read at load: broken or removed since, said as for an image (any on_bad_file)
            raise DataChanged(f"mask '{path}' changed or disappeared since the data was loaded ({exc.reason}); "
                              "restart the run.") from None
        except TppError as exc:  # checked at load: it changed since (named, without a worker's traceback)
            raise DataChanged(str(exc)) from None


def _image_entries(folder: Path) -> list[Path]:
    """The image files of a ``seg_folder``'s ``images/`` or ``masks/`` (hidden files such as macOS ``._a.png`` are
    no images); a folder that cannot be listed is a TppError naming it, not a raw OSError."""
    return [p for p in map(Path, list_folder(folder, "make it readable"))
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]


def check_masks(masks: list[Path], images: list[Path], size: int, num_classes: int,
                max_pixels: int = DEFAULT_LIMITS.max_pixels, on_bad_file: str = "error",
                skipped: list | None = None):
    """Check every mask against its image (same shape, class-index values, at most ``max_pixels``:
    :func:`_read_mask`) by decoding it once, one at a time, and return them as ``ImageFiles`` of uint8 (size, size)
    masks, decoded again when a batch needs them: memory stays flat in the number of masks (50,000 masks at 512 px
    held whole were 13 GB). A mask file that cannot be read or is past ``max_pixels`` (:class:`BadMaskFile`) fails
    naming it, or with ``on_bad_file="skip"`` is left out with its image: a (mask path, reason) row in ``skipped``,
    as :func:`tpp.data.filesets.check_files` lists a bad image. Returns (masks, indices of the kept pairs)."""
    from tqdm import tqdm

    from tpp.data.files import ImageFiles
    from tpp.data.filesets import PROGRESS_FROM

    shapes: dict = {}  # two ints a mask: what a batch's decode compares the file with
    kept, skipped = [], [] if skipped is None else skipped
    for i, (mask, image) in enumerate(tqdm(zip(masks, images), total=len(masks), desc="reading masks", unit="mask",
                                           disable=len(masks) < PROGRESS_FROM, mininterval=5.0)):
        try:
            _read_mask(mask, size, num_classes, image, shapes=shapes, max_pixels=max_pixels)
        except BadMaskFile as exc:
            if on_bad_file != "skip":
                raise TppError(f"{exc} Remove or replace it, or pass data.on_bad_file=skip to leave it out with its "
                               "image (listed in skipped.csv).") from None
            skipped.append((str(mask), f"BadMaskFile: {exc.reason}; its image '{image}' is left out with it"))
            continue
        kept.append(i)
    if masks and not kept:
        raise TppError(f"none of the {len(masks)} masks could be read (first: {masks[0]}).")
    files = [str(masks[i]) for i in kept]
    return ImageFiles(files, MaskDecoder(size, num_classes, shapes, max_pixels), (size, size)), kept


def _read_mask(path: Path, size: int, num_classes: int, image: Path | None = None, shapes: dict | None = None,
               loaded_as: tuple[int, int] | None = None, max_pixels: int = DEFAULT_LIMITS.max_pixels) -> np.ndarray:
    """The class-index mask (size, size) uint8 of ``image`` from ``path`` (nearest-neighbour resize); a mask whose
    shape is not its image's (another aspect ratio: a wrong pairing, or a rotated export) is refused. At load
    ``shapes`` collects the mask's upright (width, height) under ``str(path)``; a batch's decode of a mask checked
    at load passes it back as ``loaded_as``, and a file of another shape (replaced since) is refused. A mask above
    ``max_pixels`` (``data.max_image_pixels``) is refused from its header, before it is decoded; PIL's own bomb
    limit yields to that budget (:func:`tpp.data.pixels.pil_budget`)."""
    from PIL import Image, UnidentifiedImageError

    def too_large(count: int) -> BadMaskFile:
        reason = f"{count:,} pixels, more than the per-image limit of {max_pixels:,} (data.max_image_pixels)"
        return BadMaskFile(f"mask '{path}': {reason}; is it this image's mask?", reason)

    def open_mask():
        from tpp.data.file_kinds import irregular

        if irregular(path):  # a fifo named a.png: PIL's open would wait for a writer for ever
            raise TppError(f"mask '{path}' is not a regular file ({irregular(path)}); masks are image files.")
        try:
            return Image.open(path)
        except Image.DecompressionBombError as exc:  # past twice the budget: PIL refuses the header itself
            if bomb_pixels(exc) is None:
                raise
            raise too_large(bomb_pixels(exc)) from None

    try:
        image_size = None
        if image is not None:
            with pil_budget(max_pixels), Image.open(image) as img:
                if img.width * img.height > max_pixels:  # checked at load; replaced since by a larger file
                    raise TppError(f"image '{image}': {img.width * img.height:,} pixels, more than the per-image "
                                   f"limit of {max_pixels:,} (data.max_image_pixels).")
                image_size = upright_size(img)  # the header (a PNG's EXIF: decoded, within the budget)
        with pil_budget(max_pixels), open_mask() as img:
            if img.width * img.height > max_pixels:  # from the header: nothing decoded yet
                raise too_large(img.width * img.height)
            img = upright(img)  # a mask exported with its photo's orientation tag is turned with it
            (w, h), (iw, ih) = img.size, image_size or img.size
            if loaded_as is not None and (w, h) != tuple(loaded_as):
                raise TppError(f"mask '{path}' is {w}x{h} pixels but was {loaded_as[0]}x{loaded_as[1]} when the data "
                               "was loaded: it changed since; load the data again.")
            if shapes is not None:
                shapes[str(path)] = (w, h)
            if abs(w * ih - h * iw) > 0.02 * max(w * ih, h * iw):  # masks at another resolution keep the shape
                raise TppError(f"mask '{path}' is {w}x{h} pixels but its image '{image}' is {iw}x{ih}: not the "
                               "same shape, so it is not this image's mask (or it was rotated or cropped).")
            arr = np.asarray(img.resize((size, size), Image.NEAREST))
            if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
                raise TppError(f"mask '{path}' holds fractional or non-finite values (a float image); masks hold "
                               "whole class indices (or 0/255).")
            arr = arr.astype(np.int64)
            if arr.ndim == 3:  # RGB / LA exports of a gray mask: fine when every channel is the same
                colour = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
                if not (colour == colour[..., :1]).all():
                    raise TppError(f"mask '{path}' is a colour image; masks are single-channel class-index "
                                   "(or 0/255) images.")
                arr = colour[..., 0]
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:  # the bomb: past PIL's own limit
        raise BadMaskFile(f"mask '{path}' cannot be read ({exc}).", f"cannot be read ({exc})") from None
    if arr.min() < 0 or arr.max() > 255:
        raise TppError(f"mask '{path}' has values outside 0..255.")
    return class_indices(arr.astype(np.uint8), num_classes, f"mask '{path}'")


def _folder_groups(root: Path, stems: list, files: dict, key: str) -> np.ndarray:
    """Group codes (N,) of the images ``stems`` from ``root/metadata.csv`` (columns file_name and ``key``; read as
    every label table is: stripped values, a BOM, errors naming the line); an image listed twice is refused."""
    from tpp.data.filesets import image_stem
    from tpp.data.tables import group_spellings, group_value, read_table

    meta = root / "metadata.csv"
    if not meta.is_file():
        raise TppError(f"data.group_key='{key}' needs '{meta}' with columns file_name and {key}.")
    by_name: dict[str, tuple[int, str]] = {}
    for number, row in read_table(meta, ("file_name", key))[1]:
        name = image_stem(row["file_name"])
        if name in by_name:
            raise TppError(f"'{meta}', line {number}: image '{row['file_name']}' is listed twice (first on line "
                           f"{by_name[name][0]}).")
        by_name[name] = (number, group_value(row[key], meta, number, key))
    missing = [s for s in stems if s not in by_name]
    if missing:
        raise TppError(f"'{meta}' has no row for image '{files[missing[0]].name}' ({len(missing)} missing).")
    group_spellings([by_name[s][1] for s in stems], f"'{meta}'", key)
    return np.unique(np.asarray([by_name[s][1] for s in stems]), return_inverse=True)[1]


def _split(images, masks, labels, groups, names, *, name: str, modality: str | None, val_fraction: float,
           test_fraction: float, group_key: str | None, seed: int) -> tuple[Dataset, dict]:
    """Seeded split of images (N, H, W[, C]) + masks (N, H, W) (arrays or ``ImageFiles``), stratified by
    ``labels`` (N,) when given and keeping each of ``groups`` (N,) in one split. Returns (dataset, {split: indices
    of its images})."""
    strata = labels if labels is not None else np.zeros(len(images), dtype=np.int64)
    index = stratified_split(strata, val_fraction, test_fraction, name, seed, groups)
    splits = {k: Split(images[i], strata[i], masks[i]) for k, i in index.items()}
    split_id = seeded_split_id(seed, val_fraction, test_fraction, group_key)
    return Dataset(name, check_modality(modality, name), names, splits, split_id=split_id), index


def joint_augment(images: torch.Tensor, masks: torch.Tensor, scale: tuple = (0.8, 1.0), flip: bool = True,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random horizontal flip (if ``flip``) + zoom-in crop (side in ``scale``; (1, 1): none)
    for each image and its mask.

    images (B, C, H, W) float, masks (B, H, W) long -> same shapes. Images are resampled bilinearly,
    masks by nearest neighbour (classes stay classes).
    """
    b = images.shape[0]
    device = images.device
    s = torch.empty(b, device=device).uniform_(*scale, generator=generator)
    shift = (1 - s)[:, None] * (torch.rand(b, 2, device=device, generator=generator) * 2 - 1)
    mirror = torch.rand(b, device=device, generator=generator) < 0.5
    flip = torch.where(mirror & flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 1, 1] = s * flip, s
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out_images = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border",
                               align_corners=False)
    mask_grid = F.affine_grid(theta, [b, 1, *masks.shape[-2:]], align_corners=False)
    out_masks = F.grid_sample(masks[:, None].float(), mask_grid, mode="nearest", align_corners=False)
    return out_images, out_masks[:, 0].long()
