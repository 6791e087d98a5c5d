"""Site adapters for the deployment tests: real fine-tuning runs on a tiny backbone, published to a store."""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from conftest import make_backbone, make_medmnist

from tpp.serve.bank import AdapterBank
from tpp.cli import main
from tpp.serve.server import create_app
from tpp.serve.worker import InferenceWorker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from hostile import forge  # noqa: E402,F401  (one definition: the hostile benchmark's attacker)

# site -> extra overrides: plain LoRA (two ranks, shared-batch path); DoRA, a linear probe and LoHa (sub-batches)
SITES = {
    "site_a": ["adapter.r=2", "seed=0"],
    "site_b": ["adapter.r=4", "seed=1"],
    "site_c": ["adapter.r=2", "adapter.use_dora=true", "seed=2"],
    "site_d": ["adapter={method: linear_probe}", "seed=3"],
    "site_e": ["adapter={method: loha, r: 2}", "seed=4"],  # LoHa: peft has no mixed batches for it
}


def finetune_site(backbone: Path, root: Path, out: Path, extra: list[str]) -> Path:
    code = main(["run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml",
                 f"backbone.path={backbone}", f"data.root={root}", f"output_dir={out}", "train.max_steps=6",
                 "train.batch_size=16", "train.lr=1e-2", *extra])
    assert code == 0
    return out


def build_store(base: Path) -> dict:
    """A tiny backbone, four fine-tuned sites published to ``base/store``, and test images."""
    from tpp.serve import store

    backbone = make_backbone(base / "backbone", "vit_mae")
    root = make_medmnist(base / "data")
    runs = {site: finetune_site(backbone, root, base / "runs" / site, extra) for site, extra in SITES.items()}
    for site, run in runs.items():
        store.publish(run, base / "store", site)
    images = np.load(root / "breastmnist.npz")["test_images"][:12]
    return {"backbone": backbone, "root": root, "runs": runs, "store": base / "store", "images": images}


def offline_probs(backbone: Path, adapter: Path, images: np.ndarray) -> torch.Tensor:
    """Reference: the evaluate recipe's model (one adapter, no bank) on uint8 images (N, H, W)."""
    from tpp.serve.images import to_model_input
    from tpp.recipes.evaluate import load_task_model

    model, card, _ = load_task_model(str(adapter), str(backbone))
    x = torch.cat([to_model_input(im, card["input"]) for im in images])
    with torch.no_grad():
        return model(x).softmax(-1)


@contextmanager
def paused(worker):
    """Hold the inference thread so that jobs queue up, then let it run them."""
    gate = threading.Event()
    worker.call(lambda bank: gate.wait(10))
    try:
        yield
    finally:
        gate.set()


@contextmanager
def serving(world, token=None, max_upload_bytes=10 * 2**20, store_path=None, timeout=120.0, worker=None):
    import uvicorn

    worker = worker or InferenceWorker(AdapterBank(str(world["backbone"]), str(store_path or world["store"])))
    app = create_app(worker, str(store_path or world["store"]), token, max_upload_bytes, timeout)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="info"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        worker.stop()


def request(url, files=None, token=None, method=None, body=None):
    """(status, JSON) of a request; ``files`` is a list of (file name, bytes) sent as multipart ``images``."""
    headers = {}
    if files is not None:
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers,
                                 method=method or ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
