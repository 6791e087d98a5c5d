"""The standardised benchmark (benchmarks/suite.py) on a segmentation folder (``data.source=seg_folder``): a grid
task ``{name, folder}``, its cells keyed by the folder's content, a two-cell grid end to end on a tiny folder
written here; the committed report's cells keep their cache keys."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import seg_gain  # noqa: E402
import suite  # noqa: E402
from suite_grid import GridError, SegFolder, Task, load_grid  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def seg_folder(root: Path, n: int = 20) -> Path:
    """``root/images`` + ``root/masks``: n 24-px gray PNGs with a bright box, its 0/255 mask beside it."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        image, mask = rng.integers(0, 60, (24, 24)).astype(np.uint8), np.zeros((24, 24), np.uint8)
        r, c = 3 + i % 7, 4 + i % 6
        mask[r:r + 9, c:c + 9] = 255
        image[mask > 0] += 150
        Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i:02d}.png")
    return root


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_a_grid_task_names_a_segmentation_folder_with_its_reading_options(tmp_path):
    grid = load_grid(write(tmp_path, "approaches: [unet, lora, knn, resnet18]\nseeds: 1\ngrid:\n"
                                     "  - tasks: [{name: clinic, kind: segmentation, folder: hospital/busi, size: 32, "
                                     "group_key: patient}, {name: other, folder: /abs/busi}, busi_64]\n"
                                     "    fractions: [0.1]\n"))
    tasks = {t.name: t for t in grid.tasks}
    assert tasks["clinic"] == Task("clinic", "segmentation", "hospital/busi", SegFolder(32, "patient"))
    assert tasks["other"].folder == SegFolder(64, None) and tasks["other"].file == "/abs/busi"
    assert tasks["busi_64"].folder is None
    assert sorted(a for t, a, _f, _s in grid.cells if t.name == "clinic") == ["knn", "lora", "unet"]
    # a cell's claim key (its repr) is unchanged for the tasks that existed before folder tasks: a running
    # invocation of the older code and one of this code still split a shared cache's grid
    assert repr(tasks["busi_64"]) == "Task(name='busi_64', kind='segmentation', file='seg/busi_64.npz')"


@pytest.mark.parametrize("task, expected", [
    ("{name: clinic}", "'grid[0].tasks[clinic]' needs 'folder'"),
    ("{folder: x}", "'grid[0].tasks' needs 'name'"),
    ("{name: clinic, folder: x, kind: classification}", "'grid[0].tasks[clinic].kind' must be 'segmentation'"),
    ("{name: clinic, folder: x, size: 0}", "'grid[0].tasks[clinic].size' must be a mask side"),
    ("{name: clinic, folder: x, sise: 32}", "unknown key 'grid[0].tasks[clinic].sise'. Did you mean 'size'?"),
    ("{name: a/b, folder: x}", "'grid[0].tasks[a/b].name' must be a plain name"),
    ("{name: busi_64, folder: x}", "'busi_64' is the name of a shipped task"),
    ("{name: clinic, folder: x}, {name: clinic, folder: y}", "task 'clinic' is given two definitions"),
    ("{name: clinic, folder: x}, {name: clinic, folder: x, size: 32}", "task 'clinic' is given two definitions"),
])
def test_a_bad_folder_task_is_one_grid_error_naming_the_key(tmp_path, task, expected):
    path = write(tmp_path, f"approaches: [unet]\ngrid:\n  - tasks: [{task}]\n    fractions: [0.1]\n")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


def test_a_missing_folder_is_a_usage_error_before_any_cell(tmp_path, capsys):
    path = write(tmp_path, "approaches: [unet]\ngrid:\n  - tasks: [{name: clinic, folder: nowhere}]\n"
                           "    fractions: [0.1]\n")
    with pytest.raises(SystemExit) as exit_:
        suite.main(["--grid", str(path), "--cache", str(tmp_path / "cache"), "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(path) in err and f"'{tmp_path / 'nowhere'}' needs images/ and masks/" in err
    assert not (tmp_path / "cache" / "seg_gain").exists()


def test_a_folder_tasks_cells_are_keyed_by_its_content_not_its_path(tmp_path):
    """The same pixels as a folder and as a .npz never share cells; a copy of the folder elsewhere does; a
    changed mask, another read size or another name (it seeds the split) does not."""
    def bench(file, name="clinic", folder=SegFolder(), root=tmp_path, cache=tmp_path / "cache"):
        return seg_gain.SegBench(cache, seg_gain.PROTOCOL, "builtin:mae-vit-tiny-med", str(root), file, name, folder)

    seg_folder(tmp_path / "a")
    first = bench("a")
    assert first.target == "clinic" and first.cell_path("unet", 0.1, 0).parts[-3:-1] == ("clinic", "unet")
    npz = seg_gain.SegBench(tmp_path / "cache", seg_gain.PROTOCOL, "builtin:mae-vit-tiny-med", "unused",
                            "seg/clinic.npz")
    assert npz.target == "clinic" and npz.protocol_id != first.protocol_id
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    assert bench(str(tmp_path / "elsewhere" / "b")).protocol_id == first.protocol_id  # absolute, another place
    assert bench("a", name="other").protocol_id != first.protocol_id
    assert bench("a", folder=SegFolder(32)).protocol_id != first.protocol_id
    assert bench("a", folder=SegFolder(64, "patient")).protocol_id != first.protocol_id
    # the in-context cells of a folder task: keyed by the folder too (an npz task's key has no data in it)
    import suite_incontext

    def incontext(task):
        ic = suite_incontext.InContextBench(tmp_path / "ic", suite_incontext.PROTOCOL, "builtin:mae-vit-tiny-med",
                                            str(tmp_path), {})
        return ic.protocol_id("prototype", "segmentation", task)

    folder_task = Task("clinic", "segmentation", str(tmp_path / "elsewhere" / "b"), SegFolder())
    npz_task = Task("clinic", "segmentation", "seg/clinic.npz")
    ic_before = incontext(folder_task)
    assert ic_before != incontext(npz_task) == incontext(None)  # .npz: the key it always had
    mask = tmp_path / "elsewhere" / "b" / "masks" / "case03.png"
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(mask)
    assert bench(str(tmp_path / "elsewhere" / "b")).protocol_id != first.protocol_id
    assert incontext(folder_task) != ic_before


def test_a_two_cell_grid_on_a_segmentation_folder_runs_end_to_end(tiny_mae, tmp_path):
    """U-Net and LoRA from TPP (TPP on the folder's own training split) on a tiny folder: cells, costs and the
    report; a fresh cache adopts them from the published report wherever the folder lies; changing a mask makes
    them stale."""
    root = tmp_path / "data"
    seg_folder(root / "hospital" / "busi")
    grid = write(tmp_path, f"""backbone: {tiny_mae}
approaches: [unet, lora+tpp_mae]
seeds: 1
grid:
  - tasks: [{{name: clinic, folder: hospital/busi, size: 16}}]
    fractions: [1.0]
protocols:
  segmentation: {{budget: {{epochs: 1, min_steps: 2}}, batch_size: 4, input_size: 16, tpp_steps: 2, tpp_batch_size: 4}}
published: [{tmp_path / "out" / "suite.json"}]
""")
    args = ["--grid", str(grid), "--cache", str(tmp_path / "cache"), "--data-root", str(root),
            "--out", str(tmp_path / "out"), "--no-memory"]
    assert suite.main(args) == 0
    payload = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert payload["complete"] and not payload["missing"]
    rows = {r["approach"]: r for r in payload["rows"]}
    assert set(rows) == {"unet", "lora+tpp_mae"}
    for r in rows.values():
        assert (r["task"], r["kind"], r["metric"], r["seeds"]) == ("clinic", "segmentation", "Dice", 1)
        assert 0 <= r["primary"]["mean"] <= 1 and r["flops_per_image"] > 0 and r["trainable_parameters"] > 0
    assert "Segmentation folder tasks (data.source=seg_folder): clinic (hospital/busi, 16 px, groups: none)" in \
        (tmp_path / "out" / "suite.md").read_text()
    cells = {c["method"]: c for c in payload["cells"]}
    assert cells["unet"]["n_test"] == cells["lora+tpp_mae"]["n_test"] == 4  # the folder's seeded test split
    assert cells["lora+tpp_mae"]["tpp_s"] > 0 and cells["lora+tpp_mae"]["input_size"] == 16
    assert cells["unet"]["train_masks"] == cells["lora+tpp_mae"]["train_masks"] == 14
    loaded = load_grid(grid)
    bench = suite.Suite(loaded, tmp_path / "cache", str(root)).seg(loaded.tasks[0])
    stored = bench.cached("unet", 1.0, 0)  # under the folder task's name and content
    assert stored == {k: v for k, v in cells["unet"].items() if k not in ("suite_task", "suite_kind")}
    assert bench.cell_path("unet", 1.0, 0).parts[-3:-1] == ("clinic", "unet")
    # a fresh cache, the folder moved to another data root: adopted from the report, nothing trained again
    other = tmp_path / "moved"
    (other / "hospital").mkdir(parents=True)
    (root / "hospital" / "busi").rename(other / "hospital" / "busi")
    fresh = ["--grid", str(grid), "--cache", str(tmp_path / "fresh"), "--data-root", str(other),
             "--out", str(tmp_path / "out"), "--no-memory", "--report-only"]
    assert suite.main(fresh) == 0
    again = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert again["complete"] and [r["primary"] for r in again["rows"]] == [r["primary"] for r in payload["rows"]]
    # one mask changed: the cells no longer describe the folder, so none is adopted or reused
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(other / "hospital" / "busi" / "masks" / "case05.png")
    (tmp_path / "out" / "suite.json").write_text(json.dumps(payload))
    assert suite.main(fresh[:2] + ["--cache", str(tmp_path / "stale")] + fresh[4:]) == 0
    stale = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert not stale["complete"] and len(stale["missing"]) == 2


def test_the_committed_report_cells_keep_their_cache_keys(tmp_path):
    """Every cell of benchmarks/results/suite/suite.json is adopted into an empty cache by the shipped grid and
    answers its (task, approach, fraction, seed) there: adding folder tasks changed no existing cell's key."""
    grid = load_grid(suite.DEFAULT_GRID)
    bench = suite.Suite(grid, tmp_path / "cache", str(tmp_path))
    published = REPO / "benchmarks" / "results" / "suite" / "suite.json"
    cells = json.loads(published.read_text())["cells"]
    assert bench.adopt(published) == len(cells) > 0
    tasks = {t.name: t for t in grid.tasks}
    assert all(bench.cached(tasks[c["suite_task"]], c["method"], c["fraction"], c["seed"]) for c in cells)


def test_a_folder_tasks_groups_keep_each_patient_in_one_split_and_key_its_cells(tmp_path):
    """``group_key`` reaches the data settings of every cell (here the U-Net's reading): a patient of
    metadata.csv lies in one split; a changed metadata.csv changes the cells' key."""
    root = seg_folder(tmp_path / "clinic")
    rows = [f"case{i:02d}.png,p{i // 4}" for i in range(20)]
    (root / "metadata.csv").write_text("file_name,patient\n" + "\n".join(rows) + "\n")

    def bench():
        return seg_gain.SegBench(tmp_path / "cache", seg_gain.PROTOCOL, "builtin:mae-vit-tiny-med", str(tmp_path),
                                 "clinic", "clinic", SegFolder(16, "patient"))

    dataset, _cfg = bench().load(0)
    where: dict = {}
    for split, files in dataset.split_files.items():
        for f in files:
            where.setdefault(int(Path(f).stem[4:]) // 4, set()).add(split)
    assert len(where) == 5 and all(len(splits) == 1 for splits in where.values())
    assert dataset.split("train").images.shape[1:] == (16, 16)  # read at the task's size
    before = bench().protocol_id
    (root / "metadata.csv").write_text("file_name,patient\n" + "\n".join(r.replace(",p", ",q") for r in rows) + "\n")
    assert bench().protocol_id != before
