"""Label cells that read as numbers to Python but are words in a table of words: ``inf`` (an infarct, an infection,
the inferior wall), ``Infinity``. Refused as infinite only in a table of numeric labels (``0, 1, inf``: a number
that went wrong), a class like any other beside word labels; a missing value (``nan``, ``#N/A``) is refused in
both."""
import numpy as np
import pytest
from PIL import Image

from tpp.config import build_config
from tpp.data.build import preflight
from tpp.data.csvfiles import load_csv
from tpp.data.folders import load_folder
from tpp.errors import TppError

WORDS = ["normal", "inf", "effusion"]


def _images(root):
    (root / "im").mkdir(parents=True)
    for i in range(9):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(root / "im" / f"{i}.png")


def _table(root, labels: list[str], name: str = "labels.csv", header: str = "path,label"):
    _images(root)
    (root / name).write_text(header + "\n" + "".join(f"im/{i}.png,{labels[i % len(labels)]}\n" for i in range(9)))
    return root / name


def test_a_word_label_that_python_reads_as_infinity_is_a_class_in_a_csv(tmp_path):
    table = _table(tmp_path, WORDS)
    assert sorted(load_csv("x", None, str(table), modality="US", image_size=8).class_names) == sorted(WORDS)
    cfg = build_config({"data": {"source": "csv", "root": str(tmp_path), "file": "labels.csv", "modality": "US"}})
    assert preflight(cfg.data) == []


def test_a_word_label_that_python_reads_as_infinity_is_a_class_in_a_folders_metadata(tmp_path):
    _table(tmp_path, ["normal", "INF"], name="metadata.csv", header="file_name,label")
    assert sorted(load_folder("x", None, str(tmp_path), modality="US", image_size=8).class_names) == ["INF", "normal"]


@pytest.mark.parametrize("labels, problem", [(["0", "1", "inf"], "is infinite"),
                                             (["normal", "inf", "nan"], "marks a missing value")])
def test_an_infinite_number_or_a_missing_value_is_still_refused(tmp_path, labels, problem):
    table = _table(tmp_path, labels)
    with pytest.raises(TppError, match=rf"labels\.csv', line 4: label '{labels[2]}' {problem}"):
        load_csv("x", None, str(table), modality="US", image_size=8)
