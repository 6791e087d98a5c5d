"""Shared fixtures: tiny backbones built in code and saved (so the real from_pretrained path runs),
tiny MedMNIST-layout files, the default backbone (shipped in the package) and the location of ../shared data
for the tests marked integration (the only ones that may use it). Helpers that are not fixtures are in
helpers.py and serving_fixtures.py."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TPP_SHARED", REPO.parent / "shared"))
TINY = dict(image_size=28, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
NETWORK_ATTEMPTS: list[str] = []  # remote hosts a test tried to reach, even if a library caught the error


def _refuse_remote(host) -> None:
    """Record and refuse ``host`` unless it is this machine (``None``: a passive lookup, allowed)."""
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and name not in LOCAL_HOSTS:
        NETWORK_ATTEMPTS.append(name)
        raise OSError(f"tests must not use the network: tried to reach {name!r}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing downloads in tests: a name lookup of, or a connection to, any host but this machine fails the
    test, also when the library that tried catches the error and only warns."""
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def guarded_lookup(host, *args, **kwargs):
        _refuse_remote(host)
        return lookup(host, *args, **kwargs)

    def guarded_connect(sock, address):
        if isinstance(address, tuple):  # AF_INET / AF_INET6; AF_UNIX addresses are paths
            _refuse_remote(address[0])
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield
    attempts = NETWORK_ATTEMPTS.copy()
    NETWORK_ATTEMPTS.clear()
    assert not attempts, f"the test tried to reach {attempts}: tests run offline"


def _save_processor(path: Path, channels: int) -> None:
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5] * channels, "image_std": [0.25] * channels, "image_processor_type": "ViTImageProcessor"}))


def make_backbone(path: Path, kind: str = "vit_mae", channels: int = 3, seed: int = 0) -> Path:
    """Save a tiny ViT / ViT-MAE (with decoder; ``vit_mae_encoder``: without, as ViTMAEModel saves it) / DINOv2
    checkpoint to ``path``."""
    from transformers import (Dinov2Config, Dinov2Model, ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel,
                              ViTModel)

    torch.manual_seed(seed)
    if kind in ("vit_mae", "vit_mae_encoder"):
        config = ViTMAEConfig(**TINY, num_channels=channels, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                              decoder_num_attention_heads=2, decoder_intermediate_size=32, mask_ratio=0.75)
        model = (ViTMAEForPreTraining if kind == "vit_mae" else ViTMAEModel)(config)
    elif kind == "vit":
        model = ViTModel(ViTConfig(**TINY, num_channels=channels))
    elif kind == "dinov2":
        cfg = {k: v for k, v in TINY.items() if k != "intermediate_size"}
        model = Dinov2Model(Dinov2Config(**cfg, num_channels=channels, mlp_ratio=2))
    else:
        raise ValueError(kind)
    model.save_pretrained(path)
    _save_processor(path, channels)
    return path


@pytest.fixture(scope="session")
def tiny_mae(tmp_path_factory) -> Path:
    return make_backbone(tmp_path_factory.mktemp("tiny_mae"), "vit_mae")


def make_medmnist(root: Path, name: str = "breastmnist", n=(60, 20, 20), rgb: bool = False, classes: int = 2,
                  seed: int = 0) -> Path:
    """A small MedMNIST-layout file with a learnable signal (class-dependent brightness)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = np.arange(count) % classes
        rng.shuffle(labels)
        shape = (count, 28, 28, 3) if rgb else (count, 28, 28)
        base = rng.integers(0, 120, size=shape)
        images = np.clip(base + (labels * 20).reshape((-1,) + (1,) * (len(shape) - 1)), 0, 255).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.reshape(-1, 1).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{name}.npz", **arrays)
    return root


def make_image_folder(root, n=24, rgb_at=None):
    """``root/a`` and ``root/b`` with n PNGs of mixed sizes; image ``rgb_at`` in colour (else all gray)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        side = 12 + i % 5
        shape = (side, side, 3) if i == rgb_at else (side, side)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture()
def data_root(tmp_path) -> Path:
    return make_medmnist(tmp_path / "data")


_RUNNING: list = []  # the test being set up or run (its module-scoped fixtures included)


def pytest_runtest_setup(item):
    _RUNNING[:] = [item]


def _integration_only(what: str) -> None:
    """A test reaching ../shared must be marked integration: `make test-fast` (-m "not integration") runs
    without it."""
    if _RUNNING and _RUNNING[0].get_closest_marker("integration") is None:
        pytest.fail(f"{_RUNNING[0].nodeid} uses {what} but is not marked integration: add "
                    "pytestmark = pytest.mark.integration (or @pytest.mark.integration)", pytrace=False)


def shared_data() -> Path:
    """../shared/data, or skip; under CI a missing folder fails the test instead. Integration tests only."""
    _integration_only("../shared/data")
    path = SHARED / "data"
    if not (path / "medmnist" / "breastmnist.npz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the shared data is missing at {path}")
        pytest.skip(f"shared data not found at {path}")
    return path


def shared_backbone() -> str:
    """The default ViT-MAE backbone, shipped in the package (``builtin:mae-vit-tiny-med``, the same weights as
    ../shared/models/mae-vit-tiny-med): no skip, any test may use it."""
    from tpp.backbones import DEFAULT_BACKBONE

    return DEFAULT_BACKBONE
