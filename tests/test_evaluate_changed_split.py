"""``tpp run evaluate`` of an adapter whose own data was split again otherwise since it was trained: its images
edited (added, removed) or its group ids read otherwise (``1.0`` is patient ``1`` since 2026-12-02). The seeded
split recomputed now may put training images in the split evaluated: a warning names the adapter and the data.
Tiny PNG + CSV data built in code."""
import json

import numpy as np
import pytest
from helpers import FAST, FINETUNE_CONFIG, png_bytes, recipe_args, run_cli

import tpp.data.tables as tables
from tpp.builders import check_same_split
from tpp.data.csvfiles import load_csv
from tpp.errors import TppError
from tpp.recipes.evaluate import seen_split_note

SAID = "the training split recomputed now differs from the one the adapter was trained on"


def site(root, ids: list[str], splits: list[str] | None = None) -> None:
    """``root/im/<k>.png`` (gray level k) and ``root/labels.csv``: one image per row, classes a/b alternating,
    patient ``ids[k]``, the split ``splits[k]`` if given."""
    (root / "im").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, group in enumerate(ids):
        (root / "im" / f"{k}.png").write_bytes(png_bytes(np.full((8, 8), 5 * k, np.uint8)))
        rows.append(f"im/{k}.png,{'ab'[k % 2]},{group}" + (f",{splits[k]}" if splits else ""))
    (root / "labels.csv").write_text("path,label,patient_id" + (",split" if splits else "") + "\n"
                                     + "\n".join(rows) + "\n")


def load(root, name: str = "scans"):
    return load_csv(name, str(root), "labels.csv", modality="US", image_size=8, val_fraction=0.2,
                    test_fraction=0.2, seed=0)


def card_of(dataset) -> dict:
    return {"data": dataset.describe(used={"splits": ["train"]})}


def test_group_ids_read_otherwise_since_training_are_said(tmp_path, monkeypatch):
    """Trained when ``3.0`` and ``3`` were two patients; now one: the same images, another seeded split."""
    site(tmp_path, [f"{k // 2}.0" if k % 2 else f"{k // 2}" for k in range(40)])
    with monkeypatch.context() as before:
        before.setattr(tables, "group_id", lambda value: value)  # ids as written, as before 2026-12-02
        card = card_of(load(tmp_path))
    now = load(tmp_path)
    assert card["data"]["split_sha256"]["train"] != now.split_sha256()["train"]
    note = seen_split_note(card, now, "test", "runs/a/adapter")
    assert note and SAID in note and "adapter 'runs/a/adapter'" in note and "dataset 'scans'" in note
    assert "(the same images)" in note and "test images may overlap" in note and "\n" not in note
    with pytest.raises(TppError, match="another split of 'scans'"):  # evaluate refuses it first, by the images
        check_same_split(card, now, "runs/a/adapter")


def test_images_added_to_the_folder_since_training_are_said(tmp_path):
    site(tmp_path, [str(k) for k in range(40)])
    card = card_of(load(tmp_path))
    site(tmp_path, [str(k) for k in range(44)])  # 4 images (and rows) more: every image may change split
    now = load(tmp_path)
    assert now.collection_sha256() != card["data"]["collection_sha256"] and now.origin == card["data"]["origin"]
    note = seen_split_note(card, now, "test", "runs/a/adapter")
    assert note and SAID in note and "its images changed since" in note


def test_the_refusal_says_the_data_changed_when_the_split_settings_are_its_runs(tmp_path, monkeypatch):
    """The same data.name and split settings as the adapter's run, yet another split: its advice to use the split
    settings of its run cannot help (they are these); it says the data changed since and what to do instead."""
    site(tmp_path, [f"{k // 2}.0" if k % 2 else f"{k // 2}" for k in range(40)])
    with monkeypatch.context() as before:
        before.setattr(tables, "group_id", lambda value: value)  # ids as written, as before 2026-12-02
        card = card_of(load(tmp_path))
    with pytest.raises(TppError) as refused:
        check_same_split(card, load(tmp_path), "runs/a/adapter")
    said = str(refused.value)
    assert "adapter 'runs/a/adapter' was trained on another split of 'scans'" in said and "\n" not in said
    assert "Use the split settings of its run" not in said and said.count("seeded: split_seed 0") == 1
    assert "the same split settings (seeded: split_seed 0, val 0.2, test 0.2, groups patient_id)" in said
    assert "the same images" in said and "group ids" in said and "'1.0' is read as '1'" in said
    assert "never saw" in said and "splits.json" in said and "re-train" in said
    site(tmp_path, [str(k) for k in range(40)])
    card = card_of(load(tmp_path))
    site(tmp_path, [str(k) for k in range(44)])  # 4 images more in its folder
    with pytest.raises(TppError) as refused:
        check_same_split(card, load(tmp_path), "runs/a/adapter")
    said = str(refused.value)
    assert "the data changed since" in said and "40 images then, 44 now" in said
    assert "Use the split settings of its run" not in said
    given = ["train"] * 24 + ["val"] * 8 + ["test"] * 8
    site(tmp_path / "c", [str(k) for k in range(40)], given)
    own = card_of(load(tmp_path / "c"))
    site(tmp_path / "c", [str(k) for k in range(44)], given + ["train"] * 4)  # the data's own split column edited
    with pytest.raises(TppError, match=r"the data's own split changed since it was trained \(its split column"):
        check_same_split(own, load(tmp_path / "c"), "runs/a/adapter")
    with pytest.raises(TppError, match=r"Use the split settings of its run"):  # other settings: that advice holds
        check_same_split(card, load_csv("scans", str(tmp_path), "labels.csv", modality="US", image_size=8,
                                        val_fraction=0.2, test_fraction=0.2, seed=1), "runs/a/adapter")


def test_nothing_is_said_of_other_data_an_older_card_a_given_split_or_the_same_split(tmp_path):
    site(tmp_path / "a", [str(k) for k in range(40)])
    card = card_of(load(tmp_path / "a"))
    assert seen_split_note(card, load(tmp_path / "a"), "test", "x") is None  # its own split, held out
    assert "was trained on these images" in seen_split_note(card, load(tmp_path / "a"), "train", "x")
    site(tmp_path / "b", [str(k) for k in range(44)])  # another folder of the same name
    assert seen_split_note(card, load(tmp_path / "b"), "test", "x") is None
    site(tmp_path / "a", [str(k) for k in range(44)])
    older = {"data": {k: v for k, v in card["data"].items() if k != "collection_sha256"}}
    assert seen_split_note(older, load(tmp_path / "a"), "test", "x") is None  # nothing to tell by
    given = ["train"] * 24 + ["val"] * 8 + ["test"] * 8
    site(tmp_path / "c", [str(k) for k in range(40)], given)
    card = card_of(load(tmp_path / "c"))
    site(tmp_path / "c", [str(k) for k in range(44)], given + ["train"] * 4)  # the data's own split, not recomputed
    assert seen_split_note(card, load(tmp_path / "c"), "test", "x") is None


def fine_tuned_on_a_csv(tmp_path, tiny_mae) -> tuple:
    """(data folder, its options): 40 images of a CSV's seeded split, a collection named by ``data.origin``, with an
    adapter fine-tuned on them under ``tmp_path / 'run'`` (data.name 'scans')."""
    data = tmp_path / "data"
    site(data, [str(k) for k in range(40)])
    options = ["data.source=csv", "data.file=labels.csv", "data.modality=US", "data.val_fraction=0.2",
               "data.test_fraction=0.2", "data.origin=hospital-a-us", *FAST]
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data, tmp_path / "run", "data.name=scans",
                                "train.max_steps=2", *options)) == 0
    return data, options


def test_evaluate_warns_and_records_it_when_the_folder_changed_since_training(tmp_path, tiny_mae):
    """End to end: fine-tuned on a CSV's seeded split of a collection named by ``data.origin``, evaluated after
    images were added (under another data.name, which the same-split check lets through; the same image folder
    without a data.origin is refused by that check, test_data_identity)."""
    data, options = fine_tuned_on_a_csv(tmp_path, tiny_mae)
    site(data, [str(k) for k in range(44)])
    with pytest.warns(UserWarning, match=SAID):
        assert run_cli(*recipe_args("evaluate", FINETUNE_CONFIG, tiny_mae, data, tmp_path / "eval", "data.name=site",
                                    f"adapter.path={tmp_path / 'run' / 'adapter'}", "data.split=test", *options)) == 0
    note = json.loads((tmp_path / "eval" / "metrics.json").read_text())["split_note"]
    assert SAID in note and str(tmp_path / "run" / "adapter") in note


def test_validate_of_the_evaluate_config_warns_as_the_run_does(tmp_path, tiny_mae, capsys):
    """``tpp validate`` checks what the run would: the adapter's own folder changed since training is warned about
    there too, naming the adapter, and the config is still valid (the run warns, it does not refuse)."""
    data, options = fine_tuned_on_a_csv(tmp_path, tiny_mae)
    evaluate = [f"backbone.path={tiny_mae}", f"data.root={data}", f"output_dir={tmp_path / 'eval'}", "data.name=scans",
                f"adapter.path={tmp_path / 'run' / 'adapter'}", "data.split=test", *options]
    capsys.readouterr()
    assert run_cli("validate", FINETUNE_CONFIG, "recipe=evaluate", *evaluate) == 0
    assert SAID not in capsys.readouterr().err  # its split unchanged: nothing to say
    site(data, [str(k) for k in range(44)])
    with pytest.warns(UserWarning, match=SAID) as said:
        assert run_cli("validate", FINETUNE_CONFIG, "recipe=evaluate", *evaluate) == 0
    assert any(str(tmp_path / "run" / "adapter") in str(w.message) for w in said)
    assert not (tmp_path / "eval").exists()
