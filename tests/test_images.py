"""Inference inputs: PNG/JPEG, .npy, DICOM and NIfTI to the training intensity pipeline, and clear errors."""
import numpy as np
import pytest
import torch
from helpers import dicom_bytes, nifti_bytes, npy_bytes, png_bytes

from tpp.data.build import to_model_tensor
from tpp.serve.images import ImageError, decode, parse_window, read, to_model_input

RULE_GRAY = {"image_channels": 1, "channels": 3, "image_size": 28, "mean": [0.5] * 3, "std": [0.25] * 3}
RULE_RGB = dict(RULE_GRAY, image_channels=3)


def test_png_and_jpeg_decode_like_training_and_map_to_the_same_tensor():
    gray = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    assert np.array_equal(decode(png_bytes(gray), "a.png"), gray)
    assert decode(png_bytes(np.stack([gray] * 3, -1)), "noext").shape == (28, 28, 3)  # sniffed by magic
    assert decode(png_bytes(gray, "JPEG"), "a.jpg").shape == (28, 28)
    expected = to_model_tensor(gray[None], 3, 28, [0.5] * 3, [0.25] * 3)
    assert torch.equal(to_model_input(gray, RULE_GRAY), expected)
    rgb_to_gray = to_model_input(np.stack([gray] * 3, -1), RULE_GRAY)  # RGB into a gray-trained adapter: luma
    torch.testing.assert_close(rgb_to_gray, expected)
    assert to_model_input(np.zeros((50, 40), np.uint8), RULE_RGB).shape == (1, 3, 28, 28)  # resized


def test_npy_rules():
    assert decode(npy_bytes(np.full((8, 8), 0.5)), "x.npy").max() == 128
    assert decode(npy_bytes(np.full((8, 8, 1), 7, np.int32)), "x.npy").dtype == np.uint8
    with pytest.raises(ImageError, match=r"x.npy.*\[0, 1\]"):
        decode(npy_bytes(np.full((8, 8), 3.0)), "x.npy")
    with pytest.raises(ImageError, match="0..255"):
        decode(npy_bytes(np.full((8, 8), 300)), "x.npy")
    with pytest.raises(ImageError, match="neither"):
        decode(npy_bytes(np.zeros((8, 8, 5), np.uint8)), "x.npy")
    with pytest.raises(ImageError, match="cannot be read"):
        decode(npy_bytes(np.array([{"a": 1}], dtype=object)), "x.npy")  # never unpickled


def test_dicom_rescale_window_and_monochrome1():
    stored = np.tile(np.arange(0, 400, 25, dtype=np.uint16), (16, 1))  # 0..375
    # modality LUT: HU = 2 * stored - 100 -> -100..650; window 275 +- 375 covers it linearly
    plain = decode(dicom_bytes(stored, slope=2, intercept=-100, window=(275, 750)), "a.dcm")
    expected = np.round(np.clip((2.0 * stored - 100 - (275 - 375)) / 750, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(plain, expected)
    narrow = decode(dicom_bytes(stored, slope=2, intercept=-100), "a.dcm", window=(0, 200))  # -100..100
    assert narrow[0, 0] == 0 and narrow[0, -1] == 255 and 0 < narrow[0, 2] < 255
    inverted = decode(dicom_bytes(stored, photometric="MONOCHROME1"), "a.dcm")
    assert np.array_equal(inverted, 255 - decode(dicom_bytes(stored), "a.dcm"))


def test_dicom_multiframe_needs_a_frame():
    stored = np.stack([np.full((8, 8), v, np.uint16) for v in (0, 100, 200)])
    stored[:, 0, 0] = 300  # a bright corner so min-max is not degenerate
    data = dicom_bytes(stored, frames=3)
    with pytest.raises(ImageError, match=r"multi-frame.*3 frames.*--frame N, \?frame=N in the service"):
        decode(data, "cine.dcm")
    assert decode(data, "cine.dcm", frame=2, window=(150, 300))[1, 1] == 170  # (200 - 0) / 300
    assert decode(data, "cine.dcm", frame=1, window=(150, 300))[1, 1] == 85
    with pytest.raises(ImageError, match="out of range"):
        decode(data, "cine.dcm", frame=3)


def test_nifti_2d_and_3d_slices():
    volume = np.arange(6 * 7 * 5, dtype=np.float32).reshape(6, 7, 5)
    with pytest.raises(ImageError, match="3D NIfTI.*AXIS:INDEX"):
        decode(nifti_bytes(volume), "v.nii")
    sl = decode(nifti_bytes(volume, gz=True), "v.nii.gz", slice_spec="2:3")
    assert sl.shape == (6, 7) and sl.min() == 0 and sl.max() == 255
    assert decode(nifti_bytes(volume[:, :, 0]), "flat.nii").shape == (6, 7)
    with pytest.raises(ImageError, match="outside the volume"):
        decode(nifti_bytes(volume), "v.nii", slice_spec="2:5")
    with pytest.raises(ImageError, match="AXIS:INDEX"):
        decode(nifti_bytes(volume), "v.nii", slice_spec="z")


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="unsupported image format"):
        decode(b"hello world", "notes.txt")
    with pytest.raises(ImageError, match="broken.png.*cannot be read"):
        decode(b"\x89PNG\r\n\x1a\nbroken", "broken.png")
    with pytest.raises(ImageError, match="too small"):
        decode(png_bytes(np.zeros((1, 30), np.uint8)), "line.png")
    with pytest.raises(ImageError, match="does not exist"):
        read(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="CENTER,WIDTH"):
        parse_window("40")


def test_a_huge_file_is_refused_from_its_size_before_it_is_read(tmp_path, monkeypatch):
    """A 3 GB sparse 'PNG' (or a link to any huge file) is refused by its size: nothing of it is read."""
    from pathlib import Path

    from tpp.data.pixels import PixelLimits

    huge = tmp_path / "big.png"
    with open(huge, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(3 * 2**30)  # sparse: no disk used
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    with pytest.raises(ImageError, match=r"big\.png': 3,221,225,472 bytes, more than any image"):
        read(huge)
    mid = tmp_path / "mid.png"  # 17 MiB: within the default budget, above a 16-pixel one
    with open(mid, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(17 * 2**20)
    with pytest.raises(ImageError, match="mid.png.*more than any image"):
        read(mid, limits=PixelLimits(max_pixels=16))
    monkeypatch.undo()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ImageError) as err:
        read(broken)
    assert "BytesIO" not in str(err.value) and "broken.png" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_float_tiff_holding_nan_or_inf_is_refused_not_read_black(bad):
    import io

    from PIL import Image

    values = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    buffer = io.BytesIO()
    Image.fromarray(values, "F").save(buffer, format="TIFF")
    assert decode(buffer.getvalue(), "fine.tif").max() == 255
    values[3, 4] = bad
    buffer = io.BytesIO()
    Image.fromarray(values, "F").save(buffer, format="TIFF")
    with pytest.raises(ImageError, match="'scan.tif': the image holds NaN or infinite values"):
        decode(buffer.getvalue(), "scan.tif")


def test_a_16_bit_rgb_dicom_is_scaled_by_its_stored_bits_not_clipped():
    stored = np.zeros((8, 8, 3), np.uint16)
    stored[..., 0], stored[..., 1], stored[..., 2] = 4095, 2048, 100  # 12 bits stored
    rgb = decode(dicom_bytes(stored, bits=12), "colour.dcm")
    assert rgb.shape == (8, 8, 3) and rgb[0, 0].tolist() == [255, 128, 6]


def _with_orientation(pixels: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, exif=exif.tobytes())
    return buffer.getvalue()


def test_a_photo_stored_sideways_with_an_exif_orientation_is_read_as_every_viewer_shows_it():
    """Orientation 6 (stored rotated, shown turned 90 degrees clockwise): the stored top row becomes the
    right-hand column, as in every viewer; orientation 1 and untagged images are left as stored."""
    stored = np.zeros((20, 40), np.uint8)
    stored[0] = 255  # the stored top row
    shown = decode(_with_orientation(stored, 6), "phone.png")
    assert shown.shape == (40, 20) and (shown[:, -1] == 255).all() and shown[:, :-1].max() == 0
    assert np.array_equal(decode(_with_orientation(stored, 1), "upright.png"), stored)
    assert decode(_with_orientation(np.stack([stored] * 3, -1), 8, "JPEG"), "phone.jpg").shape == (40, 20, 3)


def test_an_8_bit_gray_dicom_without_a_window_reads_as_the_same_pixels_in_a_png():
    """Its values were stretched by a per-image min-max, so one image gave another decision as DICOM than as
    PNG; 8 stored bits without rescale or window are read as stored. 12 bits (or a window) still map as before."""
    gray = np.random.default_rng(1).integers(20, 200, (16, 16)).astype(np.uint8)
    assert np.array_equal(decode(dicom_bytes(gray, bits=8), "a.dcm"), decode(png_bytes(gray), "a.png"))
    assert np.array_equal(decode(dicom_bytes(gray, bits=8, photometric="MONOCHROME1"), "a.dcm"), 255 - gray)
    stretched = decode(dicom_bytes(gray, bits=12), "a.dcm")
    assert stretched.min() == 0 and stretched.max() == 255  # not 8-bit: min-max as documented
    rescaled = decode(dicom_bytes(gray, bits=8, slope=2), "a.dcm")
    assert rescaled.min() == 0 and rescaled.max() == 255  # a modality rescale: no longer plain intensities
