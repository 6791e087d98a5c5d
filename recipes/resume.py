"""What ``train.resume`` may continue, checked before anything is touched (:func:`check_resume`): the same config as
the run it continues (:func:`check_same_config`), a ``train.max_steps`` that extends it, no other run written over;
a finished run is :class:`RunFinished` unless extended. Installed as ``tpp.recipes.resume``."""
from __future__ import annotations

import os
from pathlib import Path


class RunFinished(Exception):
    """``train.resume=auto`` on a run that already succeeded: nothing to do. ``str()`` is the one line to
    print; ``path`` is the run directory, ``summary`` its ``metrics.json`` (None if unreadable)."""

    def __init__(self, message: str, path: Path, summary: dict | None):
        super().__init__(message)
        self.path, self.summary = path, summary


def check_resume(path: Path, cfg) -> None:
    """What ``train.resume`` may continue, checked before anything is touched: the same config as the run in
    ``path`` except ``train.resume`` and a ``train.max_steps`` that extends it (not below the checkpoint's
    step, nor below the run's own total). A run that succeeded raises :class:`RunFinished` unless extended (also
    when ``train.resume`` names one of its own checkpoints: that re-ran its last steps and rewrote its adapter)."""
    from tpp.errors import TppError
    from tpp.run_folder import earlier_run

    if cfg.train.resume != "auto" and not (Path(cfg.train.resume) / "state.pt").is_file():
        raise TppError(f"train.resume '{cfg.train.resume}' is not a complete checkpoint folder (no state.pt); name "
                       "a checkpoints/step-N folder of the run, or use train.resume=auto.")
    origin = _run_of_checkpoint(path, cfg.train.resume)
    if origin.resolve() != path.resolve():
        refuse_run_in_the_way(path, cfg.train.resume, origin)
    step = _checkpoint_step(path, cfg.train.resume)
    if step is not None and (origin / "status.json").is_file() and not (origin / "config.yaml").is_file():
        raise TppError(f"train.resume: '{origin / 'config.yaml'}', the config of the run whose checkpoint would be "
                       "continued, is missing, so tpp cannot check that the resumed run uses the same settings (its "
                       "optimiser and schedule come from the checkpoint). Restore the file, or drop train.resume "
                       "and start over (--overwrite, or another output_dir=...).")
    check_same_config(origin, cfg.to_dict(), may_change=("train.max_steps",), defaults=_defaults(cfg))
    old = _saved_train(origin).get("max_steps")
    new = cfg.train.max_steps
    if old is not None and (new is None or new < old):
        raise TppError(f"train.max_steps: the {earlier_run(origin)} in '{origin}' was planned for {old} steps; "
                       f"resuming may extend it (train.max_steps={old} or more), not shorten it. Start a new "
                       "output_dir=... for a shorter run.")
    if new is not None and step is not None and new < step:
        raise TppError(f"train.max_steps={new} is below step {step} of the checkpoint train.resume continues from; "
                       f"set train.max_steps={step} or more.")
    if cfg.train.resume == "auto":
        refuse_finished(path, new, step)
    elif origin.resolve() == path.resolve():  # a checkpoint of the run in output_dir, named
        refuse_finished(path, new, step, resume=cfg.train.resume)


def refuse_run_in_the_way(path: Path, resume: str, origin: Path) -> None:
    """``train.resume`` names a checkpoint of the run in ``origin``, continued in ``output_dir`` ``path``: a run of
    that folder's own (finished, or with checkpoints to continue) is never written over by it (it re-ran
    ``origin``'s last steps there and replaced the finished run's adapter and metrics)."""
    from tpp.errors import TppError
    from tpp.run_folder import run_state

    state = run_state(path) if path.is_dir() else {"status": None, "checkpoints": []}
    if state["status"] == "succeeded":
        what = "a finished run"
        own = " (train.resume=auto and a larger train.max_steps extend that one)" if state["checkpoints"] else ""
    elif state["checkpoints"]:
        what = f"an interrupted run (newest checkpoint: {state['checkpoints'][-1]})"
        own = " (train.resume=auto continues that one)"
    else:
        return
    raise TppError(f"train.resume '{resume}' is a checkpoint of the run in '{origin}', but output_dir '{path}' holds "
                   f"{what} of its own, which continuing there would write over; nothing was trained. Continue "
                   f"'{origin}' into another output_dir=...{own}.")


def _run_of_checkpoint(path: Path, resume: str) -> Path:
    """The run folder whose checkpoint ``train.resume`` continues: ``path`` for auto, else the folder holding
    ``checkpoints/step-N`` (a checkpoint of another run is checked against that run's config)."""
    if resume == "auto":
        return path
    checkpoint = Path(os.path.abspath(resume))  # not resolved: OUT/checkpoints may link to a scratch disk
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else path


def _saved_train(path: Path) -> dict:
    """The ``train`` section of the run's ``config.yaml`` ({} when there is none)."""
    import yaml

    try:
        saved = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    train = saved.get("train") if isinstance(saved, dict) else None
    return train if isinstance(train, dict) else {}


def _checkpoint_step(path: Path, resume: str) -> int | None:
    """The step of the checkpoint ``train.resume`` continues from (auto: the newest in ``path``), from its
    folder name ``step-N``; None when there is none."""
    import re

    folders = [Path(resume)] if resume != "auto" else (
        list((path / "checkpoints").iterdir()) if (path / "checkpoints").is_dir() else [])
    steps = [int(m.group(1)) for p in folders if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return max(steps) if steps else None


def refuse_finished(path: Path, max_steps: int | None = None, step: int | None = None, resume: str = "auto") -> None:
    """Raise :class:`RunFinished` when the run in ``path`` succeeded (``status.json`` and ``metrics.json``):
    resuming it would re-run its last steps and rewrite its adapter. With ``max_steps`` beyond the steps it
    ran, it is extended instead, from its final checkpoint ``step`` (a TppError when that is not its last step),
    or from the checkpoint ``resume`` names (a path: the user's choice)."""
    import json

    from tpp.errors import TppError

    try:
        status = json.loads((path / "status.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return  # no run there yet, or one that never recorded a status: resume as usual
    if status != "succeeded" or not (path / "metrics.json").is_file():
        return
    try:
        summary = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        summary = None
    ran = summary.get("steps") if isinstance(summary, dict) else None
    if max_steps is not None and isinstance(ran, int) and max_steps > ran:
        if step != ran and resume == "auto":
            raise TppError(f"run '{path}' finished at step {ran} but has no checkpoint of that step "
                           f"({f'newest: step-{step}' if step else 'none'}), so it cannot be extended to "
                           f"train.max_steps={max_steps}. Start over with --overwrite (or another output_dir=...) "
                           "and train.checkpoint_every=N: a run with checkpoints also saves its last step.")
        return  # extended from its last step
    than = f" than {ran}" if isinstance(ran, int) else ""
    raise RunFinished(f"run '{path}' already finished (status.json: succeeded); train.resume={resume} has nothing to "
                      f"do (to extend it, add a larger train.max_steps{than}; to train it again, drop train.resume and "
                      "pass --overwrite, or choose another output_dir=...).", path, summary)


def _defaults(cfg) -> dict:
    """The default config of ``cfg``'s recipe and task (what a key added to tpp later meant before)."""
    from tpp.config import build_config

    from tpp.recipes.registry import RECIPES

    sections = RECIPES[cfg.recipe].sections
    chosen = {"task": cfg.task, "adapter": {"method": cfg.adapter.method}, "pretext": {"name": cfg.pretext.name},
              "data": {"source": cfg.data.source}}  # the plugins whose defaults count
    return build_config({"recipe": cfg.recipe, **{k: v for k, v in chosen.items() if k in sections}}).to_dict()


def check_same_config(path: Path, config: dict, may_change: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    """A resumed run must use the interrupted run's config (``train.resume`` itself may differ, and the dotted
    keys in ``may_change``). Only the sections of ``config`` (those its recipe reads) are compared: a
    ``config.yaml`` written before configs were scoped to their recipe holds every section. A key the saved
    config lacks (added to tpp since: ``device``, ``classification.threshold`` ...) counts as its value in
    ``defaults`` (the run ran as that default does)."""
    from tpp.config import drop_other_pretexts_defaults
    from tpp.config.parse import load_yaml
    from tpp.config.paths import resolve_paths
    from tpp.errors import TppError
    from tpp.run_folder import earlier_run

    saved_file = path / "config.yaml"
    if not saved_file.is_file():
        return
    run = earlier_run(path)  # "finished run" or "interrupted run"
    try:
        saved = load_yaml(saved_file, empty_ok=True)  # read once
        if not saved:
            raise TppError(f"config file '{saved_file}' is empty (or holds only comments).")
    except OSError as exc:
        raise TppError(f"train.resume: '{saved_file}', the {run}'s config, cannot be read "
                       f"({exc.strerror or exc}). Start over with --overwrite, or restore the file.") from None
    except TppError as exc:
        raise TppError(f"train.resume: the {run}'s config is damaged: {str(exc).rstrip('.')}. Start "
                       "over with --overwrite, or restore the file.") from None
    saved = {k: v for k, v in saved.items() if k in config}
    _unrecorded_pool_data(saved, config)
    if isinstance(saved.get("pretext"), dict):  # saved before pretext options were per pretext
        drop_other_pretexts_defaults(saved["pretext"], saved["pretext"].get("name", "mae"))
    resolve_paths(saved, os.getcwd())  # saved before paths were recorded absolute: they were the current folder's

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(saved), flat(config)
    old.update(_before_split_seed(saved))
    for key, value in flat(defaults or {}).items():
        if key in new:  # (another method's, pretext's or source's options are no keys of this run)
            old.setdefault(key, value)
    skip = {"train.resume", "output_dir", *may_change}  # the run continues where its folder now is (moved, copied)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in skip)
    if differing:
        changes = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:6])
        extend = " (only a larger train.max_steps may change)" if may_change else ""
        here = Path(str(config.get("output_dir"))).resolve() == path.resolve()  # not another run's checkpoint
        if run == "finished run" and here:  # nothing to continue: it is extended with its own config, or trained anew
            raise TppError(f"train.resume: the config differs from the finished run in '{path}' ({changes}); nothing "
                           f"was trained. A finished run is extended only with its own config{extend}; to train this "
                           "config, choose another output_dir=..., or drop train.resume and pass --overwrite to "
                           "replace the finished run.")
        raise TppError(f"train.resume: the config differs from the {run} in '{path}' ({changes}); resume "
                       f"with the same config{extend}, or start a new output_dir=... (or --overwrite without "
                       "train.resume).")


def _unrecorded_pool_data(saved: dict, config: dict) -> None:
    """A multitask run saved before its pool entries left out the data keys the recipe never reads recorded them
    (``split: test`` ...): those are dropped from the saved entries (in place), whatever their value (the run
    trained on each whole training split, so it resumes as it ran)."""
    from tpp.config.schema import MULTITASK_UNREAD_DATA_KEYS

    if config.get("recipe") != "multitask" or not isinstance(saved.get("pool"), list):
        return
    for entry in saved["pool"]:
        data = entry.get("data") if isinstance(entry, dict) else None
        for key in MULTITASK_UNREAD_DATA_KEYS if isinstance(data, dict) else ():
            data.pop(key, None)


def _before_split_seed(saved: dict) -> dict:
    """What a run saved before ``data.split_seed`` ran with: its split drawn by ``seed`` and, with fewer labels,
    validation on the whole val split (``val_label_fraction`` null meant 1 then; it means the label fraction now).
    Resuming it under today's defaults would change its split or its validation set, so these count as its
    values and the resume asks for them explicitly."""
    data = saved.get("data")
    if not isinstance(data, dict) or "split_seed" in data:
        return {}
    old = {"data.split_seed": saved.get("seed", 0)}
    fraction = data.get("label_fraction")
    if data.get("val_label_fraction") is None and isinstance(fraction, (int, float)) and fraction < 1:
        old["data.val_label_fraction"] = 1.0
    return old
