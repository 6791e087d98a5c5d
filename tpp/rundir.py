"""The run directory: a log that is always there, published artefacts that appear only on success.

``config.yaml`` and ``log.jsonl`` are written as the run goes; the adapter directory and
``metrics.json`` are written to a temporary path and renamed into place (``os.replace``) only when
the run succeeds. ``status.json`` says ``running``, ``succeeded`` or ``failed`` (with the error).
The atomic and strict-JSON writes it uses live in :mod:`tpp.safe_write`; what an existing run folder holds (its
state, whether it may be replaced, the words for refusing it) in :mod:`tpp.run_folder`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import yaml
from safetensors import SafetensorError

from tpp.errors import TppError
from tpp.run_folder import (damaged_status, entries, holds_a_run, not_empty_message, only_run_files, run_state,
                            some_entries)
from tpp.run_lock import lock_folder, refuse_if_in_use, unlock_folder  # noqa: F401 (refuse_if_in_use: cli, recipes)
from tpp.safe_write import finite_json, write_atomic, write_error


def _json_default(value):
    if hasattr(value, "tolist"):
        return finite_json(value.tolist())
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")



class RunDir:
    """One run's output directory; ``main`` is False on non-main processes (they write nothing)."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, main: bool = True, resume: bool = False,
                 started: float | None = None):
        """``resume``: continue in an existing run directory (its log is appended to, nothing deleted).
        A non-empty directory is refused (:func:`~tpp.run_folder.not_empty_message` says why and what to do) unless
        ``overwrite``, or it holds a failed run without a checkpoint: that one is replaced, so the corrected
        command simply runs again. ``started`` (``time.time()``): when the command began (default now)."""
        self.path = Path(path)
        self.main = main
        self.started = time.time() if started is None else started
        self.set_aside: Path | None = None  # --overwrite: the previous contents, until this run succeeds
        self.earlier_aside: list[Path] = []  # resume: what an earlier --overwrite run that failed kept aside
        self.resumed: tuple[str, str | None, dict] | None = None  # resume: status.json, config.yaml, checkpoints
        self._lock_fd: int | None = None  # the folder's lock, held while this run writes it
        self._log_checked = False  # whether log.jsonl's last line (an earlier run's) was checked for an end
        self.earlier_s = 0.0  # resume from a checkpoint: the seconds the run's earlier segments logged
        if not main:
            return
        if self.path.exists() and not self.path.is_dir():
            raise TppError(f"output_dir '{self.path}' is a file; choose another output_dir=...")
        try:
            if self.path.is_dir():
                self._lock()
            self._open(overwrite, resume)
        except BaseException:
            self.release()
            raise

    def _lock(self) -> None:
        """Hold an exclusive lock on the folder (:mod:`tpp.run_lock`; released by :meth:`release` or when the
        process ends, even by SIGKILL): a second tpp process in the same ``output_dir`` (a resume of a run still
        going), on this machine or another one sharing the folder, is refused."""
        self._lock_fd = lock_folder(self.path)

    def release(self) -> None:
        """Release the folder's lock (the run is over); its lock file goes with it."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            unlock_folder(self.path, fd)

    def _open(self, overwrite: bool, resume: bool) -> None:
        """:meth:`__init__`'s work once the folder (if it exists) is locked."""
        if resume and self.path.is_dir() and self._nothing_to_continue():
            resume = False  # replaced below, with a note, as a failed run without a checkpoint is without resume
        if resume and self.path.is_dir():
            state = run_state(self.path)
            if state["damaged"] and not holds_a_run(self.path, state):  # --overwrite would refuse it too
                raise TppError(not_empty_message(self.path, state))
            if state["damaged"]:
                raise TppError(f"output_dir '{self.path}' {damaged_status(self.path, state)}; train.resume will not "
                               "continue it. Pass --overwrite to start over, or choose another output_dir=...")
            if entries(self.path) and state["status"] is None:
                raise TppError(f"output_dir '{self.path}' holds no tpp run ({some_entries(self.path)}), so "
                               "train.resume has nothing to continue there and tpp will not write into it. Drop "
                               "train.resume, or choose another output_dir=...")
            self.earlier_aside = sorted(self.path.glob(f"{SET_ASIDE}*.old"))
            if state["checkpoints"]:  # continued, not started over: the earlier segments' time counts
                self.earlier_s = logged_seconds(self.path / "log.jsonl")
            with contextlib.suppress(OSError):
                config = self.path / "config.yaml"
                self.resumed = ((self.path / "status.json").read_text(),
                                config.read_text() if config.is_file() else None, _checkpoint_stamps(self.path))
            self.status("running")
            return
        replaced = None
        try:
            if self.path.is_dir() and entries(self.path):
                state = run_state(self.path)
                if not overwrite and not (state["status"] == "failed" and not state["checkpoints"]
                                          and only_run_files(self.path)):
                    raise TppError(not_empty_message(self.path, state))
                if overwrite and not holds_a_run(self.path, state):  # a typo'd output_dir=~ must never be emptied
                    raise TppError(not_empty_message(self.path, state))
                if overwrite:
                    self.set_aside = move_entries(self.path, self.path / f"{SET_ASIDE}{os.getpid()}.old")
                else:
                    replaced = state
                    for entry in entries(self.path):  # the lock file stays (this run holds it)
                        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            self.path.mkdir(parents=True, exist_ok=True)
            if self._lock_fd is None:
                self._lock()
        except OSError as exc:  # a file in the path, no permission (/proc ...), read-only disk
            at = f" (at '{exc.filename}')" if exc.filename and str(exc.filename) != str(self.path) else ""
            raise TppError(f"output_dir '{self.path}' cannot be created: {exc.strerror or exc}{at}. "
                           "Choose another output_dir=...") from None
        try:
            self.status("running")
        except BaseException:  # a full disk, a signal: what --overwrite set aside goes back first
            self.restore_overwritten()
            raise
        if replaced is not None:
            print(f"[tpp] replacing the failed run in '{self.path}' (it had no checkpoint to continue from; it failed "
                  f"with: {replaced['error'] or 'no error recorded'})", file=sys.stderr, flush=True)
            self.log(event="replaced_failed_run", error=replaced["error"])

    def _nothing_to_continue(self) -> bool:
        """``train.resume`` on a run that failed (Ctrl-C included) before its first checkpoint: there is nothing to
        continue, so the run starts over in place, said and logged, as without ``train.resume`` (it used to
        restart silently and append a second step 1 to the old log)."""
        state = run_state(self.path)
        return (not state["damaged"] and state["status"] == "failed" and not state["checkpoints"]
                and only_run_files(self.path))

    def succeeded(self) -> None:
        """Mark the run succeeded; what ``--overwrite`` set aside is deleted now (also when this run resumed one
        that ``--overwrite`` started: the overwrite is then complete)."""
        aside, self.set_aside = self.set_aside, None
        self.status("succeeded")
        for folder in ([aside] if aside is not None else []) + self.earlier_aside:
            shutil.rmtree(folder, ignore_errors=True)
        self.earlier_aside = []

    def restore_finished(self) -> str | None:
        """After a failure of a run that extended a finished one: when it wrote no checkpoint (its files are those
        of the finished run), put back that run's ``status.json`` and ``config.yaml`` (the extension's larger
        ``train.max_steps`` never ran). Returns a sentence for the user, or None."""
        if self.resumed is None or '"succeeded"' not in self.resumed[0]:
            return None
        status, config, checkpoints = self.resumed
        if _checkpoint_stamps(self.path) != checkpoints:  # one written or rewritten: the run has moved on
            return None
        if config is not None:
            write_atomic(self.path / "config.yaml", config)
        write_atomic(self.path / "status.json", status)
        return f"the finished run in '{self.path}' is unchanged (status.json says succeeded again)"

    def restore_overwritten(self) -> str | None:
        """After a failure: put back what ``--overwrite`` set aside (a hidden folder inside ``output_dir``, so mount
        points and linked folders work), unless this run left checkpoints to resume (then both stay). Renames only,
        with SIGINT / SIGTERM held until done. Returns a sentence for the user (None: nothing set aside)."""
        aside, self.set_aside = self.set_aside, None
        if aside is None:
            return None
        with signals_held():
            if run_state(self.path)["checkpoints"]:
                return (f"the previous contents of '{self.path}' are kept in '{aside}' (this run left checkpoints "
                        "to resume with train.resume=auto)")
            failed = move_entries(self.path, self.path / f"{SET_ASIDE}{os.getpid()}.failed.old", keep=aside)
            move_entries(aside, self.path)
            aside.rmdir()
        shutil.rmtree(failed, ignore_errors=True)
        return f"--overwrite replaced nothing: the previous contents of '{self.path}' are back in place"

    def write_config(self, config: dict) -> None:
        if self.main:
            write_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def log(self, **record) -> None:
        """Append one JSON line to ``log.jsonl`` (with wall time since start); a last line cut short by a killed
        or full-disk run is ended first, so the resumed run's lines stay lines of their own."""
        if self.main:
            record = {"time": round(time.time() - self.started, 3), **record}
            path = self.path / "log.jsonl"
            try:
                cut = not self._log_checked and path.is_file() and path.stat().st_size > 0 \
                    and _last_byte(path) != b"\n"  # once per run: its own lines always end
                self._log_checked = True
                with open(path, "a") as fh:
                    fh.write(("\n" if cut else "") + json.dumps(finite_json(record), default=_json_default,
                                                                 allow_nan=False) + "\n")
            except OSError as exc:
                raise write_error(path, exc) from exc

    def log_data(self, resuming: bool, **record) -> None:
        """Log the run's ``data`` event. Resuming, it must equal the interrupted (or extended finished) run's last
        one (the data changed between the segments otherwise: other images, another split): a TppError naming what
        differs."""
        record = json.loads(json.dumps(finite_json(record), default=_json_default))  # as the log holds it
        continues = resuming and self.main and run_state(self.path)["checkpoints"]  # else it starts at step 1
        earlier = self.last_event("data") if continues else None
        changed = [k for k in record if earlier is not None and k in earlier and earlier[k] != record[k]]
        if changed:
            shown = "; ".join(f"{k}: {str(earlier[k])[:80]} -> {str(record[k])[:80]}" for k in changed[:4])
            if self.resumed is not None and '"succeeded"' in self.resumed[0]:  # an extension: the run stays finished
                raise TppError(f"train.resume: the data differs from the finished run's in '{self.path}' ({shown}); "
                               "nothing was trained. Extend it with the same data; to train on this data, choose "
                               "another output_dir=..., or drop train.resume and pass --overwrite to replace it.")
            raise TppError(f"train.resume: the data differs from the interrupted run's in '{self.path}' ({shown}); "
                           "resume with the same data, or start over with --overwrite.")
        self.log(event="data", **record)

    def last_event(self, name: str) -> dict | None:
        """The last ``log.jsonl`` record of event ``name`` (unreadable lines skipped), or None."""
        found = None
        try:
            with open(self.path / "log.jsonl", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("event") == name:
                        found = record
        except OSError:
            return None
        return found

    def status(self, state: str, **extra) -> None:
        if self.main:
            write_atomic(self.path / "status.json", json.dumps(finite_json({"status": state, **extra}), indent=2,
                                                               default=_json_default, allow_nan=False))

    def publish_json(self, name: str, obj: dict) -> Path:
        target = self.path / name
        if self.main:
            write_atomic(target, json.dumps(finite_json(obj), indent=2, default=_json_default, allow_nan=False))
        return target

    def publish_dir(self, name: str, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp_dir)`` then rename ``tmp_dir`` to ``name``: the directory appears whole or not at all."""
        target = self.path / name
        if not self.main:
            return target
        tmp = self.path / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        old = self.path / f".{name}.old"
        try:
            write(tmp)
            if target.exists():  # a resumed or repeated run replaces its earlier output
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
            os.replace(tmp, target)
        except BaseException as exc:  # nothing half-written stays; an earlier output is put back
            if old.exists() and not target.exists():
                with contextlib.suppress(OSError):
                    os.replace(old, target)
            if isinstance(exc, OSError):  # disk full while writing the adapter ...
                raise write_error(target, exc) from exc
            if isinstance(exc, SafetensorError):  # safetensors reports its I/O errors as its own
                raise TppError(f"cannot write '{target}': {exc}") from exc
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return target

    def elapsed(self) -> float:
        """Seconds of the run: this segment's since the command began, plus what its earlier segments logged
        when it continues from a checkpoint (:func:`logged_seconds`)."""
        return self.earlier_s + time.time() - self.started


def logged_seconds(log: Path) -> float:
    """The wall time a ``log.jsonl`` records over its segments: each line's ``time`` counts from its segment's
    start, so the time falls back where a resumed segment begins; the sum of each segment's last time (a killed
    segment counted to its last line)."""
    total = last = 0.0
    try:
        with open(log, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    now = json.loads(line).get("time")
                except (ValueError, AttributeError):
                    continue
                if not isinstance(now, (int, float)) or not math.isfinite(now):
                    continue
                if now < last:  # a new segment
                    total += last
                last = now
    except OSError:
        return 0.0
    return total + last


def _checkpoint_stamps(path: Path) -> dict[str, tuple[int, int] | None]:
    """{checkpoint folder: (mtime ns, size) of its state.pt}: what tells a rewritten checkpoint from the one found."""
    stamps = {}
    for name in run_state(path)["checkpoints"]:
        try:
            info = (Path(path) / "checkpoints" / name / "state.pt").stat()
            stamps[name] = (info.st_mtime_ns, info.st_size)
        except OSError:
            stamps[name] = None
    return stamps


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


SET_ASIDE = ".overwritten-"  # --overwrite's hidden folder inside output_dir (".old": a run's own leftover)


def move_entries(source: Path, target: Path, keep: Path | None = None) -> Path:
    """Rename every entry of ``source`` (but ``target``, ``keep`` and the lock file of the run holding ``source``)
    into ``target`` (created); returns it."""
    target.mkdir(exist_ok=True)
    for entry in entries(source):
        if entry != target and entry != keep:
            os.replace(entry, target / entry.name)
    return target


@contextlib.contextmanager
def signals_held():
    """SIGINT / SIGTERM wait until the block is done (a second Ctrl-C must not cut a restore in half)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
