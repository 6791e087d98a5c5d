"""tpp's own MedMNIST download: served by a local HTTP server here (tests never leave this machine)."""
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
from conftest import make_medmnist, shared_data

import tpp.data.medmnist_download as download
from tpp.data.arrays import load_medmnist
from tpp.errors import TppError


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A folder served over HTTP on localhost, set as TPP_MEDMNIST_URL; HOME is a fresh folder, no data root."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv(download.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TPP_DATA_ROOT", raising=False)
    yield served
    server.shutdown()
    server.server_close()


def publish(served: Path, monkeypatch) -> str:
    """A tiny breastmnist.npz on the mirror, its MD5 made the published one; returns the MD5."""
    make_medmnist(served)
    md5 = hashlib.md5((served / "breastmnist.npz").read_bytes()).hexdigest()
    monkeypatch.setitem(download.MD5, "breastmnist", md5)
    return md5


def home_files(tmp_path) -> list[str]:
    folder = tmp_path / "home" / ".medmnist"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_missing_file_is_downloaded_checked_and_read(mirror, tmp_path, monkeypatch, capsys):
    publish(mirror, monkeypatch)
    dataset = load_medmnist("breastmnist", None)
    assert [len(dataset.splits[s].images) for s in ("train", "val", "test")] == [60, 20, 20]
    assert home_files(tmp_path) == ["breastmnist.npz"]  # no temporary file left
    fetched = tmp_path / "home" / ".medmnist" / "breastmnist.npz"
    assert fetched.read_bytes() == (mirror / "breastmnist.npz").read_bytes()
    assert fetched.stat().st_mode & 0o777 == 0o644  # readable by others sharing the folder, as a copied file
    assert "downloading breastmnist.npz" in capsys.readouterr().err


def test_a_file_that_does_not_match_the_published_md5_is_refused_and_nothing_written(mirror, tmp_path, monkeypatch):
    publish(mirror, monkeypatch)
    with open(mirror / "breastmnist.npz", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(TppError, match="MD5 is .* not the published"):
        load_medmnist("breastmnist", None)
    assert home_files(tmp_path) == []


def test_a_server_error_names_the_url_and_leaves_nothing(mirror, tmp_path, monkeypatch):
    publish(mirror, monkeypatch)
    (mirror / "breastmnist.npz").unlink()  # 404
    with pytest.raises(TppError, match=r"downloading breastmnist.npz from http://127.0.0.1:\d+/breastmnist.npz failed"):
        load_medmnist("breastmnist", None)
    assert home_files(tmp_path) == []


def test_a_mirror_sending_too_much_is_cut_off(mirror, tmp_path, monkeypatch):
    publish(mirror, monkeypatch)
    monkeypatch.setattr(download, "MAX_BYTES", 1024)
    monkeypatch.setattr(download, "CHUNK", 256)
    with pytest.raises(TppError, match="more than"):
        load_medmnist("breastmnist", None)
    assert home_files(tmp_path) == []


def test_a_set_data_root_downloads_only_when_asked(mirror, tmp_path, monkeypatch):
    publish(mirror, monkeypatch)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(TppError, match="not found under"):
        load_medmnist("breastmnist", str(root))
    assert len(load_medmnist("breastmnist", str(root), download=True).splits["train"].images) == 60
    assert sorted(p.name for p in root.iterdir()) == ["breastmnist.npz"]


def test_names_without_a_published_file_are_refused(mirror):
    with pytest.raises(TppError, match="no MedMNIST file tpp can download"):
        load_medmnist("dermamnist_jpeg", None)


def test_the_default_url_is_the_zenodo_record(monkeypatch):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    assert download.medmnist_url("breastmnist") == \
        "https://zenodo.org/records/10519652/files/breastmnist.npz?download=1"
    assert set(download.MD5) == {"pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
                                 "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist",
                                 "organsmnist"}


@pytest.mark.integration
def test_the_published_md5s_match_the_official_files_in_shared_data():
    """The table is medmnist.INFO's: the shared official files (not the JPEG re-export) carry those sums."""
    folder = shared_data() / "medmnist"
    checked = 0
    for name, md5 in download.MD5.items():
        path = folder / f"{name}.npz"
        if path.is_file():
            assert hashlib.md5(path.read_bytes()).hexdigest() == md5, name
            checked += 1
    assert checked >= 2  # breastmnist and pneumoniamnist at least
