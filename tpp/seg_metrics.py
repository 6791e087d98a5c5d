"""Segmentation metrics and overlays people can look at.

Per image and foreground class (background excluded): Dice and IoU from the image's pixel counts per class (one
``bincount``: the numbers torchmetrics' samplewise ``dice_score`` / ``mean_iou`` give, to the digit, checked by
the test suite, without importing torchmetrics (~110 MiB of scipy and matplotlib, resident while evaluate predicts)
or one-hot encoding the masks) and the 95th-percentile symmetric Hausdorff distance in pixels (torchmetrics'
``hausdorff_distance`` is the maximum, fails on empty masks and is slow; the test suite checks ours against it at
q = 100). A class absent from both prediction and ground truth is left out of its mean; an image whose ground truth
has foreground but whose prediction has none counts as an *empty prediction* (Dice 0, no Hausdorff distance).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def edge_points(mask: torch.Tensor) -> torch.Tensor:
    """Coordinates (M, 2) of a binary mask's (h, w) boundary pixels: foreground with a 4-neighbour
    outside the foreground (image borders count as outside)."""
    fg = torch.nn.functional.pad(mask.bool(), (1, 1, 1, 1))
    inner = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
    return (mask.bool() & ~inner).nonzero().float()


def hausdorff_percentile(pred: torch.Tensor, target: torch.Tensor, q: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance in pixels between two binary masks (h, w): the larger of
    the q-th percentiles of boundary-to-boundary distances in both directions (MONAI's convention).
    NaN if either mask is empty. Exact Euclidean distances between boundary points (``torch.cdist``:
    torchmetrics' own distance transform is quadratic in the image size)."""
    if not pred.any() or not target.any():
        return math.nan
    dist = torch.cdist(edge_points(pred), edge_points(target))  # (M_pred, M_target)
    to_target, to_pred = dist.min(dim=1).values, dist.min(dim=0).values
    return float(max(torch.quantile(to_target, q / 100), torch.quantile(to_pred, q / 100)))


def _nanmean(values: torch.Tensor) -> float:
    values = values[~values.isnan()]
    return float(values.mean()) if len(values) else math.nan


CHUNK = 256  # images scored at once: their masks are decoded (mask files) and their pixels counted together
CHUNK_PIXELS = 1 << 20  # and at most this many mask pixels at once (counting takes ~16 bytes a pixel: ~17 MB)


def images_per_chunk(shape, chunk: int = CHUNK) -> int:
    """Images of masks of ``shape`` (..., h, w) scored at once: at most ``chunk``, and at most
    :data:`CHUNK_PIXELS` pixels (64 masks of 128 px; 4 of 512 px), so memory stays bounded at any mask size."""
    return max(1, min(chunk, CHUNK_PIXELS // max(1, int(shape[-1]) * int(shape[-2]))))


def class_pixels(pred: torch.Tensor, target: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and class of class indices pred, target (B, h, w) in 0..k-1: pixels of the class in both
    (intersection), in the prediction, in the truth, each int64 (B, k). One ``bincount`` of the (image, predicted,
    true) triples."""
    b = len(pred)
    if b and (int(min(pred.min(), target.min())) < 0 or int(max(pred.max(), target.max())) >= k):
        raise ValueError(f"class indices must be in 0..{k - 1}")
    pixels = math.prod(pred.shape[1:])
    index = pred.reshape(b, pixels).to(torch.long, copy=True).mul_(k).add_(target.reshape(b, pixels))
    index.add_(torch.arange(b)[:, None] * (k * k))
    confusion = torch.bincount(index.flatten(), minlength=b * k * k).reshape(b, k, k)  # [image, predicted, true]
    return confusion.diagonal(dim1=1, dim2=2), confusion.sum(2), confusion.sum(1)


def dice_of(both: torch.Tensor, predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Dice 2|P∩T| / (|P| + |T|) float32 of :func:`class_pixels`' counts (B, k') (NaN: the class in neither mask),
    computed as torchmetrics' ``dice_score`` computes it (integer counts, one float32 division)."""
    return (2 * both).float() / (predicted + truth).float()


def iou_of(both: torch.Tensor, predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU |P∩T| / |P∪T| float32 of :func:`class_pixels`' counts (NaN: the class in neither mask), as torchmetrics'
    ``mean_iou`` computes it."""
    return both.float() / (predicted + truth - both).float()


def _image_scores(pred: torch.Tensor, target: torch.Tensor, k: int, hausdorff: bool = True) -> dict:
    """Per-image scores of class indices pred, target (B, h, w) long: dice, iou, hd (B, K-1) (NaN: undefined; all
    NaN without ``hausdorff``), present (B, K-1) bool (the class in prediction or truth), and counts: empty
    predictions, foreground pixels."""
    both, predicted, truth = (counts[:, 1:] for counts in class_pixels(pred, target, k))  # foreground classes
    present = (predicted + truth) > 0
    hd = torch.full((len(pred), k - 1), math.nan)
    for i, c in present.nonzero().tolist() if hausdorff else ():
        hd[i, c] = hausdorff_percentile(pred[i] == c + 1, target[i] == c + 1)
    has_gt, has_pred = truth.sum(1) > 0, predicted.sum(1) > 0
    return {"dice": dice_of(both, predicted, truth), "iou": iou_of(both, predicted, truth), "hd": hd,
            "present": present, "empty": int((has_gt & ~has_pred).sum()),
            "fg_pred": int(predicted.sum()), "fg_truth": int(truth.sum())}


def _fraction(count: int, total: int) -> float:
    """count / total as float32, as ``mask.float().mean()`` gives it (exact counts: no float32 sum of millions)."""
    return float(torch.tensor(float(count)).div_(total))


def segmentation_metrics(pred: torch.Tensor, target, class_names: list[str], chunk: int = CHUNK) -> dict:
    """pred: class indices (N, h, w) at the stored mask size; target: the same, a tensor or
    :class:`tpp.data.stream.MaskTargets` (mask files decoded ``chunk`` images at a time) -> JSON-ready metrics.

    ``dice`` / ``iou`` / ``hd95``: mean over foreground classes of the per-class means over images;
    ``per_class``: the per-class means; ``empty_predictions``: images with foreground in the ground
    truth and none predicted; ``hd95_undefined``: (image, class) pairs without a distance.
    """
    return _scored(pred, target, SegmentationScorer(class_names, chunk)).result()


def _scored(pred: torch.Tensor, target, scorer: SegmentationScorer) -> SegmentationScorer:
    """``scorer`` fed pred (N, h, w) and target (a tensor or :class:`tpp.data.stream.MaskTargets`, decoded
    :func:`images_per_chunk` images at a time), chunk by chunk."""
    from tpp.data.stream import target_chunks

    for start, t in target_chunks(target, images_per_chunk(pred.shape, scorer.chunk)):
        scorer.add(pred[start:start + len(t)], t)
    return scorer


class SegmentationScorer:
    """:func:`segmentation_metrics` of a split fed batch by batch (``add``), the same numbers to the digit whatever
    the batches: it keeps each image's scores (dice, iou, hd95, presence: 13 bytes per image and foreground class)
    and integer counts, never a mask, so scoring predictions as they are made holds one batch of masks.
    ``hausdorff=False``: no Hausdorff distances (hd95 and hd95_undefined null; :func:`quick_dice`), the other
    numbers the same."""

    def __init__(self, class_names: list[str], chunk: int = CHUNK, hausdorff: bool = True):
        self.class_names, self.chunk, self.hausdorff = list(class_names), chunk, hausdorff
        self.parts: list[dict] = []  # _image_scores of each scored chunk, in image order
        self.n = self.pixels = 0

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Score the next images: class indices pred (B, h, w) and target (B, h, w) (any integer dtype), at most
        :func:`images_per_chunk` images at once."""
        k = len(self.class_names)
        step = images_per_chunk(pred.shape, self.chunk)
        for start in range(0, len(pred), step):
            self.parts.append(_image_scores(pred[start:start + step].long(), target[start:start + step].long(), k,
                                            self.hausdorff))
        self.n += len(pred)
        self.pixels += len(pred) * math.prod(pred.shape[1:])

    def result(self) -> dict:
        """The JSON-ready metrics of every image added (undefined, null, for none)."""
        k = len(self.class_names)
        parts = self.parts or [{"dice": torch.zeros(0, k - 1), "iou": torch.zeros(0, k - 1),
                                "hd": torch.zeros(0, k - 1), "present": torch.zeros(0, k - 1, dtype=torch.bool),
                                "empty": 0, "fg_pred": 0, "fg_truth": 0}]
        dice, iou, hd, present = (torch.cat([p[key] for p in parts]) for key in ("dice", "iou", "hd", "present"))
        per_class = {name: {"dice": _nanmean(dice[:, c]), "iou": _nanmean(iou[:, c]), "hd95": _nanmean(hd[:, c]),
                            "images": int(present[:, c].sum())}
                     for c, name in enumerate(self.class_names[1:])}
        return _nan_to_none({
            "dice": _nanmean(torch.tensor([v["dice"] for v in per_class.values()])),
            "iou": _nanmean(torch.tensor([v["iou"] for v in per_class.values()])),
            "hd95": _nanmean(torch.tensor([v["hd95"] for v in per_class.values()])),
            "per_class": per_class, "n": self.n, "empty_predictions": sum(p["empty"] for p in parts),
            "hd95_undefined": int((hd.isnan() & present).sum()) if self.hausdorff else None,
            "foreground_fraction": {"predicted": _fraction(sum(p["fg_pred"] for p in parts), self.pixels),
                                    "truth": _fraction(sum(p["fg_truth"] for p in parts), self.pixels)},
        })


DEFINITIONS = {
    "dice": "per image and foreground class 2|P∩T|/(|P|+|T|) at the stored mask size; per class the mean over images, "
            "an image where the class is in neither prediction nor truth (empty vs empty) left out; then the "
            "mean over foreground classes",
    "iou": "|P∩T|/|P∪T|, averaged as dice (per image, empty vs empty left out, then over classes)",
    "hd95": "per image and class the larger of the two directed 95th-percentile boundary distances in pixels; "
            "undefined (left out, counted in hd95_undefined) when either mask lacks the class",
    "empty_predictions": "images whose truth has foreground and whose prediction has none (their Dice is 0)",
    "foreground_fraction": "pooled fraction of foreground pixels over the split (predicted, truth)",
    "interval": "none: segmentation metrics are reported without a confidence interval",
    "n": "images in the split",
}


def _nan_to_none(obj):
    """JSON has no NaN: undefined means (no image with that class, no distance) become null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def quick_dice(pred: torch.Tensor, target, num_classes: int, chunk: int = CHUNK) -> float:
    """The reported ``dice`` without the Hausdorff distances (model selection during training): per class the
    mean over images, then the mean over foreground classes (NaN: no foreground class in any image), counted by
    :class:`SegmentationScorer` as :func:`segmentation_metrics` counts it. pred (N, h, w); target the same, a
    tensor or :class:`tpp.data.stream.MaskTargets` (decoded ``chunk`` images at a time)."""
    scorer = SegmentationScorer([str(c) for c in range(num_classes)], chunk, hausdorff=False)
    dice = _scored(pred, target, scorer).result()["dice"]
    return math.nan if dice is None else dice


# distinct colours for predicted classes 1..K-1 (ground truth is outlined in green)
PALETTE = np.array([[230, 25, 75], [67, 99, 216], [245, 130, 48], [145, 30, 180], [70, 240, 240]], dtype=np.float32)


def overlay(image: np.ndarray, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """uint8 image (h, w[, 3]) with the prediction tinted per class and the ground-truth outline in green.
    Returns uint8 (h, w, 3). image, pred and target share (h, w)."""
    rgb = np.repeat(image[..., None], 3, axis=-1).astype(np.float32) if image.ndim == 2 else image.astype(np.float32)
    for c in range(1, int(max(pred.max(), 1)) + 1):
        tint = PALETTE[(c - 1) % len(PALETTE)]
        rgb[pred == c] = 0.55 * rgb[pred == c] + 0.45 * tint
    fg = target > 0
    inner = fg.copy()
    inner[1:, :] &= fg[:-1, :]
    inner[:-1, :] &= fg[1:, :]
    inner[:, 1:] &= fg[:, :-1]
    inner[:, :-1] &= fg[:, 1:]
    rgb[fg & ~inner] = [0, 230, 0]
    return rgb.clip(0, 255).astype(np.uint8)


def write_overlays(folder: Path, images: np.ndarray, pred: np.ndarray, target: np.ndarray, count: int) -> list[str]:
    """Save ``count`` evenly spaced overlays as ``folder/test_<index>.png`` (images resized to the mask
    size). Returns the file names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    picks = np.unique(np.linspace(0, len(images) - 1, num=min(count, len(images))).round().astype(int))
    names = []
    for i in picks:
        img = images[i]
        if img.shape[:2] != target[i].shape:
            img = np.asarray(Image.fromarray(img).resize(target[i].shape[::-1], Image.BILINEAR))
        name = f"test_{i:04d}.png"
        Image.fromarray(overlay(img, pred[i], target[i])).save(folder / name)
        names.append(name)
    return names
