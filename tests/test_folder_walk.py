"""A sub-folder that cannot be listed (no read permission, or gone mid-walk) is named, never silently left out:
training fails naming it, or with data.on_bad_file=skip lists it in skipped.csv with its reason; tpp predict does
the same as its --on-bad-file does for files. Tests may run as root (chmod 000 stops no root), so the refusal is
made by a patched os.scandir / os.listdir; one test uses real permissions and skips where they mean nothing."""
import errno
import os
import re

import numpy as np
import pytest
from helpers import png_bytes

from tpp.data.filesets import walk_images
from tpp.data.folders import load_folder, load_unlabeled_folder
from tpp.errors import TppError
from tpp.serve.predict import Skipped, collect


def refuse(monkeypatch, folders, code: int = errno.EACCES) -> None:
    """``os.scandir`` / ``os.listdir`` of ``folders`` fail with ``code`` (EACCES: as a folder without read
    permission does; ENOENT: as one removed after its parent was listed)."""
    locked = {os.fspath(f) for f in folders}
    for name in ("scandir", "listdir"):
        def refused(path=".", *args, _real=getattr(os, name)):
            if not isinstance(path, int) and os.fspath(path) in locked:
                raise OSError(code, os.strerror(code), os.fspath(path))
            return _real(path, *args)
        monkeypatch.setattr(os, name, refused)


def site(root):
    """``root/site/<class>/``: two classes of three PNGs each, and ``benign/batch2/`` with two more."""
    for cls in ("benign", "malignant"):
        (root / "site" / cls).mkdir(parents=True)
        for i in range(3):
            (root / "site" / cls / f"{i}.png").write_bytes(png_bytes(np.full((8, 8), 40 * i, np.uint8)))
    (root / "site" / "benign" / "batch2").mkdir()
    for i in range(2):
        (root / "site" / "benign" / "batch2" / f"b{i}.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    return root / "site"


def test_training_names_a_sub_folder_it_cannot_list(tmp_path, monkeypatch):
    path = site(tmp_path)
    locked = path / "benign" / "batch2"
    refuse(monkeypatch, [locked])
    said = f"folder '{locked}' cannot be listed (Permission denied)"
    with pytest.raises(TppError, match=re.escape(said + "; its images cannot be read.") + r".*data\.on_bad_file=skip"):
        walk_images(path, "error")
    with pytest.raises(TppError, match=re.escape(said)):
        load_folder("s", str(tmp_path), "site", modality="CT", image_size=8)
    files, skipped = walk_images(path, "skip")
    assert files == ["benign/0.png", "benign/1.png", "benign/2.png", "malignant/0.png", "malignant/1.png",
                     "malignant/2.png"]
    assert [f for f, _ in skipped] == [str(locked)] and "cannot be listed (Permission denied)" in skipped[0][1]
    dataset = load_unlabeled_folder("s", str(tmp_path), "site", modality="CT", image_size=8, on_bad_file="skip")
    assert dataset.skipped == skipped and len(dataset.splits["train"].images) == 6


def test_a_folder_gone_mid_walk_is_named_and_the_top_folder_always(tmp_path, monkeypatch):
    """A folder removed between its parent's listing and its own is named as gone; the data folder itself that
    cannot be listed is an error even with skip (there would be nothing to train on, said as 'no images')."""
    path = site(tmp_path)
    refuse(monkeypatch, [path / "malignant"], errno.ENOENT)
    with pytest.raises(TppError, match=re.escape(f"folder '{path / 'malignant'}' cannot be listed (No such file")):
        walk_images(path, "error")
    refuse(monkeypatch, [path])
    with pytest.raises(TppError, match=re.escape(f"folder '{path}' cannot be listed (Permission denied)")):
        load_unlabeled_folder("s", str(tmp_path), "site", modality="CT", image_size=8, on_bad_file="skip")


def test_predict_treats_a_folder_it_cannot_list_as_its_on_bad_file_says(tmp_path, monkeypatch):
    path = site(tmp_path)
    locked = path / "benign" / "batch2"
    refuse(monkeypatch, [locked])
    with pytest.raises(TppError, match=re.escape(f"folder '{locked}' cannot be listed (Permission denied)")
                       + ".*--on-bad-file skip"):
        collect([str(path)])
    skipped = []
    found = collect([str(path)], skipped=skipped)
    assert sorted(p.relative_to(path).as_posix() for p in found) == walk_images(path, "skip")[0]
    assert skipped == [Skipped(str(locked), "", "folder cannot be listed (Permission denied): its images are "
                                                "left out")]
    only = tmp_path / "only"
    (only / "sub").mkdir(parents=True)
    refuse(monkeypatch, [only / "sub"])
    with pytest.raises(TppError, match=re.escape(f"folder '{only}' holds no image files (its sub-folder "
                                                 f"'{only / 'sub'}' cannot be listed")):
        collect([str(only)], skipped=[])
    refuse(monkeypatch, [path])
    with pytest.raises(TppError, match=re.escape(f"folder '{path}' cannot be listed (Permission denied)")):
        collect([str(path)], skipped=[])


def test_real_permissions_are_named_too(tmp_path):
    """The same with chmod 000: skipped where it means nothing (root lists any folder)."""
    path = site(tmp_path)
    locked = path / "benign" / "batch2"
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("chmod 000 does not stop this user (root) from listing a folder")
        with pytest.raises(TppError, match=re.escape(f"folder '{locked}' cannot be listed (Permission denied)")):
            walk_images(path, "error")
        assert [f for f, _ in walk_images(path, "skip")[1]] == [str(locked)]
        with pytest.raises(TppError, match=re.escape(f"folder '{locked}' cannot be listed (Permission denied)")):
            collect([str(path)])
    finally:
        locked.chmod(0o755)


def test_a_class_folder_it_cannot_list_is_named_with_skip_not_called_empty(tmp_path, monkeypatch):
    """With skip the walk leaves an unlistable class folder's images out; the class then has none, and the error
    says the folder cannot be listed (it said 'holds no images ... add its images')."""
    path = site(tmp_path)
    refuse(monkeypatch, [path / "malignant"])
    said = f"folder '{path / 'malignant'}' cannot be listed (Permission denied); class 'malignant' has no images"
    with pytest.raises(TppError, match=f"^{re.escape(said)}"):
        load_folder("s", str(tmp_path), "site", modality="CT", image_size=8, on_bad_file="skip")


@pytest.mark.parametrize("locked", ["images", "masks"])
def test_a_segmentation_folder_it_cannot_list_is_named(tmp_path, monkeypatch, locked):
    """seg_folder lists images/ and masks/ itself: one it cannot list is a TppError naming it (was an OSError)."""
    from tpp.data.segmentation import load_seg_folder

    for sub in ("images", "masks"):
        (tmp_path / "seg" / sub).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "seg" / sub / f"{i}.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    refuse(monkeypatch, [tmp_path / "seg" / locked])
    said = f"folder '{tmp_path / 'seg' / locked}' cannot be listed (Permission denied); make it readable."
    with pytest.raises(TppError, match=f"^{re.escape(said)}$"):  # one wording: no 'segmentation folder' of its own
        load_seg_folder("s", str(tmp_path), "seg", modality="US", image_size=8)
