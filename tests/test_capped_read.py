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
