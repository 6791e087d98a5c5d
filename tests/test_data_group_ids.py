"""One patient written two ways in a label table: ``1`` and ``1.0`` (pandas writes an integer column that has a
missing value as floats) are one group; ``P1`` and ``p1`` are kept as two but warned about, since the split is by
patient and one patient in two splits inflates the test score. Tiny files built in code."""
import warnings

import numpy as np
import pytest
from PIL import Image

from tpp.data.csvfiles import load_csv
from tpp.data.folders import load_folder
from tpp.data.segmentation import load_seg_folder
from tpp.data.tables import group_id
from tpp.errors import TppError


@pytest.mark.parametrize("given, kept", [("1.0", "1"), ("12.00", "12"), ("12.", "12"), ("1e3", "1000"),
                                         ("-0.0", "0"), ("+4.0", "4"), ("1.5", "1.5"), ("007", "007"),
                                         ("1", "1"), ("P1.0", "P1.0"), ("1e999999", "1e999999"), ("inf", "inf")])
def test_a_float_spelled_integral_id_is_its_integer(given, kept):
    assert group_id(given) == kept


def images(root, n=12):
    (root / "im").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 6 * i, np.uint8)).save(root / "im" / f"{i}.png")


def csv_table(root, ids: list[str], splits: list[str] | None = None) -> str:
    """One image a patient id, classes a/b alternating, and one split a row if given."""
    images(root, len(ids))
    rows = "".join(f"im/{i}.png,{'ab'[i % 2]},{g}{f',{splits[i]}' if splits else ''}\n" for i, g in enumerate(ids))
    (root / "labels.csv").write_text(f"path,label,patient_id{',split' if splits else ''}\n" + rows)
    return str(root / "labels.csv")


SPLITS = ["train"] * 6 + ["val"] * 2 + ["test"] * 4


def test_patient_1_and_1_0_are_one_patient_so_one_split(tmp_path):
    ids = [f"{i}" for i in range(11)] + ["0.0"]  # patient 0 in train (row 0) and, written 0.0, in test (row 11)
    with pytest.raises(TppError, match=r"patient_id '0' images in test and train"):
        load_csv("x", None, csv_table(tmp_path, ids, SPLITS), modality="US", image_size=8)


def test_a_seeded_split_keeps_a_float_spelled_patient_with_its_integer_spelling(tmp_path):
    ids = [str(i // 2) if i % 2 else f"{i // 2}.0" for i in range(40)]  # every patient written both ways
    data = load_csv("x", None, csv_table(tmp_path, ids), modality="US", image_size=8)
    where = {f: s for s in ("train", "val", "test") for f in data.split_files[s]}
    for i in range(0, 40, 2):  # images 2k and 2k+1 are one patient
        assert where[f"im/{i}.png"] == where[f"im/{i + 1}.png"]


def test_ids_differing_only_in_case_stay_apart_with_one_warning_naming_both(tmp_path):
    ids = [f"P{i}" for i in range(11)] + ["p0"]
    with pytest.warns(UserWarning, match=r"labels\.csv': patient_id 'P0' and 'p0' differ only in case") as seen:
        load_csv("x", None, csv_table(tmp_path, ids, SPLITS), modality="US", image_size=8)  # no split error
    assert len([w for w in seen if "differ only in case" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ids written one way: nothing to say
        load_csv("x", None, csv_table(tmp_path / "b", [f"P{i}" for i in range(12)], SPLITS), modality="US",
                 image_size=8)


def test_a_folders_metadata_csv_reads_group_ids_alike(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    rows = [f"{c}/{i}.png,{i}.0" if c == "a" and i == 0 else f"{c}/{i}.png,{i}" for c in "ab" for i in range(6)]
    (tmp_path / "metadata.csv").write_text("file_name,patient_id\n" + "\n".join(rows) + "\n")
    data = load_folder("x", None, str(tmp_path), modality="US", image_size=8, group_key="patient_id")
    where = {f: s for s in ("train", "val", "test") for f in data.split_files[s]}
    for i in range(6):  # a/i.png and b/i.png are patient i (a/0.png written 0.0)
        assert where[f"a/{i}.png"] == where[f"b/{i}.png"]
    (tmp_path / "metadata.csv").write_text("file_name,patient_id\n" + "\n".join(rows).replace("b/1.png,1", "b/1.png,01")
                                           + "\n")
    with pytest.warns(UserWarning, match=r"patient_id '01' and '1' differ only in case or leading zeros"):
        load_folder("x", None, str(tmp_path), modality="US", image_size=8, group_key="patient_id")


def test_a_seg_folders_metadata_warns_of_ids_differing_in_case(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i if sub == "images" else 255 * (i % 2), np.uint8)).save(
                tmp_path / sub / f"a{i}.png")
    (tmp_path / "metadata.csv").write_text("file_name,patient\n" + "".join(
        f"a{i}.png,{'Q' if i == 5 else 'q'}{i % 5}\n" for i in range(6)))
    with pytest.warns(UserWarning, match=r"patient 'Q0' and 'q0' differ only in case"):
        load_seg_folder("x", None, str(tmp_path), image_size=8, modality="US", group_key="patient")


def test_an_id_past_the_number_libraries_limits_is_kept_as_written(tmp_path):
    """An exponent beyond decimal's range (``0e99999999999999999999``) and a digit string past Python's 4,300-digit
    int conversion limit were tracebacks (InvalidOperation, ValueError); they are ids like any other."""
    huge = "0e" + "9" * 20
    assert group_id(huge) == huge
    digits = "1" + "0" * 5000
    path = csv_table(tmp_path, [huge, digits, "0" + digits, *map(str, range(9))])
    with pytest.warns(UserWarning, match="differ only in case or leading zeros"):
        dataset = load_csv("t", None, path, modality="US", image_size=8)
    assert len(dataset.split("train")) + len(dataset.split("val")) + len(dataset.split("test")) == 12
