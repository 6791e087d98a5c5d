"""Frozen features for in-context prediction: the backbone alone, or the backbone with a TPP / LoRA adapter.

The backbone is never written: an adapter goes onto a shared-weight copy (as the serving bank does it) and the
backbone's content hash is compared after attaching. Images are brought to the model input as the serving
input rule does it (:func:`tpp.data.images.to_model_input`, with ``file_resize``: PIL bilinear to the input
size), at the backbone's native size for classification and at ``image_size`` (default 64 px) for
segmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tpp.errors import TppError

SEG_SIZE = 64  # pixels fed to the encoder for segmentation (BUSI at 64 px: a 16 x 16 grid on 4-px patches)


def check_tokens(size: int, patch: int) -> None:
    """At most :data:`tpp.backbones.MAX_PATCH_TOKENS` patch tokens per image (``size`` px on ``patch``-px
    patches), as tpp trains, evaluates and serves: more ran out of memory in the encoder (a traceback, or the
    process killed), after the context had been read."""
    from tpp.backbones import MAX_PATCH_TOKENS

    if (size // patch) ** 2 > MAX_PATCH_TOKENS:
        raise TppError(f"image size {size} px gives {(size // patch) ** 2:,} patch tokens per image on this backbone "
                       f"(patch {patch}), more than the {MAX_PATCH_TOKENS:,} tpp runs a backbone at; use at most "
                       f"{int(MAX_PATCH_TOKENS ** 0.5) * patch} px (--image-size, image_size=).")


@dataclass
class Extractor:
    """An encoder (backbone, or a shared-weight copy carrying an adapter) and how images enter it."""
    encoder: object  # tpp.backbones.Encoder
    info: object  # tpp.backbones.BackboneInfo
    device: torch.device
    adapter: str | None = None  # "<path>" of the adapter whose features these are
    precision: str = "fp32"  # fp32, or bf16 / fp16 under torch.autocast (features come back as float32)

    def rule(self, channels: int, size: int | None = None) -> dict:
        """The input rule (as an adapter card's ``input``) for images of ``channels`` (1 or 3) at ``size`` px."""
        size = size or self.info.input_size or self.info.image_size
        if size % self.info.patch_size:
            raise TppError(f"image size {size} is not a multiple of the backbone's patch size {self.info.patch_size}.")
        check_tokens(int(size), self.info.patch_size)
        self.check_adapter_input(int(size))
        return {"image_channels": channels, "channels": self.info.channels, "image_size": int(size),
                "mean": list(self.info.mean), "std": list(self.info.std), "file_resize": True}

    def check_adapter_input(self, size: int) -> None:
        """Refuse an adapter whose input differs from what in-context prediction feeds it: a padding visual prompt
        (``mode: pad``, alone or a part of a composed method) frames each image inside its prompt border, which
        the context and query images here are not (the prompt would overwrite the image's border); a visual
        prompt made for another input size than ``size`` px could not be applied."""
        if not self.adapter:
            return
        from tpp.adapters.visual_prompt import prompt_modules
        from tpp.model import input_frame

        frame = input_frame(self.encoder.model)
        if frame:
            raise TppError(f"adapter '{self.adapter}' holds a padding visual prompt (mode pad): it frames every image "
                           f"inside a {frame}-px prompt border, which in-context prediction does not do (the prompt "
                           "would overwrite the image's border). In-context prediction takes adapters without a "
                           "padding prompt (LoRA, TPP, a visual prompt of mode full), or the backbone alone.")
        sizes = sorted({int(m.size) for m in prompt_modules(self.encoder.model)} - {size})
        if sizes:
            raise TppError(f"adapter '{self.adapter}' holds a visual prompt made for {sizes[0]}-px inputs, but "
                           f"in-context prediction would feed the encoder {size}-px images; pass --image-size "
                           f"{sizes[0]} (image_size= in Python), or use another adapter.")

    @torch.no_grad()
    def tokens(self, arrays: list[np.ndarray], rule: dict, batch_size: int = 64) -> torch.Tensor:
        """uint8 images -> patch tokens (B, N, D) float32 on the CPU (N = grid rows x columns, raster order)."""
        from tpp import devices
        from tpp.data.images import to_model_input

        out = []
        for start in range(0, len(arrays), batch_size):
            pixels = torch.cat([to_model_input(a, rule) for a in arrays[start:start + batch_size]]).to(self.device)
            with devices.autocast(self.device, self.precision):
                tokens = self.encoder.patch_tokens(self.encoder(pixels))
            out.append(tokens.float().cpu())
        return torch.cat(out)

    def features(self, arrays: list[np.ndarray], rule: dict, batch_size: int = 64) -> torch.Tensor:
        """uint8 images -> one feature per image (B, D): the mean of its patch tokens."""
        return self.tokens(arrays, rule, batch_size).mean(1)

    def grid(self, rule: dict) -> tuple[int, int]:
        side = rule["image_size"] // self.info.patch_size
        return side, side


def load_extractor(backbone: str, device: str = "cpu", precision: str = "fp32") -> Extractor:
    """The frozen backbone (``builtin:NAME``, a folder or a cached hub id) on ``device``, its forward passes in
    ``precision`` (fp32; bf16 / fp16 under autocast, checked against the device first). An adapter goes on top
    with :func:`tpp.serve.adapter_features.with_adapter` (it is checked as the store checks adapters)."""
    from tpp import devices
    from tpp.backbones import load_backbone

    where = devices.resolve(device, "--device")
    devices.check_precision(precision, where)
    encoder, info, _ = load_backbone(backbone)
    encoder.model.to(where)
    return Extractor(encoder, info, where, precision=precision)
