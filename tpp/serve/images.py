"""The image readers of ``tpp predict`` and ``tpp serve``: the one reader of :mod:`tpp.data.images`, which
training, TPP and evaluation use too (so a scan is preprocessed identically everywhere); re-exported here."""
from tpp.data.images import (DEFAULT_LIMITS, DICOM_SUFFIXES, FILE_RESIZE, NIFTI_SUFFIXES, PIL_SUFFIXES,  # noqa: F401
                             ImageError, ImageTooLarge, PixelLimits, check_image, check_request, decode, fit,
                             is_dicom_file, is_image_file, parse_slice, parse_window, probe, read, sniff,
                             to_model_input)
