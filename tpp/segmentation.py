"""Segmentation on a frozen ViT: a light decoder on the patch tokens, trained with the target parameters.

Pieces (B images, C channels, H x W input pixels, patch p, grid h = H / p, w = W / p, N = h * w
patch tokens of width D, K mask classes):
  Encoder.patch_tokens -> tokens_to_grid -> SegmentationDecoder -> logits (B, K, H - 2f, W - 2f)
  (f: the input frame a padding visual prompt keeps, 0 otherwise: the decoder crops it, so logits cover the image)
  segmentation_loss(logits, masks)  cross-entropy + soft Dice on the foreground classes
The decoder is the segmentation task's head (``tpp.tasks.segmentation``), saved with the site adapter
(``head.safetensors``) like a classification head.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from tpp.errors import TppError

if TYPE_CHECKING:
    import numpy as np


def tokens_to_grid(patch_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, D) patch tokens in raster order -> feature map (B, D, h, w). N must equal h * w: a
    method that adds tokens (VPT prompts, registers) must have dropped them."""
    b, n, d = patch_tokens.shape
    h, w = grid
    if n != h * w:
        raise TppError(f"the decoder got {n} tokens for a {h}x{w} patch grid; only patch tokens may reach it.")
    return patch_tokens.transpose(1, 2).reshape(b, d, h, w)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.GELU())


class SegmentationDecoder(nn.Module):
    """Progressive upsampling (SETR-PUP style), with an optional skip from the input pixels.

    ``forward(patch_tokens (B, N, D), grid (h, w), pixel_values (B, C, H, W)) -> logits (B, K, H - 2 frame,
    W - 2 frame)``. A 1x1 projection to ``channels[0]``, then per entry of ``channels`` a 3x3 conv block followed
    by x2 bilinear upsampling; a final resize reaches H x W exactly (patch sizes that are not a power of two).
    With ``pixel_skip`` a small conv on the input image is concatenated before the classifier. ``frame``: border
    pixels of the input that hold a padding visual prompt, not the image; cropped from the logits, so they cover
    the image alone and line up with its mask.
    """

    def __init__(self, hidden_size: int, num_classes: int, image_channels: int,
                 channels: tuple = (64, 32), pixel_skip: bool = True, frame: int = 0):
        super().__init__()
        self.frame = frame
        self.project = nn.Conv2d(hidden_size, channels[0], 1)
        widths = [channels[0], *channels]
        self.stages = nn.ModuleList(_conv_block(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.skip = _conv_block(image_channels, 16) if pixel_skip else None
        last = widths[-1] + (16 if pixel_skip else 0)
        self.classifier = nn.Sequential(_conv_block(last, widths[-1]), nn.Conv2d(widths[-1], num_classes, 1))

    def forward(self, patch_tokens: torch.Tensor, grid: tuple[int, int], pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.project(tokens_to_grid(patch_tokens, grid))
        for stage in self.stages:
            x = F.interpolate(stage(x), scale_factor=2, mode="bilinear", align_corners=False)
        if x.shape[-2:] != pixel_values.shape[-2:]:
            x = F.interpolate(x, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
        if self.skip is not None:
            x = torch.cat([x, self.skip(pixel_values.to(x.dtype))], dim=1)
        logits = self.classifier(x)
        f = self.frame
        return logits[..., f:logits.shape[-2] - f, f:logits.shape[-1] - f] if f else logits


def build_decoder(options, hidden_size: int, num_classes: int, image_channels: int,
                  patch_size: int, frame: int = 0) -> SegmentationDecoder:
    if 2 ** len(options.decoder_channels) > 4 * patch_size:
        raise TppError(f"segmentation.decoder_channels has {len(options.decoder_channels)} x2 stages for patch size "
                       f"{patch_size}: at most {int(math.log2(4 * patch_size))}.")
    return SegmentationDecoder(hidden_size, num_classes, image_channels, tuple(options.decoder_channels),
                               options.pixel_skip, frame)


def decoder_spec(options, num_classes: int, frame: int = 0) -> dict:
    """What the card records to rebuild the decoder (``frame`` only where there is one: older cards have none)."""
    return {"name": "progressive_upsampling", "channels": list(options.decoder_channels),
            "pixel_skip": options.pixel_skip, "num_classes": num_classes, **({"frame": frame} if frame else {})}


def decoder_from_spec(spec: dict, hidden_size: int, image_channels: int) -> SegmentationDecoder:
    """The decoder a card's spec describes; :func:`tpp.model.build_head` checks its frame against the card's input
    rule."""
    if not isinstance(spec, dict):
        raise ValueError(f"task.decoder must be an object, got {type(spec).__name__}")
    frame = spec.get("frame", 0)
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise ValueError(f"task.decoder.frame must be a whole number of pixels, 0 or more, got {frame!r:.40}")
    return SegmentationDecoder(hidden_size, spec["num_classes"], image_channels, tuple(spec["channels"]),
                               spec["pixel_skip"], frame)


def to_mask_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, K, H, W) logits resized (bilinear) to the stored mask size (h, w)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 - mean over foreground classes of the batch soft Dice. logits (B, K, h, w), masks (B, h, w) long."""
    probs = logits.float().softmax(dim=1)[:, 1:]
    onehot = F.one_hot(masks, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1 - ((2 * inter + 1) / (total + 1)).mean()


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Cross-entropy + ``dice_weight`` x soft Dice loss, at the masks' size. masks (B, h, w) long."""
    logits = to_mask_size(logits, masks.shape[-2:])
    return F.cross_entropy(logits.float(), masks) + dice_weight * soft_dice_loss(logits, masks)


def mask_to_image_size(mask, image: "np.ndarray"):
    """A predicted class-index mask (h, w) resized (nearest neighbour) to an input image's (H, W[, C])
    height and width, so it overlays the image as the user sent it. Returns uint8 (H, W)."""
    import numpy as np
    from PIL import Image

    mask = np.asarray(mask, dtype=np.uint8)
    height, width = image.shape[:2]
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask, "L").resize((width, height), Image.NEAREST))


def rle_encode(mask) -> dict:
    """Class-index mask (h, w) -> run-length JSON: row-major ``[value, run length]`` pairs.
    ``rle_decode`` inverts it."""
    import numpy as np

    flat = np.asarray(mask).reshape(-1)
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    lengths = np.diff(np.r_[starts, len(flat)])
    return {"format": "rle-row-major", "size": list(np.asarray(mask).shape),
            "counts": [[int(flat[s]), int(n)] for s, n in zip(starts, lengths)]}


def rle_decode(rle: dict):
    import numpy as np

    values = np.concatenate([np.full(n, v, dtype=np.uint8) for v, n in rle["counts"]])
    return values.reshape(rle["size"])
