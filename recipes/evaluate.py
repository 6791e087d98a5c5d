"""Evaluate a saved adapter directory (with its classification head or segmentation decoder) on any split.

    tpp run evaluate --config recipes/configs/breast_us/mae_vit_tiny_lora_finetune.yaml \
        adapter.path=runs/breast/adapter data.split=test output_dir=runs/breast_eval

Writes ``metrics.json`` as ``{"<split>": {...}}``.
"""
from __future__ import annotations

import torch

from tpp.adapter_dir import load_head, read_card, read_weights, verify_backbone
from tpp.backbones import load_backbone
from tpp.builders import check_same_split, record_skipped, require_labels, tensors
from tpp.data.build import load_data
from tpp.errors import ConfigError, TppError
from tpp.metrics import classification_metrics
from tpp.model import TaskModel, attach_adapter, load_adapter_state
from tpp.seg_metrics import segmentation_metrics
from tpp.segmentation import SegmentationModel, to_mask_size
from tpp.training import build_accelerator, predict, predict_probs


def load_task_model(path: str, backbone_path: str, mean=None, std=None):
    """Backbone + adapter directory (verified against the card) -> (TaskModel or SegmentationModel in
    eval mode, card, info). The input size is the card's."""
    card = read_card(path, kinds=("adapter", "full_model"))
    task = card.get("task", {}).get("type")
    if task not in ("classification", "segmentation"):
        raise TppError(f"adapter '{path}' has no task head (stage {card.get('stage')!r}); "
                       "fine-tune it first (tpp run finetune ... adapter.init_from=...).")
    encoder, info, _ = load_backbone(backbone_path, mean, std, input_size=card.get("input", {}).get("image_size"))
    verify_backbone(card, info, path)
    attach_adapter(encoder, card["method"], card["options"], card["target_modules"])
    load_adapter_state(encoder, read_weights(path, card), path)
    head = load_head(path, card, info.hidden_size)
    model = SegmentationModel(encoder, head) if task == "segmentation" else TaskModel(encoder, head)
    return model.eval(), card, info


def check(cfg) -> None:
    """What this recipe needs of the config alone (``tpp validate`` runs it too)."""
    if not cfg.adapter.path:
        raise ConfigError("the evaluate recipe needs adapter.path=DIR (an adapter directory with a head).")


def run(cfg, run) -> dict:
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run)
    model, card, info = load_task_model(cfg.adapter.path, cfg.backbone.path, cfg.backbone.mean, cfg.backbone.std)
    dataset = load_data(cfg.data, cfg.seed, info.input_size)
    record_skipped([dataset], run)
    segmentation = card["task"]["type"] == "segmentation"
    if segmentation != dataset.is_segmentation:
        raise TppError(f"adapter '{cfg.adapter.path}' is a {card['task']['type']} adapter; dataset '{dataset.name}' "
                       f"({cfg.data.source}) {'has' if dataset.is_segmentation else 'has no'} masks.")
    if not segmentation:
        require_labels(dataset)
    if list(dataset.class_names) != list(card["task"]["label_names"]):
        raise TppError(f"dataset '{dataset.name}' classes {dataset.class_names} differ from the adapter's "
                       f"{card['task']['label_names']}.")
    check_same_split(card, dataset, cfg.adapter.path)
    split = dataset.split(cfg.data.split)
    model = accelerator.prepare(model)
    x = tensors(split.images, info)
    if segmentation:
        size = split.masks.shape[-2:]
        pred = predict(accelerator, model, x, cfg.train.eval_batch_size,
                       lambda logits: to_mask_size(logits.float(), size).argmax(dim=1).to(torch.uint8))
        result = segmentation_metrics(pred, torch.from_numpy(split.masks), dataset.class_names)
    else:
        probs = predict_probs(accelerator, model, x, cfg.train.eval_batch_size)
        result = classification_metrics(probs, torch.from_numpy(split.labels), seed=cfg.seed)
    metrics = {cfg.data.split: result,
               "adapter": {"site": card["site"], "method": card["method"], "created": card["created"]}}
    run.log(event="evaluate", split=cfg.data.split, **{k: result[k] for k in ("auroc", "dice") if k in result})
    run.publish_json("metrics.json", metrics)
    return metrics


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end."""
    lines = []
    for split, m in summary.items():
        if isinstance(m, dict) and "auroc" in m:
            lines.append(f"{split}: AUROC {m['auroc']:.3f} accuracy {m['accuracy']:.3f} (n={m['n']})")
        elif isinstance(m, dict) and "dice" in m:
            lines.append(f"{split}: Dice {m['dice']:.3f} IoU {m['iou']:.3f} empty predictions "
                         f"{m['empty_predictions']} (n={m['n']})")
    return lines
