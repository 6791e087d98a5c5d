"""The one image reader of training, TPP, evaluation, prediction and serving: PNG/JPEG (and other PIL
formats), ``.npy``, DICOM (also extensionless, PACS style, found by its preamble) and NIfTI.

Every reader returns uint8 ``(H, W)`` gray or ``(H, W, 3)`` RGB. Image folders and CSV sources read their
files with :func:`read` and bring them to the backbone's size with :func:`fit` when the data are loaded; at
inference the adapter card's input rule is applied by :func:`to_model_input`, which calls the same
:func:`fit` when the card says the training images were files, so one scan gives bit-identical model input
in training and in serving. (:mod:`tpp.serve.images` re-exports these names.)

- PNG/JPEG/...: decoded as in training (gray modes stay gray, everything else becomes RGB).
- ``.npy``: (H, W), (H, W, 1) or (H, W, 3); uint8 as is, other integers must lie in 0..255, floats in
  [0, 1] (scaled by 255). Loaded with ``allow_pickle=False``.
- DICOM (``tpp[dicom]``, pydicom): rescale slope/intercept (modality LUT), then a VOI LUT, the file's
  window or ``window=(center, width)``, else min-max to 0..255; MONOCHROME1 is inverted; multi-frame
  files need an explicit ``frame`` (only that frame is decoded).
- NIfTI-1 (``tpp[nifti]``, nibabel): a 2D image, or one slice of a 3D volume with ``slice_spec="AXIS:INDEX"``;
  min-max (or ``window``) to 0..255. The slice is used as stored (first remaining axis = rows).

Size budget (:class:`PixelLimits`): before anything is decoded, :func:`probe` reads the header (PIL's lazy
open, the ``.npy`` header, DICOM without pixel data, the NIfTI header) and an image above the limit is
refused with :class:`ImageTooLarge`. An image counts the elements its decoder materialises: width x height
for PNG/JPEG/``.npy`` and one DICOM frame (colour samples not counted), every voxel of a NIfTI file (the
whole volume is inflated). Gzipped NIfTI is inflated in bounded steps, never past the size its header implies.
The budget, not PIL's global bomb limit (``Image.MAX_IMAGE_PIXELS``), decides for PIL formats too: a budget above
PIL's limit decodes (:func:`tpp.data.pixels.pil_budget`), and an image past it is tpp's :class:`ImageTooLarge`.

Errors are :class:`ImageError` naming the input and the problem (non-finite values or windows included);
nothing here logs pixel data or DICOM header fields.
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
import threading
import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tpp.data.file_kinds import open_regular
from tpp.data.pixels import (DEFAULT_LIMITS, ImageError, ImageTooLarge, PixelLimits, pil_budget, pil_pixels,
                              training_mode)
from tpp.errors import TppError

if TYPE_CHECKING:
    import torch

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
FILE_RESIZE = "PIL bilinear to image_size when the file is read"  # the input rule's ``file_resize``
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER = 348  # bytes; the voxel data follow at the header's vox_offset
MAX_NIFTI_OFFSET = 2**24  # header extensions beyond 16 MiB before the voxels are refused



def sniff(data: bytes, name: str) -> str:
    """Format of an input from its name, else its first bytes: pil | npy | dicom | nifti."""
    lower = name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    suffix = Path(lower).suffix
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix == ".npy":
        return "npy"
    if suffix in PIL_SUFFIXES:
        return "pil"
    if data[128:132] == b"DICM":
        return "dicom"
    if data[:6] == b"\x93NUMPY":
        return "npy"
    if data[:2] == GZIP_MAGIC or int.from_bytes(data[:4], "little") == NIFTI1_HEADER:
        return "nifti"
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:2] == b"\xff\xd8":
        return "pil"
    raise ImageError(f"'{name}': unsupported image format (PNG, JPEG, .npy, DICOM or NIfTI are read).")


@contextmanager
def _reading(kind: str, name: str):
    """Turn a library's error while reading ``name`` as ``kind`` into one :class:`ImageError`. What nibabel logs
    meanwhile (header repairs: ``pixdim[1,2,3] should be positive``) is kept from stderr (:func:`_nibabel_notes`)
    and folded into the error, if there is one."""
    notes: list[str] = []
    try:
        with _nibabel_notes(notes) if kind == "nifti" else nullcontext():
            yield
    except ImageError as exc:
        if not notes:
            raise
        raise type(exc)(_with_notes(str(exc), notes)) from None
    except ImportError as exc:
        extra = "dicom" if kind == "dicom" else "nifti"
        raise ImageError(f"'{name}': reading {kind.upper()} needs an optional package ({exc.name}): "
                         f"pip install 'tpp[{extra}]'.") from None
    except Exception as exc:  # a corrupt file surfaces as many different library errors
        text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))[:200].rstrip(" .")
        raise ImageError(_with_notes(f"'{name}': cannot be read as {KIND_NAMES.get(kind, kind)} "
                                     f"({type(exc).__name__}: {text}).", notes)) from None


class _NibabelNotes(logging.Filter):
    """Installed once on nibabel's ``nibabel.global`` logger (whose own handler prints to stderr): a record logged
    by a thread inside :func:`_nibabel_notes` is kept in that thread's list instead of printed; other threads' and
    other code's nibabel messages pass as before."""

    def __init__(self):
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        notes = getattr(self.local, "notes", None)
        if notes is None:
            return True
        notes.append(record.getMessage())
        return False


_NIBABEL_FILTER = _NibabelNotes()


@contextmanager
def _nibabel_notes(notes: list[str]):
    """What nibabel logs in this thread while the block runs goes to ``notes``, not to stderr."""
    logger = logging.getLogger("nibabel.global")
    if _NIBABEL_FILTER not in logger.filters:
        logger.addFilter(_NIBABEL_FILTER)
    outer = getattr(_NIBABEL_FILTER.local, "notes", None)
    _NIBABEL_FILTER.local.notes = notes
    try:
        yield
    finally:
        _NIBABEL_FILTER.local.notes = outer


def _with_notes(message: str, notes: list[str]) -> str:
    """``message`` with nibabel's notes (deduplicated, those the message already says left out) appended."""
    said = message.casefold()
    extra = [n for n in dict.fromkeys(n.strip() for n in notes)
             if n and n.casefold() not in said and not any(part in n.casefold() for part in _quoted(said))]
    if not extra:
        return message
    return f"{message.rstrip()} nibabel also noted: {'; '.join(extra)[:300]}."


def _quoted(message: str) -> list[str]:
    """The library text inside ``(Error: text)`` of a message: a note repeating it adds nothing."""
    return [t.strip() for t in re.findall(r"\(\w+: ([^()]{8,})\)", message)]


KIND_NAMES = {"pil": "an image (PNG, JPEG, BMP, TIFF)", "npy": "a .npy array", "dicom": "DICOM", "nifti": "NIfTI"}


def probe(data: bytes, name: str, limits: PixelLimits = DEFAULT_LIMITS) -> int:
    """Pixels (voxels) decoding ``data`` would materialise, from its header alone (no pixel is decoded). PIL
    formats are opened under :func:`tpp.data.pixels.pil_budget` of ``limits.max_pixels``, not PIL's own limit."""
    kind = sniff(data, name)
    with _reading(kind, name):
        if kind == "pil":
            return _probe_pil(data, name, limits.max_pixels)
        return {"npy": _probe_npy, "dicom": _probe_dicom, "nifti": _probe_nifti}[kind](data, name)


def check_image(data: bytes, name: str, limits: PixelLimits = DEFAULT_LIMITS) -> int:
    """:func:`probe`, refusing an image above ``limits.max_pixels`` (:class:`ImageTooLarge`). Returns the count."""
    count = probe(data, name, limits)
    if count > limits.max_pixels:
        raise ImageTooLarge(f"'{name}': {count:,} pixels, more than the per-image limit of {limits.max_pixels:,} "
                            "(tpp predict / serve --max-image-pixels; data.max_image_pixels in training); send a "
                            "smaller image or raise the limit.")
    return count


def check_request(files: list[tuple[bytes, str]], limits: PixelLimits = DEFAULT_LIMITS) -> int:
    """Probe every (bytes, name) of one request, headers only: refuse the whole request before anything is
    decoded when one image, or all of them together, exceed ``limits``. Returns the total count."""
    total = sum(check_image(data, name, limits) for data, name in files)
    if total > limits.max_request_pixels:
        raise ImageTooLarge(f"the request's {len(files)} images hold {total:,} pixels together, more than the "
                            f"per-request limit of {limits.max_request_pixels:,} (--max-request-pixels); "
                            "send fewer or smaller images per request.")
    return total


def decode(data: bytes, name: str, *, frame: int | None = None, slice_spec: str | None = None,
           window: tuple[float, float] | None = None, limits: PixelLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Bytes of one image file -> uint8 (H, W) or (H, W, 3); the header is checked against ``limits`` first."""
    kind = sniff(data, name)
    check_image(data, name, limits)
    with _reading(kind, name):
        if kind == "pil":
            array = _read_pil(data, name, limits.max_pixels)
        elif kind == "npy":
            array = _read_npy(data, name)
        elif kind == "dicom":
            array = _read_dicom(data, name, frame, window)
        else:
            array = _read_nifti(data, name, slice_spec, window)
    return _check_shape(array, name)


def max_file_bytes(limits: PixelLimits = DEFAULT_LIMITS) -> int:
    """The largest image file read: ``max_pixels`` float64 RGB values plus 16 MiB of headers (an image file
    beyond it cannot hold an image within the pixel budget)."""
    return limits.max_pixels * 3 * 8 + 2**24


def read(path: str | Path, **kwargs) -> np.ndarray:
    """Read an image file from disk (see :func:`decode`); a file larger than :func:`max_file_bytes` is refused
    from its size, before a byte of it is read, and one that is no regular file (a fifo, a device, a folder) is
    refused without being read (:func:`tpp.data.file_kinds.open_regular`)."""
    path = Path(path)
    try:
        with open_regular(path) as fh:
            size, limit = os.fstat(fh.fileno()).st_size, max_file_bytes(kwargs.get("limits", DEFAULT_LIMITS))
            if size > limit:
                raise ImageTooLarge(f"'{path}': {size:,} bytes, more than any image within the pixel limit can "
                                    f"take ({limit:,} bytes); is it an image?")
            data = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"'{path}' does not exist or is not a file.") from None
    return decode(data, str(path), **kwargs)


def _probe_pil(data: bytes, name: str, max_pixels: int) -> int:
    return pil_pixels(io.BytesIO(data), name, max_pixels)


def _read_pil(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode a PIL image whose header is within ``max_pixels``: PIL's own bomb limit yields to that budget."""
    from PIL import Image

    with pil_budget(max_pixels), Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.array(training_mode(img, name))  # a writable copy (torch refuses read-only views)


def _probe_npy(data: bytes, name: str) -> int:
    """Elements of a ``.npy`` array from its header (colour channels of an (H, W, C<=4) array not counted)."""
    fmt = np.lib.format
    fh = io.BytesIO(data)
    version = fmt.read_magic(fh)
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape = reader(fh)[0]
    if len(shape) == 3 and shape[-1] <= 4:
        shape = shape[:2]
    return math.prod(shape)


def _read_npy(data: bytes, name: str) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ImageError(f"'{name}': integer array values must lie in 0..255 (got {array.min()}..{array.max()}); "
                             "save uint8, or floats in [0, 1].")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array.size and (array.min() < 0 or array.max() > 1)):
            raise ImageError(f"'{name}': float arrays must be finite and lie in [0, 1].")
        return np.round(array * 255).astype(np.uint8)
    raise ImageError(f"'{name}': unsupported array dtype {array.dtype}.")


def _probe_dicom(data: bytes, name: str) -> int:
    """Rows x Columns of one DICOM frame (only the chosen frame is decoded), read without the pixel data."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0)


def _read_dicom(data: bytes, name: str, frame: int | None, window) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise ImageError(f"'{name}': the DICOM file holds no pixel data.")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    index = None
    if frames > 1:
        if frame is None:
            raise ImageError(f"'{name}': multi-frame DICOM ({frames} frames); choose one (tpp predict --frame N, "
                             "?frame=N in the service, frame=N in Python; 0-based).")
        if not 0 <= frame < frames:
            raise ImageError(f"'{name}': frame {frame} is out of range (0..{frames - 1}).")
        index = frame
    pixels = pixel_array(ds, index=index)  # just the chosen frame, not all of them
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:  # colour: its stored bit depth scaled to 8 bits
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        if bits > 8:
            pixels = np.round(pixels.astype(np.float64) * (255 / (2**bits - 1)))
        return np.clip(pixels, 0, 255).astype(np.uint8)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if window is None and "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds).astype(np.float64)
    elif window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
        _check_window(window, f"'{name}': the file's window")
    if window is None and "VOILUTSequence" not in ds and _stored_as_8_bits(ds, pixels, values):
        gray = values.astype(np.uint8)  # as a PNG of the same pixels is read (no stretch)
    else:
        gray = _to_uint8(values, window, name)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        gray = 255 - gray
    return gray


def _stored_as_8_bits(ds, pixels: np.ndarray, values: np.ndarray) -> bool:
    """Whether a gray DICOM holds plain 8-bit intensities: at most 8 stored bits, no rescale (the modality LUT
    left the values as stored) and all in 0..255. Without a window those are read as stored, like the same
    pixels in a PNG; a per-image min-max would stretch them and could change a prediction."""
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    return bits <= 8 and values.size > 0 and np.array_equal(values, pixels) and values.min() >= 0 \
        and values.max() <= 255


def _first(value) -> float:
    """A DICOM value that may be multi-valued (several windows): the first one."""
    try:
        return float(value)
    except TypeError:
        return float(value[0])


def _nifti_header(data: bytes, name: str):
    """(nibabel header, size in bytes of the uncompressed file it implies), reading only the header."""
    import nibabel

    if data[:2] == GZIP_MAGIC:
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, NIFTI1_HEADER)
    else:
        head = data[:NIFTI1_HEADER]
    size_field = head[:4]
    if len(head) < NIFTI1_HEADER or NIFTI1_HEADER not in (int.from_bytes(size_field, "little"),
                                                           int.from_bytes(size_field, "big")):
        raise ImageError(f"'{name}': not a NIfTI-1 file (no 348-byte header).")
    if head[344:348] != b"n+1\0":
        raise ImageError(f"'{name}': not a single-file NIfTI-1 image (magic 'n+1' missing).")
    header = nibabel.Nifti1Header.from_fileobj(io.BytesIO(head))
    _check_nifti_dtype(header.get_data_dtype(), name)
    offset = int(header.get_data_offset())
    if not NIFTI1_HEADER <= offset <= MAX_NIFTI_OFFSET:
        raise ImageError(f"'{name}': the NIfTI header puts the voxels at byte {offset:,} "
                         f"(expected {NIFTI1_HEADER}..{MAX_NIFTI_OFFSET:,}).")
    voxels = math.prod(header.get_data_shape())
    return header, offset + voxels * header.get_data_dtype().itemsize


def _check_nifti_dtype(dtype: np.dtype, name: str) -> None:
    """Voxels tpp turns into gray intensities: integers, floats, booleans. Complex voxels (complex64 / complex128,
    an MR phase image or k-space) would lose their imaginary part without a word, and RGB / RGBA voxels (a
    structured dtype) have no single intensity: both are refused, naming the file."""
    if dtype.kind == "c":
        raise ImageError(f"'{name}': complex-valued voxels ({dtype.name}) are not supported; save the magnitude "
                         "(numpy.abs) or the phase (numpy.angle) as a real-valued NIfTI.")
    if dtype.kind not in "biuf":
        what = f"RGB / RGBA voxels ({'/'.join(dtype.names)})" if dtype.names else f"voxels of type {dtype.name}"
        raise ImageError(f"'{name}': {what} are not supported; save one gray intensity per voxel (a 2D colour "
                         "image: a PNG).")


def _probe_nifti(data: bytes, name: str) -> int:
    """Voxels of the whole NIfTI volume (all of them are inflated), from the header."""
    header, _ = _nifti_header(data, name)
    return math.prod(header.get_data_shape())


def _gunzip(data: bytes, limit: int, name: str) -> bytes:
    """Inflate gzip ``data`` (one or more members) in bounded steps; refuse it once it passes ``limit`` bytes."""
    parts, size, rest = [], 0, data
    while rest[:2] == GZIP_MAGIC:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        parts.append(inflater.decompress(rest, limit - size + 1))  # at most one byte past the limit
        size += len(parts[-1])
        if size > limit:
            raise ImageError(f"'{name}': the gzip stream inflates past the {limit:,} bytes its NIfTI header "
                             "implies (a corrupt file or a decompression bomb); refused.")
        if not inflater.eof:
            break  # truncated: the reader reports the missing voxels
        rest = inflater.unused_data
    return b"".join(parts)


def _read_nifti(data: bytes, name: str, slice_spec: str | None, window) -> np.ndarray:
    import nibabel

    _, size = _nifti_header(data, name)
    raw = _gunzip(data, size, name) if data[:2] == GZIP_MAGIC else data
    image = nibabel.Nifti1Image.from_bytes(raw)
    shape = list(image.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    index: list = [slice(None)] * len(shape)
    if len(shape) == 3:
        if slice_spec is None:
            raise ImageError(f"'{name}': a 3D NIfTI volume {tuple(shape)}; "
                             "choose a 2D slice with AXIS:INDEX (e.g. 2:40) or AXIS:middle.")
        axis, position = parse_slice(slice_spec)
        if axis <= 2 and position is None:  # AXIS:middle: the volume's central slice, whatever its depth
            position = shape[axis] // 2
        if axis > 2 or not 0 <= position < shape[axis]:
            raise ImageError(f"'{name}': slice {slice_spec} is outside the volume {tuple(shape)}.")
        index[axis] = position
    elif len(shape) != 2:
        raise ImageError(f"'{name}': NIfTI data of shape {tuple(shape)} is neither 2D nor 3D.")
    index += [0] * (len(image.shape) - len(shape))  # the dropped trailing singleton axes
    values = np.asarray(image.dataobj[tuple(index)], dtype=np.float64)  # the slice only, scaled as stored
    return _to_uint8(values, window, name)


def parse_slice(spec: str) -> tuple[int, int | None]:
    """``"AXIS:INDEX"`` -> (axis, index); ``"AXIS:middle"`` -> (axis, None): the central slice of each volume.
    ``"AXIS:all"`` is refused saying why: a file is one image (one label, one prediction row)."""
    if spec.partition(":")[2].strip().lower() == "all":
        raise ImageError(f"slice {spec!r}: reading every slice of a volume is not supported: a file is read as one "
                         "2D image (one label, one prediction row). Choose one slice, AXIS:INDEX (e.g. 2:40) or "
                         "AXIS:middle, or, to train on several, export them as 2D files with a patient_id column "
                         "(data.source=csv) so a volume's slices stay in one split.")
    try:
        axis, index = spec.split(":")
        axis = int(axis)
        index = None if index.strip().lower() == "middle" else int(index)
        if not 0 <= axis <= 2 or (index is not None and index < 0):  # a volume has three axes
            raise ValueError
    except ValueError:
        raise ImageError(f"slice {spec!r} must be AXIS:INDEX (AXIS 0, 1 or 2, INDEX an integer from 0), e.g. 2:40, "
                         "or AXIS:middle (e.g. 2:middle, each volume's central slice).") from None
    return axis, index


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``"CENTER,WIDTH"`` -> (center, width); None passes through."""
    if not text:
        return None
    try:
        center, width = (float(x) for x in text.split(","))
    except ValueError:
        raise ImageError(f"window {text!r} must be CENTER,WIDTH, e.g. 40,400.") from None
    _check_window((center, width), f"window {text!r}")
    return center, width


def _check_window(window: tuple[float, float], what: str) -> tuple[float, float]:
    """A window needs a finite center and a positive finite width (NaN / inf would give a black image): the pair
    as floats; anything else (a string "40,400" given to ``tpp.load().predict``) is an :class:`ImageError`."""
    try:
        if isinstance(window, (str, bytes)):  # "44" would unpack to (4.0, 4.0)
            raise TypeError
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ImageError(f"{what} must be a pair of numbers (center, width), got {str(window)[:40]!r}.") from None
    if not (math.isfinite(center) and math.isfinite(width)):
        raise ImageError(f"{what} (center {center:g}, width {width:g}) must be finite numbers.")
    if width <= 0:
        raise ImageError(f"{what} (center {center:g}, width {width:g}): the width must be positive.")
    return center, width


def _to_uint8(values: np.ndarray, window, name: str) -> np.ndarray:
    """Window (center, width) or min-max of the image -> uint8; NaN or infinite values are refused."""
    if not np.isfinite(values).all():
        raise ImageError(f"'{name}': the image holds NaN or infinite values; it cannot be windowed to 8 bits.")
    if window is not None:
        center, width = _check_window(window, f"'{name}': window")
        low, high = center - width / 2, center + width / 2
    else:
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) / max(high - low, 1e-12)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _check_shape(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ImageError(f"'{name}': image of shape {tuple(array.shape)} is neither (H, W) gray nor (H, W, 3) RGB.")
    if min(array.shape[:2]) < 2:
        raise ImageError(f"'{name}': image size {array.shape[1]}x{array.shape[0]} is too small "
                         "(each side must be at least 2 pixels).")
    return np.ascontiguousarray(array)


def is_dicom_file(path: str | Path) -> bool:
    """A file without a known image suffix that holds DICOM: the 128-byte preamble, then ``DICM``. Only a
    regular file is read (:func:`tpp.data.file_kinds.open_regular`: a fifo or a device in a folder would block the
    read or never end)."""
    try:
        with open_regular(path) as fh:
            return fh.read(132)[128:132] == b"DICM"
    except (OSError, ImageError):
        return False


def is_image_file(path: str | Path) -> bool:
    """Whether a file found in a folder is an image tpp reads: a PIL suffix, ``.npy``, ``.dcm``/``.dicom``,
    ``.nii``/``.nii.gz``, or any other file whose bytes are DICOM (``IM00001``, ``1.2.840.113619.2.55``, a Siemens
    ``.IMA``: 132 bytes read, as ``tpp predict`` sniffs). Hidden files are not images."""
    name = Path(path).name
    lower = name.lower()
    if name.startswith("."):
        return False
    suffix = Path(lower).suffix
    if lower.endswith(NIFTI_SUFFIXES) or suffix in PIL_SUFFIXES | DICOM_SUFFIXES | {".npy"}:
        return True
    return is_dicom_file(path)  # IM00001, 1.2.840.113619.2.55, scan.IMA; notes.txt reads as no DICOM


def fit(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> uint8 (size, size) for ``mode="L"`` or (size, size, 3) for ``"RGB"``:
    PIL's mode conversion (ITU-R 601 luma for RGB -> L) and bilinear resize. What a training file gets when
    it is read, and what inference applies when the card's input rule has ``file_resize``."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(array), "RGB" if array.ndim == 3 else "L")
    return np.array(img.convert(mode).resize((size, size), Image.BILINEAR), dtype=np.uint8)  # writable


def to_model_input(array: np.ndarray, input_rule: dict) -> torch.Tensor:
    """uint8 image (H, W) or (H, W, 3) -> (1, C, S, S) float32 with the card's intensity pipeline (as in training).

    Cards of models trained on files (``input_rule["file_resize"]``): the image is brought to the trained
    channels and size by :func:`fit`, exactly as the training files were, then scaled, channel-mapped and
    normalised. Otherwise (arrays: MedMNIST, .npz) it is brought to the trained channels (gray <-> RGB,
    ITU-R 601 luma), then scaled, channel-mapped to the backbone, resized and normalised as those arrays were.
    """
    from tpp.data.tensors import to_model_tensor

    if input_rule.get("file_resize"):
        array = fit(array, input_rule["image_size"], "RGB" if input_rule["image_channels"] == 3 else "L")
    elif input_rule["image_channels"] == 1 and array.ndim == 3:
        array = np.round(array @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
    elif input_rule["image_channels"] == 3 and array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return to_model_tensor(array[None], input_rule["channels"], input_rule["image_size"],
                           input_rule["mean"], input_rule["std"], rule_frame(input_rule))


def rule_frame(input_rule: dict) -> int:
    """The ``frame`` of a card's input rule (absent: 0): border pixels a padding visual prompt keeps for itself.
    It must be an integer with ``0 <= frame < image_size / 2`` (a forged card must not crop images with a
    negative frame, or leave no image inside it); anything else raises :class:`tpp.errors.TppError`."""
    frame, size = input_rule.get("frame", 0), input_rule.get("image_size")
    if isinstance(frame, bool) or not isinstance(frame, int) or not isinstance(size, int) or \
            not 0 <= frame or 2 * frame >= size:
        raise TppError(f"input.frame must be an integer number of border pixels with 0 <= frame < image_size / 2 "
                       f"(image_size {str(size)[:20]}), got {repr(frame)[:40]}")
    return frame
