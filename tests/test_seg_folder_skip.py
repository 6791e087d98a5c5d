"""``data.on_bad_file=skip`` on a ``seg_folder`` leaves out a pair whose *mask* file cannot be read or is past the
pixel budget, listed like a skipped image; the default (``error``) still fails naming the mask; other mask
problems (values, shape) fail either way; a mask broken after loading is named as a broken image is."""
import csv
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tpp.builders import record_skipped
from tpp.config import build_config
from tpp.data.build import load_data
from tpp.data.file_reading import FileReading
from tpp.data.files import DataChanged
from tpp.data.segmentation import load_seg_folder
from tpp.data.stream import MaskTargets
from tpp.errors import TppError

N = 10
LIMIT = 8 * 8  # data.max_image_pixels of these tests: every 8x8 image and mask fits, a 16x16 mask does not


def seg_folder(root: Path, n: int = N) -> Path:
    """``root/images/aI.png`` (8x8 gray) + ``root/masks/aI.png`` (8x8, 0/255, a square of its own size)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(root / "images" / f"a{i}.png")
        mask = np.zeros((8, 8), np.uint8)
        mask[: 1 + i % 7, :2] = 255
        Image.fromarray(mask).save(root / "masks" / f"a{i}.png")
    return root


def break_masks(root: Path) -> dict[str, str]:
    """Three bad mask files: empty, truncated, past LIMIT pixels (same shape as its image). Name -> reason."""
    masks = root / "masks"
    (masks / "a1.png").write_bytes(b"")
    data = (masks / "a2.png").read_bytes()
    (masks / "a2.png").write_bytes(data[: len(data) // 2])
    big = np.zeros((16, 16), np.uint8)
    big[:4] = 255
    Image.fromarray(big).save(masks / "a3.png")
    return {"a1.png": "cannot be read", "a2.png": "cannot be read",
            "a3.png": "256 pixels, more than the per-image limit of 64 (data.max_image_pixels)"}


def load(root: Path, **kw):
    return load_seg_folder("x", None, str(root), image_size=8, modality="US", val_fraction=0.2, test_fraction=0.2,
                           reading=FileReading(max_image_pixels=LIMIT), **kw)


def test_skip_leaves_out_the_pairs_of_bad_masks_and_lists_them_like_bad_images(tmp_path):
    root = seg_folder(tmp_path / "seg")
    bad = break_masks(root)
    (root / "images" / "a4.png").write_bytes(b"")  # a bad image: skipped as before, its (good) mask with it
    dataset = load(root, on_bad_file="skip")
    rows = {Path(f).name if "/masks/" in f else f"image {Path(f).name}": r for f, r in dataset.skipped}
    assert rows.keys() == {*bad, "image a4.png"}
    for name, reason in bad.items():
        skipped = next(r for f, r in dataset.skipped if f == str(root / "masks" / name))
        assert skipped.startswith(f"BadMaskFile: {reason}") and skipped.endswith(
            f"its image '{root / 'images' / name}' is left out with it")
    splits = dataset.splits.values()
    assert sum(len(s) for s in splits) == N - 4
    kept = sorted(Path(p).name for s in splits for p in s.images.paths)
    assert kept == [f"a{i}.png" for i in (0, 5, 6, 7, 8, 9)]
    for split in splits:  # each image still beside its own mask, and both decode
        assert [Path(p).name for p in split.images.paths] == [Path(p).name for p in split.masks.paths]
        assert np.asarray(split.masks).shape == (len(split), 8, 8)
    listed = sorted(f for files in dataset.split_files.values() for f in files)
    assert listed == [f"images/{name}" for name in kept]  # splits.json never names a left-out pair


def test_the_run_warns_of_left_out_masks_as_files_not_images(tmp_path):
    """The run's warning counts every row of skipped.csv as a file: here three masks, no unreadable image."""
    root = seg_folder(tmp_path / "seg")
    break_masks(root)
    run = SimpleNamespace(main=True, path=tmp_path / "run", log=lambda **_: None)
    run.path.mkdir()
    with pytest.warns(UserWarning, match=r"^3 unreadable file\(s\) were left out \(data\.on_bad_file=skip\); "
                      r"each is listed with its reason in .*skipped\.csv\.$") as caught:
        record_skipped([load(root, on_bad_file="skip")], run)
    assert not [w for w in caught if "unreadable image" in str(w.message)]
    with open(run.path / "skipped.csv") as rows:
        assert [row["file"] for row in csv.DictReader(rows)] == [str(root / "masks" / f"a{i}.png") for i in (1, 2, 3)]


def test_without_skip_a_bad_mask_fails_naming_it_and_the_option(tmp_path):
    root = seg_folder(tmp_path / "seg")
    (root / "masks" / "a2.png").write_bytes(b"")
    with pytest.raises(TppError, match=re.escape(f"mask '{root / 'masks' / 'a2.png'}' cannot be read (") +
                       r".*pass data\.on_bad_file=skip to leave it out with its image"):
        load(root)
    (root / "masks" / "a2.png").unlink()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "a2.png")
    with pytest.raises(TppError, match=r"mask '.*a2\.png': 256 pixels, more than the per-image limit of 64 "):
        load(root, on_bad_file="error")


@pytest.mark.parametrize("problem", ["value", "shape"])
def test_skip_does_not_hide_a_mask_that_reads_but_is_wrong(tmp_path, problem):
    """A mask with a value outside the classes, or of another shape than its image, is a data error (a wrong
    data.mask_classes, a wrong pairing), not a bad file: skipping it would hide it."""
    root = seg_folder(tmp_path / "seg")
    wrong = np.full((8, 8), 7, np.uint8) if problem == "value" else np.zeros((8, 4), np.uint8)
    Image.fromarray(wrong).save(root / "masks" / "a5.png")
    with pytest.raises(TppError, match=r"a5\.png'?:? (mask value 7|is 4x8 pixels)"):
        load(root, on_bad_file="skip")


def test_every_mask_bad_is_an_error_even_with_skip(tmp_path):
    root = seg_folder(tmp_path / "seg", n=3)
    for mask in (root / "masks").iterdir():
        mask.write_bytes(b"")
    with pytest.raises(TppError, match=r"none of the 3 masks could be read"):
        load(root, on_bad_file="skip")


@pytest.mark.parametrize("on_bad_file", ["error", "skip"])
def test_a_mask_broken_after_loading_is_named_as_a_broken_image_is(tmp_path, on_bad_file):
    """Read at load, broken (or removed) before a batch reads it: the run stops naming the file, as for an image
    (data.on_bad_file decides at load only: a split never shrinks mid-run)."""
    train = load(seg_folder(tmp_path / "seg"), on_bad_file=on_bad_file).split("train")
    name = train.masks.paths[0]
    data = Path(name).read_bytes()
    Path(name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataChanged, match=re.escape(f"mask '{name}' changed or disappeared since the data was "
                                                    "loaded (cannot be read (") + r".*\); restart the run\.$"):
        MaskTargets(train.masks)[0:2]
    Path(name).unlink()
    with pytest.raises(DataChanged, match=re.escape(f"mask '{name}' changed or disappeared since the data was")):
        train.masks[0]


def test_the_config_option_reaches_the_masks(tmp_path):
    root = seg_folder(tmp_path / "seg")
    break_masks(root)
    cfg = build_config({"data": {"source": "seg_folder", "root": str(root), "modality": "US",
                                 "max_image_pixels": LIMIT, "on_bad_file": "skip"}})
    dataset = load_data(cfg.data, 0, 8)
    assert sorted(Path(f).name for f, _ in dataset.skipped) == ["a1.png", "a2.png", "a3.png"]
    with pytest.raises(TppError, match=r"mask '.*a1\.png' cannot be read"):
        load_data(build_config({"data": {"source": "seg_folder", "root": str(root), "modality": "US"}}).data, 0, 8)
