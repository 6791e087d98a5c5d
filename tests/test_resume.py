"""Checkpoints and resume: SIGKILL at a step or in the middle of a checkpoint write, resume, and end exactly
where an uninterrupted run ends. The crash is injected by the test, in the run's own process (a patch applied
before the CLI starts): tpp itself has no test hook."""
import json

import pytest
import torch
from helpers import FAST, FINETUNE_CONFIG, recipe_args, run_cli, run_cli_subprocess, tpp
from safetensors.torch import load_file

from tpp.errors import TppError

STEPS = ["train.max_steps=8", "train.checkpoint_every=2", "train.select_best=false"]  # last step: the whole path counts

# Run in the CLI's process before it starts: SIGKILL that process at step STEP.
# at_step: once step STEP is done (its log line and any evaluation written), before its checkpoint is considered;
# the training loop asks Checkpointer.due(step, ...) exactly there, once per step.
# in_checkpoint: while step STEP's checkpoint is written, its trainable tensors in the temporary folder and
# its state.pt not yet.
CRASH = """
import os
import signal
from pathlib import Path

import tpp.checkpoint as checkpoint

WHERE, STEP = {where!r}, {step!r}


def crash():
    os.kill(os.getpid(), signal.SIGKILL)


if WHERE == "at_step":
    due = checkpoint.Checkpointer.due

    def due_or_crash(self, step, num_steps):
        if step == STEP:
            crash()
        return due(self, step, num_steps)

    checkpoint.Checkpointer.due = due_or_crash
elif WHERE == "in_checkpoint":
    save_file = checkpoint.save_file

    def save_file_then_crash(tensors, filename, *args, **kwargs):
        save_file(tensors, filename, *args, **kwargs)
        if Path(filename).name == "trainable.safetensors" and Path(filename).parent.name == f".step-{{STEP}}.tmp":
            crash()

    checkpoint.save_file = save_file_then_crash
else:
    raise ValueError(WHERE)
"""


def args(tiny_mae, root, out, *extra):
    return recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, root, out, *FAST, *STEPS, *extra)


def killed(tiny_mae, root, out, where: str, step: int):
    """The run in its own process, SIGKILLed at ``where`` (at_step, in_checkpoint) of step ``step``."""
    return run_cli_subprocess(*args(tiny_mae, root, out), prelude=CRASH.format(where=where, step=step))


def tensors(run):
    return {**load_file(run / "adapter" / "adapter_model.safetensors"),
            **load_file(run / "adapter" / "head.safetensors")}


@pytest.fixture(scope="module")
def reference(tiny_mae, tmp_path_factory):
    from conftest import make_medmnist

    root = make_medmnist(tmp_path_factory.mktemp("resume_data"))
    out = tmp_path_factory.mktemp("resume") / "ref"
    assert run_cli(*args(tiny_mae, root, out)) == 0
    return root, out


def assert_same_end(ref, run):
    a, b = tensors(ref), tensors(run)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    assert ma["test"]["auroc"] == pytest.approx(mb["test"]["auroc"], abs=1e-9) and ma["best_step"] == mb["best_step"]


def test_sigkill_at_a_step_then_resume_ends_like_an_uninterrupted_run(tiny_mae, reference, tmp_path):
    root, ref = reference
    out = tmp_path / "run"
    assert killed(tiny_mae, root, out, "at_step", 5).returncode == -9
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert json.loads((out / "status.json").read_text())["status"] == "running" and not (out / "adapter").exists()
    assert run_cli(*args(tiny_mae, root, out, "train.resume=auto")) == 0
    assert '"event": "resumed", "step": 4' in (out / "log.jsonl").read_text()
    assert_same_end(ref, out)
    # the newest 2; the last step is saved too
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-6", "step-8"]


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_1_and_says_so(tiny_mae, reference, tmp_path,
                                                                                   capsys):
    root, ref = reference
    out = tmp_path / "run"
    assert killed(tiny_mae, root, out, "at_step", 1).returncode == -9
    assert json.loads((out / "status.json").read_text())["status"] == "running" and not (out / "checkpoints").exists()
    capsys.readouterr()
    assert run_cli(*args(tiny_mae, root, out, "train.resume=auto")) == 0
    assert "train.resume=auto: no checkpoint in" in capsys.readouterr().err
    assert '"event": "resume_found_no_checkpoint"' in (out / "log.jsonl").read_text()
    assert_same_end(ref, out)


def test_sigkill_during_a_checkpoint_write_leaves_no_complete_looking_checkpoint(tiny_mae, reference, tmp_path):
    root, ref = reference
    out = tmp_path / "run"
    assert killed(tiny_mae, root, out, "in_checkpoint", 4).returncode == -9
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == [".step-4.tmp", "step-2"]  # the half-written one is not named like a checkpoint
    assert run_cli(*args(tiny_mae, root, out, "train.resume=auto")) == 0
    assert '"event": "resumed", "step": 2' in (out / "log.jsonl").read_text()
    assert_same_end(ref, out)


def test_checkpoint_holds_only_what_trains_and_loads_without_pickle(tiny_mae, reference, tmp_path, capsys, recwarn):
    root, ref = reference
    step = ref / "checkpoints" / "step-6"
    trainable = load_file(step / "trainable.safetensors")
    assert all("lora_" in k or k.startswith("head.") for k in trainable)  # no backbone tensor
    size = sum(f.stat().st_size for f in step.iterdir())
    weights = (step / "trainable.safetensors").stat().st_size
    assert size < 4 * weights + 64 * 1024  # tensors + two Adam moments + small state, not a model
    torch.load(step / "state.pt", weights_only=True)
    run = tmp_path / "evil"
    assert run_cli(*args(tiny_mae, root, run)) == 0
    import pickle

    (run / "checkpoints" / "step-8" / "state.pt").write_bytes(pickle.dumps(print))
    (run / "status.json").write_text('{"status": "running"}')  # as a run killed after step 8 leaves it
    assert run_cli(*args(tiny_mae, root, run, "train.resume=auto")) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and "damaged, or not one tpp wrote" in err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "weights_only` to `False`" not in err  # one line, not torch's advice
    earlier = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name != "step-8")
    if earlier:  # the way on: an earlier checkpoint of the same run
        assert f"Earlier checkpoints: {', '.join(earlier)}" in err
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # the error, not torch's notes on the file
    other = tmp_path / "other"
    assert run_cli(*args(tiny_mae, root, other, f"train.resume={tmp_path / 'not_a_checkpoint'}")) == 2
    assert "is not a complete checkpoint folder" in capsys.readouterr().err and not other.exists()


def test_resume_refuses_a_changed_config(tiny_mae, reference, tmp_path, capsys):
    root, ref = reference
    out = tmp_path / "run"
    assert killed(tiny_mae, root, out, "at_step", 3).returncode == -9
    assert run_cli(*args(tiny_mae, root, out, "train.resume=auto", "train.lr=0.5")) == 2
    assert "train.lr" in capsys.readouterr().err


def test_a_moved_run_folder_resumes_where_it_now_is(tiny_mae, reference, tmp_path):
    """The folder is the run: moved (to another disk, a shared drive), it continues there to the same end; its
    old output_dir in config.yaml was refused as a changed config."""
    import shutil

    root, ref = reference
    assert killed(tiny_mae, root, tmp_path / "scratch", "at_step", 5).returncode == -9
    out = tmp_path / "project" / "run"
    out.parent.mkdir()
    shutil.move(tmp_path / "scratch", out)
    assert run_cli(*args(tiny_mae, root, out, "train.resume=auto")) == 0
    assert_same_end(ref, out)
    assert f"output_dir: {out}" in (out / "config.yaml").read_text()
    assert not (tmp_path / "scratch").exists()  # nothing written to where it was


def test_dino_tpp_resumes_exactly_with_its_teacher_and_centre(tiny_mae, reference, tmp_path):
    root, _ = reference
    extra = ["pretext.name=dino", "train.max_steps=4", "train.checkpoint_every=2"]
    assert tpp(tiny_mae, root, tmp_path / "full", *extra) == 0
    checkpoint = tmp_path / "full" / "checkpoints" / "step-2"
    assert "center" in load_file(checkpoint / "extra.safetensors")
    assert tpp(tiny_mae, root, tmp_path / "resumed", *extra, f"train.resume={checkpoint}") == 0
    a, b = (load_file(tmp_path / r / "adapter" / "adapter_model.safetensors") for r in ("full", "resumed"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def _snapshot(run):
    """(bytes, mtime_ns) of every file of a run directory."""
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))
            if p.is_file()}


def test_resuming_a_finished_run_says_so_and_touches_nothing(tiny_mae, reference, tmp_path, capsys):
    root, ref = reference
    out = tmp_path / "again"
    assert run_cli(*args(tiny_mae, root, out)) == 0
    capsys.readouterr()
    before = _snapshot(out)
    # train.resume=PATH of one of its own checkpoints re-ran the steps after it and rewrote the adapter
    for resume in ("auto", out / "checkpoints" / "step-8", out / "checkpoints" / "step-6"):
        assert run_cli(*args(tiny_mae, root, out, f"train.resume={resume}")) == 0
        printed = capsys.readouterr().out.strip().splitlines()
        assert len(printed) == 1 and f"'{out}' already finished" in printed[0], printed
        assert f"train.resume={resume} has nothing to do" in printed[0] and "--overwrite" in printed[0]
        assert "another output_dir=..." in printed[0]
        assert _snapshot(out) == before  # adapter, metrics, log, status and checkpoints: same bytes, same mtimes
    assert_same_end(ref, out)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert run_cli(*args(tiny_mae, root, out, "train.resume=auto", "train.lr=0.5")) == 2  # changed config: an error
    err = capsys.readouterr().err  # it said "the interrupted run": the run finished
    assert f"the config differs from the finished run in '{out}' (train.lr: " in err and "nothing was trained" in err
    assert "another output_dir=..." in err and "--overwrite" in err and _snapshot(out) == before


def test_a_failed_checkpoint_write_leaves_no_temp_folder(tmp_path, monkeypatch):
    import errno

    import tpp.checkpoint as checkpoint
    from tpp.errors import TppError

    saver = checkpoint.Checkpointer(tmp_path, every=1, keep=2)
    weights = {"w": torch.ones(2)}
    saver.save(1, weights, None, {}, {"losses": []})

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(TppError, match=r"cannot write checkpoint '.*step-2': No space left on device"):
        saver.save(2, weights, None, {}, {"losses": []})
    assert sorted(p.name for p in saver.dir.iterdir()) == ["step-1"]  # no .step-2.tmp, the good one stays
    assert saver.latest().name == "step-1"


def test_an_interrupted_run_extends_to_a_larger_max_steps(tiny_mae, reference, tmp_path):
    root, _ = reference
    out = tmp_path / "run"
    assert killed(tiny_mae, root, out, "at_step", 5).returncode == -9  # planned for 8 steps, checkpoint at 4
    assert run_cli(*args(tiny_mae, root, out, "train.resume=auto", "train.max_steps=10")) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 10
    assert '"event": "resumed", "step": 4, "checkpoint": "step-4", "steps": 10' in (out / "log.jsonl").read_text()
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-8", "step-10"}


def test_a_run_saved_before_split_seed_resumes_only_on_its_own_split(tmp_path):
    """Before ``data.split_seed``, ``seed`` drew the split and a null ``val_label_fraction`` meant the whole val
    split: resuming such a run under today's defaults is refused, naming the values that keep its split."""
    import yaml

    from tpp.errors import TppError
    from tpp.recipes.resume import check_same_config

    saved = {"seed": 2, "data": {"name": "busi", "label_fraction": 0.1, "val_label_fraction": None}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    today = {"seed": 2, "data": {"name": "busi", "label_fraction": 0.1, "val_label_fraction": None, "split_seed": 0}}
    with pytest.raises(TppError, match=r"data.split_seed: 2 -> 0.*data.val_label_fraction: 1.0 -> None"):
        check_same_config(tmp_path, today)
    check_same_config(tmp_path, {"seed": 2, "data": dict(today["data"], split_seed=2, val_label_fraction=1.0)})
    all_labels = {"seed": 0, "data": {"name": "busi", "label_fraction": 1.0, "val_label_fraction": None}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(all_labels))  # seed 0, all labels: nothing changed
    check_same_config(tmp_path, {"seed": 0, "data": dict(all_labels["data"], split_seed=0)})


def _tamper_state(step, change):
    state = torch.load(step / "state.pt", weights_only=True)
    torch.save(change(state), step / "state.pt")


def _tamper_trainable(step, change):
    from safetensors.torch import save_file

    save_file(change(load_file(step / "trainable.safetensors")), step / "trainable.safetensors")


def _widen_first(tensors):
    name = sorted(tensors)[0]
    return {**tensors, name: tensors[name][:1].clone()}  # another adapter.r: one row, which would broadcast


@pytest.mark.parametrize("tamper, said", [
    (lambda s: _tamper_state(s, lambda st: [st]), "state.pt holds a list, not a mapping"),
    (lambda s: _tamper_state(s, lambda st: {**st, "batches": 10**12}), "batches were used by step 8"),
    (lambda s: _tamper_state(s, lambda st: {k: v for k, v in st.items() if k != "optimizer"}), "lacks optimizer"),
    (lambda s: _tamper_state(s, lambda st: {**st, "rng": {"torch": 1}}), "does not fit this run, or is damaged"),
    (lambda s: _tamper_trainable(s, _widen_first), "has shape (1, "),
    (lambda s: _tamper_trainable(s, lambda t: {k: v.fill_(float("nan")) for k, v in t.items()}), "not finite"),
])
def test_a_damaged_checkpoint_is_refused_naming_it_before_anything_is_applied(tiny_mae, reference, tmp_path, capsys,
                                                                             tamper, said):
    """What a checkpoint holds is checked before it is applied: a foreign state, a batch count that would replay
    the loader for ever, a tensor of another shape (it would broadcast in silently), NaN. A TppError (exit 2)
    naming the checkpoint, never a traceback or a hang, and the run folder's adapter is not replaced."""
    import shutil

    root, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(ref), str(run)))  # moved
    tamper(run / "checkpoints" / "step-8")
    (run / "status.json").write_text('{"status": "running"}')  # as a run killed after step 8 leaves it
    before = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert run_cli(*args(tiny_mae, root, run, "train.resume=auto")) == 2
    err = capsys.readouterr().err
    assert "checkpoints/step-8" in err and said in err and "Traceback" not in err
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == before


@pytest.mark.parametrize("text, said", [(b"train: [unclosed\n", "is not valid YAML: while parsing"),
                                        (b"!!python/object/apply:os.system ['true']\n", "is not valid YAML"),
                                        (b"\xff\xfe", "is not UTF-8"), (b"- 1\n- 2\n", "must hold a mapping"),
                                        (b"", "is empty"),
                                        (b"# only a comment\n", "is empty (or holds only comments).")])
def test_a_damaged_run_config_is_refused_naming_it(tiny_mae, reference, tmp_path, capsys, text, said):
    """train.resume reads the interrupted run's config.yaml back: broken YAML (its whole message: where it
    broke), a python tag (never constructed), bytes that are no UTF-8, a list or nothing give a TppError naming
    it, not a traceback, and not a list of every setting as 'changed'."""
    import shutil

    root, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "config.yaml").write_bytes(text)
    (run / "status.json").write_text('{"status": "running"}')
    assert run_cli(*args(tiny_mae, root, run, "train.resume=auto")) == 2
    err = capsys.readouterr().err
    assert f"the interrupted run's config is damaged: config file '{run / 'config.yaml'}' {said}" in err
    assert "Traceback" not in err and "differs" not in err
    if said.endswith("while parsing"):
        assert "line 1, column 8" in err  # where it broke, not cut off


def test_rotation_deletes_only_checkpoints_and_a_renamed_step_is_refused(tmp_path):
    """A linked checkpoints/ may hold the user's own step-1/ (other files): rotation never deletes it, nor
    replaces it. A step-9 folder whose state says step 4 (a link or a rename) is refused at load."""
    from tpp.checkpoint import Checkpointer

    (tmp_path / "checkpoints" / "step-1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-1" / "precious.txt").write_text("x")
    ckpt = Checkpointer(tmp_path, every=1, keep=1)
    tensors = {"w": torch.zeros(2)}
    for step in (2, 3):
        ckpt.save(step, tensors, None, {}, {"batches": step})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1", "step-3"]
    assert (tmp_path / "checkpoints" / "step-1" / "precious.txt").is_file()
    with pytest.raises(TppError, match="exists and is no checkpoint"):
        ckpt.save(1, tensors, None, {}, {"batches": 1})
    (tmp_path / "checkpoints" / "step-9").symlink_to(tmp_path / "checkpoints" / "step-3")
    with pytest.raises(TppError, match="holds step 3, not the step its name says"):
        Checkpointer(tmp_path, every=1, resume="auto").load()


def test_the_first_step_of_an_extended_run_trains_at_the_new_curves_rate(tiny_mae, reference, tmp_path):
    """The optimizer's saved rate was the finished schedule's last (0 at the end of the cosine), so the first step
    after extending train.max_steps did not change a weight (found by a README walkthrough)."""
    root, _ = reference
    out = tmp_path / "run"
    every = ["train.checkpoint_every=1", "train.keep_checkpoints=10", "train.select_best=false"]
    assert run_cli(*args(tiny_mae, root, out, *every, "train.max_steps=2")) == 0
    assert run_cli(*args(tiny_mae, root, out, *every, "train.max_steps=3", "train.resume=auto")) == 0
    before, after = (load_file(out / "checkpoints" / f"step-{n}" / "trainable.safetensors") for n in (2, 3))
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("recipe, config, overrides", [
    ("finetune", "breast_us/mae_vit_tiny_lora_finetune.yaml", ["adapter.method=bottleneck"]),
    ("finetune", "breast_us/mae_vit_tiny_lora_finetune.yaml", ["adapter.method=[visual_prompt, lora]"]),
    ("finetune", "breast_us/mae_vit_tiny_lora_finetune.yaml", ["data.source=npz", "data.file=x.npz",
                                                               "data.modality=US"]),
    ("tpp", "breast_us/mae_vit_tiny_lora_tpp.yaml", ["pretext.name=dino"]),
])
def test_a_run_of_another_method_pretext_or_source_resumes_under_its_own_config(tmp_path, recipe, config, overrides):
    """The defaults that fill keys a saved config lacks were the default plugins': every bottleneck, DINO or npz
    run was refused on train.resume=auto ("adapter.r: 8 -> None")."""
    import yaml

    from tpp.config import load_config
    from tpp.recipes import CONFIG_DIR
    from tpp.recipes.resume import check_resume

    cfg = load_config(CONFIG_DIR / config, [*overrides, f"output_dir={tmp_path}", "train.resume=auto"],
                      recipe=recipe)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "train": {
        **cfg.to_dict()["train"], "resume": None}}))
    check_resume(tmp_path, cfg)
    changed = load_config(CONFIG_DIR / config, [*overrides, f"output_dir={tmp_path}", "train.resume=auto",
                                                "train.lr=0.5"], recipe=recipe)
    with pytest.raises(TppError, match=r"train.lr: .* -> 0.5"):
        check_resume(tmp_path, changed)


def test_resume_without_the_runs_config_or_from_another_runs_checkpoint_compares_that_runs_config(
        tiny_mae, reference, tmp_path, capsys):
    """A deleted config.yaml switched the check off (the run resumed with another lr and label fraction), and a
    checkpoint of another run was compared with nothing."""
    import shutil

    root, ref = reference
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    (run / "config.yaml").unlink()
    assert run_cli(*args(tiny_mae, root, run, "train.resume=auto", "train.max_steps=12")) == 2
    assert "the config of the run whose checkpoint would be continued, is missing" in capsys.readouterr().err
    assert run_cli(*args(tiny_mae, root, tmp_path / "other", f"train.resume={ref / 'checkpoints' / 'step-6'}",
                         "train.lr=0.5")) == 2
    assert f"the config differs from the finished run in '{ref}'" in capsys.readouterr().err  # its checkpoint
    assert not (tmp_path / "other").exists()
    shutil.copytree(ref / "checkpoints" / "step-6", tmp_path / "archive" / "step-6")  # a checkpoint kept on its own
    assert run_cli(*args(tiny_mae, root, tmp_path / "from_archive",
                         f"train.resume={tmp_path / 'archive' / 'step-6'}")) == 0


def test_a_refused_extension_leaves_the_finished_run_succeeded(tiny_mae, reference, tmp_path, capsys):
    """Extending a finished run whose last checkpoint is damaged is refused; the run's files are untouched and
    status.json used to say failed from then on (tpp compare then refused it)."""
    import shutil

    root, ref = reference
    run = tmp_path / "finished"
    shutil.copytree(ref, run)
    state = run / "checkpoints" / "step-8" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    assert run_cli(*args(tiny_mae, root, run, "train.resume=auto", "train.max_steps=12")) == 2
    assert "succeeded again" in capsys.readouterr().err
    assert json.loads((run / "status.json").read_text())["status"] == "succeeded"


def test_data_that_changed_between_segments_is_refused_on_resume(tiny_mae, tmp_path, capsys):
    """The file behind data.root was replaced between the segments: the resumed run trained and selected on
    other images without a word."""
    from conftest import make_medmnist

    root = make_medmnist(tmp_path / "data")
    out = tmp_path / "run"
    assert run_cli(*args(tiny_mae, root, out)) == 0
    make_medmnist(tmp_path / "data", n=(80, 20, 20), seed=1)  # the same path, other images
    assert run_cli(*args(tiny_mae, root, out, "train.resume=auto", "train.max_steps=12")) == 2
    err = capsys.readouterr().err
    assert "the data differs from the finished run's" in err and "train: 60 -> 80" in err
    assert "nothing was trained" in err and "another output_dir=..." in err
    assert json.loads((out / "status.json").read_text())["status"] == "succeeded"  # the finished run is intact
    with open(out / "log.jsonl", "a") as fh:
        fh.write('{"time": 1, "event": "st')  # a line cut short by a killed run
    make_medmnist(tmp_path / "data")
    assert run_cli(*args(tiny_mae, root, out, "train.resume=auto", "train.max_steps=10")) == 0
    assert all(line.endswith("}") for line in (out / "log.jsonl").read_text().splitlines()[-3:])


@pytest.mark.parametrize("finished", [True, False])
def test_another_runs_checkpoint_is_not_continued_over_a_run_in_output_dir(tiny_mae, reference, tmp_path, capsys,
                                                                            finished):
    """train.resume=OTHER/checkpoints/step-N with output_dir holding a finished run (or an interrupted one with
    checkpoints) re-ran OTHER's last steps there: the finished run's adapter and metrics were silently rewritten
    (exit 0), an interrupted run's checkpoints mixed with OTHER's."""
    import shutil

    from helpers import interrupted_at

    root, ref = reference
    out, other = tmp_path / "mine", tmp_path / "other"
    shutil.copytree(ref, out)
    shutil.copytree(ref, other)
    if not finished:
        interrupted_at(out, 6)
    before = _snapshot(out)
    assert run_cli(*args(tiny_mae, root, out, f"train.resume={other / 'checkpoints' / 'step-6'}")) == 2
    err = capsys.readouterr().err
    assert f"a checkpoint of the run in '{other}'" in err and "nothing was trained" in err, err
    assert ("holds a finished run" if finished else "holds an interrupted run") in err
    assert "another output_dir=..." in err and "train.resume=auto" in err and "Traceback" not in err
    assert _snapshot(out) == before
    assert run_cli(*args(tiny_mae, root, tmp_path / "new", f"train.resume={other / 'checkpoints' / 'step-6'}")) == 0


def test_a_finished_runs_own_checkpoint_behind_a_linked_checkpoints_folder_is_still_its_own(tiny_mae, reference,
                                                                                            tmp_path, capsys):
    """OUT/checkpoints linked to a scratch disk: train.resume=OUT/checkpoints/step-8 was taken for a checkpoint of
    a run in the scratch folder (the link resolved), so the finished run was not recognised as its own."""
    import shutil

    root, ref = reference
    out, scratch = tmp_path / "finished", tmp_path / "scratch" / "checkpoints"
    shutil.copytree(ref, out)
    scratch.parent.mkdir()
    shutil.move(out / "checkpoints", scratch)
    (out / "checkpoints").symlink_to(scratch, target_is_directory=True)
    before = _snapshot(out)
    assert run_cli(*args(tiny_mae, root, out, f"train.resume={out / 'checkpoints' / 'step-8'}")) == 0
    assert f"'{out}' already finished" in capsys.readouterr().out and _snapshot(out) == before
