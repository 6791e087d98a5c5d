"""Old and new cells of a benchmark grid side by side: the same (target, method, fraction, seed) measured under
two protocols (e.g. before and after issue 28's validation and budget defaults) or on two backbones.

    python benchmarks/side_by_side.py benchmarks/results/tpp_gain.json \
        benchmarks/results/tpp_gain_fewlabel/tpp_gain.json
    python benchmarks/side_by_side.py OLD.json NEW.json --out benchmarks/results/backbone_pool/vs_shared.md
    python benchmarks/side_by_side.py benchmarks/results/seg_gain.json \
        benchmarks/results/seg_gain_fewlabel/seg_gain.json --metric test_dice --accuracy test_iou

Only groups the new report has are listed, and only over the seeds both reports have (paired), so a grid still
running compares like with like. Columns: seeds compared, the metric's mean ± std old and new, the paired
difference new − old with its 95% t-interval over seeds, the largest per-seed difference |new − old|
(0: bit-identical), the second metric old and new, and the validation images and selection of the new cells
(old cells that did not record them used the whole val split). ``--out FILE.md`` also writes the table with
the two inputs named above it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import defined, t_interval, write_atomic  # noqa: E402


def key(cell: dict) -> tuple:
    return cell.get("target", ""), cell["method"], cell["fraction"]


def paired_groups(old: list[dict], new: list[dict]) -> dict[tuple, list[tuple[dict, dict]]]:
    """(target, method, fraction) -> [(old cell, new cell)] over the seeds both have, in seed order."""
    by_old = {(*key(c), c["seed"]): c for c in old}
    groups: dict[tuple, list] = {}
    for c in sorted(new, key=lambda c: (*key(c), c["seed"])):
        partner = by_old.get((*key(c), c["seed"]))
        if partner is not None:
            groups.setdefault(key(c), []).append((partner, c))
    return groups


def _pm(values: list) -> str:
    """Mean ± std of the defined values (None / NaN: an undefined metric, left out), "undefined" if none is."""
    values = defined(values)
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "undefined"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _distinct(values) -> str:
    return " / ".join(str(v) for v in sorted({v for v in values if v is not None}, key=str)) or "–"


def _defined_pairs(pairs: list[tuple[dict, dict]], metric: str) -> list[tuple[dict, dict]]:
    """The pairs whose metric is defined on both sides (an AUROC of a one-class split is None)."""
    return [(o, n) for o, n in pairs if defined([o.get(metric)]) and defined([n.get(metric)])]


def _paired_difference(pairs: list[tuple[dict, dict]], metric: str) -> str:
    """new − old over the pairs where both are defined, with its 95% t-interval (none for a single pair)."""
    usable = _defined_pairs(pairs, metric)
    if not usable:
        return "undefined"
    mean, low, high = t_interval([n[metric] - o[metric] for o, n in usable])
    left_out = f"; {len(pairs) - len(usable)} undefined left out" if len(usable) < len(pairs) else ""
    return f"{mean:+.3f}" + (f" [{low:+.3f}, {high:+.3f}]" if len(usable) > 1 else " (1 pair: no interval)") + \
        (f" ({left_out[2:]})" if left_out else "")


def markdown(groups: dict, metric: str, second: str) -> str:
    lines = [f"| target | labels | method | seeds | {metric} old | {metric} new | new − old (95% CI) | max abs diff "
             f"| {second} old | {second} new | val images new | selection new |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (target, method, fraction), pairs in groups.items():
        old, new = [p[0] for p in pairs], [p[1] for p in pairs]
        usable = _defined_pairs(pairs, metric)
        diff = f"{max(abs(n[metric] - o[metric]) for o, n in usable):.1g}" if usable else "–"
        selection = _distinct(n.get("selection", "").split(" (")[0] or None for n in new)
        lines.append(f"| {target} | {fraction:.0%} | {method} | {len(pairs)} | {_pm([c[metric] for c in old])} | "
                     f"{_pm([c[metric] for c in new])} | {_paired_difference(pairs, metric)} | {diff} | "
                     f"{_pm([c[second] for c in old])} | "
                     f"{_pm([c[second] for c in new])} | {_distinct(n.get('val_images') for n in new)} | "
                     f"{selection} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, help="the earlier report's JSON (its 'cells')")
    parser.add_argument("new", type=Path, help="the re-measured report's JSON")
    parser.add_argument("--metric", default="test_auroc")
    parser.add_argument("--accuracy", default="test_accuracy", help="the second metric shown")
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown), the inputs named above it")
    args = parser.parse_args(argv)
    try:
        old, new = (json.loads(p.read_text())["cells"] for p in (args.old, args.new))
    except (OSError, ValueError, KeyError) as exc:
        parser.error(f"not a benchmark report with cells: {type(exc).__name__}: {exc}")
    groups = paired_groups(old, new)
    if not groups:
        print("no cell of the new report has a partner (same target, method, fraction, seed) in the old one")
        return 1
    table = markdown(groups, args.metric, args.accuracy)
    print(table)
    if args.out:
        try:
            write_atomic(args.out, f"Old: `{args.old}`\nNew: `{args.new}`\nCommand: `python benchmarks/side_by_side.py "
                                   f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n\n{table}\n")
        except OSError as exc:
            print(f"error: could not write {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
