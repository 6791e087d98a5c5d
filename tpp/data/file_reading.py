"""How files are decoded, as ``tpp predict --frame/--slice/--window`` read them: options shared by the sources
that read image files one by one (``folder``, ``csv``, ``unlabeled_folder``), set as ``data.frame``,
``data.slice``, ``data.window`` and ``data.max_image_pixels``. A 3D NIfTI volume or a multi-frame DICOM file is
no image until one of its slices or frames is chosen; the same choice applies to every file of the data.

One :class:`FileReading` travels from the source's options to every reader of the data (the loaders,
:func:`tpp.data.filesets.check_files`, the decoder reading batches): a new reading option is one field here."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Optional

from tpp.errors import ConfigError


SAME_READING = "image files"  # the ``meaning`` marker (:func:`tpp.data.sources.carried_options`) of these options:
# every source with them reads its image files alike, so ``data.source=X`` on the command line carries them over


@dataclass
class FileReading:
    frame: Optional[int] = field(default=None, metadata={"meaning": SAME_READING,
        "help": "multi-frame DICOM files: the frame read from each (0-based), as tpp predict --frame"})
    slice: Optional[str] = field(default=None, metadata={"meaning": SAME_READING,
        "help": "3D NIfTI volumes: the slice read from each, AXIS:INDEX (e.g. 2:40) or AXIS:middle (each volume's "
                "central slice), as tpp predict --slice"})
    window: Optional[str] = field(default=None, metadata={"meaning": SAME_READING,
        "help": "DICOM / NIfTI: intensity window CENTER,WIDTH (e.g. 40,400) instead of each image's min-max, as "
                "tpp predict --window (PNG / JPEG hold 8-bit pixels already: no effect on them)"})
    max_image_pixels: Optional[int] = field(default=None, metadata={"meaning": SAME_READING,
        "help": "most pixels (voxels: a NIfTI volume is read whole) one file may hold, from its header, as tpp "
                "predict --max-image-pixels (default 2**26 = 67,108,864; a 512x512x300 CT needs 2**27)"})

    def __post_init__(self):
        from tpp.data.images import ImageError, parse_slice, parse_window

        if self.frame is not None and (isinstance(self.frame, bool) or not isinstance(self.frame, int)
                                       or self.frame < 0):
            raise ConfigError(f"data.frame must be a frame number from 0, got {self.frame!r}.")
        if self.max_image_pixels is not None and (isinstance(self.max_image_pixels, bool)
                                                  or not isinstance(self.max_image_pixels, int)
                                                  or self.max_image_pixels < 1):
            raise ConfigError(f"data.max_image_pixels must be a positive number of pixels, got "
                              f"{self.max_image_pixels!r}.")
        for key, parse in (("slice", parse_slice), ("window", parse_window)):
            value = getattr(self, key)
            if value is not None:
                try:
                    parse(str(value))
                except ImageError as exc:
                    raise ConfigError(f"data.{key}: {exc}") from None

    def file_reading(self) -> "FileReading":
        """These options alone, as a plain :class:`FileReading` (a source's options class extends it with its own
        fields: the folder, the classes ...; the loaders take only how files are read)."""
        return FileReading(**{f.name: getattr(self, f.name) for f in fields(FileReading)})

    def read(self, path):
        """One image file read with these options and within :meth:`pixel_limits`: uint8 (H, W) or (H, W, 3)
        (:func:`tpp.data.images.read`)."""
        from tpp.data.images import read

        return read(path, limits=self.pixel_limits(), **self.read_options())

    def pixel_limits(self):
        """The pixel budget of one file (:class:`tpp.data.pixels.PixelLimits`): ``max_image_pixels`` or the
        default."""
        from tpp.data.pixels import DEFAULT_LIMITS, PixelLimits

        if self.max_image_pixels is None:
            return DEFAULT_LIMITS
        return PixelLimits(self.max_image_pixels, max(self.max_image_pixels, DEFAULT_LIMITS.max_request_pixels))

    def read_options(self) -> dict:
        """Keyword arguments of :func:`tpp.data.images.read` (only those set)."""
        from tpp.data.images import parse_window

        given = {"frame": self.frame, "slice_spec": self.slice,
                 "window": parse_window(str(self.window)) if self.window is not None else None}
        return {k: v for k, v in given.items() if v is not None}


ACTS_ON = {"frame": ("dicom",), "slice_spec": ("nifti",), "window": ("dicom", "nifti")}  # decode keyword -> the
# formats it acts on: a PNG or JPEG holds 8-bit pixels already (no intensities to window), no frames, no slices
FORMAT_NAMES = {"dicom": "DICOM", "nifti": "NIfTI"}


SNIFF_BYTES = 132  # a DICOM preamble (128 bytes) and its "DICM"; every other format's magic is shorter


def named_format(path) -> str | None:
    """pil | npy | dicom | nifti when the name of ``path`` tells it (nothing is read), else None."""
    from tpp.data.images import ImageError, sniff

    try:
        return sniff(b"", str(path))
    except ImageError:
        return None


def file_format(path) -> str | None:
    """pil | npy | dicom | nifti of an image file, as the reader tells them (its name, else its first bytes: a
    DICOM file without a suffix); None for a file that cannot be opened or is none of them."""
    from tpp.data.file_kinds import file_kind, nonblocking
    from tpp.data.images import ImageError, sniff

    named = named_format(path)
    if named:
        return named
    try:
        with open(path, "rb", opener=nonblocking) as fh:  # a fifo is none, and never waited on
            return None if file_kind(os.fstat(fh.fileno()).st_mode) else sniff(fh.read(SNIFF_BYTES), str(path))
    except (OSError, ImageError):
        return None


def acts_on(key: str, formats) -> bool:
    """Whether decode keyword ``key`` acts on a file of one of ``formats`` (None: formats unknown, so it may)."""
    return formats is None or bool(set(ACTS_ON.get(key, ())) & set(formats))


def applied(reading: FileReading | None, paths: list[str], where: str) -> tuple[dict | None, frozenset]:
    """(what a :class:`tpp.data.Dataset` of the files ``paths`` records of ``reading``: its ``reading``, in the
    card as ``data.reading``; the formats of those files: its ``file_formats``). Only the options that act on a
    file of the data are recorded: ``data.window`` on a folder of PNGs changes no pixel, so evaluating or
    predicting on those PNGs with or without it is the same. An option that acts on none of the files is warned
    about (``where`` names the data). The recorded reading is None when no option acts."""
    formats = frozenset(f for f in map(file_format, paths) if f)
    given = reading.read_options() if reading is not None else {}
    kept = {k: v for k, v in given.items() if acts_on(k, formats)}
    for key in [k for k in given if k not in kept]:
        kinds = " and ".join(FORMAT_NAMES[k] for k in ACTS_ON[key])
        warnings.warn(f"{where}: data.{FLAGS[key][2:]} acts on {kinds} files only; none of its {len(paths)} "
                      "images is one, so it changes nothing (and the adapter card does not record it).",
                      stacklevel=2)
    return kept or None, formats


def compared(recorded: dict, given: dict, formats) -> list[str]:
    """The decode keywords two readings (``recorded``: a card's; ``given``: a dataset's) must agree on for files
    of ``formats`` (a dataset's ``file_formats``; None: any): those set in either that act on such a file."""
    return [k for k in FLAGS if (k in recorded or k in given) and acts_on(k, formats)]


CARD_KEYS = {"frame": "frame", "slice": "slice_spec", "window": "window"}  # card key -> decode keyword
FLAGS = {"frame": "--frame", "slice_spec": "--slice", "window": "--window"}  # decode keyword -> tpp predict's flag


def recorded_reading(data: dict, where: str) -> dict:
    """The decode keywords (frame, slice_spec, window) a card's ``data`` entry records as ``reading``, checked: a
    forged value is refused (``where`` names the card), never handed to a decoder. {} when none is recorded."""
    import math

    from tpp.data.images import ImageError, parse_slice
    from tpp.errors import TppError

    reading = (data if isinstance(data, dict) else {}).get("reading")
    if reading is None:
        return {}
    where = f"{where}: data.reading"
    if not isinstance(reading, dict) or set(reading) - set(CARD_KEYS):
        raise TppError(f"{where} must be an object with keys among {', '.join(CARD_KEYS)}.")
    out = {}
    frame, spec, window = (reading.get(k) for k in CARD_KEYS)
    if frame is not None:
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise TppError(f"{where}.frame must be a frame number from 0, got {frame!r}.")
        out["frame"] = frame
    if spec is not None:
        try:
            parse_slice(spec if isinstance(spec, str) else "")
        except ImageError:
            raise TppError(f"{where}.slice must be AXIS:INDEX or AXIS:middle, got {str(spec)[:40]!r}.") from None
        out["slice_spec"] = spec
    if window is not None:
        if not (isinstance(window, list) and len(window) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in window)
                and window[1] > 0):
            raise TppError(f"{where}.window must be [center, width] with a positive width, got {str(window)[:40]}.")
        out["window"] = (float(window[0]), float(window[1]))
    return out


def same_option(key: str, a, b) -> bool:
    """Whether two values of decode keyword ``key`` read a file alike (``2:MIDDLE`` is ``2:middle``, a window
    [40, 400] is (40.0, 400.0)); a value that does not parse differs from every other."""
    from tpp.data.images import ImageError, parse_slice

    if a is None or b is None:
        return a is None and b is None
    try:
        if key == "slice_spec":
            return parse_slice(str(a)) == parse_slice(str(b))
        if key == "window":
            return tuple(float(v) for v in a) == tuple(float(v) for v in b)
    except (ImageError, TypeError, ValueError):
        return False
    return a == b


def shown(key: str, value, prefix: str = "--") -> str:
    """One decode option as a flag (``--window 40,400``) or, with ``prefix="data."``, a config key. A window that
    is no pair of numbers (``"40,400"`` given to ``tpp.load().predict``) is shown as given: the decoder refuses it."""
    try:
        text = ",".join(f"{float(v):g}" for v in value) if key == "window" else str(value)
    except (TypeError, ValueError):
        text = str(value)[:40]
    flag = FLAGS[key][2:]
    return f"{prefix}{flag} {text}" if prefix == "--" else f"{prefix}{flag}={text}"


def described(options: dict, prefix: str = "data.") -> str:
    """Decode keywords as config keys (``data.slice=2:middle data.window=40,400``; one set to None: ``no
    data.window``), or what reads without any."""
    return " ".join(shown(k, v, prefix) if v is not None else f"no {prefix}{FLAGS[k][2:]}"
                    for k, v in options.items()) or "no data.frame, data.slice or data.window"
