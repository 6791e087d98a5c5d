"""incontext.holdout names datasets that exist (a typo would hold out nothing and train on the held-out set),
and an unknown in-context method is refused with every valid method named."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_medmnist
from test_incontext_learned import _StubExtractor, _run, _write_context, pool_root  # noqa: F401 (fixture)

import tpp
from tpp.errors import ConfigError, TppError
from tpp.incontext import episodes, learned
from tpp.incontext.context import CLASSIFICATION, ContextSet, check
from tpp.incontext.predict import prepare


def test_a_misspelt_holdout_is_refused_before_the_run_directory_exists(tiny_mae, pool_root, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "typo"
    assert _run(tiny_mae, pool_root, out, "train.max_steps=1", "incontext.holdout=[breastmnst,busi]") != 0
    err = capsys.readouterr().err
    assert not out.exists()
    assert "incontext.holdout" in err and "'breastmnst'" in err and "did you mean breastmnist?" in err
    assert "bloodmnist, breastmnist, busi, organamnist" in err  # what the task distribution can draw from
    # the same dataset spelt as its flag in capitals, or as its file, is held out
    assert _run(tiny_mae, pool_root, tmp_path / "ok", "train.max_steps=1",
                "incontext.holdout=[BreastMNIST,organamnist.npz]") == 0
    card = learned.load(tmp_path / "ok" / "model")[1]
    assert set(card["task_distribution"]["datasets"]) == {"bloodmnist"}


def test_holdout_names_are_checked_and_spelt_as_flag_or_file(tmp_path):
    root = tmp_path / "data"
    make_medmnist(root / "medmnist", "dermamnist_jpeg", rgb=True, classes=3)
    make_medmnist(root / "medmnist", "bloodmnist", rgb=True, classes=4, seed=1)
    spellings = (["dermamnist"], ["dermamnist_jpeg"], ["DermaMNIST"], ["dermamnist_jpeg.npz"])
    for name in spellings:  # the file's own stem used to hold out nothing
        assert set(episodes.dataset_names(root, name)) == {"bloodmnist"}, name
    for name in spellings:
        episodes.check_holdout(name, root)
    episodes.check_holdout(["busi", "mednist", "octmnist"], root)  # no such files here: nothing to drop, no leak
    with pytest.raises(ConfigError, match=r"'dermamnst'.*did you mean dermamnist\?.*bloodmnist, dermamnist"):
        episodes.check_holdout(["dermamnst"], root)
    with pytest.raises(ConfigError, match="'nothing'"):
        episodes.check_holdout(["nothing"], None)  # no data root yet: checked against the known datasets


def test_an_unknown_method_is_refused_naming_every_method(tiny_mae, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (28, 28), dtype=np.uint8)
    ctx_dir = _write_context(tmp_path / "ctx", {"a": [image], "b": [255 - image]})
    with pytest.raises(TppError, match="'knnn' is not one of prototype, knn, learned; did you mean knn"):
        tpp.in_context(ctx_dir, image, backbone=tiny_mae, method="knnn")
    with pytest.raises(TppError, match="'knnn' is not one of"):  # checked before the context or backbone is read
        tpp.in_context(tmp_path / "no_context", image, backbone=tmp_path / "no_backbone", method="knnn")
    ctx = check(ContextSet(CLASSIFICATION, [image, image], ["a", "b"], names=["x", "y"], source="ctx"))
    with pytest.raises(TppError, match="is not one of prototype, knn, learned"):  # not "used by learned only"
        prepare(ctx, _StubExtractor(), "Learned", model=object())
