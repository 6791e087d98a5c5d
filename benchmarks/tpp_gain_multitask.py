"""Multi-task TPP adapters for ``tpp_gain.py``'s ``<method>+tpp_multitask`` cells.

The adapter's target parameters (LoRA on the frozen backbone, the fine-tuning cells' rank and alpha) are
pre-trained by the ``multitask`` recipe instead of the ``tpp`` recipe: the pool of
``recipes/configs/multitask/tpp_pool.yaml`` without its evaluation targets (BloodMNIST, OrganAMNIST, DermaMNIST
JPEG, MedNIST classification) plus the shipped config's MAE task on the **target's own** training images (the
one overlap ``multitask.eval_targets`` allows). Everything else (schedule, sampler, optimiser settings, flips)
is the shipped config's, so the benchmark measures what ``tpp run multitask`` does.

The budget (:data:`MULTITASK_PROTOCOL`) is kept out of ``tpp_gain.PROTOCOL``: adding keys there would change
the protocol id of every cached cell. It is part of each adapter's stamp and of each cell (``tpp_protocol``),
so a change of the pool, the shipped config or the budget retrains the adapters and reruns their cells.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

PRETEXT = "multitask"  # 'lora+tpp_multitask'
POOL_CONFIG = "multitask/tpp_pool.yaml"  # under tpp.recipes.CONFIG_DIR
# cycles = shared-parameter optimiser steps (as MAE-TPP's 400 steps); one cycle = one batch of every task
MULTITASK_PROTOCOL = {"multitask_tpp_steps": 400, "multitask_tpp_batch_size": 32, "multitask_tpp_lr": 1e-3,
                      "multitask_schedule": "cycle", "multitask_sampler": "cyclic"}
QUICK_MULTITASK_PROTOCOL = dict(MULTITASK_PROTOCOL, multitask_tpp_steps=60)
_LOCAL = ("output_dir", "seed")  # keys of this machine and run, not of the protocol


@functools.lru_cache(maxsize=1)
def shipped_config() -> dict:
    """``tpp_pool.yaml`` as a mapping (its relative paths, if any, are not used: the bench sets every path)."""
    from tpp.config import load_yaml
    from tpp.recipes import CONFIG_DIR

    return load_yaml(CONFIG_DIR / POOL_CONFIG)


def pool_for(target: str, shipped: dict) -> list[dict]:
    """The pool for ``target``: the shipped classification tasks that are no evaluation target, then the shipped
    MAE task (head, weight) on ``target``'s own training images. ``target`` must be a MedMNIST dataset name."""
    from tpp.multitask_build import origin_of

    evals = {origin_of(t).lower() for t in shipped["multitask"]["eval_targets"]} | {origin_of(target).lower()}
    tasks = [copy.deepcopy(e) for e in shipped["pool"] if e["kind"] == "classification"
             and origin_of(e["data"].get("origin") or e["data"]["name"]).lower() not in evals]
    mae = next((e for e in shipped["pool"] if e["kind"] == "mae"), None)
    if mae is None:
        from tpp.errors import TppError

        raise TppError(f"{POOL_CONFIG} has no 'mae' task: multi-task TPP pre-trains on the target's own images through "
                       "it; add one (kind: mae) to the pool.")
    return tasks + [dict(copy.deepcopy(mae), data={"source": "medmnist", "name": target})]


def multitask_config(target: str, adapter: dict, mt: dict, shipped: dict | None = None) -> dict:
    """The multitask run's config without machine paths and seed (what a stamp and a cell record): the shipped
    config with the pool for ``target``, the adapter section ``adapter`` (the fine-tuning cells') and the budget
    ``mt`` (:data:`MULTITASK_PROTOCOL`); no checkpoints (a cached adapter is never resumed)."""
    cfg = {k: v for k, v in copy.deepcopy(shipped or shipped_config()).items() if k not in _LOCAL}
    cfg["adapter"] = dict(adapter)
    cfg["pool"] = pool_for(target, cfg)
    cfg["multitask"] |= {"scope": "target", "schedule": mt["multitask_schedule"],
                         "sampler": mt["multitask_sampler"]}
    cfg["train"] |= {"max_steps": mt["multitask_tpp_steps"], "batch_size": mt["multitask_tpp_batch_size"],
                     "lr": mt["multitask_tpp_lr"], "checkpoint_every": None}
    return cfg


def cell_config(mt: dict, pretext: str | None, source: str, adapter: dict) -> dict | None:
    """What a tpp_gain cell records as ``tpp_protocol`` (its cache key with it): the multi-task run config
    (pool, budget) of a '+tpp_multitask' cell, None for any other method (cells from before it have none)."""
    return multitask_config(source, adapter, mt) if pretext == PRETEXT else None


# Pool data keys that change what a card records, not a number the run computes: a cell recorded under another
# value (MedNIST's tasks were tagged CT until 2026-12-02, now unknown) is the same measurement.
METADATA_KEYS = ("modality", "license")


def same_protocol(recorded: dict | None, current: dict | None) -> bool:
    """Whether a cached cell's ``tpp_protocol`` is ``current`` (:func:`cell_config`), up to
    :data:`METADATA_KEYS` of its pool's data sections."""
    return _numbers_only(recorded) == _numbers_only(current)


def _numbers_only(config: dict | None) -> dict | None:
    """``config`` without its pool entries' :data:`METADATA_KEYS`."""
    if not isinstance(config, dict):
        return config
    config = copy.deepcopy(config)
    for entry in config.get("pool") or []:
        for key in METADATA_KEYS:
            (entry.get("data") or {}).pop(key, None)
    return config


def stamp(tpp_id: str, config: dict) -> str:
    """What a cached multi-task adapter must match: the TPP protocol id (backbone content included) and the
    run's config (pool, budget, schedule)."""
    return tpp_id + json.dumps(config, sort_keys=True)


def check(adapter: dict, variant_or_source: bool = False) -> None:
    """The recipe's own checks of the config for both default targets (a method without target parameters, a
    bad pool, an evaluation-target overlap): raises TppError / ConfigError at once, as for a '~variant' or
    '@source' (multi-task TPP has neither)."""
    from tpp.config import load_config
    from tpp.errors import TppError
    from tpp.recipes import get_recipe

    if variant_or_source:
        raise TppError(f"multi-task TPP takes no '~variant' or '@source': its pool is {POOL_CONFIG}'s "
                       "classification tasks plus MAE on the target's own images (benchmarks/tpp_gain_multitask.py).")
    mt = MULTITASK_PROTOCOL
    for target in ("breastmnist", "pneumoniamnist"):
        get_recipe("multitask").check(load_config(multitask_config(target, adapter, mt), recipe="multitask"))


def adapter_job(bench, source: str, method: str, adapter: dict, seed: int):
    """(folder name, stamp, ``train(folder)``) of the multi-task TPP adapter for (source, method, seed) in
    ``bench``'s cache; ``tpp_gain.train_once`` trains it once (reused by every label fraction)."""
    from tpp.recipes import run_recipe

    config = multitask_config(source, adapter, bench.multitask)

    def train(partial: Path) -> None:
        run = dict(copy.deepcopy(config), seed=seed, output_dir=str(partial),
                   backbone=dict(config["backbone"], path=bench.backbone),
                   data=dict(config.get("data") or {}, root=bench.data_root))
        run_recipe("multitask", run, overwrite=True)

    return f"{source}_{method}_{PRETEXT}_s{seed}", stamp(bench.tpp_id, config), train
