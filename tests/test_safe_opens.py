"""Opening only what is a regular file, and by name only once: a character device is refused from its ``stat``
without being opened (opening some devices has side effects: a tape rewinds), and an .npz is opened once (a file
swapped for a fifo after a first open by name would make a second one wait for a writer for ever). Tiny files built
in code; the spies raise instead of blocking, so a regression fails rather than hangs."""
import builtins
import os

import numpy as np
import pytest

from tpp.data.file_kinds import open_regular
from tpp.errors import TppError


def recording_os_open(monkeypatch) -> list:
    """``os.open`` spied on: the paths it was asked to open, in order."""
    opened, real = [], os.open

    def spy(path, flags, *args, **kwargs):
        opened.append(str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return opened


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_open_regular_refuses_a_device_or_a_fifo_without_opening_it(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "feed.csv")
    opened = recording_os_open(monkeypatch)
    for path, kind in (("/dev/null", "character device"), (str(tmp_path / "feed.csv"), "fifo")):
        with pytest.raises(TppError, match=rf"table '{path}' is not a regular file \({kind}\)\."):
            with open_regular(path, TppError, "table "):
                pass
    assert opened == []  # refused from the stat: never opened
    (tmp_path / "ok.csv").write_bytes(b"a,b\n")
    with open_regular(tmp_path / "ok.csv", TppError) as fh:  # a regular file: opened once, read as before
        assert fh.read() == b"a,b\n"
    assert opened == [str(tmp_path / "ok.csv")]
    with pytest.raises(FileNotFoundError):  # a missing file: the OSError, for the caller to word
        with open_regular(tmp_path / "gone.csv"):
            pass


def test_an_npz_is_opened_by_name_once_so_a_fifo_swapped_in_after_cannot_hang(tmp_path, monkeypatch):
    """``_open_npz`` looked at the path, opened it to check its first bytes, then let ``np.load`` open it by name
    again: a file swapped for a fifo in between made that second open wait for a writer for ever. Now the one open
    file is read: the spy swaps the file for a fifo after the first open by name and refuses any second one."""
    from tpp.data.arrays import load_npz

    path = tmp_path / "d.npz"
    np.savez(path, images=np.zeros((6, 4, 4), np.uint8), labels=np.array([0, 1] * 3))
    opened, real_open, real_os_open = [], builtins.open, os.open

    def by_name(path_arg) -> None:
        if str(path_arg) == str(path):
            if opened:
                raise AssertionError(f"'{path}' opened by name a second time")
            opened.append(path_arg)

    def spy_open(file, *args, **kwargs):
        by_name(file)
        return real_open(file, *args, **kwargs)

    def spy_os_open(file, flags, *args, **kwargs):
        by_name(file)
        fd = real_os_open(file, flags, *args, **kwargs)
        if str(file) == str(path):  # swapped for a fifo once opened: a second open by name would block
            os.replace(path, tmp_path / "kept.npz")
            os.mkfifo(path)
        return fd

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    data = load_npz("d", str(tmp_path), "d.npz", val_fraction=0.0, test_fraction=0.0, modality="US")
    train = data.split("train")
    assert len(opened) == 1 and train.images.shape == (6, 4, 4) and sorted(train.labels) == [0, 0, 0, 1, 1, 1]
