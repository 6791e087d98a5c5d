"""classification: one label per image, a linear head on the mean patch token; AUROC selects the best step."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tpp.data.build import random_hflip
from tpp.errors import ConfigError, TppError
from tpp.metrics import classification_metrics, quick_metrics
from tpp.tasks import Task, register


class ClassificationHead(nn.Module):
    """Linear layer on the mean of the patch tokens: (B, N, D) -> logits (B, K)."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_classes)

    def forward(self, patch_tokens: torch.Tensor, grid=None, pixel_values=None) -> torch.Tensor:
        return self.linear(patch_tokens.mean(dim=1))


class Classification(Task):
    name = "classification"
    summary = "one label per image: linear head on the mean patch token, AUROC"
    main_metric = "auroc"
    columns = (("auroc", "AUROC [95% CI]", ".3f"), ("auroc_ci95_low", None, ".3f"), ("auroc_ci95_high", None, ".3f"),
               ("accuracy", "accuracy", ".3f"))

    def check_config(self, cfg) -> None:
        from tpp.data.sources import get_source

        if get_source(cfg.data.source).masks:
            raise ConfigError(f"data.source={cfg.data.source} holds segmentation masks; set task=segmentation.")

    def check_data(self, dataset) -> None:
        if dataset.is_segmentation:
            raise TppError(f"dataset '{dataset.name}' holds segmentation masks; classification needs a source "
                           "without them.")
        if not dataset.class_names or any(s.labels is None for s in dataset.splits.values()):
            raise TppError(f"dataset '{dataset.name}' has no labels; fine-tuning and evaluation need a labelled "
                           "source.")
        if dataset.num_classes < 2:
            raise TppError(f"dataset '{dataset.name}' has {dataset.num_classes} class; classification needs at "
                           "least 2.")

    def targets(self, split) -> torch.Tensor:
        return torch.from_numpy(split.labels)

    def build_head(self, options, info, dataset) -> nn.Module:
        return ClassificationHead(info.hidden_size, dataset.num_classes)

    def card_entry(self, options, dataset, info, targets) -> dict:
        return {"type": self.name, "num_classes": dataset.num_classes, "label_names": list(dataset.class_names),
                "head": "linear on the mean of patch tokens"}

    def head_from_card(self, entry, hidden_size, channels) -> nn.Module:
        return ClassificationHead(hidden_size, entry["num_classes"])

    def augment(self, images, targets, options, hflip):
        return (random_hflip(images) if hflip else images), targets

    def loss(self, logits, targets, options):
        return F.cross_entropy(logits, targets)

    def predictions(self, logits, entry, size=None):
        return torch.softmax(logits.float(), dim=-1)

    def output_shape(self, entry) -> tuple:
        return (len(entry["label_names"]),)

    def score(self, predictions, targets, dataset):
        m = quick_metrics(predictions, targets)
        return m["auroc"], {"val_auroc": m["auroc"], "val_accuracy": m["accuracy"]}

    def metrics(self, predictions, targets, dataset, seed):
        return classification_metrics(predictions, targets, seed=seed)

    def card_metrics(self, summary):
        return {k: summary[k]["auroc"] for k in ("val", "test")}

    def report(self, summary):
        t = summary["test"]
        return (f"test AUROC {t['auroc']:.3f} [{t['auroc_ci95'][0]:.3f}, {t['auroc_ci95'][1]:.3f}]  accuracy "
                f"{t['accuracy']:.3f}  trainable {summary['trainable_parameters']:,}  "
                f"saved {summary['adapter_bytes'] / 1024:.0f} KiB")

    def split_line(self, split, result):
        return f"{split}: AUROC {result['auroc']:.3f} accuracy {result['accuracy']:.3f} (n={result['n']})"

    def compare_values(self, result):
        ci = result.get("auroc_ci95")
        low, high = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        return {"auroc": result.get("auroc"), "auroc_ci95_low": low, "auroc_ci95_high": high,
                "accuracy": result.get("accuracy")}

    def check_head(self, entry, head_state):
        weight = head_state.get("linear.weight")
        labels = entry.get("label_names", [])
        rows = weight.shape[0] if weight is not None and weight.dim() == 2 else None
        if rows is None or rows != entry.get("num_classes") or rows != len(labels):
            shape = tuple(weight.shape) if weight is not None else None
            return f"{entry.get('num_classes')!r} classes and {len(labels)} label names, head of shape {shape}"
        return None

    def per_image(self, output, image):
        return output.tolist()

    def json_entry(self, result, label_names):
        return {"label": label_names[int(np.argmax(result))], "probabilities": dict(zip(label_names, result))}

    def csv_entry(self, result, label_names, stem):
        row = {"label": label_names[int(np.argmax(result))]}
        row.update({f"prob_{name}": f"{p:.6f}" for name, p in zip(label_names, result)})
        return row, {}


register(Classification())
