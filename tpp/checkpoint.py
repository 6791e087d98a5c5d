"""Checkpoints of a training run: only what trains, plus everything needed to continue exactly.

``OUTPUT_DIR/checkpoints/step-<N>/`` holds ``trainable.safetensors`` (the trainable tensors, never the
frozen backbone), ``best.safetensors`` (best-on-validation copy, with the state selected with it such as a
label mapping, if any), ``extra.safetensors`` (state a model keeps outside its parameters, e.g. DINO's EMA
teacher, an ILM mapping with its step counter and history) and ``state.pt`` (optimiser, scheduler, RNG
states, batches consumed, loss history; read back with ``weights_only=True``). A checkpoint is written to
a temporary folder and renamed into place, so a folder named ``step-<N>`` is always complete; the last
``keep`` are kept; the last step of a run is saved too. ``train.resume=auto`` continues from the newest one
in the run directory, also to a larger ``train.max_steps`` than the run was planned for.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tpp.errors import TppError

_STEP_RE = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


CHECKPOINT_FILES = frozenset({"trainable.safetensors", "best.safetensors", "extra.safetensors", "state.pt"})


def is_checkpoint(path: Path) -> bool:
    """A real folder (no link) holding only a checkpoint's files: the only kind rotation deletes, so a
    ``step-1`` folder of the user's (a linked ``checkpoints/`` shared with other work) is never removed."""
    return path.is_dir() and not path.is_symlink() and all(e.name in CHECKPOINT_FILES for e in path.iterdir())


class Checkpointer:
    """Saves every ``every`` steps into ``run_path/checkpoints`` (main process only); loads one to resume."""

    def __init__(self, run_path: Path, every: int | None, keep: int = 2, resume: str | None = None, main: bool = True):
        self.dir = Path(run_path) / "checkpoints"
        self.every, self.keep, self.main = every, keep, main
        self.asked = resume  # train.resume as given (None: a fresh run)
        self.resume_from = self._resume_path(resume)

    def _resume_path(self, resume: str | None) -> Path | None:
        if not resume:
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if not (path / "state.pt").is_file():
            raise TppError(f"train.resume '{path}' is not a complete checkpoint folder (no state.pt).")
        return path

    def latest(self) -> Path | None:
        if not self.dir.is_dir():
            return None
        steps = sorted((int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_RE.fullmatch(p.name)))
        return steps[-1][1] if steps else None

    def _earlier(self, path: Path) -> str:
        """A hint naming the other checkpoints of this run a resume could start from ("" when there are none)."""
        others = sorted((int(m.group(1)), p) for p in (self.dir.iterdir() if self.dir.is_dir() else [])
                        if (m := _STEP_RE.fullmatch(p.name)) and p != path and is_checkpoint(p))
        if not others:
            return ""
        return (f" Earlier checkpoints: {', '.join(p.name for _, p in others)}; continue from one with "
                f"train.resume={others[-1][1]}.")

    def due(self, step: int, num_steps: int) -> bool:
        """Every ``every`` steps, and the last step: a finished run can be extended (``train.max_steps``)."""
        return bool(self.every) and (step % self.every == 0 or step == num_steps)

    def save(self, step: int, trainable: dict, best: dict | None, extra: dict, state: dict) -> Path:
        """Write one checkpoint atomically, then drop the oldest beyond ``keep``."""
        if not self.main:
            return self.dir / f"step-{step}"
        tmp, final = self.dir / f".step-{step}.tmp", self.dir / f"step-{step}"
        files = {"trainable.safetensors": {k: v.detach().contiguous().cpu() for k, v in trainable.items()}}
        if best is not None:
            files["best.safetensors"] = {k: v.contiguous().cpu() for k, v in best.items()}
        if extra:
            files["extra.safetensors"] = {k: v.contiguous().cpu() for k, v in extra.items()}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name, tensors in files.items():
                save_file(tensors, str(tmp / name))
            torch.save(dict(state, step=step), tmp / "state.pt")
            if final.exists() and not is_checkpoint(final):
                raise TppError(f"'{final}' exists and is no checkpoint (it holds other files); tpp will not replace "
                               "it. Move it, or use another output_dir.")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException as exc:  # disk full, Ctrl-C ...: no half-written folder stays behind
            shutil.rmtree(tmp, ignore_errors=True)
            # only writes happen above: torch.save reports a failed one as RuntimeError, safetensors as its own
            if isinstance(exc, (OSError, RuntimeError, SafetensorError)):
                full = not isinstance(exc, OSError) or exc.errno in (errno.ENOSPC, errno.EDQUOT)
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise TppError(f"cannot write checkpoint '{final}': {reason}."
                               + (" Free some space (or lower train.keep_checkpoints), then continue with "
                                  "train.resume=auto." if full else "")) from exc
            raise
        for old in sorted((int(m.group(1)), p) for p in self.dir.iterdir()
                          if (m := _STEP_RE.fullmatch(p.name)) and is_checkpoint(p))[:-self.keep]:
            shutil.rmtree(old[1], ignore_errors=True)  # only folders holding nothing but a checkpoint's files
        return final

    def load(self) -> tuple[dict, dict | None, dict, dict]:
        """(trainable tensors, best tensors or None, extra tensors, state) of the resume checkpoint."""
        path = self.resume_from
        try:
            with warnings.catch_warnings():  # torch's notes on a foreign pickle: the error below is the message
                warnings.simplefilter("ignore")
                # map to the CPU: a run checkpointed on a GPU resumes on a machine without one (Accelerate
                # moves the optimiser state to the model's device when it is loaded)
                state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
            trainable = load_file(str(path / "trainable.safetensors"))
            best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").is_file() else None
            extra = load_file(str(path / "extra.safetensors")) if (path / "extra.safetensors").is_file() else {}
        except Exception as exc:  # unpickling refused, truncated file ...
            first = (str(exc).strip().splitlines() or [""])[0][:200].rstrip(" .")  # torch's text runs for lines
            raise TppError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {first}): it is damaged, or "
                           f"not one tpp wrote.{self._earlier(path)}") from None
        named = _STEP_RE.fullmatch(path.name)
        if named and isinstance(state, dict) and state.get("step") != int(named.group(1)):
            raise TppError(f"checkpoint '{path}' holds step {str(state.get('step'))[:20]}, not the step its name "
                           "says (a renamed or linked folder); resume from the folder of that step.")
        return trainable, best, extra, state


# -- checking what a checkpoint holds before any of it is applied --------------------------------------------

def check_state(state, source: Path, required: tuple[str, ...], max_batches_per_step: int) -> None:
    """Refuse a ``state.pt`` that is not what a run writes (a damaged or foreign file): a mapping with the
    ``required`` keys, a whole ``step`` of at least 1 and ``batches`` (an int, or one per task) between 0 and
    ``step * max_batches_per_step`` (a huge count would replay the loader for ever)."""
    def refuse(what: str):
        raise TppError(f"checkpoint '{source}': state.pt {what}; it is not one tpp wrote, or it was damaged. "
                       "Resume from another checkpoint (train.resume=PATH) or start over (--overwrite).")

    if not isinstance(state, dict):
        refuse(f"holds a {type(state).__name__}, not a mapping")
    missing = [k for k in ("step", *required) if k not in state]
    if missing:
        refuse(f"lacks {', '.join(missing)}")
    step = state["step"]
    if not _whole(step) or step < 1:
        refuse(f"has step {str(step)[:40]!r}")
    counts = state["batches"] if isinstance(state["batches"], list) else [state["batches"]]
    if not all(_whole(b) and 0 <= b <= step * max_batches_per_step for b in counts):
        refuse(f"says {str(state['batches'])[:60]} batches were used by step {step} (at most "
               f"{max_batches_per_step} per step)")
    if not isinstance(state.get("losses", []), list):
        refuse("has a loss history that is no list")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def restore_tensors(params: dict, saved: dict, source: Path, what: str = "trainable tensors") -> None:
    """Copy ``saved`` into the parameters ``params`` (same names, checked by the caller) once every tensor has
    been checked: the same shape (a checkpoint of another ``adapter.r`` would broadcast in silently), a floating
    dtype and finite values. Nothing is copied unless all pass."""
    check_tensors(params, saved, source, what)
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def check_tensors(params: dict, saved: dict, source: Path, what: str) -> None:
    """:func:`restore_tensors`' checks alone (for the best-step copy, applied only at the end of the run)."""
    for name, value in saved.items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise TppError(f"checkpoint '{source}': {what} '{name}' has shape {tuple(value.shape)}, this run's "
                           f"{tuple(params[name].shape)}; was the config changed (adapter.r, the model)?")
        if not value.is_floating_point() or not torch.isfinite(value).all():
            raise TppError(f"checkpoint '{source}': {what} '{name}' is not finite floating-point data; the "
                           "checkpoint is damaged.")


class applying:
    """``with applying(source):`` turns an error while a checkpoint's state is put back (an optimiser state of
    another model, a foreign RNG state, an unknown extra tensor) into a :class:`TppError` naming it."""

    def __init__(self, source: Path):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, TppError) or not isinstance(exc, Exception):
            return False
        raise TppError(f"checkpoint '{self.source}' does not fit this run, or is damaged ({kind.__name__}: "
                       f"{str(exc)[:200]}); resume from another checkpoint (train.resume=PATH) or start over "
                       "(--overwrite).") from None


def resync_learning_rate(optimizer, scheduler) -> None:
    """After loading a checkpoint: each group's learning rate from this run's schedule at the checkpoint's step.
    The optimizer's saved rate is the one the checkpointed schedule set for the next step; a run extended by
    ``train.max_steps`` follows a re-planned curve (at the old end the saved rate is 0, so the first new step
    would not train). For an unchanged schedule both are the same."""
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps it
    rules = getattr(inner, "lr_lambdas", None)
    if rules is None:
        return
    for group, base, rule in zip(optimizer.param_groups, inner.base_lrs, rules):
        group["lr"] = base * rule(inner.last_epoch)
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]
