"""A backbone's own classification head (its "source classifier"), read from what the backbone directory saves,
with the pooling it reads recorded beside it: what label mapping (``tpp/label_mapping.py``) maps to target classes.

Two saved formats:

- tpp's ``pretrain_backbone``: ``tpp_source_heads.safetensors`` (``<dataset>.weight`` (K, D), ``<dataset>.bias``
  (K,)) beside the checkpoint, described in ``tpp_backbone_card.json`` under ``source_classifier``: the pooling
  (``mean_patch_tokens``: the heads were trained on the mean of the patch tokens of the unmasked encoder) and per
  head its label names;
- a transformers ``ViTForImageClassification`` checkpoint (hub style): ``classifier.weight`` / ``classifier.bias``
  in ``model.safetensors``, label names from ``config.id2label``, pooling ``cls_token`` (the final-layernormed CLS
  token, as transformers computes the logits).

Shapes: tokens (B, P + N, D) with P prefix tokens (CLS ...), features (B, D), logits (B, K).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from tpp.errors import TppError

HEADS_FILE = "tpp_source_heads.safetensors"
BACKBONE_CARD = "tpp_backbone_card.json"
POOLINGS = ("mean_patch_tokens", "cls_token")


@dataclass
class SourceClassifier:
    """One saved classification head: ``weight`` (K, D), ``bias`` (K,), the pooling it reads, its label names."""
    name: str
    weight: torch.Tensor
    bias: torch.Tensor
    pooling: str
    label_names: list

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


def pool(tokens: torch.Tensor, pooling: str, num_prefix_tokens: int) -> torch.Tensor:
    """(B, P + N, D) encoder tokens -> (B, D) features: the CLS token, or the mean of the N patch tokens."""
    if pooling == "cls_token":
        if num_prefix_tokens < 1:
            raise TppError("this source classifier reads the CLS token, but the encoder's output has none.")
        return tokens[:, 0]
    return tokens[:, num_prefix_tokens:].mean(dim=1)


def _resolve(path) -> Path:
    from tpp.backbones import resolve_backbone

    local = Path(resolve_backbone(str(path)))
    if not local.is_dir():
        raise TppError(f"backbone '{path}' is not a local checkpoint directory: label mapping reads its saved "
                       "classification head from the directory (download it first, e.g. with huggingface-cli).")
    return local


def _read_safetensors(file: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            missing = [k for k in keys if k not in fh.keys()]
            if missing:
                raise TppError(f"'{file}' lacks {', '.join(missing)}: it holds no such classification head.")
            return {k: fh.get_tensor(k) for k in keys}
    except (SafetensorError, OSError) as exc:
        raise TppError(f"'{file}' is not a readable safetensors file ({exc}).") from None


def available(path) -> list[str]:
    """Names of the source classifiers a backbone directory saves ([] when none)."""
    local = _resolve(path)
    card = local / BACKBONE_CARD
    if card.is_file():
        entry = json.loads(card.read_text()).get("source_classifier") or {}
        return list(entry.get("heads", {}))
    config = json.loads((local / "config.json").read_text()) if (local / "config.json").is_file() else {}
    architectures = config.get("architectures") or []
    return ["classifier"] if any(a.endswith("ForImageClassification") for a in architectures) else []


def load_source_classifier(path, name: str | None = None) -> SourceClassifier:
    """The saved head ``name`` (default: the only one, else the first the card lists) of the backbone at ``path``;
    a TppError naming the directory and the fix when it saves none or the file does not fit its description."""
    local = _resolve(path)
    names = available(path)
    if not names:
        raise TppError(f"backbone '{path}' saves no classification head, so label mapping has no source classes. "
                       "Use classification.output_mapping=probe, or a backbone with one: pretrain_backbone with "
                       "supervised pool entries, or a transformers *ForImageClassification checkpoint.")
    chosen = name or names[0]
    if chosen not in names:
        raise TppError(f"backbone '{path}' has no source classifier '{chosen}'; it has {', '.join(names)} "
                       "(classification.source_head).")
    if (local / BACKBONE_CARD).is_file():
        entry = json.loads((local / BACKBONE_CARD).read_text())["source_classifier"]
        pooling, labels = entry.get("pooling"), entry["heads"][chosen].get("label_names")
        tensors = _read_safetensors(local / entry.get("file", HEADS_FILE), [f"{chosen}.weight", f"{chosen}.bias"])
        weight, bias = tensors[f"{chosen}.weight"], tensors[f"{chosen}.bias"]
    else:
        config = json.loads((local / "config.json").read_text())
        file = local / "model.safetensors"
        if not file.is_file():
            raise TppError(f"'{local}' has no model.safetensors; tpp reads classification heads from safetensors only.")
        tensors = _read_safetensors(file, ["classifier.weight", "classifier.bias"])
        weight, bias, pooling = tensors["classifier.weight"], tensors["classifier.bias"], "cls_token"
        id2label = config.get("id2label") or {}
        labels = [id2label.get(str(i), f"LABEL_{i}") for i in range(weight.shape[0])]
    if pooling not in POOLINGS:
        raise TppError(f"backbone '{path}': source classifier pooling {pooling!r} is not one of {', '.join(POOLINGS)}.")
    if weight.dim() != 2 or bias.shape != (weight.shape[0],):
        raise TppError(f"backbone '{path}': source classifier '{chosen}' has weight {tuple(weight.shape)} and bias "
                       f"{tuple(bias.shape)}; expected (K, D) and (K,).")
    return SourceClassifier(chosen, weight.float(), bias.float(), pooling, list(labels or []))


def source_logits(encoder, classifier: SourceClassifier, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, K): the source classifier on the encoder's tokens, pooled as it was trained."""
    features = pool(encoder(pixel_values), classifier.pooling, encoder.family.num_prefix_tokens)
    return nn.functional.linear(features, classifier.weight.to(features), classifier.bias.to(features))
