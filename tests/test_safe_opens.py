"""Opening only what is a regular file, and by name only once: a character device is refused from its ``stat``
without being opened (opening some devices has side effects: a tape rewinds), and an .npz is opened once (a file
swapped for a fifo after a first open by name would make a second one wait for a writer for ever). Tiny files built
in code; the spies raise instead of blocking, so a regression fails rather than hangs."""
import os

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
