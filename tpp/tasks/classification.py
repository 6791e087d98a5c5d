"""classification: one label per image, a linear head on the mean patch token; AUROC selects the best step.
Binary tasks call the positive class (``classification.positive_class``, default the second label name) where
its probability is ``>= threshold``, a threshold chosen on the validation split (``tpp.threshold``) and recorded
in the card's ``task.decision``; multiclass tasks decide by argmax."""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tpp.data.build import random_hflip
from tpp.errors import ConfigError, TppError
from tpp.label_mapping import MAPPINGS, LabelMappingHead, random_mapping
from tpp.metrics import BOOTSTRAP_RESAMPLES, binary_decisions, classification_metrics, quick_metrics
from tpp.metrics import definitions as metric_definitions
from tpp.tasks import Task, register
from tpp.threshold import DEFAULT, check_task_entry, choose_threshold, describe, parse_rule, source

MAX_RESAMPLES = 100_000


@dataclass
class ClassificationOptions:
    """How a binary classifier decides and how intervals are drawn (config section ``classification``)."""
    threshold: Union[str, float] = field(default="youden", metadata={
        "help": "binary tasks: the decision threshold on p(positive class), chosen on the validation split: youden "
                "(max sensitivity + specificity), sensitivity:T or specificity:T (e.g. sensitivity:0.9), or a "
                "fixed number in [0, 1]; 0.5 when validation has fewer than 5 images of a class"})
    positive_class: Optional[str] = field(default=None, metadata={
        "help": "binary tasks: the class called positive (sensitivity is its recall, the threshold applies to its "
                "probability); default: the second label name (BreastMNIST: 'normal, benign'; set malignant)"})
    bootstrap_resamples: int = field(default=BOOTSTRAP_RESAMPLES, metadata={
        "help": "bootstrap draws of the 95% AUROC intervals (val, test, and evaluate runs of the adapter); 0: none"})
    output_mapping: str = field(default="probe", metadata={
        "help": "probe: a linear head on the mean patch token (trains); rlm / flm / ilm: the backbone's own frozen "
                "classification head read through a one-to-one label mapping (random, frequency-based, or "
                "frequency-based again after every epoch), for visual reprogramming (adapter.method: visual_prompt)"})
    source_head: Optional[str] = field(default=None, metadata={
        "help": "rlm / flm / ilm: which of the backbone's saved classification heads (a pretrain_backbone pool "
                "dataset's name, or 'classifier' for a transformers *ForImageClassification checkpoint); default "
                "the first"})

    def __post_init__(self):
        parse_rule(self.threshold)
        if self.output_mapping not in MAPPINGS:
            raise ConfigError(f"classification.output_mapping must be one of {', '.join(MAPPINGS)}, got "
                              f"{self.output_mapping!r}.")
        if not 0 <= self.bootstrap_resamples <= MAX_RESAMPLES:
            raise ConfigError(f"classification.bootstrap_resamples must be in 0..{MAX_RESAMPLES}, got "
                              f"{self.bootstrap_resamples}.")


def check_positive_class(positive: str | None, dataset) -> None:
    """``classification.positive_class`` names one of a binary dataset's two classes (or is unset)."""
    names = list(dataset.class_names)
    if positive is not None and (len(names) != 2 or positive not in names):
        what = f"one of {names}" if len(names) == 2 else f"unset: dataset '{dataset.name}' has {len(names)} classes"
        raise TppError(f"classification.positive_class={positive!r} must be {what}.")


ABSENT_CLASS_EFFECT = {"train": "the model never sees it",
                       "val": "validation AUROC is undefined (null), so best-step selection keeps the last step",
                       "test": "test AUROC is undefined (null)"}


def warn_absent_classes(dataset) -> None:
    """Warn for each non-empty split that lacks a class: AUROC needs every class present, and an absent class is
    more often a labelling or export mistake than a choice."""
    for name, split in dataset.splits.items():
        if split.labels is None or not len(split.labels):
            continue
        present = set(np.unique(split.labels).tolist())
        absent = [c for k, c in enumerate(dataset.class_names) if k not in present]
        if absent:
            effect = ABSENT_CLASS_EFFECT.get(name, "its AUROC is undefined (null)")
            warnings.warn(f"dataset '{dataset.name}': the {name} split ({len(split.labels)} images) has no image of "
                          f"class {', '.join(map(repr, absent))}: {effect}.", stacklevel=2)


class ClassificationHead(nn.Module):
    """Linear layer on the mean of the patch tokens: (B, N, D) -> logits (B, K)."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_classes)

    def forward(self, patch_tokens: torch.Tensor, grid=None, pixel_values=None) -> torch.Tensor:
        return self.linear(patch_tokens.mean(dim=1))


class Classification(Task):
    name = "classification"
    summary = "one label per image: linear head on the mean patch token, AUROC, a validated decision threshold"
    options_cls = ClassificationOptions
    main_metric = "auroc"
    decision: dict | None = None  # the card's task.decision (binary); None: 0.5, the card records none
    resamples: int = BOOTSTRAP_RESAMPLES
    positive: str = "class 1"  # the positive class's name (binary)
    positive_index: int = 1  # its index among the label names
    binary: bool = False  # set by for_card: the card's task has two classes
    num_classes: int | None = None  # set by for_card
    columns = (("auroc", "AUROC [95% CI]", ".3f"), ("auroc_ci95_low", None, ".3f"), ("auroc_ci95_high", None, ".3f"),
               ("accuracy", "accuracy", ".3f"), ("sensitivity", None, ".3f"), ("specificity", None, ".3f"),
               ("threshold", None, ".3f"))

    def check_config(self, cfg) -> None:
        from tpp.data.sources import get_source

        if get_source(cfg.data.source).masks:
            raise ConfigError(f"data.source={cfg.data.source} holds segmentation masks; set task=segmentation.")
        mapping = getattr(cfg.task_options, "output_mapping", "probe")
        if mapping != "probe" and cfg.adapter.method == "linear_probe":
            raise ConfigError(f"classification.output_mapping={mapping} keeps the backbone's classifier frozen and "
                              "adapter.method=linear_probe trains nothing else: use adapter.method=visual_prompt "
                              "(visual reprogramming) or another method, or classification.output_mapping=probe.")

    def check_data(self, dataset, options=None) -> None:
        if dataset.is_segmentation:
            raise TppError(f"dataset '{dataset.name}' holds segmentation masks; classification needs a source "
                           "without them.")
        if not dataset.class_names or any(s.labels is None for s in dataset.splits.values()):
            raise TppError(f"dataset '{dataset.name}' has no labels; fine-tuning and evaluation need a labelled "
                           "source.")
        if dataset.num_classes < 2:
            raise TppError(f"dataset '{dataset.name}' has {dataset.num_classes} class; classification needs at "
                           "least 2.")
        if options is not None:  # a run that trains on the splits (finetune): its classes and splits matter
            check_positive_class(options.positive_class, dataset)
            warn_absent_classes(dataset)

    def targets(self, split) -> torch.Tensor:
        return torch.from_numpy(split.labels)

    def build_head(self, options, info, dataset) -> nn.Module:
        if options.output_mapping == "probe":
            return ClassificationHead(info.hidden_size, dataset.num_classes)
        return mapping_head(options, info, dataset.num_classes)

    def card_entry(self, options, dataset, info, targets) -> dict:
        entry = {"type": self.name, "num_classes": dataset.num_classes, "label_names": list(dataset.class_names),
                 "head": "linear on the mean of patch tokens"}
        if options.output_mapping != "probe":
            from tpp.source_classifier import load_source_classifier

            source = load_source_classifier(info.id, options.source_head)
            entry["head"] = f"the backbone's frozen classifier '{source.name}' ({source.pooling}) through label mapping"
            entry["output_mapping"] = {"kind": options.output_mapping, "source_head": source.name,
                                       "pooling": source.pooling, "source_classes": source.num_classes,
                                       "source_label_names": source.label_names}
        names, positive = list(dataset.class_names), options.positive_class
        check_positive_class(positive, dataset)
        if len(names) == 2:
            entry["positive_class"] = positive if positive is not None else names[1]
        return entry

    def head_from_card(self, entry, hidden_size, channels) -> nn.Module:
        mapped = entry.get("output_mapping")
        if mapped is not None:
            problem = check_mapping_entry(mapped)  # before anything is allocated from the card's numbers
            if problem:
                raise ValueError(problem)
            return LabelMappingHead(int(mapped["source_classes"]), hidden_size, mapped["pooling"], mapped["kind"],
                                    np.arange(entry["num_classes"]))  # the saved mapping is loaded over it
        return ClassificationHead(hidden_size, entry["num_classes"])

    def augment(self, images, targets, options, hflip, frame=0):
        return (random_hflip(images) if hflip else images), targets  # a frame is symmetric: flips keep it

    def loss(self, logits, targets, options):
        return F.cross_entropy(logits, targets)

    def predictions(self, logits, entry, size=None):
        return torch.softmax(logits.float(), dim=-1)

    # -- the decision threshold ------------------------------------------------------------------
    def choose_on_validation(self, options, entry, predictions, targets):
        """Binary: ``entry`` with ``decision`` (threshold, rule, validation class counts ...) chosen on the
        validation probabilities (N, 2) and labels (N,), and ``bootstrap_resamples``."""
        entry = dict(entry, bootstrap_resamples=options.bootstrap_resamples)
        if entry["num_classes"] != 2:
            return entry
        k = entry["label_names"].index(entry["positive_class"])
        decision = choose_threshold(predictions[:, k].cpu().numpy(), (targets == k).long().cpu().numpy(),
                                    options.threshold)
        return dict(entry, decision=dict(decision, positive_label=entry["positive_class"]))

    def for_card(self, entry):
        bound = copy.copy(self)
        usable = check_task_entry(entry) is None  # a card that fails it is refused where it is read
        decision = entry.get("decision")
        bound.decision = decision if usable and isinstance(decision, dict) else None
        resamples = entry.get("bootstrap_resamples")
        ok = isinstance(resamples, int) and not isinstance(resamples, bool) and 0 <= resamples <= MAX_RESAMPLES
        bound.resamples = resamples if ok else BOOTSTRAP_RESAMPLES
        labels = entry.get("label_names")
        bound.binary = isinstance(labels, list) and len(labels) == 2
        bound.num_classes = len(labels) if isinstance(labels, list) else None
        named = entry.get("positive_class") if usable else None
        bound.positive_index = labels.index(named) if bound.binary and named in labels else 1
        bound.positive = labels[bound.positive_index] if bound.binary else "class 1"
        return bound

    @property
    def threshold(self) -> float:
        return float(self.decision["threshold"]) if self.decision else DEFAULT

    def decision_line(self):
        return describe(self.decision, self.positive) if self.binary else None  # multiclass: argmax

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Class indices (N,) of probabilities (N, K): two classes, the positive one where its probability is
        ``>= threshold``; more, argmax."""
        if probs.shape[1] == 2:
            return binary_decisions(probs, self.threshold, self.positive_index)
        return probs.argmax(dim=1)

    def prediction_rows(self, predictions, targets, label_names):
        decided = self.decide(predictions)
        return [{"label": label_names[int(y)],
                 **{f"prob_{name}": f"{float(p):.6f}" for name, p in zip(label_names, row)},
                 "prediction": label_names[int(d)]} for row, y, d in zip(predictions, targets, decided)]

    def output_shape(self, entry) -> tuple:
        return (len(entry["label_names"]),)

    def score(self, predictions, targets, dataset):
        m = quick_metrics(predictions, targets)
        return m["auroc"], {"val_auroc": m["auroc"], "val_accuracy": m["accuracy"]}

    def metrics(self, predictions, targets, dataset, seed):
        return classification_metrics(predictions, targets, self.threshold, seed=seed, resamples=self.resamples,
                                      positive=self.positive_index)

    def card_metrics(self, summary):
        return {k: summary[k].get("auroc") for k in ("val", "test")}

    def definitions(self):
        rule = source(self.decision) if self.decision else "default 0.5"
        return metric_definitions(self.num_classes, self.resamples, rule)

    def report(self, summary):
        t = summary["test"]
        return (f"test AUROC {t['auroc']:.3f}{_interval(t)}  accuracy {t['accuracy']:.3f}{_at_threshold(t)}  "
                f"trainable {summary['trainable_parameters']:,}  saved {summary['adapter_bytes'] / 1024:.0f} KiB")

    def split_line(self, split, result):
        return (f"{split}: AUROC {result['auroc']:.3f}{_interval(result)} accuracy {result['accuracy']:.3f}"
                f"{_at_threshold(result)} (n={result['n']})")

    def compare_values(self, result):
        ci = result.get("auroc_ci95")
        low, high = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        return {"auroc": result.get("auroc"), "auroc_ci95_low": low, "auroc_ci95_high": high,
                "accuracy": result.get("accuracy"), "sensitivity": result.get("sensitivity"),
                "specificity": result.get("specificity"), "threshold": result.get("threshold")}

    def check_head(self, entry, head_state):
        if "output_mapping" in entry:
            return _check_mapping_head(entry, head_state)
        weight = head_state.get("linear.weight")
        labels = entry.get("label_names", [])
        rows = weight.shape[0] if weight is not None and weight.dim() == 2 else None
        if rows is None or rows != entry.get("num_classes") or rows != len(labels):
            shape = tuple(weight.shape) if weight is not None else None
            return f"{entry.get('num_classes')!r} classes and {len(labels)} label names, head of shape {shape}"
        return None

    def check_entry(self, entry):
        problem = check_task_entry(entry)
        if problem is None and "output_mapping" in entry:
            problem = check_mapping_entry(entry["output_mapping"])
        return [problem] if problem else []

    def per_image(self, output, image):
        return output.tolist()

    def _label(self, result, label_names) -> str:
        if len(result) == 2:
            k = self.positive_index
            return label_names[k if result[k] >= self.threshold else 1 - k]
        return label_names[int(np.argmax(result))]

    def _threshold_source(self) -> str:
        return source(self.decision) if self.decision else "default 0.5: the adapter card records no threshold"

    def json_entry(self, result, label_names):
        out = {"label": self._label(result, label_names), "probabilities": dict(zip(label_names, result))}
        if len(result) == 2:
            out.update(positive_class=self.positive, threshold=self.threshold,
                       threshold_source=self._threshold_source())
        return out

    def csv_entry(self, result, label_names, stem):
        row = {"label": self._label(result, label_names)}
        row.update({f"prob_{name}": f"{p:.6f}" for name, p in zip(label_names, result)})
        if len(result) == 2:
            row.update(positive_class=self.positive, threshold=repr(self.threshold),
                       threshold_source=self._threshold_source())
        return row, {}


def mappable_source(backbone: str, source_head: str | None, num_target: int):
    """The backbone's saved classifier a label mapping reads (:func:`tpp.source_classifier.load_source_classifier`),
    with at least ``num_target`` classes (the mapping is one-to-one); a TppError naming the fix otherwise."""
    from tpp.source_classifier import load_source_classifier

    source = load_source_classifier(backbone, source_head)
    if source.num_classes < num_target:
        raise TppError(f"label mapping is one-to-one: the backbone's classifier '{source.name}' has "
                       f"{source.num_classes} classes, fewer than the target's {num_target}. Use "
                       "classification.output_mapping=probe.")
    return source


def mapping_head(options, info, num_target: int) -> LabelMappingHead:
    """The backbone's saved classifier (frozen) behind a one-to-one mapping: RLM drawn now (seeded by the run's
    torch seed), FLM / ILM provisional until ``prepare_output_mapping`` computes them on the training images."""
    from tpp.backbones import FAMILIES

    source = mappable_source(info.id, options.source_head, num_target)
    if source.weight.shape[1] != info.hidden_size:
        raise TppError(f"backbone '{info.id}': its classifier '{source.name}' reads {source.weight.shape[1]} "
                       f"features, the encoder gives {info.hidden_size}: the saved head does not belong to it.")
    mapping = random_mapping(source.num_classes, num_target, torch.initial_seed() % 2 ** 32)
    head = LabelMappingHead(source.num_classes, info.hidden_size, source.pooling, options.output_mapping, mapping,
                            FAMILIES[info.model_type].num_prefix_tokens)
    with torch.no_grad():
        head.source.weight.copy_(source.weight)
        head.source.bias.copy_(source.bias)
    return head


MAX_SOURCE_CLASSES = 100_000  # a card's source classifier size (ImageNet-21k has 21,843)


def check_mapping_entry(mapped) -> str | None:
    """Why a card's ``task.output_mapping`` cannot build a head (None: it can): ``kind`` one of rlm / flm / ilm,
    ``pooling`` one the source classifiers use, ``source_classes`` an integer in 2..MAX_SOURCE_CLASSES."""
    from tpp.source_classifier import POOLINGS

    if not isinstance(mapped, dict):
        return "task.output_mapping must be an object"
    kind, pooling, classes = mapped.get("kind"), mapped.get("pooling"), mapped.get("source_classes")
    if kind not in MAPPINGS[1:]:
        return f"task.output_mapping.kind must be one of {', '.join(MAPPINGS[1:])}, got {repr(kind)[:40]}"
    if pooling not in POOLINGS:
        return f"task.output_mapping.pooling must be one of {', '.join(POOLINGS)}, got {repr(pooling)[:40]}"
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= MAX_SOURCE_CLASSES:
        return (f"task.output_mapping.source_classes must be an integer in 2..{MAX_SOURCE_CLASSES}, "
                f"got {repr(classes)[:40]}")
    return None


def _check_mapping_head(entry, head_state) -> str | None:
    mapped, mapping = entry["output_mapping"], head_state.get("mapping")
    problem = check_mapping_entry(mapped)
    if problem:
        return problem
    weight, bias = head_state.get("source.weight"), head_state.get("source.bias")
    ok = (set(head_state) == {"mapping", "source.weight", "source.bias"}
          and mapping.dim() == 1 and len(mapping) == entry.get("num_classes")
          and len(set(mapping.tolist())) == len(mapping) and weight.dim() == 2
          and weight.shape[0] == mapped.get("source_classes") and tuple(bias.shape) == (weight.shape[0],)
          and all(0 <= int(m) < weight.shape[0] for m in mapping.tolist()))
    if ok:
        return None
    return (f"{entry.get('num_classes')!r} classes mapped one-to-one onto {mapped.get('source_classes')!r} source "
            f"classes, head with mapping {None if mapping is None else mapping.tolist()} and source weight "
            f"{None if weight is None else tuple(weight.shape)}")


def _interval(result: dict) -> str:
    ci = result.get("auroc_ci95")
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 else ""


def _at_threshold(result: dict) -> str:
    """Binary results: the threshold-dependent numbers with their threshold."""
    if result.get("threshold") is None:
        return ""
    return (f"  sensitivity {result['sensitivity']:.3f}  specificity {result['specificity']:.3f} at threshold "
            f"{result['threshold']:.3f}")


register(Classification())
