"""``tpp plot RUN_DIR``: training loss and validation curves of a run, from its ``log.jsonl``, as a PNG."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tpp.errors import TppError


def read_log(run_dir: Path) -> tuple[list, dict]:
    """(loss points [(step, loss)], validation curves {metric: [(step, value)]}) of a run."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        raise TppError(f"'{run_dir}' has no log.jsonl: it is not a tpp run directory.")
    losses, curves = {}, {}
    lines = log.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line of a run killed mid-write
                continue
            raise TppError(f"'{log}' line {number} is not JSON.") from None
        if record.get("event") == "step":  # a resumed run repeats steps after its checkpoint: the last wins
            losses[record["step"]] = record["loss"]
        elif record.get("event") == "eval":
            for key, value in record.items():
                if key.startswith("val_") and isinstance(value, (int, float)):
                    curves.setdefault(key, {})[record["step"]] = value
    losses = sorted(losses.items())
    curves = {k: sorted(v.items()) for k, v in curves.items()}
    if not losses:
        raise TppError(f"'{log}' holds no training steps yet.")
    return losses, curves


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the PNG (default ``RUN_DIR/curves.png``) atomically and return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TppError("tpp plot needs matplotlib: pip install 'tpp[bench]'.") from None
    run_dir = Path(run_dir)
    losses, curves = read_log(run_dir)
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(10 if curves else 5, 3.5), squeeze=False)
    axes[0][0].plot(*zip(*losses), lw=1)
    axes[0][0].set(xlabel="step", ylabel="training loss", title=run_dir.name)
    if curves:
        for name, points in curves.items():
            axes[0][1].plot(*zip(*points), marker="o", ms=3, label=name)
        axes[0][1].set(xlabel="step", ylabel="validation", title="validation metrics")
        axes[0][1].legend()
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out
