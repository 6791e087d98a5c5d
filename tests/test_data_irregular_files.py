"""A fifo, a socket or a folder where an image, a mask or a label table is expected: refused by name as "not a
regular file (fifo)", never opened for reading (opening a fifo waits for a writer for ever, so a regression here
hangs the test instead of failing it). Tiny files built in code."""
import os
import socket

import numpy as np
import pytest
from PIL import Image

from tpp.data.csvfiles import load_csv
from tpp.data.file_reading import file_format
from tpp.data.folders import load_folder
from tpp.data.images import ImageError, is_image_file, read
from tpp.data.segmentation import load_seg_folder
from tpp.errors import TppError


def class_folder(root, n=5):
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 20 * i + 100 * (cls == "benign"), np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_a_fifo_named_like_an_image_in_a_folder_is_no_regular_file_not_an_empty_one(tmp_path):
    root = class_folder(tmp_path / "site")
    os.mkfifo(root / "benign" / "feed.png")
    with pytest.raises(TppError, match=r"feed\.png' cannot be read \(ImageError: not a regular file \(fifo\)\)"):
        load_folder("x", None, str(root), modality="US", image_size=8)
    data = load_folder("x", None, str(root), modality="US", image_size=8, on_bad_file="skip")
    assert dict(data.skipped) == {str(root / "benign" / "feed.png"): "ImageError: not a regular file (fifo)"}


def test_a_socket_named_like_an_image_is_named_as_one(tmp_path, monkeypatch):
    root = class_folder(tmp_path / "site")
    monkeypatch.chdir(root / "benign")  # a socket's path is limited to ~100 bytes: bound by a short relative one
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind("s.png")
        with pytest.raises(TppError, match=r"s\.png' cannot be read \(ImageError: not a regular file \(socket\)\)"):
            load_folder("x", None, str(root), modality="US", image_size=8)
        with pytest.raises(ImageError, match=r"s\.png' is not a regular file \(socket\)"):
            read(root / "benign" / "s.png")
    finally:
        server.close()


def test_a_csv_row_naming_a_fifo_or_a_folder_says_so_not_that_it_is_missing(tmp_path):
    root = class_folder(tmp_path / "site")
    os.mkfifo(root / "benign" / "feed.png")
    (root / "benign" / "dir.png").mkdir()
    rows = "".join(f"{c}/{i}.png,{c}\n" for c in ("benign", "malignant") for i in range(5))
    for name, kind in (("feed.png", "fifo"), ("dir.png", "folder")):
        (root / "labels.csv").write_text(f"path,label\n{rows}benign/{name},benign\n")
        with pytest.raises(TppError, match=rf"line 12: image 'benign/{name}' is not a regular file \({kind}\)"):
            load_csv("x", None, str(root / "labels.csv"), modality="US", image_size=8)
    data = load_csv("x", None, str(root / "labels.csv"), modality="US", image_size=8, on_bad_file="skip")
    assert dict(data.skipped) == {str(root / "benign" / "dir.png"): "is not a regular file (folder)"}


def test_a_label_table_or_metadata_csv_that_is_a_fifo_is_refused_by_name(tmp_path):
    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(TppError, match=r"label table '.*labels\.csv' is not a regular file \(fifo\)"):
        load_csv("x", None, str(tmp_path / "labels.csv"), modality="US", image_size=8)
    root = class_folder(tmp_path / "site")
    os.mkfifo(root / "metadata.csv")  # was passed over without a word: labels from the class folders instead
    with pytest.raises(TppError, match=r"metadata\.csv' is not a regular file \(fifo\)"):
        load_folder("x", None, str(root), modality="US", image_size=8)


def test_the_image_reader_and_the_format_sniff_never_open_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "scan.png")
    os.mkfifo(tmp_path / "IM00001")  # no suffix: the sniff would read its first bytes
    with pytest.raises(ImageError, match=r"scan\.png' is not a regular file \(fifo\)"):
        read(tmp_path / "scan.png")
    assert file_format(tmp_path / "IM00001") is None and not is_image_file(tmp_path / "IM00001")
    with pytest.raises(ImageError, match="does not exist"):
        read(tmp_path / "missing.png")


def test_a_fifo_in_a_seg_folders_masks_is_refused_by_name(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / sub / f"a{i}.png")
    (tmp_path / "masks" / "a0.png").unlink()
    os.mkfifo(tmp_path / "masks" / "a0.png")
    with pytest.raises(TppError, match=r"mask '.*a0\.png' is not a regular file \(fifo\)"):
        load_seg_folder("x", None, str(tmp_path), image_size=8, modality="US")


def test_predict_names_a_fifo_given_as_input_and_never_reads_one_where_its_skipped_list_goes(tmp_path):
    from tpp.serve.predict import check_derived_outputs, collect

    os.mkfifo(tmp_path / "a.png")
    with pytest.raises(TppError, match=r"input '.*a\.png' is not a regular file \(fifo\)"):
        collect([str(tmp_path / "a.png")])
    os.mkfifo(tmp_path / "p_skipped.csv")  # reading it to see whether an earlier run wrote it would block
    with pytest.raises(TppError, match=r"p_skipped\.csv' exists and is no skipped list"):
        check_derived_outputs(str(tmp_path / "p.csv"), [])


def test_an_npz_source_that_is_a_fifo_or_a_folder_says_so(tmp_path):
    from tpp.data.arrays import load_npz
    from tpp.data.segmentation import load_seg_npz

    os.mkfifo(tmp_path / "data.npz")
    (tmp_path / "dir.npz").mkdir()
    for load in (load_npz, load_seg_npz):
        for name, kind in (("data.npz", "fifo"), ("dir.npz", "folder")):
            with pytest.raises(TppError, match=rf"npz file '.*{name}' is not a regular file \({kind}\)"):
                load("x", None, str(tmp_path / name), modality="US")
