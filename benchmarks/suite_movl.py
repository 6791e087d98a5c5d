"""MoVL as approaches of the standardised suite (issues 24 and 26): ``movl`` and ``movl+tpp``.

A suite cell (classification task, approach, label fraction, seed) of these approaches IS the
``benchmarks/movl.py`` cell of the method of the same name: the same protocol (``movl.PROTOCOL``: 200 steps, the
36-px prompted input, the clean and MedMNIST-C evaluation), run by ``movl.run_cell``, kept in movl.py's cache
(``<cache root>/movl/<id>/``, movl.py's default location) through ``movl.Cache``, so a cell filled by either
script counts for both; a published ``movl.json`` seeds it through ``movl.Cache.adopt``.

The suite report reads a few fields movl.py cells do not all have; :func:`suite_cell` adds them (never replacing
movl.py's own): ``finetune_s`` / ``tpp_s`` are the recipes' wall times where the cell recorded them, else
``finetune_s`` is the cell's whole ``wall_s`` (fine-tuning, TPP and the clean + corrupted evaluation) and
``train_s_is_wall_s`` says so. ``bytes_per_site`` is left to the suite's default (the trainable tensors in fp32),
as for every other generalist row; movl.py's ``saved_bytes`` (the adapter folder as saved) stays in the cell.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import movl

APPROACHES = ("movl", "movl+tpp")  # movl.py's methods of these names


def is_movl_cell(cell: dict) -> bool:
    """A cell measured by movl.py (every one carries its corrupted AUROC per severity; no other bench's does)."""
    return isinstance(cell, dict) and "corrupted_auroc" in cell


def suite_cell(cell: dict) -> dict:
    """A movl.py cell with the fields the suite report reads added (see the module docstring)."""
    if cell.get("finetune_s") is not None:
        return {"tpp_s": None, **cell}
    return {**cell, "finetune_s": cell["wall_s"], "tpp_s": None, "train_s_is_wall_s": True}


def published_as(approach: str, cell: dict) -> dict | None:
    """A published report's cell as a suite cell of ``approach``, or None when another bench measured it (the
    ``full`` cells of movl.json are no cells of the suite's ``full``, nor a tpp_gain cell one of ``movl``)."""
    if (approach in APPROACHES) != is_movl_cell(cell):
        return None
    return suite_cell(cell) if approach in APPROACHES else cell


def report_note(cells: list[tuple]) -> str:
    """The report's sentence on MoVL rows whose train s is a whole cell's wall time (empty when there are none);
    ``cells``: (Task, approach, fraction, seed, cell) as suite_report.collect gives them."""
    flagged = sorted({f"{t.name} {a} {f:.0%}" for t, a, f, _s, c in cells if c.get("train_s_is_wall_s")})
    if not flagged:
        return ""
    p, prompt = movl.PROTOCOL, movl.PROTOCOL["prompt"]
    return (f"\nMoVL rows (benchmarks/movl.py's cells: {p['finetune_steps']} steps at batch {p['batch_size']}, the "
            f"last step, the image inside a {prompt['pad']}-px prompt frame; FLOPs and latency at "
            f"{prompt['input_size']} px): train s of " + "; ".join(flagged) + " is the whole "
            "cell's wall time (fine-tuning, TPP and the clean + MedMNIST-C corrupted evaluation), measured before "
            "movl.py recorded the fine-tuning's own.")


class MovlBench:
    """Suite cells of ``movl`` / ``movl+tpp`` in movl.py's cache (``cache`` is that cache's folder, e.g.
    ``<suite cache root>/movl``)."""

    def __init__(self, cache: Path, backbone: str, data_root: str):
        self.cache, self.backbone, self.data_root = movl.Cache(Path(cache), backbone), backbone, data_root
        self.protocol = movl.PROTOCOL

    def cached(self, task, approach: str, fraction: float, seed: int) -> dict | None:
        cell = self.cache.cached(task.name, fraction, seed, approach)
        return suite_cell(cell) if cell else None

    def run_cell(self, task, approach: str, fraction: float, seed: int) -> dict:
        """``movl.run_cell`` in a temporary folder (only the numbers are kept), stored through ``movl.Cache``."""
        with tempfile.TemporaryDirectory() as work:
            cell = movl.run_cell(task.name, fraction, seed, approach, self.data_root, self.backbone, Path(work))
        self.cache.store(cell)
        return self.cached(task, approach, fraction, seed)

    def adopt(self, published: Path) -> int:
        """The cells of a published report (movl.json, or a suite.json holding movl cells) under movl's id."""
        return self.cache.adopt(published)
