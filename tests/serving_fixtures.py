"""Shared by the deployment tests: site adapters (real fine-tuning runs on a tiny backbone, published to a
store), the service on loopback or in-process over a stub worker, and requests to it."""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from conftest import make_backbone, make_medmnist
from helpers import FINETUNE_CONFIG, HANG_S, recipe_args, run_cli, wait_for

from tpp.serve.bank import AdapterBank
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
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, backbone, root, out, "train.max_steps=6",
                                "train.batch_size=16", "train.lr=1e-2", *extra)) == 0
    return out


def fine_tuned_sites(base: Path, sites: dict, images: int = 12) -> dict:
    """A tiny backbone, tiny data and one fine-tuning run per site ({site: overrides}), not published:
    {"backbone", "root", "runs", "images" (the first ``images`` test images)}."""
    backbone = make_backbone(base / "backbone", "vit_mae")
    root = make_medmnist(base / "data")
    runs = {site: finetune_site(backbone, root, base / "runs" / site, extra) for site, extra in sites.items()}
    test_images = np.load(root / "breastmnist.npz")["test_images"][:images]
    return {"backbone": backbone, "root": root, "runs": runs, "images": test_images}


def build_store(base: Path, sites: dict | None = None, images: int = 12, expected: bool = False) -> dict:
    """:func:`fine_tuned_sites` for ``sites`` (default ``SITES``), each published to ``base/store``; with
    ``expected``, each site's offline probabilities on the images too (``world["expected"][site]``)."""
    from tpp.serve import store

    sites = SITES if sites is None else sites
    world = fine_tuned_sites(base, sites, images)
    s = base / "store"
    for site, run in world["runs"].items():
        store.publish(run, s, site)
    world = dict(world, store=s)
    if expected:
        world["expected"] = {site: offline_probs(world["backbone"], s / site / store.current_version(s, site),
                                                 world["images"]) for site in sites}
    return world


def publish_context(base: Path, store: Path, site: str, backbone_hash: str):
    """A two-class context set (``base/a``, ``base/b``: two 8x8 gray images each) published to ``store`` as
    ``site`` for the backbone of ``backbone_hash``; its :class:`~tpp.serve.contexts.ContextVersion`."""
    from PIL import Image

    from tpp.serve import contexts

    for label, shade in (("a", 0), ("b", 200)):
        (base / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), shade + 20 * i, np.uint8)).save(base / label / f"{i}.png")
    return contexts.publish(base, store, site, {"id": "tiny", "hash": backbone_hash})


def pixels(images, card) -> torch.Tensor:
    """Model inputs (N, C, H, W) of uint8 images as the service makes them for an adapter with ``card``."""
    from tpp.serve.images import to_model_input

    return torch.cat([to_model_input(im, card["input"]) for im in images])


def offline_probs(backbone: Path, adapter: Path, images: np.ndarray) -> torch.Tensor:
    """Reference: the evaluate recipe's model (one adapter, no bank) on uint8 images (N, H, W)."""
    from tpp.recipes.evaluate import load_task_model

    model, card, _ = load_task_model(str(adapter), str(backbone))
    x = pixels(images, card)
    with torch.no_grad():
        return model(x).softmax(-1)


@contextmanager
def paused(worker):
    """Hold the inference thread so that jobs queue up, then let it run them."""
    gate = threading.Event()
    worker.call(lambda bank: gate.wait(HANG_S))
    try:
        yield
    finally:
        gate.set()


@contextmanager
def serving(world, token=None, max_upload_bytes=10 * 2**20, store_path=None, timeout=HANG_S, worker=None):
    """The service on loopback (uvicorn in a thread) over ``world``'s store; yields its URL. ``timeout``: the
    service's request timeout (a 503 after it), a hang guard unless the test is about it."""
    worker = worker or InferenceWorker(AdapterBank(str(world["backbone"]), str(store_path or world["store"])))
    app = create_app(worker, str(store_path or world["store"]), token, max_upload_bytes, timeout)
    try:
        with uvicorn_on_loopback(app) as (host, port):
            yield f"http://{host}:{port}"
    finally:
        worker.stop()


@contextmanager
def uvicorn_on_loopback(app, log_level: str = "info"):
    """``app`` served by uvicorn in a thread on a free loopback port; yields (host, port); stops it after."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "uvicorn to start", poll_s=0.02)
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(30)


def request(url, files=None, token=None, method=None, body=None):
    """(status, JSON) of a request; ``files`` is a list of (file name, bytes) sent as multipart ``images``."""
    headers = {}
    if files is not None:
        headers["Content-Type"], body = multipart(files)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers,
                                 method=method or ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=HANG_S) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def multipart(files):
    """(content-type, body) of a multipart form with each (file name, bytes) as field ``images``."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


# -- the real app over a stub worker, in this process (no model is built) ----------------------------------

STUB_VERSION = "0123456789abcdef"


class StubWorker:
    """Stands in for the inference worker: records what reached it, answers every image with label 'a'."""

    bank = SimpleNamespace(info=SimpleNamespace(id="stub", hash="0" * 64), resident={}, refused={},
                           serving=lambda: {})
    alive = True  # /healthz asks

    def __init__(self):
        self.batches = []

    def predict(self, site, arrays):
        self.batches.append([a.shape for a in arrays])
        future = Future()
        entry = {"label": "a", "probabilities": {"a": 1.0, "b": 0.0}}
        future.set_result(SimpleNamespace(version=STUB_VERSION, label_names=["a", "b"],
                                          entries=lambda: [entry] * len(arrays)))
        return future

    def call(self, fn):
        """``fn(bank)`` at once, on the caller's thread (``GET /v1/sites`` asks for the bank's residency)."""
        future = Future()
        future.set_result(fn(self.bank))
        return future


def stub_app(tmp_path, **kwargs):
    """(ASGI app, stub worker) over a store where site ``s`` is published (only its pointer exists)."""
    (tmp_path / "store" / "s").mkdir(parents=True, exist_ok=True)
    (tmp_path / "store" / "s" / "current").write_text(STUB_VERSION)
    worker = StubWorker()
    return create_app(worker, str(tmp_path / "store"), **kwargs), worker


def call(app, method, path, *, headers=None, body=b"", files=None, query=""):
    """(status, JSON body, response headers) of one request sent to the ASGI ``app`` in this process."""
    headers = dict(headers or {})
    if files is not None:
        headers["content-type"], body = multipart(files)
    headers["content-length"] = str(len(body))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    text = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], json.loads(text or b"{}"), dict(sent[0]["headers"])


def on_event_loop() -> bool:
    """Whether the caller runs on an asyncio event loop (file reads of the service must not)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
