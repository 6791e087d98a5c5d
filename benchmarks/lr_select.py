"""Learning-rate selection on a few-label validation subsample (``tpp_gain.py --lr-grid``).

Every method runs at ~1/3, 1 and 3 times its base rate (1 significant digit: 3e-4, 1e-3, 3e-3 for the
adapters) as cells named 'METHOD%LR'; those cells validate on a label-fraction subsample of the val split
(what a few-label site has), and per (target, fraction, seed) the rate with the best val AUROC is kept,
reported as 'METHOD*'. How good that choice is gets measured too: how often it is the rate that is best on
test, the test AUROC it loses against that rate, and what it gains over simply keeping the base rate.
"""
from __future__ import annotations

import math
import statistics

LR_FACTORS = (1 / 3, 1.0, 3.0)


def split_lr(method: str) -> tuple[str, float | None]:
    """'bottleneck+tpp_mae%3e-3' -> ('bottleneck+tpp_mae', 0.003)."""
    name, _, lr = method.partition("%")
    return name, (float(lr) if lr else None)


def base_rate(method: str, rates: dict) -> float:
    """The protocol's rate of a method ('ssf+tpp_mae' -> rates['ssf'], else LoRA's)."""
    return rates.get(method.partition("+tpp_")[0], rates["lora"])


def lr_grid(method: str, rates: dict) -> list[str]:
    """'METHOD%LR' names of a method's three cells."""
    return [f"{method}%{base_rate(method, rates) * f:.1g}" for f in LR_FACTORS]


def _auroc(value) -> float | None:
    """A metric as a float, or None where it is undefined (null in metrics.json, NaN in memory)."""
    return None if value is None or math.isnan(value) else float(value)


def _round(value) -> float | None:
    value = _auroc(value)
    return None if value is None else round(value, 4)


def select_by_val(results: list[dict], rates: dict | None = None) -> tuple[list[dict], list[dict]]:
    """From 'METHOD%LR' cells: per (target, METHOD, fraction, seed) the cell with the best val AUROC,
    renamed 'METHOD*', for groups with every rate run. Returns (selected cells, one choice row per group,
    incomplete ones too); a choice row also holds the test AUROC per rate, the val image count, and the base
    rate's test AUROC when ``rates`` is given. A cell whose val AUROC is undefined (a one-class val subsample)
    cannot be chosen, and a group that has such a cell, or whose choice has an undefined test AUROC, is not
    complete (its choice is listed, not compared); with no defined val AUROC at all the group has no choice
    (lr None)."""
    groups: dict[tuple, list[dict]] = {}
    for cell in results:
        name, lr = split_lr(cell["method"])
        if lr is not None:
            groups.setdefault((cell["target"], name, cell["fraction"], cell["seed"]), []).append(cell)
    selected, choices = [], []
    for (target, name, fraction, seed), cells in sorted(groups.items()):
        scored = [c for c in cells if _auroc(c["val_auroc"]) is not None]
        # ties: the smaller rate
        best = max(scored, key=lambda c: (c["val_auroc"], -split_lr(c["method"])[1])) if scored else None
        chosen_lr = split_lr(best["method"])[1] if best else None
        complete = len(scored) == len(cells) == len(LR_FACTORS) and _auroc(best["test_auroc"]) is not None
        if complete:  # a choice among fewer rates is listed, not compared
            selected.append(dict(best, method=f"{name}*", lr=chosen_lr))
        by_lr = {split_lr(c["method"])[1]: c for c in cells}
        choice = {"target": target, "method": name, "fraction": fraction, "seed": seed, "lr": chosen_lr,
                  "complete": complete, "val_images": (best or cells[0]).get("val_images"),
                  "val_auroc": {f"{lr:g}": _round(c["val_auroc"]) for lr, c in sorted(by_lr.items())},
                  "test_auroc": {f"{lr:g}": _round(c["test_auroc"]) for lr, c in sorted(by_lr.items())}}
        base = next((c for lr, c in by_lr.items() if rates and abs(lr / base_rate(name, rates) - 1) < 0.01), None)
        choice["base_test_auroc"] = _round(base["test_auroc"]) if base else None
        # rounded like the per-rate values it is matched to
        choice["chosen_test_auroc"] = _round(best["test_auroc"]) if best else None
        choices.append(choice)
    return selected, choices


def selection_quality(choices: list[dict]) -> list[dict]:
    """Per (target, fraction), over complete groups: how often the val-chosen rate is the test-best one,
    the mean test AUROC lost against the test-best rate, and the mean gain over keeping the base rate."""
    by_block: dict[tuple, list[dict]] = {}
    for c in choices:
        if c["complete"]:
            by_block.setdefault((c["target"], c["fraction"]), []).append(c)
    rows = []
    for (target, fraction), block in sorted(by_block.items()):
        best = [max(v for v in c["test_auroc"].values() if v is not None) for c in block]
        chosen = [c["chosen_test_auroc"] for c in block]
        matches = sum(abs(b - ch) < 1e-9 for b, ch in zip(best, chosen))
        over_base = [c["chosen_test_auroc"] - c["base_test_auroc"] for c in block if c["base_test_auroc"] is not None]
        val_images = sorted({c["val_images"] for c in block if c["val_images"] is not None})
        rows.append({"target": target, "fraction": fraction, "groups": len(block), "val_images": val_images,
                     "chosen_is_test_best": matches,
                     "lost_to_test_best": statistics.fmean(b - ch for b, ch in zip(best, chosen)),
                     "gain_over_base_rate": statistics.fmean(over_base) if over_base else None})
    return rows


def markdown_quality(rows: list[dict]) -> str:
    lines = ["| target | labels | val images | (method, seed) groups | val choice = test-best (chance 1 in 3) "
             "| test AUROC lost to the choice | chosen − base rate |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        gain = "n/a" if r["gain_over_base_rate"] is None else f"{r['gain_over_base_rate']:+.3f}"
        lines.append(f"| {r['target']} | {r['fraction']:.0%} | {', '.join(map(str, r['val_images']))} "
                     f"| {r['groups']} | {r['chosen_is_test_best']} of {r['groups']} "
                     f"| {r['lost_to_test_best']:.3f} | {gain} |")
    return "\n".join(lines)


def markdown_choices(choices: list[dict]) -> str:
    lines = ["| target | method | labels | seed | chosen lr | val AUROC per lr (val subsample) | test AUROC per lr |",
             "|---|---|---|---|---|---|---|"]

    def per_lr(values: dict) -> str:
        return ", ".join(f"{lr}: {'undefined' if v is None else f'{v:.3f}'}"
                         for lr, v in sorted(values.items(), key=lambda kv: float(kv[0])))

    for c in choices:
        undefined = None in c["val_auroc"].values() or c["chosen_test_auroc"] is None
        note = "" if c["complete"] else " (AUROC undefined: not compared)" if undefined else " (grid incomplete)"
        chosen = "none (val AUROC undefined)" if c["lr"] is None else f"{c['lr']:g}{note}"
        lines.append(f"| {c['target']} | {c['method']} | {c['fraction']:.0%} | {c['seed']} | {chosen}"
                     f" | {per_lr(c['val_auroc'])} "
                     f"| {per_lr(c['test_auroc'])} |")
    return "\n".join(lines)
