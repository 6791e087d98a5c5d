"""Classification metrics with torchmetrics (binary and multiclass), plus a bootstrap AUROC interval.

torchmetrics loads on the first metric computed (its functional package pulls in transformers for the text
metrics: seconds that commands listing or comparing runs should not pay)."""
from __future__ import annotations

import torch


def _auroc(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """AUROC of probabilities (N, k) against labels (N,); NaN (undefined, written as null in JSON) when a class
    has no example in ``labels`` (torchmetrics would return 0.0 with a warning: a one-class split is not a
    model that ranks every case wrongly)."""
    from torchmetrics.functional import classification as C

    if len(torch.unique(labels)) < k:
        return float("nan")
    if k == 2:
        return float(C.binary_auroc(probs[:, 1], labels))
    return float(C.multiclass_auroc(probs, labels, num_classes=k, average="macro"))


BOOTSTRAP_RESAMPLES = 200  # default draws of the AUROC interval


def definitions(num_classes: int | None, resamples: int, threshold_rule: str) -> dict:
    """Short definitions of what :func:`classification_metrics` reports (``metrics.json``'s ``definitions``;
    docs/metrics.md). ``num_classes`` None: binary and multi-class both described."""
    binary = num_classes is None or num_classes == 2
    multi = num_classes is None or num_classes > 2
    auroc = []
    if binary:
        auroc.append("binary: ROC AUC of p(positive class)")
    if multi:
        auroc.append("multi-class: macro mean of one-vs-rest ROC AUCs")
    out = {
        "auroc": "; ".join(auroc) + " (torchmetrics); independent of the threshold",
        "auroc_ci95": (f"95% percentile bootstrap interval (2.5th, 97.5th percentiles) over {resamples} resamples of "
                       "the split's images with replacement (seeded by seed; draws missing a class skipped)"),
        "ece": "expected calibration error, 10 equal-width confidence bins",
        "n": "images in the split",
    }
    if binary:
        out.update(
            accuracy=f"binary: fraction correct when the positive class is called at p >= threshold ({threshold_rule})",
            sensitivity="recall of the positive class at the threshold", specificity="recall of the other class "
            "at the threshold", f1="F1 of the positive class at the threshold")
    if multi:
        out.update(
            accuracy=(out.get("accuracy", "") + "; " if binary else "") + "multi-class: fraction correct by argmax",
            balanced_accuracy="multi-class: macro mean of per-class recall (argmax)",
            sensitivity=(out.get("sensitivity", "") + "; " if binary else "") + "multi-class: macro mean recall",
            specificity=(out.get("specificity", "") + "; " if binary else "") + "multi-class: macro mean specificity",
            f1=(out.get("f1", "") + "; " if binary else "") + "multi-class: macro mean F1 (argmax)")
    return out


def bootstrap_auroc_ci(probs: torch.Tensor, labels: torch.Tensor, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> list[float] | None:
    """95% percentile interval of AUROC over ``resamples`` bootstrap draws (draws missing a class are skipped);
    ``probs`` (N, K), ``labels`` (N,). None when ``resamples`` is 0 (no interval asked for)."""
    if resamples == 0:
        return None
    k = probs.shape[1]
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(resamples):
        idx = torch.randint(len(labels), (len(labels),), generator=gen)
        if len(torch.unique(labels[idx])) < k:
            continue
        values.append(_auroc(probs[idx], labels[idx], k))
    if not values:
        return [float("nan"), float("nan")]
    v = torch.tensor(values)
    return [float(torch.quantile(v, 0.025)), float(torch.quantile(v, 0.975))]


def quick_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """AUROC and accuracy only: cheap enough to run at every validation step."""
    probs, labels = probs.float().cpu(), labels.long().cpu()
    accuracy = float((probs.argmax(1) == labels).float().mean())
    return {"auroc": _auroc(probs, labels, probs.shape[1]), "accuracy": accuracy}


def binary_decisions(probs: torch.Tensor, threshold: float, positive: int = 1) -> torch.Tensor:
    """Class indices (N,) of binary probabilities (N, 2): ``positive`` where ``p[positive] >= threshold``, else
    the other class (predict and serve decide the same way)."""
    called = probs[:, positive] >= threshold
    return torch.where(called, positive, 1 - positive).long()


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5,
                           seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES, positive: int = 1) -> dict:
    """Metrics of predicted probabilities (N, K) against integer labels (N,).

    Binary: the class index ``positive`` (default 1) is called when its probability ``>= threshold``;
    accuracy, and F1, sensitivity and specificity of the positive class at that threshold; the confusion
    matrix (rows truth, columns prediction, in label order). AUROC and ECE do not depend on the threshold.
    Multiclass: argmax decisions, macro-averaged F1/sensitivity/specificity. ``resamples``: bootstrap draws
    of the AUROC interval (recorded as ``bootstrap_resamples``; 0: no interval).
    """
    from torchmetrics.functional import classification as C

    probs, labels = probs.float().cpu(), labels.long().cpu()
    k = probs.shape[1]
    out = {"n": int(len(labels)), "auroc": _auroc(probs, labels, k)}
    out["auroc_ci95"] = bootstrap_auroc_ci(probs, labels, resamples, seed=seed)
    out["bootstrap_resamples"] = int(resamples)
    if k == 2:
        decided = binary_decisions(probs, threshold, positive)  # class indices: torchmetrics leaves them as they are
        called, truth = (decided == positive).long(), (labels == positive).long()
        out.update(
            accuracy=float((decided == labels).float().mean()),
            f1=float(C.binary_f1_score(called, truth)),
            # undefined (NaN, null in JSON) without an image of the class they divide by; torchmetrics says 0
            sensitivity=float(C.binary_recall(called, truth)) if truth.any() else float("nan"),
            specificity=float(C.binary_specificity(called, truth)) if not truth.all() else float("nan"),
            threshold=float(threshold), positive_class_index=int(positive),
            confusion_matrix=C.binary_confusion_matrix(decided, labels).tolist(),
            ece=float(C.binary_calibration_error(probs[:, positive].contiguous(), truth, n_bins=10)),
        )
    else:
        kw = dict(num_classes=k, average="macro")
        out.update(
            accuracy=float(C.multiclass_accuracy(probs, labels, num_classes=k, average="micro")),
            balanced_accuracy=float(C.multiclass_accuracy(probs, labels, **kw)),
            f1=float(C.multiclass_f1_score(probs, labels, **kw)),
            sensitivity=float(C.multiclass_recall(probs, labels, **kw)),
            specificity=float(C.multiclass_specificity(probs, labels, **kw)),
            confusion_matrix=C.multiclass_confusion_matrix(probs, labels, num_classes=k).tolist(),
            ece=float(C.multiclass_calibration_error(probs, labels, num_classes=k, n_bins=10)),
        )
    return out
