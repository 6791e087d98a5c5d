"""The csv source (path,label[,patient_id][,split]) and folders labelled by metadata.csv: labels as text or
integers, patients kept in one split, a given split used as is, the seeded split independent of row and
listing order, and every error naming the table (and line) and the fix."""
import os

import numpy as np
import pytest
from helpers import FAST, FINETUNE_CONFIG, png_bytes, recipe_args, run_cli

from tpp.data.csvfiles import load_csv
from tpp.data.folders import load_folder
from tpp.errors import TppError

OPTS = dict(modality="US", image_size=16, val_fraction=0.2, test_fraction=0.2, seed=0)


def images(folder, n: int, start: int = 0) -> list[str]:
    """``n`` small gray PNGs ``folder/img_<k>.png``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(start, start + n):
        (folder / f"img_{k:03d}.png").write_bytes(png_bytes(np.full((20, 24), 3 * k % 256, np.uint8)))
    return [f"img_{k:03d}.png" for k in range(start, start + n)]


def table(path, header: str, rows: list) -> str:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path.name


def site(tmp_path, n: int = 30, patients: bool = True, labels=("malignant", "benign")) -> list:
    """``tmp_path/site/images`` and rows (path, label, patient_id): 3 images per patient, one label each."""
    names = images(tmp_path / "site" / "images", n)
    return [(f"images/{name}", labels[(k // 3) % 2], f"P{k // 3:02d}") if patients else
            (f"images/{name}", labels[k % 2]) for k, name in enumerate(names)]


def test_csv_labels_patients_and_paths_relative_to_the_csv(tmp_path):
    rows = site(tmp_path)
    table(tmp_path / "site" / "labels.csv", "path,label,patient_id", rows)
    data = load_csv("s", str(tmp_path), "site/labels.csv", **OPTS)
    assert data.class_names == ["benign", "malignant"] and data.split_id.endswith("groups patient_id")
    patient = {p: pid for p, _, pid in rows}
    owners = {s: {patient[f] for f in files} for s, files in data.split_files.items()}
    assert not (owners["train"] & owners["val"] or owners["train"] & owners["test"] or owners["val"] & owners["test"])
    assert sum(len(s) for s in data.splits.values()) == 30 and data.split("train").images.shape[1:] == (16, 16)
    label = {p: lab for p, lab, _ in rows}
    for s, split in data.splits.items():
        assert [data.class_names[v] for v in split.labels] == [label[f] for f in data.split_files[s]]
    assert not (tmp_path / "site" / "splits.json").exists()


def test_the_seeded_split_does_not_depend_on_row_or_listing_order(tmp_path, monkeypatch):
    rows = site(tmp_path)
    table(tmp_path / "site" / "a.csv", "path,label,patient_id", rows)
    table(tmp_path / "site" / "b.csv", "path,label,patient_id", rows[::-1])
    first = load_csv("s", str(tmp_path), "site/a.csv", **OPTS)
    assert load_csv("s", str(tmp_path), "site/b.csv", **OPTS).split_files == first.split_files
    assert load_csv("s", str(tmp_path), "site/a.csv", **dict(OPTS, seed=1)).split_files != first.split_files
    for c in ("x", "y"):
        images(tmp_path / "f" / c, 10, start=0 if c == "x" else 10)
    walk = os.walk
    before = load_folder("f", str(tmp_path), "f", **OPTS).split_files
    monkeypatch.setattr("tpp.data.filesets.os.walk",
                        lambda p, **kw: ((d, sub, files[::-1]) for d, sub, files in walk(p, **kw)))
    assert load_folder("f", str(tmp_path), "f", **OPTS).split_files == before


def test_integer_labels_sort_as_numbers_and_a_split_column_is_used_as_given(tmp_path):
    names = images(tmp_path / "site", 24)
    splits = ["train"] * 12 + ["validation"] * 6 + ["test"] * 6
    rows = [(name, (2, 10)[k % 2], splits[k]) for k, name in enumerate(names)]
    table(tmp_path / "site" / "labels.csv", "path,label,split", rows)
    data = load_csv("s", str(tmp_path), "site/labels.csv", **OPTS)
    assert data.class_names == ["2", "10"] and data.split_id == "the data's own"
    assert data.split_files == {"train": names[:12], "val": names[12:18], "test": names[18:]}
    assert list(data.split("val").labels) == [0, 1] * 3
    data = load_csv("s", str(tmp_path), "site/labels.csv", **OPTS, classes=["10", "2"])
    assert data.class_names == ["10", "2"] and list(data.split("test").labels) == [1, 0] * 3


@pytest.mark.parametrize("header, rows, message", [
    ("", [], r"labels\.csv' is empty; it needs a header row"),
    ("path,label", [], r"labels\.csv' has a header but no rows"),
    ("file,label", [("img_000.png", "a")], r"labels\.csv' lacks the column\(s\) \['path'\] \(line 1 has: file, label"),
    ("path,label", [("img_000.png", "a"), ("gone.png", "b")], r"labels\.csv', line 3: image 'gone.png' does not "
                                                               r"exist .*data.on_bad_file=skip"),
    ("path,label", [("../img_000.png", "a")], r"line 2: image path '\.\./img_000\.png' leaves the table's folder"),
    ("path,label", [("/etc/passwd", "a")], r"line 2: image path '/etc/passwd' leaves the table's folder"),
    ("path,label", [("img_000.png", "a"), ("img_000.png", "b")], r"line 3: image 'img_000.png' is listed again "
                                                                 r"\(first on line 2\)"),
    ("path,label,split", [("img_000.png", "a", "tune")], r"line 2: split 'tune' is not train, val or test"),
    ("path,label", [("img_000.png", "a", "extra")], r"line 2: 3 cells, but the header has 2 columns"),
    ("path,label", [(f"img_{k:03d}.png", "a" if k < 10 else "b") for k in range(12)],
     r"class\(es\) \{'b': 2\} have fewer than 3 readable images"),
])
def test_csv_errors_name_the_table_the_line_and_the_fix(tmp_path, header, rows, message):
    images(tmp_path / "site", 12)
    (tmp_path / "site" / "labels.csv").write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows)
                                                  if header else "")
    with pytest.raises(TppError, match=message):
        load_csv("s", str(tmp_path), "site/labels.csv", **OPTS)


def test_missing_and_unreadable_images_can_be_skipped_and_are_named_with_their_line(tmp_path):
    rows = site(tmp_path, patients=False) + [("images/gone.png", "benign")]
    table(tmp_path / "site" / "labels.csv", "path,label", rows)
    (tmp_path / "site" / "images" / "gone.png").write_bytes(b"")  # first a zero-byte file, then none
    with pytest.raises(TppError, match=r"gone\.png' \(line 32 of '.*labels\.csv'\) cannot be read \(.*0 bytes"):
        load_csv("s", str(tmp_path), "site/labels.csv", **OPTS)
    (tmp_path / "site" / "images" / "gone.png").unlink()
    (tmp_path / "site" / "images" / "broken.png").write_text("not a png")
    table(tmp_path / "site" / "labels.csv", "path,label", rows + [("images/broken.png", "benign")])
    data = load_csv("s", str(tmp_path), "site/labels.csv", **OPTS, on_bad_file="skip")
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in data.skipped) == ["broken.png", "gone.png"]
    assert sum(len(s) for s in data.splits.values()) == 30


def test_a_folder_labelled_by_metadata_csv(tmp_path):
    names = images(tmp_path / "site", 20)
    table(tmp_path / "site" / "metadata.csv", "file_name,label,patient_id",
          [(n, "benign" if k % 2 else "malignant", f"P{k // 2}") for k, n in enumerate(names)])
    data = load_folder("s", str(tmp_path), "site", **OPTS, group_key="patient_id")
    assert data.class_names == ["benign", "malignant"] and sum(len(s) for s in data.splits.values()) == 20
    for s, split in data.splits.items():
        assert [int(f[4:7]) % 2 == 1 for f in data.split_files[s]] == [v == 0 for v in split.labels]
    images(tmp_path / "site", 1, start=20)  # an image without a row
    with pytest.raises(TppError, match=r"img_020\.png' has no row in metadata\.csv"):
        load_folder("s", str(tmp_path), "site", **OPTS)


def test_a_flat_folder_with_a_labels_csv_gets_a_hint_and_one_class_is_an_error(tmp_path):
    names = images(tmp_path / "site", 10)
    table(tmp_path / "site" / "labels.csv", "path,label", [(n, k % 2) for k, n in enumerate(names)])
    with pytest.raises(TppError, match=r"without a class sub-folder.*It holds 'labels\.csv': read labels from it with "
                                       r"data\.source=csv"):
        load_folder("s", str(tmp_path), "site", **OPTS)
    images(tmp_path / "one" / "benign", 6)
    with pytest.raises(TppError, match=r"has only one class \(benign\); classification needs two or more"):
        load_folder("s", str(tmp_path), "one", **OPTS)


def test_finetune_from_a_csv_from_the_cli(tmp_path, tiny_mae, capsys):
    rows = site(tmp_path)
    table(tmp_path / "site" / "labels.csv", "path,label,patient_id", rows)
    out = tmp_path / "run"
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, tmp_path, out, "data.source=csv",
                                "data.file=site/labels.csv", "data.name=site", "data.modality=US",
                                "data.val_fraction=0.2", "train.max_steps=2", *FAST)) == 0
    assert (out / "splits.json").is_file() and (out / "adapter" / "tpp_card.json").is_file()
    capsys.readouterr()
    assert run_cli("validate", FINETUNE_CONFIG, "data.source=csv", f"data.root={tmp_path}",
                   "data.modality=US", f"backbone.path={tiny_mae}") == 2
    assert "data.source=csv needs data.file" in capsys.readouterr().err
    table(tmp_path / "site" / "bad.csv", "path,diagnosis", rows[:3])
    assert run_cli("validate", FINETUNE_CONFIG, "data.source=csv", "data.file=site/bad.csv", f"data.root={tmp_path}",
                   "data.modality=US", f"backbone.path={tiny_mae}") == 2
    assert "bad.csv' lacks the column(s) ['label']" in capsys.readouterr().err


def test_patients_stay_in_one_split_in_metadata_csv_folders_and_given_splits(tmp_path):
    """metadata.csv with a patient_id column groups by it without data.group_key (as the CSV source does); a
    split given by the data that puts one patient in two splits is refused, naming the patient."""
    names = images(tmp_path / "site", 24)
    table(tmp_path / "site" / "metadata.csv", "file_name,label,patient_id",
          [(n, "benign" if (k // 2) % 2 else "malignant", f"P{k // 2}") for k, n in enumerate(names)])
    data = load_folder("s", str(tmp_path), "site", **OPTS)
    assert data.split_id.endswith("groups patient_id")
    owners = {s: {f"P{int(f[4:7]) // 2}" for f in files} for s, files in data.split_files.items()}
    assert not (owners["train"] & owners["val"] or owners["train"] & owners["test"] or owners["val"] & owners["test"])
    splits = ["train"] * 12 + ["val"] * 6 + ["test"] * 6
    rows = [(n, "benign" if (k // 2) % 2 else "malignant", f"P{k // 2}", splits[k]) for k, n in enumerate(names)]
    table(tmp_path / "site" / "labels.csv", "path,label,patient_id,split", rows)
    load_csv("s", str(tmp_path), "site/labels.csv", **OPTS)  # pairs of images never straddle 12 / 18
    rows[12] = rows[12][:2] + ("P0", rows[12][3])  # P0 in train and val
    table(tmp_path / "site" / "labels.csv", "path,label,patient_id,split", rows)
    with pytest.raises(TppError, match=r"gives patient_id 'P0' images in train and val \(1 patient_id\(s\) span"):
        load_csv("s", str(tmp_path), "site/labels.csv", **OPTS)


@pytest.mark.parametrize("labels, clash", [(("1", "01", "0"), "'01', '1'"), (("1", "1.0", "0"), "'1', '1.0'"),
                                           (("Benign", "benign", "malignant"), "'Benign', 'benign'")])
def test_one_class_written_two_ways_is_refused(tmp_path, labels, clash):
    """'1' and '01' (an Excel export), or 'Benign' and 'benign', would silently become two classes."""
    rows = [(path, labels[k % 3]) for k, (path, _) in enumerate(site(tmp_path, patients=False))]
    table(tmp_path / "site" / "labels.csv", "path,label", rows)
    with pytest.raises(TppError, match=rf"labels.csv'.*: the labels {clash} name one class written 2 ways"):
        load_csv("s", str(tmp_path), "site/labels.csv", **OPTS)


def test_one_file_under_two_paths_is_refused(tmp_path):
    """A symbolic link to an image already listed would put one image in two splits or two classes."""
    rows = site(tmp_path, patients=False)
    (tmp_path / "site" / "images" / "copy.png").symlink_to(tmp_path / "site" / rows[0][0])
    table(tmp_path / "site" / "labels.csv", "path,label", rows + [("images/copy.png", "malignant")])
    with pytest.raises(TppError, match=r"'images/copy.png' and 'images/img_000.png' are one file"):
        load_csv("s", str(tmp_path), "site/labels.csv", **OPTS)
