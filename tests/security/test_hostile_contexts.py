"""Hostile context sets (issue 25): a stored set is verified on every load and an inline one obeys the same
limits. Each is refused with one clear error naming the problem; nothing is decoded past a limit.

An attacker who can write into the store is modelled by writing version folders directly with a correct
content hash, so only the checks of what the files say stand between them and the service."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tpp.errors import TppError
from tpp.serve import contexts
from tpp.incontext.context import read_context
from tpp.serve import store as adapter_store
from tpp.serve.images import PixelLimits

BACKBONE = {"id": "test", "hash": "ab" * 32}


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def forge(store, site, labels, size=8, extra=None, backbone=BACKBONE):
    """A version folder written directly (correct content hash) with one image per label; returns its folder."""
    rng = np.random.default_rng(0)
    files = {f"{i:04d}.png": png(rng.integers(0, 255, (size, size))) for i in range(len(labels))}
    examples = [{"image": f"{i:04d}.png", "label": label} for i, label in enumerate(labels)]
    manifest = {"format": contexts.FORMAT, "task": "classification", "classes": sorted(set(labels)),
                "k": len(labels), "backbone": backbone, "examples": examples}
    files[contexts.MANIFEST] = json.dumps(manifest).encode()
    files.update(extra or {})
    version = adapter_store.content_hash(files)
    folder = store / contexts.FOLDER / site / version
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (store / contexts.FOLDER / site / "current").write_text(version + "\n")
    return folder


def context_folder(base, per_class=2, size=8):
    for label in ("a", "b"):
        (base / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size), 40 * i + (100 if label == "b" else 0), np.uint8)).save(
                base / label / f"{i}.png")
    return base


def test_a_published_set_opens_and_a_flipped_byte_is_refused(tmp_path):
    cv = contexts.publish(context_folder(tmp_path / "ctx"), tmp_path / "store", "s", BACKBONE)
    opened = contexts.open_context(tmp_path / "store", "s", backbone_hash=BACKBONE["hash"])
    assert opened.version == cv.version and opened.ctx.k == 4 and opened.ctx.classes == ["a", "b"]
    readme = (cv.path / "README.md").read_text()
    assert "K (examples): 4" in readme and BACKBONE["hash"] in readme and "8x8" in readme
    image = cv.path / "0000.png"
    data = bytearray(image.read_bytes())
    data[-20] ^= 1
    image.write_bytes(bytes(data))
    with pytest.raises(TppError, match="content hash does not match"):
        contexts.open_context(tmp_path / "store", "s")


def test_too_many_examples_are_refused_before_decoding(tmp_path):
    forge(tmp_path / "store", "big", ["a", "b"] * 3)
    with pytest.raises(TppError, match="6 examples, more than the maximum of 4"):
        contexts.open_context(tmp_path / "store", "big", max_k=4)
    folder = context_folder(tmp_path / "ctx", per_class=3)
    with pytest.raises(TppError, match="more than the maximum of 5"):
        read_context(folder, max_k=5)


def test_an_oversize_image_is_refused_from_its_header(tmp_path):
    forge(tmp_path / "store", "huge", ["a", "b"], size=100)
    with pytest.raises(TppError, match="per-image limit"):
        contexts.open_context(tmp_path / "store", "huge", limits=PixelLimits(64 * 64, 2**27))


def test_one_class_other_files_and_another_backbone_are_refused(tmp_path):
    store = tmp_path / "store"
    forge(store, "one", ["a", "a", "a"])
    with pytest.raises(TppError, match="one class only"):
        contexts.open_context(store, "one")
    forge(store, "pickle", ["a", "b"], extra={"evil.pkl": b"\x80\x04."})
    with pytest.raises(TppError, match="not part of a context set"):
        contexts.open_context(store, "pickle")
    forge(store, "other", ["a", "b"], backbone={"id": "x", "hash": "cd" * 32})
    with pytest.raises(TppError, match="published for backbone x"):
        contexts.open_context(store, "other", backbone_hash=BACKBONE["hash"])
    with pytest.raises(TppError, match="not allowed"):
        contexts.open_context(store, "../one")
    forge(store, "nan", ["a", "b"], backbone={"id": "x", "hash": float("nan")})  # json.dumps writes NaN
    with pytest.raises(TppError, match="not valid JSON"):
        contexts.open_context(store, "nan")


def test_context_check_lists_every_refused_set(tmp_path, capsys):
    from tpp.cli import main

    store = tmp_path / "store"
    forge(store, "one", ["a", "a"])
    contexts.publish(context_folder(tmp_path / "ctx"), store, "good", BACKBONE)
    assert main(["context", "check", str(store)]) == 1
    out = capsys.readouterr().out
    assert "REFUSED one: " in out and "one class only" in out and "1 context sets ok, 1 refused" in out
    assert main(["context", "publish", str(store), str(tmp_path / "nope"), "--site", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _b64(array) -> str:
    return base64.b64encode(png(array)).decode()


def test_hostile_inline_and_stored_sets_get_one_clear_answer(tiny_mae, tmp_path):
    from serving_fixtures import request, uvicorn_on_loopback

    from tpp.backbones import load_backbone
    from tpp.serve.bank import AdapterBank
    from tpp.serve.server import create_app
    from tpp.serve.worker import InferenceWorker

    store = tmp_path / "store"
    store.mkdir()
    backbone = {"id": str(tiny_mae), "hash": load_backbone(str(tiny_mae))[1].hash}
    folder = forge(store, "tampered", ["a", "b"], backbone=backbone)
    (folder / "0000.png").write_bytes(png(np.zeros((8, 8))))
    worker = InferenceWorker(AdapterBank(str(tiny_mae), str(store)))
    app = create_app(worker, str(store), max_context=4, limits=PixelLimits(32 * 32, 2**20))
    small, large = np.zeros((8, 8)), np.zeros((40, 40))
    cases = [  # (body, expected status, words of the answer)
        ({"context": [{"image": _b64(small), "label": "a"}] * 3, "images": [_b64(small)]}, 400, "one class only"),
        ({"context": [{"image": _b64(small), "label": "a"}] * 5, "images": [_b64(small)]}, 413, "maximum of 4"),
        ({"context": [{"image": _b64(large), "label": "a"}, {"image": _b64(small), "label": "b"}],
          "images": [_b64(small)]}, 413, "per-image limit"),
        ({"context": [{"image": "not base64!", "label": "a"}], "images": [_b64(small)]}, 400, "not valid base64"),
        ({"context": [{"image": _b64(small), "mask": _b64(small)}] * 2, "images": [_b64(small)]}, 400,
         "every mask is empty"),
        ({"images": [_b64(small)]}, 400, '"context"'),
    ]
    try:
        with uvicorn_on_loopback(app) as (host, port):
            url = f"http://{host}:{port}"
            for body, status, words in cases:
                got, answer = request(f"{url}/v1/incontext/predict", body=json.dumps(body).encode(), method="POST")
                assert (got, words in answer.get("detail", "")) == (status, True), (body, answer)
            got, answer = request(f"{url}/v1/contexts/tampered/predict", files=[("q.png", png(small))])
            assert got == 409 and "content hash does not match" in answer["detail"]
    finally:
        worker.stop()


def test_a_refused_stored_set_is_not_read_again_until_its_pointer_moves(tiny_mae, tmp_path, monkeypatch):
    """Each request naming a tampered set would otherwise read and hash every file again (a cheap way to load
    the service); the refusal is remembered per version, and a newly published version is read."""
    from serving_fixtures import request, uvicorn_on_loopback

    from tpp.backbones import load_backbone
    from tpp.serve.bank import AdapterBank
    from tpp.serve.server import create_app
    from tpp.serve.worker import InferenceWorker

    store = tmp_path / "store"
    store.mkdir()
    backbone = {"id": str(tiny_mae), "hash": load_backbone(str(tiny_mae))[1].hash}
    folder = forge(store, "s", ["a", "b"], backbone=backbone)
    (folder / "0000.png").write_bytes(png(np.zeros((8, 8))))
    opened, real = [], contexts.open_context
    monkeypatch.setattr(contexts, "open_context", lambda *a, **k: opened.append(a[1]) or real(*a, **k))
    worker = InferenceWorker(AdapterBank(str(tiny_mae), str(store)))
    app = create_app(worker, str(store), max_context=4, limits=PixelLimits(32 * 32, 2**20))
    query = [("q.png", png(np.zeros((8, 8))))]
    try:
        with uvicorn_on_loopback(app) as (host, port):
            url = f"http://{host}:{port}/v1/contexts/s/predict"
            answers = [request(url, files=query) for _ in range(3)]
            assert [got for got, _ in answers] == [409] * 3 and opened == ["s"]
            assert all("content hash does not match" in answer["detail"] for _, answer in answers)
            contexts.publish(context_folder(tmp_path / "ctx"), store, "s", backbone)  # the pointer moves
            got, answer = request(url, files=query)
            assert got == 200 and opened == ["s", "s"], answer
            (store / contexts.FOLDER / "s" / "current").write_text(folder.name + "\n")  # rolled back: still refused
            assert request(url, files=query)[0] == 409 and opened == ["s", "s"]
    finally:
        worker.stop()


def test_refusals_forget_the_oldest_and_never_remember_an_unknown_set(tmp_path):
    refusals = contexts.Refusals(size=1)
    store = tmp_path / "store"
    for site in ("x", "y"):
        (forge(store, site, ["a", "b"]) / "0000.png").write_bytes(png(np.zeros((8, 8))))
        with pytest.raises(TppError, match="content hash"):
            refusals.open(store, site)
    assert list(refusals._memo) == [("y", adapter_store.current_version(store / contexts.FOLDER, "y"))]
    with pytest.raises(contexts.UnknownContext):
        refusals.open(store, "nothing")
    assert len(refusals._memo) == 1


def test_the_context_routes_need_the_token(tmp_path):
    from serving_fixtures import call, stub_app

    app, worker = stub_app(tmp_path, token="s3cret")
    body = json.dumps({"context": [], "images": ["x"]}).encode()
    for method, path, kwargs in (("GET", "/v1/contexts", {}), ("POST", "/v1/incontext/predict", {"body": body}),
                                 ("POST", "/v1/contexts/c/predict", {"files": [("a.png", png(np.zeros((8, 8))))]})):
        assert call(app, method, path, **kwargs)[0] == 401
        assert call(app, method, path, headers={"authorization": "Bearer wrong"}, **kwargs)[0] == 401
    status, listed, _ = call(app, "GET", "/v1/contexts", headers={"authorization": "Bearer s3cret"})
    assert status == 200 and listed["contexts"] == []
    assert worker.batches == []  # nothing reached the model


def test_a_pointer_leading_out_of_the_store_is_not_followed_by_the_listing(tmp_path):
    """``tpp context list`` (and GET /v1/contexts) read the manifest the pointer names: a pointer that is no
    version name must not make them read a file outside the store."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / contexts.MANIFEST).write_text(json.dumps({"task": "SECRET", "k": 42, "classes": ["x"],
                                                        "backbone": {"hash": "leak"}}))
    site = tmp_path / "store" / contexts.FOLDER / "evil"
    site.mkdir(parents=True)
    (site / "current").write_text("../../../secret\n")
    [row] = contexts.listing(tmp_path / "store")
    assert row["task"] == "UNREADABLE" and row["classes"].startswith("store pointer")
    assert "SECRET" not in json.dumps(row) and "leak" not in json.dumps(row)


def test_files_are_read_no_further_than_their_limit_and_names_match_whole(tmp_path):
    folder = forge(tmp_path / "store", "s", ["a", "b"])
    (folder / contexts.MANIFEST).write_bytes(b" " * (contexts.TEXT_LIMIT + 1))  # a huge manifest
    with pytest.raises(TppError, match="larger than"):
        contexts.open_context(tmp_path / "store", "s")
    for name in ("0000.png\n", "\u0661\u0662\u0663\u0664.png"):  # a newline after it, Arabic-Indic digits
        assert not contexts._FILE_RE.fullmatch(name)
    assert contexts._FILE_RE.fullmatch("0000_mask.png")


@pytest.mark.parametrize("step", ["_pointed_version", "list_folder"])
def test_a_set_deleted_while_it_is_opened_is_unknown_not_damaged(tmp_path, monkeypatch, step):
    """The set's folder deleted after open_context found its pointer (before it follows it, or before it lists the
    version): UnknownContext, as for a set never published, not a refusal of a damaged set (nor an adapter's
    UnknownSite)."""
    import shutil

    forge(tmp_path / "store", "s", ["a", "b"])
    module = adapter_store if step == "_pointed_version" else contexts
    real = getattr(module, step)

    def deleted_first(*args):
        shutil.rmtree(tmp_path / "store" / contexts.FOLDER / "s")
        return real(*args)

    monkeypatch.setattr(module, step, deleted_first)
    with pytest.raises(contexts.UnknownContext, match="no context set is published as 's'"):
        contexts.open_context(tmp_path / "store", "s")


def test_a_set_deleted_between_the_routes_check_and_its_use_is_404(tmp_path, monkeypatch):
    """POST /v1/contexts/{site}/predict reads the pointer, then opens the set: deleted in between, the answer is the
    route's own 404, not a 409."""
    import shutil

    from serving_fixtures import StubWorker, call

    from tpp.serve.server import create_app

    forge(tmp_path / "store", "s", ["a", "b"], backbone={"id": "stub", "hash": StubWorker.bank.info.hash})
    app = create_app(StubWorker(), str(tmp_path / "store"))
    real = contexts.open_context

    def deleted_first(*args):
        shutil.rmtree(tmp_path / "store" / contexts.FOLDER / "s")
        return real(*args)

    monkeypatch.setattr(contexts, "open_context", deleted_first)
    status, answer, _ = call(app, "POST", "/v1/contexts/s/predict", files=[("q.png", png(np.zeros((8, 8))))])
    assert (status, answer) == (404, {"detail": "no context set is published as 's'; GET /v1/contexts lists them."})


@pytest.mark.parametrize("stray", ["not.a.site", "with space", "-dash-first"])
def test_a_folder_that_is_no_site_name_does_not_hide_the_context_sets(tmp_path, stray):
    """A folder of _contexts named like no site, with a pointer file in it, made contexts.sites list it, and then
    tpp context list / check and GET /v1/contexts refuse the whole store (check_site of its name), not that one
    folder; the adapter store's listing leaves such folders out (store.sites)."""
    from tpp.cli import main

    store = tmp_path / "store"
    contexts.publish(context_folder(tmp_path / "ctx"), store, "good", BACKBONE)
    (store / contexts.FOLDER / stray).mkdir()
    (store / contexts.FOLDER / stray / "current").write_text("0123456789abcdef\n")
    assert contexts.sites(store) == ["good"]
    assert [row["site"] for row in contexts.listing(store)] == ["good"]
    assert contexts.check_store(store, backbone_hash=BACKBONE["hash"]) == {"good": None}
    assert main(["context", "list", str(store)]) == 0
