"""segmentation: a class-index mask per image, a light progressive-upsampling decoder; Dice selects the best step."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tpp.data.segmentation import joint_augment
from tpp.errors import ConfigError, TppError
from tpp.seg_metrics import DEFINITIONS, SegmentationScorer, quick_dice, segmentation_metrics, write_overlays
from tpp.segmentation import (build_decoder, decoder_from_spec, decoder_spec, mask_to_image_size, rle_encode,
                              segmentation_loss, to_mask_size)
from tpp.tasks import Task, register

MAX_MASK_SIDE = 4096  # pixels a card may ask masks to be drawn at
MAX_DECODER_STAGES = 7  # x2 upsampling stages a card's decoder may have (training allows log2(4 x patch))
MAX_DECODER_WIDTH = 2048  # channels of one decoder stage a card may ask for
MAX_SEG_CLASSES = 256  # masks are written as uint8 class indices


def decoder_channels_problem(channels: list[int]) -> str | None:
    """Why a decoder's stage widths cannot be built or published (None: they can): at most
    :data:`MAX_DECODER_STAGES` stages of at most :data:`MAX_DECODER_WIDTH` channels, each below 8 or a multiple
    of 8 (its GroupNorm has min(8, width) groups)."""
    if len(channels) > MAX_DECODER_STAGES:
        return f"has {len(channels)} stages; at most {MAX_DECODER_STAGES}"
    if any(c > MAX_DECODER_WIDTH for c in channels):
        return f"asks for more than {MAX_DECODER_WIDTH} channels in a stage"
    if any(c > 8 and c % 8 for c in channels):
        return f"widths above 8 must be multiples of 8 (the stage's GroupNorm has 8 groups), got {channels}"
    return None

@dataclass
class SegmentationOptions:
    """The light decoder on the frozen encoder's patch tokens (config section ``segmentation``)."""
    decoder_channels: list = field(default_factory=lambda: [64, 32], metadata={
        "help": "channels of the progressive upsampling stages (each stage x2)"})
    pixel_skip: bool = field(default=True, metadata={
        "help": "concatenate features of the input image before the last stage (sharper edges)"})
    dice_weight: float = field(default=1.0, metadata={
        "help": "loss = cross-entropy + dice_weight * soft Dice loss on foreground classes"})
    augment_scale: list = field(default_factory=lambda: [0.8, 1.0], metadata={
        "help": "joint flip + zoom-in crop of image and mask: crop side range"})
    overlays: int = field(default=16, metadata={
        "help": "test images saved as PNG overlays (ground truth green, prediction red)"})

    def __post_init__(self):
        channels = self.decoder_channels
        if not (isinstance(channels, list) and channels and all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels)):
            raise ConfigError("segmentation.decoder_channels must be a non-empty list of positive integers.")
        if problem := decoder_channels_problem(channels):
            raise ConfigError(f"segmentation.decoder_channels {problem}.")
        scale = self.augment_scale
        if not (isinstance(scale, list) and len(scale) == 2 and all(isinstance(s, (int, float)) for s in scale)
                and 0 < min(scale) <= max(scale) <= 1):
            raise ConfigError("segmentation.augment_scale must be [low, high] in (0, 1].")
        if self.dice_weight < 0 or self.overlays < 0:
            raise ConfigError("segmentation.dice_weight and segmentation.overlays must not be negative.")


class Segmentation(Task):
    name = "segmentation"
    summary = "a class-index mask per image: progressive-upsampling decoder, Dice / IoU / HD95"
    options_cls = SegmentationOptions
    head_noun = "decoder"
    main_metric = "dice"
    columns = (("dice", "Dice", ".3f"), ("iou", "IoU", ".3f"))

    def check_config(self, cfg) -> None:
        from tpp.data.sources import all_sources, get_source

        if not get_source(cfg.data.source).masks:
            with_masks = " or ".join(s.name for s in all_sources() if s.masks)
            raise ConfigError(f"task=segmentation needs masks: data.source={cfg.data.source} has none "
                              f"(use {with_masks}).")

    def check_data(self, dataset, options=None) -> None:
        if not dataset.is_segmentation:
            raise TppError(f"dataset '{dataset.name}' has no masks; segmentation needs a source with masks.")

    def targets(self, split):
        """The split's masks (N, h, w) as int64 :class:`MaskTargets`, decoded per batch / metrics chunk."""
        from tpp.data.stream import MaskTargets

        return MaskTargets(split.masks)

    def build_head(self, options, info, dataset):
        """The decoder; with a padding visual prompt (``info.frame``) it crops the frame from its logits."""
        return build_decoder(options, info.hidden_size, dataset.num_classes, info.channels, info.patch_size,
                             info.frame)

    def card_entry(self, options, dataset, info, targets) -> dict:
        mask_size = list(targets.shape[-2:])
        inside = f", the {info.frame}-px prompt frame cropped," if info.frame else ""
        return {"type": self.name, "num_classes": dataset.num_classes, "label_names": list(dataset.class_names),
                "decoder": decoder_spec(options, dataset.num_classes, info.frame), "mask_size": mask_size,
                "resolution": info.resolution_note() + f"; logits{inside} resized (bilinear) to the {mask_size[0]}x"
                                                       f"{mask_size[1]} stored masks for loss and metrics"}

    def head_from_card(self, entry, hidden_size, channels):
        return decoder_from_spec(entry["decoder"], hidden_size, channels)

    def augment(self, images, targets, options, hflip, frame=0):
        """The same flip and zoom for the image and its mask; with a ``frame`` (a padding prompt's border, no
        image) only the image inside it moves, and the frame stays where the prompt will be."""
        if not frame:
            return joint_augment(images, targets, tuple(options.augment_scale), flip=hflip)
        inside = (..., slice(frame, images.shape[-2] - frame), slice(frame, images.shape[-1] - frame))
        moved, targets = joint_augment(images[inside], targets, tuple(options.augment_scale), flip=hflip)
        images = images.clone()
        images[inside] = moved
        return images, targets

    def loss(self, logits, targets, options):
        return segmentation_loss(logits, targets, options.dice_weight)

    def predictions(self, logits, entry, size=None):
        size = tuple(size) if size is not None else tuple(entry["mask_size"])
        return to_mask_size(logits.float(), size).argmax(dim=1).to(torch.uint8)

    def output_shape(self, entry) -> tuple:
        return tuple(entry["mask_size"])

    def score(self, predictions, targets, dataset):
        dice = quick_dice(predictions, targets, dataset.num_classes)
        return dice, {"val_dice": dice}

    def metrics(self, predictions, targets, dataset, seed):
        return segmentation_metrics(predictions, targets, dataset.class_names)

    def scorer(self, dataset, seed):
        """Per-image scores and counts, batch by batch: no mask is held beyond its batch."""
        return SegmentationScorer(dataset.class_names)

    def definitions(self):
        return dict(DEFINITIONS)

    def summary_extras(self, model, head_parameters):
        from tpp.model import trainable_parameters

        return {"decoder_parameters": head_parameters,
                "adapter_parameters": trainable_parameters(model) - head_parameters}

    def publish_extras(self, run, options, split, predictions):
        if options.overlays:
            run.publish_dir("overlays", lambda tmp: write_overlays(tmp, split.images, predictions.numpy(),
                                                                   split.masks, options.overlays))

    def prediction_rows(self, predictions, targets, label_names):
        """Per image: Dice of each foreground class (empty where the class is in neither mask) and the
        foreground pixels of truth and prediction; the masks themselves are the overlays' business."""
        dice = per_image_dice(predictions, targets, len(label_names))
        rows = []
        for i in range(len(predictions)):
            row = {f"dice_{name}": "" if dice[i, c].isnan() else f"{float(dice[i, c]):.6f}"
                   for c, name in enumerate(label_names[1:])}
            row.update(foreground_truth=int((targets[i] > 0).sum()),
                       foreground_predicted=int((predictions[i] > 0).sum()))
            rows.append(row)
        return rows

    def report(self, summary):
        t = summary["test"]
        hd95 = "n/a" if t["hd95"] is None else f"{t['hd95']:.1f} px"
        return (f"test Dice {t['dice']:.3f}  IoU {t['iou']:.3f}  HD95 {hd95}  empty predictions "
                f"{t['empty_predictions']}/{t['n']}  trainable {summary['adapter_parameters']:,} (+ decoder "
                f"{summary['decoder_parameters']:,})  saved {summary['adapter_bytes'] / 1024:.0f} KiB")

    def split_line(self, split, result):
        hd95 = "n/a" if result.get("hd95") is None else f"{result['hd95']:.1f} px"
        return (f"{split}: Dice {result['dice']:.3f} IoU {result['iou']:.3f} HD95 {hd95} empty predictions "
                f"{result['empty_predictions']} (n={result['n']})")

    def compare_values(self, result):
        return {"dice": result.get("dice"), "iou": result.get("iou")}

    def check_entry(self, entry):
        mask, decoder = entry.get("mask_size"), entry.get("decoder")
        problems = []
        if not (isinstance(mask, list) and len(mask) == 2 and all(isinstance(m, int) and 1 <= m <= MAX_MASK_SIDE
                                                                 for m in mask)):
            problems.append(f"task.mask_size must be two integers in 1..{MAX_MASK_SIDE}")
        if not isinstance(decoder, dict):
            problems.append("task.decoder must be an object (the decoder's spec)")
            return problems
        channels = decoder.get("channels")
        if not (isinstance(channels, list) and channels and all(_whole(c) and c > 0 for c in channels)):
            problems.append("task.decoder.channels must be a list of positive integers")
        elif problem := decoder_channels_problem(channels):
            problems.append(f"task.decoder.channels {problem}")
        if not isinstance(decoder.get("pixel_skip"), bool):
            problems.append("task.decoder.pixel_skip must be true or false")
        if not (_whole(decoder.get("num_classes")) and 2 <= decoder["num_classes"] <= MAX_SEG_CLASSES):
            problems.append(f"task.decoder.num_classes must be an integer in 2..{MAX_SEG_CLASSES}")
        elif len(entry.get("label_names") or []) != decoder["num_classes"]:
            problems.append(f"task.label_names must name each of the decoder's {decoder['num_classes']} classes, "
                            f"got {len(entry.get('label_names') or [])} names")
        if not _whole(decoder.get("frame", 0)):
            problems.append("task.decoder.frame must be a whole number of pixels, 0 or more")
        return problems

    def entry_frame(self, entry):
        decoder = entry.get("decoder")
        return decoder.get("frame", 0) if isinstance(decoder, dict) else None

    def per_image(self, output, image):
        return mask_to_image_size(output.numpy(), image)  # the mask at the uploaded image's own size

    def json_entry(self, result, label_names):
        return {"mask": dict(rle_encode(result), classes=label_names),
                "pixels": {n: int((result == k).sum()) for k, n in enumerate(label_names)}}

    def csv_entry(self, result, label_names, stem):
        name = f"{stem}.png"
        row = {"mask": name}
        row.update({f"frac_{c}": f"{float((result == k).mean()):.6f}" for k, c in enumerate(label_names)})
        return row, {name: np.asarray(result, dtype=np.uint8)}


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def per_image_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice (N, K-1) of each image and foreground class from class-index masks (N, h, w); NaN where the class
    is in neither mask. Counted :func:`tpp.seg_metrics.images_per_chunk` images at a time."""
    from tpp.seg_metrics import class_pixels, dice_of, images_per_chunk

    step = images_per_chunk(pred.shape)
    return torch.cat([dice_of(*(c[:, 1:] for c in class_pixels(pred[i:i + step], target[i:i + step], num_classes)))
                      for i in range(0, max(len(pred), 1), step)])


register(Segmentation())
