"""Frozen features for in-context prediction: the backbone alone, or the backbone with a TPP / LoRA adapter.

The backbone is never written: an adapter goes onto a shared-weight copy (as the serving bank does it) and the
backbone's content hash is compared after attaching. Images are brought to the model input as the serving
input rule does it (:func:`tpp.serve.images.to_model_input`, with ``file_resize``: PIL bilinear to the input
size), at the backbone's native size for classification and at ``image_size`` (default 64 px) for
segmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tpp.errors import TppError

SEG_SIZE = 64  # pixels fed to the encoder for segmentation (BUSI at 64 px: a 16 x 16 grid on 4-px patches)


@dataclass
class Extractor:
    """An encoder (backbone, or a shared-weight copy carrying an adapter) and how images enter it."""
    encoder: object  # tpp.backbones.Encoder
    info: object  # tpp.backbones.BackboneInfo
    device: torch.device
    adapter: str | None = None  # "<path>" of the adapter whose features these are

    def rule(self, channels: int, size: int | None = None) -> dict:
        """The input rule (as an adapter card's ``input``) for images of ``channels`` (1 or 3) at ``size`` px."""
        size = size or self.info.input_size or self.info.image_size
        if size % self.info.patch_size:
            raise TppError(f"image size {size} is not a multiple of the backbone's patch size {self.info.patch_size}.")
        return {"image_channels": channels, "channels": self.info.channels, "image_size": int(size),
                "mean": list(self.info.mean), "std": list(self.info.std), "file_resize": True}

    @torch.no_grad()
    def tokens(self, arrays: list[np.ndarray], rule: dict, batch_size: int = 64) -> torch.Tensor:
        """uint8 images -> patch tokens (B, N, D) float32 on the CPU (N = grid rows x columns, raster order)."""
        from tpp.serve.images import to_model_input

        out = []
        for start in range(0, len(arrays), batch_size):
            pixels = torch.cat([to_model_input(a, rule) for a in arrays[start:start + batch_size]]).to(self.device)
            out.append(self.encoder.patch_tokens(self.encoder(pixels)).float().cpu())
        return torch.cat(out)

    def features(self, arrays: list[np.ndarray], rule: dict, batch_size: int = 64) -> torch.Tensor:
        """uint8 images -> one feature per image (B, D): the mean of its patch tokens."""
        return self.tokens(arrays, rule, batch_size).mean(1)

    def grid(self, rule: dict) -> tuple[int, int]:
        side = rule["image_size"] // self.info.patch_size
        return side, side


def load_extractor(backbone: str, adapter: str | None = None, device: str = "cpu") -> Extractor:
    """The backbone (``builtin:NAME``, a folder or a cached hub id) and, optionally, the adapter of a TPP or
    fine-tuning run (its folder or its run folder) on top of it."""
    from tpp import devices
    from tpp.api import quiet
    from tpp.backbones import load_backbone

    where = devices.resolve(device, "--device")
    with quiet():
        encoder, info, _ = load_backbone(backbone)
    encoder.model.to(where)
    extractor = Extractor(encoder, info, where)
    return with_adapter(extractor, adapter) if adapter else extractor


def with_adapter(extractor: Extractor, adapter: str) -> Extractor:
    """A copy of ``extractor`` whose encoder carries ``adapter`` (checked as a store checks one: registered
    adapter method, tensor names by its key rule, finite floats, trained on this backbone). Shared weights:
    the backbone is not copied, and its hash must be unchanged afterwards."""
    from tpp.adapter_dir import CARD, verify_backbone
    from tpp.adapters import check_tensor_names
    from tpp.backbones import Encoder, backbone_hash
    from tpp.model import attach_adapter, load_adapter_state
    from tpp.serve.bank import move_own_tensors, share_weights_copy
    from tpp.serve.integrity import adapter_method, parse_tensors
    from tpp.serve.integrity import parse_card
    from tpp.serve.store import _adapter_dir, _read_regular

    path = _adapter_dir(adapter)
    card = parse_card(_read_regular(path / CARD) if (path / CARD).is_file() else None, str(path))
    method = adapter_method(card, str(path))
    weights = card.get("weights_file")
    state = parse_tensors({weights: _read_regular(path / weights)}, weights, str(path)) if weights else {}
    check_tensor_names(method, state, str(path))
    verify_backbone(card, extractor.info, str(path))
    base = extractor.encoder
    encoder = Encoder(share_weights_copy(base.model), base.family)
    attach_adapter(encoder, card["method"], card["options"], card["target_modules"])
    move_own_tensors(encoder.model, extractor.device)
    load_adapter_state(encoder, {k: v.to(extractor.device) for k, v in state.items()}, str(path))
    if backbone_hash(base.model) != extractor.info.hash:
        raise TppError(f"adapter '{path}' changed the backbone's weights while it was attached; refused.")
    return Extractor(encoder.eval(), extractor.info, extractor.device, str(path))
