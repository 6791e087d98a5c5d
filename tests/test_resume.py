"""Checkpoints and resume: SIGKILL at a step or in the middle of a checkpoint write, resume, and end exactly
where an uninterrupted run ends."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_recipes import FAST

from tpp.cli import main

STEPS = ["train.max_steps=8", "train.checkpoint_every=2", "train.select_best=false"]  # last step: the whole path counts


def args(tiny_mae, root, out, *extra):
    return ["run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml", f"backbone.path={tiny_mae}",
            f"data.root={root}", f"output_dir={out}", *FAST, *STEPS, *extra]


def killed(tiny_mae, root, out, hook: str, step: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{f"TPP_TEST_KILL_{hook}": str(step)})
    return subprocess.run([sys.executable, "-m", "tpp.cli", *args(tiny_mae, root, out)], env=env,
                          capture_output=True, text=True, timeout=300)


def tensors(run):
    return {**load_file(run / "adapter" / "adapter_model.safetensors"),
            **load_file(run / "adapter" / "head.safetensors")}


@pytest.fixture(scope="module")
def reference(tiny_mae, tmp_path_factory):
    from conftest import make_medmnist

    root = make_medmnist(tmp_path_factory.mktemp("resume_data"))
    out = tmp_path_factory.mktemp("resume") / "ref"
    assert main(args(tiny_mae, root, out)) == 0
    return root, out


def assert_same_end(ref, run):
    a, b = tensors(ref), tensors(run)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    assert ma["test"]["auroc"] == pytest.approx(mb["test"]["auroc"], abs=1e-9) and ma["best_step"] == mb["best_step"]


def test_sigkill_at_a_step_then_resume_ends_like_an_uninterrupted_run(tiny_mae, reference, tmp_path):
    root, ref = reference
    out = tmp_path / "run"
    assert killed(tiny_mae, root, out, "AT_STEP", 5).returncode == -9
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert json.loads((out / "status.json").read_text())["status"] == "running" and not (out / "adapter").exists()
    assert main(args(tiny_mae, root, out, "train.resume=auto")) == 0
    assert '"event": "resumed", "step": 4' in (out / "log.jsonl").read_text()
    assert_same_end(ref, out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]  # keep the last 2


def test_sigkill_during_a_checkpoint_write_leaves_no_complete_looking_checkpoint(tiny_mae, reference, tmp_path):
    root, ref = reference
    out = tmp_path / "run"
    assert killed(tiny_mae, root, out, "IN_CHECKPOINT", 4).returncode == -9
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == [".step-4.tmp", "step-2"]  # the half-written one is not named like a checkpoint
    assert main(args(tiny_mae, root, out, "train.resume=auto")) == 0
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
    assert main(args(tiny_mae, root, run)) == 0
    import pickle

    (run / "checkpoints" / "step-6" / "state.pt").write_bytes(pickle.dumps(print))
    (run / "status.json").write_text('{"status": "running"}')  # as a run killed after step 6 leaves it
    assert main(args(tiny_mae, root, run, "train.resume=auto")) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not [w for w in recwarn if "pickle" in str(w.message)]  # the error, not torch's notes on the file


def test_resume_refuses_a_changed_config(tiny_mae, reference, tmp_path, capsys):
    root, ref = reference
    out = tmp_path / "run"
    assert killed(tiny_mae, root, out, "AT_STEP", 3).returncode == -9
    assert main(args(tiny_mae, root, out, "train.resume=auto", "train.lr=0.5")) == 2
    assert "train.lr" in capsys.readouterr().err


def test_dino_tpp_resumes_exactly_with_its_teacher_and_centre(tiny_mae, reference, tmp_path):
    from test_recipes import tpp

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
    assert main(args(tiny_mae, root, out)) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert main(args(tiny_mae, root, out, "train.resume=auto")) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and f"'{out}' already finished" in printed[0]
    assert _snapshot(out) == before  # adapter, metrics, log, status and checkpoints: same bytes, same mtimes
    assert_same_end(ref, out)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert main(args(tiny_mae, root, out, "train.resume=auto", "train.lr=0.5")) == 2  # a changed config: still an error
    assert "train.lr" in capsys.readouterr().err and _snapshot(out) == before


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
