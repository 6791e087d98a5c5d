"""uint8 images -> the normalised float tensor a backbone takes; imports nothing of tpp (the image reader and
the data builders both use it)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_model_tensor(images: np.ndarray, channels: int, image_size: int, mean: list, std: list,
                    frame: int = 0) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> float32 (N, channels, image_size, image_size), normalised.

    Pixels are scaled to [0, 1], gray is replicated / RGB turned to luma as the backbone needs,
    images are resized (bilinear, antialiased) when their size differs, then ``(x - mean) / std``.
    ``frame`` > 0 (a padding visual prompt): the image is brought to ``image_size - 2 * frame`` instead (not
    resampled when it has that size) and a ``frame``-px border of zeros is put around it, outside the image.
    """
    inner = image_size - 2 * frame
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] == 1 and channels > 1:
        x = x.expand(-1, channels, -1, -1)
    elif x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if x.shape[-1] != inner or x.shape[-2] != inner:
        x = F.interpolate(x, size=(inner, inner), mode="bilinear", antialias=True, align_corners=False)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    return (F.pad(x, (frame,) * 4) if frame else x).contiguous()
