"""Data-parallel runs: `tpp run --num-processes 2` really starts two CPU processes in a gloo group."""
import json
import subprocess
import sys

import pytest
from helpers import FAST, FINETUNE_CONFIG, TPP_CONFIG, recipe_args, run_cli, run_cli_subprocess


def test_two_processes_train_together_and_evaluate_every_image_once(tiny_mae, data_root, tmp_path):
    out = tmp_path / "run"
    proc = run_cli_subprocess(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data_root, out, "train.max_steps=4",
                                           "train.eval_every=2", *FAST), "--num-processes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process rank 0 of world size 2 (MULTI_CPU)" in proc.stderr  # rank 1 writes to a file (tpp.launch)
    assert "process rank 1" not in proc.stderr and "finetune breastmnist" in proc.stderr  # rank 0's progress
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"event": "processes", "world_size": 2, "backend": "MULTI_CPU"}.items() <= next(
        r for r in log if r["event"] == "processes").items()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 20 and metrics["val"]["n"] == 20  # every image once, none twice
    assert proc.stdout.count("finetune finished") == 1  # only rank 0 reports and writes
    assert json.loads((out / "status.json").read_text())["status"] == "succeeded"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("pretext", ["mae", "dino"])  # DINO all-reduces its centre across processes
def test_two_process_tpp_writes_one_adapter(tiny_mae, data_root, tmp_path, pretext):
    out = tmp_path / "tpp"
    proc = run_cli_subprocess(*recipe_args("tpp", TPP_CONFIG, tiny_mae, data_root, out, "train.max_steps=3",
                                           f"pretext.name={pretext}", *FAST), "--num-processes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "adapter" / "tpp_card.json").read_text())
    assert card["stage"] == "tpp" and card["pretext"]["steps"] == 3 and card["pretext"]["loss_curve"]
    assert '"world_size": 2' in (out / "log.jsonl").read_text()


def test_config_errors_surface_before_launching_processes(tiny_mae, capsys):
    code = run_cli("run", "finetune", "--config", FINETUNE_CONFIG, "--num-processes", "2", f"backbone.path={tiny_mae}",
                   "train.keep_checkpoints=0")
    assert code == 2 and "keep_checkpoints" in capsys.readouterr().err


def test_sigterm_to_the_launcher_stops_its_workers(tiny_mae, data_root, tmp_path):
    """The launcher killed torchrun with SIGKILL on SIGTERM: its workers trained on and wrote 'succeeded'."""
    import signal
    import subprocess

    from helpers import start_cli_subprocess, wait_for

    out = tmp_path / "run"
    proc = start_cli_subprocess(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data_root, out,
                                             "train.max_steps=5000", *FAST), "--num-processes", "2",
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "log.jsonl"
    wait_for(lambda: log.is_file() and '"event": "step"' in log.read_text(), "the first step", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 143

    def status():
        return json.loads((out / "status.json").read_text())["status"]

    wait_for(lambda: status() != "running", "the workers to stop")
    assert status() == "failed"


def test_a_worker_ends_the_process_group_its_run_set_up_and_no_other(tmp_path):
    """A ``--num-processes`` worker left its gloo group to the interpreter's exit, where gloo's threads could abort
    the finished worker ('terminate called without an active exception', exit -6): the run now ends the group it
    set up, also when it fails. A group that existed before ``main`` (a program embedding tpp set it up) is that
    program's and stays. A worker's own error is printed before its group ends. A world of one process, set up
    as torchrun does, in a fresh interpreter; the run's own group is set up where Accelerate would set it up,
    inside the run."""
    script = f"""
import os, sys, torch.distributed as dist
import tpp.api
from tpp.cli import main
from tpp.errors import TppError
os.environ["LOCAL_RANK"] = "0"
run = tpp.api.run
printed = sys.stderr.write
sys.stderr.write = lambda text: printed(text + (f" (group up: {{dist.is_initialized()}})" if "error:" in text else ""))

def run_with_a_group(*args, **kwargs):
    dist.init_process_group("gloo", init_method="file://{tmp_path / 'own'}", world_size=1, rank=0)
    raise TppError("the run failed")

tpp.api.run = run_with_a_group
code = main(["run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml"])
print("own: exit", code, "group", dist.is_initialized())
tpp.api.run = run
dist.init_process_group("gloo", init_method="file://{tmp_path / 'callers'}", world_size=1, rank=0)
code = main(["run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml",
             "output_dir={tmp_path / 'run'}", "data.root={tmp_path / 'none'}", "backbone.path={tmp_path / 'none'}"])
print("callers: exit", code, "group", dist.is_initialized())
dist.destroy_process_group()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "own: exit 2 group False" in done.stdout, done.stdout + done.stderr
    # its error printed before its group ended: ended first, a peer stopped at once and torchrun killed this worker
    # before it said why ('process rank 0 of 2 failed (exit status 3) without output', 2 in 6 real runs)
    assert "error: the run failed (group up: True)" in done.stderr, done.stderr
    assert "callers: exit 2 group True" in done.stdout, done.stdout + done.stderr


def test_a_launcher_killed_by_a_signal_exits_as_a_shell_says_it(tiny_mae, data_root, tmp_path, monkeypatch, capsys):
    """torchrun's process (tpp.launch) killed by SIGKILL: Popen's -9 was returned as tpp's exit status (247 to the
    shell); it is 137, with a line naming the signal, and the workers' log folder is removed."""
    import os
    import signal
    import tempfile

    made = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(mkdtemp(**kw)) or made[-1])

    class Killed:
        def __init__(self, cmd, env=None):
            self.cmd = cmd

        def wait(self, timeout=None):
            return -signal.SIGKILL

    monkeypatch.setattr(subprocess, "Popen", Killed)
    code = run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data_root, tmp_path / "run", *FAST),
                   "--num-processes", "2")
    assert code == 128 + signal.SIGKILL
    assert "error: the launcher (torchrun) was killed by SIGKILL" in capsys.readouterr().err
    assert made and not any(os.path.exists(folder) for folder in made)


def _launched(monkeypatch, popen) -> list:
    """Every folder ``tempfile.mkdtemp`` made from now on, with ``subprocess.Popen`` replaced by ``popen``."""
    import tempfile

    made = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(mkdtemp(**kw)) or made[-1])
    monkeypatch.setattr(subprocess, "Popen", popen)
    return made


def test_a_launcher_that_cannot_start_removes_its_log_folder(tiny_mae, data_root, tmp_path, monkeypatch, capsys):
    """The workers' log folder was made before Popen and outside the try: a Popen that failed (an interpreter gone,
    no memory to fork) left it in the temporary folder. It is removed; the error is one line."""
    import os

    def popen(cmd, env=None):
        raise OSError(12, "Cannot allocate memory")

    made = _launched(monkeypatch, popen)
    code = run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data_root, tmp_path / "run", *FAST),
                   "--num-processes", "2")
    err = capsys.readouterr().err
    assert code != 0 and "Cannot allocate memory" in err and "Traceback" not in err
    assert made and not any(os.path.exists(folder) for folder in made)


def test_the_launching_line_is_a_command_a_shell_reads_back(tiny_mae, data_root, tmp_path, monkeypatch, capsys):
    """The 'launching ...' line joined the arguments with spaces: an override holding a space (a folder name) read
    as two arguments when pasted. It is quoted as a shell needs: split back, it is the command that ran."""
    import shlex

    started = []

    class Done:
        def __init__(self, cmd, env=None):
            started.append(cmd)

        def wait(self, timeout=None):
            return 0

    _launched(monkeypatch, Done)
    out = tmp_path / "my run"
    code = run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, data_root, out, *FAST),
                   "--num-processes", "2")
    assert code == 0
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("launching 2 processes: "))
    assert shlex.split(line[len("launching 2 processes: "):]) == started[0]
    assert f"output_dir={out}" in started[0]
