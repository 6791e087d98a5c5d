"""Hostile config values, data files and full disks: each is one paragraph naming the file or key (exit 2),
never a traceback, never a silently wrong result, and never a half-written output or a temp file left behind."""
import errno
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_medmnist
from helpers import FAST as TINY_RUN
from helpers import FINETUNE_CONFIG, recipe_args, run_cli

from tpp.cli import main
from tpp.errors import TppError

CONFIG = FINETUNE_CONFIG
FAST = ["train.max_steps=2", *TINY_RUN]


def finetune(backbone, root, out, *extra):
    return run_cli(*recipe_args("finetune", CONFIG, backbone, root, out, *FAST, *extra))


def one_paragraph(err: str, *needles: str) -> None:
    """stderr ends with one ``error: ...`` line (progress bars may come before it) and holds no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    for needle in needles:
        assert needle in errors[0], (needle, err)


def temps(folder: Path) -> list:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.name.endswith((".tmp", ".old")))


class FullDisk:
    """A file handle that takes a few bytes, then fails with ENOSPC as a full disk does."""

    def __init__(self, fh):
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, text):
        self.fh.write(text[:8])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device", self.fh.name)


def fill_disk_on(monkeypatch, is_full):
    """Files that ``tpp.safe_write`` opens for atomic writing (every temp-then-rename output: status.json,
    metrics.json, predictions CSVs) get a full disk while ``is_full(temp_name)`` says so."""
    import builtins

    import tpp.safe_write

    def fake_open(path, *args, **kwargs):
        fh = builtins.open(path, *args, **kwargs)
        return FullDisk(fh) if is_full(Path(path).name) else fh

    monkeypatch.setattr(tpp.safe_write, "open", fake_open, raising=False)


@pytest.fixture()
def disk_full(monkeypatch):
    """``disk_full(*names)``: writing a temp file whose name starts with ``.NAME`` writes a few bytes, then
    fails with ENOSPC; other writes go through."""
    return lambda *names: fill_disk_on(monkeypatch, lambda name: any(name.startswith(f".{n}") for n in names))


# ---- A: silently wrong results --------------------------------------------------------------------------------

def test_fractional_labels_fail_the_run_naming_file_and_split(tiny_mae, tmp_path, capsys):
    root = make_medmnist(tmp_path / "data")
    arrays = dict(np.load(root / "breastmnist.npz"))
    arrays["val_labels"] = np.where(np.arange(20) % 2, 1.7, 0.7).reshape(-1, 1)
    np.savez(root / "breastmnist.npz", **arrays)
    assert finetune(tiny_mae, root, tmp_path / "run") == 2
    one_paragraph(capsys.readouterr().err, str(root / "breastmnist.npz"), "val_labels (val split)",
                  "not whole numbers")
    assert not (tmp_path / "run" / "adapter").exists()


def test_every_site_map_row_is_answered_in_order(tiny_mae, tmp_path, capsys):
    from PIL import Image

    from tpp.serve.predict import assign_sites, read_site_map

    root = make_medmnist(tmp_path / "data")
    assert finetune(tiny_mae, root, tmp_path / "run") == 0
    store = tmp_path / "store"
    for site in ("a", "b"):
        assert main(["adapters", "publish", str(tmp_path / "run"), str(store), "--site", site]) == 0
    for i in range(2):
        Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    site_map = tmp_path / "map.csv"
    site_map.write_text("image,site\nimg0.png,a\nimg0.png,b\nimg1.png,a\n")  # one image under two sites
    assert read_site_map(str(site_map)) == [("img0.png", "a"), ("img0.png", "b"), ("img1.png", "a")]
    assert [(p.name, s) for p, s in assign_sites(None, str(site_map), [])] == [
        ("img0.png", "a"), ("img0.png", "b"), ("img1.png", "a")]
    capsys.readouterr()
    out = tmp_path / "preds.csv"
    assert main(["predict", "--backbone", str(tiny_mae), "--store", str(store), "--site-map", str(site_map),
                 "--out", str(out)]) == 0
    rows = out.read_text().splitlines()[1:]
    assert [(Path(r.split(",")[0]).name, r.split(",")[1]) for r in rows] == [
        ("img0.png", "a"), ("img0.png", "b"), ("img1.png", "a")]
    assert "3 images" in capsys.readouterr().out
    site_map.write_text("image,site\nimg0.png,\n")
    with pytest.raises(TppError, match="line 2: every row needs an image and a site"):
        read_site_map(str(site_map))


# ---- B: one paragraph instead of a traceback ------------------------------------------------------------------

@pytest.mark.parametrize("case, needle", [
    ("zero_byte", "is an empty file, not an .npz archive"),
    ("text_file", "is not an .npz archive: it does not start as a zip file does"),
    ("empty_npz", "is an empty .npz archive"),
    ("nan_labels", "train_labels (train split): 1 labels are not finite"),
    ("string_labels", "test_labels (test split): labels must be integer class indices"),
    ("empty_val", "the 'val' split is empty (0 images)"),
])
def test_broken_npz_files_are_one_paragraph(tiny_mae, tmp_path, capsys, case, needle):
    root = make_medmnist(tmp_path / "data")
    path = root / "breastmnist.npz"
    arrays = dict(np.load(path))
    if case == "zero_byte":
        path.write_bytes(b"")
    elif case == "text_file":
        path.write_text("images,labels\n")  # numpy would say "pickled data"
    elif case == "empty_npz":
        np.savez(path)
    else:
        if case == "nan_labels":
            arrays["train_labels"] = np.where(np.arange(60) == 7, np.nan, 0.0).reshape(-1, 1)
        elif case == "string_labels":
            arrays["test_labels"] = np.array([["x"]] * 20)
        else:
            arrays["val_images"], arrays["val_labels"] = arrays["val_images"][:0], arrays["val_labels"][:0]
        np.savez(path, **arrays)
    assert finetune(tiny_mae, root, tmp_path / "run") == 2
    one_paragraph(capsys.readouterr().err, str(path), needle)
    assert not (tmp_path / "run" / "adapter").exists() and not temps(tmp_path / "run")


@pytest.mark.parametrize("override", ["train.eval_batch_size=0", "train.weight_decay=-0.1", "train.adam_beta2=2",
                                      "seed=-1", "seed=4294967296", "data.val_fraction=1.5",
                                      "train.head_lr_scale=-1", "data.val_fraction=-0.5"])
def test_bad_values_fail_before_the_run_directory_exists(tiny_mae, tmp_path, capsys, override):
    assert finetune(tiny_mae, tmp_path, tmp_path / "run", override) == 2
    one_paragraph(capsys.readouterr().err, override.split("=")[0])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_output_dir_that_cannot_be_created_is_one_paragraph(tiny_mae, tmp_path, capsys, where):
    root = make_medmnist(tmp_path / "data")
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run" if where == "under_a_file" else Path("/proc/tpp-test-run")
    assert finetune(tiny_mae, root, out) == 2
    one_paragraph(capsys.readouterr().err, f"output_dir '{out}' cannot be created")


def test_disk_full_while_publishing_the_adapter_is_clean(tiny_mae, tmp_path, capsys, monkeypatch):
    import tpp.recipes.finetune as recipe

    def full_disk(path, *args):
        path.mkdir(parents=True, exist_ok=True)
        (path / "adapter_model.safetensors").write_bytes(b"\0" * 64)  # part of the weights, then no space
        raise OSError(errno.ENOSPC, "No space left on device", str(path / "adapter_model.safetensors"))

    monkeypatch.setattr(recipe, "write_adapter_dir", full_disk)
    root, out = make_medmnist(tmp_path / "data"), tmp_path / "run"
    assert finetune(tiny_mae, root, out) == 2
    one_paragraph(capsys.readouterr().err, f"'{out / 'adapter'}'", "No space left on device")
    assert not temps(out) and not (out / "adapter").exists() and not (out / "metrics.json").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "failed"


def test_disk_full_for_metrics_then_status_reports_the_first_failure(tiny_mae, tmp_path, capsys, monkeypatch):
    full = []

    def is_full(name):  # the disk fills up while metrics.json is written; recording 'failed' then fails too
        if name.startswith(".metrics.json") or (full and name.startswith(".status.json")):
            full.append(name)
            return True
        return False

    fill_disk_on(monkeypatch, is_full)
    root, out = make_medmnist(tmp_path / "data"), tmp_path / "run"
    assert finetune(tiny_mae, root, out) == 2
    one_paragraph(capsys.readouterr().err, f"'{out / 'metrics.json'}'", "No space left on device")
    assert [n.split(".")[1] for n in full] == ["metrics", "status"]  # recording 'failed' hit the full disk too
    assert not temps(out) and not (out / "metrics.json").exists()


def test_a_failed_publish_keeps_the_earlier_output_whole(tmp_path):
    from tpp.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.publish_dir("adapter", lambda tmp: (tmp.mkdir(), (tmp / "w").write_text("first")))

    def full_disk(tmp):
        tmp.mkdir()
        (tmp / "w").write_bytes(b"se")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "w"))

    with pytest.raises(TppError, match=r"cannot write '.*adapter': No space left on device"):
        run.publish_dir("adapter", full_disk)
    assert (run.path / "adapter" / "w").read_text() == "first" and not temps(run.path)


def test_write_atomic_removes_its_temp_and_names_the_file(tmp_path, disk_full):
    from tpp.safe_write import write_atomic

    target = tmp_path / "status.json"
    target.write_text("old")
    disk_full("status.json")
    with pytest.raises(TppError, match=r"cannot write '.*status\.json': No space left on device"):
        write_atomic(target, "new content")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_predict_csv_on_a_full_disk_keeps_the_old_outputs_and_no_temp(tmp_path, disk_full):
    from tpp.serve.predict import MASKS_MARK, write_csv, write_outputs

    out = tmp_path / "preds.csv"
    out.write_text("old csv")
    (tmp_path / "preds_masks").mkdir()
    (tmp_path / "preds_masks" / "old.png").write_bytes(b"old")
    (tmp_path / "preds_masks" / MASKS_MARK).touch()  # an earlier tpp predict wrote it
    disk_full("preds.csv")
    rows = [{"image": "a.png", "site": "s", "version": "v", "mask": "00000_a.png", "frac_bg": "1.0"}]
    with pytest.raises(TppError, match=r"cannot write '.*preds\.csv': No space left on device"):
        write_csv(rows, str(out))
    with pytest.raises(TppError, match=r"preds\.csv': No space left on device"):
        write_outputs(rows, {"00000_a.png": np.zeros((4, 4), np.uint8)}, str(out))
    assert out.read_text() == "old csv" and sorted(p.name for p in (tmp_path / "preds_masks").iterdir()) == [
        MASKS_MARK, "old.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "preds_masks"]


def test_predict_out_pointing_at_a_folder_is_one_paragraph(tiny_mae, tmp_path, capsys):
    from tpp.serve.predict import write_outputs

    folder = tmp_path / "outdir"
    folder.mkdir()
    (tmp_path / "img.png").write_bytes(b"not read: --out is checked first")
    assert main(["predict", "--backbone", str(tiny_mae), "--store", str(tmp_path / "store"), "--site", "s",
                 str(tmp_path / "img.png"), "--out", str(folder)]) == 2
    one_paragraph(capsys.readouterr().err, f"--out '{folder}' is a folder")
    with pytest.raises(TppError, match="is a folder"):
        write_outputs([{"image": "a", "site": "s", "version": "v"}], {}, str(folder))
    assert not list(folder.iterdir()) and not temps(tmp_path)


def test_publishing_into_a_store_that_is_a_file_is_one_paragraph(tiny_mae, tmp_path, capsys):
    root = make_medmnist(tmp_path / "data")
    assert finetune(tiny_mae, root, tmp_path / "run") == 0
    store = tmp_path / "store"
    store.write_text("a file")
    capsys.readouterr()
    assert main(["adapters", "publish", str(tmp_path / "run"), str(store), "--site", "s"]) == 2
    one_paragraph(capsys.readouterr().err, str(store))
    assert main(["adapters", "publish", str(tmp_path / "run"), str(store / "below"), "--site", "s"]) == 2
    one_paragraph(capsys.readouterr().err, str(store))
    assert store.read_text() == "a file"
