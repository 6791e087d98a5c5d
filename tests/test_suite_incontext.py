"""In-context approaches of the standardised suite (benchmarks/suite_incontext.py): the grid's new approaches and
their model folders, the context set = the fine-tuning label subset, cells with their cost fields, on tiny in-code
data and a tiny backbone."""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_medmnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import suite  # noqa: E402
import suite_incontext  # noqa: E402
from suite_grid import GridError, load_grid  # noqa: E402

from tpp.incontext import learned  # noqa: E402

GRID = "approaches: [prototype, knn, incontext_learned]\nseeds: 1\ngrid:\n  - tasks: [breastmnist, busi_64]\n" \
       "    fractions: [0.1]\n"


def write(tmp_path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def save_classifier(folder: Path, dim: int = 32) -> Path:
    torch.manual_seed(0)
    learned.save(learned.SetClassifier(dim, hidden=16, layers=1, heads=2, max_classes=4).eval(), "classification",
                 folder, {})
    return folder


def save_segmenter(folder: Path, size: int = 16) -> Path:
    torch.manual_seed(0)
    learned.save(learned.CrossConvNet((4, 8)).eval(), "segmentation", folder,
                 {"task_distribution": {"image_size": size}})
    return folder


def test_the_grid_takes_the_in_context_approaches_and_their_model_folders(tmp_path):
    cls, seg = save_classifier(tmp_path / "cls"), save_segmenter(tmp_path / "seg" / "model")
    grid = load_grid(write(tmp_path, GRID + f"incontext_models: {{classification: {cls}, segmentation: "
                                            f"{seg.parent}}}\n"))
    assert sorted((t.name, a) for t, a, _f, _s in grid.cells) == [
        ("breastmnist", "incontext_learned"), ("breastmnist", "knn"), ("breastmnist", "prototype"),
        ("busi_64", "incontext_learned"), ("busi_64", "knn"), ("busi_64", "prototype")]
    assert grid.incontext_models == {"classification": str(cls), "segmentation": str(seg.parent)}


@pytest.mark.parametrize("models, expected", [
    ("", "approach 'incontext_learned' on classification tasks needs 'incontext_models.classification'"),
    ("incontext_models: {classification: CLS}\n", "needs 'incontext_models.segmentation'"),
    ("incontext_models: {classification: CLS, segmentation: EMPTY}\n",
     "'incontext_models.segmentation': EMPTY holds no in-context model"),
    ("incontext_models: {clasification: CLS}\n", "unknown key 'incontext_models.clasification'. Did you mean "
                                                  "'classification'?"),
])
def test_incontext_learned_without_its_model_folder_is_a_grid_error_naming_the_key(tmp_path, models, expected):
    cls = save_classifier(tmp_path / "cls")
    (tmp_path / "empty").mkdir()
    path = write(tmp_path, GRID + models.replace("CLS", str(cls)).replace("EMPTY", str(tmp_path / "empty")))
    with pytest.raises(GridError) as err:
        load_grid(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected.replace("EMPTY", str(tmp_path / "empty")) in message


def test_a_prototype_cell_takes_exactly_the_fine_tuning_subset_as_context(tiny_mae, tmp_path, monkeypatch):
    from tpp.data import subsets

    root = make_medmnist(tmp_path / "data")
    calls = []
    real = subsets.label_fraction_index

    def spy(labels, fraction, dataset, seed):
        calls.append((labels.copy(), fraction, dataset, seed, real(labels, fraction, dataset, seed)))
        return calls[-1][-1]

    monkeypatch.setattr(subsets, "label_fraction_index", spy)
    grid = write(tmp_path, f"backbone: {tiny_mae}\napproaches: [prototype]\nseeds: 2\ngrid:\n  - tasks: [breastmnist]\n"
                           f"    fractions: [0.5]\npublished: [{tmp_path / 'out' / 'suite.json'}]\n")
    args = ["--grid", str(grid), "--cache", str(tmp_path / "cache"), "--data-root", str(root),
            "--out", str(tmp_path / "out"), "--no-memory"]
    assert suite.main(args) == 0
    payload = json.loads((tmp_path / "out" / "suite.json").read_text())
    published = {c["seed"]: c for c in payload["cells"]}
    # the cache keeps the context's positions, the report only their sha256 (the list is derivable)
    loaded = load_grid(grid)
    task, bench = loaded.cells[0][0], suite.Suite(loaded, tmp_path / "cache", str(root)).incontext
    cells = {seed: json.loads(bench.cell_path(task, "prototype", 0.5, seed).read_text()) for seed in (0, 1)}
    train = np.load(root / "breastmnist.npz")
    seed_calls = [c for c in calls if c[2] == "breastmnist" and c[1] == 0.5]
    assert sorted(c[3] for c in seed_calls) == [0, 1]
    for labels, _f, _d, seed, index in seed_calls:
        assert np.array_equal(labels, train["train_labels"][:, 0])  # the whole training split, as the recipe's
        assert cells[seed]["context_index"] == index.tolist() and cells[seed]["context_examples"] == len(index) == 30
        assert "context_index" not in published[seed] and published[seed]["context_sha256"] == sha256_of(index)
        assert published[seed]["context_examples"] == 30
    assert cells[0]["context_index"] != cells[1]["context_index"]  # each seed its own subset
    assert published[0]["context_sha256"] != published[1]["context_sha256"]
    # the very images the finetune recipe trains on at this fraction and seed
    from tpp.config import load_config
    from tpp.data.build import load_data
    from tpp.recipes import CONFIG_DIR
    from tpp.recipes.finetune import labelled_splits
    from tpp.serve.contexts import png

    monkeypatch.setattr(subsets, "label_fraction_index", real)
    cfg = load_config(CONFIG_DIR / "breast_us/mae_vit_tiny_lora_finetune.yaml",
                      [f"data.root={root}", "data.label_fraction=0.5", "seed=1"], recipe="finetune")
    recipe_train = labelled_splits(cfg, load_data(cfg.data, 1, 28))[0]
    context = train["train_images"][cells[1]["context_index"]]
    assert np.array_equal(recipe_train.images, context)
    cell = cells[1]
    assert cell["trainable_parameters"] == 0 and cell["tpp_s"] is None and cell["finetune_s"] > 0
    assert cell["bytes_per_site"] == sum(len(png(a)) for a in context)  # as tpp context publish stores it
    assert cell["n_test"] == 20 and 0 <= cell["test_auroc"] <= 1
    (row,) = payload["rows"]
    assert (row["approach"], row["family"], row["trainable_parameters"]) == ("prototype", "generalist", 0)
    assert row["flops_per_image"] > 0 and row["latency_ms_b1"] > 0 and row["latency_ms_b32"] > 0
    assert row["total_parameters"] > 0 and row["context_examples"] == 30 and "In-context rows" in \
        (tmp_path / "out" / "suite.md").read_text()
    # resumable: a second invocation finds every cell in the cache and runs none
    monkeypatch.setattr(suite_incontext.InContextBench, "run_cell", lambda *a: pytest.fail("ran a cached cell"))
    assert suite.main(args) == 0
    # a fresh clone: the published report seeds an empty cache, nothing runs again
    fresh = args[:2] + ["--cache", str(tmp_path / "fresh"), "--report-only"] + args[4:]
    assert suite.main(fresh) == 0
    again = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert again["complete"] and again["rows"][0]["primary"] == payload["rows"][0]["primary"]
    assert again["cells"] == payload["cells"]  # the fingerprints survive adoption
    # an adopted cell holds the fingerprint, not the list; the list is derived again and matches it
    bench = suite.Suite(loaded, tmp_path / "fresh", str(root)).incontext
    for seed in (0, 1):
        adopted = json.loads(bench.cell_path(task, "prototype", 0.5, seed).read_text())
        assert "context_index" not in adopted and adopted["context_sha256"] == published[seed]["context_sha256"]
        _subset, index = bench.context_index(task, 0.5, seed)
        assert index.tolist() == cells[seed]["context_index"] and sha256_of(index) == adopted["context_sha256"]
    # a report published before the fingerprint (cells with the whole list) is still adopted and read
    old = dict(payload, cells=[dict(c, context_index=cells[c["seed"]]["context_index"]) for c in payload["cells"]])
    for c in old["cells"]:
        del c["context_sha256"]
    (tmp_path / "out" / "suite.json").write_text(json.dumps(old))
    assert suite.main(args[:2] + ["--cache", str(tmp_path / "older"), "--report-only"] + args[4:]) == 0
    assert json.loads((tmp_path / "out" / "suite.json").read_text())["cells"] == payload["cells"]
    older = suite.Suite(loaded, tmp_path / "older", str(root)).incontext
    assert json.loads(older.cell_path(task, "prototype", 0.5, 1).read_text())["context_index"] == \
        cells[1]["context_index"]


def sha256_of(index) -> str:
    """The published fingerprint of a context, computed here independently of suite_report."""
    return hashlib.sha256(("[" + ",".join(str(int(i)) for i in index) + "]").encode()).hexdigest()


def test_a_published_cell_carries_the_contexts_fingerprint_not_its_list():
    import suite_report

    cell = {"method": "knn", "context_examples": 3, "context_index": [3, 17, 42], "protocol_id": "x"}
    out = suite_report.published_cell(cell)
    assert out == {"method": "knn", "context_examples": 3, "protocol_id": "x",
                   "context_sha256": hashlib.sha256(b"[3,17,42]").hexdigest()}
    assert cell["context_index"] == [3, 17, 42]  # the cached cell keeps its list
    assert suite_report.published_cell(out) == out  # an adopted cell (fingerprint only) stays as it is
    lora = {"method": "lora", "test_auroc": 0.8}
    assert suite_report.published_cell(lora) == lora


def test_a_context_over_the_cap_is_a_seeded_draw_per_class_from_the_subset():
    labels = np.arange(100) % 2
    subset = np.arange(60)
    capped = suite_incontext.cap_index(subset, labels, 10, seed=3)
    assert len(capped) == 20 and set(capped) <= set(subset) and np.bincount(labels[capped]).tolist() == [10, 10]
    assert np.array_equal(capped, suite_incontext.cap_index(subset, labels, 10, seed=3))
    assert not np.array_equal(capped, suite_incontext.cap_index(subset, labels, 10, seed=4))
    assert np.array_equal(suite_incontext.cap_index(subset, labels, 50, seed=3), subset)  # under the cap: all


def seg_npz(root: Path, n: int = 40) -> str:
    """A tiny BUSI-layout file (16-px images, a bright box = the lesion, benign / malignant, dup groups)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (n, 16, 16)).astype(np.uint8)
    masks = np.zeros((n, 16, 16), np.uint8)
    for i in range(n):
        r, c = 2 + i % 6, 3 + i % 5
        masks[i, r:r + 6, c:c + 6] = 255
        images[i][masks[i] > 0] += 150
    (root / "seg").mkdir(parents=True, exist_ok=True)
    np.savez(root / "seg" / "toy.npz", images=images, masks=masks, label=(np.arange(n) % 2).astype(np.uint8),
             label_names=np.array(["benign", "malignant"]), dup_group=np.arange(n) // 2)
    return "seg/toy.npz"


def test_segmentation_cells_of_prototype_and_the_learned_segmenter_run_on_tiny_data(tiny_mae, tmp_path):
    root = tmp_path / "data"
    file = seg_npz(root)
    cls = save_classifier(tmp_path / "cls")
    seg = save_segmenter(tmp_path / "seg")
    make_medmnist(root)
    grid = write(tmp_path, f"""backbone: {tiny_mae}
approaches: [prototype, incontext_learned]
seeds: 1
grid:
  - tasks: [{file}, breastmnist]
    fractions: [0.5]
protocols:
  incontext: {{seg_size: 16}}
incontext_models: {{classification: {cls}, segmentation: {seg}}}
""")
    assert suite.main(["--grid", str(grid), "--cache", str(tmp_path / "cache"), "--data-root", str(root),
                       "--out", str(tmp_path / "out"), "--no-memory"]) == 0
    payload = json.loads((tmp_path / "out" / "suite.json").read_text())
    rows = {(r["task"], r["approach"]): r for r in payload["rows"]}
    proto = rows[("toy", "prototype")]
    assert proto["metric"] == "Dice" and proto["primary"]["mean"] > 0.3  # the bright box is easy
    assert proto["test_iou"]["mean"] is not None and proto["trainable_parameters"] == 0
    assert proto["bytes_per_site"] > 0 and proto["flops_per_image"] > 0
    cells = {(c["target"], c["method"]): c for c in payload["cells"]}
    assert cells[("toy", "prototype")]["input_size"] == 16 and cells[("toy", "prototype")]["n_test"] > 0
    for kind, task, model in (("classification", "breastmnist", cls), ("segmentation", "toy", seg)):
        net = learned.load(model)[0]
        row = rows[(task, "incontext_learned")]
        assert row["trainable_parameters"] == sum(p.numel() for p in net.parameters()) > 0  # trained once
        assert row["flops_per_image"] > 0 and 0 <= row["primary"]["mean"] <= 1
    # the learned segmenter reads pixels only: its FLOPs are not the backbone's
    assert rows[("toy", "incontext_learned")]["flops_per_image"] != proto["flops_per_image"]


@pytest.mark.parametrize("which, expected", [("seg", "is a segmentation model"), ("dim", "reads 12-dim features")])
def test_a_learned_model_that_does_not_fit_is_a_usage_error_before_any_cell(tiny_mae, tmp_path, capsys, which,
                                                                          expected):
    model = save_segmenter(tmp_path / "m") if which == "seg" else save_classifier(tmp_path / "m", dim=12)
    grid = write(tmp_path, f"backbone: {tiny_mae}\napproaches: [incontext_learned]\ngrid:\n  - tasks: [breastmnist]\n"
                           f"    fractions: [0.5]\nincontext_models: {{classification: {model}}}\n")
    with pytest.raises(SystemExit) as exit_:
        suite.main(["--grid", str(grid), "--cache", str(tmp_path / "cache"), "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and expected in err and str(grid) in err
    assert not (tmp_path / "cache" / "suite_incontext").exists()
