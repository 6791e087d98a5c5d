"""Masked image modeling (MAE) pretext for the target parameters.

Two decoders:
- ``checkpoint``: a ViT-MAE checkpoint's own decoder, frozen (so truly only the target parameters
  learn); the encoder sees only the visible patches, as in MAE.
- ``fresh``: for backbones without a decoder (ViT, DINOv2). Masked patches are blanked in the input
  (set to 0, the normalised mean), the encoder sees every position, and a small per-token decoder,
  trained alongside and discarded afterwards, predicts the masked pixels (SimMIM-style).

Pieces (shapes for B images, N patches of p x p pixels, C channels, D encoder width):
  mask_noise -> encode_visible -> decode        (checkpoint decoder)
  mask_noise -> random_mask -> blank_patches -> FreshDecoder   (fresh decoder)
  patchify / masked_mse                          (both)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from tpp.backbones import Encoder, mae_mask_ratio
from tpp.errors import ConfigError, TppError
from tpp.pretext import register


@dataclass
class MAEOptions:
    mask_ratio: float = field(default=0.75, metadata={"help": "fraction of patches masked"})
    norm_pix_loss: bool = field(default=False, metadata={"help": "normalise each target patch by its own mean/std"})
    decoder: Literal["auto", "checkpoint", "fresh"] = field(default="auto", metadata={
        "help": "the checkpoint's frozen ViT-MAE decoder (auto, when it has one) or a fresh one trained alongside"})

    def __post_init__(self):
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"pretext.mask_ratio must be in (0, 1), got {self.mask_ratio}.")


def mask_noise(batch: int, num_patches: int, device=None) -> torch.Tensor:
    """Uniform noise (B, N); ViT-MAE keeps the patches with the smallest noise."""
    return torch.rand(batch, num_patches, device=device)


def encode_visible(encoder: Encoder, pixel_values: torch.Tensor, noise: torch.Tensor, mask_ratio: float):
    """Encode only the visible patches.

    pixel_values (B, C, H, W), noise (B, N) -> latent (B, 1 + N_keep, D), mask (B, N) with 1 = masked,
    ids_restore (B, N).
    """
    with mae_mask_ratio(encoder.base_config, mask_ratio):
        out = encoder.model(pixel_values=pixel_values, noise=noise, **encoder.size_kwargs(pixel_values))
    return out.last_hidden_state, out.mask, out.ids_restore


def random_mask(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """ViT-MAE's rule: keep the ``int(N * (1 - ratio))`` patches with the smallest noise.
    noise (B, N) -> mask (B, N), 1 = masked."""
    keep = int(noise.shape[1] * (1 - mask_ratio))
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return (ranks >= keep).to(noise.dtype)


def blank_patches(pixel_values: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Set masked patches to 0 (the normalised mean). (B, C, H, W), mask (B, N) -> (B, C, H, W)."""
    b, _, h, w = pixel_values.shape
    grid = mask.reshape(b, 1, h // patch_size, w // patch_size)
    keep = 1 - grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return pixel_values * keep.to(pixel_values.dtype)


class FreshDecoder(nn.Module):
    """Per-token MLP from encoder patch tokens to pixels: (B, N, D) -> (B, N, p * p * C)."""

    def __init__(self, hidden_size: int, patch_pixels: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                 nn.Linear(hidden_size, patch_pixels))

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        return self.net(patch_tokens)


def decode(decoder: nn.Module, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """latent (B, 1 + N_keep, D), ids_restore (B, N) -> predicted patches (B, N, p * p * C).
    The decoder's position embeddings are interpolated when N is not the checkpoint's patch count."""
    native = decoder.decoder_pos_embed.shape[1] - 1
    return decoder(latent, ids_restore, interpolate_pos_encoding=ids_restore.shape[1] != native).logits


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
    """``forward(pixel_values (B, C, H, W)) -> loss``. The backbone is frozen; the checkpoint decoder
    is frozen too, a fresh decoder trains with the target parameters."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, fresh: bool, mask_ratio: float, norm_pix_loss: bool):
        super().__init__()
        self.encoder, self.decoder, self.fresh = encoder, decoder, fresh
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        if not fresh:
            self.decoder.requires_grad_(False).eval()

    def forward(self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = mask_noise(len(pixel_values), self.encoder.num_patches(pixel_values), pixel_values.device)
        patch_size = self.encoder.base_config.patch_size
        if self.fresh:
            mask = random_mask(noise, self.mask_ratio)
            tokens = self.encoder(blank_patches(pixel_values, mask, patch_size))
            pred = self.decoder(self.encoder.patch_tokens(tokens))
        else:
            latent, mask, ids_restore = encode_visible(self.encoder, pixel_values, noise, self.mask_ratio)
            pred = decode(self.decoder, latent, ids_restore)
        target = patchify(pixel_values, patch_size)
        return masked_mse(pred.float(), target.float(), mask, self.norm_pix_loss)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.fresh:
            self.decoder.eval()  # frozen: no dropout, no statistics
        return self

    def card_entry(self) -> dict:
        decoder = ("fresh per-token MLP on blanked-patch inputs, trained alongside and discarded" if self.fresh
                   else "checkpoint's pre-trained ViT-MAE decoder, frozen")
        return {"name": "mae", "mask_ratio": self.mask_ratio, "norm_pix_loss": self.norm_pix_loss, "decoder": decoder}


@register("mae", MAEOptions, uses_checkpoint_decoder=lambda options: options.decoder != "fresh")
def build(encoder: Encoder, decoder: nn.Module | None, cfg: MAEOptions) -> MAEPretext:
    choice = cfg.decoder if cfg.decoder != "auto" else ("checkpoint" if decoder is not None else "fresh")
    if choice == "checkpoint":
        if decoder is None:
            held = getattr(encoder, "decoder_weights", None)
            what = (f"'{encoder.family.model_type}'" if encoder.family.model_type != "vit_mae" else
                    f"a ViT-MAE saved with part of its decoder ({held.describe()})" if held and held.present else
                    "a ViT-MAE saved without its decoder weights")
            raise TppError(f"pretext.decoder=checkpoint needs a ViT-MAE checkpoint with its decoder; this backbone "
                           f"is {what}. Use pretext.decoder=fresh (or auto).")
        return MAEPretext(encoder, decoder, False, cfg.mask_ratio, cfg.norm_pix_loss)
    cfg_model = encoder.base_config
    fresh = FreshDecoder(cfg_model.hidden_size, cfg_model.patch_size ** 2 * cfg_model.num_channels)
    return MAEPretext(encoder, fresh, True, cfg.mask_ratio, cfg.norm_pix_loss)
