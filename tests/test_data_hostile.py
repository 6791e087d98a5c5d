"""Hostile and accidental bad input to the data readers: every case is a TppError naming the file and the problem
(never a library's traceback), and no small file makes a reader allocate without bound. Tiny files built in code."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tpp.config import build_config
from tpp.data.arrays import load_npz
from tpp.data.build import preflight
from tpp.data.csvfiles import load_csv
from tpp.data.folders import load_folder, load_unlabeled_folder
from tpp.data.segmentation import load_seg_folder, load_seg_npz
from tpp.data.stream import MaskTargets, ModelInputs, stream_loader
from tpp.errors import ConfigError, TppError


def png_claiming(path, width: int, height: int):
    """A PNG whose header claims ``width`` x ``height`` pixels while holding a few bytes (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def seg_folder(root, n=6):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(root / "images" / f"a{i}.png")
        mask = np.zeros((8, 8), np.uint8)
        mask[:3, :3] = 255
        Image.fromarray(mask).save(root / "masks" / f"a{i}.png")
    return root


@pytest.mark.parametrize("side", [20000, 9000])  # past PIL's own bomb guard; within it, past tpp's pixel budget
def test_a_mask_claiming_a_huge_size_is_refused_by_name_before_it_is_decoded(tmp_path, side):
    root = seg_folder(tmp_path / "seg")
    png_claiming(root / "masks" / "a0.png", side, side)  # the shape of its 8x8 image: passes the aspect check
    with pytest.raises(TppError, match=r"mask '.*a0\.png'.*pixels"):
        load_seg_folder("x", None, str(root), image_size=16, modality="US")


def labels_csv(root, rows: str, header: str = "path,label"):
    (root / "im").mkdir(parents=True)
    for i in range(9):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(root / "im" / f"{i}.png")
    (root / "labels.csv").write_text(header + "\n" + rows)
    return root / "labels.csv"


def test_a_csv_field_past_the_csv_modules_limit_is_an_error_naming_the_table_and_line(tmp_path):
    table = labels_csv(tmp_path, "im/0.png,a\n" + '"' + "x" * 200_000 + '",b\n')
    with pytest.raises(TppError, match=r"labels\.csv', line 3"):
        load_csv("x", None, str(table), modality="US", image_size=8)


@pytest.mark.parametrize("value, said", [("nan", "missing"), ("NaN", "missing"), ("<NA>", "missing"),
                                         ("#N/A", "missing"), ("inf", "not a class"), ("-inf", "not a class"),
                                         ("Infinity", "not a class")])
def test_a_missing_or_infinite_value_in_the_label_column_is_no_class(tmp_path, value, said):
    rows = "".join(f"im/{i}.png,{['0', '1', value][i % 3]}\n" for i in range(9))
    table = labels_csv(tmp_path, rows)
    with pytest.raises(TppError, match=rf"labels\.csv', line 4: label '{value}' .*{said}"):
        load_csv("x", None, str(table), modality="US", image_size=8)


def test_validate_finds_a_missing_label_before_a_run_folder_is_made(tmp_path):
    labels_csv(tmp_path, "".join(f"im/{i}.png,{['0', '1', 'NaN'][i % 3]}\n" for i in range(9)))
    cfg = build_config({"data": {"source": "csv", "root": str(tmp_path), "file": "labels.csv", "modality": "US"}})
    (problem,) = preflight(cfg.data)
    assert "line 4: label 'NaN' marks a missing value" in problem


def test_a_missing_value_in_a_folders_metadata_labels_is_no_class(tmp_path):
    labels_csv(tmp_path, "")
    (tmp_path / "labels.csv").unlink()
    (tmp_path / "metadata.csv").write_text("file_name,label\n" + "".join(f"im/{i}.png,{[0, 1, 'nan'][i % 3]}\n"
                                                                          for i in range(9)))
    with pytest.raises(TppError, match=r"metadata\.csv', line 4: label 'nan' .*missing"):
        load_folder("x", None, str(tmp_path), modality="US", image_size=8)


def test_npz_labels_naming_an_absurd_class_count_are_refused_without_listing_the_classes(tmp_path):
    labels = np.arange(9) % 3
    labels[4] = 10**6  # without class names the classes would be 0..10**6 (10**12 would exhaust memory)
    np.savez(tmp_path / "d.npz", images=np.zeros((9, 8, 8), np.uint8), labels=labels)
    with pytest.raises(TppError, match=r"d\.npz' labels: label 1000000 .*class_names"):
        load_npz("x", None, str(tmp_path / "d.npz"), modality="US")


def test_npz_images_without_pixels_are_refused_naming_the_file(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((9, 0, 8), np.uint8), labels=np.arange(9) % 3)
    with pytest.raises(TppError, match=r"d\.npz' images: .*\(9, 0, 8\)"):
        load_npz("x", None, str(tmp_path / "d.npz"), modality="US")


def test_seg_npz_group_ids_that_are_nan_are_an_error_naming_the_key(tmp_path):
    groups = np.arange(9, dtype=np.float64)
    groups[2] = np.nan
    np.savez(tmp_path / "s.npz", images=np.zeros((9, 8, 8), np.uint8), masks=np.zeros((9, 8, 8), np.uint8), pid=groups)
    with pytest.raises(TppError, match=r"s\.npz' pid: 1 group id"):
        load_seg_npz("x", None, str(tmp_path / "s.npz"), group_key="pid", modality="US")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_gone_since_loading_is_named_without_a_worker_traceback(tmp_path, workers):
    for i in range(4):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
    dataset = load_unlabeled_folder("x", None, str(tmp_path), modality="US", image_size=8)
    (tmp_path / "2.png").unlink()
    inputs = ModelInputs(dataset.splits["train"].images, 1, 8, [0.5], [0.5])
    with pytest.raises(TppError) as caught:
        list(stream_loader(inputs, batch_size=4, shuffle=False, num_workers=workers))
    gone = tmp_path / "2.png"
    assert str(caught.value).startswith(f"image '{gone}' changed or disappeared since the data was loaded")
    assert "Traceback" not in str(caught.value)


def test_a_mask_changed_since_loading_is_named_without_a_worker_traceback(tmp_path):
    root = seg_folder(tmp_path / "seg")
    dataset = load_seg_folder("x", None, str(root), image_size=16, modality="US")
    split = next(s for s in dataset.splits.values() if len(s))
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(split.masks.paths[0])  # another shape than when loaded
    inputs = ModelInputs(split.images, 1, 16, [0.5], [0.5])
    with pytest.raises(TppError) as caught:
        list(stream_loader(inputs, MaskTargets(split.masks), batch_size=8, shuffle=False, num_workers=1))
    assert str(caught.value).startswith(f"mask '{split.masks.paths[0]}' is 16x8 pixels but was 8x8")


@pytest.mark.parametrize("missing", ["nan", "NaN", "<NA>", "#N/A", "N/A", "NULL"])
def test_a_missing_value_in_the_patient_id_column_is_no_patient(tmp_path, missing):
    """Rows whose patient_id marks a missing value would all be one patient (one split): refused by line."""
    rows = "".join(f"im/{i}.png,{i % 2},{missing if i in (3, 6) else f'p{i}'}\n" for i in range(9))
    table = labels_csv(tmp_path, rows, header="path,label,patient_id")
    with pytest.raises(TppError, match=rf"labels\.csv', line 5: patient_id '{missing}' marks a missing value"):
        load_csv("x", None, str(table), modality="US", image_size=8)


def test_a_missing_group_id_in_a_folders_metadata_is_no_patient(tmp_path):
    labels_csv(tmp_path, "")
    (tmp_path / "labels.csv").unlink()
    (tmp_path / "metadata.csv").write_text("file_name,label,patient_id\n" + "".join(
        f"im/{i}.png,{i % 2},{'NULL' if i == 7 else f'p{i}'}\n" for i in range(9)))
    with pytest.raises(TppError, match=r"metadata\.csv', line 9: patient_id 'NULL' marks a missing value"):
        load_folder("x", None, str(tmp_path), modality="US", image_size=8)


def test_a_missing_group_id_in_a_seg_folders_metadata_is_no_patient(tmp_path):
    root = seg_folder(tmp_path / "seg")
    (root / "metadata.csv").write_text("file_name,pid\n" + "".join(
        f"a{i}.png,{'#N/A' if i == 2 else i}\n" for i in range(6)))
    with pytest.raises(TppError, match=r"metadata\.csv', line 4: pid '#N/A' marks a missing value"):
        load_seg_folder("x", None, str(root), image_size=16, modality="US", group_key="pid")


def test_validate_finds_a_missing_patient_id_before_a_run_folder_is_made(tmp_path):
    labels_csv(tmp_path, "".join(f"im/{i}.png,{i % 2},{'<NA>' if i == 4 else i}\n" for i in range(9)),
               header="path,label,patient_id")
    cfg = build_config({"data": {"source": "csv", "root": str(tmp_path), "file": "labels.csv", "modality": "US"}})
    (problem,) = preflight(cfg.data)
    assert "line 6: patient_id '<NA>' marks a missing value" in problem


def npz_with_names(path, names, **extra):
    labels = np.arange(9) % 3
    np.savez(path, images=np.zeros((9, 8, 8), np.uint8), labels=labels, class_names=names, **extra)
    return path


@pytest.mark.parametrize("names, shape", [(np.array([["a", "b", "c"]]), r"\(1, 3\)"),
                                          (np.array("a"), r"\(\)"),
                                          (np.array([0, 1, 2]), r"\(3,\)")])
def test_npz_class_names_that_are_no_list_of_text_are_refused_naming_key_and_shape(tmp_path, names, shape):
    """A 2D names array used to become one class name, and the error a misleading 'labels outside 0..0'."""
    path = npz_with_names(tmp_path / "d.npz", names)
    with pytest.raises(TppError, match=rf"d\.npz' class_names: .*{shape}.*one name per class"):
        load_npz("x", None, str(path), modality="US")


@pytest.mark.parametrize("names", [["a", "", "c"], ["a", "  ", "c"]])
def test_an_empty_npz_class_name_is_refused(tmp_path, names):
    path = npz_with_names(tmp_path / "d.npz", np.array(names))
    with pytest.raises(TppError, match=r"d\.npz' class_names: class 1 has an empty name"):
        load_npz("x", None, str(path), modality="US")


def test_seg_npz_class_names_are_checked_as_npz_class_names_are(tmp_path):
    path = npz_with_names(tmp_path / "s.npz", np.array([["benign", "malignant", "normal"]]),
                          masks=np.zeros((9, 8, 8), np.uint8))
    with pytest.raises(TppError, match=r"s\.npz' class_names: .*\(1, 3\)"):
        load_seg_npz("x", None, str(path), mask_classes="from_label", modality="US")
    npz_with_names(path, np.array(["benign", "Benign", "normal"]), masks=np.zeros((9, 8, 8), np.uint8))
    with pytest.raises(TppError, match=r"s\.npz' class_names: 'benign', 'Benign' name one class"):
        load_seg_npz("x", None, str(path), mask_classes="from_label", modality="US")


@pytest.mark.parametrize("classes", [["a", ""], ["a", " "]])
def test_an_empty_class_name_in_the_config_is_refused(classes):
    with pytest.raises(ConfigError, match=r"data\.classes .*empty"):
        build_config({"data": {"source": "folder", "root": "/tmp", "modality": "US", "classes": classes}})


def test_seg_folder_masks_obey_data_max_image_pixels(tmp_path):
    """Images 4x4 (16 px), masks 8x8 (64 px, same shape): the per-image budget of data.max_image_pixels applies to
    both, as it does to a folder's images (it was a fixed 2**26 for masks, with no option to raise it)."""
    from tpp.data.build import load_data

    root = seg_folder(tmp_path / "seg")
    for i in range(6):
        Image.fromarray(np.full((4, 4), 20 * i, np.uint8)).save(root / "images" / f"a{i}.png")

    def load(pixels):
        cfg = build_config({"data": {"source": "seg_folder", "root": str(root), "modality": "US",
                                     "max_image_pixels": pixels}})
        return load_data(cfg.data, 0, 16)

    with pytest.raises(TppError, match=r"mask '.*a0\.png': 64 pixels, more than the per-image limit of 32 "
                                       r"\(data\.max_image_pixels\)"):
        load(32)
    assert len(load(64).splits["train"]) > 0
    with pytest.raises(TppError, match=r"image '.*a0\.png' cannot be read .*more than the per-image limit of 8"):
        load(8)  # the images too


def test_a_masks_image_grown_past_the_budget_is_refused_before_its_exif_is_read(tmp_path):
    """Pairing a mask reads its image's header and, for a PNG, decodes it to find an EXIF orientation: an image
    replaced since load by one past ``data.max_image_pixels`` is refused by name from its header first."""
    from tpp.data.segmentation import _read_mask

    image, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask)  # within every budget here
    assert _read_mask(mask, 8, 2, image=image, max_pixels=64 * 64).shape == (8, 8)
    with pytest.raises(TppError, match=f"image '{image}': 4,096 pixels, more than the per-image limit of 100 "):
        _read_mask(mask, 8, 2, image=image, max_pixels=100)
