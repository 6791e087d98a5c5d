"""The inference model of every suite approach, built (untrained) for counting its cost.

A *spec* is JSON-able, so a fresh subprocess can rebuild the same model for the peak-memory measurement:
``{"approach", "kind": "classification" | "segmentation", "channels", "classes", "size", "backbone",
"resnet_widths", "decoder"}``. Generalist approaches are the shared backbone at ``size`` pixels with the
approach's target parameters (LoRA unmerged, as a per-site adapter is served; TPP changes the initialisation,
not the architecture; MoVL: the padding prompt of the 36-px input, the backbone frozen) and the task head (linear
on the mean patch token, or the segmentation decoder);
task-specific ones are the ResNet-18 (28) and the U-Net; in-context approaches are the frozen backbone (+ the learned
in-context model) per query (suite_incontext.build_model).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

TASK_SPECIFIC = {"resnet18": "classification", "unet": "segmentation"}
LORA = {"r": 8, "alpha": 16}  # the protocols' rank (tpp_gain.PROTOCOL, seg_gain.PROTOCOL)


def adapter_of(approach: str) -> tuple[str, dict]:
    """'lora+tpp_mae' -> ('lora', {r, alpha}); 'full' -> ('full', {}); 'lora@mask_res' -> LoRA; 'movl' and
    'movl+tpp' -> ('movl', {mode: pad, pad: 4, input_size: 36}); prototype and knn -> ('frozen features', {}): one
    inference model, one cost measurement."""
    if approach in ("prototype", "knn"):
        return "frozen features", {}
    if approach.split("+")[0] == "movl":  # movl.py's prompt (pad 4 around the 28-px image, 36 px in all)
        from movl import PROTOCOL

        return "movl", dict(PROTOCOL["prompt"])
    base = approach.split("+")[0].split("@")[0]
    return base, (dict(LORA) if base == "lora" else {})


def build(spec: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model of ``spec`` in eval mode and one example input (1, C, size, size)."""
    torch.manual_seed(0)
    approach, kind = spec["approach"], spec["kind"]
    if approach in ("prototype", "knn", "incontext_learned"):
        from suite_incontext import build_model

        return build_model(spec)
    if approach == "resnet18":
        from resnet import ResNet18

        model = ResNet18(spec["channels"], spec["classes"], tuple(spec.get("resnet_widths") or (64, 128, 256, 512)))
        channels = spec["channels"]
    elif approach == "unet":
        from unet import UNet

        model, channels = UNet(spec["channels"], spec["classes"]), spec["channels"]
    else:
        model, channels = _generalist(spec, kind)
    return model.eval(), torch.randn(1, channels, spec["size"], spec["size"])


def _generalist(spec: dict, kind: str) -> tuple[torch.nn.Module, int]:
    from tpp.backbones import load_backbone
    from tpp.model import TaskModel, attach_adapter

    encoder, info, _ = load_backbone(spec["backbone"], input_size=spec["size"])
    method, options = adapter_of(spec["approach"])
    attach_adapter(encoder, method, options)
    if kind == "classification":
        from tpp.tasks.classification import ClassificationHead

        head = ClassificationHead(info.hidden_size, spec["classes"])
    else:
        from tpp.segmentation import SegmentationDecoder

        decoder = spec.get("decoder") or {"channels": [64, 32], "pixel_skip": True}
        head = SegmentationDecoder(info.hidden_size, spec["classes"], info.channels, tuple(decoder["channels"]),
                                   decoder["pixel_skip"])
    return TaskModel(encoder, head), info.channels
