"""In-context prediction (issue 25): prototype and kNN on frozen features, per-patch prototypes for
segmentation; context sets from folders / CSVs, ``tpp predict --context``, the store and the service."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tpp.errors import TppError
from tpp.incontext import methods
from tpp.incontext.context import CLASSIFICATION, SEGMENTATION, ContextSet, check


def _blobs(n_per_class=(5, 5), d=16, seed=0):
    """Separable features (K, D) and labels (K,): class c around a random centre."""
    rng = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(n_per_class), d, generator=rng) * 3
    feats, labels = [], []
    for c, n in enumerate(n_per_class):
        feats.append(centres[c] + torch.randn(n, d, generator=rng))
        labels += [c] * n
    return torch.cat(feats), torch.tensor(labels), centres


@pytest.mark.parametrize("method", methods.METHODS)
def test_classify_is_order_invariant_and_right(method):
    feats, labels, centres = _blobs((6, 4, 5))
    queries = centres + 0.1
    probs, t = methods.classify(feats, labels, 3, queries, method)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    assert probs.argmax(1).tolist() == [0, 1, 2]
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))
    probs_perm, t_perm = methods.classify(feats[perm], labels[perm], 3, queries, method)
    assert t_perm == t
    assert torch.allclose(probs, probs_perm, atol=1e-5)


def test_loo_temperature_is_calibrated_not_a_constant():
    """Well separated classes get a sharper temperature than overlapping ones."""
    sharp, labels, _ = _blobs((8, 8), seed=1)
    noisy = sharp + torch.randn(sharp.shape, generator=torch.Generator().manual_seed(2)) * 6
    t_sharp = methods.loo_temperature(*methods.centre(sharp, sharp[:1])[:1], labels, 2, "prototype")
    t_noisy = methods.loo_temperature(*methods.centre(noisy, noisy[:1])[:1], labels, 2, "prototype")
    assert t_sharp < t_noisy


@pytest.mark.parametrize("method", methods.METHODS)
def test_one_example_per_class_works(method):
    feats, labels, centres = _blobs((1, 1))
    probs, t = methods.classify(feats, labels, 2, centres, method)
    assert t == methods.DEFAULT_T
    assert probs.argmax(1).tolist() == [0, 1]


def test_one_class_is_an_error():
    feats, labels, _ = _blobs((4,))
    with pytest.raises(TppError, match="two classes"):
        methods.classify(feats, labels, 1, feats[:1])
    ctx = ContextSet(CLASSIFICATION, [np.zeros((8, 8), np.uint8)] * 3, ["a"] * 3, names=["x"] * 3, source="ctx")
    with pytest.raises(TppError, match="one class only"):
        check(ctx)
    ctx = ContextSet(CLASSIFICATION, [np.zeros((8, 8), np.uint8)] * 3, ["Benign", "benign", "malignant"],
                     names=["x"] * 3, source="ctx")
    with pytest.raises(TppError, match="name one class written 2 ways"):  # they used to be two classes
        check(ctx)


def _seg_world(k=4, size=16, seed=0):
    """Tokens whose foreground patches lie along a direction: (K, N, D) tokens, (K, S, S) masks, grid."""
    rng = torch.Generator().manual_seed(seed)
    grid = (4, 4)
    masks = torch.zeros(k, size, size)
    for i in range(k):
        r, c = (i % 3) * 4, (i % 2) * 4
        masks[i, r:r + 8, c:c + 8] = 1
    fg = methods.masks_to_grid(masks, grid)  # (K, 16)
    direction = torch.randn(8, generator=rng)
    tokens = torch.randn(k, 16, 8, generator=rng) * 0.3 + fg[..., None] * direction * 2
    return tokens, masks, grid, direction


@pytest.mark.parametrize("method", methods.METHODS)
def test_segment_finds_foreground_order_invariant(method):
    tokens, masks, grid, direction = _seg_world()
    query = torch.zeros(1, 16, 8)
    query[0, :4] += direction * 2  # first grid row is foreground
    fg, t = methods.segment(tokens, masks, query, grid, method)
    assert fg.shape == (1, 4, 4)
    assert bool((fg[0, 0] > 0.5).all()) and bool((fg[0, 1:] < 0.5).all())
    perm = torch.tensor([2, 0, 3, 1])
    fg2, t2 = methods.segment(tokens[perm], masks[perm], query, grid, method)
    assert t2 == t and torch.allclose(fg, fg2, atol=1e-5)
    assert methods.upsample(fg[0], (16, 16)).shape == (16, 16)


def test_segment_empty_masks_allowed_unless_all_empty():
    tokens, masks, grid, _ = _seg_world()
    masks[1:] = 0  # one non-empty mask: fine
    fg, _ = methods.segment(tokens, masks, tokens[:1], grid)
    assert fg.shape == (1, 4, 4)
    with pytest.raises(TppError, match="every context mask is empty"):
        methods.segment(tokens, torch.zeros_like(masks), tokens[:1], grid)
    images = [np.zeros((16, 16), np.uint8)] * 2
    ctx = ContextSet(SEGMENTATION, images, masks=[np.zeros((16, 16), np.uint8)] * 2, names=["a", "b"], source="s")
    with pytest.raises(TppError, match="every mask is empty"):
        check(ctx)


def test_segment_with_one_context_image():
    tokens, masks, grid, _ = _seg_world(k=1)
    fg, t = methods.segment(tokens, masks, tokens, grid)
    assert fg.shape == (1, 4, 4) and 0 < t <= 1
    assert bool(((fg[0] > 0.5).float().flatten() == methods.masks_to_grid(masks, grid)[0].round()).all())


def _images(n, size=28, seed=0, bright=0):
    rng = np.random.default_rng(seed)
    return [np.clip(rng.integers(0, 100, (size, size)) + bright, 0, 255).astype(np.uint8) for _ in range(n)]


def _state_hash(module: torch.nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def test_no_parameter_changes_and_k1_on_a_backbone(tiny_mae):
    from tpp.incontext.features import load_extractor
    from tpp.incontext.predict import prepare

    extractor = load_extractor(str(tiny_mae))
    before = _state_hash(extractor.encoder)
    ctx = check(ContextSet(CLASSIFICATION, _images(1) + _images(1, seed=1, bright=120), ["dark", "light"],
                           names=["a", "b"], source="k1"))
    prepared = prepare(ctx, extractor, "knn")
    probs = prepared.predict(_images(3, seed=5) + _images(3, seed=6, bright=120))
    assert [prepared.classes[int(np.argmax(p))] for p in probs] == ["dark"] * 3 + ["light"] * 3
    masks = [np.zeros((32, 32), np.uint8) for _ in range(2)]
    masks[0][8:24, 8:24] = 1
    seg = check(ContextSet(SEGMENTATION, _images(2, size=32), masks=masks, names=["a", "b"], source="seg"))
    out = prepare(seg, extractor, image_size=32).predict(_images(1, size=40))
    assert out[0].shape == (40, 40) and out[0].dtype == np.uint8
    assert _state_hash(extractor.encoder) == before
    assert not any(p.requires_grad for p in extractor.encoder.parameters())


# -- context sets on disk, tpp predict --context, the store and the service ---------------------------------

def _write_context(base, n=3, size=28, seg=False):
    """A context folder (two classes of different brightness, or images/ + masks/) and a query folder."""
    from PIL import Image

    if seg:
        for sub in ("images", "masks"):
            (base / "ctx" / sub).mkdir(parents=True)
        for i, image in enumerate(_images(n, size=size, seed=10)):
            mask = np.zeros((size, size), np.uint8)
            mask[4 + i:16 + i, 6:18] = 255 if i else 0  # the first mask is empty: allowed
            image[mask > 0] = 220
            Image.fromarray(image).save(base / "ctx" / "images" / f"e{i}.png")
            Image.fromarray(mask).save(base / "ctx" / "masks" / f"e{i}.png")
    else:
        for label, bright in (("dark", 0), ("light", 120)):
            (base / "ctx" / label).mkdir(parents=True)
            for i, image in enumerate(_images(n, size=size, seed=len(label), bright=bright)):
                Image.fromarray(image).save(base / "ctx" / label / f"{i}.png")
    (base / "q").mkdir()
    for i, image in enumerate(_images(2, size=size, seed=99) + _images(2, size=size + 4, seed=98, bright=150)):
        if seg:
            image[8:20, 6:18] = 220
        Image.fromarray(image).save(base / "q" / f"q{i}.png")
    return base / "ctx", base / "q"


def test_a_segmentation_context_pairs_dotted_names_whole(tmp_path):
    """Images and masks named by UIDs ('1.2.840.1.png', '1.2.840.2.png') pair one to one: a name cut at its
    first dot made every one '1', and every image got the last mask."""
    from PIL import Image

    from tpp.incontext.context import read_context

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in (1, 2):
        Image.fromarray(np.full((16, 16), 60 * i, np.uint8)).save(tmp_path / "images" / f"1.2.840.{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[: 4 * i] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"1.2.840.{i}.png")
    ctx = read_context(tmp_path)
    assert sorted((int(im.flat[0]), int(m.sum())) for im, m in zip(ctx.images, ctx.masks)) == [(60, 64), (120, 128)]
    from tpp.data.filesets import image_stem

    assert [image_stem(p) for p in ("1.2.840.9", "scan.nii.gz", "a.b.PNG", ".png")] == ["1.2.840.9", "scan", "a.b",
                                                                                          ".png"]
    (tmp_path / "masks" / "1.2.840.3.png").write_bytes((tmp_path / "masks" / "1.2.840.1.png").read_bytes())
    with pytest.raises(TppError, match=r"masks/1.2.840.3.png has no partner in images/"):
        read_context(tmp_path)


def test_a_context_folder_reads_nested_class_images_and_refuses_a_changed_task(tmp_path):
    """Images one level down in a class folder are that class's (they were left out, and their class with
    them); an empty class folder, an image outside any class, images/ without masks/ and a CSV naming an image
    twice are refused, naming the file: each would silently change the task."""
    from PIL import Image

    from tpp.incontext.context import read_context

    def save(path, value):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)

    ctx = tmp_path / "ctx"
    for i in range(2):
        save(ctx / "a" / f"{i}.png", 10)
        save(ctx / "b" / f"{i}.png", 200)
        save(ctx / "c" / "batch1" / f"{i}.png", 100)
    read = read_context(ctx)
    assert sorted(read.labels) == ["a", "a", "b", "b", "c", "c"]
    (ctx / "d").mkdir()
    with pytest.raises(TppError, match=r"class folder '.*ctx/d' of the context holds no images"):
        read_context(ctx)
    (ctx / "d").rmdir()
    save(ctx / "stray.png", 0)
    with pytest.raises(TppError, match=r"holds 'stray.png' outside any class sub-folder"):
        read_context(ctx)
    seg = tmp_path / "seg"
    save(seg / "images" / "x.png", 0)
    save(seg / "labels" / "x.png", 0)
    with pytest.raises(TppError, match=r"has images/ but no masks/"):
        read_context(seg)
    table = tmp_path / "ctx.csv"
    table.write_text("image,label\nctx/a/0.png,a\nctx/b/0.png,b\n./ctx/a/0.png,b\n")
    with pytest.raises(TppError, match=r"line 4: image './ctx/a/0.png' is listed twice \(first on line 2\)"):
        read_context(table)


def test_context_pairs_are_each_checked_for_a_label_or_a_mask():
    """The task was decided from the first pair alone: float / numpy labels were taken as masks (an IndexError
    traceback), and a mask among class labels became a class named after its printed pixels."""
    import tpp
    from PIL import Image

    from tpp.incontext.context import from_pairs

    image, mask = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    mask[:4] = 1
    for labels, kind in (((0.0, 1.0), "float"), ((np.float64(0), np.float64(1)), "float64"),
                         ((None, None), "NoneType")):
        with pytest.raises(TppError, match=rf"context pair 0: its label is a {kind} \(.*\), neither a class label"):
            tpp.in_context([(image, labels[0]), (image, labels[1])], image)
    with pytest.raises(TppError, match=r"context pair 1 has a mask \(ndarray\) but pair 0 has a class label \(str\)"):
        tpp.in_context([(image, "a"), (image, mask), (image, "b")], image)
    with pytest.raises(TppError, match=r"context pair 2 has a class label \(str\) but pair 0 has a mask"):
        from_pairs([(image, mask), (image, mask), (image, "a")], lambda item, i: np.asarray(item))
    with pytest.raises(TppError, match=r"context pair 1: its mask is a ndarray of shape \(\) and dtype"):
        from_pairs([(image, mask), (image, np.array(1))], lambda item, i: np.asarray(item))
    read = lambda item, i: np.asarray(item)  # noqa: E731
    assert from_pairs([(image, np.bool_(False)), (image, np.bool_(True))], read).labels == ["False", "True"]
    assert from_pairs([(image, np.int64(0)), (image, 1)], read).classes == ["0", "1"]
    seg = from_pairs([(image, mask), (image, Image.fromarray(mask * 255)), (image, mask.tolist())], read)
    assert seg.task == SEGMENTATION and all(np.array_equal(m, mask) for m in seg.masks)


def _read_csv(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def served(tiny_mae, tmp_path_factory):
    """Context sets (classification and segmentation) predicted by the CLI and published to a store."""
    from helpers import run_cli

    base = tmp_path_factory.mktemp("incontext")
    out = {"backbone": tiny_mae, "store": base / "store"}
    for kind in ("cls", "seg"):
        (base / kind).mkdir()
        ctx, queries = _write_context(base / kind, seg=kind == "seg", size=32 if kind == "seg" else 28)
        csv = base / kind / "preds.csv"
        assert run_cli("predict", "--backbone", str(tiny_mae), "--context", str(ctx), str(queries), "--out", str(csv),
                       "--device", "cpu") == 0
        assert run_cli("context", "publish", str(out["store"]), str(ctx), "--site", kind,
                       "--backbone", str(tiny_mae)) == 0
        out[kind] = {"ctx": ctx, "queries": queries, "rows": _read_csv(csv), "csv": csv}
    out["store"].mkdir(exist_ok=True)
    return out


def test_predict_context_writes_the_predict_format(served):
    rows = served["cls"]["rows"]
    assert list(rows[0])[:6] == ["image", "site", "version", "label", "prob_dark", "prob_light"]
    assert [r["label"] for r in rows] == ["dark", "dark", "light", "light"]
    seg = served["seg"]["rows"]
    assert list(seg[0])[3:] == ["mask", "frac_background", "frac_foreground"]
    from PIL import Image

    mask = np.array(Image.open(served["seg"]["csv"].parent / seg[2]["mask"]))
    assert mask.shape == (36, 36) and set(np.unique(mask)) <= {0, 1}  # at the query's own size


def test_predict_context_with_nothing_readable_lists_why_and_removes_stale_outputs(served, tmp_path, capsys):
    """As ``tpp predict`` with an adapter: the skipped list is written, an earlier batch's CSV removed."""
    from helpers import run_cli

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "p.csv"
    out.write_text("image,site\nan_earlier_batch.png,context:ctx\n")
    assert run_cli("predict", "--backbone", str(served["backbone"]), "--context", str(served["cls"]["ctx"]),
                   str(tmp_path / "bad.png"), "--out", str(out), "--on-bad-file", "skip", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "none of the 1 inputs could be predicted" in err and "earlier predictions at" in err
    assert not out.exists() and str(tmp_path / "bad.png") in (tmp_path / "p_skipped.csv").read_text()


def test_predict_context_into_its_input_folder_never_reads_its_own_masks(served, tmp_path, capsys):
    """--out inside the query folder: a second run read the first run's masks (FOLDER/p_masks/) as queries and
    wrote masks of those masks beside the new ones. Its own outputs are left out of the walk, and the masks folder
    holds exactly the masks of the last run."""
    import shutil

    from helpers import run_cli

    queries = tmp_path / "q"
    shutil.copytree(served["seg"]["queries"], queries)
    out = queries / "p.csv"
    names = sorted(p.name for p in queries.iterdir())
    for _ in range(2):
        assert run_cli("predict", "--backbone", str(served["backbone"]), "--context", str(served["seg"]["ctx"]),
                       str(queries), "--out", str(out)) == 0
        rows = _read_csv(out)
        assert [r["image"] for r in rows] == [str(queries / n) for n in names]
        assert sorted(p.name for p in (queries / "p_masks").iterdir()) == \
            [".tpp-predict-masks"] + [f"{i:05d}_{n[:-4]}.png" for i, n in enumerate(names)]
    (queries / names[0]).unlink()
    assert run_cli("predict", "--backbone", str(served["backbone"]), "--context", str(served["seg"]["ctx"]),
                   str(queries), "--out", str(out)) == 0
    assert len(_read_csv(out)) == len(names) - 1 and len(list((queries / "p_masks").iterdir())) == len(names)
    for name in names[1:]:
        (queries / name).unlink()
    assert run_cli("predict", "--backbone", str(served["backbone"]), "--context", str(served["seg"]["ctx"]),
                   str(queries), "--out", str(out)) == 2  # only the earlier masks are left: nothing to predict
    assert "no images to predict: the inputs hold only the masks an earlier run wrote" in capsys.readouterr().err


def test_context_publish_takes_a_class_folder_name_that_is_no_utf8(tiny_mae, tmp_path, capsys):
    """A class folder named in Latin-1 bytes (b'caf\\xe9') crashed publishing with a UnicodeEncodeError traceback
    (the card); its bytes are written escaped, as in every text file tpp writes, and the set loads again."""
    import os

    from helpers import run_cli

    from tpp.serve import contexts

    ctx, _ = _write_context(tmp_path)
    odd = os.fsdecode(b"caf\xe9")
    (ctx / "light").rename(ctx / odd)
    store = tmp_path / "store"
    assert run_cli("context", "publish", str(store), str(ctx), "--site", "s", "--backbone", str(tiny_mae)) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "classes caf\\udce9/dark)" in out
    version = contexts.open_context(store, "s")
    assert version.ctx.classes == [odd, "dark"]
    assert "- classes: caf\\xe9 (3), dark (3)" in (version.path / "README.md").read_text(encoding="utf-8")
    assert contexts.check_store(store) == {"s": None}


def _service(served, max_context=256, limits=None):
    from serving_fixtures import uvicorn_on_loopback

    from tpp.serve.bank import AdapterBank
    from tpp.serve.images import DEFAULT_LIMITS
    from tpp.serve.server import create_app
    from tpp.serve.worker import InferenceWorker

    worker = InferenceWorker(AdapterBank(str(served["backbone"]), str(served["store"])))
    app = create_app(worker, str(served["store"]), max_context=max_context, limits=limits or DEFAULT_LIMITS)
    return worker, uvicorn_on_loopback(app)


def _json(url, body):
    import json

    from serving_fixtures import request

    return request(url, body=json.dumps(body).encode(), method="POST")


def _b64(path):
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def test_predict_context_runs_the_backbone_in_the_requested_precision(served, tmp_path, monkeypatch):
    """--precision bf16 reaches the backbone's forward (autocast), answers as fp32 does here; fp16 on a CPU is an
    error naming the flag, before any file is read."""
    from helpers import run_cli

    from tpp import devices

    used, real = [], devices.autocast
    monkeypatch.setattr(devices, "autocast",
                        lambda device, precision: used.append(precision) or real(device, precision))
    ctx, queries = served["cls"]["ctx"], served["cls"]["queries"]
    out = tmp_path / "bf16.csv"
    assert run_cli("predict", "--backbone", str(served["backbone"]), "--context", str(ctx), str(queries),
                   "--out", str(out), "--precision", "bf16") == 0
    assert used and set(used) == {"bf16"}
    assert [r["label"] for r in _read_csv(out)] == [r["label"] for r in served["cls"]["rows"]]
    assert run_cli("predict", "--backbone", str(served["backbone"]), "--context", str(ctx), str(queries),
                   "--out", str(tmp_path / "fp16.csv"), "--precision", "fp16") == 2
    assert not (tmp_path / "fp16.csv").exists()


def test_service_answers_as_tpp_predict_stored_and_inline(served):
    from serving_fixtures import request

    from tpp.segmentation import rle_decode

    worker, server = _service(served)
    try:
        with server as (host, port):
            url = f"http://{host}:{port}"
            status, listed = request(f"{url}/v1/contexts")
            assert status == 200 and [c["site"] for c in listed["contexts"]] == ["cls", "seg"]
            queries = sorted(served["cls"]["queries"].iterdir())
            uploads = [(q.name, q.read_bytes()) for q in queries]
            status, stored = request(f"{url}/v1/contexts/cls/predict", files=uploads)
            assert status == 200, stored
            status, with_k = request(f"{url}/v1/contexts/cls/predict?k=3", files=uploads)  # k: knn's only
            assert status == 200 and with_k["predictions"] == stored["predictions"], with_k
            context = [{"image": _b64(p), "label": p.parent.name} for p in sorted(served["cls"]["ctx"].rglob("*.png"))]
            images = [{"name": q.name, "data": _b64(q)} for q in queries]
            status, inline = _json(f"{url}/v1/incontext/predict", {"context": context[::-1], "images": images})
            assert status == 200, inline
            for answer in (stored, inline):
                for row, pred in zip(served["cls"]["rows"], answer["predictions"]):
                    assert pred["label"] == row["label"]
                    for label, p in pred["probabilities"].items():
                        assert abs(p - float(row[f"prob_{label}"])) < 2e-6
            status, seg = request(f"{url}/v1/contexts/seg/predict",
                                  files=[(q.name, q.read_bytes()) for q in sorted(served["seg"]["queries"].iterdir())])
            assert status == 200, seg
            from PIL import Image

            for row, pred in zip(served["seg"]["rows"], seg["predictions"]):
                expected = np.array(Image.open(served["seg"]["csv"].parent / row["mask"]))
                assert np.array_equal(rle_decode(pred["mask"]), expected)
            status, missing = request(f"{url}/v1/contexts/nope/predict", files=[("q.png", queries[0].read_bytes())])
            assert status == 404
    finally:
        worker.stop()


def test_in_context_api_matches_the_cli_and_ignores_the_order(served):
    import tpp

    files = sorted(served["cls"]["ctx"].rglob("*.png"))
    pairs = [(str(p), p.parent.name) for p in files]
    queries = [str(q) for q in sorted(served["cls"]["queries"].iterdir())]
    forward = tpp.in_context(pairs, queries, backbone=served["backbone"])
    backward = tpp.in_context(pairs[::-1], queries, backbone=served["backbone"])
    folder = tpp.in_context(served["cls"]["ctx"], queries[0], backbone=served["backbone"])
    assert forward == backward and folder == forward[0]
    assert [r["label"] for r in forward] == [r["label"] for r in served["cls"]["rows"]]


def _tpp_stage_adapter(backbone, path, method_name="lora", method_options=None):
    """A TPP-stage adapter folder (no head; LoRA unless told) with non-zero weights, written by the real writer."""
    from dataclasses import asdict

    from tpp.adapter_dir import FORMAT, make_card, write_adapter_dir
    from tpp.backbones import load_backbone
    from tpp.model import attach_adapter, input_frame

    encoder, info, _ = load_backbone(str(backbone))
    method, options, targets = attach_adapter(encoder, method_name, method_options or {"r": 2})
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in encoder.model.named_parameters():
            if "lora_B" in name or "tpp_visual_prompt" in name:
                param.normal_(0, 0.5)
    frame = input_frame(encoder.model)
    card = make_card(method=method_name, options=asdict(options), targets=targets, backbone=info,
                     input_rule={"image_size": info.image_size, "frame": frame} if frame else {},
                     site="s", modality="us", task={}, data={}, metrics={}, parent=None, trainable_parameters=0,
                     stage="tpp")
    card["format"] = FORMAT
    write_adapter_dir(path, encoder, None, card)
    return path


def test_adapter_features_differ_and_leave_the_backbone_alone(tiny_mae, tmp_path):
    from tpp.backbones import backbone_hash
    from tpp.incontext.features import load_extractor
    from tpp.serve.adapter_features import with_adapter

    adapter = _tpp_stage_adapter(tiny_mae, tmp_path / "adapter")
    base = load_extractor(str(tiny_mae))
    before = _state_hash(base.encoder)
    adapted = with_adapter(base, str(adapter))
    images, rule = _images(3), base.rule(1)
    assert not torch.allclose(base.features(images, rule), adapted.features(images, rule), atol=1e-4)
    assert _state_hash(base.encoder) == before and backbone_hash(base.encoder.model) == base.info.hash
    other = load_extractor(str(tiny_mae))
    other.info.hash = "0" * 64  # another backbone: refused before anything is attached
    with pytest.raises(TppError, match="trained on backbone"):
        with_adapter(other, str(adapter))


def test_a_padding_prompt_adapter_is_refused_and_a_prompts_input_size_is_named(tiny_mae, tmp_path):
    """A padding visual prompt frames the image inside its border (evaluate and predict do, from the card): the
    in-context input has no frame, so the prompt overwrote the image's border (classification: a silently wrong
    answer) or failed deep inside the encoder (segmentation: 'made for a 28-px input, got (64, 64)'). Refused
    up front, naming the adapter; a full-image prompt works at its own size, and another size names it."""
    from tpp.incontext.features import load_extractor
    from tpp.incontext.predict import prepare
    from tpp.serve.adapter_features import with_adapter

    cls = check(ContextSet(CLASSIFICATION, _images(2) + _images(2, seed=1, bright=120), ["a", "a", "b", "b"],
                           names=list("0123"), source="c"))
    masks = [np.zeros((28, 28), np.uint8) for _ in range(2)]
    masks[0][4:16, 4:16] = 1
    seg = check(ContextSet(SEGMENTATION, _images(2), masks=masks, names=["0", "1"], source="s"))
    pad = _tpp_stage_adapter(tiny_mae, tmp_path / "pad", "visual_prompt", {"mode": "pad", "pad": 4})
    extractor = with_adapter(load_extractor(str(tiny_mae)), str(pad))
    for ctx in (cls, seg):
        with pytest.raises(TppError, match=r"adapter '.*pad' holds a padding visual prompt \(mode pad\): it frames "
                                           r"every image inside a 4-px prompt border"):
            prepare(ctx, extractor)
    full = _tpp_stage_adapter(tiny_mae, tmp_path / "full", "visual_prompt", {"mode": "full"})
    extractor = with_adapter(load_extractor(str(tiny_mae)), str(full))
    assert len(prepare(cls, extractor).predict(_images(1))[0]) == 2
    with pytest.raises(TppError, match=r"visual prompt made for 28-px inputs, but in-context prediction would feed "
                                       r"the encoder 64-px images; pass --image-size 28"):
        prepare(seg, extractor)
    assert prepare(seg, extractor, image_size=28).predict(_images(1))[0].shape == (28, 28)


def test_the_learned_method_refuses_an_adapter(tiny_mae, tmp_path, capsys):
    """A learned in-context model reads features of the backbone it was trained on; adapter features were
    accepted (and answered) although no model card records an adapter."""
    from helpers import run_cli

    from tpp.incontext import learned

    torch.manual_seed(0)
    learned.save(learned.SetClassifier(32, hidden=16, layers=1, heads=2, max_classes=4).eval(), "classification",
                 tmp_path / "model", {})
    ctx, queries = _write_context(tmp_path)
    adapter = _tpp_stage_adapter(tiny_mae, tmp_path / "adapter")
    out = tmp_path / "p.csv"
    common = ["predict", "--backbone", str(tiny_mae), "--context", str(ctx), "--method", "learned", "--model",
              str(tmp_path / "model"), str(queries), "--out", str(out)]
    assert run_cli(*common) == 0 and out.exists()
    out.unlink()
    assert run_cli(*common, "--adapter", str(adapter)) == 2
    err = capsys.readouterr().err
    assert "--method learned takes no adapter" in err and str(adapter) in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.integration
def test_predict_context_on_real_pneumonia_images_beats_chance(tmp_path):
    """The real CLI on PneumoniaMNIST (never seen by the default backbone): 16 training images per class as the
    context folder, 120 test images; the AUROC of prob_1 must beat chance clearly (the benchmark measures
    0.80 at K = 16, benchmarks/README.md)."""
    from conftest import shared_backbone, shared_data
    from helpers import run_cli
    from PIL import Image

    from tpp.metrics import quick_metrics

    data = np.load(shared_data() / "medmnist" / "pneumoniamnist.npz")
    labels = data["train_labels"][:, 0]
    for c in (0, 1):
        (tmp_path / "ctx" / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(labels == c)[:16]:
            Image.fromarray(data["train_images"][i]).save(tmp_path / "ctx" / str(c) / f"{i}.png")
    (tmp_path / "q").mkdir()
    test_y = data["test_labels"][:120, 0]
    for i, image in enumerate(data["test_images"][:120]):
        Image.fromarray(image).save(tmp_path / "q" / f"{i:03d}.png")
    out = tmp_path / "preds.csv"
    assert run_cli("predict", "--backbone", shared_backbone(), "--context", str(tmp_path / "ctx"),
                   str(tmp_path / "q"), "--out", str(out), "--device", "cpu") == 0
    rows = _read_csv(out)
    probs = torch.tensor([[float(r["prob_0"]), float(r["prob_1"])] for r in rows])
    assert quick_metrics(probs, torch.as_tensor(test_y).long())["auroc"] > 0.65


@pytest.mark.parametrize("action", ["list", "check"])
def test_context_list_and_check_refuse_a_store_that_does_not_exist(tmp_path, capsys, action):
    """A typo in the store path must not pass as '0 context sets ok' (exit 0) in a deployment check."""
    from tpp.cli import main

    assert main(["context", action, str(tmp_path / "no-such-store")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no-such-store' does not exist" in err


def test_an_image_size_below_one_pixel_is_refused_not_replaced():
    from tpp.incontext.predict import prepare

    ctx = ContextSet(CLASSIFICATION, [np.zeros((8, 8), np.uint8)] * 2, ["a", "b"], names=["0", "1"])
    with pytest.raises(TppError, match="at least 1 pixel, got 0"):
        prepare(ctx, None, "prototype", None, 0)


def test_an_image_size_over_the_patch_token_limit_is_refused_before_the_encoder_runs(tiny_mae, tmp_path, capsys):
    """--image-size had no upper bound: 2048 px ended in an allocator traceback, 100000 px in the process being
    killed for memory. At most MAX_PATCH_TOKENS (4096) patch tokens, as tpp trains and serves: 64 x 4 px here."""
    from helpers import run_cli

    from tpp.incontext.features import load_extractor

    extractor = load_extractor(str(tiny_mae))
    assert extractor.rule(1, 256)["image_size"] == 256  # 64 x 64 tokens: the limit itself
    for kind in ("cls", "seg"):
        ctx, queries = _write_context(tmp_path / kind, seg=kind == "seg")
        for size in (260, 100000):
            out = tmp_path / kind / "p.csv"
            assert run_cli("predict", "--backbone", str(tiny_mae), "--context", str(ctx), str(queries), "--out",
                           str(out), "--image-size", str(size)) == 2
            err = capsys.readouterr().err
            assert (f"image size {size} px gives {(size // 4) ** 2:,} patch tokens per image on this backbone (patch "
                    "4), more than the 4,096 tpp runs a backbone at; use at most 256 px") in err
            assert "Traceback" not in err and not out.exists()


def test_neighbours_without_knn_are_refused_not_ignored():
    from tpp.incontext.predict import prepare

    ctx = ContextSet(CLASSIFICATION, [np.zeros((8, 8), np.uint8)] * 2, ["a", "b"], names=["0", "1"])
    for method in ("prototype", "learned"):
        with pytest.raises(TppError, match=f"used by method knn only, not by {method}"):
            prepare(ctx, None, method, 3)


def test_more_neighbours_than_examples_warn(tiny_mae):
    import warnings

    from tpp.incontext.features import load_extractor
    from tpp.incontext.predict import prepare

    ctx = ContextSet(CLASSIFICATION, [np.zeros((8, 8), np.uint8)] * 2, ["a", "b"], names=["0", "1"])
    extractor = load_extractor(str(tiny_mae))
    with pytest.warns(UserWarning, match=r"k=5 neighbours but the context set holds 2 examples"):
        prepare(ctx, extractor, "knn", 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(ctx, extractor, "knn", 2)


def test_context_publish_with_store_and_set_swapped_says_so_and_writes_nothing(tmp_path, capsys):
    from helpers import run_cli

    ctx, _ = _write_context(tmp_path)
    before = sorted(p.relative_to(ctx) for p in ctx.rglob("*"))
    assert run_cli("context", "publish", str(ctx), str(tmp_path / "store"), "--site", "s") == 2
    err = capsys.readouterr().err
    assert f"takes the STORE first, then the set: tpp context publish {tmp_path / 'store'} {ctx} --site s" in err
    assert sorted(p.relative_to(ctx) for p in ctx.rglob("*")) == before and not (tmp_path / "store").exists()
    (tmp_path / "store" / "_contexts").mkdir(parents=True)  # a store with a typo'd set: no hint about the order
    assert run_cli("context", "publish", str(tmp_path / "store"), str(tmp_path / "ctz"), "--site", "s") == 2
    assert "takes the STORE first" not in capsys.readouterr().err
