"""The image collection's order-independent hash (``collection_sha256``): a card recognises its data under any
name or split, so the leakage and evaluation checks no longer trust ``data.name``."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import evaluate, finetune
from PIL import Image

from tpp.builders import check_leakage, check_same_split
from tpp.data import Dataset, Split
from tpp.errors import TppError


def _images(n: int = 12, shape=(6, 6), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, *shape), dtype=np.uint8)


def _dataset(name: str, images: np.ndarray, order: np.ndarray, n_train: int = 8) -> Dataset:
    """``images`` split by ``order``: the first ``n_train`` train, the rest test (labels 0/1)."""
    labels = np.arange(len(images)) % 2
    pick = {"train": order[:n_train], "test": order[n_train:]}
    return Dataset(name, "US", ["a", "b"], {s: Split(images[i], labels[i]) for s, i in pick.items()},
                   split_id=f"seeded ({name})")


def test_the_collection_hash_ignores_order_split_and_name_but_not_an_image_or_its_shape():
    images = _images()
    rng = np.random.default_rng(1)
    a = _dataset("a", images, np.arange(12))
    b = _dataset("b", images, rng.permutation(12), n_train=5)
    assert a.collection_sha256() == b.collection_sha256()
    assert a.split_sha256()["train"] != b.split_sha256()["train"]
    changed = images.copy()
    changed[3, 0, 0] ^= 1
    assert _dataset("a", changed, np.arange(12)).collection_sha256() != a.collection_sha256()
    reshaped = images.reshape(12, 4, 9)  # the same bytes, another image shape
    assert _dataset("a", reshaped, np.arange(12)).collection_sha256() != a.collection_sha256()
    assert a.describe()["collection_sha256"] == a.collection_sha256()


def test_evaluate_refuses_an_adapter_trained_on_another_split_of_the_same_images_under_another_name():
    images = _images()
    trained = _dataset("scans", images, np.arange(12))
    card = {"data": trained.describe(used={"splits": ["train"]})}
    renamed = _dataset("site_b", images, np.random.default_rng(2).permutation(12))
    with pytest.raises(TppError, match=r"another split of 'site_b' \(the same images, named 'scans' there\).*"
                                       r"give data.name=scans"):
        check_same_split(card, renamed, "runs/a/adapter")
    check_same_split(card, _dataset("site_b", images, np.arange(12)), "runs/a/adapter")  # its own split: fine
    check_same_split(card, _dataset("site_b", _images(seed=3), np.arange(12)), "x")  # other images: fine


def test_evaluate_lets_other_images_under_the_same_name_be_evaluated():
    """A card with a collection hash: its images decide, not data.name (two sites' folders both called 'scans',
    or two configs that fall back to the source's name, 'folder', are other data, not another split)."""
    trained = _dataset("scans", _images(), np.arange(12))
    card = {"data": trained.describe(used={"splits": ["train"]})}
    check_same_split(card, _dataset("scans", _images(seed=3), np.random.default_rng(2).permutation(12)), "x")
    with pytest.raises(TppError, match="another split of 'scans'"):  # its own images split otherwise: refused
        check_same_split(card, _dataset("scans", _images(), np.random.default_rng(2).permutation(12)), "x")
    old = {"data": {k: v for k, v in card["data"].items() if k != "collection_sha256"}}  # a card before the hash
    with pytest.raises(TppError, match="another split of 'scans'"):  # its name is all there is to go by
        check_same_split(old, _dataset("scans", _images(seed=3), np.arange(12)), "x")


def _png_folder(root, seed: int, n: int = 16, first: int = 0):
    """``root/a`` and ``root/b``: ``n`` random 16 px gray PNGs numbered from ``first`` (``seed``: the pixels)."""
    rng = np.random.default_rng(seed)
    for i in range(first, first + n):
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "ab"[i % 2] / f"{i:03d}.png")


def test_an_adapter_evaluates_on_another_sites_folder_of_the_same_name(tmp_path, tiny_mae, capsys):
    """Both sites keep their images in a folder called 'scans' (data.name: 'scans' for both): evaluating site
    a's adapter on site b's images was refused as 'trained on another split of scans'."""
    for site, seed in (("a", 0), ("b", 1)):
        _png_folder(tmp_path / site / "scans", seed)
    data = ("data.source=folder", "data.modality=US", "data.val_fraction=0.25", "data.test_fraction=0.25")
    assert finetune(tiny_mae, tmp_path / "a" / "scans", tmp_path / "ft", *data, "train.max_steps=2") == 0
    assert evaluate(tiny_mae, tmp_path / "b" / "scans", tmp_path / "ft" / "adapter", tmp_path / "ev", *data) == 0
    capsys.readouterr()
    _png_folder(tmp_path / "a" / "scans", seed=2, n=6, first=16)  # site a's folder grew: other images, split otherwise
    assert evaluate(tiny_mae, tmp_path / "a" / "scans", tmp_path / "ft" / "adapter", tmp_path / "ev2", *data) == 2
    assert "another split of 'scans' (read from the same image folder" in capsys.readouterr().err


def test_init_from_refuses_a_parent_pre_trained_on_these_images_under_another_name_and_split():
    images = _images()
    parent = {"data": _dataset("scans", images, np.arange(12)).describe(labels=False, used={"splits": ["train"]})}
    renamed = _dataset("site_b", images, np.random.default_rng(2).permutation(12))
    assert renamed.origin is None  # no origin to compare: only the images tell
    with pytest.raises(TppError, match="'scans'.*the very same images as 'site_b'.*may have seen"):
        check_leakage(parent, renamed, "runs/tpp/adapter")
    check_leakage(parent, _dataset("site_b", images, np.arange(12)), "runs/tpp/adapter")  # its training split
    check_leakage(parent, _dataset("site_b", _images(seed=3), np.arange(12)), "runs/tpp/adapter")  # other images


def test_medmnist_plus_sizes_and_busi_files_map_to_their_image_collection(tmp_path):
    from tpp.config import build_config
    from tpp.data.arrays import known_origin
    from tpp.data.build import load_data

    assert [known_origin(n) for n in ("breastmnist", "BreastMNIST_224", "busi_64", "pneumoniamnist_128",
                                      "breastmnist_2240", "scans", None)] == \
        ["BUSI", "BUSI", "BUSI", "Kermany2018", None, None, None]
    np.savez(tmp_path / "breastmnist_224.npz", images=_images(20, (8, 8)), labels=np.arange(20) % 2)
    cfg = build_config({"data": {"source": "npz", "file": "breastmnist_224.npz", "root": str(tmp_path),
                                 "modality": "US"}})
    site = load_data(cfg.data, None, 28)
    assert site.name == "breastmnist_224" and site.origin == "BUSI"
    parent = {"data": {"name": "breastmnist", "split_sha256": {"train": "0123456789abcdef"},
                       "used": {"splits": ["train"]}}}  # TPP on the 28 px BreastMNIST: the same BUSI images
    with pytest.raises(TppError, match="made from the same BUSI images as 'breastmnist_224'"):
        check_leakage(parent, site, "runs/tpp/adapter")


def test_a_data_name_given_to_a_file_of_another_name_gives_it_no_known_origin(tmp_path):
    """One's own hospital.npz run with data.name=breastmnist (as LEGACY_NAME_HINT advises, to split as runs from
    before 2026-12-02 did) was given origin BUSI: refused against any BreastMNIST parent, its card said BUSI."""
    from tpp.config import build_config
    from tpp.data.build import load_data

    np.savez(tmp_path / "hospital.npz", images=_images(20, (8, 8)), labels=np.arange(20) % 2)
    np.savez(tmp_path / "breastmnist_224.npz", images=_images(20, (8, 8), seed=5), labels=np.arange(20) % 2)

    def load(file, name):
        return load_data(build_config({"data": {"source": "npz", "file": file, "root": str(tmp_path),
                                                "modality": "US", "name": name}}).data, None, 28)

    own = load("hospital.npz", "breastmnist")
    assert own.origin is None and load("breastmnist_224.npz", "site_a").origin == "BUSI"
    parent = {"data": own.describe(labels=False, used={"splits": ["train"]})}
    check_leakage(parent, load("breastmnist_224.npz", "breastmnist_224"), "runs/tpp/adapter")  # other images
    old = {"data": {k: v for k, v in parent["data"].items() if k != "collection_sha256"}}  # a card before it
    with pytest.raises(TppError, match="may have seen this run"):  # its name is all there is to go by
        check_leakage(old, load("breastmnist_224.npz", "breastmnist_224"), "runs/tpp/adapter")


def test_every_image_is_read_once_for_all_the_hashes_a_run_asks_for():
    """init_from's check (split hashes) and then the card (content hash with labels) decoded a folder twice."""
    images = _images()

    class Counted:  # files decoded on demand, as ImageFiles
        shape, reads = images.shape, 0

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            Counted.reads += 1
            return images[i]

    labels = np.arange(12) % 2
    lazy = Dataset("a", "US", ["a", "b"], {"train": Split(Counted(), labels)}, hash_labels=True)  # as load_data
    lazy.split_sha256()
    lazy.content_hash(labels=True)
    lazy.content_hash(labels=False)
    lazy.collection_sha256()
    assert Counted.reads == 12
    plain = Dataset("a", "US", ["a", "b"], {"train": Split(images, labels)})
    assert plain.content_hash(labels=True) == lazy.content_hash(labels=True) != lazy.content_hash(labels=False)
    fresh = Dataset("a", "US", ["a", "b"], {"train": Split(images, labels)})
    assert fresh.content_hash(labels=False) == lazy.content_hash(labels=False)
    assert Dataset("a", "US", [], {"train": Split(images, None)}).content_hash() == lazy.content_hash(labels=False)
