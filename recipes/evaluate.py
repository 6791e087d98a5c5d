"""Evaluate a saved adapter directory (with its head) on any split.

    tpp run evaluate --config recipes/configs/breast_us/mae_vit_tiny_lora_finetune.yaml \
        adapter.path=runs/breast/adapter data.split=test output_dir=runs/breast_eval

Writes ``metrics.json`` as ``{"<split>": {...}}``.
"""
from __future__ import annotations

import torch

from tpp.adapter_dir import read_card, read_weights, verify_backbone
from tpp.backbones import load_backbone
from tpp.builders import record_skipped, require_labels, tensors
from tpp.data.build import load_data
from tpp.errors import ConfigError, TppError
from tpp.metrics import classification_metrics
from tpp.model import TaskModel, attach_adapter, load_adapter_state, load_head
from tpp.training import build_accelerator, predict_probs


def load_task_model(path: str, backbone_path: str, mean=None, std=None):
    """Backbone + adapter directory (verified against the card) -> (TaskModel in eval mode, card, info)."""
    card = read_card(path, kinds=("adapter", "full_model"))
    encoder, info, _ = load_backbone(backbone_path, mean, std)
    verify_backbone(card, info, path)
    if card.get("task", {}).get("type") != "classification":
        raise TppError(f"adapter '{path}' has no classification head (stage {card.get('stage')!r}); "
                       "fine-tune it first (tpp run finetune ... adapter.init_from=...).")
    attach_adapter(encoder, card["method"], card["options"], card["target_modules"])
    load_adapter_state(encoder, read_weights(path, card), path)
    return TaskModel(encoder, load_head(path, card, info.hidden_size)).eval(), card, info


def run(cfg, run) -> dict:
    if not cfg.adapter.path:
        raise ConfigError("the evaluate recipe needs adapter.path=DIR (an adapter directory with a head).")
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run)
    model, card, info = load_task_model(cfg.adapter.path, cfg.backbone.path, cfg.backbone.mean, cfg.backbone.std)
    dataset = load_data(cfg.data, cfg.seed, info.image_size)
    record_skipped([dataset], run)
    require_labels(dataset)
    if list(dataset.class_names) != list(card["task"]["label_names"]):
        raise TppError(f"dataset '{dataset.name}' classes {dataset.class_names} differ from the adapter's "
                       f"{card['task']['label_names']}.")
    split = dataset.split(cfg.data.split)
    model = accelerator.prepare(model)
    probs = predict_probs(accelerator, model, tensors(split.images, info), cfg.train.eval_batch_size)
    metrics = {cfg.data.split: classification_metrics(probs, torch.from_numpy(split.labels), seed=cfg.seed),
               "adapter": {"site": card["site"], "method": card["method"], "created": card["created"]}}
    run.log(event="evaluate", split=cfg.data.split, auroc=metrics[cfg.data.split]["auroc"])
    run.publish_json("metrics.json", metrics)
    return metrics


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end."""
    return [f"{split}: AUROC {m['auroc']:.3f} accuracy {m['accuracy']:.3f} (n={m['n']})"
            for split, m in summary.items() if isinstance(m, dict) and "auroc" in m]
