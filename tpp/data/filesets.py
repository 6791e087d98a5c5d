"""Image files on disk as training data: finding them in a folder, checking each once, decoding them on demand.

Every file is read by the one reader of :mod:`tpp.data.images` (PNG/JPEG, ``.npy``, DICOM with or without
a suffix, NIfTI) and brought to the backbone's size by :func:`tpp.data.images.fit`, exactly what inference
does with a card whose input rule has ``file_resize``. Nothing here writes anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

from tqdm.auto import tqdm

from tpp.capped_read import unlistable, unlistable_error
from tpp.data.files import DataChanged, ImageFiles
from tpp.data.file_reading import FileReading
from tpp.data.file_kinds import file_kind
from tpp.data.images import DICOM_SUFFIXES, NIFTI_SUFFIXES, PIL_SUFFIXES, fit, is_image_file
from tpp.data.pixels import ImageError
from tpp.errors import TppError

PROGRESS_FROM = 500  # files: a progress bar for checking them from this many on


class FolderDecoder:
    """A file -> uint8 (size, size) gray or (size, size, 3) RGB (``mode`` "L" or "RGB"): read as ``reading``
    says (:meth:`FileReading.read`), then :func:`fit` (what every image of the data gets, read again when a batch
    needs it)."""

    def __init__(self, size: int, mode: str, reading: FileReading | None = None):
        self.size, self.mode, self.reading = size, mode, reading or FileReading()

    def __call__(self, path: str):
        try:  # checked at load; a file replaced or removed since then is named, never a raw library error
            array = self.reading.read(path)
        except ImageError as exc:
            raise DataChanged(f"image '{path}' changed or disappeared since the data was loaded "
                           f"({type(exc).__name__}: {exc}); restart the run.") from None
        return fit(array, self.size, self.mode)


def bad_file(path, reason: str, on_bad_file: str, skipped: list, origin: str | None = None) -> None:
    """An unreadable image: an error naming it (and ``origin``, e.g. the table line naming it), or with
    ``on_bad_file="skip"`` a (path, reason) row in ``skipped``."""
    if on_bad_file != "skip":
        raise TppError(f"image '{path}'{f' ({origin})' if origin else ''} cannot be read ({reason.rstrip('.')}). "
                       "Remove or "
                       "replace it, or pass "
                       "data.on_bad_file=skip to leave such files out (listed in skipped.csv).")
    skipped.append((str(path), reason))


def bad_folder(folder: str, exc: OSError, on_bad_file: str, skipped: list) -> None:
    """A sub-folder that cannot be listed (its images unseen): an error naming it (:func:`unlistable_error`), or
    with ``on_bad_file="skip"`` a (folder, reason) row in ``skipped``, as :func:`bad_file` does for a file."""
    if on_bad_file != "skip":
        raise unlistable_error(folder, exc, "its images cannot be read. Make it readable, or remove it, or pass "
                                            "data.on_bad_file=skip to leave it out (listed in skipped.csv)")
    skipped.append((folder, f"folder {unlistable(exc)}: its images are left out"))


PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")  # a link into them is never data (and /dev's files can block)


def walk_files(path: Path, on_unlistable=None):
    """(folder, file name) of every file below ``path``, folders and files sorted, hidden ones left out.
    Linked folders are followed (their images are the data's too); a folder reached a second time (linked twice,
    or a link to a folder above it) is refused: its images would count twice, perhaps in train and in test.
    A sub-folder that cannot be listed (no read permission, removed mid-walk) goes to
    ``on_unlistable(folder, exc)``, which raises or records it (default: a TppError naming it); ``path`` itself
    that cannot be listed is always a TppError naming it (os.walk passed over both without a word)."""
    def refused(exc: OSError) -> None:
        folder = exc.filename if exc.filename is not None else str(path)
        if on_unlistable is None or os.path.normpath(folder) == os.path.normpath(str(path)):
            raise unlistable_error(folder, exc, "make it readable, or remove it")
        on_unlistable(folder, exc)

    reached: dict[str, str] = {}
    for folder, dirs, files in os.walk(str(path), onerror=refused, followlinks=True):
        real = os.path.realpath(folder)
        if real in PSEUDO_FILESYSTEMS or real.startswith(tuple(f"{p}/" for p in PSEUDO_FILESYSTEMS)):
            raise TppError(f"folder '{folder}' leads into '{real}', a system folder, not data; remove the link.")
        if real in reached:
            raise TppError(f"folder '{folder}' is '{reached[real]}' again (a symbolic link): its images would "
                           "count twice. Remove the link, or the folder it repeats.")
        reached[real] = folder
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield folder, name


def dangling_link(file: str) -> str | None:
    """Why ``file`` (an entry of a folder) is a bad file when it is a symbolic link to nothing; else None."""
    if os.path.islink(file) and not os.path.exists(file):
        return f"dangling symbolic link: its target '{os.readlink(file)}' does not exist"
    return None


def walk_images(path: Path, on_bad_file: str) -> tuple[list[str], list]:
    """Every image file below ``path`` (see :func:`tpp.data.images.is_image_file` and :func:`walk_files`: hidden
    files and folders left out, linked folders followed) as POSIX paths relative to ``path``, sorted: the order
    never depends on the file system's listing. Dangling symbolic links are reported like unreadable images, and
    sub-folders that cannot be listed (:func:`bad_folder`). Returns (relative paths, skipped)."""
    found, skipped, top = [], [], str(path)

    def refused(folder: str, exc: OSError) -> None:
        bad_folder(folder, exc, on_bad_file, skipped)

    for folder, name in walk_files(path, refused):  # plain strings, no Path per file: 100,000 files stay cheap
        relative = os.path.relpath(folder, top).replace(os.sep, "/")
        file = os.path.join(folder, name)
        dangling = dangling_link(file)
        if dangling:
            bad_file(Path(file), dangling, on_bad_file, skipped)
        elif is_image_file(file):
            found.append(name if relative == "." else f"{relative}/{name}")
    return sorted(found), skipped


def check_files(paths: list[str], size: int, on_bad_file: str = "error", origins: list[str] | None = None,
                reading: FileReading | None = None) -> tuple[ImageFiles, list[int], list]:
    """Check every image by reading it once (one at a time: memory stays flat in the number of files) and
    return them as :class:`ImageFiles` of uint8 (size, size) gray, or (size, size, 3) RGB when any image has
    colour, read again when a batch needs them.

    Unreadable files (no regular file: a fifo, a socket, a device or a folder, never opened; zero bytes,
    truncated, not an image, a 3D volume, more pixels than ``reading``'s pixel limits allow by their header) fail
    at once naming the file (and its ``origins`` entry), or with ``on_bad_file="skip"`` are left out.
    ``reading``: how each file is decoded (frame, slice, window, pixel budget), at load and for every batch;
    default: as is, within the default budget.
    A progress bar shows from :data:`PROGRESS_FROM` files on.
    Returns (images, indices of the kept paths, [(path, reason)]).
    """
    reading = reading or FileReading()
    kept, skipped, colour = [], [], False
    for i, p in enumerate(tqdm(paths, desc="reading images", unit="image", disable=len(paths) < PROGRESS_FROM,
                               mininterval=5.0)):
        try:
            info = os.stat(p)
            kind = file_kind(info.st_mode)
            if kind:  # a fifo named scan.png: never opened (reading one waits for a writer for ever)
                raise ImageError(f"not a regular file ({kind})")
            if info.st_size == 0:
                raise ImageError("empty file (0 bytes)")
            colour = reading.read(p).ndim == 3 or colour
            kept.append(i)
        except (ImageError, OSError) as exc:
            bad_file(p, f"{type(exc).__name__}: {exc}", on_bad_file, skipped, origins and origins[i])
    if not kept:
        raise TppError(f"none of the {len(paths)} images could be read (first: {paths[0] if paths else '-'}).")
    mode = "RGB" if colour else "L"
    shape = (size, size, 3) if colour else (size, size)
    return ImageFiles((paths[i] for i in kept), FolderDecoder(size, mode, reading), shape), kept, skipped


def image_stem(path: str | Path) -> str:
    """The name an image and its mask share: the file name less its image suffix (``a.png`` -> ``a``,
    ``scan.nii.gz`` -> ``scan``, ``case.1.png`` -> ``case.1``); a name without one (a DICOM file named by its UID,
    ``1.2.840.113619.2.55``) is kept whole."""
    name = Path(path).name
    lower = name.lower()
    for suffix in (*NIFTI_SUFFIXES, *PIL_SUFFIXES, *DICOM_SUFFIXES, ".npy"):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return name


def pair_masks(images: list[Path], masks: list[Path], where: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs, sorted by image, matched by :func:`image_stem`. Refused, naming the files: two images
    or two masks with one stem (``a.png`` and ``a.jpg``: which is meant?), an image without a mask, a mask
    without an image. ``where``: the folder named in the messages."""
    by_stem = []
    for kind, files in (("images", images), ("masks", masks)):
        found: dict[str, Path] = {}
        for path in sorted(files):
            stem = image_stem(path)
            if stem in found:
                raise TppError(f"'{where}': {kind}/{found[stem].name} and {kind}/{Path(path).name} share the "
                               f"name '{stem}', so which one pairs with the other folder's file is ambiguous; "
                               "rename or remove one.")
            found[stem] = Path(path)
        by_stem.append(found)
    image_of, mask_of = by_stem
    for stem in sorted(set(image_of) ^ set(mask_of)):
        has, lacks = ("images", "masks") if stem in image_of else ("masks", "images")
        other = image_of.get(stem) or mask_of[stem]
        raise TppError(f"'{where}': {has}/{other.name} has no partner in {lacks}/ (a file named {stem}.<ext>; "
                       f"{len(set(image_of) ^ set(mask_of))} unpaired in all). Every image needs a mask of the "
                       "same name.")
    return [(image_of[stem], mask_of[stem]) for stem in sorted(image_of)]
