"""Hostile and accidental bad input to the data readers: every case is a TppError naming the file and the problem
(never a library's traceback), and no small file makes a reader allocate without bound. Tiny files built in code."""

import numpy as np
import pytest
from PIL import Image

from tpp.config import build_config
from tpp.data.build import preflight
from tpp.data.csvfiles import load_csv
from tpp.data.folders import load_folder
from tpp.errors import TppError


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


@pytest.mark.parametrize("missing", ["nan", "NaN", "<NA>", "#N/A"])
def test_a_missing_value_in_the_label_column_is_no_class(tmp_path, missing):
    rows = "".join(f"im/{i}.png,{['0', '1', missing][i % 3]}\n" for i in range(9))
    table = labels_csv(tmp_path, rows)
    with pytest.raises(TppError, match=rf"labels\.csv', line 4: label '{missing}' .*missing"):
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
