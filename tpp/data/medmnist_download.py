"""Download an official MedMNIST 2D file (28 px) from its Zenodo record, checked against its published MD5.

This replaces the ``medmnist`` package's download: that package pulls ``torchvision`` from the registry, whose
compiled operators do not load against a local CPU build of torch, and then every recipe fails at import. The
URLs and MD5 sums are those of ``medmnist.INFO`` (medmnist 3.0.2, MedMNIST v3 record 10519652 on Zenodo).

``TPP_MEDMNIST_URL`` points the download at a mirror (a hospital's internal file server): the file is fetched
from ``<mirror>/<name>.npz`` and must still match the published MD5. The download streams into a temporary file
beside the target with a progress bar and is moved into place only when complete and matching: a failure never
leaves a partial ``<name>.npz`` behind.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from tpp.errors import TppError

ZENODO = "https://zenodo.org/records/10519652/files"
MIRROR_ENV = "TPP_MEDMNIST_URL"
MAX_BYTES = 1 << 30  # the largest 28-px file is well below this; a mirror serving more is refused
CHUNK = 1 << 20

# name -> MD5 of <name>.npz at 28 px, as medmnist.INFO publishes them
MD5 = {
    "pathmnist": "a8b06965200029087d5bd730944a56c1",
    "chestmnist": "02c8a6516a18b556561a56cbdd36c4a8",
    "dermamnist": "0744692d530f8e62ec473284d019b0c7",
    "octmnist": "c68d92d5b585d8d81f7112f81e2d0842",
    "pneumoniamnist": "28209eda62fecd6e6a2d98b1501bb15f",
    "retinamnist": "bd4c0672f1bba3e3a89f0e4e876791e4",
    "breastmnist": "750601b1f35ba3300ea97c75c52ff8f6",
    "bloodmnist": "7053d0359d879ad8a5505303e11de1dc",
    "tissuemnist": "ebe78ee8b05294063de985d821c1c34b",
    "organamnist": "68e3f8846a6bd62f0c9bf841c0d9eacc",
    "organcmnist": "b9ceb9546e10131b32923c5bbeaea2b1",
    "organsmnist": "9ab87b696fb54e2a387ebe992d6ed5f1",
}


def medmnist_url(name: str) -> str:
    """Where ``<name>.npz`` is fetched from: Zenodo, or the mirror in ``TPP_MEDMNIST_URL``."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return f"{mirror.rstrip('/')}/{name}.npz" if mirror else f"{ZENODO}/{name}.npz?download=1"


def download_medmnist(name: str, base: Path) -> Path:
    """Fetch ``<name>.npz`` into ``base`` and return its path; a TppError (naming the URL) on any failure."""
    if name not in MD5:
        raise TppError(f"'{name}' is no MedMNIST file tpp can download (known: {', '.join(sorted(MD5))}); "
                       f"put {name}.npz under data.root.")
    url = medmnist_url(name)
    target = base / f"{name}.npz"
    try:
        base.mkdir(parents=True, exist_ok=True)
        handle, part = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=base)
    except OSError as exc:
        raise TppError(f"cannot write {name}.npz into {base}: {exc}. Set data.root or TPP_DATA_ROOT.") from None
    try:
        with os.fdopen(handle, "wb") as out:
            digest = _fetch(url, out, name)
        if digest != MD5[name]:
            raise TppError(f"{url} sent a {name}.npz whose MD5 is {digest}, not the published {MD5[name]}: "
                           "refused (nothing written). A proxy or mirror may have altered it.")
        os.chmod(part, 0o644)  # mkstemp's 0600 would hide the file from others sharing a data root
        os.replace(part, target)
    finally:
        Path(part).unlink(missing_ok=True)
    return target


def _fetch(url: str, out, name: str) -> str:
    """Stream ``url`` into the open file ``out`` with a progress bar; return the MD5 hex digest."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"{name}.npz", disable=None) as bar:
                received = 0
                while chunk := response.read(CHUNK):
                    received += len(chunk)
                    if received > MAX_BYTES:
                        raise TppError(f"{url} sent more than {MAX_BYTES >> 20} MiB for {name}.npz: refused.")
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, ValueError, urllib.error.URLError) as exc:  # offline, a proxy, an HTTP error, a bad URL
        raise TppError(f"downloading {name}.npz from {url} failed ({exc}). Set data.root or TPP_DATA_ROOT to a "
                       f"folder that holds it, or {MIRROR_ENV} to a mirror.") from None
    return digest.hexdigest()
