"""Fix and rerun: a config error leaves no run folder, a failed run without a checkpoint is replaced by the
corrected rerun, paths in a config file are relative to that file, a run can be extended with a larger
train.max_steps, and the reported wall time counts from the start of the command."""
import json
import os
import time

import pytest
import yaml
from conftest import make_medmnist
from helpers import FAST, FINETUNE_CONFIG, finetune, recipe_args, run_cli

from tpp.config import load_config
from tpp.errors import TppError
from tpp.recipes import CONFIG_DIR
from tpp.rundir import RunDir

# -- paths in a config ------------------------------------------------------------------------------------


def write_config(path, **sections) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"recipe": "finetune", **sections}))
    return str(path)


def test_paths_in_a_file_are_relative_to_it_on_the_command_line_to_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "models" / "bb").mkdir(parents=True)
    config = write_config(tmp_path / "configs" / "my.yaml", backbone={"path": "../models/bb"},
                          adapter={"init_from": "runs/tpp/adapter"}, data={"root": "data"})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(config)
    assert cfg.backbone.path == str(tmp_path / "models" / "bb")
    assert cfg.adapter.init_from == str(tmp_path / "configs" / "runs" / "tpp" / "adapter")
    assert cfg.data.root == str(tmp_path / "configs" / "data")
    cfg = load_config(config, ["data.root=mine", "adapter.init_from=../a", "backbone.path=./bb"])
    assert cfg.data.root == str(tmp_path / "elsewhere" / "mine") and cfg.adapter.init_from == str(tmp_path / "a")
    assert cfg.backbone.path == str(tmp_path / "elsewhere" / "bb")
    assert load_config(config, [f"data.root={tmp_path}/x/../y"]).data.root == str(tmp_path / "y")  # absolute: as is
    assert load_config(config, ["data.root=~/d"]).data.root == os.path.expanduser("~/d")


def test_a_hub_id_stays_a_hub_id_unless_such_a_folder_is_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "c" / "my.yaml", backbone={"path": "org/name"})
    assert load_config(config).backbone.path == "org/name"
    assert load_config(config, ["backbone.path=facebook/vit-mae-base"]).backbone.path == "facebook/vit-mae-base"
    (tmp_path / "c" / "org" / "name").mkdir(parents=True)  # a local checkpoint folder of that name, beside the file
    assert load_config(config).backbone.path == str(tmp_path / "c" / "org" / "name")
    deep = write_config(tmp_path / "d" / "my.yaml", backbone={"path": "models/org/name"})  # no hub id: a path
    assert load_config(deep).backbone.path == str(tmp_path / "d" / "models" / "org" / "name")


def test_pool_data_roots_are_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = CONFIG_DIR / "backbones" / "mae_vit_tiny_med_pool.yaml"
    data = yaml.safe_load(shipped.read_text())
    data["pool"][0]["data"]["root"] = "pool_data"
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pool.yaml").write_text(yaml.safe_dump(data))
    cfg = load_config(tmp_path / "p" / "pool.yaml")
    assert cfg.pool[0].data.root == str(tmp_path / "p" / "pool_data") and cfg.pool[1].data.root is None


def test_cp_then_run_from_another_folder_finds_the_shipped_backbone(tmp_path, monkeypatch, capsys):
    """The shipped configs name the backbone shipped in the package (builtin:NAME, no path): `tpp cp` copies
    it as written, and it means the same from any folder; a relative path in a user's config becomes absolute."""
    from tpp.backbones import DEFAULT_BACKBONE

    assert load_config(CONFIG_DIR / FINETUNE_CONFIG).backbone.path == DEFAULT_BACKBONE
    copy = tmp_path / "x" / "my.yaml"
    assert run_cli("cp", FINETUNE_CONFIG, copy) == 0
    assert "made absolute" not in capsys.readouterr().out
    text = copy.read_text()
    assert text == (CONFIG_DIR / FINETUNE_CONFIG).read_text()  # comments and the builtin name stay
    (tmp_path / "somewhere_else").mkdir()
    monkeypatch.chdir(tmp_path / "somewhere_else")
    assert load_config(copy).backbone.path == DEFAULT_BACKBONE
    user = tmp_path / "mine" / "site.yaml"
    write_config(user, adapter={"init_from": "runs/tpp/adapter"}, backbone={"path": "org/name"})
    assert run_cli("cp", user, tmp_path / "moved.yaml") == 0
    assert "made absolute in the copy" in capsys.readouterr().out
    moved = yaml.safe_load((tmp_path / "moved.yaml").read_text())
    assert moved["adapter"]["init_from"] == str(tmp_path / "mine" / "runs" / "tpp" / "adapter")
    assert moved["backbone"]["path"] == "org/name"


def test_cp_keeps_the_comment_of_a_line_it_makes_absolute(tmp_path, capsys):
    """A path's own trailing comment was dropped from the line `tpp cp` rewrote (the note replaced it)."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "site.yaml").write_text(
        "data:\n  source: folder\n  root: scans   # the 2024 export, ask Ana before changing\n"
        "adapter:\n  init_from: 'runs/tpp/adapter'  # pre-trained on site b\n")
    assert run_cli("cp", tmp_path / "mine" / "site.yaml", tmp_path / "moved.yaml") == 0
    lines = (tmp_path / "moved.yaml").read_text().splitlines()
    assert lines[2].startswith(f"  root: {tmp_path / 'mine' / 'scans'}  # the 2024 export, ask Ana before changing")
    assert lines[4].startswith(f"  init_from: {tmp_path / 'mine' / 'runs' / 'tpp' / 'adapter'}  # pre-trained on "
                               "site b")
    assert "# tpp cp: 'scans' made absolute" in lines[2]
    moved = yaml.safe_load((tmp_path / "moved.yaml").read_text())
    assert moved["data"] == {"source": "folder", "root": str(tmp_path / "mine" / "scans")}


def test_a_copied_shipped_config_runs_from_another_folder(tmp_path, monkeypatch, capsys):
    """A copy of a shipped config runs from any folder with the backbone shipped in the package (no ../shared):
    the run's config.yaml records the builtin name, its card the name and the encoder hash."""
    from tpp.backbones import DEFAULT_BACKBONE, builtin_hash

    root = make_medmnist(tmp_path / "data")
    assert run_cli("cp", FINETUNE_CONFIG, tmp_path / "x" / "my.yaml") == 0
    (tmp_path / "else").mkdir()
    monkeypatch.chdir(tmp_path / "else")
    assert run_cli("run", "finetune", "--config", tmp_path / "x" / "my.yaml", f"data.root={root}", *FAST,
                   "train.max_steps=2", "output_dir=out") == 0
    saved = yaml.safe_load((tmp_path / "else" / "out" / "config.yaml").read_text())
    assert saved["backbone"]["path"] == DEFAULT_BACKBONE and saved["data"]["root"] == str(root)
    card = json.loads((tmp_path / "else" / "out" / "adapter" / "tpp_card.json").read_text())
    assert card["backbone"]["id"] == DEFAULT_BACKBONE
    assert card["backbone"]["hash"] == builtin_hash(DEFAULT_BACKBONE.split(":", 1)[1])


# -- fix and rerun --------------------------------------------------------------------------------------

def test_a_mistake_then_the_same_command_after_the_fix_runs(tiny_mae, tmp_path, monkeypatch, capsys):
    """A config a user wrote, run from another folder: a wrong backbone path is refused before output_dir
    exists; a data file that only fails when read leaves a failed run, which the fixed rerun replaces."""
    root = make_medmnist(tmp_path / "data")
    config = tmp_path / "configs" / "site.yaml"
    shipped = yaml.safe_load((CONFIG_DIR / FINETUNE_CONFIG).read_text())
    shipped["backbone"]["path"] = "../tiny_mae_typo"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(shipped))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    command = ["run", "finetune", "--config", config, "data.root=../data", "output_dir=out", *FAST,
               "train.max_steps=2"]
    assert run_cli(*command) == 2
    err = capsys.readouterr().err
    assert f"'{tmp_path / 'tiny_mae_typo'}' does not exist" in err and "would not run" in err
    assert not (tmp_path / "work" / "out").exists()  # refused before the run folder exists

    os.symlink(tiny_mae, tmp_path / "tiny_mae")
    shipped["backbone"]["path"] = "../tiny_mae"  # fixed: relative to the config file
    config.write_text(yaml.safe_dump(shipped))
    good = (root / "breastmnist.npz").read_bytes()
    (root / "breastmnist.npz").write_bytes(good[:100])  # a broken data file: found only when read
    assert run_cli(*command) == 2
    out = tmp_path / "work" / "out"
    assert json.loads((out / "status.json").read_text())["status"] == "failed" and not (out / "checkpoints").exists()
    capsys.readouterr()

    (root / "breastmnist.npz").write_bytes(good)  # fixed; the same command again
    assert run_cli(*command) == 0
    captured = capsys.readouterr()
    assert "replacing the failed run in 'out' (it had no checkpoint to continue from; it failed with: " \
           "TppError" in captured.err
    assert json.loads((out / "status.json").read_text())["status"] == "succeeded"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["backbone"]["path"] == str(tmp_path / "tiny_mae") and saved["data"]["root"] == str(root)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "replaced_failed_run" and not any(r.get("event") == "failed" for r in log)


def run_folder(path, status=None, checkpoints=(), error="TppError: boom"):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("recipe: finetune\n")
    if status:
        (path / "status.json").write_text(json.dumps({"status": status, "error": error}))
    for name in checkpoints:
        (path / "checkpoints" / name).mkdir(parents=True)
    return path


def test_resume_of_a_run_that_failed_before_its_first_checkpoint_starts_it_over_and_says_so(tmp_path, capsys):
    """Ctrl-C before the first checkpoint, then train.resume=auto: nothing to continue. It used to start again
    silently, appending a second step 1 to the old log; now the failed run is replaced, as without resume."""
    out = run_folder(tmp_path / "out", "failed", error="KeyboardInterrupt: ")
    (out / "log.jsonl").write_text('{"event": "step", "step": 1}\n')
    run = RunDir(out, resume=True)
    try:
        assert "replacing the failed run in" in capsys.readouterr().err and run.set_aside is None
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert [r["event"] for r in log] == ["replaced_failed_run"] and log[0]["error"] == "KeyboardInterrupt: "
        assert json.loads((out / "status.json").read_text())["status"] == "running"
    finally:
        run.release()
    with_checkpoint = run_folder(tmp_path / "ck", "failed", ["step-2"])  # something to continue: continued
    run = RunDir(with_checkpoint, resume=True)
    run.release()
    assert (with_checkpoint / "checkpoints" / "step-2").is_dir() and "replacing" not in capsys.readouterr().err


@pytest.mark.parametrize("checkpoints, said", [
    (["step-4"], "Extend it with train.resume=auto and a larger train.max_steps; pass --overwrite"),
    ([], "It has no checkpoint, so train.resume cannot extend it; pass --overwrite"),
])
def test_a_finished_run_in_the_way_is_offered_no_resume_to_continue_it(tmp_path, checkpoints, said):
    """A finished run was told "train.resume=auto continues a run from its newest checkpoint", which on a finished
    run has nothing to continue (it only extends one that has a checkpoint of its last step)."""
    out = run_folder(tmp_path / "out", "succeeded", checkpoints)
    (out / "log.jsonl").write_text('{"event": "step", "step": 4}\n')
    with pytest.raises(TppError) as info:
        RunDir(out)
    assert str(info.value).startswith(f"output_dir '{out}' holds a finished run") and said in str(info.value)


@pytest.mark.parametrize("status, checkpoints, said", [
    ("failed", ["step-2", "step-4"], "holds a failed run with checkpoints (newest: step-4); it failed with: TppError"),
    ("succeeded", ["step-4"], "holds a finished run (newest: step-4)"),
    ("running", [], "holds a run that is still running or was killed"),
    (None, [], "is not empty and holds no tpp run (config.yaml"),
])
def test_a_run_folder_that_is_not_replaced_says_how_to_continue_or_start_over(tmp_path, status, checkpoints, said):
    out = run_folder(tmp_path / "out", status, checkpoints)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(TppError) as info:
        RunDir(out)
    message = str(info.value)
    assert message.startswith(f"output_dir '{out}' {said}")
    resume = "train.resume=auto" if status else "It is no run to continue"  # resume would not take it either
    assert resume in message and "--overwrite" in message and "output_dir=..." in message
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    if status is None:  # a folder holding just a config.yaml (a project's own) is no run: never emptied
        assert "not even with --overwrite" in message
        with pytest.raises(TppError, match="not even with --overwrite"):
            RunDir(out, overwrite=True)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
        return
    assert RunDir(out, overwrite=True).path == out and not (out / "config.yaml").exists()  # --overwrite: starts over


def test_resume_never_writes_a_run_into_a_folder_that_holds_none(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("hi")
    with pytest.raises(TppError, match=r"holds no tpp run \(notes.txt\), so train.resume has nothing to continue"):
        RunDir(out, resume=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert RunDir(empty, resume=True).path == empty  # nothing there yet: a new run starts


def test_a_failed_run_without_a_checkpoint_is_replaced(tmp_path, capsys):
    out = run_folder(tmp_path / "out", "failed", [], error="TppError: data file broken")
    (out / "checkpoints").mkdir()  # the folder, but no step-N in it
    (out / "checkpoints" / ".step-2.tmp").mkdir()  # a half-written one is no checkpoint
    run = RunDir(out)
    assert "replacing the failed run" in capsys.readouterr().err
    run.release()  # (its lock file goes with it)
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl", "status.json"]
    assert json.loads((out / "status.json").read_text())["status"] == "running"
    assert run.path == out


def test_a_folder_of_the_users_that_says_failed_is_never_deleted(tmp_path):
    """A status.json saying "failed" beside files no run writes (a thesis, data) is not a failed run of tpp's:
    refused, every file kept, instead of replaced."""
    out = run_folder(tmp_path / "out", "failed", [], error="from another tool")
    (out / "thesis.tex").write_text("months of work")
    (out / "data").mkdir()
    (out / "data" / "scans.npz").write_bytes(b"x")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(TppError, match="also holds files no run writes"):
        RunDir(out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# -- extending a run ------------------------------------------------------------------------------------

EXTEND = [*FAST, "train.checkpoint_every=2", "train.select_best=false", "train.warmup_ratio=0.25"]


def logged(out, event):
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r.get("event") == event]


def expected_lrs(base_lr: float, total: int, warmup_ratio: float, steps: range) -> list[float]:
    """The learning rate after each step of a warm-up + cosine schedule planned for ``total`` steps."""
    import torch

    from tpp.training import make_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = make_scheduler(optimizer, warmup_ratio, total)
    lrs = {}
    for step in range(1, total + 1):
        optimizer.step()
        scheduler.step()
        lrs[step] = scheduler.get_last_lr()[0]
    return [lrs[s] for s in steps]


def test_a_finished_run_extends_to_a_larger_max_steps(tiny_mae, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune(tiny_mae, data_root, out, *EXTEND, "train.max_steps=4") == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]  # the last step too
    first = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert finetune(tiny_mae, data_root, out, *EXTEND, "train.max_steps=7", "train.resume=auto") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 7 and first["steps"] == 4
    assert logged(out, "resumed")[-1] | {"time": 0} == {"time": 0, "event": "resumed", "step": 4,
                                                        "checkpoint": "step-4", "steps": 7}
    steps = logged(out, "step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6, 7]  # one log: the first 4 steps, then the rest
    lr = load_config(CONFIG_DIR / FINETUNE_CONFIG).train.lr
    # documented: the schedule is the one planned for the new total, from the resumed step on
    assert [r["lr"] for r in steps[4:]] == pytest.approx(expected_lrs(lr, 7, 0.25, range(5, 8)), rel=1e-6)
    assert [r["lr"] for r in steps[:4]] == pytest.approx(expected_lrs(lr, 4, 0.25, range(1, 5)), rel=1e-6)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-6", "step-7"]
    assert json.loads((out / "status.json").read_text())["status"] == "succeeded"

    assert finetune(tiny_mae, data_root, out, *EXTEND, "train.max_steps=7", "train.resume=auto") == 0
    assert "already finished" in capsys.readouterr().out  # nothing more to do
    assert finetune(tiny_mae, data_root, out, *EXTEND, "train.max_steps=5", "train.resume=auto") == 2
    assert "train.max_steps: the finished run in" in capsys.readouterr().err  # a resume may not shorten the run
    assert finetune(tiny_mae, data_root, out, *EXTEND, "train.max_steps=9", "train.resume=auto", "train.lr=0.5") == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.001 -> 0.5" in err and "only a larger train.max_steps may change" in err


def test_a_run_without_its_last_checkpoint_cannot_be_extended(tiny_mae, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune(tiny_mae, data_root, out, *FAST, "train.max_steps=2") == 0  # no train.checkpoint_every
    capsys.readouterr()
    assert finetune(tiny_mae, data_root, out, *FAST, "train.max_steps=4", "train.resume=auto") == 2
    err = capsys.readouterr().err
    assert "finished at step 2 but has no checkpoint of that step (none)" in err and "train.checkpoint_every" in err


def test_an_interrupted_run_extends_past_its_checkpoint_but_not_below_it(tmp_path, capsys):
    """The checks before anything is touched (what the training loop then does is tested above)."""
    from tpp.recipes.resume import check_resume

    out = run_folder(tmp_path / "out", "running", ["step-4", "step-6"])
    args = [f"output_dir={out}", "train.resume=auto"]
    (out / "config.yaml").write_text(yaml.safe_dump(load_config(CONFIG_DIR / FINETUNE_CONFIG, args).to_dict()))
    check_resume(out, load_config(CONFIG_DIR / FINETUNE_CONFIG, args))  # the planned total (epochs): fine
    check_resume(out, load_config(CONFIG_DIR / FINETUNE_CONFIG, [*args, "train.max_steps=6"]))
    with pytest.raises(TppError, match=r"train\.max_steps=5 is below step 6 of the checkpoint.*train\.max_steps=6"):
        check_resume(out, load_config(CONFIG_DIR / FINETUNE_CONFIG, [*args, "train.max_steps=5"]))
    with pytest.raises(TppError, match=r"train\.epochs: 30 -> 3"):
        check_resume(out, load_config(CONFIG_DIR / FINETUNE_CONFIG, [*args, "train.epochs=3"]))


# -- wall time ------------------------------------------------------------------------------------------

def test_wall_time_counts_from_the_start_of_the_command(tiny_mae, data_root, tmp_path, monkeypatch, capsys):
    """Evaluate reported 0 s after 31 s: time spent loading the config and the backbone counts (each made
    to take at least 0.6 s here), in what `tpp run` prints and in metrics.json."""
    import tpp.config
    import tpp.recipes.evaluate as evaluate_recipe

    assert finetune(tiny_mae, data_root, tmp_path / "ft") == 0
    load_config, load_backbone = tpp.config.load_config, evaluate_recipe.load_backbone

    def slow(real):
        def wrapped(*args, **kwargs):
            time.sleep(0.6)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(tpp.config, "load_config", slow(load_config))
    monkeypatch.setattr(evaluate_recipe, "load_backbone", slow(load_backbone))
    capsys.readouterr()
    assert run_cli(*recipe_args("evaluate", FINETUNE_CONFIG, tiny_mae, data_root, tmp_path / "ev",
                                f"adapter.path={tmp_path / 'ft' / 'adapter'}")) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["wall_time_s"] >= 1.2 and "auroc" in metrics["test"]
    printed = capsys.readouterr().out
    seconds = float(printed.split("evaluate finished in ", 1)[1].split("s", 1)[0])
    assert seconds >= 1 and abs(seconds - metrics["wall_time_s"]) <= 1


def test_overwrite_deletes_the_previous_run_only_once_the_new_one_succeeds(tiny_mae, tmp_path, capsys):
    """A run with --overwrite that fails (here on a positive class the data lacks, found once it is loaded) used to
    leave the previous run's metrics deleted."""
    root = make_medmnist(tmp_path / "data")
    out = tmp_path / "run"
    assert finetune(tiny_mae, root, out) == 0
    metrics = (out / "metrics.json").read_text()
    code = run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, root, out, "train.max_steps=2", *FAST,
                                "classification.positive_class=cancer", "--overwrite"))
    assert code == 2 and "the previous contents of" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == metrics and json.loads((out / "status.json").read_text())[
        "status"] == "succeeded"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # nothing set aside is left behind
    assert finetune(tiny_mae, root, out, "seed=1", "--overwrite") == 0
    assert (out / "metrics.json").read_text() != metrics and sorted(p.name for p in tmp_path.iterdir()) == [
        "data", "run"]


def test_a_failed_overwrite_that_left_checkpoints_keeps_both(tmp_path):
    out = run_folder(tmp_path / "out", "succeeded")
    run = RunDir(out, overwrite=True)
    (out / "checkpoints" / "step-2").mkdir(parents=True)  # the new run got far enough to resume
    note = run.restore_overwritten()
    run.release()
    aside = [p for p in out.iterdir() if p.name.startswith(".overwritten-")]
    assert len(aside) == 1 and str(aside[0]) in note and (aside[0] / "status.json").is_file()
    assert (out / "checkpoints" / "step-2").is_dir()
    failed_again = RunDir(out, resume=True)  # a resumed run that fails too keeps what was set aside
    failed_again.status("failed")
    failed_again.release()
    assert aside[0].is_dir()
    resumed = RunDir(out, resume=True)  # the resumed run that succeeds completes the overwrite
    resumed.succeeded()
    assert not aside[0].exists() and (out / "checkpoints" / "step-2").is_dir()


def test_overwrite_works_in_a_folder_that_cannot_be_renamed_and_restores_on_a_failed_start(tmp_path, monkeypatch):
    """The previous contents are set aside inside output_dir (a mount point or a linked folder cannot be renamed),
    and a failure right after (a full disk writing status.json) puts them back before the error is raised."""
    import tpp.rundir as rundir

    target = run_folder(tmp_path / "real", "succeeded")
    (tmp_path / "link").symlink_to(target)
    real_status = RunDir.status

    def full_disk(self, state, **extra):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir.RunDir, "status", full_disk)
    with pytest.raises(OSError):
        RunDir(tmp_path / "link", overwrite=True)
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in target.iterdir()) == ["config.yaml",
                                                                                            "status.json"]
    monkeypatch.setattr(rundir.RunDir, "status", real_status)
    run = RunDir(tmp_path / "link", overwrite=True)
    run.succeeded()
    run.release()
    assert (tmp_path / "link").is_symlink() and sorted(p.name for p in target.iterdir()) == ["status.json"]


def test_a_second_process_in_a_folder_whose_run_is_still_going_is_refused(tmp_path):
    """A resume started while the run was still going used to train beside it (18 interleaved step records)."""
    first = RunDir(tmp_path / "out")
    with pytest.raises(TppError, match="is in use by another tpp process"):
        RunDir(tmp_path / "out", resume=True)
    with pytest.raises(TppError, match="is in use by another tpp process"):
        RunDir(tmp_path / "out", overwrite=True)
    assert json.loads((tmp_path / "out" / "status.json").read_text())["status"] == "running"
    from tpp.recipes import find_config, run_recipe

    first.write_config({"recipe": "finetune", "train": {"checkpoint_every": 5}})  # the running run's
    with pytest.raises(TppError, match="is in use by another tpp process"):  # said first, not "config differs"
        run_recipe("finetune", find_config(FINETUNE_CONFIG), ["train.resume=auto", "train.checkpoint_every=7",
                                                              f"output_dir={tmp_path / 'out'}"])
    first.status("failed")
    first.release()  # the run is over (or its process died): the folder is free again
    RunDir(tmp_path / "out", resume=True).release()


def test_a_finished_run_is_put_back_only_when_no_checkpoint_was_rewritten_and_data_is_compared_only_to_continue(
        tmp_path):
    """restore_finished compared checkpoint names only (a rewritten step-2 was called unchanged); log_data
    compared the data of a run restarting at step 1 (no checkpoint)."""
    import os

    out = run_folder(tmp_path / "out", "succeeded", checkpoints=("step-2",))
    state = out / "checkpoints" / "step-2" / "state.pt"
    state.write_bytes(b"first")
    run = RunDir(out, resume=True)
    state.write_bytes(b"rewritten by the extension")
    os.utime(state, ns=(1, 1))
    run.status("failed")
    assert run.restore_finished() is None and json.loads((out / "status.json").read_text())["status"] == "failed"
    run.release()
    fresh = run_folder(tmp_path / "fresh", "failed")
    RunDir(fresh).release()  # (a failed run without checkpoints is replaced: start over, as the recipe does)
    first = RunDir(fresh, resume=True)
    first.log_data(True, train=546)
    first.release()
    RunDir(fresh, resume=True).log_data(True, train=540)  # no checkpoint: it starts at step 1, nothing to compare


@pytest.mark.parametrize("text, why", [("{\"status\": \"runn", "it is not JSON"), ("[1, 2]", "it holds no run status"),
                                       ("{\"status\": \"done\"}", "it holds no run status")])
def test_a_damaged_status_json_is_named_as_such_not_called_no_run(tmp_path, text, why):
    """A run folder whose status.json was cut short or edited used to be called 'no tpp run'; it is a damaged
    run folder, refused as such by a new run, by train.resume and by publishing its adapter."""
    from tpp.serve.store import read_source

    out = run_folder(tmp_path / "out", None, ["step-2"])
    (out / "status.json").write_text(text)
    for resume in (False, True):
        with pytest.raises(TppError, match=rf"holds a damaged status.json \({why}.*train.resume will not continue"):
            RunDir(out, resume=resume)
    (out / "adapter").mkdir()
    (out / "adapter" / "tpp_card.json").write_text("{}")
    with pytest.raises(TppError, match=rf"damaged status.json \({why}.*Publish '.*adapter' itself"):
        read_source(out)
    assert RunDir(out, overwrite=True).path == out  # --overwrite starts over


def test_a_run_continued_from_a_checkpoint_counts_its_earlier_segments_time(tmp_path):
    """wall_time_s of a resumed run used to be its last segment's alone; each segment's log times start at 0,
    so the segments are told apart where the time falls back. Started over (no checkpoint): not counted."""
    from tpp.rundir import logged_seconds

    out = run_folder(tmp_path / "out", "running", ["step-4"])
    lines = [{"time": 0.1, "event": "start"}, {"time": 50.0}, {"time": 0.2, "event": "start"}, {"time": 30.5}]
    (out / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"time": 9')  # cut short
    assert logged_seconds(out / "log.jsonl") == pytest.approx(80.5)
    run = RunDir(out, resume=True)
    assert 80.5 <= run.elapsed() < 80.5 + 60
    run.release()
    fresh = run_folder(tmp_path / "fresh", "running", [])
    (fresh / "log.jsonl").write_text(json.dumps({"time": 50.0}) + "\n")
    started_over = RunDir(fresh, resume=True)
    assert started_over.elapsed() < 50


@pytest.mark.parametrize("status_text", ['{"status": "succeeded"}', '{"state": "ok"}', "not json"])
def test_overwrite_never_empties_a_folder_of_the_users_with_a_stray_status_json(tmp_path, status_text):
    """A status.json of another tool (or no JSON at all) among the user's files made the folder a 'run' that
    --overwrite emptied (moved aside, deleted once the new run succeeded)."""
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    (out / "images" / "a.png").write_bytes(b"x")
    (out / "status.json").write_text(status_text)
    for overwrite in (False, True):
        with pytest.raises(TppError, match="it is no tpp run's folder.*not even with --overwrite"):
            RunDir(out, overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == ["images", "status.json"]
    (out / "log.jsonl").write_text('{"event": "step"}\n')  # a run's status.json and log: a run's folder
    if status_text.startswith('{"status"'):
        run = RunDir(out, overwrite=True)
        run.succeeded()
        run.release()
        assert sorted(p.name for p in out.iterdir()) == ["status.json"]


def test_resume_of_a_users_folder_with_a_damaged_status_json_does_not_advise_overwrite(tmp_path):
    """train.resume on a folder of the user's whose stray status.json is no JSON advised "--overwrite to start
    over", which then refused it (tpp never empties a folder that holds no run): both say the same."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "status.json").write_text("{not json")
    (out / "thesis.tex").write_text("months of work")
    for resume in (True, False):
        with pytest.raises(TppError, match="not even with --overwrite") as caught:
            RunDir(out, resume=resume)
        assert "pass --overwrite" not in str(caught.value)
    assert sorted(p.name for p in out.iterdir()) == ["status.json", "thesis.tex"]
