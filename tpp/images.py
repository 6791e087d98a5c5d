"""Reading images for inference: PNG/JPEG (and other PIL formats), ``.npy``, DICOM and NIfTI.

Every reader returns uint8 ``(H, W)`` gray or ``(H, W, 3)`` RGB, the form training images have; the
adapter card's input rule (channels, size, mean/std) is then applied by :func:`to_model_input`.

- PNG/JPEG/...: decoded as in training (gray modes stay gray, everything else becomes RGB).
- ``.npy``: (H, W), (H, W, 1) or (H, W, 3); uint8 as is, other integers must lie in 0..255, floats in
  [0, 1] (scaled by 255). Loaded with ``allow_pickle=False``.
- DICOM (``tpp[dicom]``, pydicom): rescale slope/intercept (modality LUT), then a VOI LUT, the file's
  window or ``window=(center, width)``, else min-max to 0..255; MONOCHROME1 is inverted; multi-frame
  files need an explicit ``frame``.
- NIfTI (``tpp[nifti]``, nibabel): a 2D image, or one slice of a 3D volume with ``slice_spec="AXIS:INDEX"``;
  min-max (or ``window``) to 0..255. The slice is used as stored (first remaining axis = rows).

Errors are :class:`ImageError` naming the input and the problem; nothing here logs pixel data or
DICOM header fields.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import torch

from tpp.errors import TppError

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
MAX_SIDE = 8192


class ImageError(TppError):
    """An input image that cannot be read or converted (HTTP 400 in the service)."""


def sniff(data: bytes, name: str) -> str:
    """Format of an input from its name, else its first bytes: pil | npy | dicom | nifti."""
    lower = name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    suffix = Path(lower).suffix
    if suffix in (".dcm", ".dicom"):
        return "dicom"
    if suffix == ".npy":
        return "npy"
    if suffix in PIL_SUFFIXES:
        return "pil"
    if data[128:132] == b"DICM":
        return "dicom"
    if data[:6] == b"\x93NUMPY":
        return "npy"
    if data[:2] == b"\x1f\x8b" or int.from_bytes(data[:4], "little") == 348:
        return "nifti"
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:2] == b"\xff\xd8":
        return "pil"
    raise ImageError(f"'{name}': unsupported image format (PNG, JPEG, .npy, DICOM or NIfTI are read).")


def decode(data: bytes, name: str, *, frame: int | None = None, slice_spec: str | None = None,
           window: tuple[float, float] | None = None) -> np.ndarray:
    """Bytes of one image file -> uint8 (H, W) or (H, W, 3)."""
    kind = sniff(data, name)
    try:
        if kind == "pil":
            array = _read_pil(data)
        elif kind == "npy":
            array = _read_npy(data, name)
        elif kind == "dicom":
            array = _read_dicom(data, name, frame, window)
        else:
            array = _read_nifti(data, name, slice_spec, window)
    except ImageError:
        raise
    except ImportError as exc:
        extra = "dicom" if kind == "dicom" else "nifti"
        raise ImageError(f"'{name}': reading {kind.upper()} needs an optional package ({exc.name}): "
                         f"pip install 'tpp[{extra}]'.") from None
    except Exception as exc:  # a corrupt file surfaces as many different library errors
        raise ImageError(f"'{name}': cannot be read as {kind} ({type(exc).__name__}: {str(exc)[:200]}).") from None
    return _check_shape(array, name)


def read(path: str | Path, **kwargs) -> np.ndarray:
    """Read an image file from disk (see :func:`decode`)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"'{path}' does not exist or is not a file.")
    return decode(path.read_bytes(), str(path), **kwargs)


def _read_pil(data: bytes) -> np.ndarray:
    from PIL import Image

    from tpp.data.folders import training_mode

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.array(training_mode(img))  # a writable copy (torch refuses read-only views)


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


def _read_dicom(data: bytes, name: str, frame: int | None, window) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        raise ImageError(f"'{name}': the DICOM file holds no pixel data.")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    pixels = ds.pixel_array
    if frames > 1:
        if frame is None:
            raise ImageError(f"'{name}': multi-frame DICOM ({frames} frames); choose one with an explicit frame index.")
        if not 0 <= frame < frames:
            raise ImageError(f"'{name}': frame {frame} is out of range (0..{frames - 1}).")
        pixels = pixels[frame]
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        return np.clip(pixels, 0, 255).astype(np.uint8)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if window is None and "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds).astype(np.float64)
    elif window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    gray = _to_uint8(values, window)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        gray = 255 - gray
    return gray


def _first(value) -> float:
    """A DICOM value that may be multi-valued (several windows): the first one."""
    try:
        return float(value)
    except TypeError:
        return float(value[0])


def _read_nifti(data: bytes, name: str, slice_spec: str | None, window) -> np.ndarray:
    import nibabel

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    volume = np.asarray(nibabel.Nifti1Image.from_bytes(data).get_fdata(), dtype=np.float64)
    while volume.ndim > 2 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim == 3:
        if slice_spec is None:
            raise ImageError(f"'{name}': a 3D NIfTI volume {volume.shape}; "
                             "choose a 2D slice with AXIS:INDEX (e.g. 2:40).")
        axis, index = parse_slice(slice_spec)
        if axis > 2 or not 0 <= index < volume.shape[axis]:
            raise ImageError(f"'{name}': slice {slice_spec} is outside the volume {volume.shape}.")
        volume = np.take(volume, index, axis=axis)
    elif volume.ndim != 2:
        raise ImageError(f"'{name}': NIfTI data of shape {volume.shape} is neither 2D nor 3D.")
    return _to_uint8(volume, window)


def parse_slice(spec: str) -> tuple[int, int]:
    """``"AXIS:INDEX"`` -> (axis, index)."""
    try:
        axis, index = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ImageError(f"slice {spec!r} must be AXIS:INDEX with integers, e.g. 2:40.") from None
    return axis, index


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``"CENTER,WIDTH"`` -> (center, width); None passes through."""
    if not text:
        return None
    try:
        center, width = (float(x) for x in text.split(","))
    except ValueError:
        raise ImageError(f"window {text!r} must be CENTER,WIDTH, e.g. 40,400.") from None
    if width <= 0:
        raise ImageError(f"window {text!r}: the width must be positive.")
    return center, width


def _to_uint8(values: np.ndarray, window) -> np.ndarray:
    """Window (center, width) or min-max of the image -> uint8."""
    if window is not None:
        center, width = window
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
    if min(array.shape[:2]) < 2 or max(array.shape[:2]) > MAX_SIDE:
        raise ImageError(f"'{name}': image size {array.shape[1]}x{array.shape[0]} is outside 2..{MAX_SIDE} pixels.")
    return np.ascontiguousarray(array)


def to_model_input(array: np.ndarray, input_rule: dict) -> torch.Tensor:
    """uint8 image -> (1, C, S, S) tensor with the card's intensity pipeline (as in training).

    The image is first brought to the channels the adapter was trained on (gray <-> RGB, ITU-R 601 luma),
    then scaled, channel-mapped to the backbone, resized and normalised exactly as training images were.
    """
    from tpp.data.build import to_model_tensor

    if input_rule["image_channels"] == 1 and array.ndim == 3:
        array = np.round(array @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
    elif input_rule["image_channels"] == 3 and array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return to_model_tensor(array[None], input_rule["channels"], input_rule["image_size"],
                           input_rule["mean"], input_rule["std"])
