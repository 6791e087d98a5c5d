"""DICOM (with and without a suffix) and NIfTI files as training data through the one reader of inference: the
same file gives bit-identical model input in training and in serving; a DICOM folder trains and pre-trains
from the CLI; TPP and fine-tuning of one folder agree on its split and leave the folder byte-for-byte as it was."""
import hashlib
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import FAST, FINETUNE_CONFIG, TPP_CONFIG, dicom_bytes, nifti_bytes, png_bytes, recipe_args, run_cli

from tpp.builders import input_rule
from tpp.data.files import ImageFiles
from tpp.data.filesets import walk_images
from tpp.data.folders import load_folder, load_unlabeled_folder
from tpp.data.stream import ModelInputs, concat_images
from tpp.errors import TppError
from tpp.serve import images as serving  # the predict / serve readers

SIZE = 16


def scan(i: int, cls: int, shape=(40, 30)) -> np.ndarray:
    """16-bit stored values with a class-dependent brightness (a learnable signal)."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 1500, shape) + 1500 * cls


def medical_folder(root, n: int = 8):
    """``root/<class>/``: per class PACS-style extensionless DICOM (windowed, rescaled), ``.dcm``, ``.nii``
    and ``.nii.gz`` 2D files, a gray PNG, and files that are not images (notes, a hidden file)."""
    for cls, name in enumerate(("benign", "malignant")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(n):
            k = 100 * cls + i
            kind = i % 4
            if kind == 0:
                (folder / f"IM{k:05d}").write_bytes(dicom_bytes(scan(k, cls), slope=2.0, intercept=-1024.0,
                                                                window=(1500, 4000)))
            elif kind == 1:
                (folder / f"{k}.dcm").write_bytes(dicom_bytes(scan(k, cls), photometric="MONOCHROME1"))
            elif kind == 2:
                (folder / f"{k}.nii{'.gz' if i % 8 == 2 else ''}").write_bytes(
                    nifti_bytes(scan(k, cls).astype(np.float32)[:, :, None], gz=i % 8 == 2))
            else:
                (folder / f"{k}.png").write_bytes(png_bytes((scan(k, cls) // 16).astype(np.uint8)))
        (folder / "notes.txt").write_text("not an image")
        (folder / ".DS_Store").write_bytes(b"\0" * 200)
    return root


def test_folders_find_extensionless_dicom_and_nifti_and_skip_other_files(tmp_path):
    medical_folder(tmp_path / "site", n=4)
    (tmp_path / "site" / "benign" / "README").write_text("x" * 200)  # no suffix, not DICOM
    files, skipped = walk_images(tmp_path / "site", "error")
    assert skipped == [] and files == sorted(files)
    assert [f for f in files if f.startswith("benign/")] == ["benign/1.dcm", "benign/2.nii.gz", "benign/3.png",
                                                            "benign/IM00000"]
    assert serving.sniff((tmp_path / "site" / "benign" / "IM00000").read_bytes(), "IM00000") == "dicom"


def test_folders_follow_linked_folders_read_any_dicom_and_match_predict(tmp_path):
    """A class folder's linked sub-folder is read (os.walk skipped it silently); a folder linked twice or a link
    to a folder above is refused (its images would count twice); a Siemens .IMA DICOM is an image in training as
    in tpp predict; predict leaves hidden folders (.ipynb_checkpoints) out as training does."""
    from tpp.serve.predict import collect

    medical_folder(tmp_path / "site", n=4)
    medical_folder(tmp_path / "batch2", n=4)
    (tmp_path / "site" / "benign" / "batch2").symlink_to(tmp_path / "batch2" / "benign")
    (tmp_path / "site" / "benign" / "scan.IMA").write_bytes(dicom_bytes(scan(7, 0)))
    (tmp_path / "site" / "benign" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "site" / "benign" / ".ipynb_checkpoints" / "3-checkpoint.png").write_bytes(
        png_bytes(np.zeros((8, 8), np.uint8)))
    files = walk_images(tmp_path / "site", "error")[0]
    assert [f for f in files if f.startswith("benign/")] == [
        "benign/1.dcm", "benign/2.nii.gz", "benign/3.png", "benign/IM00000", "benign/batch2/1.dcm",
        "benign/batch2/2.nii.gz", "benign/batch2/3.png", "benign/batch2/IM00000", "benign/scan.IMA"]
    predicted = collect([str(tmp_path / "site")], skipped=[])
    assert sorted(p.relative_to(tmp_path / "site").as_posix() for p in predicted) == files
    (tmp_path / "site" / "malignant" / "again").symlink_to(tmp_path / "batch2" / "benign")
    with pytest.raises(TppError, match=r"site/malignant/again' is '.*site/benign/batch2' again \(a symbolic link\)"):
        walk_images(tmp_path / "site", "error")
    (tmp_path / "site" / "malignant" / "again").unlink()
    (tmp_path / "site" / "malignant" / "loop").symlink_to(tmp_path / "site")
    with pytest.raises(TppError, match=r"site/malignant/loop' is '.*site' again"):
        load_folder("s", str(tmp_path), "site", modality="CT", image_size=SIZE)


@pytest.mark.parametrize("size", [SIZE, 40])
def test_a_scan_gives_bit_identical_model_input_in_training_and_serving(tmp_path, size):
    medical_folder(tmp_path / "site")
    dataset = load_folder("site", str(tmp_path), "site", modality="CT", image_size=size, val_fraction=0.25,
                          test_fraction=0.25)
    info = SimpleNamespace(channels=3, input_size=size, frame=0, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3],
                           resolution_note=lambda: "test")
    rule = json.loads(json.dumps(input_rule(dataset, info)))  # as read back from a card
    files = concat_images([dataset.split(s).images for s in ("train", "val", "test")])
    assert isinstance(files, ImageFiles) and rule["file_resize"]
    trained = ModelInputs.for_backbone(files, info)  # the data path of training, TPP and evaluation
    kinds = set()
    for i, path in enumerate(files.paths):
        served = serving.to_model_input(serving.read(path), rule)  # tpp predict / tpp serve
        assert served.shape == (1, 3, size, size)
        assert torch.equal(trained[np.array([i])], served), path
        kinds.add(serving.sniff(open(path, "rb").read(200), path.rsplit("/", 1)[-1]))
    assert {"dicom", "nifti", "pil"} <= kinds
    # the DICOM rules hold in training too: MONOCHROME1 inverted, the file's window applied
    dcm = files.paths.index(next(p for p in files.paths if p.endswith(".dcm")))
    assert np.array_equal(files[dcm], serving.fit(serving.read(files.paths[dcm]), size, "L"))


def test_3d_volumes_and_multiframe_dicom_fail_naming_the_file_or_are_skipped(tmp_path):
    medical_folder(tmp_path / "site", n=4)
    (tmp_path / "site" / "benign" / "vol.nii").write_bytes(nifti_bytes(np.zeros((8, 8, 5), np.float32)))
    with pytest.raises(TppError, match=r"vol\.nii' cannot be read .*3D NIfTI volume.*on_bad_file=skip"):
        load_unlabeled_folder("u", str(tmp_path), "site", modality="CT", image_size=SIZE)
    data = load_unlabeled_folder("u", str(tmp_path), "site", modality="CT", image_size=SIZE, on_bad_file="skip")
    assert [p.rsplit("/", 1)[-1] for p, _ in data.skipped] == ["vol.nii"] and len(data.split("train")) == 8


def tree_digest(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()} | {"dirs": sorted(str(p) for p in root.rglob("*"))}


def run(recipe, config, backbone, root, out, *extra) -> int:
    return run_cli(*recipe_args(recipe, config, backbone, root, out, "data.name=site", "data.modality=CT",
                                "train.max_steps=2", *FAST, *extra))


def test_a_dicom_folder_trains_pretrains_and_evaluates_without_a_write_into_it(tmp_path, tiny_mae, capsys):
    medical_folder(tmp_path / "data" / "site", n=12)
    medical_folder(tmp_path / "data" / "other_site", n=4)  # so that the folder above is another collection
    before = tree_digest(tmp_path / "data")
    labelled = ("data.source=folder", "data.file=site", "data.val_fraction=0.25", "data.test_fraction=0.25")
    assert run("tpp", TPP_CONFIG, tiny_mae, tmp_path / "data", tmp_path / "tpp", *labelled) == 0
    assert run("finetune", FINETUNE_CONFIG, tiny_mae, tmp_path / "data", tmp_path / "ft", *labelled,
               f"adapter.init_from={tmp_path / 'tpp' / 'adapter'}") == 0  # the same split: no leakage refusal
    pre = json.loads((tmp_path / "tpp" / "adapter" / "tpp_card.json").read_text())["data"]
    fine = json.loads((tmp_path / "ft" / "adapter" / "tpp_card.json").read_text())["data"]
    assert pre["split_sha256"]["train"] == fine["split_sha256"]["train"] and pre["origin"] == fine["origin"]
    assert pre["split_files_sha256"] == fine["split_files_sha256"]
    listed = json.loads((tmp_path / "ft" / "splits.json").read_text())["site"]
    assert listed == json.loads((tmp_path / "tpp" / "splits.json").read_text())["site"]
    assert sorted(listed["train"] + listed["val"] + listed["test"]) == walk_images(tmp_path / "data" / "site",
                                                                                  "error")[0]
    assert run("evaluate", FINETUNE_CONFIG, tiny_mae, tmp_path / "data", tmp_path / "ev", *labelled,
               f"adapter.path={tmp_path / 'ft' / 'adapter'}", "data.split=test") == 0
    # TPP on every image of the folder (unlabeled) saw the test images: fine-tuning from it is refused
    assert run("tpp", TPP_CONFIG, tiny_mae, tmp_path / "data", tmp_path / "tpp_all", "data.source=unlabeled_folder",
               "data.file=site") == 0
    capsys.readouterr()
    assert run("finetune", FINETUNE_CONFIG, tiny_mae, tmp_path / "data", tmp_path / "ft2", *labelled,
               f"adapter.init_from={tmp_path / 'tpp_all' / 'adapter'}") != 0
    assert "read from the same image folder" in capsys.readouterr().err
    # ... however the images are reached: here TPP read them through a link to the folder, from another root
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "linked").symlink_to(tmp_path / "data" / "site")
    assert run("tpp", TPP_CONFIG, tiny_mae, tmp_path / "elsewhere", tmp_path / "tpp_link",
               "data.source=unlabeled_folder", "data.file=linked") == 0
    capsys.readouterr()
    assert run("finetune", FINETUNE_CONFIG, tiny_mae, tmp_path / "data", tmp_path / "ft3", *labelled,
               f"adapter.init_from={tmp_path / 'tpp_link' / 'adapter'}") != 0
    assert "read from the same image folder" in capsys.readouterr().err
    # ... or a sub-folder of it (one class's images), or a folder above it: another origin, the same images
    for name, root, file in (("class", tmp_path / "data" / "site", "benign"), ("above", tmp_path, "data")):
        assert run("tpp", TPP_CONFIG, tiny_mae, root, tmp_path / f"tpp_{name}", "data.source=unlabeled_folder",
                   f"data.file={file}") == 0
        capsys.readouterr()
        assert run("finetune", FINETUNE_CONFIG, tiny_mae, tmp_path / "data", tmp_path / f"ft_{name}", *labelled,
                   f"adapter.init_from={tmp_path / f'tpp_{name}' / 'adapter'}") != 0
        assert "holds validation or test images of 'site'" in capsys.readouterr().err
    assert tree_digest(tmp_path / "data") == before  # nothing written into the data folder, not even a split


def test_the_origin_of_file_data_is_the_folder_holding_the_images_however_they_are_listed(tmp_path):
    """A CSV in the folder above the images and a folder source on the images' folder name one collection."""
    from tpp.data.labelled import files_origin, folder_origin, holding_origins

    (tmp_path / "site" / "img" / "b").mkdir(parents=True)
    for name in ("a.png", "b/c.png"):
        (tmp_path / "site" / "img" / name).write_bytes(b"x")
    origin = files_origin(tmp_path / "site" / "img", ["a.png", "b/c.png"])
    assert files_origin(tmp_path / "site", ["img/a.png", "img/b/c.png"]) == origin
    assert files_origin(tmp_path / "site", ["img/b/c.png"]) != origin  # a sub-folder's images: another set
    # ... which the leakage check still relates: every folder holding a held-out image, at any depth
    held = holding_origins(tmp_path / "site", ["img/b/c.png"])
    assert {origin, files_origin(tmp_path / "site", ["img/b/c.png"]), folder_origin("/")} <= held
    assert files_origin(tmp_path / "site", ["img/a.png"]) == origin and folder_origin(
        os.path.realpath(tmp_path / "site" / "other")) not in held


def test_a_fifo_or_a_link_into_proc_never_blocks_the_walk(tmp_path):
    """A fifo named like a PACS file would block the DICOM sniff's read for ever; a linked folder into /proc
    is no data. The fifo is not an image; the link is refused, naming it."""
    medical_folder(tmp_path / "site", n=4)
    os.mkfifo(tmp_path / "site" / "benign" / "IM99999")
    files = walk_images(tmp_path / "site", "error")[0]
    assert "benign/IM99999" not in files and "benign/IM00000" in files
    (tmp_path / "site" / "malignant" / "sys").symlink_to("/proc/self")
    with pytest.raises(TppError, match=r"malignant/sys' leads into '/proc/.*a system folder"):
        walk_images(tmp_path / "site", "error")
