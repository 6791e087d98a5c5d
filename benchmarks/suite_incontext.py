"""In-context prediction as approaches of the standardised suite: ``prototype``, ``knn``, ``incontext_learned``.

A cell (task, approach, label fraction, seed) uses as its context set the very labelled training subset the
fine-tuning approaches get at that fraction and seed (``tpp.data.subsets.label_fraction_index`` on the split the
finetune recipe reads, as ``recipes/finetune.labelled_splits``, ``benchmarks/resnet.py`` and ``unet.py`` do) and
predicts the same test split with the same metric code (classification: AUROC and argmax accuracy through
``tpp.metrics.quick_metrics``; segmentation: ``tpp.seg_metrics.segmentation_metrics`` at the stored mask size).
Predictions go through :mod:`tpp.incontext` (``methods.classify`` / ``segment``, ``learned.classify`` /
``segment``), the functions of ``benchmarks/incontext.py`` and ``tpp predict --context``.

Tractability on a CPU: every image's features are computed once per invocation (in chunks) and shared by the
cells, fractions and methods; a context larger than the protocol's cap (``max_context_per_class`` examples per
class, ``max_context_masks`` image-mask pairs) is a seeded draw from the subset, and the cell records both
sizes (``context_examples`` of ``subset_examples``). The cached cell keeps the context's training-split positions
(``context_index``); the published report carries their sha256 instead (``suite_report.published_cell``), and
:meth:`InContextBench.context_index` derives them again from (task, fraction, seed, protocol).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

import report

APPROACHES = ("prototype", "knn", "incontext_learned")
PROTOCOL = {"max_context_per_class": 500, "max_context_masks": 64, "seg_size": 64, "query_chunk": 16,
            "feature_chunk": 256, "accuracy": "argmax"}
LEARNED_COST_K = 16  # context examples (per class) the learned models' FLOPs and latency are measured with


class FeatureCache:
    """Features of one split's images, computed once per image (on demand, in chunks) and kept in memory.
    ``seconds_per_image``: wall time of the extraction so far per image (the cells' preparation time)."""

    def __init__(self, compute, count: int, chunk: int):
        self.compute, self.rows, self.chunk = compute, [None] * count, chunk
        self.seconds, self.images = 0.0, 0

    def get(self, index: np.ndarray) -> torch.Tensor:
        """Features of the images ``index`` (M,) -> (M, ...) stacked in that order."""
        todo = [int(i) for i in dict.fromkeys(index.tolist()) if self.rows[int(i)] is None]
        for start in range(0, len(todo), self.chunk):
            part = todo[start:start + self.chunk]
            t0 = time.perf_counter()
            out = self.compute(np.array(part))
            self.seconds += time.perf_counter() - t0
            self.images += len(part)
            for i, row in zip(part, out):
                self.rows[i] = row
        return torch.stack([self.rows[int(i)] for i in index])

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, self.images)


def cap_index(index: np.ndarray, labels: np.ndarray | None, cap: int, seed: int) -> np.ndarray:
    """The subset ``index`` (sorted training-split indices) itself, or a seeded draw of at most ``cap`` per class
    (``labels``: the training split's labels; None: ``cap`` images in all), sorted."""
    rng = np.random.default_rng([seed, 26])
    if labels is None:
        return index if len(index) <= cap else np.sort(rng.choice(index, cap, replace=False))
    keep = [rng.permutation(index[labels[index] == c])[:cap] for c in np.unique(labels[index])]
    return np.sort(np.concatenate(keep))


def items(images, index: np.ndarray) -> list[np.ndarray]:
    """uint8 images (or masks) ``index`` of a split, one array each: from an array, or from ``ImageFiles`` (a
    ``seg_folder``'s images and masks, decoded here, one item at a time)."""
    return [images[int(i)] for i in index]


def context_bytes(images: list[np.ndarray], masks: list[np.ndarray] | None) -> int:
    """The context set as a store version keeps it: a PNG per image (and per 0/255 mask); the labels live in
    the manifest (a few bytes each, not counted)."""
    from tpp.serve.contexts import png

    total = sum(len(png(a)) for a in images)
    return total + (0 if masks is None else sum(len(png((m > 0).astype(np.uint8) * 255)) for m in masks))


class InContextBench:
    """Suite cells of the in-context approaches, cached as JSON per (task, approach, fraction, seed) under
    ``cache`` with a protocol id over (protocol, backbone content, learned model weights)."""

    def __init__(self, cache: Path, protocol: dict, backbone: str, data_root: str, models: dict):
        self.protocol, self.backbone, self.data_root = protocol, backbone, data_root
        self.cache = report.backbone_cache(cache, backbone)  # cells of this backbone only
        self.models = models  # {kind: model folder}
        self._ids, self._extractor, self._learned, self._data = {}, None, {}, {}

    # ------------------------------------------------------------ identity and cache
    def protocol_id(self, approach: str, kind: str, task=None) -> str:
        """The id of ``approach``'s cells on tasks of ``kind``; of a segmentation folder ``task``, its folder's
        content and reading too (``seg_gain.folder_identity``); a ``.npz`` or MedMNIST task adds nothing."""
        folder = seg_folder(self, task)
        key = (approach, kind, task.name if folder else None)
        if key not in self._ids:
            extra = {"approach": approach, "kind": kind}
            if folder:
                import seg_gain

                extra["data"] = seg_gain.folder_identity(folder, self.data_path(task), task.name)
            if approach == "incontext_learned":
                from tpp.incontext.learned import WEIGHTS
                from tpp.capped_read import file_sha256

                folder = Path(self.models[kind])
                folder = folder / "model" if (folder / "model" / WEIGHTS).is_file() else folder
                extra["weights_sha256"] = file_sha256(folder / WEIGHTS)
            self._ids[key] = report.protocol_id(self.protocol, self.backbone, **extra)
        return self._ids[key]

    def data_path(self, task) -> Path:
        """A segmentation task's file or folder."""
        return Path(task.file) if Path(task.file).is_absolute() else Path(self.data_root) / task.file

    def cell_path(self, task, approach: str, fraction: float, seed: int) -> Path:
        return self.cache / "cells" / task.name / approach / f"f{fraction:g}_s{seed}.json"

    def cached(self, task, approach: str, fraction: float, seed: int) -> dict | None:
        path = self.cell_path(task, approach, fraction, seed)
        if path.is_file():
            data = json.loads(path.read_text())
            return data if data.get("protocol_id") == self.protocol_id(approach, task.kind, task) else None
        return None

    def store(self, task, cell: dict) -> None:
        report.store_cell(self.cell_path(task, cell["method"], cell["fraction"], cell["seed"]), cell)

    # ------------------------------------------------------------ shared state
    def extractor(self):
        if self._extractor is None:
            from tpp.incontext.features import load_extractor

            self._extractor = load_extractor(self.backbone)
        return self._extractor

    def learned(self, kind: str):
        """(model, card) of the learned model of ``kind``, checked against the task kind and the backbone."""
        if kind not in self._learned:
            from tpp.errors import TppError
            from tpp.incontext import learned

            model = learned.load(self.models[kind])
            info = self.extractor().info
            learned.check_kind(model[1], kind, str(self.models[kind]), info.hash)
            if kind == "classification" and model[0].config["feature_dim"] != info.hidden_size:
                raise TppError(f"in-context model '{self.models[kind]}' reads {model[0].config['feature_dim']}-dim "
                               f"features but the backbone {self.backbone} gives {info.hidden_size}; give "
                               "incontext_models.classification a model trained on this backbone.")
            self._learned[kind] = model
        return self._learned[kind]

    def data(self, task) -> dict:
        """The task's dataset as the fine-tuning cells read it, and its feature caches (built once)."""
        if task.name not in self._data:
            self._data[task.name] = _load_task(self, task)
        return self._data[task.name]

    # ------------------------------------------------------------ cells
    def context_index(self, task, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(label subset, context) of a cell as training-split positions: the fine-tuning subset at this fraction
        and seed, capped by :func:`cap_index`. A cell adopted from a published report has only the sha256 of the
        context (``context_sha256``, see ``suite_report.published_cell``); this derives the list again."""
        from tpp.data import subsets

        d = self.data(task)
        train = d["dataset"].split("train")
        subset = subsets.label_fraction_index(train.labels, fraction, d["dataset"].name, seed)
        if task.kind == "classification":
            return subset, cap_index(subset, train.labels, self.protocol["max_context_per_class"], seed)
        return subset, cap_index(subset, None, self.protocol["max_context_masks"], seed)

    def run_cell(self, task, approach: str, fraction: float, seed: int) -> dict:
        d = self.data(task)
        train = d["dataset"].split("train")
        subset, index = self.context_index(task, fraction, seed)
        if task.kind == "classification":
            cell = _classification_cell(self, d, train, index, approach)
            stored = context_bytes(items(train.images, index), None)
        else:
            cell = _segmentation_cell(self, d, train, index, approach)
            stored = context_bytes(items(train.images, index), items(train.masks, index))
        trainable = 0 if approach != "incontext_learned" else sum(
            p.numel() for p in self.learned(task.kind)[0].parameters())
        cell = {"target": task.name, "method": approach, "fraction": fraction, "seed": seed, **cell,
                "train_labels": len(subset), "subset_examples": len(subset), "context_examples": len(index),
                "context_cap": (self.protocol["max_context_per_class"] if task.kind == "classification"
                                else self.protocol["max_context_masks"]),
                "context_index": index.tolist(), "trainable_parameters": trainable, "bytes_per_site": stored,
                "bytes_per_site_note": "context set as PNG images (+ 0/255 PNG masks), as tpp context publish "
                                       "stores it", "tpp_s": None,
                "protocol_id": self.protocol_id(approach, task.kind, task)}
        self.store(task, cell)
        return cell

    def adopt(self, published: Path, task, approach: str) -> int:
        """Copy into the cache this (task, approach)'s cells of a published suite report under the current id."""
        pid = self.protocol_id(approach, task.kind, task)
        data = json.loads(Path(published).read_text())  # not JSON: a ValueError naming nothing; main names the file
        cells = data.get("cells") if isinstance(data, dict) else None
        if not isinstance(cells, list):
            raise ValueError(f"{published} is no report JSON (no 'cells' list)")
        return sum(self._adopt_one(task, c, pid) for c in cells if isinstance(c, dict))

    def _adopt_one(self, task, cell: dict, pid: str) -> int:
        if (cell.get("target"), cell.get("protocol_id")) != (task.name, pid) or cell.get("method") not in APPROACHES:
            return 0
        if self.cached(task, cell["method"], cell["fraction"], cell["seed"]):
            return 0
        self.store(task, {k: v for k, v in cell.items() if k not in ("suite_task", "suite_kind")})
        return 1


def seg_folder(bench: InContextBench, task):
    """The reading options (``suite_grid.SegFolder``) of a segmentation task that is a ``seg_folder``: a grid
    folder task's own, the defaults for a Task whose ``file`` is a folder under the data root; else None."""
    from suite_grid import SegFolder

    if task is None or task.kind != "segmentation":
        return None
    if task.folder is not None:
        return task.folder
    return SegFolder() if bench.data_path(task).is_dir() else None


def _load_task(bench: InContextBench, task) -> dict:
    """Dataset (the finetune recipe's config and loader, as tpp_gain / seg_gain cells read it), feature caches
    of the train and test splits. A segmentation task's ``file`` is a ``seg_npz`` file or a ``seg_folder``
    (``images/`` + ``masks/``, read at its task's ``size`` as the U-Net and ``lora@mask_res`` cells read it)."""
    import seg_gain
    import tpp_gain

    from tpp.config import load_config
    from tpp.data.build import load_data
    from tpp.recipes import CONFIG_DIR

    ex = bench.extractor()
    if task.kind == "classification":
        cfg = load_config(CONFIG_DIR / tpp_gain.FINETUNE_CONFIG, [f"data.root={bench.data_root}",
                                                                  *tpp_gain.source_overrides(task.name)],
                          recipe="finetune")
        dataset = load_data(cfg.data, 0, ex.info.input_size or ex.info.image_size)
        channels = 3 if dataset.split("train").images.ndim == 4 else 1
        rule = ex.rule(channels)

        def compute(split):
            return lambda idx: ex.features(items(dataset.split(split).images, idx), rule)
    else:
        folder = seg_folder(bench, task)
        cfg = load_config(seg_gain.task_config(CONFIG_DIR / seg_gain.FINETUNE_CONFIG, folder), seg_gain.data_overrides(
            bench.data_root, task.file, task.name, 0, folder), recipe="finetune")
        dataset = load_data(cfg.data, 0, folder.size if folder else 0)  # a folder at its size; arrays their own
        if dataset.num_classes != 2:
            from tpp.errors import TppError

            raise TppError(f"{task.file}: in-context segmentation is binary but the masks have "
                           f"{dataset.num_classes} classes ({', '.join(dataset.class_names)}).")
        channels = 3 if dataset.split("train").images.ndim == 4 else 1
        rule = ex.rule(channels, bench.protocol["seg_size"])

        def compute(split):
            return lambda idx: ex.tokens(items(dataset.split(split).images, idx), rule)
    chunk = bench.protocol["feature_chunk"]
    return {"dataset": dataset, "rule": rule,
            "train": FeatureCache(compute("train"), len(dataset.split("train")), chunk),
            "test": FeatureCache(compute("test"), len(dataset.split("test")), chunk)}


def _classification_cell(bench: InContextBench, d: dict, train, index: np.ndarray, approach: str) -> dict:
    """Metrics of one context (training-split indices ``index``) on the whole test split."""
    from tpp.incontext import learned as icl
    from tpp.incontext.methods import classify
    from tpp.metrics import quick_metrics

    test = d["dataset"].split("test")
    queries = d["test"].get(np.arange(len(test)))  # (Q, D), computed once per task
    t0 = time.perf_counter()
    context = d["train"].get(index)  # (K, D)
    labels = torch.as_tensor(train.labels[index]).long()
    classes = d["dataset"].num_classes
    temperature = None
    if approach == "incontext_learned":
        model = bench.learned("classification")[0]
        if classes > model.max_classes:
            from tpp.errors import TppError

            raise TppError(f"{d['dataset'].name} has {classes} classes; in-context model "
                           f"'{bench.models['classification']}' handles at most {model.max_classes}.")
        prepare_s = time.perf_counter() - t0
        probs = icl.classify(model, context, labels, classes, queries)
    else:
        probs, temperature = classify(context, labels, classes, queries, approach)
        prepare_s = time.perf_counter() - t0
    metrics = quick_metrics(probs, torch.as_tensor(test.labels).long())
    return {"test_auroc": metrics["auroc"], "test_accuracy": metrics["accuracy"], "temperature": temperature,
            "n_test": len(test), "finetune_s": prepare_s + d["train"].seconds_per_image * len(index)}


def _segmentation_cell(bench: InContextBench, d: dict, train, index: np.ndarray, approach: str) -> dict:
    """Dice / IoU / HD95 of one context (image-mask pairs ``index``) on the whole test split, at mask size."""
    import torch.nn.functional as F

    from tpp.incontext import learned as icl
    from tpp.incontext.methods import segment
    from tpp.data.stream import MaskTargets, stack
    from tpp.seg_metrics import segmentation_metrics

    test = d["dataset"].split("test")
    side = test.masks.shape[1:]
    masks = torch.as_tensor(stack(train.masks, index) > 0).float()  # (K, h, w)
    chunk, temperature, out = bench.protocol["query_chunk"], None, []
    t0 = time.perf_counter()
    if approach == "incontext_learned":
        from tpp.incontext import learned_card
        from tpp.incontext.predict import gray

        model, card = bench.learned("segmentation")
        size = learned_card.check_image_size(card.get("task_distribution", {}).get("image_size", 64),
                                             len(model.config["channels"]))
        ctx_masks = F.interpolate(masks[:, None], size=(size, size), mode="area")[:, 0]
        ctx_images = gray(items(train.images, index), size)
        prepare_s = time.perf_counter() - t0
        for start in range(0, len(test), chunk):
            queries = gray(items(test.images, np.arange(start, min(start + chunk, len(test)))), size)
            fg = icl.segment(model, ctx_images, ctx_masks, queries)
            out.append(F.interpolate(fg[:, None], size=side, mode="bilinear", align_corners=False)[:, 0])
    else:
        context = d["train"].get(index)  # (K, N, D)
        grid = bench.extractor().grid(d["rule"])
        _, temperature = segment(context, masks, context[:1], grid, approach)  # calibrated once per context
        prepare_s = time.perf_counter() - t0 + d["train"].seconds_per_image * len(index)
        for start in range(0, len(test), chunk):
            rows = np.arange(start, min(start + chunk, len(test)))
            fg, _ = segment(context, masks, d["test"].get(rows), grid, approach, t=temperature)
            out.append(F.interpolate(fg[:, None], size=side, mode="bilinear", align_corners=False)[:, 0])
    pred = (torch.cat(out) >= 0.5).long()
    m = segmentation_metrics(pred, MaskTargets(test.masks), d["dataset"].class_names)  # decoded in chunks
    return {"test_dice": m["dice"] or 0.0, "test_iou": m["iou"] or 0.0, "test_hd95": m["hd95"],
            "empty_predictions": m["empty_predictions"], "n_test": m["n"], "temperature": temperature,
            "input_size": d["rule"]["image_size"] if approach != "incontext_learned" else None,
            "finetune_s": prepare_s}


# ---------------------------------------------------------------- the inference model, for the cost columns

class _Features(torch.nn.Module):
    """The frozen backbone as a prototype / kNN service runs it per query: pixels (B, C, S, S) -> mean patch
    token (B, D) (classification) or patch tokens (B, N, D) (segmentation). The comparison with the context
    (K x D multiply-adds per query feature) is not counted."""

    def __init__(self, encoder, pooled: bool):
        super().__init__()
        self.encoder, self.pooled = encoder, pooled
        self.model = encoder.model  # parameters counted once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.patch_tokens(self.encoder(x))
        return tokens.mean(1) if self.pooled else tokens


class _LearnedClassifier(torch.nn.Module):
    """Backbone features, then the learned classifier against a context of LEARNED_COST_K random features per
    class (its C cyclic relabellings included, as :func:`tpp.incontext.learned.classify` answers)."""

    def __init__(self, features: _Features, model, classes: int, dim: int):
        super().__init__()
        self.features, self.net, self.classes = features, model, classes
        g = torch.Generator().manual_seed(0)
        self.register_buffer("context", torch.randn(LEARNED_COST_K * classes, dim, generator=g))
        self.register_buffer("labels", torch.arange(classes).repeat_interleave(LEARNED_COST_K))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from tpp.incontext import learned

        return learned.classify(self.net, self.context, self.labels, self.classes, self.features(x))


class _LearnedSegmenter(torch.nn.Module):
    """The CrossConv segmenter on gray pixels (B, 1, S, S) with LEARNED_COST_K random support pairs (no
    backbone: it reads pixels only)."""

    def __init__(self, model, size: int):
        super().__init__()
        self.net = model
        g = torch.Generator().manual_seed(0)
        self.register_buffer("images", torch.rand(LEARNED_COST_K, size, size, generator=g))
        self.register_buffer("masks", (torch.rand(LEARNED_COST_K, size, size, generator=g) > 0.5).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from tpp.incontext import learned

        return learned.segment(self.net, self.images, self.masks, x[:, 0])


def spec(suite, task, approach: str) -> dict:
    """The cost spec (see suite_models.build) of an in-context approach: the backbone at the cells' input size
    (classification: its native size; segmentation: ``seg_size``), the learned model's folder."""
    from tpp.backbones import backbone_config

    bench = suite.incontext
    size = backbone_config(suite.grid.backbone).image_size if task.kind == "classification" \
        else bench.protocol["seg_size"]
    classes = 2
    if task.kind == "classification":
        from tpp.data.arrays import MEDMNIST

        classes = len(MEDMNIST[task.name][1])
    out = {"approach": approach, "kind": task.kind, "classes": classes, "size": size, "backbone": suite.grid.backbone,
           "channels": None, "model": None}
    if approach == "incontext_learned":
        out["model"] = str(bench.models[task.kind])
        out["protocol_id"] = bench.protocol_id(approach, task.kind)  # a new model: a new measurement (per kind)
        if task.kind == "segmentation":
            out["size"] = bench.learned("segmentation")[1].get("task_distribution", {}).get("image_size", 64)
    return out


def build_model(spec: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """The in-context approach's per-query inference model (frozen: 0 trainable parameters) and one input."""
    from tpp.backbones import load_backbone

    if spec["approach"] == "incontext_learned" and spec["kind"] == "segmentation":
        from tpp.incontext import learned

        model = _LearnedSegmenter(learned.load(spec["model"])[0], spec["size"])
        example = torch.rand(1, 1, spec["size"], spec["size"])
    else:
        encoder, info, _ = load_backbone(spec["backbone"], input_size=spec["size"])
        model = _Features(encoder, spec["kind"] == "classification")
        if spec["approach"] == "incontext_learned":
            from tpp.incontext import learned

            model = _LearnedClassifier(model, learned.load(spec["model"])[0], spec["classes"], info.hidden_size)
        example = torch.randn(1, info.channels, spec["size"], spec["size"])
    model.requires_grad_(False)
    return model.eval(), example
