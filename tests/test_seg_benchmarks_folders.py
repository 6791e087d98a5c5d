"""The segmentation benchmarks take any segmentation source tpp loads: a ``seg_folder`` (images and masks as
files, decoded per batch) as well as a ``seg_npz`` (arrays in memory), with the same numbers for the same pixels."""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tpp.data import Dataset, Split
from tpp.data.files import ImageFiles
from tpp.data.segmentation import load_seg_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def tiny_seg_folder(root: Path, n: int = 12) -> Path:
    """``root/images`` + ``root/masks``: n 16-px gray images and 0/255 masks, a box growing with the index."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "images" / f"case{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[3:5 + i % 8, 4:10] = 255
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


def load_folder(root: Path) -> Dataset:
    return load_seg_folder("toy", None, str(tiny_seg_folder(root)), image_size=16, modality="US", val_fraction=0.2,
                           test_fraction=0.25, seed=0)


def held(dataset: Dataset) -> Dataset:
    """The same dataset with every split's images and masks decoded into arrays (what a seg_npz gives)."""
    splits = {k: Split(np.asarray(s.images), s.labels, np.asarray(s.masks)) for k, s in dataset.splits.items()}
    return Dataset(dataset.name, dataset.modality, dataset.class_names, splits)


def test_the_unet_trains_on_a_seg_folder_as_on_the_same_masks_in_memory(tmp_path):
    from unet import train_unet

    dataset = load_folder(tmp_path / "seg")
    assert isinstance(dataset.split("train").masks, ImageFiles)  # streamed: the case this test is about
    args = dict(fraction=1.0, seed=0, steps=2, batch_size=4, lr=1e-3, dice_weight=0.5, augment_scale=(0.8, 1.0))
    streamed, in_memory = train_unet(dataset, **args), train_unet(held(dataset), **args)
    assert streamed["test"]["n"] == len(dataset.split("test")) == 3 and 0 <= streamed["test"]["dice"] <= 1
    assert streamed["train_examples"] == len(dataset.split("train"))
    assert streamed["test"] == in_memory["test"]


def test_in_context_segmentation_cells_run_on_a_seg_folder(tiny_mae, tmp_path):
    """The suite's in-context cells (prototype on backbone tokens, the learned segmenter on pixels) take a
    folder task: context images and masks read per item, the test masks scored as streamed targets."""
    import suite_incontext
    from suite_grid import Task
    from test_suite_incontext import save_segmenter

    tiny_seg_folder(tmp_path / "data" / "segf")
    protocol = dict(suite_incontext.PROTOCOL, seg_size=16, max_context_masks=4)
    bench = suite_incontext.InContextBench(tmp_path / "cache", protocol, str(tiny_mae), str(tmp_path / "data"),
                                           {"segmentation": str(save_segmenter(tmp_path / "seg"))})
    task = Task("segf", "segmentation", "segf")
    dataset = bench.data(task)["dataset"]
    assert isinstance(dataset.split("test").masks, ImageFiles) and dataset.source.startswith("folder ")
    for approach in ("prototype", "incontext_learned"):
        cell = bench.run_cell(task, approach, 1.0, 0)
        assert cell["n_test"] == len(dataset.split("test")) and 0 <= cell["test_dice"] <= 1
        assert cell["context_examples"] == 4 < cell["subset_examples"] == len(dataset.split("train"))
        assert cell["bytes_per_site"] > 0 and bench.cached(task, approach, 1.0, 0) == cell
