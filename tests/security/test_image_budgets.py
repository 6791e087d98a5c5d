"""Pixel budgets and silently wrong images: headers are checked before anything is decoded (service, ``tpp
predict``, training folders), gzip is inflated with a bound, and NaN / bad windows are errors.

Memory is measured in this process: the peak RSS (VmHWM, reset through /proc/self/clear_refs) while a
request runs, against the RSS just before it."""
import gc
import gzip
import io
import os
import struct
import threading
import time
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import dicom_bytes, nifti_bytes, png_bytes
from serving_fixtures import call, stub_app

from tpp.cli import _parser, main
from tpp.data.folders import load_folder, load_unlabeled_folder
from tpp.errors import TppError
from tpp.serve.images import (DEFAULT_LIMITS, ImageError, ImageTooLarge, PixelLimits, check_request, decode,
                              parse_window, probe)

MIB = 2**20


def zero_png(width: int, height: int, bit_depth: int = 8, level: int = 9) -> bytes:
    """A valid all-zero gray PNG written row by row (its pixels are never held in memory here)."""
    row = bytes(1 + width * bit_depth // 8)
    deflate = zlib.compressobj(level)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


def peak_growth_mib(fn):
    """(fn(), how far this process's peak RSS rose above its RSS before fn, in MiB)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc/self/status (Linux)")
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := current RSS
    except OSError:
        return _sampled_growth(fn)
    before = _status_kib("VmRSS")
    result = fn()
    return result, (_status_kib("VmHWM") - before) / 1024


def _sampled_growth(fn):
    """Fallback where the peak cannot be reset: sample VmRSS every 2 ms while fn runs."""
    before, peak, done = _status_kib("VmRSS"), [], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(_status_kib("VmRSS"))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, (max(peak + [_status_kib("VmRSS")]) - before) / 1024


@pytest.fixture(scope="module")
def png_8192():
    return zero_png(8192, 8192)  # ~64 KB of file, 64 MiB of pixels


def error_of(fn, *args, **kwargs) -> Exception:
    """The exception ``fn`` raises (the test fails when it raises none)."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
        return exc
    raise AssertionError(f"{fn.__name__} raised nothing")


# -- the service ------------------------------------------------------------------------------------

def test_twenty_8192_square_zero_pngs_get_413_without_the_memory(tmp_path, png_8192):
    app, worker = stub_app(tmp_path)
    assert call(app, "POST", "/v1/sites/s/predict", files=[("notes.txt", b"hello")])[0] == 400  # warm up
    files = [(f"zero{i}.png", png_8192) for i in range(20)]  # 1.3 MB of body, 1.25 Gi pixels
    (status, out, _), grew = peak_growth_mib(lambda: call(app, "POST", "/v1/sites/s/predict", files=files))
    assert status == 413, out
    assert "per-request limit of 134,217,728" in out["detail"] and "--max-request-pixels" in out["detail"]
    assert grew < 100, f"RSS grew by {grew:.0f} MiB"
    assert worker.batches == []


def test_a_request_is_refused_as_a_whole_before_any_image_is_decoded(tmp_path, monkeypatch):
    import tpp.serve.server

    decoded = []
    monkeypatch.setattr(tpp.serve.server, "decode", lambda *a, **k: decoded.append(a[1]) or np.zeros((2, 2), np.uint8))
    small = png_bytes(np.zeros((10, 10), np.uint8))
    app, _ = stub_app(tmp_path, limits=PixelLimits(max_pixels=100, max_request_pixels=150))
    status, out, _ = call(app, "POST", "/v1/sites/s/predict", files=[("a.png", small), ("b.png", small)])
    assert status == 413 and "200 pixels together" in out["detail"] and decoded == []
    big = png_bytes(np.zeros((10, 11), np.uint8))
    status, out, _ = call(app, "POST", "/v1/sites/s/predict", files=[("a.png", small), ("big.png", big)])
    assert status == 413 and "'big.png': 110 pixels" in out["detail"] and "limit of 100" in out["detail"]
    assert decoded == []
    assert call(app, "POST", "/v1/sites/s/predict", files=[("a.png", small)])[0] == 200 and decoded == ["a.png"]


def test_four_16_bit_8192_square_pngs_are_refused_from_their_headers(tmp_path, monkeypatch):
    from PIL import ImageFile

    sixteen = zero_png(8192, 8192, bit_depth=16, level=1)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("a pixel was decoded"))
    assert probe(sixteen, "a.png") == 8192 * 8192
    app, _ = stub_app(tmp_path)
    status, out, _ = call(app, "POST", "/v1/sites/s/predict", files=[(f"{i}.png", sixteen) for i in range(4)])
    assert status == 413 and "268,435,456 pixels together" in out["detail"]
    over = zero_png(8192, 8200, bit_depth=16, level=1)  # one image just above the per-image default
    with pytest.raises(ImageTooLarge, match=r"'scan16.png': 67,174,400 pixels.*per-image limit of 67,108,864"):
        decode(over, "scan16.png")


def gzip_bomb(inflated_mib: int, prefix: bytes = b"") -> bytes:
    """``prefix`` then ``inflated_mib`` MiB of zeros, gzipped as 1-MiB members (~1 KB each)."""
    member = gzip.compress(bytes(MIB), 9)
    return (gzip.compress(prefix) if prefix else b"") + member * inflated_mib


def test_a_gzip_bomb_named_nii_gz_is_refused_without_inflating_it(tmp_path):
    bomb = gzip_bomb(1024)  # 1 MiB that inflates to 1 GiB
    app, _ = stub_app(tmp_path)
    call(app, "POST", "/v1/sites/s/predict", files=[("notes.txt", b"hello")])  # warm up
    (status, out, _), grew = peak_growth_mib(
        lambda: call(app, "POST", "/v1/sites/s/predict", files=[("bomb.nii.gz", bomb)]))
    assert status in (400, 413) and "bomb.nii.gz" in out["detail"], out
    assert grew < 100, f"RSS grew by {grew:.0f} MiB"


@pytest.mark.parametrize("members", [False, True])
def test_a_gzipped_nifti_that_inflates_past_its_header_is_refused_in_bounded_memory(members):
    header = nifti_bytes(np.zeros((16, 16)))  # 16 x 16 float32: the header implies 1,376 bytes
    if members:
        data = gzip_bomb(256, prefix=header)
    else:  # one gzip member: the header, then 256 MiB of zeros
        deflate = zlib.compressobj(1, zlib.DEFLATED, 31)
        data = deflate.compress(header) + b"".join(deflate.compress(bytes(MIB)) for _ in range(256)) + deflate.flush()
    error, grew = peak_growth_mib(lambda: error_of(decode, data, "scan.nii.gz"))
    assert type(error) is ImageError and "inflates past the 1,376 bytes its NIfTI header implies" in str(error)
    assert grew < 100, f"RSS grew by {grew:.0f} MiB"
    assert decode(gzip.compress(header), "scan.nii.gz").shape == (16, 16)  # the same file, honestly gzipped


def test_a_nifti_header_claiming_a_huge_volume_is_refused_before_inflating(tmp_path):
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((32767, 32767, 64))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    data = gzip.compress(header.binaryblock + bytes(4) + bytes(MIB))  # far less data than claimed
    assert probe(data, "ct.nii.gz") == 32767 * 32767 * 64
    with pytest.raises(ImageTooLarge, match="'ct.nii.gz': 68,715,282,496 pixels"):
        decode(data, "ct.nii.gz")
    app, _ = stub_app(tmp_path)
    assert call(app, "POST", "/v1/sites/s/predict", files=[("ct.nii.gz", data)])[0] == 413


def test_nifti_reads_only_the_slice_it_needs_and_counts_every_voxel():
    volume = np.arange(6 * 7 * 5, dtype=np.float32).reshape(6, 7, 5)
    data = nifti_bytes(volume, gz=True)
    assert probe(data, "v.nii.gz") == 210
    assert np.array_equal(decode(data, "v.nii.gz", slice_spec="1:3"),
                          decode(nifti_bytes(volume[:, 3, :]), "s.nii"))
    with pytest.raises(ImageTooLarge):
        decode(data, "v.nii.gz", slice_spec="2:0", limits=PixelLimits(max_pixels=209))


def dicom_claiming(rows: int, columns: int, frames: int = 1) -> bytes:
    """A DICOM file whose header claims ``rows x columns x frames`` but holds only 4 x 4 pixels."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.zeros((4, 4), np.uint16))))
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_dicom_with_huge_rows_and_columns_is_refused_without_decoding_pixels(monkeypatch, tmp_path):
    import pydicom.pixels

    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: pytest.fail("pixels were decoded"))
    for frames in (1, 500):
        with pytest.raises(ImageTooLarge, match=r"'huge.dcm': 268,435,456 pixels"):
            decode(dicom_claiming(16384, 16384, frames), "huge.dcm", frame=0)
    app, _ = stub_app(tmp_path)
    status, out, _ = call(app, "POST", "/v1/sites/s/predict", query="frame=0",
                          files=[("huge.dcm", dicom_claiming(65535, 65535))])
    assert status == 413 and "huge.dcm" in out["detail"]


def test_a_multi_frame_dicom_decodes_only_the_chosen_frame(monkeypatch):
    import pydicom.pixels

    stored = np.stack([np.full((8, 8), v, np.uint16) for v in (0, 100, 200)])
    stored[:, 0, 0] = 300
    real, indices = pydicom.pixels.pixel_array, []
    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda ds, **k: indices.append(k.get("index")) or real(ds, **k))
    assert decode(dicom_bytes(stored, frames=3), "cine.dcm", frame=2, window=(150, 300))[1, 1] == 170
    assert indices == [2] and probe(dicom_bytes(stored, frames=3), "cine.dcm") == 64


def test_probe_reads_sizes_from_headers():
    assert probe(png_bytes(np.zeros((20, 30), np.uint8)), "a.png") == 600
    assert probe(png_bytes(np.zeros((20, 30, 3), np.uint8), "JPEG"), "a.jpg") == 600
    npy = io.BytesIO()
    np.save(npy, np.zeros((10, 12, 3), np.float32))
    assert probe(npy.getvalue(), "a.npy") == 120
    assert probe(dicom_bytes(np.zeros((9, 11), np.uint16)), "a.dcm") == 99
    assert check_request([(png_bytes(np.zeros((4, 4), np.uint8)), "a.png")] * 3) == 48
    with pytest.raises(ImageError, match="unsupported image format"):
        probe(b"hello", "notes.txt")
    with pytest.raises(TppError, match="positive integer"):
        PixelLimits(max_pixels=0)


# -- silently wrong results -------------------------------------------------------------------------

def test_nan_voxels_and_non_finite_or_negative_windows_are_errors(tmp_path):
    volume = np.ones((8, 8), np.float32)
    volume[2, 3] = np.nan
    with pytest.raises(ImageError, match="'nan.nii': the image holds NaN or infinite values"):
        decode(nifti_bytes(volume), "nan.nii")
    for text in ("nan,nan", "inf,inf", "40,nan", "nan,400", "40,-inf"):
        with pytest.raises(ImageError, match="must be finite|must be positive"):
            parse_window(text)
    with pytest.raises(ImageError, match="'a.nii': window .*finite"):
        decode(nifti_bytes(np.ones((8, 8))), "a.nii", window=(float("nan"), float("nan")))
    stored = np.tile(np.arange(0, 400, 25, dtype=np.uint16), (16, 1))
    negative = dicom_bytes(stored, window=(40, -400))
    with pytest.raises(ImageError, match="'neg.dcm': the file's window .*width -400.*positive"):
        decode(negative, "neg.dcm")
    assert decode(negative, "neg.dcm", window=(187.5, 375)).max() == 255  # an explicit window still reads it
    app, _ = stub_app(tmp_path)
    png = png_bytes(np.zeros((8, 8), np.uint8))
    for query in ("window=nan,nan", "window=inf,inf"):
        status, out, _ = call(app, "POST", "/v1/sites/s/predict", query=query, files=[("a.png", png)])
        assert status == 400 and "finite" in out["detail"]
    assert call(app, "POST", "/v1/sites/s/predict", files=[("nan.nii", nifti_bytes(volume))])[0] == 400
    assert call(app, "POST", "/v1/sites/s/predict", files=[("neg.dcm", negative)])[0] == 400


# -- tpp predict and training folders ---------------------------------------------------------------

def test_tpp_predict_names_a_too_large_image_in_one_paragraph(tmp_path, monkeypatch, capsys):
    import tpp.serve.bank

    class StubBank:
        max_resident = 4
        device, precision = torch.device("cpu"), "fp32"

        def __init__(self, *args, **kwargs):
            pass

        def site(self, name):
            return SimpleNamespace(name=name, version="v", task="classification", label_names=["a"], input_rule={},
                                   reading={})

        def predict(self, sites, x):
            raise AssertionError("the too-large image must stop the run before any prediction")

    monkeypatch.setattr(tpp.serve.bank, "AdapterBank", StubBank)
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "big.png").write_bytes(zero_png(300, 200))
    args = ["predict", "--backbone", "b", "--store", "s", "--site", "x", str(tmp_path / "scans"),
            "--out", str(tmp_path / "p.csv"), "--on-bad-file", "fail"]
    assert main([*args, "--max-image-pixels", "50000"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("device ")]  # the device line comes first
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert ("big.png': 60,000 pixels, more than the per-image limit of 50,000 (tpp predict / serve "
            "--max-image-pixels") in err
    assert main([*args, "--max-image-pixels", "0"]) == 2 and "at least 1" in capsys.readouterr().err


def test_cli_defaults_are_the_documented_limits():
    serve = _parser().parse_args(["serve", "--backbone", "b", "--store", "s"])
    predict = _parser().parse_args(["predict", "--backbone", "b", "--store", "s", "--out", "p.csv"])
    assert (serve.max_image_pixels, serve.max_request_pixels) == (DEFAULT_LIMITS.max_pixels,
                                                                  DEFAULT_LIMITS.max_request_pixels)
    assert predict.max_image_pixels == DEFAULT_LIMITS.max_pixels == 8192 * 8192 and serve.body_timeout == 30


def write_pngs(folder, count: int, value: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i}.png").write_bytes(png_bytes(np.full((28, 28), value + i, np.uint8)))


@pytest.mark.parametrize("width, height", [(13400, 13400), (8200, 8200)])  # above PIL's bomb limit; above ours
def test_a_huge_png_in_a_training_folder_is_a_clear_error_or_skipped(tmp_path, width, height):
    write_pngs(tmp_path / "site", 6)
    (tmp_path / "site" / "huge.png").write_bytes(zero_png(width, height, level=1))
    with pytest.raises(TppError, match=r"image '.*huge\.png' cannot be read \(ImageTooLarge: .*on_bad_file=skip"):
        load_unlabeled_folder("u", str(tmp_path), "site", modality="US", image_size=28)
    data = load_unlabeled_folder("u", str(tmp_path), "site", modality="US", image_size=28, on_bad_file="skip")
    assert len(data.split("train")) == 6 and [p.rsplit("/", 1)[-1] for p, _ in data.skipped] == ["huge.png"]
    assert "too large" in data.skipped[0][1] or "per-image limit of 67,108,864" in data.skipped[0][1]


def test_dangling_symlinks_in_an_image_folder_are_reported_like_bad_files(tmp_path):
    for c, value in (("benign", 0), ("malignant", 100)):
        write_pngs(tmp_path / "site" / c, 10, value)
    (tmp_path / "site" / "benign" / "ghost.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(TppError, match=r"ghost\.png' cannot be read \(dangling symbolic link.*on_bad_file=skip"):
        load_folder("site", str(tmp_path), "site", modality="US", image_size=28, val_fraction=0.2, test_fraction=0.2)
    data = load_folder("site", str(tmp_path), "site", modality="US", image_size=28, val_fraction=0.2,
                       test_fraction=0.2, on_bad_file="skip")
    assert [(p.rsplit("/", 1)[-1], "gone.png" in r) for p, r in data.skipped] == [("ghost.png", True)]
    assert sum(len(s) for s in data.splits.values()) == 20
    unlabeled = load_unlabeled_folder("u", str(tmp_path), "site", modality="US", image_size=28, on_bad_file="skip")
    assert len(unlabeled.skipped) == 1 and len(unlabeled.split("train")) == 20
