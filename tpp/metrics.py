"""Classification metrics with torchmetrics (binary and multiclass), plus a bootstrap AUROC interval."""
from __future__ import annotations

import torch
from torchmetrics.functional import classification as C


def _auroc(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    if k == 2:
        return float(C.binary_auroc(probs[:, 1], labels))
    return float(C.multiclass_auroc(probs, labels, num_classes=k, average="macro"))


def bootstrap_auroc_ci(probs: torch.Tensor, labels: torch.Tensor, resamples: int = 200,
                       seed: int = 0) -> list[float]:
    """95% percentile interval of AUROC over ``resamples`` bootstrap draws (draws missing a class are skipped)."""
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


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5,
                           seed: int = 0) -> dict:
    """Metrics of predicted probabilities (N, K) against integer labels (N,).

    Binary: positive class is index 1, decision ``p1 >= threshold``; sensitivity/specificity at that
    threshold. Multiclass: argmax decisions, macro-averaged F1/sensitivity/specificity.
    """
    probs, labels = probs.float().cpu(), labels.long().cpu()
    k = probs.shape[1]
    out = {"n": int(len(labels)), "auroc": _auroc(probs, labels, k)}
    out["auroc_ci95"] = bootstrap_auroc_ci(probs, labels, seed=seed)
    if k == 2:
        p1 = probs[:, 1].contiguous()
        out.update(
            accuracy=float(C.binary_accuracy(p1, labels, threshold=threshold)),
            f1=float(C.binary_f1_score(p1, labels, threshold=threshold)),
            sensitivity=float(C.binary_recall(p1, labels, threshold=threshold)),
            specificity=float(C.binary_specificity(p1, labels, threshold=threshold)),
            threshold=threshold,
            confusion_matrix=C.binary_confusion_matrix(p1, labels, threshold=threshold).tolist(),
            ece=float(C.binary_calibration_error(p1, labels, n_bins=10)),
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
