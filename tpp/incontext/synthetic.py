"""Synthetic in-context tasks at 64 px (Neuralizer / UniverSeg style): each generator draws one *task* (its
rule fixed for the episode) and applies it to ``n`` images, giving ``n`` (input, output) pairs.

Every generator: ``(rng, images (M, H, W) float in [0, 1] (a pool of real unlabeled images), n) -> (inputs
(n, H, W), outputs (n, H, W))`` float32 in [0, 1]. Segmentation
generators give binary outputs; ``denoise`` and ``inpaint`` give images (regression).

- ``shapes``: random ellipses / rectangles on smooth noise; the foreground is one shape kind at one contrast,
  the other kind appears as a distractor.
- ``threshold``: a smoothed real image above (or below) a per-task quantile of its intensity.
- ``superpixel``: the brightest, darkest or most central superpixel-like region of a real image.
- ``denoise``: a real image plus Gaussian noise of a per-task sigma -> the clean image.
- ``inpaint``: a real image with a box blanked (per-task box size) -> the full image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SEGMENTATION_TASKS = ("shapes", "threshold", "superpixel")
REGRESSION_TASKS = ("denoise", "inpaint")


def smooth(images: np.ndarray, passes: int = 2) -> np.ndarray:
    """(M, H, W) -> the same, box-blurred ``passes`` times with a 5 x 5 kernel (reflect padding)."""
    x = torch.as_tensor(images, dtype=torch.float32)[:, None]
    for _ in range(passes):
        x = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    return x[:, 0].numpy()


def superpixels(images: np.ndarray, grid: int = 4, iterations: int = 5, compactness: float = 0.3,
                chunk: int = 128) -> np.ndarray:
    """SLIC-like regions: k-means on (y, x, intensity) from a ``grid`` x ``grid`` of seeds. (M, H, W) in
    [0, 1] -> (M, H, W) int64 region ids in [0, grid ** 2)."""
    out = []
    m, h, w = images.shape
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], -1) * compactness * grid  # (P, 2)
    seeds = (torch.arange(grid) + 0.5) / grid
    sy, sx = torch.meshgrid(seeds, seeds, indexing="ij")
    seed_pos = torch.stack([sy.flatten(), sx.flatten()], -1) * compactness * grid  # (G, 2)
    for start in range(0, m, chunk):
        x = torch.as_tensor(smooth(images[start:start + chunk], 1)).flatten(1)  # (B, P)
        feats = torch.cat([pos[None].expand(len(x), -1, -1), x[..., None]], -1)  # (B, P, 3)
        seed_index = (seed_pos / (compactness * grid) * torch.tensor([h - 1, w - 1])).round().long()
        centres = torch.cat([seed_pos[None].expand(len(x), -1, -1),
                             x[:, seed_index[:, 0] * w + seed_index[:, 1], None]], -1)  # (B, G, 3)
        for _ in range(iterations):
            assign = torch.cdist(feats, centres).argmin(-1)  # (B, P)
            onehot = F.one_hot(assign, grid * grid).float()  # (B, P, G)
            counts = onehot.sum(1)[..., None]
            centres = torch.where(counts > 0, onehot.transpose(1, 2) @ feats / counts.clamp_min(1), centres)
        out.append(assign.view(len(x), h, w).numpy())
    return np.concatenate(out)


def _pick(rng, images, n):
    """``n`` images of the pool (with replacement only when it is smaller), each flipped left-right or not."""
    index = rng.choice(len(images), n, replace=len(images) < n)
    flips = rng.random(n) < 0.5
    return np.where(flips[:, None, None], images[index][:, :, ::-1], images[index]).astype(np.float32)


def shapes(rng, images, n):
    size = images.shape[-1]
    kinds = rng.permutation(2)  # target kind, distractor kind (0 ellipse, 1 rectangle)
    contrast = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.5)
    yy, xx = np.mgrid[0:size, 0:size] / size
    inputs, outputs = [], []
    for _ in range(n):
        img = smooth(rng.random((1, size, size)), 2)[0] * rng.uniform(0.2, 0.6) + rng.uniform(0.2, 0.5)
        mask = np.zeros((size, size), bool)
        for j in range(rng.integers(1, 4) + rng.integers(0, 3)):
            kind = kinds[0] if j == 0 or rng.random() < 0.5 else kinds[1]
            cy, cx = rng.uniform(0.15, 0.85, 2)
            ry, rx = rng.uniform(0.05, 0.2, 2)
            shape = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) if kind == 0 else \
                ((np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx))
            img = np.where(shape, img + contrast * (1 if kind == kinds[0] else -0.7), img)
            mask = (mask | shape) if kind == kinds[0] else (mask & ~shape)
        inputs.append(np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1))
        outputs.append(mask)
    return np.stack(inputs).astype(np.float32), np.stack(outputs).astype(np.float32)


def threshold(rng, images, n):
    imgs = _pick(rng, images, n)
    q, above = rng.uniform(0.5, 0.9), rng.random() < 0.5
    smoothed = smooth(imgs, 2)
    cut = np.quantile(smoothed.reshape(n, -1), q if above else 1 - q, axis=1)[:, None, None]
    return imgs, (smoothed > cut if above else smoothed < cut).astype(np.float32)


def superpixel(rng, images, n):
    imgs = _pick(rng, images, n)
    mps = superpixels(imgs)
    rule = rng.choice(["brightest", "darkest", "centre"])
    outputs = []
    for img, mp in zip(imgs, mps):
        ids = np.unique(mp)
        if rule == "centre":
            chosen = mp[mp.shape[0] // 2, mp.shape[1] // 2]
        else:
            means = np.array([img[mp == i].mean() for i in ids])
            chosen = ids[np.argmax(means) if rule == "brightest" else np.argmin(means)]
        outputs.append(mp == chosen)
    return imgs, np.stack(outputs).astype(np.float32)


def denoise(rng, images, n):
    imgs = _pick(rng, images, n)
    sigma = rng.uniform(0.05, 0.3)
    return np.clip(imgs + rng.normal(0, sigma, imgs.shape), 0, 1).astype(np.float32), imgs


def inpaint(rng, images, n):
    imgs = _pick(rng, images, n)
    side = int(rng.integers(8, 25))
    inputs = imgs.copy()
    for img in inputs:
        y, x = rng.integers(0, img.shape[0] - side, 2)
        img[y:y + side, x:x + side] = 0.0
    return inputs, imgs


GENERATORS = {"shapes": shapes, "threshold": threshold, "superpixel": superpixel, "denoise": denoise,
              "inpaint": inpaint}
