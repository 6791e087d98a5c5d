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


def _read_json(file: Path) -> dict:
    """A JSON object from ``file``; a TppError naming the file and the problem otherwise."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TppError(f"'{file}' cannot be read as JSON ({type(exc).__name__}: {exc}); restore the file the "
                       "backbone was saved with.") from None
    if not isinstance(value, dict):
        raise TppError(f"'{file}' must hold a JSON object, not a {type(value).__name__}; restore the file the "
                       "backbone was saved with.")
    return value


def _card_entry(local: Path) -> dict:
    """The card's ``source_classifier`` entry, checked: ``heads`` maps names to objects whose ``label_names`` is a
    list of strings, ``pooling`` a string and ``file`` a plain file name (no folder, no ``..``) inside ``local``.
    {} when the card describes no head."""
    card = local / BACKBONE_CARD
    entry = _read_json(card).get("source_classifier") or {}

    def bad(what: str) -> TppError:
        return TppError(f"'{card}': source_classifier.{what}; restore the card the backbone was saved with.")

    if not isinstance(entry, dict):
        raise bad(f"must be an object, not a {type(entry).__name__}")
    heads = entry.get("heads", {})
    if not isinstance(heads, dict):
        raise bad(f"heads must map head names to objects, not be a {type(heads).__name__}")
    for name, head in heads.items():
        labels = head.get("label_names") if isinstance(head, dict) else None
        if not isinstance(head, dict) or not (labels is None or isinstance(labels, list)
                                             and all(isinstance(x, str) for x in labels)):
            raise bad(f"heads.{name} must be an object whose label_names is a list of strings")
    if not isinstance(entry.get("pooling"), (str, type(None))):
        raise bad(f"pooling must be a string, got {entry['pooling']!r}")
    file = entry.get("file", HEADS_FILE)
    if (not isinstance(file, str) or file in ("", ".", "..") or any(c in file for c in "/\\\0:")
            or Path(file).name != file or not _inside(local / file, local)):
        raise bad(f"file must be a plain file name inside the backbone directory, got {file!r}")
    return entry


def _inside(file: Path, local: Path) -> bool:
    """``file`` (a symlink followed) lies in the backbone directory ``local``, or, for a Hugging Face cache
    snapshot (``.../snapshots/<rev>``, whose files link to ``../../blobs/``), in that repository's ``blobs/``."""
    roots = [local.resolve()]
    if local.parent.name == "snapshots":
        roots.append((local.parent.parent / "blobs").resolve())
    try:
        target = file.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return any(target.parent == root for root in roots)


def available(path) -> list[str]:
    """Names of the source classifiers a backbone directory saves ([] when none)."""
    local = _resolve(path)
    if (local / BACKBONE_CARD).is_file():
        return list(_card_entry(local).get("heads", {}))
    config = _read_json(local / "config.json") if (local / "config.json").is_file() else {}
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        return []
    return ["classifier"] if any(str(a).endswith("ForImageClassification") for a in architectures) else []


def load_source_classifier(path, name: str | None = None) -> SourceClassifier:
    """The saved head ``name`` (default: the only one, else the first the card lists) of the backbone at ``path``;
    a TppError naming the directory and the fix when it saves none or the file does not fit its description.
    The backbone directory is read as untrusted: its card names the heads file by a plain name inside it."""
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
        entry = _card_entry(local)
        pooling, labels = entry.get("pooling"), entry["heads"][chosen].get("label_names")
        tensors = _read_safetensors(local / entry.get("file", HEADS_FILE), [f"{chosen}.weight", f"{chosen}.bias"])
        weight, bias = tensors[f"{chosen}.weight"], tensors[f"{chosen}.bias"]
    else:
        config = _read_json(local / "config.json")
        file = local / "model.safetensors"
        if not file.is_file():
            raise TppError(f"'{local}' has no model.safetensors; tpp reads classification heads from safetensors only.")
        tensors = _read_safetensors(file, ["classifier.weight", "classifier.bias"])
        weight, bias, pooling = tensors["classifier.weight"], tensors["classifier.bias"], "cls_token"
        id2label = config.get("id2label") or {}
        if not isinstance(id2label, dict):
            raise TppError(f"'{local / 'config.json'}': id2label must map class indices to names.")
        labels = [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(weight.shape[0])]
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
