"""Segmentation masks of a folder stream like its images: each mask is checked once at load and decoded again per
batch (training loader, metrics, hashes), never held for the whole split; numbers equal those of held masks."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tpp.data import Dataset, Split
from tpp.data import segmentation as seg
from tpp.data.files import ImageFiles
from tpp.data.stream import MaskTargets, ModelInputs, stream_loader
from tpp.errors import TppError
from tpp.seg_metrics import quick_dice, segmentation_metrics
from tpp.tasks import get_task

N = 10


def seg_folder(root, n: int = N):
    """``root/images`` + ``root/masks``: n gray 20x20 images, 0/255 masks each with a square of its own size."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(np.full((20, 20), 10 * i, np.uint8)).save(root / "images" / f"case{i}.png")
        mask = np.zeros((20, 20), np.uint8)
        mask[2:4 + i, 3:5 + i] = 255
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return dict(name="toy", root=None, file=str(root), modality="US", val_fraction=0.2, test_fraction=0.2, seed=0,
                image_size=16)


@pytest.fixture
def decodes(monkeypatch):
    """The mask files decoded, in order (each call of ``_read_mask``)."""
    seen = []
    real = seg._read_mask
    monkeypatch.setattr(seg, "_read_mask", lambda path, *a, **k: seen.append(path.name) or real(path, *a, **k))
    return seen


def test_a_folders_masks_are_checked_once_at_load_then_decoded_per_batch(tmp_path, decodes):
    ds = seg.load_seg_folder(**seg_folder(tmp_path / "seg"))
    assert sorted(decodes) == sorted(f"case{i}.png" for i in range(N))  # one checking pass, nothing kept
    assert all(isinstance(s.masks, ImageFiles) for s in ds.splits.values())  # no split holds a mask array
    train = ds.split("train")
    held = np.stack([seg._read_mask(tmp_path / "seg" / "masks" / p.split("/")[-1], 16, 2)
                     for p in train.masks.paths])  # what the split held before: uint8 (N, 16, 16)
    decodes.clear()
    targets = get_task("segmentation").targets(train)
    assert targets.shape == (len(train), 16, 16) and decodes == []  # nothing decoded to make the targets
    inputs = ModelInputs(train.images, 1, 16, [0.5], [0.5])
    loader = stream_loader(inputs, targets, batch_size=3, shuffle=True)
    _, first = next(iter(loader))
    assert len(decodes) == 3  # the batch's masks only
    before = stream_loader(inputs, torch.from_numpy(held).long(), batch_size=3, shuffle=True)  # held int64 masks
    assert first.dtype == torch.long and torch.equal(first, next(iter(before))[1])
    assert all(torch.equal(a[1], b[1]) for a, b in zip(loader, before, strict=True))


def test_a_mask_broken_after_loading_is_named_when_its_batch_reads_it(tmp_path):
    folder = seg_folder(tmp_path / "seg")
    train = seg.load_seg_folder(**folder).split("train")
    name = train.masks.paths[0]
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(name)  # value 7 in a binary mask
    with pytest.raises(TppError, match=re.escape(f"mask '{name}': mask value 7 is not a class index 0..1")):
        MaskTargets(train.masks)[0:2]


def test_a_mask_replaced_by_one_of_another_shape_after_loading_is_refused_by_name(tmp_path):
    """The load-time check compared the mask's shape with its image's; a batch's decode compares it with the shape
    it had then, so a 20x60 file swapped in later is not silently resized into the batch."""
    train = seg.load_seg_folder(**seg_folder(tmp_path / "seg")).split("train")
    name = train.masks.paths[0]
    MaskTargets(train.masks)[0:1]  # as loaded: fine
    swapped = np.zeros((60, 20), np.uint8)
    swapped[:30] = 255
    Image.fromarray(swapped).save(name)
    with pytest.raises(TppError, match=re.escape(f"mask '{name}' is 20x60 pixels but was 20x20 when the data was "
                                                 "loaded: it changed since")):
        MaskTargets(train.masks)[0:1]


def test_streamed_masks_hash_and_score_as_held_masks(tmp_path):
    ds = seg.load_seg_folder(**seg_folder(tmp_path / "seg"))
    held = Dataset(ds.name, ds.modality, ds.class_names, split_id=ds.split_id,
                   splits={k: Split(s.images, s.labels, np.asarray(s.masks)) for k, s in ds.splits.items()})
    assert not isinstance(held.split("train").masks, ImageFiles)
    assert ds.content_hash() == held.content_hash()  # cards and evaluate's check see the same data
    assert ds.content_hash(labels=False) == held.content_hash(labels=False)
    masks = np.asarray(ds.split("train").masks)
    pred = torch.from_numpy(np.roll(masks, 1, axis=-1)).to(torch.uint8)
    pred[1] = 0  # an empty prediction
    whole = segmentation_metrics(pred, torch.from_numpy(masks).long(), ds.class_names, chunk=len(pred))
    assert segmentation_metrics(pred, MaskTargets(ds.split("train").masks), ds.class_names, chunk=3) == whole
    assert whole["foreground_fraction"]["truth"] == float((torch.from_numpy(masks) > 0).float().mean())
    assert whole["foreground_fraction"]["predicted"] == float((pred > 0).float().mean())
    assert whole["empty_predictions"] == 1 and 0 < whole["dice"] < 1
    assert quick_dice(pred, MaskTargets(ds.split("train").masks), 2, chunk=3) == \
        quick_dice(pred, torch.from_numpy(masks), 2, chunk=len(pred)) == whole["dice"]


def test_mask_targets_of_an_array_index_as_the_int64_tensor():
    masks = np.random.default_rng(0).integers(0, 3, (7, 4, 5), dtype=np.uint8)
    targets, tensor = MaskTargets(masks), torch.from_numpy(masks).long()
    assert targets.shape == tensor.shape and len(targets) == 7
    assert torch.equal(targets[2], tensor[2]) and torch.equal(targets[np.int64(-1)], tensor[-1])
    assert torch.equal(targets[1:6:2], tensor[1:6:2]) and torch.equal(targets[[4, 0]], tensor[[4, 0]])
    assert targets[5:5].shape == (0, 4, 5)


def test_an_empty_split_scores_as_undefined_not_an_error():
    """Scoring in chunks keeps what scoring whole gave for no images: undefined (null) metrics, and a NaN quick
    Dice, not a concatenation error."""
    import math

    from tpp.seg_metrics import quick_dice
    pred, truth = torch.zeros(0, 8, 8, dtype=torch.uint8), torch.zeros(0, 8, 8).long()
    metrics = segmentation_metrics(pred, truth, ["background", "lesion"])
    assert metrics["n"] == 0 and metrics["dice"] is None and metrics["per_class"]["lesion"]["images"] == 0
    assert math.isnan(quick_dice(pred, truth, 2))


def test_per_image_dice_and_metrics_score_a_bounded_number_of_pixels_at_once(monkeypatch):
    """predictions.csv's per-image Dice one-hot encoded its whole 1,024-image chunk at once (0.9 GB at 128 px,
    benchmarks/data_scale.py seg); it and the split metrics now score at most CHUNK_PIXELS mask pixels at once,
    with the same numbers as scoring whole."""
    from tpp import seg_metrics
    from tpp.tasks.segmentation import per_image_dice
    generator = torch.Generator().manual_seed(0)
    pred, truth = (torch.randint(0, 3, (11, 8, 8), generator=generator) for _ in range(2))
    pred[4] = 0
    whole_dice = per_image_dice(pred, truth, 3)
    whole = segmentation_metrics(pred.to(torch.uint8), truth, ["bg", "a", "b"])
    sizes, real = [], seg_metrics.class_pixels
    monkeypatch.setattr(seg_metrics, "class_pixels", lambda p, *a, **k: sizes.append(len(p)) or real(p, *a, **k))
    monkeypatch.setattr(seg_metrics, "CHUNK_PIXELS", 3 * 64)  # three 8x8 masks at once
    chunked = per_image_dice(pred, truth, 3)
    assert sizes and max(sizes) == 3 and sum(sizes) == 11
    assert torch.allclose(chunked, whole_dice, equal_nan=True)
    assert segmentation_metrics(pred.to(torch.uint8), truth, ["bg", "a", "b"]) == whole
    assert seg_metrics.images_per_chunk((5, 512, 512)) == 1 and seg_metrics.images_per_chunk((0, 8, 8), chunk=7) == 3
