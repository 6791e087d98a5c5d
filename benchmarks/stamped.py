"""Folders trained once into a shared cache and stamped with what they were trained under (TPP adapters of
``tpp_gain.py`` and its multi-task variant): several invocations may share the cache, so a folder is trained
aside and renamed into place, never seen half-written."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

STAMP = "bench_protocol.txt"  # in a TPP adapter folder: the protocol and options it was trained under


def stamped(folder: Path, stamp_text: str) -> bool:
    return (folder / STAMP).is_file() and (folder / STAMP).read_text() == stamp_text


def train_once(out: Path, stamp_text: str, train) -> None:
    """Unless ``out`` holds ``stamp_text``: ``train(partial)`` into a folder of this process, stamp it and move it
    into place, so invocations sharing a cache never see, or write into, each other's half-trained folder."""
    if stamped(out, stamp_text):
        return
    partial = out.with_name(f"{out.name}.partial_{os.getpid()}")
    try:
        train(partial)
        (partial / STAMP).write_text(stamp_text)
        move_into_place(partial, out, stamp_text)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # still there only if the run failed


def move_into_place(partial: Path, out: Path, stamp_text: str) -> None:
    """Rename a finished folder to ``out``, replacing a stale one; if another process put a current one
    there first, keep that and drop ours."""
    if out.exists() and not stamped(out, stamp_text):
        shutil.rmtree(out, ignore_errors=True)
    try:
        os.rename(partial, out)
    except OSError:
        if not stamped(out, stamp_text):
            raise
        shutil.rmtree(partial)
