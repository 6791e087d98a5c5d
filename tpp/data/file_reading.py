"""How files are decoded, as ``tpp predict --frame/--slice/--window`` read them: options shared by the sources
that read image files one by one (``folder``, ``csv``, ``unlabeled_folder``), set as ``data.frame``,
``data.slice`` and ``data.window``. A 3D NIfTI volume or a multi-frame DICOM file is no image until one of its
slices or frames is chosen; the same choice applies to every file of the data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tpp.errors import ConfigError


@dataclass
class FileReading:
    frame: Optional[int] = field(default=None, metadata={
        "help": "multi-frame DICOM files: the frame read from each (0-based), as tpp predict --frame"})
    slice: Optional[str] = field(default=None, metadata={
        "help": "3D NIfTI volumes: the slice read from each, AXIS:INDEX (e.g. 2:40) or AXIS:middle (each volume's "
                "central slice), as tpp predict --slice"})
    window: Optional[str] = field(default=None, metadata={
        "help": "DICOM / NIfTI: intensity window CENTER,WIDTH (e.g. 40,400) instead of each image's min-max, as "
                "tpp predict --window"})

    def __post_init__(self):
        from tpp.data.images import ImageError, parse_slice, parse_window

        if self.frame is not None and (isinstance(self.frame, bool) or not isinstance(self.frame, int)
                                       or self.frame < 0):
            raise ConfigError(f"data.frame must be a frame number from 0, got {self.frame!r}.")
        for key, parse in (("slice", parse_slice), ("window", parse_window)):
            value = getattr(self, key)
            if value is not None:
                try:
                    parse(str(value))
                except ImageError as exc:
                    raise ConfigError(f"data.{key}: {exc}") from None

    def read_options(self) -> dict:
        """Keyword arguments of :func:`tpp.data.images.read` (only those set)."""
        from tpp.data.images import parse_window

        given = {"frame": self.frame, "slice_spec": self.slice,
                 "window": parse_window(str(self.window)) if self.window is not None else None}
        return {k: v for k, v in given.items() if v is not None}
