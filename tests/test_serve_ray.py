"""``tpp serve --engine ray``: a local Ray Serve application (2 replicas, 127.0.0.1) over a store of 3 sites
and 2 context sets.

The integration tests share one application (module fixture, with a bearer token): starting Ray and the
replicas is most of their time, under 3 minutes in all on a 2-core machine (154 s measured beside three other
jobs: 3 tiny fine-tuning runs, Ray's start ~75 s, the requests, Ray's stop). No test has a wall-clock limit:
requests wait at most the suite's hang guard.
"""
import base64
import csv
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HANG_S, png_bytes, run_cli
from PIL import Image
from serving_fixtures import fine_tuned_sites, offline_probs, on_event_loop, request

from tpp.cli import main
from tpp.serve import contexts, store

SITES = {"site_a": ["adapter.r=2", "seed=0"],  # LoRA: the shared-batch group
         "site_b": ["adapter.r=4", "seed=1"],
         "site_d": ["adapter={method: linear_probe}", "seed=3"]}  # a per-site sub-batch
UPLOAD_LIMIT = 64 * 1024
BODY_TIMEOUT_S = 2.0
TOKEN = "ray-engine-test-token"
MAX_CONTEXT = 8  # --max-context of the application: the set "big" (10 examples) is over it


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def expected(world, site: str):
    version = store.current_version(world["store"], site)
    return offline_probs(world["backbone"], world["store"] / site / version, world["images"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray")
    w = fine_tuned_sites(base, SITES, images=4)
    for site, run in w["runs"].items():
        store.publish(run, base / "store", site)
    w["store"] = base / "store"
    w["expected"] = {s: expected(w, s) for s in SITES}
    w["files"] = [(f"{i}.png", png_bytes(im)) for i, im in enumerate(w["images"])]
    queries = base / "queries"
    queries.mkdir()
    for name, data in w["files"]:
        (queries / name).write_bytes(data)
    w["ctx"] = {}  # v1 (published as "ctx"), v2 (published by the reload test), big (over MAX_CONTEXT)
    for name, per_class, start in (("v1", 3, 0), ("v2", 4, 3), ("big", 5, 0)):
        folder = context_folder(w["root"], base / "contexts" / name, per_class, start)
        w["ctx"][name] = {"folder": folder, "offline": offline_context(w["backbone"], folder, queries, base)}
    for site, name in (("ctx", "v1"), ("big", "big")):
        assert run_cli("context", "publish", base / "store", w["ctx"][name]["folder"], "--site", site,
                       "--backbone", w["backbone"]) == 0
    w["learned"] = learned_classifier(w["backbone"], base / "icl")  # --incontext-model, and its offline answers
    w["ctx"]["v1"]["learned"] = offline_context(w["backbone"], w["ctx"]["v1"]["folder"], queries, base,
                                                "--method", "learned", "--model", w["learned"])
    return w


def learned_classifier(backbone: Path, folder: Path) -> Path:
    """An (untrained) learned in-context classifier for ``backbone``'s features, saved as `tpp run incontext` does."""
    from tpp.backbones import load_backbone
    from tpp.incontext import learned

    info = load_backbone(str(backbone))[1]
    torch.manual_seed(0)
    model = learned.SetClassifier(info.hidden_size, hidden=16, layers=1, heads=2, max_classes=4)
    learned.save(model, "classification", folder, {"task_distribution": {"backbone": {"hash": info.hash}}})
    return folder


def context_folder(root: Path, folder: Path, per_class: int, start: int) -> Path:
    """A context folder (class sub-folders) of ``per_class`` training images per class, from the ``start``-th."""
    data = np.load(root / "breastmnist.npz")
    for label in (0, 1):
        (folder / f"class{label}").mkdir(parents=True)
        for i in np.flatnonzero(data["train_labels"][:, 0] == label)[start:start + per_class]:
            Image.fromarray(data["train_images"][i]).save(folder / f"class{label}" / f"{i}.png")
    return folder


def offline_context(backbone: Path, folder: Path, queries: Path, base: Path, *method) -> dict:
    """``tpp predict --context`` (``method``: e.g. --method learned --model DIR): {query file name: {class:
    probability}}."""
    out = base / f"{folder.name}{len(method)}.csv"
    assert run_cli("predict", "--backbone", backbone, "--context", folder, queries, "--out", out,
                   "--device", "cpu", *method) == 0
    with open(out, newline="") as fh:
        return {Path(row["image"]).name: {key.removeprefix("prob_"): float(value) for key, value in row.items()
                                          if key.startswith("prob_")} for row in csv.DictReader(fh)}


def as_offline(out: dict, offline: dict) -> bool:
    """Every answered image has ``tpp predict --context``'s probabilities (to float precision)."""
    return bool(out["predictions"]) and all(
        pred["probabilities"].keys() == offline[pred["file"]].keys() and
        all(abs(p - offline[pred["file"]][c]) < 2e-6 for c, p in pred["probabilities"].items())
        for pred in out["predictions"])


@pytest.fixture(scope="module")
def ray_app(world):
    """The application on a free loopback port: (url, ingress handle); Serve and Ray are stopped afterwards."""
    ray_engine = pytest.importorskip("tpp.serve.ray_engine")
    import ray
    from ray import serve

    port = free_port()
    ray_engine.start("127.0.0.1", port)
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        serve.run(ray_engine.application(str(world["backbone"]), str(world["store"]), replicas=2, threads=1,
                                         token=TOKEN, max_upload_bytes=UPLOAD_LIMIT, body_timeout_s=BODY_TIMEOUT_S,
                                         max_context=MAX_CONTEXT, incontext_models=[str(world["learned"])]),
                  name=ray_engine.APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}", serve.get_deployment_handle("TppIngress", app_name=ray_engine.APP)
    finally:
        ray_engine.stop()
    assert not ray.is_initialized()


def close(got: list, want: torch.Tensor) -> bool:
    return bool(torch.allclose(torch.tensor(got), want, atol=1e-5, rtol=0))


def probabilities(out: dict) -> list:
    return [list(p["probabilities"].values()) for p in out["predictions"]]


def total(stats: dict, key: str) -> int:
    return sum(state[key] for state in stats["replicas"].values())


@pytest.mark.integration
def test_two_replicas_answer_three_sites_as_offline_and_reuse_loaded_adapters(world, ray_app):
    url, ingress = ray_app
    for site in SITES:  # first round: each site is loaded on some replica
        status, out = request(f"{url}/v1/sites/{site}/predict", world["files"], token=TOKEN)
        assert status == 200, out
        assert out["adapter_id"] == f"{site}@{store.current_version(world['store'], site)}"
        assert close(probabilities(out), world["expected"][site])
    stats = ingress.stats.remote().result()
    loads, hits = total(stats, "loads"), total(stats, "hits")
    assert loads >= len(SITES)
    # Ray's router learns which replica holds an id from the replicas' reports (pushed every 0.1 s, later on a
    # loaded machine); a request routed before the report arrives may load the site on the other replica once
    time.sleep(2.0)
    for round_ in range(3):  # repeated requests go to a replica that holds the site
        before = total(ingress.stats.remote().result(), "loads")
        for site in SITES:
            status, out = request(f"{url}/v1/sites/{site}/predict", world["files"][:2], token=TOKEN)
            assert status == 200 and close(probabilities(out), world["expected"][site][:2])
        after = total(ingress.stats.remote().result(), "loads")
        if round_ == 2:
            assert after == before, "the third round still loaded a site: repeated requests do not reuse"
    stats = ingress.stats.remote().result()
    assert total(stats, "loads") <= 2 * len(SITES), stats  # each site at most once per replica
    assert total(stats, "hits") - hits >= 2 * len(SITES)
    assert len(stats["replicas"]) <= 2
    status, listing = request(f"{url}/v1/sites", token=TOKEN)
    assert status == 200 and all(row["resident"] for row in listing["sites"])


@pytest.mark.integration
def test_token_validation_limits_and_errors_are_the_fastapi_engines(world, ray_app):
    url, _ = ray_app
    status, out = request(f"{url}/v1/sites/site_a/predict", world["files"][:1])  # no token
    assert status == 401 and "bearer token" in out["detail"]
    assert request(f"{url}/healthz")[0] == 200
    status, out = request(f"{url}/v1/sites/nowhere/predict", world["files"][:1], token=TOKEN)
    assert status == 404 and "no published adapter" in out["detail"]
    status, out = request(f"{url}/v1/sites/site_a/predict", [("x.png", b"not an image")], token=TOKEN)
    assert status == 400 and "x.png" in out["detail"]
    big = [("big.bin", b"\0" * (UPLOAD_LIMIT + 1))]
    status, out = request(f"{url}/v1/sites/site_a/predict", big, token=TOKEN)
    assert status == 413 and str(UPLOAD_LIMIT) in out["detail"]


@pytest.mark.integration
def test_a_stalled_body_gets_408_through_rays_proxy(ray_app):
    url, _ = ray_app
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=HANG_S) as sock:
        sock.sendall(b"POST /v1/sites/site_a/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                     b"boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n")  # and then nothing
        started = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):  # the service closes the connection after its answer
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"body-timeout" in reply and time.monotonic() - started >= BODY_TIMEOUT_S * 0.9


@pytest.mark.integration
def test_a_published_version_is_served_by_every_request_after_it_never_mixed(world, ray_app):
    url, _ = ray_app
    old = store.current_version(world["store"], "site_a")
    store.publish(world["runs"]["site_b"], world["store"], "site_a")  # site_b's adapter, as site_a's new version
    new = store.current_version(world["store"], "site_a")
    assert new != old
    want = expected(world, "site_a")

    def ask(_):
        return request(f"{url}/v1/sites/site_a/predict", world["files"], token=TOKEN)

    with ThreadPoolExecutor(6) as pool:  # concurrent: both replicas may take some
        answers = list(pool.map(ask, range(12)))
    for status, out in answers:
        assert status == 200 and out["version"] == new and close(probabilities(out), want)
    status, out = request(f"{url}/v1/sites/site_a/reload", body=b"", token=TOKEN)
    assert status == 200 and out == {"site": "site_a", "old_version": new, "new_version": new}
    status, listing = request(f"{url}/v1/sites", token=TOKEN)
    row = next(r for r in listing["sites"] if r["site"] == "site_a")
    assert row["version"] == new and row["resident"] and row["healthy"]
    store.publish(world["runs"]["site_a"], world["store"], "site_a")  # roll back: the earlier id is current again
    assert store.current_version(world["store"], "site_a") == old
    for _ in range(4):  # Ray's cache may still hold site_a@old, loaded before the new version replaced it
        status, out = request(f"{url}/v1/sites/site_a/predict", world["files"], token=TOKEN)
        assert status == 200 and out["version"] == old and close(probabilities(out), world["expected"]["site_a"])


@pytest.mark.integration
def test_stored_context_sets_are_multiplexed_answer_as_offline_and_follow_a_new_version(world, ray_app):
    """``context:site@version`` is loaded (verified, features prepared) once and reused by the next requests;
    inline sets run anywhere; both answer as ``tpp predict --context`` and obey --max-context; a newly
    published set is what the next request gets."""
    url, ingress = ray_app
    ctx, predict = world["ctx"], f"{url}/v1/contexts/ctx/predict"
    status, out = request(predict, world["files"], token=TOKEN)
    assert status == 200, out
    assert out["version"] == contexts.current_version(world["store"], "ctx") and out["k"] == 6
    assert as_offline(out, ctx["v1"]["offline"])
    examples = [{"image": base64.b64encode(p.read_bytes()).decode(), "label": p.parent.name}
                for p in sorted(ctx["v1"]["folder"].rglob("*.png"))]
    inline = {"context": examples, "images": [{"name": n, "data": base64.b64encode(d).decode()}
                                              for n, d in world["files"]]}
    status, out = request(f"{url}/v1/incontext/predict", body=json.dumps(inline).encode(), token=TOKEN)
    assert status == 200 and out["context"] == "inline" and as_offline(out, ctx["v1"]["offline"]), out
    assert total(ingress.stats.remote().result(), "context_loads") == 1  # the inline set was not loaded as one
    time.sleep(2.0)  # the router learns where the set is from the replicas' reports (see the sites test)
    for round_ in range(3):  # repeated requests go to a replica that holds the prepared set
        before = total(ingress.stats.remote().result(), "context_loads")
        status, out = request(predict, world["files"][:2], token=TOKEN)
        assert status == 200 and len(out["predictions"]) == 2 and as_offline(out, ctx["v1"]["offline"])
        if round_ == 2:
            assert total(ingress.stats.remote().result(), "context_loads") == before, "the set was loaded again"
    stats = ingress.stats.remote().result()
    loads = total(stats, "context_loads")
    assert loads <= 2 and total(stats, "context_hits") >= 4 - loads, stats  # at most once per replica
    status, out = request(f"{predict}?method=learned", world["files"], token=TOKEN)  # --incontext-model on replicas
    assert status == 200 and out["method"] == "learned" and as_offline(out, ctx["v1"]["learned"]), out

    status, out = request(f"{url}/v1/incontext/predict", token=TOKEN,
                          body=json.dumps(dict(inline, context=examples * 2)).encode())  # 12 examples
    assert status == 413 and "--max-context" in out["detail"]
    status, out = request(f"{url}/v1/contexts/big/predict", world["files"][:1], token=TOKEN)
    assert status == 409 and "more than" in out["detail"]  # refused by the replica, as by the FastAPI engine

    old = contexts.current_version(world["store"], "ctx")
    loaded = total(ingress.stats.remote().result(), "context_loads")
    assert run_cli("context", "publish", world["store"], ctx["v2"]["folder"], "--site", "ctx",
                   "--backbone", world["backbone"]) == 0
    new = contexts.current_version(world["store"], "ctx")
    status, out = request(predict, world["files"], token=TOKEN)
    assert status == 200 and new != old and out["version"] == new and out["k"] == 8
    assert as_offline(out, ctx["v2"]["offline"]) and not as_offline(out, ctx["v1"]["offline"])
    assert total(ingress.stats.remote().result(), "context_loads") == loaded + 1  # the new version, once


def test_replicas_and_address_belong_to_the_ray_engine(capsys):
    args = ["serve", "--backbone", "builtin:mae-vit-tiny-med", "--store", "nowhere"]
    assert main([*args, "--replicas", "2"]) == 2
    assert "--engine ray" in capsys.readouterr().err
    assert main([*args, "--engine", "ray", "--replicas", "0"]) == 2
    assert "--replicas must be at least 1" in capsys.readouterr().err
    pytest.importorskip("tpp.serve.ray_engine")
    assert main([*args, "--engine", "ray", "--address", "ray://127.0.0.1:1"]) == 2  # refused before joining
    assert "--address joins a Ray cluster" in capsys.readouterr().err


def test_context_set_ids_never_name_a_site():
    ingress = pytest.importorskip("tpp.serve.ray_ingress")
    from tpp.errors import TppError

    assert ingress.context_id("a", "v1") == "context:a@v1" != ingress.model_id("a", "v1")
    assert ingress.split_model_id(ingress.context_id("a", "v1")) == ingress.split_model_id("a@v1") == ("a", "v1")
    with pytest.raises(TppError):  # so no adapter's id starts with the context prefix
        store.check_site("context:a")


def test_a_replicas_state_leaves_out_the_versions_unloaded_sites_come_back_at():
    """Every replica answer carries its bank's resident and refused sites, asked on its inference thread; the
    versions that unloaded sites come back at (``serving``: the store asked per site) are no part of it and are not
    computed there."""
    import asyncio
    from concurrent.futures import Future
    from types import SimpleNamespace

    ray_engine = pytest.importorskip("tpp.serve.ray_engine")

    def not_asked():
        raise AssertionError("serving() computed for a replica's state")

    def on_inference_thread(fn):
        done = Future()
        done.set_result(fn(bank))
        return done

    bank = SimpleNamespace(resident={"a": SimpleNamespace(version="v1")}, refused={"b": ("v2", "why")}, loads=1,
                           serving=not_asked)
    replica = object.__new__(ray_engine.site_deployment(1).func_or_class)
    replica.bank, replica.replica = bank, "r1"
    replica.worker = SimpleNamespace(call=on_inference_thread, stop=lambda: None)
    replica.hits = replica.misses = replica.context_loads = replica.context_hits = 0
    state = asyncio.run(replica._state())
    assert (state["id"], state["resident"], state["refused"]) == ("r1", {"a": "v1"}, {"b": ("v2", "why")})


def test_the_ingress_reads_each_requests_pointer_off_its_event_loop(tmp_path, monkeypatch):
    """The ingress reads the site's (or context set's) pointer at every request to name the version it asks a
    replica for: in a thread, not on its event loop, where a slow disk held up every other request."""
    import asyncio
    from types import SimpleNamespace

    ingress = pytest.importorskip("tpp.serve.ray_ingress")

    class Handle:  # a replica that answers at once
        def options(self, multiplexed_model_id):
            return self

        def __getattr__(self, method):
            async def remote(*args):
                return {"version": "0123456789abcdef", "rows": [], "new": "0123456789abcdef", "result": {},
                        "replica": {"id": "r1"}}
            return SimpleNamespace(remote=remote)

    for folder in (tmp_path / "s", tmp_path / contexts.FOLDER / "s"):
        folder.mkdir(parents=True)
        (folder / "current").write_text("0123456789abcdef")
    real, calls = store.current_version, []
    monkeypatch.setattr(store, "current_version", lambda *args: (calls.append(on_event_loop()), real(*args))[1])
    worker = ingress.RayWorker(Handle(), str(tmp_path), {"id": "stub", "hash": "0" * 64})

    async def requests():
        return [await worker.predict("s", []), await worker.reload("s"),
                await worker.predict_context("s", "prototype", None, [])]

    answer, reloaded, _ = asyncio.run(requests())
    assert answer.version == "0123456789abcdef" and reloaded == (answer.version, answer.version)
    assert calls == [False] * 3


class Replicas:
    """Stands in for the ``TppSites`` handle under a real ingress app: records the multiplexed ids asked for and
    answers each method with ``answers[method]`` (plain data, as a replica does)."""

    def __init__(self, answers: dict):
        self.answers, self.ids = answers, []

    def options(self, multiplexed_model_id):
        self.ids.append(multiplexed_model_id)
        return self

    def __getattr__(self, method):
        from types import SimpleNamespace

        async def remote(*args):
            return dict(self.answers[method], replica={"id": "r1", "resident": {}, "refused": {}})
        return SimpleNamespace(remote=remote)


def ingress_app(tmp_path, answers: dict):
    """(the ingress's ASGI app over :class:`Replicas`, the replicas, the store) with site ``s`` and context set
    ``c`` published (pointers only)."""
    ingress = pytest.importorskip("tpp.serve.ray_ingress")
    from tpp.serve.server import create_app

    for folder in (tmp_path / "store" / "s", tmp_path / "store" / contexts.FOLDER / "c"):
        folder.mkdir(parents=True)
        (folder / "current").write_text("0123456789abcdef\n")
    replicas = Replicas(answers)
    worker = ingress.RayWorker(replicas, str(tmp_path / "store"), {"id": "stub", "hash": "0" * 64})
    return create_app(worker, str(tmp_path / "store")), replicas, tmp_path / "store"


def test_the_ingress_reads_a_sites_pointer_once_per_request(tmp_path, monkeypatch):
    """A prediction, a reload and a stored context set's prediction each read their pointer once at the ingress (it
    was read two or three times: by the route, for the card's input options, and again to name the replica's
    model id), and the id asked for names that version."""
    from serving_fixtures import call

    version, image = "0123456789abcdef", [("q.png", png_bytes(np.zeros((8, 8), np.uint8)))]
    entry = {"label": "a", "probabilities": {"a": 1.0, "b": 0.0}}
    app, replicas, s = ingress_app(tmp_path, {
        "predict": {"version": version, "rows": [entry], "hit": True}, "reload": {"new": version},
        "predict_context": {"result": {"version": version, "task": "classification", "k": 4, "method": "prototype",
                                       "entries": [entry]}}})
    reads = []
    for module in (store, contexts):  # a context set's pointer: contexts.current_version, through the store's
        real = module.current_version
        monkeypatch.setattr(module, "current_version", lambda root, site, _real=real, _module=module: (
            reads.append((_module.__name__.rsplit(".", 1)[1], site)) if str(root) == str(s) else None,
            _real(root, site))[1])
    for path, files, pointer in (("/v1/sites/s/predict", image, ("store", "s")),
                                 ("/v1/sites/s/reload", None, ("store", "s")),
                                 ("/v1/contexts/c/predict", image, ("contexts", "c"))):
        reads.clear()
        status, answer, _ = call(app, "POST", path, files=files)
        assert status == 200 and version in json.dumps(answer), (path, answer)
        assert reads == [pointer], path
    assert replicas.ids == [f"s@{version}", f"s@{version}", f"context:c@{version}"]


def test_a_context_set_withdrawn_before_a_replica_opens_it_is_404(tmp_path):
    """A replica that finds the set gone (deleted after the ingress read its pointer) answers UnknownContext: the
    same 404 as a set never published, not the 409 of a damaged one."""
    from serving_fixtures import call

    ingress = pytest.importorskip("tpp.serve.ray_ingress")
    gone = ingress.error_of(contexts.UnknownContext("c"))
    app, _, _ = ingress_app(tmp_path, {"predict_context": gone})
    status, answer, _ = call(app, "POST", "/v1/contexts/c/predict",
                             files=[("q.png", png_bytes(np.zeros((8, 8), np.uint8)))])
    assert (status, answer) == (404, {"detail": "no context set is published as 'c'; GET /v1/contexts lists them."})
