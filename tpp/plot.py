"""``tpp plot RUN_DIR``: a run's pictures as PNGs. ``curves.png``: training loss and validation curves from
``log.jsonl`` (runs that trained); ``roc.png`` and ``calibration.png``: ROC curves with the decision
threshold's operating point, and reliability diagrams, from ``predictions.csv`` (classification fine-tune
and evaluate runs)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from tpp.data.file_kinds import irregular, read_whole_regular
from tpp.errors import TppError
from tpp.predictions_csv import NAME as PREDICTIONS
from tpp.predictions_csv import read_predictions


def read_log(run_dir: Path) -> tuple[list, dict]:
    """(loss points [(step, loss)], validation curves {metric: [(step, value)]}) of a run."""
    log = run_dir / "log.jsonl"
    if not Path(run_dir).exists():
        raise TppError(f"'{run_dir}' does not exist.")
    if not Path(run_dir).is_dir():
        what = f"a {irregular(run_dir)}" if irregular(run_dir) else "a file"
        raise TppError(f"'{run_dir}' is {what}; tpp plot takes a run folder (the one holding log.jsonl).")
    if not log.exists():  # a fifo exists, though no file: read_whole_regular names it
        raise TppError(f"'{run_dir}' has no log.jsonl: it is not a tpp run directory.")
    losses, curves = {}, {}
    try:
        lines = read_whole_regular(log, TppError).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TppError(f"'{log}' cannot be read ({type(exc).__name__}); it is damaged.") from None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line of a run killed mid-write
                continue
            raise TppError(f"'{log}' line {number} is not JSON.") from None
        if not isinstance(record, dict) or record.get("event") not in ("step", "eval"):
            continue
        step = record.get("step")
        if not _number(step) or (record["event"] == "step" and not _number(record.get("loss"))):
            raise TppError(f"'{log}' line {number}: a {record['event']} record without a numeric step"
                           f"{' and loss' if record['event'] == 'step' else ''}; the log is damaged.")
        if record["event"] == "step":  # a resumed run repeats steps after its checkpoint: the last wins
            losses[step] = record["loss"]
        else:
            for key, value in record.items():
                if key.startswith("val_") and _number(value):
                    curves.setdefault(key, {})[step] = value
    losses = sorted(losses.items())
    curves = {k: sorted(v.items()) for k, v in curves.items()}
    if not losses:
        state = _run_status(run_dir)
        said = (f": the run failed before its first step ({state.get('error') or 'no error recorded'})"
                if state.get("status") == "failed" else " yet")
        raise TppError(f"'{log}' holds no training steps{said}.")
    return losses, curves


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TppError("tpp plot needs matplotlib: pip install 'tpp[bench]'.") from None
    return plt


def _save(fig, out: Path) -> Path:
    """Write ``fig`` to ``out`` atomically (a temporary file renamed into place) and close it."""
    from tpp.safe_write import refuse_special

    plt = _pyplot()
    if out.suffix.lower() != ".png":  # never onto predictions.csv or metrics.json of the run read
        plt.close(fig)
        raise TppError(f"'{out}': a plot is written as PNG; give a file name ending in .png.")
    refuse_special(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TppError(f"cannot write '{out}' ({exc.strerror}).") from None
    finally:
        plt.close(fig)
    return out


def _run_status(run_dir: Path) -> dict:
    """``status.json`` of a run ({} when it has none or it cannot be read; a fifo: a TppError naming it)."""
    try:
        state = json.loads(read_whole_regular(Path(run_dir) / "status.json", TppError))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def plot_all(run_dir: str | Path, out: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """Every picture the run's files allow: (PNG paths written, notes on what could not be drawn).
    ``out``: the path of the curves PNG (default ``RUN_DIR/curves.png``); the others go to ``RUN_DIR``."""
    run_dir = Path(run_dir)
    predictions = run_dir / PREDICTIONS
    if not predictions.exists():  # a fifo exists, though no file: read_predictions names it
        return [plot_run(run_dir, out)], []
    written, notes = [], []
    table = read_scores(predictions)  # read (and checked) before any PNG is written, as are the thresholds
    thresholds, positive = _decisions(run_dir) if table is not None else ({}, 1)
    try:
        written.append(plot_run(run_dir, out))
    except TppError as exc:
        if "holds no training steps" not in str(exc) and "has no log.jsonl" not in str(exc):
            raise
        notes.append("no training curves: the run trained no steps (an evaluate run)")
    if table is None:
        notes.append(f"{PREDICTIONS} holds no class probabilities (a segmentation run, or no rows): no ROC or "
                     "calibration plot")
        return written, notes
    table["positive"] = positive
    written.append(_save(roc_figure(table, thresholds, run_dir.name), run_dir / "roc.png"))
    written.append(_save(calibration_figure(table, run_dir.name), run_dir / "calibration.png"))
    return written, notes


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the loss and validation curves PNG (default ``RUN_DIR/curves.png``) atomically; its path."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    losses, curves = read_log(run_dir)
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(10 if curves else 5, 3.5), squeeze=False)
    axes[0][0].plot(*zip(*losses), lw=1)
    status = _run_status(run_dir).get("status")
    partial = f" ({status}: the steps so far)" if status in ("running", "failed") else ""
    axes[0][0].set(xlabel="step", ylabel="training loss", title=run_dir.name + partial)
    if curves:
        for name, points in curves.items():
            axes[0][1].plot(*zip(*points), marker="o", ms=3, label=name)
        axes[0][1].set(xlabel="step", ylabel="validation", title="validation metrics")
        axes[0][1].legend()
    fig.tight_layout()
    return _save(fig, Path(out) if out else run_dir / "curves.png")


def read_scores(path: Path) -> dict | None:
    """``predictions.csv`` as {split: (probabilities (N, K), labels (N,) class indices)} with the class names
    under ``"classes"``; None when it holds no ``prob_`` columns (segmentation). Errors name the line."""
    rows = read_predictions(path)
    columns = list(rows[0]) if rows else []
    classes = [c[len("prob_"):] for c in columns if c.startswith("prob_")]
    if not classes:
        return None
    table: dict = {}
    for number, row in enumerate(rows, 2):
        try:
            probs = [float(row[f"prob_{c}"]) for c in classes]
            label = classes.index(row["label"])
        except (TypeError, ValueError, KeyError):
            raise TppError(f"'{path}' line {number}: a probability is not a number or the label "
                           f"{str(row.get('label'))[:40]!r} is not one of {classes}; re-run the evaluation.") from None
        if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs):
            raise TppError(f"'{path}' line {number}: a probability is not a finite number in [0, 1]; re-run the "
                           "evaluation.")
        probs_so_far, labels_so_far = table.setdefault(row.get("split") or "all", ([], []))
        probs_so_far.append(probs)
        labels_so_far.append(label)
    scores = {split: (np.asarray(p, np.float64), np.asarray(y)) for split, (p, y) in table.items()}
    return {"classes": classes, "splits": scores}


def _decisions(run_dir: Path) -> tuple[dict, int]:
    """({split: decision threshold}, the positive class's index) from the run's ``metrics.json`` (binary
    runs; ({}, 1) when it records none)."""
    try:
        metrics = json.loads(read_whole_regular(run_dir / "metrics.json", TppError))
    except (OSError, ValueError):
        return {}, 1
    splits = [m for m in metrics.values() if isinstance(m, dict)] if isinstance(metrics, dict) else []
    positive = next((m["positive_class_index"] for m in splits if type(m.get("positive_class_index")) is int
                     and m["positive_class_index"] in (0, 1)), 1)
    return {split: m["threshold"] for split, m in metrics.items()
            if isinstance(m, dict) and isinstance(m.get("threshold"), (int, float))}, positive


def _curves(table: dict):
    """(split, name, scores (N,), positives (N,) bool) of each curve: binary runs the positive class per
    split; multiclass runs each class one-vs-rest, per split."""
    classes = table["classes"]
    for split, (probs, labels) in table["splits"].items():
        picked = [table.get("positive", 1)] if len(classes) == 2 else range(len(classes))
        for k in picked:
            name = f"{split}" if len(classes) == 2 else f"{split}: {classes[k]}"
            yield split, name, probs[:, k], labels == k


def roc_figure(table: dict, thresholds: dict, title: str):
    """ROC curves (sensitivity against 1 - specificity) with their AUROC, and the operating point of the
    decision threshold where ``metrics.json`` records one."""
    from tpp.threshold import roc_points

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for split, name, scores, positive in _curves(table):
        if positive.all() or not positive.any():
            continue  # a split with one class has no ROC curve
        _, tpr, fpr = roc_points(scores, positive)
        fpr, tpr = np.r_[0.0, fpr], np.r_[0.0, tpr]
        auroc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
        line, = ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUROC {auroc:.3f}, n={len(scores)})")
        if split in thresholds and len(table["classes"]) == 2:
            called = scores >= thresholds[split]
            ax.plot([called[~positive].mean()], [called[positive].mean()], "o", color=line.get_color(),
                    label=f"{split} at threshold {thresholds[split]:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="gray")
    binary = len(table["classes"]) == 2
    positive_name = table["classes"][table.get("positive", 1)] if binary else "each class (one-vs-rest)"
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{title}: ROC, positive = {positive_name}")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def calibration_figure(table: dict, title: str, bins: int = 10):
    """Reliability diagram: mean predicted probability against the observed frequency in ``bins`` equal-width
    bins (binary: of the second class; multiclass: top-label confidence against accuracy)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    binary, k = len(table["classes"]) == 2, table.get("positive", 1)
    for split, (probs, labels) in table["splits"].items():
        if binary:
            scores, hits = probs[:, k], labels == k
        else:
            scores, hits = probs.max(axis=1), probs.argmax(axis=1) == labels
        which = np.minimum((scores * bins).astype(int), bins - 1)
        used = [b for b in range(bins) if (which == b).any()]
        mean_p = [scores[which == b].mean() for b in used]
        observed = [hits[which == b].mean() for b in used]
        ece = sum((which == b).mean() * abs(p - o) for b, p, o in zip(used, mean_p, observed))
        ax.plot(mean_p, observed, marker="o", ms=4, label=f"{split} (ECE {ece:.3f}, n={len(scores)})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="gray", label="perfect calibration")
    what = f"p({table['classes'][k]})" if binary else "top-label confidence"
    ax.set(xlabel=f"mean predicted {what}", ylabel="observed frequency" if binary else "accuracy",
           xlim=(0, 1), ylim=(0, 1), title=f"{title}: calibration")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig
