"""pretrain_backbone on a tiny pool: a loadable transformers checkpoint with a card, usable by the other recipes."""
import json

import numpy as np
import pytest
import torch
from conftest import make_medmnist
from helpers import FINETUNE_CONFIG, interrupted_at, recipe_args, run_cli
from safetensors.torch import load_file

from tpp.backbones import load_backbone

POOL_CONFIG = "backbones/mae_vit_tiny_med_pool.yaml"
TINY_MODEL = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
              "model.intermediate_size=64", "model.decoder_hidden_size=16", "model.decoder_num_hidden_layers=1",
              "model.decoder_num_attention_heads=2", "model.decoder_intermediate_size=32"]


@pytest.fixture()
def pool_root(tmp_path):
    root = make_medmnist(tmp_path / "pool", name="bloodmnist", rgb=True, classes=8, n=(80, 8, 8))
    make_medmnist(root, name="organamnist", classes=11, n=(60, 8, 8), seed=1)
    make_medmnist(root, name="dermamnist_jpeg", rgb=True, classes=7, n=(40, 8, 8), seed=2)
    return root


def pretrain(root, out, *extra):
    pool = ("pool=[{data: {source: medmnist, name: bloodmnist}}, {data: {source: medmnist, name: organamnist}}, "
            "{data: {source: medmnist, name: dermamnist_jpeg}, supervised: false}]")
    return run_cli("run", "pretrain_backbone", "--config", POOL_CONFIG, f"data.root={root}", pool, f"output_dir={out}",
                   "train.batch_size=32", *TINY_MODEL, *extra)


def test_pretrained_backbone_loads_and_fine_tunes(pool_root, tmp_path):
    for entry in ("bloodmnist", "organamnist", "dermamnist_jpeg"):  # the pool's data root holds no BreastMNIST
        assert (pool_root / f"{entry}.npz").is_file()
    assert pretrain(pool_root, tmp_path / "pre", "train.max_steps=4") == 0
    backbone = tmp_path / "pre" / "backbone"
    assert {p.name for p in backbone.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json",
                                                    "tpp_backbone_card.json", "tpp_source_heads.safetensors"}
    card = json.loads((backbone / "tpp_backbone_card.json").read_text())
    # the supervised pool heads are kept as the source classifier (label mapping), with the pooling they read
    assert card["source_classifier"]["pooling"] == "mean_patch_tokens"
    assert list(card["source_classifier"]["heads"]) == ["bloodmnist", "organamnist"]
    assert set(load_file(backbone / "tpp_source_heads.safetensors")) == {
        f"{name}.{kind}" for name in ("bloodmnist", "organamnist") for kind in ("weight", "bias")}
    assert [e["name"] for e in card["pool"]] == ["bloodmnist", "organamnist", "dermamnist_jpeg"]
    assert [e["supervised"] for e in card["pool"]] == [True, True, False]
    assert card["licenses"] == ["CC BY 4.0", "CC BY-NC 4.0"] and "non-commercial" in card["license_note"]
    assert all(e["used"]["split"] == "train" for e in card["pool"])
    weights = load_file(backbone / "model.safetensors")
    assert any(k.startswith("decoder.") for k in weights) and not any("heads" in k for k in weights)
    config = json.loads((backbone / "config.json").read_text())
    # no masking trap for plain transformers; the pretext's own ratio is in the card
    assert config["mask_ratio"] == 0.0 and config["hidden_size"] == 32
    assert card["objective"]["mae"]["mask_ratio"] == 0.75
    encoder, info, decoder = load_backbone(str(backbone), with_decoder=True)
    assert info.hash == card["hash"] and info.mean == [0.5] * 3 and decoder is not None
    assert encoder(torch.zeros(1, 3, 28, 28)).shape == (1, 50, 32)
    data = make_medmnist(tmp_path / "site")
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, backbone, data, tmp_path / "ft", "train.max_steps=3",
                                "adapter.r=2")) == 0


def test_pretraining_lowers_the_pool_loss(pool_root, tmp_path):
    assert pretrain(pool_root, tmp_path / "pre", "train.max_steps=60", "train.lr=3e-3", "data.hflip=false") == 0
    log = [json.loads(line) for line in (tmp_path / "pre" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "step"]
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), losses


def test_pool_errors_name_the_entry(pool_root, tmp_path, capsys):
    assert run_cli("run", "pretrain_backbone", "--config", POOL_CONFIG, "pool=[{data: {source: medmnist, nam: x}}]",
                   f"output_dir={tmp_path / 'a'}") == 2
    assert "pool[0].data.nam" in capsys.readouterr().err
    assert run_cli("run", "pretrain_backbone", "--config", POOL_CONFIG, "pool=[]", f"output_dir={tmp_path / 'b'}") == 2
    assert "non-empty pool" in capsys.readouterr().err
    pool = "pool=[{data: {source: medmnist, name: bloodmnist}}, {data: {source: medmnist, name: bloodmnst}}]"
    assert run_cli("validate", POOL_CONFIG, f"data.root={pool_root}", pool) == 2
    assert "pool[1]: data.name: 'bloodmnst' is no MedMNIST dataset" in capsys.readouterr().err


def test_an_architecture_that_cannot_run_is_refused_before_the_run(pool_root, tmp_path, capsys):
    """A 28-px image is no whole number of 5-px patches: refused by the config check (it crashed in patchify at
    the first step, a traceback and a failed run folder)."""
    out = tmp_path / "bad"
    assert pretrain(pool_root, out, "train.max_steps=1", "model.patch_size=5", "model.decoder_hidden_size=15") == 2
    err = capsys.readouterr().err
    assert "model.image_size=28 is not a whole number of model.patch_size=5 patches" in err
    assert "model.decoder_hidden_size=15 is not a multiple of model.decoder_num_attention_heads=2" in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("override, said", [
    ("supervised_weight=-1", "supervised_weight must be a finite number, 0 or more (0: MAE only), got -1.0."),
    ("supervised_weight=.nan", "supervised_weight must be a finite number, 0 or more"),
    ("model.image_size=264", "gives 4,356 patch tokens per image, more than the 4,096"),
    ("pool=[{data: {source: seg_npz, file: seg/x.npz, modality: US}}]",
     "pool[0]: data.source=seg_npz holds segmentation masks, no class labels for a supervised head; set "
     "pool[0].supervised=false"),
    ("pool=[{data: {source: medmnist, name: bloodmnist}, kind: mae}]",
     "pool[0].kind: a key of the multitask recipe's pool; pretrain_backbone reads data and supervised"),
])
def test_a_pool_setting_the_recipe_would_misuse_is_refused_before_the_run(pool_root, tmp_path, capsys, override,
                                                                          said):
    """A negative weight ascended the classification loss, a masks source trained a head on constant labels,
    ``kind: mae`` was ignored (a supervised head trained anyway), a 264-px model could be used by no recipe."""
    out = tmp_path / "bad"
    assert pretrain(pool_root, out, "train.max_steps=1", override) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and not out.exists()


def test_a_supervised_pool_entry_of_one_class_is_refused_naming_it(pool_root, tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(pool_root / "mr.npz", images=rng.integers(0, 255, (40, 28, 28), dtype=np.uint8),
             labels=np.arange(40) % 2, class_names=np.array(["brain", "breast"]))
    one = "{data: {source: npz, name: mr, file: mr.npz, modality: MR, classes: [breast]}"
    pool = f"pool=[{{data: {{source: medmnist, name: bloodmnist}}}}, {one}}}]"
    assert run_cli("validate", POOL_CONFIG, f"data.root={pool_root}", pool, *TINY_MODEL) == 2  # validate says so too
    assert "found with its data loaded" in capsys.readouterr().err
    assert pretrain(pool_root, tmp_path / "one", "train.max_steps=1", pool) == 2
    err = capsys.readouterr().err
    assert "pool[1]: dataset 'mr' has 1 class" in err and "pool[1].supervised=false" in err
    ok = f"pool=[{{data: {{source: medmnist, name: bloodmnist}}}}, {one}, supervised: false}}]"  # MAE only: fine
    assert pretrain(pool_root, tmp_path / "mae", "train.max_steps=1", ok) == 0


def test_a_folder_in_the_pool_is_read_per_batch_not_decoded_whole(pool_root, tmp_path, monkeypatch):
    """The pool streams like the other recipes' data: a folder entry's images stay files (its whole split was
    converted to float32 up front before: 60 GB for 100,000 images at 224 px)."""
    from PIL import Image

    from tpp.data import files

    rng = np.random.default_rng(0)
    for i in range(30):
        folder = pool_root / "scans" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(folder / f"{i}.png")
    whole = []
    real_array = files.ImageFiles.__array__
    monkeypatch.setattr(files.ImageFiles, "__array__", lambda self, *a, **k: whole.append(len(self))
                        or real_array(self, *a, **k))
    pool = ("pool=[{data: {source: medmnist, name: bloodmnist}}, "
            "{data: {source: folder, name: scans, file: scans, modality: US}}]")
    assert run_cli("run", "pretrain_backbone", "--config", POOL_CONFIG, f"data.root={pool_root}", pool,
                   f"output_dir={tmp_path / 'pre'}", "train.batch_size=16", "train.max_steps=4", *TINY_MODEL) == 0
    card = json.loads((tmp_path / "pre" / "backbone" / "tpp_backbone_card.json").read_text())
    assert [e["name"] for e in card["pool"]] == ["bloodmnist", "scans"]
    assert whole == []


def test_a_resumed_pool_run_reports_the_final_losses_of_the_uninterrupted_one(pool_root, tmp_path):
    """Its MAE and supervised losses averaged only the steps after the resume (1.1615 against 1.1087)."""
    import shutil

    assert pretrain(pool_root, tmp_path / "full", "train.max_steps=4", "train.checkpoint_every=2") == 0
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    interrupted_at(tmp_path / "cut", 2)
    assert pretrain(pool_root, tmp_path / "cut", "train.max_steps=4", "train.checkpoint_every=2",
                    "train.resume=auto") == 0
    full, cut = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("full", "cut"))
    for key in ("final_mae_loss", "final_supervised_loss", "final_loss"):
        assert cut[key] == pytest.approx(full[key], rel=1e-6), key
