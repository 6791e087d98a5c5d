"""tpp.capped_read's helpers every reader shares: a folder that cannot be listed is one TppError in one wording
(:func:`unlistable_error`, :func:`list_folder`), and a file's sha256 is read in chunks (:func:`file_sha256`)."""
import errno
import hashlib
import os
import re

import pytest

from tpp.capped_read import MIB, file_sha256, list_folder, unlistable_error
from tpp.errors import TppError


def test_a_folder_that_cannot_be_listed_is_one_wording_with_what_follows(tmp_path):
    (tmp_path / "file").write_text("x")
    said = f"folder '{tmp_path / 'gone'}' cannot be listed (No such file or directory); refused."
    with pytest.raises(TppError, match=f"^{re.escape(said)}$"):
        list_folder(tmp_path / "gone")
    with pytest.raises(TppError, match=r"cannot be listed \(Not a directory\); make it readable\.$"):
        list_folder(tmp_path / "file", "make it readable")
    error = unlistable_error("/data/x", PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "remove it")
    assert str(error) == "folder '/data/x' cannot be listed (Permission denied); remove it."
    assert str(unlistable_error("/data/x", OSError())) == "folder '/data/x' cannot be listed (OSError); refused."
    (tmp_path / "b").mkdir()
    assert [e.name for e in list_folder(tmp_path)] == ["b", "file"]


def test_file_sha256_is_the_hash_of_the_whole_file_read_in_chunks(tmp_path):
    data = os.urandom(2 * MIB + 5)
    (tmp_path / "w").write_bytes(data)
    assert file_sha256(tmp_path / "w") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_the_capped_and_the_whole_read_open_through_one_primitive_in_one_wording(tmp_path, monkeypatch):
    """Both reads of a regular file go through ``open_regular_fd``: a device or fifo is refused from its ``stat``,
    never opened (the capped read opened it, then refused it in a wording of its own), said the same way by both;
    only the capped read refuses a symbolic link and a file past its cap."""
    from tpp.capped_read import read_regular
    from tpp.data.file_kinds import read_whole_regular

    os.mkfifo(tmp_path / "feed.json")
    opened, real = [], os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *a, **k: opened.append(str(path)) or real(path, flags, *a, **k))
    for path, kind in (("/dev/null", "character device"), (str(tmp_path / "feed.json"), "fifo")):
        said = "^" + re.escape(f"'{path}' is not a regular file ({kind}).") + "$"
        with pytest.raises(TppError, match=said):
            read_regular(path, limit=10)
        with pytest.raises(TppError, match=said):
            read_whole_regular(path, TppError)
    assert opened == []
    (tmp_path / "card.json").write_bytes(b"{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "card.json")
    assert read_regular(tmp_path / "card.json", limit=2) == read_whole_regular(tmp_path / "link.json") == b"{}"
    with pytest.raises(TppError, match=r"link\.json' cannot be read \(.*; symbolic links are refused\)\.$"):
        read_regular(tmp_path / "link.json", limit=2)
    with pytest.raises(TppError, match="has 2 bytes, larger than the 1 bytes"):
        read_regular(tmp_path / "card.json", limit=1)
    with pytest.raises(TppError, match=r"^'shown/x' is not a regular file \(fifo\)\.$"):
        read_regular(tmp_path / "feed.json", limit=10, shown="shown/x")
