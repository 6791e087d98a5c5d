"""Messy hospital folders: every bad case converts, is skipped and reported, or fails naming the file."""
import csv
import io

import numpy as np
import pytest
from conftest import make_backbone
from PIL import Image

from tpp.cli import main
from tpp.data.arrays import load_npz
from tpp.data.folders import load_folder, load_unlabeled_folder
from tpp.errors import TppError

FOLDER = dict(modality="US", image_size=28, val_fraction=0.2, test_fraction=0.2, seed=0)


def png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def messy_site(root):
    """A split-free class folder tree with every kind of bad and odd file, next to good images."""
    rng = np.random.default_rng(0)
    for c, shift in (("benign", 0), ("malignant", 60)):
        for i in range(12):
            size = 28 if i % 3 else 40  # mixed sizes
            png(root / c / f"{i}.png", (rng.integers(0, 150, (size, size)) + shift).astype(np.uint8))
    rgba = np.dstack([rng.integers(0, 255, (28, 28, 3)), np.full((28, 28), 7)]).astype(np.uint8)
    png(root / "benign" / "rgba.png", rgba, "RGBA")
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (28, 28)).astype(np.uint8)).save(good, format="PNG")
    (root / "benign" / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "malignant" / "empty.png").write_bytes(b"")
    (root / "malignant" / "notes.png").write_text("radiologist notes, not an image")
    return root


def test_sixteen_bit_and_rgba_are_converted_by_the_documented_rule(tmp_path):
    from tpp.data.pixels import training_mode

    ramp = (np.arange(28 * 28).reshape(28, 28) * 4).astype(np.uint16)  # 0..3132: a 12-bit scan
    with Image.open(png(tmp_path / "a.png", ramp)) as img:
        gray = np.asarray(training_mode(img))
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255  # min-max, not clipped at 255
    assert np.array_equal(gray, np.round(ramp / ramp.max() * 255).astype(np.uint8))
    with Image.open(png(tmp_path / "b.png", np.zeros((4, 4, 4), np.uint8), "RGBA")) as img:
        assert training_mode(img).mode == "RGB"


def test_bad_files_fail_by_default_naming_the_file(tmp_path):
    messy_site(tmp_path / "site")
    with pytest.raises(TppError, match=r"(truncated|empty|notes)\.png.*on_bad_file=skip"):
        load_folder("site", str(tmp_path), "site", **FOLDER)


def test_skip_leaves_bad_files_out_of_every_split_and_reports_them(tmp_path):
    messy_site(tmp_path / "site")
    data = load_folder("site", str(tmp_path), "site", **FOLDER, on_bad_file="skip")
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in data.skipped) == ["empty.png", "notes.png", "truncated.png"]
    assert "0 bytes" in dict(data.skipped)[str(tmp_path / "site" / "malignant" / "empty.png")]
    assert sum(len(s) for s in data.splits.values()) == 25  # 24 good + the converted RGBA image
    assert all(s.images.shape[1:] == (28, 28, 3) for s in data.splits.values())  # RGB because of the RGBA image
    assert not any(name.endswith(("empty.png", "notes.png", "truncated.png"))
                   for v in data.split_files.values() for name in v)
    unlabeled = load_unlabeled_folder("u", str(tmp_path), "site", modality="US", image_size=28, on_bad_file="skip")
    assert len(unlabeled.split("train")) == 25 and len(unlabeled.skipped) == 3


def test_empty_class_folder_and_class_missing_from_train_are_errors(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(6):
            png(tmp_path / "s1" / c / f"{i}.png", rng.integers(0, 255, (28, 28)).astype(np.uint8))
    (tmp_path / "s1" / "c_empty").mkdir()
    with pytest.raises(TppError, match="c_empty.*holds no images"):
        load_folder("s1", str(tmp_path), "s1", **FOLDER)
    for split, classes in (("train", "ab"), ("val", "abc"), ("test", "ab")):
        for c in classes:
            for i in range(3):
                png(tmp_path / "s2" / split / c / f"{i}.png", rng.integers(0, 255, (28, 28)).astype(np.uint8))
    with pytest.raises(TppError, match=r"\['c'\] have images in val/test but none in train"):
        load_folder("s2", str(tmp_path), "s2", **FOLDER)


def test_npz_count_mismatch_and_labels_outside_the_classes(tmp_path):
    arrays = {f"{s}_images": np.zeros((5, 28, 28), np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.zeros((5, 1), np.uint8) for s in ("train", "val", "test")})
    np.savez(tmp_path / "a.npz", **dict(arrays, val_labels=np.zeros((4, 1), np.uint8)))
    with pytest.raises(TppError, match="val_images has 5 images but val_labels has 4"):
        load_npz("a", str(tmp_path), "a.npz", modality="US")
    np.savez(tmp_path / "b.npz", **dict(arrays, class_names=np.array(["x", "y"]),
                                        test_labels=np.full((5, 1), 2, np.uint8)))
    with pytest.raises(TppError, match="outside 0..1"):
        load_npz("b", str(tmp_path), "b.npz", modality="US")


def test_finetune_with_skip_writes_skipped_csv(tmp_path, capsys):
    messy_site(tmp_path / "site")
    backbone = make_backbone(tmp_path / "bb", "vit_mae")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="3 unreadable file"):
        assert main(["run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml",
                     f"backbone.path={backbone}", f"data.root={tmp_path}", "data.source=folder", "data.file=site",
                     "data.name=site", "data.modality=US", "data.on_bad_file=skip", f"output_dir={out}",
                     "train.max_steps=2", "train.batch_size=8"]) == 0
    rows = list(csv.DictReader(open(out / "skipped.csv")))
    assert len(rows) == 3 and {r["dataset"] for r in rows} == {"site"} and all(r["reason"] for r in rows)
    assert '"event": "skipped_files", "count": 3' in (out / "log.jsonl").read_text()
    assert main(["run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml",
                 f"backbone.path={backbone}", f"data.root={tmp_path}", "data.source=folder", "data.file=site",
                 "data.name=site", "data.modality=US", f"output_dir={tmp_path / 'run2'}", "train.max_steps=2"]) == 2
    assert "on_bad_file=skip" in capsys.readouterr().err
