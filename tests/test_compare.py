"""``tpp compare`` on real tiny runs of every recipe (made once for the module through the CLI): the printed
table and the CSV hold each run's metrics.json values; missing values are '-'; unfinished folders are named."""
import csv
import json
import shutil

import pytest
from conftest import make_backbone, make_medmnist
from helpers import FAST as TINY_RUN
from helpers import FINETUNE_CONFIG, TPP_CONFIG, recipe_args, run_cli, toy_segmentation_npz

FAST = [*TINY_RUN, "train.max_steps=2"]
CLS = FINETUNE_CONFIG
TINY_MODEL = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
              "model.intermediate_size=64", "model.decoder_hidden_size=16", "model.decoder_num_hidden_layers=1",
              "model.decoder_num_attention_heads=2", "model.decoder_intermediate_size=32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    backbone, root = make_backbone(base / "backbone"), make_medmnist(base / "data")

    def run(recipe, config, name, *extra):
        assert run_cli(*recipe_args(recipe, config, backbone, root, base / name, *extra)) == 0

    run("finetune", CLS, "cls", *FAST)
    run("tpp", TPP_CONFIG, "tpp", *FAST)
    run("finetune", CLS, "cls_tpp", *FAST, "data.label_fraction=0.5", f"adapter.init_from={base / 'tpp' / 'adapter'}")
    run("evaluate", CLS, "eval", f"adapter.path={base / 'cls' / 'adapter'}", "data.split=test")
    run("finetune", "breast_us/busi_seg_lora_finetune.yaml", "seg", *FAST, "train.batch_size=8", "data.name=toy",
        f"data.file={toy_segmentation_npz(base / 'toy.npz')}", "data.group_key=group", "backbone.input_size=16",
        "segmentation.overlays=0")
    run("evaluate", "breast_us/busi_seg_lora_finetune.yaml", "seg_eval", f"adapter.path={base / 'seg' / 'adapter'}",
        "data.name=toy", f"data.file={base / 'toy.npz'}", "data.group_key=group", "data.split=val")
    # pretrain_backbone makes a backbone: its config has no backbone section (recipe_args would set one)
    assert run_cli("run", "pretrain_backbone", "--config", "backbones/mae_vit_tiny_med_pool.yaml", f"data.root={root}",
                   f"output_dir={base / 'pre'}", "train.max_steps=2", "train.batch_size=16",
                   "pool=[{data: {source: medmnist, name: breastmnist}}]", *TINY_MODEL) == 0
    # a failed run: a positive class the data does not have (found when the data is read; status.json 'failed')
    assert run_cli(*recipe_args("finetune", CLS, backbone, root, base / "failed", *FAST,
                                "classification.positive_class=nothing")) == 2
    return base


def metrics(path):
    return json.loads((path / "metrics.json").read_text())


def compare(capsys, *args):
    """Exit code, printed table as {run: {header: cell}} with the header list, and stderr."""
    code = run_cli("compare", *args)
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("|")]
    if not lines:
        return code, {}, [], err
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header = cells[0]
    assert set(lines[1]) <= {"|", "-"}
    return code, {row[0]: dict(zip(header, row)) for row in cells[2:]}, header, err


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {row["run"]: row for row in rows}, list(rows[0])


def test_every_recipe_in_one_table_and_csv(runs, capsys, tmp_path):
    kinds = ["cls", "cls_tpp", "seg", "eval", "seg_eval", "tpp", "pre"]
    out = tmp_path / "results.csv"
    code, table, header, err = compare(capsys, *(runs / k for k in kinds), "--csv", out)
    assert code == 0, err
    assert header == ["run", "recipe", "task", "method", "data", "labels", "adapter init", "split", "AUROC [95% CI]",
                      "accuracy", "Dice", "IoU", "pretext loss", "trainable", "saved", "wall time"]
    assert list(table) == kinds
    rows, columns = read_csv(out)
    assert columns == ["run", "path", "recipe", "task", "method", "data", "label_fraction", "adapter_init", "split",
                       "auroc", "auroc_ci95_low", "auroc_ci95_high", "accuracy", "sensitivity", "specificity",
                       "threshold", "dice", "iou", "pretext_loss",
                       "trainable_parameters", "saved_bytes", "wall_time_s"]
    assert list(rows) == kinds and rows["cls"]["path"] == str(runs / "cls")

    for name, task, split in (("cls", "classification", "test"), ("cls_tpp", "classification", "test"),
                              ("eval", "classification", "test"), ("seg", "segmentation", "test"),
                              ("seg_eval", "segmentation", "val")):
        m, row, printed = metrics(runs / name), rows[name], table[name]
        result = m[split]
        assert row["task"] == printed["task"] == task and row["split"] == printed["split"] == split
        assert row["method"] == printed["method"] == "lora"
        if task == "classification":
            assert float(row["auroc"]) == result["auroc"] and float(row["accuracy"]) == result["accuracy"]
            assert [float(row[k]) for k in ("sensitivity", "specificity", "threshold")] == \
                [result["sensitivity"], result["specificity"], result["threshold"]]  # CSV only
            assert [float(row["auroc_ci95_low"]), float(row["auroc_ci95_high"])] == result["auroc_ci95"]
            low, high = result["auroc_ci95"]
            assert printed["AUROC [95% CI]"] == f"{result['auroc']:.3f} [{low:.3f}, {high:.3f}]"
            assert printed["accuracy"] == f"{result['accuracy']:.3f}"
            assert row["dice"] == "" and printed["Dice"] == printed["IoU"] == "-"
        else:
            assert float(row["dice"]) == result["dice"] and float(row["iou"]) == result["iou"]
            assert printed["Dice"] == f"{result['dice']:.3f}" and printed["IoU"] == f"{result['iou']:.3f}"
            assert row["auroc"] == "" and printed["AUROC [95% CI]"] == printed["accuracy"] == "-"
        assert printed["pretext loss"] == "-" and row["pretext_loss"] == ""

    for name in ("cls", "cls_tpp", "seg"):  # fine-tunes: their own size, parameters and time
        m, row, printed = metrics(runs / name), rows[name], table[name]
        assert row["recipe"] == printed["recipe"] == "finetune"
        assert int(row["trainable_parameters"]) == m["trainable_parameters"]
        assert printed["trainable"] == f"{m['trainable_parameters']:,}"
        assert int(row["saved_bytes"]) == m["adapter_bytes"]
        assert printed["saved"] == f"{m['adapter_bytes'] / 1024:.0f} KiB"
        assert float(row["wall_time_s"]) == m["wall_time_s"] and printed["wall time"] == f"{m['wall_time_s']:.0f} s"
    assert table["cls"]["adapter init"] == "random" and table["cls_tpp"]["adapter init"] == "TPP (mae)"
    assert table["cls"]["labels"] == "1" and table["cls_tpp"]["labels"] == "0.5"
    assert rows["cls_tpp"]["label_fraction"] == "0.5"
    assert table["cls"]["data"] == "breastmnist" and table["seg"]["data"] == "toy"
    # an evaluation: the evaluated adapter's parameters, size and init; its own wall time; no label fraction
    for name, source in (("eval", "cls"), ("seg_eval", "seg")):
        assert rows[name]["recipe"] == "evaluate" and table[name]["labels"] == "-"
        assert rows[name]["trainable_parameters"] == rows[source]["trainable_parameters"]
        assert rows[name]["saved_bytes"] == rows[source]["saved_bytes"]
        assert table[name]["adapter init"] == "random" and float(rows[name]["wall_time_s"]) >= 0
    assert rows["eval"]["auroc"] == rows["cls"]["auroc"]  # the same adapter on the same split

    m, row, printed = metrics(runs / "tpp"), rows["tpp"], table["tpp"]
    assert row["recipe"] == "tpp" and row["task"] == "mae pretext" and row["method"] == "lora"
    assert float(row["pretext_loss"]) == m["final_loss"] and printed["pretext loss"] == f"{m['final_loss']:.4f}"
    assert int(row["trainable_parameters"]) == m["trainable_parameters"]
    assert int(row["saved_bytes"]) == m["adapter_bytes"]
    assert printed["AUROC [95% CI]"] == printed["Dice"] == printed["labels"] == printed["split"] == "-"
    assert float(row["wall_time_s"]) == m["wall_time_s"]

    m, row, printed = metrics(runs / "pre"), rows["pre"], table["pre"]
    assert row["recipe"] == "pretrain_backbone" and row["task"] == "mae pretext" and printed["method"] == "-"
    assert float(row["pretext_loss"]) == m["final_mae_loss"] and printed["pretext loss"] == f"{m['final_mae_loss']:.4f}"
    assert int(row["trainable_parameters"]) == m["encoder_parameters"] and row["data"] == "breastmnist"
    assert int(row["saved_bytes"]) == sum(f.stat().st_size for f in (runs / "pre" / "backbone").rglob("*"))
    assert float(row["wall_time_s"]) == m["wall_time_s"]
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary file left


def test_columns_no_run_has_are_left_out(runs, capsys, tmp_path):
    code, table, header, _ = compare(capsys, runs / "cls", runs / "cls_tpp")
    assert code == 0
    assert header == ["run", "recipe", "task", "method", "data", "labels", "adapter init", "split", "AUROC [95% CI]",
                      "accuracy", "trainable", "saved", "wall time"]
    code, table, header, _ = compare(capsys, runs / "tpp", runs / "pre")
    assert code == 0 and "AUROC [95% CI]" not in header and "Dice" not in header and "pretext loss" in header
    # two runs with the same folder name: the rows are named by the paths given
    shutil.copytree(runs / "cls", tmp_path / "other" / "cls")
    code, table, _, _ = compare(capsys, runs / "cls", tmp_path / "other" / "cls")
    assert code == 0 and list(table) == [str(runs / "cls"), str(tmp_path / "other" / "cls")]


def test_missing_values_are_dashes_not_key_errors(runs, capsys, tmp_path):
    # an older fine-tune whose metrics.json lacks size, parameters and time, and whose adapter card is gone
    old = tmp_path / "old"
    shutil.copytree(runs / "cls", old)
    m = metrics(old)
    for key in ("trainable_parameters", "adapter_bytes", "wall_time_s"):
        del m[key]
    del m["test"]["auroc_ci95"]
    (old / "metrics.json").write_text(json.dumps(m))
    (old / "adapter" / "tpp_card.json").unlink()
    (old / "log.jsonl").unlink()
    # an evaluation whose adapter has been deleted since
    gone = tmp_path / "gone"
    shutil.copytree(runs / "cls", gone)
    ev = tmp_path / "eval_gone"
    shutil.copytree(runs / "eval", ev)
    (ev / "config.yaml").write_text((ev / "config.yaml").read_text().replace(str(runs / "cls"), str(gone)))
    shutil.rmtree(gone / "adapter")
    code, table, _, err = compare(capsys, old, ev, "--csv", tmp_path / "out.csv")
    assert code == 0, err
    assert table["old"]["AUROC [95% CI]"] == f"{m['test']['auroc']:.3f}"
    assert table["old"]["trainable"] == table["old"]["saved"] == table["old"]["wall time"] == "-"
    assert table["old"]["method"] == "lora" and table["old"]["adapter init"] == "random"  # from config.yaml
    assert table["eval_gone"]["trainable"] == table["eval_gone"]["saved"] == table["eval_gone"]["adapter init"] == "-"
    assert table["eval_gone"]["method"] == "lora"  # recorded in the evaluation's metrics.json
    rows, _ = read_csv(tmp_path / "out.csv")
    assert rows["old"]["trainable_parameters"] == rows["old"]["auroc_ci95_low"] == ""


def test_recipe_is_read_from_what_the_run_left_when_config_does_not_name_it(runs, capsys, tmp_path):
    for name in ("cls", "tpp", "eval", "pre"):
        shutil.copytree(runs / name, tmp_path / name)
        config = tmp_path / name / "config.yaml"
        config.write_text("".join(line for line in config.read_text().splitlines(True)
                                  if not line.startswith("recipe:")))
    code, table, _, err = compare(capsys, *(tmp_path / name for name in ("cls", "tpp", "eval", "pre")))
    assert code == 0, err
    assert [row["recipe"] for row in table.values()] == ["finetune", "tpp", "evaluate", "pretrain_backbone"]
    config = tmp_path / "cls" / "config.yaml"
    config.write_text("recipe: distill\n" + config.read_text())
    code, _, _, err = compare(capsys, tmp_path / "cls")
    assert code == 2 and "written by recipe 'distill', which tpp compare does not know" in err


def test_unfinished_folders_are_named_in_one_paragraph(runs, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    running = tmp_path / "running"
    shutil.copytree(runs / "cls", running)
    (running / "status.json").write_text(json.dumps({"status": "running"}))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs / "cls" / "config.yaml", unfinished)
    out = tmp_path / "never.csv"
    code, table, _, err = compare(capsys, runs / "cls", runs / "failed", empty, runs / "toy.npz",
                                  tmp_path / "nowhere", running, unfinished, "--csv", out)
    assert code == 2 and not table and not out.exists()
    assert "Traceback" not in err and err.startswith("error: 6 of the 7 folders") and len(err.strip().splitlines()) == 1
    assert (f"'{runs / 'failed'}' is not a finished run: its status.json says 'failed' "
            "(TppError: classification.positive_class") in err
    assert f"'{empty}' has neither metrics.json nor config.yaml" in err
    assert f"'{runs / 'toy.npz'}' is not a folder" in err and f"'{tmp_path / 'nowhere'}' does not exist" in err
    assert f"'{running}' is not a finished run: its status.json says 'running'; it is still running" in err
    assert f"'{unfinished}' has no metrics.json: the run did not finish" in err
    assert f"'{runs / 'cls'}'" not in err
    code, _, _, err = compare(capsys, runs / "failed")
    assert code == 2 and err.startswith(f"error: '{runs / 'failed'}' is not a finished run")
    # a CSV that cannot be written is one paragraph too, said before the table
    code, out, _, err = compare(capsys, runs / "cls", "--csv", tmp_path / "no" / "dir" / "x.csv")
    assert code == 2 and "the folder" in err and "does not exist" in err and "Traceback" not in err
    (tmp_path / "afile").write_text("x")
    code, out, _, err = compare(capsys, runs / "cls", "--csv", tmp_path / "afile" / "x.csv")
    assert code == 2 and "is a file, not a folder" in err


def test_a_registered_recipe_brings_its_own_row(capsys, tmp_path, monkeypatch):
    """A new recipe: one registration in recipes/registry.py and a module with compare_row; no table in
    tpp/compare.py to edit. A recipe module without compare_row is named in a sentence."""
    import sys
    import types

    from tpp.recipes.registry import RECIPES, Recipe

    module = types.ModuleType("tpp.recipes.toy_recipe")
    module.compare_row = lambda run: {"method": "toy-method", "data": run.cfg("data", "name"),
                                      "trainable_parameters": run.metrics["n"]}
    monkeypatch.setitem(sys.modules, "tpp.recipes.toy_recipe", module)
    monkeypatch.setitem(RECIPES, "toy_recipe", Recipe("a toy", ("recipe", "data")))
    run = tmp_path / "toy_run"
    run.mkdir()
    (run / "config.yaml").write_text("recipe: toy_recipe\ndata: {name: toyset}\n")
    (run / "status.json").write_text(json.dumps({"status": "succeeded"}))
    (run / "metrics.json").write_text(json.dumps({"n": 4242, "wall_time_s": 3}))
    code, table, _, err = compare(capsys, run)
    assert code == 0 and not err
    row = table["toy_run"]
    cells = [row[k] for k in ("recipe", "method", "data", "trainable")]
    assert cells == ["toy_recipe", "toy-method", "toyset", "4,242"]
    del module.compare_row
    code, _, _, err = compare(capsys, run)
    assert code == 2 and "recipe 'toy_recipe' defines no compare_row(run)" in err and "Traceback" not in err


def test_outputs_never_replace_the_runs_own_files_and_damaged_inputs_are_named(runs, capsys, tmp_path):
    """--csv onto a run's metrics.json or predictions.csv, plot --out onto predictions.csv, a device: refused
    before anything is written. A non-UTF-8 config.yaml, a log line that is no record, a probability outside
    [0, 1] and a config whose recipe is a list: errors naming the file (exit 2), never a traceback, and no PNG
    is written for a run whose predictions are broken."""
    run = tmp_path / "cls"
    shutil.copytree(runs / "cls", run)
    other = tmp_path / "other"  # a run that is not compared: its predictions.csv is safe too
    shutil.copytree(runs / "cls", other)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    kept = (other / "predictions.csv").read_bytes()
    assert run_cli("compare", str(run), "--csv", str(other / "predictions.csv")) == 2
    assert "is a file of a run" in capsys.readouterr().err and (other / "predictions.csv").read_bytes() == kept
    for args in (["compare", str(run), "--csv", str(run / "metrics.json")],
                 ["compare", str(run), "--csv", str(run / "predictions.csv")],
                 ["plot", str(run), "--out", str(run / "predictions.csv")],
                 ["compare", str(run), "--csv", "/dev/null"],
                 ["compare", str(run), "--csv", str(tmp_path)],  # a folder
                 ["validate", str(run / "config.yaml"), "task=[classification]"],
                 ["validate", str(run / "config.yaml"), "adapter.method={lora: 1}"]):
        assert run_cli(*args) == 2, args
        assert "Traceback" not in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    (tmp_path / "dir.csv").mkdir()
    assert run_cli("compare", str(run), "--csv", str(tmp_path / "dir.csv")) == 2
    assert "exists and is not a regular file" in capsys.readouterr().err
    (run / "config.yaml").write_bytes(b"recipe: finetune\nsite: \xff\xfe\n")
    assert run_cli("validate", str(run / "config.yaml")) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    code, _, _, err = compare(capsys, str(run))
    assert "config.yaml' cannot be read" in err and "Traceback" not in err
    (run / "config.yaml").write_bytes(before["config.yaml"].replace(b"recipe: finetune", b"recipe: [a, b]"))
    code, table, _, err = compare(capsys, str(run))
    assert code == 0 and "Traceback" not in err  # the recipe read from what the run left
    rows = (run / "predictions.csv").read_text().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    first[header.index(next(h for h in header if h.startswith("prob_")))] = "1.5"
    (run / "predictions.csv").write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    (run / "curves.png").unlink(missing_ok=True)
    assert run_cli("plot", str(run)) == 2
    assert "not a finite number in [0, 1]" in capsys.readouterr().err and not (run / "curves.png").exists()
    assert run_cli("plot", str(run / "gone")) == 2
    assert f"'{run / 'gone'}' does not exist." in capsys.readouterr().err
    (run / "predictions.csv").write_bytes(before["predictions.csv"])
    with open(run / "log.jsonl", "a") as fh:
        fh.write('[1, 2]\n{"event": "step", "step": "five", "loss": 1.0}\n{"event": "step", "step": 9, "loss": 1}\n')
    assert run_cli("plot", str(run)) == 2
    err = capsys.readouterr().err
    assert "log.jsonl' line" in err and "without a numeric step" in err and "Traceback" not in err
