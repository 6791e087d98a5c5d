"""The standardised benchmark (benchmarks/suite.py): FLOP counting, the grid file's validation, a two-cell grid
end to end on tiny in-code data and a tiny backbone."""
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_medmnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cost  # noqa: E402
import suite  # noqa: E402
import suite_plots  # noqa: E402
from resnet import ResNet18  # noqa: E402
from suite_grid import GridError, Task, load_grid  # noqa: E402


def test_flops_of_a_tiny_cnn_equal_a_hand_count():
    model = ResNet18(1, 2, widths=(4, 8), blocks=1)  # 3x3 stride-1 stem, one block per stage, 8x8 input
    macs = (8 * 8 * 4 * 1 * 9  # stem 1 -> 4
            + 2 * 8 * 8 * 4 * 4 * 9  # block 1: two 3x3 convs 4 -> 4 at 8x8
            + 4 * 4 * 8 * 4 * 9 + 4 * 4 * 8 * 8 * 9 + 4 * 4 * 8 * 4  # block 2: stride-2 conv, conv, 1x1 shortcut at 4x4
            + 8 * 2)  # linear 8 -> 2
    assert cost.flops_per_image(model, torch.randn(3, 1, 8, 8)) == 2 * macs  # FLOPs = 2 x MACs, per image


def test_flops_of_a_tiny_vit_equal_a_hand_count_attention_included():
    from transformers import ViTConfig, ViTModel

    d, ff, heads, tokens = 8, 16, 2, 5  # 8x8 image, 4 px patches: 4 patches + CLS
    model = ViTModel(ViTConfig(hidden_size=d, num_hidden_layers=1, num_attention_heads=heads, intermediate_size=ff,
                               patch_size=4, image_size=8, num_channels=1), add_pooling_layer=False)
    assert model.config._attn_implementation == "sdpa"  # the fused kernel the counter would otherwise miss
    macs = (4 * d * 1 * 4 * 4  # patch embedding: a 4x4 conv 1 -> d at 2x2 positions
            + 3 * tokens * d * d  # q, k, v
            + 2 * heads * tokens * tokens * (d // heads)  # QK^T and attention x V
            + tokens * d * d  # attention output
            + 2 * tokens * d * ff)  # MLP
    assert cost.flops_per_image(model, torch.randn(2, 1, 8, 8)) == 2 * macs


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


GOOD = "approaches: [resnet18, lora]\nseeds: 2\ngrid:\n  - tasks: [breastmnist, busi_64]\n    fractions: [0.1]\n"


def test_costs_are_timed_at_one_thread_and_the_callers_thread_count_comes_back():
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 2)

        def forward(self, x):
            seen.append(torch.get_num_threads())
            return self.linear(x.flatten(1))

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        measured = cost.measure(Spy(), torch.randn(1, 1, 4, 4))
        assert torch.get_num_threads() == 2
        assert cost.train_s_per_image(Spy(), torch.randn(1, 1, 4, 4), classes=2) > 0  # the ResNet estimate's timing
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert set(seen) == {cost.THREADS} and measured["threads"] == cost.THREADS
    assert measured["load_average_1min"] >= 0


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("seeds:", "seedz:"), "unknown key 'seedz'. Did you mean 'seeds'?"),
    (GOOD.replace("resnet18", "resnet_18"), "unknown approach 'resnet_18' in 'approaches'. Did you mean 'resnet18'?"),
    (GOOD.replace("breastmnist", "breastmnst"), "unknown task 'breastmnst' in 'grid[0].tasks'. Did you mean "
                                                "'breastmnist'"),
    (GOOD.replace("    fractions", "    fraction"), "unknown key 'grid[0].fraction'. Did you mean 'fractions'?"),
    (GOOD.replace("seeds: 2", "seeds: {0.5: 2}"), "'seeds' gives no seed count for label fraction 0.1"),
    (GOOD.replace("[0.1]", "[2]"), "'grid[0].fractions' must be a list of label fractions in (0, 1]"),
    ("grid: [", "not valid YAML"),
    (GOOD + "seeds: 5\n", "not valid YAML (key 'seeds' is given twice (first on line 2); keep one)"),
])
def test_grid_mistakes_are_one_error_naming_the_file_and_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


def test_a_valid_grid_gives_each_task_the_approaches_of_its_kind(tmp_path):
    grid = load_grid(write(tmp_path, GOOD))
    assert sorted((t.name, a, s) for t, a, _f, s in grid.cells) == [
        ("breastmnist", "lora", 0), ("breastmnist", "lora", 1), ("breastmnist", "resnet18", 0),
        ("breastmnist", "resnet18", 1), ("busi_64", "lora", 0), ("busi_64", "lora", 1)]  # no ResNet on masks


def test_the_command_line_reports_a_bad_grid_or_protocol_key_as_a_usage_error(tmp_path, capsys):
    for text, expected in [(GOOD.replace("lora]", "lora, lorra]"), "Did you mean 'lora'"),
                           (GOOD + "protocols: {resnet18: {epoch: 3}}\n", "unknown key 'protocols.resnet18.epoch'")]:
        path = write(tmp_path, text)
        with pytest.raises(SystemExit) as exit_:
            suite.main(["--grid", str(path), "--report-only", "--cache", str(tmp_path / "cache")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err and str(path) in err


def test_the_shipped_grid_is_valid():
    grid = load_grid(suite.DEFAULT_GRID)
    assert {t.name for t in grid.tasks} >= {"breastmnist", "pneumoniamnist", "busi_64"}


def test_who_wins_never_lets_a_one_seed_mean_outrank_a_complete_approach():
    from types import SimpleNamespace

    import suite_report

    task = SimpleNamespace(name="breastmnist")
    seeds = {"lora": [0.60, 0.62, 0.64], "lucky": [0.90], "resnet18": [0.50, 0.52, 0.54]}
    family = {"lora": "generalist", "lucky": "generalist", "resnet18": "task-specific"}
    rows = [{"task": "breastmnist", "fraction": 0.1, "family": family[a], "approach": a, "seeds": len(v),
             "metric": "AUROC", "kind": "classification", "primary": {"mean": sum(v) / len(v)}}
            for a, v in seeds.items()]
    cells = [(task, a, 0.1, s, {"test_auroc": x, "fraction": 0.1, "seed": s}) for a, v in seeds.items()
             for s, x in enumerate(v)]
    (win,) = suite_report.who_wins(rows, cells)
    assert (win["generalist"], win["task_specific"], win["pairs"]) == ("lora", "resnet18", 3)
    assert win["diff_mean"] == pytest.approx(0.10)


def test_who_wins_ranks_by_seeds_with_the_metric_defined_and_never_picks_an_undefined_row(tmp_path):
    """A row whose primary metric is undefined (None, or NaN as a cache file can hold it) on most or all of its
    seeds: its mean is over the defined seeds only, so it ranks as a mean of that many seeds; a row with none
    defined is no candidate (it used to crash the report with None or, with NaN, win or lose by its position);
    its interval is undefined (None), never NaN; the plots leave it out."""
    from types import SimpleNamespace

    import suite_report

    task = SimpleNamespace(name="breastmnist", kind="classification")
    nan = float("nan")
    seeds = {"undefined_none": [None, None, None], "undefined_nan": [nan, nan, nan], "lucky": [0.95, None, nan],
             "lora": [0.60, 0.62, 0.64], "resnet18": [0.50, 0.52, 0.54]}
    family = {"resnet18": "task-specific"}
    for order in (list(seeds), list(reversed(seeds))):  # the pick must not depend on the rows' order
        cells = [(task, a, 0.1, s, {"test_auroc": x, "fraction": 0.1, "seed": s}) for a in order
                 for s, x in enumerate(seeds[a])]
        rows = [{"task": "breastmnist", "fraction": 0.1, "family": family.get(a, "generalist"), "approach": a,
                 "seeds": len(seeds[a]), "metric": "AUROC", "kind": "classification",
                 "primary": suite_report.interval(seeds[a]), "trainable_parameters": 10, "flops_per_image": 1e6}
                for a in order]
        by = {r["approach"]: r["primary"] for r in rows}
        assert by["undefined_nan"] == by["undefined_none"] == {"mean": None, "low": None, "high": None}
        assert by["lucky"] == {"mean": 0.95, "low": None, "high": None}
        (win,) = suite_report.who_wins(rows, cells)
        assert (win["generalist"], win["task_specific"], win["pairs"]) == ("lora", "resnet18", 3)
        assert win["diff_mean"] == pytest.approx(0.10) and win["winner"] == "generalist"
    paths = suite_plots.write_all(rows, tmp_path)  # the undefined rows are not drawn, and do not crash the plots
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert suite_plots.pareto([(1, 0.5), (2, None), (3, 0.7)]) == [(1, 0.5), (3, 0.7)]


def test_pareto_front_keeps_only_points_no_other_beats_on_cost_and_metric():
    assert suite_plots.pareto([(1, 0.5), (2, 0.4), (3, 0.7), (4, 0.6), (0.5, 0.5)]) == [(0.5, 0.5), (3, 0.7)]


def test_a_two_cell_grid_runs_end_to_end_and_writes_every_artifact(tiny_mae, tmp_path):
    root = make_medmnist(tmp_path / "data")
    grid = write(tmp_path, f"""backbone: {tiny_mae}
approaches: [resnet18, linear_probe]
seeds: 1
grid:
  - tasks: [breastmnist]
    fractions: [0.5]
protocols:
  classification: {{finetune_steps: 3, finetune_batch_size: 16}}
  resnet18: {{epochs: 2, milestones: [1], widths: [4, 8]}}
published: [{tmp_path / "out" / "suite.json"}]
""")
    args = ["--grid", str(grid), "--cache", str(tmp_path / "cache"), "--data-root", str(root),
            "--out", str(tmp_path / "out")]
    assert suite.main(args) == 0
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"suite.json", "suite.md", "suite.html", "metric_vs_trainable.png",
                                               "metric_vs_flops.png", "metric_vs_fraction.png"}  # no temp files
    payload = json.loads((out / "suite.json").read_text())
    rows = {r["approach"]: r for r in payload["rows"]}
    assert set(rows) == {"resnet18", "linear_probe"} and payload["complete"] and not payload["missing"]
    assert rows["linear_probe"]["trainable_parameters"] == 66  # the head only: 32 x 2 + 2
    assert rows["resnet18"]["trainable_parameters"] == rows["resnet18"]["total_parameters"]  # from scratch
    assert rows["linear_probe"]["total_parameters"] > rows["linear_probe"]["trainable_parameters"]
    for r in rows.values():
        assert r["flops_per_image"] > 0 and r["latency_ms_b1"] > 0 and r["latency_ms_b32"] > 0
        assert r["inference_mib"] is not None and r["bytes_per_site"] == 4 * r["trainable_parameters"]
        assert 0 <= r["primary"]["mean"] <= 1 and r["seeds"] == 1
    (win,) = payload["who_wins"]
    assert (win["generalist"], win["task_specific"], win["pairs"]) == ("linear_probe", "resnet18", 1)
    assert win["diff_mean"] == pytest.approx(rows["linear_probe"]["primary"]["mean"] - rows["resnet18"]["primary"]
                                             ["mean"])
    assert len(list((tmp_path / "cache" / "suite_cost").glob("*.json"))) == 2  # the two models (the ResNet cell ran)
    for entry in (json.loads(f.read_text()) for f in (tmp_path / "cache" / "suite_cost").glob("*.json")):
        assert entry["threads"] == cost.THREADS and json.loads(entry["key"])["cost"] == cost.KEY  # timed at 1 thread
    page = (out / "suite.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Who wins where" in page
    assert (out / "metric_vs_flops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a fresh clone: the published report seeds an empty cache, so nothing is trained again
    fresh = args[:2] + ["--cache", str(tmp_path / "fresh"), "--report-only", "--no-memory"] + args[4:]
    assert suite.main(fresh) == 0
    again = json.loads((out / "suite.json").read_text())
    assert again["complete"] and [r["primary"] for r in again["rows"]] == [r["primary"] for r in payload["rows"]]
    # --no-published: nothing adopted, so an empty cache has every cell missing (measured again without
    # --report-only)
    assert suite.main(fresh[:2] + ["--cache", str(tmp_path / "empty")] + fresh[4:] + ["--no-published"]) == 0
    empty = json.loads((out / "suite.json").read_text())
    assert not empty["complete"] and len(empty["missing"]) == 2


def test_the_resnet_estimate_scales_finished_cells_of_a_near_size():
    """Missing ResNet-18 cells are estimated from finished ones trained on 1/4x-4x their images (the median rate,
    robust to a loaded epoch), else the nearest size; the a-priori timing only without any finished cell."""
    import numpy as np
    import suite_report

    class Suite:  # what resnet_estimate_s reads
        resnet = type("R", (), {"protocol": {"epochs": 10}})()

        def resnet_images(self, task, fraction):
            return {0.01: 50, 0.1: 500, 1.0: 5000}[fraction]

        def resnet_estimate_s(self, task, fraction):
            return -1.0

    def cell(images, epoch_s):
        return (None, "resnet18", 0.0, 0, {"epoch_s": epoch_s, "train_labels": images})

    done = [cell(6, 3.0), cell(480, 9.6), cell(480, 96.0), cell(520, 10.4), (None, "lora", 0.1, 0, {})]
    assert suite_report.resnet_estimate_s(Suite(), None, 0.1, done) == pytest.approx(0.02 * 500 * 10)  # median
    assert suite_report.resnet_estimate_s(Suite(), None, 1.0, done) == pytest.approx(0.02 * 5000 * 10)  # nearest
    assert suite_report.resnet_estimate_s(Suite(), None, 0.01, done) == pytest.approx(0.5 * 50 * 10)  # 6 images
    assert suite_report.resnet_estimate_s(Suite(), None, 0.1, done[-1:]) == -1.0
    assert np.isfinite(suite_report.resnet_estimate_s(Suite(), None, 0.01, done[1:2]))


def test_each_row_says_at_which_rule_its_accuracy_was_taken():
    """Fine-tuned binary cells report accuracy at the validation-chosen threshold, the ResNet at argmax: the table
    says which, so the two are not read as one rule."""
    import suite_report
    from suite_grid import Task

    task = Task("breastmnist", "classification")

    def cell(approach, threshold):
        return (task, approach, 0.1, 0, {"test_auroc": 0.7, "test_accuracy": 0.8, "trainable_parameters": 10,
                                         "finetune_s": 1.0, "protocol_id": "p", "threshold": threshold})

    rows = suite_report.rows_of([cell("lora", 0.31), cell("resnet18", None)], {})
    table = {r[2]: r[6] for r in suite_report.results_table(rows)[1]}
    assert table == {"lora": "accuracy (val threshold) 0.800", "resnet18": "accuracy (argmax) 0.800"}


def test_a_missing_cell_pays_for_its_tpp_adapter_only_once_per_seed():
    """A TPP adapter is shared by a seed's label fractions: a missing cell whose seed already has one (finished or
    counted for another missing cell) is estimated at the fine-tuning time alone."""
    import suite_report

    breast, busi = Task("breastmnist", "classification", "breastmnist"), Task("busi_64", "segmentation", "x")
    done = [(breast, "lora+tpp_mae", 0.01, 0, {"finetune_s": 10.0, "tpp_s": 100.0}),
            (breast, "lora+tpp_mae", 0.01, 1, {"finetune_s": 30.0, "tpp_s": 300.0}),
            (breast, "lora", 0.01, 0, {"finetune_s": 5.0, "tpp_s": None})]
    todo = [(breast, "lora+tpp_mae", 0.1, 0), (breast, "lora+tpp_mae", 0.1, 2), (breast, "lora+tpp_mae", 1.0, 2),
            (breast, "lora", 0.1, 1), (busi, "lora", 0.1, 0)]
    missing = {(m["approach"], m["task"], m["fraction"]): m for m in suite_report.estimate_missing(None, todo, done)}
    assert missing[("lora+tpp_mae", "breastmnist", 0.1)]["seeds"] == 2
    assert missing[("lora+tpp_mae", "breastmnist", 0.1)]["estimate_s"] == pytest.approx((20.0 + 220.0) / 2)
    assert missing[("lora+tpp_mae", "breastmnist", 1.0)]["estimate_s"] == pytest.approx(20.0)  # seed 2's adapter
    assert missing[("lora", "breastmnist", 0.1)]["estimate_s"] == pytest.approx(5.0)
    assert missing[("lora", "busi_64", 0.1)]["estimate_s"] == pytest.approx(300.0)  # no finished segmentation cell


def test_resnet_cells_come_last_get_the_budget_left_and_a_pause_leaves_them_for_the_next_run(monkeypatch, capsys):
    """fill() runs the short cells first; when the next one no longer fits, the budget left goes to the ResNet-18
    cells, which start while any is left (one pauses itself at the budget's end): the paused cell and the cells
    not reached are left for the next invocation, with no error."""
    import report

    clock = [1000.0]
    monkeypatch.setattr(report, "time", type("Clock", (), {"time": staticmethod(lambda: clock[0])}))
    task = Task("breastmnist", "classification")
    ran = []

    class Stub:
        grid = type("G", (), {"cells": [(task, "resnet18", 1.0, 0), (task, "resnet18", 1.0, 1),
                                         (task, "lora", 0.1, 0), (task, "lora", 0.1, 1)]})()
        resnet = type("R", (), {"deadline": None})()
        claims = None

        def cached(self, *cell):
            return None

        def run_cell(self, *cell):
            ran.append(cell)
            if cell[1] == "resnet18" and cell[3] == 1:
                raise report.CellPaused("breastmnist resnet18 100% seed 1 after epoch 3 of 100")
            if cell[1] == "lora":
                clock[0] += 60.0  # a lora cell of 60 s: the second would not fit the 40 s left after it
            return {"test_auroc": 0.7}

    missing, errors = suite.fill(Stub(), budget_s=100.0)
    assert ran == [(task, "lora", 0.1, 0), (task, "resnet18", 1.0, 0), (task, "resnet18", 1.0, 1)]
    assert missing == [(task, "lora", 0.1, 1), (task, "resnet18", 1.0, 1)] and errors == []
    assert Stub.resnet.deadline is not None
    assert "paused: breastmnist resnet18 100% seed 1 after epoch 3" in capsys.readouterr().out


def test_an_in_context_row_whose_seeds_share_one_context_says_it_is_one_measurement():
    """At 100% labels a whole training split under the cap is every seed's context: the seeds repeat one
    measurement, and the table says so next to its zero-wide interval."""
    import suite_report

    same = [{"context_index": [1, 5, 9]}, {"context_sha256": suite_report.context_sha256([1, 5, 9])}]
    assert suite_report.one_context(same)
    assert not suite_report.one_context(same + [{"context_index": [1, 5]}])
    assert not suite_report.one_context(same[:1])  # one seed: nothing repeated
    assert not suite_report.one_context([{}, {}])  # cells that record no context
    row = {"task": "t", "kind": "classification", "fraction": 1.0, "approach": "knn", "family": "generalist",
           "seeds": 2, "one_context": True, "metric": "AUROC", "trainable_parameters": 0, "bytes_per_site": 0.0,
           "total_parameters": None, "flops_per_image": None, "latency_ms_b1": None, "latency_ms_b32": None,
           "inference_mib": None, "train_s": 1.0,
           **{key: {"mean": 0.7, "low": 0.7, "high": 0.7} for key in ("primary", "test_accuracy")}}
    _header, (line,) = suite_report.results_table([row])
    assert line[4] == "2 (one context: one measurement)"
    assert suite_report.results_table([dict(row, one_context=False)])[1][0][4] == "2"


def test_a_cell_left_to_another_invocation_or_failing_is_named_like_the_progress_lines(tmp_path, capsys):
    """The skip and failure lines name a cell as `dermamnist_jpeg resnet18 10% seed 4`, not as the tuple's repr
    (`(Task(name='dermamnist_jpeg', ...), 'resnet18', 0.1, 4)`)."""
    import report

    task = Task("dermamnist_jpeg", "classification")
    held, broken = (task, "resnet18", 0.1, 4), (task, "lora", 0.1, 0)

    class Stub:
        grid = type("G", (), {"cells": [broken, held]})()
        resnet = type("R", (), {"deadline": None})()
        claims = report.CellClaims(tmp_path / "claims")

        def cached(self, *cell):
            return None

        def run_cell(self, *cell):
            raise RuntimeError("boom")

    with Stub.claims.claim(held) as mine:  # as another invocation on the same cache holds it
        assert mine
        missing, errors = suite.fill(Stub(), budget_s=600.0)
    out = capsys.readouterr().out
    assert "  dermamnist_jpeg resnet18 10% seed 4: another invocation is running it; skipped\n" in out
    assert "  FAILED dermamnist_jpeg lora 10% seed 0: boom\n" in out and "Task(" not in out
    assert missing == [held] and errors == ["dermamnist_jpeg lora 10% seed 0: RuntimeError: boom"]
