"""The decision threshold of a binary classifier, chosen on the validation split by a named rule.

A binary head outputs probabilities (N, 2); the positive class is the second label name unless
``classification.positive_class`` names the other, and an image is called positive when ``p(positive) >=
threshold`` (the same rule in metrics, ``tpp predict`` and ``tpp serve``). Rules:

- ``youden``: the threshold maximising Youden's J = sensitivity + specificity - 1 on validation;
- ``sensitivity:T`` / ``specificity:T``: the threshold with the highest specificity (sensitivity) whose
  validation sensitivity (specificity) is at least T;
- a number in [0, 1]: that threshold, fixed.

With fewer than :data:`MIN_PER_CLASS` validation images of either class no rule is trusted: 0.5 is kept
and the entry says why.
"""
from __future__ import annotations

import math

import numpy as np

from tpp.errors import ConfigError

MIN_PER_CLASS = 5
DEFAULT = 0.5
RULES = ("youden", "sensitivity:T", "specificity:T", "a number in [0, 1]")


def parse_rule(rule) -> tuple[str, float | None]:
    """``'youden'`` -> ('youden', None), ``'sensitivity:0.9'`` -> ('sensitivity', 0.9), ``0.3`` -> ('fixed', 0.3);
    anything else is a ConfigError naming the accepted forms."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        kind, value = "fixed", float(rule)
    elif isinstance(rule, str) and rule.strip().lower() == "youden":
        return "youden", None
    elif isinstance(rule, str) and ":" in rule:
        kind, _, raw = rule.strip().lower().partition(":")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if kind not in ("sensitivity", "specificity"):
            value = math.nan
    else:
        kind, value = "fixed", math.nan if isinstance(rule, bool) else _float_or_nan(rule)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"classification.threshold={rule!r} is not a rule: use youden, sensitivity:T or "
                          "specificity:T with T in [0, 1] (e.g. sensitivity:0.9), or a fixed number in [0, 1].")
    return kind, value


def _float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def roc_points(p1: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operating points of ``p1 >= t`` for every distinct score t (descending): (thresholds (M,),
    sensitivity (M,), 1 - specificity (M,)). ``p1`` (N,) probabilities of the positive class, ``labels`` (N,)
    1 for positive, 0 for negative."""
    p1, labels = np.asarray(p1, np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(-p1, kind="stable")
    scores, positive = p1[order], labels[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(positive)[last], np.cumsum(~positive)[last]
    return scores[last], tp / max(positive.sum(), 1), fp / max((~positive).sum(), 1)


def choose_threshold(p1, labels, rule="youden") -> dict:
    """The decision entry of a binary classifier from validation scores ``p1`` (N,) of the positive class and
    labels (N,) (1: positive):
    ``threshold``, ``rule`` (as asked), ``chosen_by`` (what set the value), the validation class counts and,
    where the threshold came from validation, the validation sensitivity and specificity it gives."""
    kind, target = parse_rule(rule)
    p1, labels = np.asarray(p1, np.float64), np.asarray(labels).astype(int)
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    entry = {"rule": _rule_text(kind, target), "val_positives": positives, "val_negatives": negatives}
    if kind == "fixed":
        return dict(entry, threshold=target, chosen_by="fixed value (classification.threshold)")
    if min(positives, negatives) < MIN_PER_CLASS:
        return dict(entry, threshold=DEFAULT, chosen_by=(
            f"default 0.5: the validation split has {positives} positive and {negatives} negative images, fewer "
            f"than {MIN_PER_CLASS} of a class, too few to choose by {entry['rule']}"))
    thresholds, tpr, fpr = roc_points(p1, labels)
    if kind == "youden":
        i = int(np.argmax(tpr - fpr))
    elif kind == "sensitivity":
        i = int(np.nonzero(tpr >= target - 1e-12)[0][0])  # the highest threshold reaching the target
    else:
        keeps = np.nonzero(1 - fpr >= target - 1e-12)[0]  # the lowest threshold keeping the target
        i = int(keeps[-1]) if len(keeps) else None
    if i is None:  # no validation score keeps the specificity: call every validation image negative
        value = float(min(1.0, np.nextafter(thresholds[0], np.inf)))
    elif i + 1 < len(thresholds):  # halfway to the next lower score: the same validation decisions, a margin
        value = float((thresholds[i] + thresholds[i + 1]) / 2)
    else:
        value = float(thresholds[i])
    called = p1 >= value
    return dict(entry, threshold=value, chosen_by=f"{entry['rule']} on the validation split",
                val_sensitivity=float(called[labels == 1].mean()), val_specificity=float((~called[labels == 0]).mean()))


def _rule_text(kind: str, target: float | None) -> str:
    if kind == "youden":
        return "youden"
    return f"fixed {target:g}" if kind == "fixed" else f"{kind}:{target:g}"


def check_task_entry(entry: dict) -> str | None:
    """Why a card's ``task`` entry cannot decide (None: it can): its ``decision`` (see :func:`check_entry`) and,
    with two label names, its ``positive_class``, which must be one of them (with more, argmax decides and the
    head's check says whether the names fit)."""
    if "decision" in entry and (problem := check_entry(entry["decision"])):
        return problem
    labels = entry.get("label_names")
    if "positive_class" in entry and isinstance(labels, list) and len(labels) == 2 \
            and entry["positive_class"] not in labels:
        return f"task.positive_class {str(entry['positive_class'])[:40]!r} is not one of the label names {labels}"
    return None


def check_entry(decision) -> str | None:
    """Why a card's ``task.decision`` entry cannot be used (None: it can): the threshold must be a number in
    [0, 1] (a forged card must not make every image positive by a NaN or a string)."""
    if not isinstance(decision, dict):
        return "task.decision must be an object"
    value = decision.get("threshold")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        return f"task.decision.threshold must be a number in [0, 1], got {str(value)[:40]!r}"
    return None


def describe(decision: dict | None, positive: str) -> str:
    """One line for logs and reports: the threshold, how it was chosen, and the positive class."""
    if not decision:
        return (f"threshold 0.5 (default: the adapter card records no decision threshold); positive class "
                f"'{positive}' when p >= 0.5")
    return f"threshold {decision['threshold']:.4f} ({source(decision)}); positive class '{positive}'"


def source(decision: dict) -> str:
    """How the card says its threshold was chosen (cut short: a card is not trusted to be brief)."""
    text = str(decision.get("chosen_by") or "recorded in the adapter card")
    return text if len(text) <= 200 else text[:197] + "..."
