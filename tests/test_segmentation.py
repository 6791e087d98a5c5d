"""Segmentation pieces on tiny in-code models and hand-made masks: grid, decoder, other input sizes,
VPT token hygiene, metrics against hand-computed values and torchmetrics, data loading, joint
augmentation, leakage refusal, run-length masks."""

import os

import numpy as np
import pytest
import torch
from conftest import make_backbone
from helpers import toy_segmentation_npz
from PIL import Image
from torchmetrics.functional.segmentation import hausdorff_distance

from tpp.backbones import load_backbone
from tpp.builders import check_leakage
from tpp.data import Dataset, Split
from tpp.data.files import ImageFiles
from tpp.data.segmentation import class_indices, joint_augment, load_seg_folder, load_seg_npz
from tpp.errors import TppError
from tpp.model import TaskModel, attach_adapter
from tpp.seg_metrics import hausdorff_percentile, quick_dice, segmentation_metrics
from tpp.segmentation import (SegmentationDecoder, rle_decode, rle_encode, segmentation_loss,
                              tokens_to_grid)


def test_tokens_to_grid_keeps_raster_order_and_refuses_extra_tokens():
    h, w, d = 3, 4, 2
    tokens = torch.arange(h * w * d, dtype=torch.float32).reshape(1, h * w, d)
    grid = tokens_to_grid(tokens, (h, w))
    assert grid.shape == (1, d, h, w)
    assert torch.equal(grid[0, :, 1, 2], tokens[0, 1 * w + 2])  # token of row 1, column 2
    with pytest.raises(TppError, match="only patch tokens"):
        tokens_to_grid(torch.zeros(1, h * w + 1, d), (h, w))


@pytest.mark.parametrize("patch,skip", [(4, True), (7, False)])
def test_decoder_reaches_the_input_size(patch, skip):
    grid = (4, 4)
    decoder = SegmentationDecoder(32, 3, 1, (16, 8), skip)
    pixels = torch.randn(2, 1, grid[0] * patch, grid[1] * patch)
    logits = decoder(torch.randn(2, 16, 32), grid, pixels)
    assert logits.shape == (2, 3, grid[0] * patch, grid[1] * patch)


@pytest.mark.parametrize("kind", ["vit", "vit_mae", "dinov2"])
def test_other_input_sizes_interpolate_position_embeddings(tmp_path, kind):
    """28-px checkpoint, 56-px input: four times the patches; the native size still gives the old tokens."""
    encoder, info, _ = load_backbone(str(make_backbone(tmp_path / kind, kind)), input_size=56)
    assert info.input_size == 56 and "interpolated" in info.resolution_note()
    small, large = torch.randn(2, 3, 28, 28), torch.randn(2, 3, 56, 56)
    assert encoder.patch_tokens(encoder(large)).shape == (2, 14 * 14, 32)
    assert encoder.grid(large) == (14, 14)
    native = encoder.patch_tokens(encoder(small))
    assert native.shape == (2, 49, 32)
    if kind != "dinov2":
        with torch.no_grad():
            reference = encoder.model(pixel_values=small, **({"noise": torch.arange(49.).expand(2, 49)}
                                                            if kind == "vit_mae" else {})).last_hidden_state[:, 1:]
        assert torch.allclose(native, reference, atol=1e-6)
    with pytest.raises(TppError, match="multiple of the patch size"):
        load_backbone(str(tmp_path / kind), input_size=30)


def test_vpt_prompts_never_reach_the_decoder(tiny_mae):
    encoder, info, _ = load_backbone(str(tiny_mae), input_size=32)
    attach_adapter(encoder, "vpt", {"length": 3, "deep": True})
    seen = []
    decoder = SegmentationDecoder(info.hidden_size, 2, 3, (8,), True)
    decoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    logits = TaskModel(encoder, decoder)(torch.randn(2, 3, 32, 32))
    assert seen == [(2, 64, info.hidden_size)] and logits.shape == (2, 2, 32, 32)


def test_segmentation_loss_at_mask_size_and_lower_for_the_right_answer():
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, 2:6, 2:6] = 1
    right = torch.stack([(masks == 0).float(), (masks == 1).float()], 1) * 10
    upsampled = torch.nn.functional.interpolate(right, size=(16, 16))  # logits at input size 16, masks at 8
    assert segmentation_loss(upsampled, masks, 1.0) < 0.05
    assert segmentation_loss(-upsampled, masks, 1.0) > 1.0


def test_metrics_match_hand_computed_values_and_torchmetrics():
    target = torch.zeros(3, 10, 10, dtype=torch.long)
    pred = torch.zeros_like(target)
    target[0, 2:6, 2:6] = 1  # 16 px
    pred[0, 3:7, 3:7] = 1    # 16 px, 9 shared
    target[1, 1:4, 1:4] = 1  # image 1: nothing predicted
    target[2, 5:9, 5:9] = 1
    pred[2, 5:9, 5:9] = 1    # exact
    m = segmentation_metrics(pred, target, ["background", "lesion"])
    dice0, iou0 = 2 * 9 / 32, 9 / 23
    assert m["dice"] == pytest.approx((dice0 + 0 + 1) / 3, abs=1e-6)
    assert m["iou"] == pytest.approx((iou0 + 0 + 1) / 3, abs=1e-6)
    assert m["empty_predictions"] == 1 and m["hd95_undefined"] == 1 and m["n"] == 3
    assert m["per_class"]["lesion"]["images"] == 3
    gen = torch.Generator().manual_seed(0)
    blobs = (torch.nn.functional.avg_pool2d(torch.rand(4, 1, 24, 24, generator=gen), 5, 1, 2)[:, 0] > 0.5).long()
    def pad(x):
        return torch.nn.functional.pad(x, (0, 14, 0, 14))

    a, b = torch.cat([pad(pred[:1]), blobs[:2]]), torch.cat([pad(target[:1]), blobs[2:]])
    full = hausdorff_distance(a, b, num_classes=2, input_format="index")  # torchmetrics: the maximum
    for i in range(3):
        assert hausdorff_percentile(a[i] == 1, b[i] == 1, q=100) == pytest.approx(float(full[i, 0]))
    assert m["hd95"] == pytest.approx(np.mean([hausdorff_percentile(pred[0] == 1, target[0] == 1), 0.0]))


def test_multiclass_metrics_leave_out_classes_absent_from_both():
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    target[0, 1:3, 1:3] = 1  # image 0 benign only, image 1 malignant only
    target[1, 2:5, 2:5] = 2
    m = segmentation_metrics(target.clone(), target, ["background", "benign", "malignant"])
    assert m["per_class"]["benign"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "images": 1}
    half = target.clone()
    half[1] = 0  # malignant missed in image 1: benign Dice 1, malignant 0 -> mean 0.5 (selection sees the same)
    assert segmentation_metrics(half, target, ["background", "benign", "malignant"])["dice"] == 0.5
    assert quick_dice(half, target, 3) == 0.5
    assert m["dice"] == 1.0 and m["empty_predictions"] == 0
    none = segmentation_metrics(torch.zeros_like(target), target, ["background", "benign", "malignant"])
    assert none["dice"] == 0.0 and none["hd95"] is None and none["empty_predictions"] == 2


def test_class_indices_maps_255_and_refuses_other_values():
    assert class_indices(np.array([[0, 255]], np.uint8), 2, "m").tolist() == [[0, 1]]
    assert class_indices(np.array([[0, 2]], np.uint8), 3, "m").tolist() == [[0, 2]]
    with pytest.raises(TppError, match="mask value 7"):
        class_indices(np.array([[0, 7]], np.uint8), 3, "m")
    with pytest.raises(TppError, match="mask value -1"):
        class_indices(np.array([[0, -1]], np.int16), 3, "m")
    with pytest.raises(TppError, match="integer class indices"):
        class_indices(np.array([[0, 0.5]]), 2, "m")
    with pytest.raises(TppError, match="mask value 255"):  # 0/255 is binary only
        class_indices(np.array([[0, 255]], np.uint8), 3, "m")


def seg_cfg(**kw) -> dict:
    """Keyword arguments of the segmentation loaders (the seg_npz source's options + the common keys)."""
    base = dict(name="toy", file=None, root=None, label_key="label", class_names_key="label_names", group_key="group",
                modality="US", val_fraction=0.2, test_fraction=0.2)
    return base | kw


def test_seg_npz_keeps_groups_in_one_split_and_maps_labels_to_classes(tmp_path):
    path = toy_segmentation_npz(tmp_path / "toy.npz")
    ds = load_seg_npz(**seg_cfg(file=str(path)), seed=1)
    assert ds.is_segmentation and ds.class_names == ["background", "foreground"]
    groups = np.load(path)["group"]
    images = np.load(path)["images"]
    split_groups = {}
    for name, split in ds.splits.items():
        rows = [int(np.flatnonzero((images == im).all(axis=(1, 2)))[0]) for im in split.images]
        split_groups[name] = set(groups[rows])
        assert set(np.unique(split.masks)) <= {0, 1}
    assert not (split_groups["train"] & split_groups["test"]) and not (split_groups["train"] & split_groups["val"])
    multi = load_seg_npz(**seg_cfg(file=str(path), mask_classes="from_label"), seed=1)
    assert multi.class_names == ["background", "benign lesion", "malignant lesion"]
    train = multi.split("train")
    for label, mask in zip(train.labels, train.masks):
        assert set(np.unique(mask)) == {0, 1 + label}
    with pytest.raises(TppError, match="differ from the classes derived"):
        load_seg_npz(**seg_cfg(file=str(path), mask_classes="from_label", classes=["background", "b", "a"]), seed=1)
    stored = np.load(path)
    three = ({k: stored[k] for k in stored.files}
             | {"masks": (stored["masks"] > 0) * (1 + stored["label"][:, None, None])})
    np.savez(tmp_path / "three.npz", **three)
    indexed = load_seg_npz(**seg_cfg(file=str(tmp_path / "three.npz"), mask_classes="indices",
                                   classes=["background", "benign", "malignant"]), seed=1)
    assert indexed.class_names == ["background", "benign", "malignant"]
    assert np.array_equal(indexed.split("test").masks, multi.split("test").masks)
    with pytest.raises(TppError, match="mask value 2"):
        load_seg_npz(**seg_cfg(file=str(tmp_path / "three.npz")), seed=1)  # binary by default
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 16, 16), np.uint8), masks=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(TppError, match="one mask of its own height and width"):
        load_seg_npz(**seg_cfg(file=str(tmp_path / "bad.npz"), group_key=None), seed=0)


def test_seg_folder_matches_names_and_reads_0_255_masks(tmp_path):
    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(10):
        Image.fromarray(np.full((20, 20), 10 * i, np.uint8)).save(root / "images" / f"case{i}.png")
        mask = np.zeros((20, 20), np.uint8)
        mask[5:15, 5:15] = 255
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    Image.fromarray(np.stack([mask] * 3, -1)).save(root / "masks" / "case1.png")  # an RGB export of a gray mask
    (root / "metadata.csv").write_text("file_name,patient\n" + "".join(f"case{i}.png,p{i // 2}\n" for i in range(10)))
    folder = dict(name="toy", root=None, file=str(root), modality="US", val_fraction=0.2, test_fraction=0.2, seed=0,
                  image_size=16)
    ds = load_seg_folder(**folder, group_key="patient")
    assert sum(len(s) for s in ds.splits.values()) == 10
    assert ds.split("train").masks.shape[1:] == (16, 16) and set(np.unique(ds.split("train").masks)) == {0, 1}
    assert all(isinstance(split.images, ImageFiles) for split in ds.splits.values())  # decoded per batch
    patients = {name: {int(v) // 20 for v in np.asarray(split.images)[:, 0, 0]} for name, split in ds.splits.items()}
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["val"])
    (root / "masks" / "case3.png").unlink()
    with pytest.raises(TppError, match=r"images/case3.png has no partner in masks/"):
        load_seg_folder(**folder)


def test_a_mask_folder_pairs_by_full_stem_and_refuses_ambiguous_names(tmp_path):
    """Images and masks pair by the name less its image suffix: 'case.1.png' and 'case.2.png' are two cases
    (not both 'case'), and 'a.png' beside 'a.jpg' is refused, naming both, instead of one silently dropped."""
    root = tmp_path / "seg"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in (1, 2):
        Image.fromarray(np.full((20, 20), 100 * i, np.uint8)).save(root / "images" / f"case.{i}.png")
        mask = np.zeros((20, 20), np.uint8)
        mask[: 5 * i] = 255  # case.1: 5 rows, case.2: 10 rows
        Image.fromarray(mask).save(root / "masks" / f"case.{i}.png")
    (root / "images" / "._case.1.png").write_bytes(b"\0" * 64)  # macOS metadata beside the image: not an image
    folder = dict(name="toy", root=None, file=str(root), val_fraction=0.0, test_fraction=0.0, image_size=20)
    ds = load_seg_folder(**folder)
    train = ds.split("train")
    rows = {int(image.flat[0]): int(mask.sum()) // 20 for image, mask in zip(train.images, train.masks)}
    assert rows == {100: 5, 200: 10}
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "images" / "case.1.jpg")
    with pytest.raises(TppError, match=r"images/case.1.jpg and images/case.1.png share the name 'case.1'"):
        load_seg_folder(**folder)


def test_seg_folder_groups_read_as_a_label_table_and_masks_must_fit_their_image(tmp_path):
    """metadata.csv values are stripped ('p1 ' is patient p1: one patient, one split) and a file listed twice is
    refused; a mask of another shape than its image (64x32 image, 32x64 mask) is refused, naming both."""
    root = tmp_path / "seg"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(12):
        Image.fromarray(np.full((32, 64), 10 * i, np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(np.zeros((16, 32), np.uint8)).save(root / "masks" / f"c{i}.png")  # half size: fine
    rows = [f"c{i}.png,p{i // 2}{' ' if i % 2 else ''}" for i in range(12)]  # every second value padded
    (root / "metadata.csv").write_text("file_name,patient\n" + "\n".join(rows) + "\n")
    folder = dict(name="toy", root=None, file=str(root), image_size=16, val_fraction=0.2, test_fraction=0.2,
                  group_key="patient")
    ds = load_seg_folder(**folder)
    where: dict = {}
    for name, split in ds.splits.items():
        for v in np.asarray(split.images)[:, 0, 0]:
            where.setdefault(int(v) // 20, set()).add(name)
    assert len(where) == 6 and all(len(splits) == 1 for splits in where.values())  # six patients, one split each
    (root / "metadata.csv").write_text("file_name,patient\n" + "\n".join(rows + ["c3.png,p9"]) + "\n")
    with pytest.raises(TppError, match=r"line 14: image 'c3.png' is listed twice \(first on line 5\)"):
        load_seg_folder(**folder)
    (root / "metadata.csv").unlink()
    Image.fromarray(np.zeros((64, 32), np.uint8)).save(root / "masks" / "c5.png")
    with pytest.raises(TppError, match=r"masks/c5.png' is 32x64 pixels but its image '.*images/c5.png' is 64x32"):
        load_seg_folder(**dict(folder, group_key=None))


def test_a_segmentation_folder_is_an_image_collection_for_the_leakage_check(tmp_path):
    """TPP on a seg_folder's images (all of them, or the folder above) may have seen its test images: refused;
    TPP on exactly its training split is fine. seg_folder named no origin before, so nothing was checked."""
    from tpp.data.labelled import folder_origin

    root = tmp_path / "seg"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((20, 20), 10 * i, np.uint8)).save(root / "images" / f"case{i}.png")
        Image.fromarray(np.where(np.arange(20) < i + 2, 255, 0).astype(np.uint8)[None].repeat(20, 0)).save(
            root / "masks" / f"case{i}.png")
    ds = load_seg_folder("toy", None, str(root), image_size=16, val_fraction=0.2, test_fraction=0.2)
    images_origin = folder_origin(os.path.realpath(root / "images"))
    assert ds.origin == images_origin and sum(len(f) for f in ds.split_files.values()) == 10
    check_leakage(card("toy", ds.split_sha256()["train"], origin=images_origin), ds, "a")  # its training split
    for origin in (images_origin, folder_origin(os.path.realpath(tmp_path))):  # every image / the folder above
        with pytest.raises(TppError, match="same image folder|holds validation or test images of 'toy'"):
            check_leakage(card("all_images", "0123456789abcdef", origin=origin), ds, "a")


def test_joint_augment_moves_image_and_mask_together():
    masks = torch.zeros(64, 32, 32, dtype=torch.long)
    masks[:, 4:20, 6:14] = 1
    images = masks[:, None].float().expand(-1, 3, -1, -1).clone()
    out_images, out_masks = joint_augment(images, masks, (0.6, 0.9), generator=torch.Generator().manual_seed(0))
    agree = ((out_images[:, 0] > 0.5).long() == out_masks).float().mean()
    assert agree > 0.98
    assert not torch.equal(out_masks, masks) and set(out_masks.unique().tolist()) == {0, 1}
    flipped = out_masks[:, :, 16:].sum() > out_masks[:, :, :16].sum()
    assert 0 < int(flipped.sum()) < 64  # some images flipped, some not
    _, unflipped = joint_augment(images, masks, (0.6, 0.9), flip=False, generator=torch.Generator().manual_seed(0))
    assert not (unflipped[:, :, 16:].sum() > unflipped[:, :, :16].sum()).any()  # data.hflip=false: zoom only


def test_a_padding_prompts_frame_is_cropped_from_the_logits():
    """With a padding visual prompt the input's border holds the prompt, not the image: the decoder's logits
    cover the image alone (the same values the uncropped decoder gives there), so they line up with its mask."""
    torch.manual_seed(0)
    plain, framed = SegmentationDecoder(32, 2, 1, (16, 8)), SegmentationDecoder(32, 2, 1, (16, 8), frame=4)
    framed.load_state_dict(plain.state_dict())
    tokens, pixels = torch.randn(2, 16, 32), torch.randn(2, 1, 32, 32)
    whole, inside = plain(tokens, (4, 4), pixels), framed(tokens, (4, 4), pixels)
    assert inside.shape == (2, 2, 24, 24) and torch.equal(inside, whole[..., 4:28, 4:28])


def test_augmenting_a_framed_batch_moves_the_image_inside_the_frame_only():
    from tpp.tasks import get_task
    from tpp.tasks.segmentation import SegmentationOptions

    masks = torch.zeros(16, 24, 24, dtype=torch.long)
    masks[:, 2:12, 3:9] = 1
    images = torch.full((16, 1, 32, 32), -5.0)  # the frame: kept for the prompt
    images[:, 0, 4:28, 4:28] = masks.float()
    torch.manual_seed(0)
    out, moved = get_task("segmentation").augment(images, masks, SegmentationOptions(augment_scale=[0.6, 0.9]),
                                                  True, frame=4)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[4:28, 4:28] = False
    assert torch.equal(out[..., border], images[..., border]) and not torch.equal(moved, masks)
    assert ((out[:, 0, 4:28, 4:28] > 0.5).long() == moved).float().mean() > 0.97  # image and mask moved together


def card(name, train_hash=None, splits=("train",), origin="BUSI"):
    data = {"name": name, "origin": origin, "split_id": "seeded", "used": {"splits": list(splits)}}
    return {"data": data | ({"split_sha256": {"train": train_hash}} if train_hash else {})}


def test_leakage_from_the_same_image_collection_is_refused():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (10, 8, 8), dtype=np.uint8)
    busi = Dataset("busi_64", "US", ["background", "lesion"], origin="BUSI",
                   splits={"train": Split(images[:7], None), "test": Split(images[7:], None)})
    own = busi.split_sha256()["train"]
    check_leakage(card("busi_64", own), busi, "a")  # exactly this training split: fine
    check_leakage(card("pneumoniamnist", "x", origin="Kermany2018"), busi, "a")  # other images: fine
    check_leakage(card("busi_64"), busi, "a")  # a card from before split hashes, same dataset: fine
    for bad in (card("busi_64", "0123456789abcdef"),  # another split of the same file (seed, label_key ...)
                card("busi_64", own, splits=("train", "val", "test")),  # also saw the evaluation images
                card("breastmnist", "whatever"),  # BreastMNIST is made from BUSI
                card("breastmnist", origin=None)):  # an old BreastMNIST card without origin: inferred
        with pytest.raises(TppError, match="same BUSI images"):
            check_leakage(bad, busi, "a")


def test_run_length_masks_round_trip():
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:6] = 2
    mask[4, 0] = 1
    rle = rle_encode(mask)
    assert rle["size"] == [5, 7] and sum(n for _, n in rle["counts"]) == 35
    assert np.array_equal(rle_decode(rle), mask)


def test_a_float_mask_with_fractional_values_is_an_error_not_cut_to_background(tmp_path):
    """A float TIFF mask holding 0.6 used to become class 0 silently (cast before the check)."""
    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(10):
        Image.fromarray(np.full((16, 16), 10 * i, np.uint8)).save(root / "images" / f"case{i}.png")
        mask = np.zeros((16, 16), np.float32)
        mask[4:12, 4:12] = 1.0
        Image.fromarray(mask, "F").save(root / "masks" / f"case{i}.tif")
    folder = dict(name="toy", root=None, file=str(root), modality="US", val_fraction=0.2, test_fraction=0.2, seed=0,
                  image_size=16)
    assert set(np.unique(load_seg_folder(**folder).split("train").masks)) == {0, 1}  # whole values are fine
    mask[4:8, 4:12] = 0.6
    Image.fromarray(mask, "F").save(root / "masks" / "case3.tif")
    with pytest.raises(TppError, match=r"case3.tif' holds fractional or non-finite values"):
        load_seg_folder(**folder)


@pytest.mark.parametrize("channels, says", [([12], "multiples of 8"), ([2056], "more than 2048"),
                                            ([8] * 8, "8 stages; at most 7")])
def test_decoder_widths_that_could_not_be_built_or_published_are_config_errors(channels, says):
    """[2049] crashed in GroupNorm with a traceback; [2056] trained an adapter publishing then refused."""
    from tpp.errors import ConfigError
    from tpp.tasks.segmentation import SegmentationOptions

    with pytest.raises(ConfigError, match=says):
        SegmentationOptions(decoder_channels=channels)
    SegmentationOptions(decoder_channels=[2048, 64, 7])


def test_a_mask_drawn_on_a_photo_shown_upright_by_its_exif_orientation_fits_it(tmp_path):
    """A photo stored sideways (64 wide, 32 high) with EXIF orientation 6 is shown 32 wide and 64 high: its
    mask, drawn on what the viewer showed, is that shape and lies over the image as shown."""
    root = tmp_path / "seg"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.zeros((32, 64), np.uint8)
    stored[:, 32:] = 200  # the stored right half: the bottom half as shown
    mask = np.zeros((64, 32), np.uint8)
    mask[32:] = 255  # drawn over the shown bottom half
    for i in range(4):
        Image.fromarray(stored).save(root / "images" / f"c{i}.png", exif=exif.tobytes())
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    folder = dict(name="toy", root=None, file=str(root), val_fraction=0.0, test_fraction=0.0, image_size=16)
    train = load_seg_folder(**folder).split("train")
    image, labels = np.asarray(train.images[0]), train.masks[0]
    assert image.shape[-2:] == (16, 16) and labels.shape == (16, 16)
    assert (labels[8:] == 1).all() and (labels[:8] == 0).all()
    shown = image.reshape(-1, 16, 16)[0]
    assert shown[9:].min() == 200 and shown[:7].max() == 0  # away from the resized edge row
