"""The suite's PNG plots: the primary metric against trainable parameters, against FLOPs per image (with the
Pareto front: no other approach is both cheaper and better), and against the label fraction per approach.
One panel per task; every file written through a temporary file renamed into place."""
from __future__ import annotations

import os
from pathlib import Path

COLORS = {}


def _color(approach: str):
    import matplotlib.pyplot as plt

    if approach not in COLORS:
        COLORS[approach] = plt.get_cmap("tab10")(len(COLORS) % 10)
    return COLORS[approach]


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp_{os.getpid()}")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _panels(tasks: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    return fig, dict(zip(tasks, axes.flat))


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (cost, metric) that no other point beats on both (lower cost, higher metric), by cost; a point whose
    metric is undefined (None) is none of them."""
    front, best = [], -float("inf")
    for x, y in sorted((p for p in points if p[1] is not None), key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def scatter(rows: list[dict], key: str, label: str, path: Path, front: bool, zero_at: float | None = None) -> None:
    """``zero_at``: where a row whose ``key`` is 0 is drawn on the log axis (training-free in-context rows);
    None leaves such rows out. Rows whose metric is undefined on every seed are not drawn."""
    from matplotlib.ticker import NullFormatter

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    rows = [r for r in rows if r["primary"]["mean"] is not None]
    fig, axes = _panels(tasks)
    markers = {}
    if zero_at is not None:
        rows = [dict(r, **{key: zero_at}) if r[key] == 0 else r for r in rows]
    for task, ax in axes.items():
        here = [r for r in rows if r["task"] == task and r[key]]
        for r in here:
            marker = markers.setdefault(r["fraction"], "os^Dv*"[len(markers) % 6])
            ax.scatter(r[key], r["primary"]["mean"], color=_color(r["approach"]), marker=marker,
                       edgecolors="k" if r["family"] == "task-specific" else "none")
        if front:
            for fraction in {r["fraction"] for r in here}:
                pts = pareto([(r[key], r["primary"]["mean"]) for r in here if r["fraction"] == fraction])
                if len(pts) > 1:
                    ax.plot(*zip(*pts), color="gray", lw=0.8, ls="--")
        for approach in dict.fromkeys(r["approach"] for r in here):
            ax.scatter([], [], color=_color(approach), label=approach)
        for fraction, marker in markers.items():
            ax.scatter([], [], color="gray", marker=marker, label=f"{fraction:.0%} labels")
        ax.set(xscale="log", xlabel=label, ylabel=(here[0]["metric"] if here else ""), title=task)
        ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow log range would print overlapping minor labels
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    _save(fig, path)


def by_fraction(rows: list[dict], path: Path) -> None:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = _panels(tasks)
    for task, ax in axes.items():
        here = [r for r in rows if r["task"] == task]
        for approach in dict.fromkeys(r["approach"] for r in here):
            pts = sorted(((r["fraction"], r["primary"]) for r in here if r["approach"] == approach
                          and r["primary"]["mean"] is not None), key=lambda p: p[0])
            if not pts:  # undefined at every fraction
                continue
            x = [p[0] for p in pts]
            y = [p[1]["mean"] for p in pts]
            err = [[p[1]["mean"] - (p[1]["low"] if p[1]["low"] is not None else p[1]["mean"]) for p in pts],
                   [(p[1]["high"] if p[1]["high"] is not None else p[1]["mean"]) - p[1]["mean"] for p in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=_color(approach), label=approach,
                        ls="--" if any(r["family"] == "task-specific" for r in here if r["approach"] == approach)
                        else "-")
        ax.set(xscale="log", xlabel="fraction of training labels", ylabel=(here[0]["metric"] if here else ""),
               title=task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    _save(fig, path)


def write_all(rows: list[dict], out: Path) -> list[Path]:
    """The three PNGs under ``out``; returns their paths."""
    paths = [out / "metric_vs_trainable.png", out / "metric_vs_flops.png", out / "metric_vs_fraction.png"]
    scatter(rows, "trainable_parameters", "trainable parameters (0: drawn at 1)", paths[0], front=True, zero_at=1)
    scatter(rows, "flops_per_image", "FLOPs per image (2 x MACs)", paths[1], front=True)
    by_fraction(rows, paths[2])
    return paths
