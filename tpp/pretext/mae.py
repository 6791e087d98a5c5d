"""Masked image modeling (MAE) pretext with the checkpoint's own decoder, frozen.

Pieces (shapes for B images, N patches of p x p pixels, C channels, D encoder width):
  mask_noise -> encode_visible -> decode -> patchify / masked_mse.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from tpp.backbones import Encoder, mae_mask_ratio
from tpp.errors import TppError
from tpp.pretext import register


def mask_noise(batch: int, num_patches: int, device=None) -> torch.Tensor:
    """Uniform noise (B, N); ViT-MAE keeps the patches with the smallest noise."""
    return torch.rand(batch, num_patches, device=device)


def encode_visible(encoder: Encoder, pixel_values: torch.Tensor, noise: torch.Tensor, mask_ratio: float):
    """Encode only the visible patches.

    pixel_values (B, C, H, W), noise (B, N) -> latent (B, 1 + N_keep, D), mask (B, N) with 1 = masked,
    ids_restore (B, N).
    """
    with mae_mask_ratio(encoder.base_config, mask_ratio):
        out = encoder.model(pixel_values=pixel_values, noise=noise)
    return out.last_hidden_state, out.mask, out.ids_restore


def decode(decoder: nn.Module, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """latent (B, 1 + N_keep, D), ids_restore (B, N) -> predicted patches (B, N, p * p * C)."""
    return decoder(latent, ids_restore).logits


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p * p * C), in ViT-MAE's order (row-major patches, then p, p, C)."""
    b, c, h, w = pixel_values.shape
    p = patch_size
    x = pixel_values.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error over masked patches only. pred/target (B, N, P), mask (B, N) -> scalar."""
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


class MAEPretext(nn.Module):
    """``forward(pixel_values (B, C, H, W)) -> loss``; only the encoder's target parameters train."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, mask_ratio: float, norm_pix_loss: bool):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.decoder.requires_grad_(False).eval()

    def forward(self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = mask_noise(len(pixel_values), self.encoder.num_patches, pixel_values.device)
        latent, mask, ids_restore = encode_visible(self.encoder, pixel_values, noise, self.mask_ratio)
        pred = decode(self.decoder, latent, ids_restore)
        target = patchify(pixel_values, self.encoder.base_config.patch_size)
        return masked_mse(pred.float(), target.float(), mask, self.norm_pix_loss)

    def train(self, mode: bool = True):
        super().train(mode)
        self.decoder.eval()  # frozen: no dropout, no statistics
        return self

    def card_entry(self) -> dict:
        return {"name": "mae", "mask_ratio": self.mask_ratio, "norm_pix_loss": self.norm_pix_loss,
                "decoder": "checkpoint's pre-trained ViT-MAE decoder, frozen"}


@register("mae")
def build(encoder: Encoder, decoder: nn.Module | None, cfg) -> MAEPretext:
    if decoder is None or encoder.family.model_type != "vit_mae":
        raise TppError(f"the MAE pretext needs a ViT-MAE checkpoint with its decoder; this backbone is "
                       f"'{encoder.family.model_type}'. A fresh decoder for other families is not built yet.")
    return MAEPretext(encoder, decoder, cfg.mask_ratio, cfg.norm_pix_loss)
