"""A small U-Net trained from scratch: the task-specific reference for the segmentation benchmark.

Same data, split, mask fraction, augmentation, loss, batch size, step budget and metrics as the adapter
cells; the model differs (no backbone, every weight trained) and so does the loop: batches are drawn
with replacement and the learning rate follows a one-cycle schedule (the recipes use epochs and
warm-up + cosine). Input: the gray image, scaled to [0, 1].
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU())


class UNet(nn.Module):
    """``forward(x (B, C, H, W)) -> logits (B, K, H, W)``; H and W divisible by 2 ** len(widths)."""

    def __init__(self, channels: int, num_classes: int, widths=(16, 32, 64, 128)):
        super().__init__()
        self.down = nn.ModuleList(block(a, b) for a, b in zip((channels, *widths[:-1]), widths))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(block(2 * a, a) for a in widths[:-1])
        self.out = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.down):
            x = down(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(reversed(self.up), reversed(self.merge), reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.out(x)


def train_unet(dataset, fraction: float, seed: int, steps: int, batch_size: int, lr: float, dice_weight: float,
               augment_scale: tuple) -> dict:
    """Train on a fraction of the training masks and return test metrics (keys as the finetune recipe's).
    Any segmentation source: images and masks are arrays (``seg_npz``) or ``ImageFiles`` (``seg_folder``, decoded
    per batch), read a batch at a time either way."""
    from tpp.data.segmentation import joint_augment
    from tpp.data.stream import MaskTargets, stack
    from tpp.data.subsets import label_fraction_index
    from tpp.seg_metrics import segmentation_metrics
    from tpp.segmentation import segmentation_loss

    def pixels(images, index) -> torch.Tensor:
        """float (B, C, H, W) in [0, 1] of ``images[index]`` (uint8 (N, H, W[, C]))."""
        x = torch.from_numpy(stack(images, index)).float().div(255)
        return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)

    start = time.time()
    train = dataset.split("train")
    train = train.subset(label_fraction_index(train.labels, fraction, dataset.name, seed))
    targets = MaskTargets(train.masks)  # int64 (B, h, w) per batch
    torch.manual_seed(seed)
    model = UNet(1 if train.images.ndim == 3 else train.images.shape[-1], dataset.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=gen).numpy()
        images, masks = joint_augment(pixels(train.images, idx), targets[idx], augment_scale)
        loss = segmentation_loss(model(images), masks, dice_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    test = dataset.split("test")
    with torch.no_grad():
        pred = torch.cat([model(pixels(test.images, np.arange(i, min(i + 64, len(test))))).argmax(1)
                          for i in range(0, len(test), 64)])
    metrics = segmentation_metrics(pred, MaskTargets(test.masks), dataset.class_names)
    params = sum(p.numel() for p in model.parameters())
    return {"test": metrics, "trainable_parameters": params, "decoder_parameters": 0, "adapter_parameters": params,
            "head_bytes": 0,  # no head apart from the network: the whole U-Net is the per-site model
            "train_examples": len(train), "wall_time_s": round(time.time() - start, 3)}
