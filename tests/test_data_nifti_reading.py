"""NIfTI files tpp cannot turn into gray intensities (complex or RGB voxels) are refused by name, and nibabel's
header-repair lines never reach stderr: what matters of them is folded into tpp's own error. Tiny files built in
code."""
import logging
import struct

import numpy as np
import pytest

from tpp.data.images import ImageError, check_image, decode

nibabel = pytest.importorskip("nibabel")


def nifti(array: np.ndarray) -> bytes:
    return nibabel.Nifti1Image(array, np.eye(4)).to_bytes()


def damaged(fmt: str, offset: int, value) -> bytes:
    """A 6x6 float32 NIfTI with one header field overwritten."""
    data = bytearray(nifti(np.arange(36, dtype=np.float32).reshape(6, 6)))
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.fixture
def nibabel_records():
    """What nibabel's logger hands its handlers (its own prints to stderr) while the test runs."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("nibabel.global")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_voxels_are_refused_by_name_not_read_without_their_imaginary_part(dtype):
    plane = np.arange(36).reshape(6, 6)
    data = nifti((plane + 1j * plane[::-1]).astype(dtype))
    for check in (lambda: decode(data, "phase.nii"), lambda: check_image(data, "phase.nii")):
        with pytest.raises(ImageError, match=rf"'phase\.nii': complex-valued voxels \({np.dtype(dtype).name}\) "
                                             r"are not supported"):
            check()


def test_rgb_voxels_are_refused_by_name_without_a_numpy_traceback():
    rgb = np.zeros((6, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    with pytest.raises(ImageError, match=r"'rgb\.nii': RGB / RGBA voxels \(R/G/B\) are not supported"):
        decode(nifti(rgb), "rgb.nii")


def test_integer_and_float_voxels_still_read():
    for dtype in (np.uint8, np.int16, np.float64):
        assert decode(nifti(np.arange(36, dtype=dtype).reshape(6, 6)), "ok.nii").shape == (6, 6)


def test_a_header_nibabel_repairs_reads_without_printing_its_repairs(nibabel_records):
    out = decode(damaged("<h", 252, 99), "q.nii")  # qform_code 99: nibabel sets it to 0, saying so three times
    assert out.shape == (6, 6) and nibabel_records == []


def test_a_broken_header_is_one_error_with_nibabels_notes_folded_in(nibabel_records):
    # dim[0] = 9 makes nibabel read the header byte-swapped: it repairs sizeof_hdr, then fails on the data code
    with pytest.raises(ImageError, match=r"'x\.nii': cannot be read as NIfTI \(HeaderDataError: data code 4096 not "
                                         r"recognized\)\. nibabel also noted: sizeof_hdr should be 348") as caught:
        decode(damaged("<h", 40, 9), "x.nii")
    assert "not attempting fix" not in str(caught.value)  # a note repeating the error adds nothing
    assert nibabel_records == []


def test_nibabel_messages_outside_tpps_reads_still_reach_its_handlers(nibabel_records):
    logging.getLogger("nibabel.global").warning("someone else's read")
    assert [r.getMessage() for r in nibabel_records] == ["someone else's read"]
