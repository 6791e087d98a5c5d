"""Learned in-context models in ``tpp serve`` (issue 25): ``--incontext-model`` checked at start-up, ``method=learned``
on the stored and the inline context route answering as ``tpp predict --context --method learned`` does, 400 when
no model of the set's kind is loaded, and the prepared-set cache keyed by the model."""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from tpp.errors import TppError
from tpp.incontext import learned


def _images(n, size, seed, bright=0):
    rng = np.random.default_rng(seed)
    return [np.clip(rng.integers(0, 100, (size, size)) + bright, 0, 255).astype(np.uint8) for _ in range(n)]


def _save_png(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _models(base, backbone_info):
    """A tiny classifier for ``backbone_info``'s features and a tiny 16-px segmenter, as `tpp run incontext`
    saves them (untrained: the service must give the numbers tpp predict gives, whatever they are)."""
    backbone = {"task_distribution": {"backbone": {"id": "tiny", "hash": backbone_info.hash}}}
    torch.manual_seed(0)
    cls = learned.SetClassifier(backbone_info.hidden_size, hidden=16, layers=1, heads=2, max_classes=4)
    learned.save(cls, "classification", base / "cls", dict(backbone, holdout=["breastmnist"]))
    torch.manual_seed(1)
    other = learned.SetClassifier(backbone_info.hidden_size, hidden=16, layers=1, heads=2, max_classes=4)
    learned.save(other, "classification", base / "cls_other", dict(backbone, holdout=["breastmnist"]))
    torch.manual_seed(2)
    seg = learned.CrossConvNet((4, 8))
    with torch.no_grad():  # centre the untrained logits, so that its masks are neither empty nor full
        images = torch.rand(1, 3, 1, 16, 16)
        seg.out.bias -= seg(images[:, 0], images, (images > 0.5).float()).median()
    learned.save(seg, "segmentation", base / "seg", {"task_distribution": {"image_size": 16}, "holdout": ["busi"]})
    return {name: base / name for name in ("cls", "cls_other", "seg")}


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def world(tiny_mae, tmp_path_factory):
    """Models, a classification and a segmentation context set (published to a store), queries, and what
    ``tpp predict --context --method learned`` writes for them."""
    from tpp.backbones import load_backbone

    base = tmp_path_factory.mktemp("serve_learned")
    models = _models(base / "models", load_backbone(str(tiny_mae))[1])
    for label, bright in (("dark", 0), ("light", 120)):
        for i, image in enumerate(_images(3, 28, len(label), bright)):
            _save_png(image, base / "cls" / "ctx" / label / f"{i}.png")
    for i, image in enumerate(_images(2, 28, 99) + _images(2, 32, 98, bright=150)):
        _save_png(image, base / "cls" / "q" / f"q{i}.png")
    for i, image in enumerate(_images(3, 24, 10)):
        mask = np.zeros((24, 24), np.uint8)
        mask[4 + i:14 + i, 6:16] = 255
        image[mask > 0] = 220
        _save_png(image, base / "seg" / "ctx" / "images" / f"e{i}.png")
        _save_png(mask, base / "seg" / "ctx" / "masks" / f"e{i}.png")
    for i in range(3):  # queries of several sizes: the masks come back at each one's own size
        image = _images(1, 20 + 4 * i, 50 + i)[0]
        image[5:12, 5:12] = 220
        _save_png(image, base / "seg" / "q" / f"q{i}.png")
    store = base / "store"
    for kind in ("cls", "seg"):
        out = base / kind / "preds.csv"
        assert run_cli("predict", "--backbone", tiny_mae, "--context", base / kind / "ctx", base / kind / "q",
                       "--method", "learned", "--model", models[kind], "--out", out, "--device", "cpu") == 0
        assert run_cli("context", "publish", store, base / kind / "ctx", "--site", kind, "--backbone", tiny_mae) == 0
    fractions = [float(r["frac_foreground"]) for r in _read_csv(base / "seg" / "preds.csv")]
    assert any(0 < f < 1 for f in fractions), fractions  # masks worth comparing
    return {"backbone": tiny_mae, "store": store, "models": models, "base": base}


def _service(world, model_dirs):
    from serving_fixtures import uvicorn_on_loopback

    from tpp.serve.bank import AdapterBank
    from tpp.serve.incontext_models import attach
    from tpp.serve.server import create_app
    from tpp.serve.worker import InferenceWorker

    bank = AdapterBank(str(world["backbone"]), str(world["store"]))
    described = attach(bank, [str(d) for d in model_dirs])
    worker = InferenceWorker(bank)
    return worker, uvicorn_on_loopback(create_app(worker, str(world["store"]), learned_models=described))


def _b64(path):
    return base64.b64encode(path.read_bytes()).decode()


def _post_json(url, body):
    from serving_fixtures import request

    return request(url, body=json.dumps(body).encode(), method="POST")


def _queries(world, kind):
    return sorted((world["base"] / kind / "q").iterdir())


def _inline_context(world, kind):
    ctx = world["base"] / kind / "ctx"
    if kind == "cls":
        return [{"image": _b64(p), "label": p.parent.name} for p in sorted(ctx.rglob("*.png"))]
    return [{"image": _b64(p), "mask": _b64(ctx / "masks" / p.name)} for p in sorted((ctx / "images").iterdir())]


def _assert_same_as_cli(world, kind, answer, rows=None):
    """``answer`` equals `tpp predict`'s predictions.csv (its first ``rows`` rows: the queries sent)."""
    from tpp.segmentation import rle_decode

    rows = _read_csv(world["base"] / kind / "preds.csv")[:rows]
    assert answer["method"] == "learned" and len(answer["predictions"]) == len(rows)
    for row, pred in zip(rows, answer["predictions"]):
        if kind == "cls":
            assert pred["label"] == row["label"]
            assert all(abs(p - float(row[f"prob_{c}"])) < 2e-6 for c, p in pred["probabilities"].items())
        else:
            expected = np.array(Image.open(world["base"] / kind / row["mask"]))
            assert np.array_equal(rle_decode(pred["mask"]), expected)


def test_service_answers_learned_as_tpp_predict_stored_and_inline(world):
    from serving_fixtures import request

    worker, server = _service(world, [world["models"]["cls"], world["models"]["seg"]])
    try:
        with server as (host, port):
            url = f"http://{host}:{port}"
            status, listed = request(f"{url}/v1/contexts")
            assert status == 200 and listed["methods"] == ["prototype", "knn", "learned"]
            sha = {m["kind"]: m["weights_sha256"] for m in listed["learned_models"]}
            for kind, name in (("classification", "cls"), ("segmentation", "seg")):
                data = (world["models"][name] / learned.WEIGHTS).read_bytes()
                assert sha[kind] == hashlib.sha256(data).hexdigest()
            assert [m["holdout"] for m in listed["learned_models"]] == [["breastmnist"], ["busi"]]
            assert request(f"{url}/v1/sites")[1]["incontext_models"] == listed["learned_models"]
            for kind in ("cls", "seg"):
                queries = _queries(world, kind)
                status, stored = request(f"{url}/v1/contexts/{kind}/predict?method=learned",
                                         files=[(q.name, q.read_bytes()) for q in queries])
                assert status == 200, stored
                images = [{"name": q.name, "data": _b64(q)} for q in queries]
                status, inline = _post_json(f"{url}/v1/incontext/predict",
                                            {"context": _inline_context(world, kind)[::-1], "images": images,
                                             "method": "learned"})
                assert status == 200, inline
                for answer in (stored, inline):
                    _assert_same_as_cli(world, kind, answer)
                    assert answer["model"]["weights_sha256"] == sha[answer["task"]]
            first = _queries(world, "cls")[0]  # alone, it gets the answer it got among the others
            alone = request(f"{url}/v1/contexts/cls/predict?method=learned", files=[(first.name, first.read_bytes())])
            _assert_same_as_cli(world, "cls", dict(alone[1], predictions=alone[1]["predictions"]), rows=1)
            status, proto = request(f"{url}/v1/contexts/cls/predict",
                                    files=[(q.name, q.read_bytes()) for q in _queries(world, "cls")])
            assert status == 200 and proto["method"] == "prototype" and "model" not in proto
    finally:
        worker.stop()


def test_a_prepared_set_is_cached_per_learned_model(world):
    """The same stored set under another classifier (same kind, other weights) is prepared again, not served
    from the cache with the first model's answer."""
    from serving_fixtures import request

    from tpp.serve.incontext_models import load_models

    worker, server = _service(world, [world["models"]["cls"]])
    files = [(q.name, q.read_bytes()) for q in _queries(world, "cls")]
    try:
        with server as (host, port):
            url = f"http://{host}:{port}/v1/contexts/cls/predict?method=learned"
            first = request(url, files=files)[1]
            bank = worker.bank
            other = load_models([str(world["models"]["cls_other"])], bank.info.hash, bank.info.hidden_size)
            worker.call(lambda b: setattr(b, "incontext_models", other)).result()
            second = request(url, files=files)[1]
    finally:
        worker.stop()
    _assert_same_as_cli(world, "cls", first)
    def probs(answer):
        return [[p["probabilities"][c] for c in ("dark", "light")] for p in answer["predictions"]]

    assert not np.allclose(probs(first), probs(second), atol=1e-4)  # the other model's numbers, not the cached ones


def test_learned_without_a_model_of_that_kind_is_a_400_naming_the_option(world):
    from serving_fixtures import request

    worker, server = _service(world, [world["models"]["seg"]])  # a segmenter only
    query = _queries(world, "cls")[0]
    try:
        with server as (host, port):
            url = f"http://{host}:{port}"
            status, listed = request(f"{url}/v1/contexts")
            assert [m["kind"] for m in listed["learned_models"]] == ["segmentation"]
            status, stored = request(f"{url}/v1/contexts/cls/predict?method=learned",
                                     files=[(query.name, query.read_bytes())])
            assert status == 400 and "--incontext-model" in stored["detail"] and "classification" in stored["detail"]
            status, inline = _post_json(f"{url}/v1/incontext/predict",
                                        {"context": _inline_context(world, "cls"), "images": [_b64(query)],
                                         "method": "learned"})
            assert status == 400 and "--incontext-model" in inline["detail"]
            status, bad = request(f"{url}/v1/contexts/cls/predict?method=magic",
                                  files=[(query.name, query.read_bytes())])
            assert status == 400 and "learned" in bad["detail"]
            seg = _queries(world, "seg")[0]
            status, ok = request(f"{url}/v1/contexts/seg/predict?method=learned", files=[(seg.name, seg.read_bytes())])
            assert status == 200 and ok["model"]["kind"] == "segmentation"
    finally:
        worker.stop()
    worker, server = _service(world, [])
    try:
        with server as (host, port):
            status, listed = request(f"http://{host}:{port}/v1/contexts")
            assert listed["methods"] == ["prototype", "knn"] and listed["learned_models"] == []
            status, none = request(f"http://{host}:{port}/v1/contexts/cls/predict?method=learned",
                                   files=[(query.name, query.read_bytes())])
            assert status == 400 and "none is loaded" in none["detail"] and "--incontext-model" in none["detail"]
    finally:
        worker.stop()


def test_a_tampered_or_foreign_model_is_refused_at_start_up(world, tmp_path, capsys):
    import shutil
    import socket

    from tpp.backbones import load_backbone
    from tpp.serve.incontext_models import load_models

    info = load_backbone(str(world["backbone"]))[1]
    tampered = shutil.copytree(world["models"]["cls"], tmp_path / "tampered")
    card = json.loads((tampered / learned.CARD).read_text())
    card["architecture"]["hidden"] = 32  # the weights no longer fit the card
    (tampered / learned.CARD).write_text(json.dumps(card))
    with socket.socket() as free:  # a port this user may bind (below 1024 needs root): the model check is first
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    code = run_cli("serve", "--backbone", world["backbone"], "--store", world["store"], "--incontext-model", tampered,
                   "--device", "cpu", "--port", port)
    err = capsys.readouterr().err
    assert code == 2 and str(tampered) in err and "--incontext-model" in err and "Traceback" not in err
    foreign = shutil.copytree(world["models"]["cls"], tmp_path / "foreign")
    card = json.loads((foreign / learned.CARD).read_text())
    card["task_distribution"]["backbone"]["hash"] = "0" * 64
    (foreign / learned.CARD).write_text(json.dumps(card))
    with pytest.raises(TppError, match="trained on features of backbone"):
        load_models([str(foreign)], info.hash, info.hidden_size)
    with pytest.raises(TppError, match="both classification models"):
        load_models([str(world["models"]["cls"]), str(world["models"]["cls_other"])], info.hash, info.hidden_size)
    narrow = learned.SetClassifier(info.hidden_size + 4, hidden=16, layers=1, heads=2)
    learned.save(narrow, "classification", tmp_path / "narrow",
                 {"task_distribution": {"backbone": {"hash": info.hash}}})
    with pytest.raises(TppError, match=f"reads {info.hidden_size + 4}-dim features"):
        load_models([str(tmp_path / "narrow")], info.hash, info.hidden_size)
    nan = shutil.copytree(world["models"]["cls"], tmp_path / "nan")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(nan / learned.WEIGHTS))
    weights["scale"] = torch.tensor(float("nan"))
    save_file(weights, str(nan / learned.WEIGHTS))
    with pytest.raises(TppError, match="weights were changed after training"):
        load_models([str(nan)], info.hash, info.hidden_size)
    card = json.loads((nan / learned.CARD).read_text())  # a card rewritten to match: the values are checked too
    card["weights_sha256"] = learned.file_sha256(nan / learned.WEIGHTS)
    (nan / learned.CARD).write_text(json.dumps(card))
    with pytest.raises(TppError, match="non-finite values .* tensor scale"):
        load_models([str(nan)], info.hash, info.hidden_size)
    with pytest.raises(TppError, match="is not a folder"):
        load_models([str(tmp_path / "missing")], info.hash, info.hidden_size)
    fifo = shutil.copytree(world["models"]["cls"], tmp_path / "fifo")  # reading it would block forever
    (fifo / learned.WEIGHTS).unlink()
    os.mkfifo(fifo / learned.WEIGHTS)
    with pytest.raises(TppError, match="fifo"):
        load_models([str(fifo)], info.hash, info.hidden_size)
    holdout = shutil.copytree(world["models"]["cls"], tmp_path / "holdout")
    card = json.loads((holdout / learned.CARD).read_text())
    (holdout / learned.CARD).write_text(json.dumps(dict(card, holdout=[1, 2])))
    with pytest.raises(TppError, match="holdout must be a list"):
        load_models([str(holdout)], info.hash, info.hidden_size)


def test_serve_help_documents_the_option(capsys):
    with pytest.raises(SystemExit):
        run_cli("serve", "--help")
    assert "--incontext-model DIR" in capsys.readouterr().out


def test_the_ray_engine_checks_the_models_before_ray_starts(world, tmp_path):
    """``--engine ray``: the driver refuses a bad folder (nothing of Ray started) and hands the replicas absolute
    folders with the weights hashes they must find."""
    ray_engine = pytest.importorskip("tpp.serve.ray_engine")
    import ray

    with pytest.raises(TppError, match="--incontext-model refused.*cannot be read"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / learned.CARD).write_text("{")
        (tmp_path / "bad" / learned.WEIGHTS).write_bytes(b"")
        ray_engine.application(str(world["backbone"]), str(world["store"]), incontext_models=[str(tmp_path / "bad")])
    assert not ray.is_initialized()
    checked, described = ray_engine.checked_models(str(world["backbone"]), [str(world["models"]["seg"])])
    sha = hashlib.sha256((world["models"]["seg"] / learned.WEIGHTS).read_bytes()).hexdigest()
    assert checked == {str(world["models"]["seg"].resolve()): sha} and described[0]["weights_sha256"] == sha
    from tpp.serve.incontext_models import load_models

    with pytest.raises(TppError, match="changed after tpp serve checked them"):
        load_models(list(checked), "unused", 1, expected={path: "0" * 64 for path in checked})
