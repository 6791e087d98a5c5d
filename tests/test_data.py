import json

import numpy as np
import pytest
import torch
from conftest import make_medmnist

from tpp.data.build import channel_rule, to_model_tensor
from tpp.data.folders import load_folder, load_unlabeled_folder
from tpp.data.arrays import load_medmnist, load_npz
from tpp.data.subsets import label_fraction_index, stratified_split
from tpp.errors import TppError


def test_label_fraction_is_stratified_seeded_and_nested():
    labels = np.array([0] * 90 + [1] * 10)
    small = label_fraction_index(labels, 0.01, "d", seed=3)
    mid = label_fraction_index(labels, 0.1, "d", seed=3)
    big = label_fraction_index(labels, 0.5, "d", seed=3)
    assert set(np.unique(labels[small])) == {0, 1}  # at least one per class
    assert set(small) <= set(mid) <= set(big)
    assert np.array_equal(mid, label_fraction_index(labels, 0.1, "d", seed=3))
    assert not np.array_equal(mid, label_fraction_index(labels, 0.1, "d", seed=4))
    assert (labels[mid] == 1).sum() == 1 and (labels[mid] == 0).sum() == 9
    assert len(label_fraction_index(labels, 1.0, "d", 0)) == 100


def test_grouped_split_keeps_groups_together():
    labels = np.repeat([0, 1], 50)
    groups = np.arange(100) // 4
    index = stratified_split(labels, 0.2, 0.2, "g", 0, groups)
    owner = {}
    for split, idx in index.items():
        for g in np.unique(groups[idx]):
            assert owner.setdefault(g, split) == split
    assert sum(len(v) for v in index.values()) == 100


def test_medmnist_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TPP_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TPP_MEDMNIST_URL", "http://127.0.0.1:9")  # no data root: a download, refused here
    with pytest.raises(TppError, match=r"downloading breastmnist.npz from http://127.0.0.1:9/breastmnist.npz failed"):
        load_medmnist("breastmnist", None)
    assert not list((tmp_path / "home" / ".medmnist").iterdir())  # nothing half-written
    with pytest.raises(TppError, match="does not exist"):
        load_medmnist("breastmnist", str(tmp_path / "nowhere"))
    with pytest.raises(TppError, match="breastmnist.npz' not found"):
        load_medmnist("breastmnist", str(tmp_path))
    np.savez(tmp_path / "breastmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(TppError, match="no key 'train_labels'"):
        load_medmnist("breastmnist", str(tmp_path))


def test_labels_out_of_range_are_refused(tmp_path):
    root = make_medmnist(tmp_path, classes=3)  # breastmnist has 2 classes
    with pytest.raises(TppError, match="outside 0..1"):
        load_medmnist("breastmnist", str(root))


def test_medmnist_loads_from_root_or_medmnist_subfolder(tmp_path):
    make_medmnist(tmp_path / "medmnist")
    data = load_medmnist("breastmnist", str(tmp_path))
    assert data.modality == "US" and data.num_classes == 2 and len(data.split("train")) == 60
    described = data.describe()
    assert "path" not in json.dumps(described) and str(tmp_path) not in json.dumps(described)


def test_npz_source_splits_filters_and_needs_keys(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "pool.npz", images=rng.integers(0, 255, (60, 64, 64), dtype=np.uint8),
             labels=np.repeat([0, 1, 2], 20).astype(np.uint8), class_names=np.array(["A", "CXR", "Hand"]))
    args = dict(image_key="images", label_key="labels", class_names_key="class_names", modality="DX",
                val_fraction=0.1, test_fraction=0.2, seed=0)
    data = load_npz("pool", str(tmp_path), "pool.npz", classes=["CXR", "Hand"], **args)
    assert data.class_names == ["CXR", "Hand"]
    assert sum(len(s) for s in data.splits.values()) == 40
    assert set(np.concatenate([s.labels for s in data.splits.values()])) == {0, 1}
    with pytest.raises(TppError, match="no key 'pixels'"):
        load_npz("pool", str(tmp_path), "pool.npz", classes=None, **dict(args, image_key="pixels"))
    with pytest.raises(TppError, match=r"\['Knee'\] are not in"):
        load_npz("pool", str(tmp_path), "pool.npz", classes=["Knee"], **args)


def test_images_only_loading_gives_the_same_training_split(tmp_path):
    make_medmnist(tmp_path)
    full, images_only = (load_medmnist("breastmnist", str(tmp_path)),
                         load_medmnist("breastmnist", str(tmp_path), labels=False))
    assert all(s.labels is None for s in images_only.splits.values())
    assert images_only.split_sha256() == full.split_sha256()
    rng = np.random.default_rng(1)  # no official split: labels are read to stratify, and the split is unchanged
    np.savez(tmp_path / "pool.npz", images=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
             labels=np.repeat([0, 1], 20).astype(np.uint8))
    args = dict(class_names_key=None, classes=None, modality="DX", val_fraction=0.1, test_fraction=0.2, seed=3)
    seeded = [load_npz("pool", str(tmp_path), "pool.npz", labels=flag, **args)
              for flag in (True, False)]
    assert seeded[0].split_sha256() == seeded[1].split_sha256()



def test_npz_with_its_own_splits_is_read_without_labels(tmp_path, monkeypatch):
    import tpp.data.arrays as sources

    rng = np.random.default_rng(2)
    np.savez(tmp_path / "own.npz", **{f"{s}_images": rng.integers(0, 255, (6, 8, 8), dtype=np.uint8)
                                      for s in ("train", "val", "test")},
             **{f"{s}_labels": np.array([0, 1] * 3) for s in ("train", "val", "test")})
    keys, real = [], sources.npz_array
    monkeypatch.setattr(sources, "npz_array", lambda npz, key, path: keys.append(key) or real(npz, key, path))
    args = dict(class_names_key=None, classes=None, modality="DX", val_fraction=0.1, test_fraction=0.2, seed=0)
    data = load_npz("own", str(tmp_path), "own.npz", labels=False, **args)
    assert sorted(keys) == ["test_images", "train_images", "val_images"]
    assert all(s.labels is None for s in data.splits.values()) and len(data.split("train")) == 6
    keys.clear()
    with_labels = load_npz("own", str(tmp_path), "own.npz", **args)
    assert "train_labels" in keys and with_labels.split_sha256() == data.split_sha256()


def _png_tree(root, layout):
    from PIL import Image

    rng = np.random.default_rng(0)
    for rel in layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(path)


FOLDER = dict(modality="US", image_size=28, val_fraction=0.2, test_fraction=0.2, seed=0)


def test_folder_seeded_split_and_unreadable_image(tmp_path):
    files = [f"{c}/{i}.png" for c in ("benign", "malignant") for i in range(10)]
    _png_tree(tmp_path / "site", files)
    data = load_folder("site", str(tmp_path), "site", **FOLDER)
    assert data.class_names == ["benign", "malignant"]
    assert data.split("train").images.shape[1:] == (28, 28)
    assert sorted(f for s in data.split_files.values() for f in s) == sorted(files)
    assert not (tmp_path / "site" / "splits.json").exists()  # nothing is written into the user's folder
    (tmp_path / "site" / "benign" / "broken.png").write_text("not an image")
    with pytest.raises(TppError, match="broken.png"):
        load_folder("site2", str(tmp_path), "site", **FOLDER)


def test_folder_needs_modality_and_unlabeled_has_no_labels(tmp_path):
    _png_tree(tmp_path / "u", [f"a/{i}.png" for i in range(4)] + ["b.png"])
    with pytest.raises(TppError, match="data.modality"):
        load_unlabeled_folder("u", str(tmp_path), "u", modality=None, image_size=28)
    data = load_unlabeled_folder("u", str(tmp_path), "u", modality="US", image_size=28)
    assert len(data.split("train")) == 5 and data.split("train").labels is None


def test_channel_rules_and_resize():
    gray = np.full((2, 20, 20), 255, np.uint8)
    x = to_model_tensor(gray, 3, 28, [0.5] * 3, [0.25] * 3)
    assert x.shape == (2, 3, 28, 28) and torch.allclose(x, torch.full_like(x, 2.0))
    rgb = np.zeros((1, 28, 28, 3), np.uint8)
    rgb[..., 1] = 255
    y = to_model_tensor(rgb, 1, 28, [0.0], [1.0])
    assert y.shape == (1, 1, 28, 28) and torch.allclose(y, torch.full_like(y, 0.587))
    assert channel_rule(1, 3).startswith("replicate") and channel_rule(3, 1).startswith("RGB to luma")


def _medmnist_with(tmp_path, **replace):
    """A MedMNIST-layout breastmnist.npz under ``tmp_path`` with some arrays replaced."""
    make_medmnist(tmp_path)
    arrays = dict(np.load(tmp_path / "breastmnist.npz"))
    arrays.update(replace)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    return str(tmp_path)


@pytest.mark.parametrize("labels, message", [
    (np.full((60, 1), 0.7), r"train_labels \(train split\): 60 labels are not whole numbers \(first: 0\.7\)"),
    (np.where(np.arange(60) == 5, 1.7, 1.0).reshape(-1, 1), r"train_labels \(train split\): 1 labels are not whole"),
    (np.where(np.arange(60) == 3, np.nan, 0.0), r"train_labels \(train split\): 1 labels are not finite.*nan"),
    (np.full(60, np.inf), r"train_labels \(train split\): 60 labels are not finite.*inf"),
    (np.array(["benign"] * 60), r"train_labels \(train split\): labels must be integer class indices.*'benign'"),
])
def test_fractional_non_finite_and_string_labels_are_errors_naming_file_and_split(tmp_path, labels, message):
    root = _medmnist_with(tmp_path, train_labels=labels)
    with pytest.raises(TppError, match=message) as info:
        load_medmnist("breastmnist", root)
    assert str(tmp_path / "breastmnist.npz") in str(info.value)
    args = dict(class_names_key=None, classes=None, modality="US", val_fraction=0.1, test_fraction=0.2, seed=0)
    with pytest.raises(TppError, match=message):  # the generic npz source, with the file's own splits
        load_npz("b", root, "breastmnist.npz", **args)
    np.savez(tmp_path / "one.npz", images=np.zeros((60, 8, 8), np.uint8), labels=labels)
    with pytest.raises(TppError, match=message.replace(r"train_labels \(train split\)", "labels")):
        load_npz("one", root, "one.npz", **args)  # one array, split here by seed


def test_float_labels_holding_whole_numbers_are_accepted(tmp_path):
    root = _medmnist_with(tmp_path, train_labels=(np.arange(60) % 2).astype(np.float32))
    assert load_medmnist("breastmnist", root).split("train").labels.dtype == np.int64


def test_zero_byte_empty_and_npy_files_are_errors_naming_the_file(tmp_path):
    path = tmp_path / "breastmnist.npz"
    path.write_bytes(b"")
    with pytest.raises(TppError, match=r"breastmnist\.npz' is an empty file, not an \.npz archive"):
        load_medmnist("breastmnist", str(tmp_path))
    np.savez(path)
    with pytest.raises(TppError, match=r"breastmnist\.npz' is an empty \.npz archive"):
        load_medmnist("breastmnist", str(tmp_path))
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(TppError, match=r"breastmnist\.npz' is a single \.npy array"):
        load_medmnist("breastmnist", str(tmp_path))


def test_empty_splits_are_errors_naming_the_file(tmp_path):
    empty_images, empty_labels = np.zeros((0, 28, 28), np.uint8), np.zeros((0, 1), np.uint8)
    root = _medmnist_with(tmp_path, train_images=empty_images, train_labels=empty_labels)
    with pytest.raises(TppError, match=r"breastmnist\.npz' train_images holds no images"):
        load_medmnist("breastmnist", root)
    with pytest.raises(TppError, match=r"train_images holds no images"):
        load_medmnist("breastmnist", root, labels=False)
    root = _medmnist_with(tmp_path, val_images=empty_images, val_labels=empty_labels)
    data = load_medmnist("breastmnist", root)  # loads; using the empty split is the error
    with pytest.raises(TppError, match=r"breastmnist\.npz'\): the 'val' split is empty \(0 images\)"):
        data.split("val")
    np.savez(tmp_path / "none.npz", images=empty_images, labels=empty_labels)
    with pytest.raises(TppError, match=r"none\.npz' images holds no images"):
        load_npz("none", root, "none.npz", class_names_key=None, modality="US", val_fraction=0.1, test_fraction=0.2)
    np.savez(tmp_path / "few.npz", images=np.zeros((3, 8, 8), np.uint8), labels=np.array([0, 1, 1]))
    few = load_npz("few", root, "few.npz", class_names_key=None, modality="US", val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(TppError, match=r"few\.npz'\): the 'val' split is empty.*data\.val_fraction"):
        few.split("val")


def test_segmentation_npz_labels_are_checked_like_class_labels(tmp_path):
    from tpp.data.segmentation import load_seg_npz

    np.savez(tmp_path / "seg.npz", images=np.zeros((10, 16, 16), np.uint8), masks=np.zeros((10, 16, 16), np.uint8),
             labels=np.full(10, 0.5))
    with pytest.raises(TppError, match=r"seg\.npz' labels: 10 labels are not whole numbers"):
        load_seg_npz("seg", str(tmp_path), "seg.npz", class_names_key=None, modality="US", val_fraction=0.2,
                     test_fraction=0.2, seed=0)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_class_names_naming_one_class_twice_are_refused_and_bytes_are_decoded(tmp_path):
    """Two indices both named 'a' used to train and then lose one probability column."""
    images, labels = np.zeros((30, 8, 8), np.uint8), np.array([0, 1] * 15)
    for names in (["a", "a"], ["Benign", "benign"]):
        write_npz(tmp_path / "d.npz", images=images, labels=labels, class_names=np.array(names))
        with pytest.raises(TppError, match="name one class more than once"):
            load_npz("d", str(tmp_path), "d.npz", modality="US")
    write_npz(tmp_path / "d.npz", images=images, labels=labels, class_names=np.array([b"benign", b"malignant"]))
    assert load_npz("d", str(tmp_path), "d.npz", modality="US").class_names == ["benign", "malignant"]


def test_an_npz_member_claiming_more_than_half_the_memory_is_refused_from_its_header(tmp_path):
    """A 650-byte file whose header claims (1e7, 1000, 1000) used to end in a MemoryError traceback."""
    import zipfile

    header = np.lib.format
    with zipfile.ZipFile(tmp_path / "claim.npz", "w") as archive:
        for key, shape in (("images", (10**7, 1000, 1000)), ("labels", (10**7,))):
            with archive.open(f"{key}.npy", "w") as fh:
                header.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with pytest.raises(TppError, match=r"claim.npz' key 'images': its header says \(10000000, 1000, 1000\)"):
        load_npz("claim", str(tmp_path), "claim.npz", modality="US")


def test_a_truncated_npz_member_is_called_damaged_not_a_pickle_problem(tmp_path):
    import zipfile

    write_npz(tmp_path / "whole.npz", images=np.zeros((30, 8, 8), np.uint8), labels=np.zeros(30, np.int64))
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive, zipfile.ZipFile(tmp_path / "whole.npz") as src:
        for info in src.infolist():
            body = src.read(info.filename)
            archive.writestr(info.filename, body[:200] if info.filename == "images.npy" else body)
    with pytest.raises(TppError, match="images' cannot be read: the file is damaged"):
        load_npz("short", str(tmp_path), "short.npz", modality="US")


def test_an_npz_split_with_a_class_only_in_test_is_an_error(tmp_path):
    arrays = {f"{s}_images": np.zeros((6, 8, 8), np.uint8) for s in ("train", "val", "test")}
    arrays.update(train_labels=np.array([0, 1] * 3), val_labels=np.array([0, 1] * 3), test_labels=np.arange(6) % 3)
    write_npz(tmp_path / "d.npz", **arrays, class_names=np.array(["a", "b", "c"]))
    with pytest.raises(TppError, match=r"class\(es\) \['c'\] have images in val/test but none in train"):
        load_npz("d", str(tmp_path), "d.npz", modality="US")


def test_a_class_folder_named_in_bytes_that_are_no_utf8_loads_and_hashes(tmp_path):
    """A class folder b'benign\\xff' crashed the data load (its origin hash) and a context set's digest."""
    import os

    from tpp.incontext.context import CLASSIFICATION, ContextSet

    files = [f"{c}/{i}.png" for c in ("benign", "malignant") for i in range(10)]
    _png_tree(tmp_path / "site", files)
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path / "site"), b"benign\xff"))
    os.rename(tmp_path / "site" / "benign", odd)
    data = load_folder("site", str(tmp_path), "site", **FOLDER)
    assert data.class_names == ["benign\udcff", "malignant"] and data.split_sha256()
    ctx = ContextSet(CLASSIFICATION, [np.zeros((8, 8), np.uint8)] * 2, ["benign\udcff", "malignant"], names=["0", "1"])
    assert len(ctx.digest(0)) > 0


def test_an_explicit_unknown_modality_is_recorded_without_the_unset_warning():
    """A config that sets ``modality: unknown`` on purpose (MedNIST mixes CT, MR and X-ray) is not told it set none;
    an unset modality still warns, and a source that requires one refuses both."""
    import warnings

    from tpp.data.arrays import check_modality
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_modality("unknown", "mednist") == "unknown"
    with pytest.warns(UserWarning, match="has no modality"):
        assert check_modality(None, "mednist") == "unknown"
    for value in (None, "unknown"):
        with pytest.raises(TppError, match="set data.modality"):
            check_modality(value, "site", required=True)
