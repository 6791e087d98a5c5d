"""What an existing run folder holds, read without writing it: its state (:func:`run_state`: status, error,
checkpoints, a damaged ``status.json``), whether it is a run's folder that may be replaced (:func:`only_run_files`,
:func:`holds_a_run`), and the words for refusing it (:func:`not_empty_message`, :func:`some_entries`). The writer
of run folders: :mod:`tpp.rundir`."""
from __future__ import annotations

import json
from pathlib import Path

RUN_STATES = ("running", "succeeded", "failed")  # what status.json says
RUN_FILES = frozenset({"config.yaml", "log.jsonl", "status.json", "splits.json", "skipped.csv", "metrics.json",
                       "predictions.csv", "roc.png", "calibration.png", "curves.png", "adapter", "backbone", "model",
                       "heads", "overlays", "checkpoints", "tracker"})  # what a run writes into its folder
LOCK_FILE = ".tpp-lock"  # the lock of the run writing the folder (tpp.run_lock); removed when it ends


def entries(path: Path) -> list[Path]:
    """The entries of folder ``path`` but :data:`LOCK_FILE` (a run's lock, or a killed run's leftover, is no
    content: a folder holding only that is empty)."""
    return [e for e in Path(path).iterdir() if e.name != LOCK_FILE]


def only_run_files(path: Path) -> bool:
    """Whether every entry of ``path`` is one a run writes (:data:`RUN_FILES`, or a hidden temporary one of
    :meth:`~tpp.rundir.RunDir.publish_dir` / :func:`~tpp.safe_write.write_atomic`): only such a folder is replaced
    without ``overwrite``, so a folder of the user's that merely holds a ``status.json`` saying "failed" is never
    deleted."""
    return all(e.name in RUN_FILES or (e.name.startswith(".") and e.name.endswith((".tmp", ".old", ".tmp.png")))
               for e in entries(path))


def holds_a_run(path: Path, state: dict) -> bool:
    """Whether ``path`` is a run's folder that ``--overwrite`` may empty: it holds only files a run writes, among
    them the ``status.json`` or ``log.jsonl`` every run writes first; or a run's ``status.json`` (saying running,
    succeeded or failed) and its ``log.jsonl`` beside other files. A folder of the user's (notes, images, a home
    folder, a project folder holding just its ``config.yaml``) is not, nor one whose stray ``status.json`` is
    another tool's or no JSON at all (a damaged one counts only among a run's own files)."""
    path = Path(path)
    started = (path / "status.json").exists() or (path / "log.jsonl").is_file()
    return (only_run_files(path) and started) or (state["status"] is not None and (path / "log.jsonl").is_file())


def run_state(path: Path) -> dict:
    """What a run directory holds: ``status`` (``status.json``'s: running, succeeded, failed; None when it
    is no run's), its recorded ``error``, its ``checkpoints`` (``step-N`` folder names, oldest first) and
    ``damaged``: why a ``status.json`` that is there says no status (None when it is fine or absent)."""
    recorded, damaged = None, None
    try:
        recorded = json.loads((Path(path) / "status.json").read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        damaged = f"it cannot be read: {exc.strerror or exc}" if isinstance(exc, OSError) else f"it is not JSON: {exc}"
    if recorded is not None and not (isinstance(recorded, dict) and recorded.get("status") in RUN_STATES):
        damaged = f"it holds no run status ({str(recorded)[:60]!r})"
    recorded = recorded if isinstance(recorded, dict) and not damaged else {}
    folder = Path(path) / "checkpoints"
    steps = sorted((int(p.name[5:]), p.name) for p in folder.glob("step-*") if p.name[5:].isdigit()) \
        if folder.is_dir() else []
    return {"status": recorded.get("status"), "error": recorded.get("error"), "checkpoints": [n for _, n in steps],
            "damaged": damaged}


def earlier_run(path: Path) -> str:
    """What a resume continues in ``path``, in words: "finished run" when its ``status.json`` says succeeded (an
    extension), else "interrupted run"."""
    return "finished run" if run_state(path)["status"] == "succeeded" else "interrupted run"


def damaged_status(path: Path, state: dict) -> str:
    """The words for a run folder whose ``status.json`` is damaged (see :func:`run_state`)."""
    return (f"holds a damaged status.json ({state['damaged']}), so tpp cannot tell whether, or how, the run in "
            "it ended")


def some_entries(path: Path, shown: int = 3) -> str:
    """The first few entries of a folder by name (folders with a trailing /), and how many more."""
    try:
        found = sorted(entries(path))
    except OSError:
        return "unreadable"
    names = [e.name + ("/" if e.is_dir() else "") for e in found[:shown]]
    return ", ".join(names) + (f" and {len(found) - shown} more" if len(found) > shown else "")


def not_empty_message(path: Path, state: dict) -> str:
    """Why ``output_dir`` is refused, and the three ways on: continue, start over, go elsewhere."""
    newest = f" (newest: {state['checkpoints'][-1]})" if state["checkpoints"] else ""
    failed = (f"holds a failed run with checkpoints{newest}" if state["checkpoints"] else
              "says a run failed there but also holds files no run writes (so it is not replaced)")
    what = {
        "failed": failed + (f"; it failed with: {str(state['error']).rstrip('.')}" if state["error"] else ""),
        "succeeded": f"holds a finished run{newest}",
        "running": f"holds a run that is still running or was killed{newest}",
    }.get(state["status"]) or (damaged_status(path, state) if state["damaged"] else
                               f"is not empty and holds no tpp run ({some_entries(path)})")
    if not holds_a_run(path, state):
        if state["status"] is not None or state["damaged"]:  # a status.json among files of the user's
            log = "" if (Path(path) / "log.jsonl").is_file() else " and no run's log.jsonl"
            what = (f"holds a status.json ({state['status'] or state['damaged']}) but also holds files no run writes "
                    f"({some_entries(path)}){log}: it is no tpp run's folder")
        return (f"output_dir '{path}' {what}. It is no run to continue, and tpp never deletes a folder that holds no "
                "run, not even with --overwrite: choose another output_dir=... (or empty this one yourself)")
    if state["damaged"]:
        resume = "train.resume will not continue it"
    elif state["status"] == "succeeded":  # nothing to continue: train.resume=auto only extends it
        resume = ("Extend it with train.resume=auto and a larger train.max_steps" if state["checkpoints"] else
                  "It has no checkpoint, so train.resume cannot extend it")
    elif state["checkpoints"]:
        resume = "Continue it with train.resume=auto (a larger train.max_steps extends it)"
    elif state["status"]:
        resume = "train.resume=auto continues a run from its newest checkpoint (this one has none)"
    else:
        resume = "It is no run to continue"
    return (f"output_dir '{path}' {what}. {resume}; pass --overwrite to delete it and start over; or choose "
            "another output_dir=...")
