"""The learned in-context models (issue 25): permutation invariance, any K, frozen parameters at prediction,
safetensors round trip, the leave-one-dataset-out task distribution, and ``tpp run incontext`` (resume, then
``tpp predict --context --method learned``)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import make_medmnist
from helpers import run_cli
from PIL import Image
from safetensors.torch import load_file

from tpp.errors import TppError
from tpp.incontext import episodes, learned
from tpp.incontext.context import CLASSIFICATION, SEGMENTATION, ContextSet, check
from tpp.incontext.predict import prepare

HOLDOUT = ["breastmnist", "pneumoniamnist", "busi"]


def _classifier(seed=0):
    torch.manual_seed(seed)
    return learned.SetClassifier(12, hidden=16, layers=1, heads=2, max_classes=4).eval()


def _segmenter(seed=0):
    torch.manual_seed(seed)
    return learned.CrossConvNet((4, 8)).eval()


def test_classifier_is_invariant_to_context_order_and_takes_any_k():
    model, gen = _classifier(), torch.Generator().manual_seed(1)
    context, queries = torch.randn(1, 9, 12, generator=gen), torch.randn(1, 5, 12, generator=gen)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1, 2]])
    perm = torch.randperm(9, generator=gen)
    with torch.no_grad():
        a = model(context, labels, queries, 3)
        b = model(context[:, perm], labels[:, perm], queries, 3)
        one = model(context[:, :2], labels[:, :2], queries, 2)  # K = 1 per class
    assert a.shape == (1, 5, 3) and one.shape == (1, 5, 2) and torch.isfinite(one).all()
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, model(context, labels.roll(1, 1), queries, 3), atol=1e-3)  # labels matter
    with pytest.raises(TppError, match="2 to 4 classes"):
        model(context, labels, queries, 5)


def test_a_query_is_answered_the_same_whatever_else_is_sent_with_it():
    """Queries attend to the context and to themselves only: one image's probabilities never depend on the other
    images of the call (or the batch size of `tpp predict`)."""
    model, gen = _classifier(3), torch.Generator().manual_seed(3)
    context, queries = torch.randn(8, 12, generator=gen), torch.randn(6, 12, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    together = learned.classify(model, context, labels, 3, queries)
    alone = torch.cat([learned.classify(model, context, labels, 3, queries[i:i + 1]) for i in range(6)])
    reordered = learned.classify(model, context, labels, 3, queries.flip(0)).flip(0)
    assert torch.allclose(together, alone, atol=1e-6) and torch.allclose(together, reordered, atol=1e-6)


def test_a_segmenter_of_the_first_format_still_loads(tmp_path):
    """Format 1 segmenters are the same network (no weights hash in the card); format 1 classifiers are refused."""
    import json

    learned.save(_segmenter(), "segmentation", tmp_path, {"task_distribution": {"image_size": 16}})
    card = json.loads((tmp_path / learned.CARD).read_text())
    del card["weights_sha256"]
    (tmp_path / learned.CARD).write_text(json.dumps(dict(card, format="tpp-incontext/1")))
    model, loaded = learned.load(tmp_path)
    assert loaded["format"] == "tpp-incontext/1" and isinstance(model, learned.CrossConvNet)


def test_prediction_does_not_depend_on_which_id_each_class_got():
    model, gen = _classifier(6), torch.Generator().manual_seed(6)
    context, queries = torch.randn(7, 12, generator=gen), torch.randn(4, 12, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    probs = learned.classify(model, context, labels, 3, queries)
    relabelled = learned.classify(model, context, torch.tensor([2, 0, 1])[labels], 3, queries)  # 0->2, 1->0, 2->1
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5)
    assert torch.allclose(probs, relabelled[:, [2, 0, 1]], atol=1e-5)


def test_segmenter_is_invariant_to_support_order_and_takes_one_support():
    model, gen = _segmenter(), torch.Generator().manual_seed(2)
    target = torch.rand(2, 1, 16, 16, generator=gen)
    images, labels = torch.rand(2, 5, 1, 16, 16, generator=gen), (torch.rand(2, 5, 1, 16, 16, generator=gen) > .5)
    perm = torch.randperm(5, generator=gen)
    with torch.no_grad():
        a = model(target, images, labels.float())
        b = model(target, images[:, perm], labels[:, perm].float())
        one = model(target, images[:, :1], labels[:, :1].float())
    assert a.shape == one.shape == (2, 1, 16, 16)
    assert torch.allclose(a, b, atol=1e-5)
    assert sum(p.numel() for p in learned.CrossConvNet().parameters()) < 1_200_000  # UniverSeg's size, well under


def test_round_trip_through_safetensors_gives_identical_outputs(tmp_path):
    model, gen = _classifier(3), torch.Generator().manual_seed(3)
    learned.save(model, "classification", tmp_path / "m", {"holdout": HOLDOUT})
    loaded, card = learned.load(tmp_path / "m")
    assert card["kind"] == "classification" and card["holdout"] == HOLDOUT
    assert not any(p.requires_grad for p in loaded.parameters())
    context, queries, labels = torch.randn(1, 4, 12, generator=gen), torch.randn(1, 3, 12, generator=gen), \
        torch.tensor([[0, 1, 0, 1]])
    with torch.no_grad():
        assert torch.equal(model(context, labels, queries, 2), loaded(context, labels, queries, 2))
    seg = _segmenter(4)
    learned.save(seg, "segmentation", tmp_path / "s", {})
    x = torch.rand(1, 1, 16, 16, generator=gen)
    s_img, s_lab = torch.rand(1, 2, 1, 16, 16, generator=gen), torch.ones(1, 2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(seg(x, s_img, s_lab), learned.load(tmp_path / "s")[0](x, s_img, s_lab))


def test_load_refuses_missing_or_foreign_files_with_the_path(tmp_path):
    with pytest.raises(TppError, match="is not a folder with icl_card.json"):
        learned.load(tmp_path)
    learned.save(_classifier(), "classification", tmp_path / "m", {})
    weights = load_file(str(tmp_path / "m" / learned.WEIGHTS))
    from safetensors.torch import save_file

    save_file({k: v for k, v in weights.items() if not k.startswith("label")}, str(tmp_path / "m" / learned.WEIGHTS))
    with pytest.raises(TppError, match="cannot be read"):
        learned.load(tmp_path / "m")


class _StubExtractor:
    """Features = mean pixel value and 3 fixed random projections of a 4x4 thumbnail; no backbone."""
    info = type("Info", (), {"hash": "stub"})()
    device = torch.device("cpu")

    def rule(self, channels, size=None):
        return {"image_channels": channels}

    def features(self, arrays, rule):
        x = torch.stack([torch.as_tensor(np.asarray(a, dtype=np.float32)).reshape(28, 28, -1).mean(-1) for a in arrays])
        thumb = torch.nn.functional.adaptive_avg_pool2d(x[:, None], 4).flatten(1) / 255
        return torch.cat([thumb, thumb[:, :8] ** 2], 1)  # (B, 24)


@pytest.fixture()
def pool_root(tmp_path):
    root = tmp_path / "data"
    make_medmnist(root / "medmnist", "breastmnist")
    make_medmnist(root / "medmnist", "bloodmnist", rgb=True, classes=4, seed=1)
    make_medmnist(root / "medmnist", "organamnist", classes=3, seed=2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 64, 64), dtype=np.uint8)
    masks = np.zeros((12, 64, 64), np.uint8)
    masks[:, 20:40, 20:40] = 1
    (root / "seg").mkdir()
    np.savez(root / "seg" / "busi_64.npz", images=images, masks=masks)
    return root


def test_held_out_datasets_never_appear_in_an_episode(pool_root):
    assert set(episodes.dataset_names(pool_root, ["busi"])) == {"bloodmnist", "organamnist"}  # same images
    pool = episodes.classification_pool(pool_root, HOLDOUT, _StubExtractor(), 10, 0, log=lambda _: None)
    assert {d.name for d in pool} == {"bloodmnist", "organamnist"}
    rng, seen = np.random.default_rng(0), set()
    for _ in range(30):
        batch = episodes.classification_batch(rng, pool, 4, 4, 4, 2, 0.5)
        seen |= set(batch.sources)
        c = batch.num_classes
        assert batch.labels.shape[1] % c == 0 and set(batch.labels[0].tolist()) == set(range(c))
    assert seen == {"bloodmnist", "organamnist"}
    weights = {"busi": 1.0, "shapes": 1.0, "threshold": 1.0, "superpixel": 1.0, "denoise": 1.0, "inpaint": 1.0}
    seg = episodes.segmentation_pool(pool_root, HOLDOUT, 6, 32, 0, log=lambda _: None)
    assert seg.busi_images is None and "busi" not in seg.image_sources and "breastmnist" not in seg.image_sources
    tasks, sources = set(), set()
    for _ in range(12):
        batch = episodes.segmentation_batch(rng, seg, 2, 3, weights)
        assert batch.target.shape == (2, 1, 32, 32) and batch.support_labels.shape[2:] == (1, 32, 32)
        tasks |= set(batch.tasks)
        sources |= {s for e in batch.sources for s in e.split(",") if s}
    assert "busi" not in tasks and sources <= {"bloodmnist", "organamnist"}
    with_busi = episodes.segmentation_pool(pool_root, ["pneumoniamnist"], 6, 32, 0, log=lambda _: None)
    assert with_busi.busi_images is not None and "breastmnist" in with_busi.image_sources


def _write_context(folder, arrays_by_class):
    for label, arrays in arrays_by_class.items():
        (folder / label).mkdir(parents=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(folder / label / f"{i}.png")
    return folder


def _run(tiny_mae, root, out, *extra):
    return run_cli("run", "incontext", "--config", "incontext/classification.yaml", f"backbone.path={tiny_mae}",
                   f"data.root={root}", f"output_dir={out}", "incontext.per_class=8", "incontext.hidden=16",
                   "incontext.heads=2", "incontext.layers=1", "incontext.max_context=4", "train.batch_size=4",
                   "train.checkpoint_every=2", *extra)


def test_run_incontext_resumes_exactly_then_predicts_without_changing_weights(tiny_mae, pool_root, tmp_path, capsys,
                                                                             monkeypatch):
    assert _run(tiny_mae, pool_root, tmp_path / "ref", "train.max_steps=4") == 0
    from tpp.checkpoint import Checkpointer

    due = Checkpointer.due

    def stop_at_3(self, step, num_steps):  # the run dies after step 3, its last checkpoint at step 2
        if step == 3:
            raise TppError("interrupted")
        return due(self, step, num_steps)

    monkeypatch.setattr(Checkpointer, "due", stop_at_3)
    assert _run(tiny_mae, pool_root, tmp_path / "cut", "train.max_steps=4") != 0
    monkeypatch.setattr(Checkpointer, "due", due)
    assert not (tmp_path / "cut" / "model").exists()
    assert _run(tiny_mae, pool_root, tmp_path / "cut", "train.max_steps=4", "train.resume=auto") == 0
    assert '"event": "resumed", "step": 2' in (tmp_path / "cut" / "log.jsonl").read_text()
    a, b = (load_file(str(tmp_path / r / "model" / learned.WEIGHTS)) for r in ("ref", "cut"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    card = learned.load(tmp_path / "ref")[1]
    assert card["holdout"] == HOLDOUT and set(card["task_distribution"]["datasets"]) == {"bloodmnist", "organamnist"}

    data = np.load(pool_root / "medmnist" / "breastmnist.npz")  # held out: a task the model never saw
    images, labels = data["test_images"], data["test_labels"][:, 0]
    ctx_dir = _write_context(tmp_path / "ctx", {str(c): list(images[labels == c][:3]) for c in (0, 1)})
    queries = tmp_path / "q"
    queries.mkdir()
    for i in range(4):
        Image.fromarray(images[10 + i]).save(queries / f"q{i}.png")
    model, _ = learned.load(tmp_path / "ref")
    before = learned.parameter_hash(model)
    out = tmp_path / "preds.csv"
    assert run_cli("predict", "--context", ctx_dir, queries, "--backbone", tiny_mae, "--method", "learned",
                   "--model", tmp_path / "ref" / "model", "--out", out) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and all(r["label"] in ("0", "1") for r in rows)
    assert all(abs(float(r["prob_0"]) + float(r["prob_1"]) - 1) < 1e-4 for r in rows)
    # the Python API gives the same answer, and no parameter changed on the way
    from tpp.incontext.context import read_context
    from tpp.incontext.features import load_extractor

    prepared = prepare(read_context(ctx_dir), load_extractor(str(tiny_mae)), "learned", model=(model, _))
    probs = prepared.predict([np.asarray(Image.open(queries / f"q{i}.png")) for i in range(4)])
    assert [f"{p[0]:.6f}" for p in probs] == [r["prob_0"] for r in rows]
    assert learned.parameter_hash(model) == before
    assert run_cli("predict", "--context", ctx_dir, queries, "--backbone", tiny_mae, "--method", "learned",
                   "--out", tmp_path / "x.csv") != 0
    assert "--method learned needs --model" in capsys.readouterr().err


def test_compare_shows_incontext_runs(tiny_mae, pool_root, tmp_path, capsys):
    """`tpp compare` takes finished runs of every recipe; an incontext run was refused ("recipe 'incontext'
    defines no compare_row(run)")."""
    import json

    assert _run(tiny_mae, pool_root, tmp_path / "cls", "train.max_steps=2") == 0
    seg = tmp_path / "seg"  # a finished segmentation run as it leaves its folder (training one takes minutes)
    learned.save(_segmenter(), "segmentation", seg / "model",
                 {"task_distribution": {"image_size": 16, "tasks": {"busi": 0.0, "shapes": 0.5, "denoise": 0.5}}})
    (seg / "config.yaml").write_text("recipe: incontext\nincontext:\n  kind: segmentation\n")
    (seg / "status.json").write_text('{"status": "succeeded"}')
    (seg / "metrics.json").write_text(json.dumps({"kind": "segmentation", "final_loss": 0.5, "parameters": 1234}))
    capsys.readouterr()
    assert run_cli("compare", tmp_path / "cls", seg, "--csv", tmp_path / "c.csv") == 0
    out = capsys.readouterr().out
    assert "in-context classification" in out and "in-context segmentation" in out
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert [(r["recipe"], r["method"], r["data"]) for r in rows] == [
        ("incontext", "learned", "bloodmnist+organamnist"), ("incontext", "learned", "denoise+shapes")]
    metrics = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    assert int(rows[0]["trainable_parameters"]) == metrics["parameters"] and float(rows[1]["pretext_loss"]) == 0.5
    assert int(rows[0]["saved_bytes"]) > 0 and int(rows[1]["saved_bytes"]) > 0


def test_learned_segmentation_predicts_from_one_pair_and_refuses_a_classifier(tmp_path):
    seg = _segmenter(5)
    learned.save(seg, "segmentation", tmp_path / "s", {"task_distribution": {"image_size": 16}})
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 30), dtype=np.uint8)
    mask = np.zeros((40, 30), np.uint8)
    mask[10:20, 5:15] = 1
    ctx = check(ContextSet(SEGMENTATION, [image], masks=[mask], names=["a"], source="ctx"))
    stub = _StubExtractor()
    model = learned.load(tmp_path / "s")
    before = learned.parameter_hash(model[0])
    prepared = prepare(ctx, stub, "learned", model=model)
    out = prepared.predict([image, rng.integers(0, 255, (50, 60), dtype=np.uint8)])
    assert out[0].shape == (40, 30) and out[1].shape == (50, 60) and set(np.unique(out[1])) <= {0, 1}
    assert learned.parameter_hash(model[0]) == before
    cls_ctx = check(ContextSet(CLASSIFICATION, [image, image], ["a", "b"], names=["x", "y"], source="ctx"))
    with pytest.raises(TppError, match="segmentation model but the context set is a classification task"):
        prepare(cls_ctx, stub, "learned", model=model)


def test_an_image_size_is_refused_by_the_learned_method_not_ignored(tmp_path):
    """The learned segmenter runs at its card's size (16 here) whatever image_size said; now refused, naming it."""
    learned.save(_segmenter(5), "segmentation", tmp_path / "s", {"task_distribution": {"image_size": 16}})
    image, mask = np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)
    mask[5:10, 5:10] = 1
    seg = check(ContextSet(SEGMENTATION, [image], masks=[mask], names=["a"], source="ctx"))
    model = learned.load(tmp_path / "s")
    assert prepare(seg, _StubExtractor(), "learned", model=model).rule["image_size"] == 16
    cls = check(ContextSet(CLASSIFICATION, [image, image + 1], ["a", "b"], names=["x", "y"], source="ctx"))
    for ctx, size in ((seg, 32), (seg, 16), (cls, 28)):
        with pytest.raises(TppError, match=rf"the image size \(--image-size, image_size=; {size} px given\) is used by "
                                           "methods prototype and knn only"):
            prepare(ctx, _StubExtractor(), "learned", image_size=size, model=model)


def test_incontext_without_a_data_root_is_refused_before_output_dir_is_touched(tmp_path, monkeypatch, capsys):
    """validate said ok, and `tpp run incontext` created output_dir (and marked a finished run failed on
    train.resume=auto) before finding no data root."""
    from tpp.recipes import CONFIG_DIR

    monkeypatch.delenv("TPP_DATA_ROOT", raising=False)
    config = CONFIG_DIR / "incontext" / "segmentation.yaml"
    assert run_cli("validate", config, f"output_dir={tmp_path / 'run'}") == 2
    assert "no data root" in capsys.readouterr().err
    assert run_cli("run", "incontext", "--config", config, f"output_dir={tmp_path / 'run'}", "train.max_steps=1") == 2
    assert "no data root" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind, overrides, message", [
    ("classification", ["incontext.hidden=30", "incontext.heads=4"],
     "incontext.hidden (30) must be a multiple of incontext.heads (4)"),
    ("classification", ["incontext.hidden=4096"], "incontext.hidden must be between 1 and 2048, got 4096"),
    ("segmentation", ["incontext.channels=[8,8,8,8,8,8,8,8,8]", "incontext.image_size=256"],
     "incontext.channels must be a list of 1 to 8 numbers")])
def test_an_architecture_that_cannot_be_built_or_loaded_is_refused_by_validate_and_run(tmp_path, capsys, kind,
                                                                                        overrides, message):
    """hidden not a multiple of heads passed `tpp validate`, then the run died with an AssertionError traceback in
    the attention layers and left a failed run folder; a field outside the range a model card is loaded with
    trained a model nothing could load."""
    from tpp.recipes import CONFIG_DIR

    config, run = CONFIG_DIR / "incontext" / f"{kind}.yaml", tmp_path / "run"
    assert run_cli("validate", config, f"output_dir={run}", f"data.root={tmp_path}", *overrides) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert run_cli("run", "incontext", "--config", config, f"output_dir={run}", f"data.root={tmp_path}",
                   "train.max_steps=1", *overrides) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not run.exists()
