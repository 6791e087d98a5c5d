"""`tpp run --num-processes N`'s report of a failed run (tpp.launch): the cause once, from the worker that had
it; a worker that stopped only because another failed says nothing. torchrun's failures are built here; the run
itself is in tests/test_predict_processes.py."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from tpp import launch
from tpp.launch import STOPPED, record_cause, report, stopped_status, torchrun_args

GLOO = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
        "[127.0.0.1]:43420. This is typically caused by a remote worker crashing.")


def failure(log_dir, rank: int, exitcode: int, output: str | None = None) -> ProcessFailure:
    """Rank ``rank``'s failure as torchrun records it (no error file: tpp's workers write none), its output where
    torchrun's ``--redirects`` put it."""
    folder = log_dir / "none_abc" / "attempt_0" / str(rank)
    folder.mkdir(parents=True)
    if output is not None:
        (folder / "stderr.log").write_text(output)
    return ProcessFailure(rank, 1000 + rank, exitcode, str(folder / "error.json"))


def test_rank_0s_own_error_is_on_the_terminal_already(tmp_path):
    failures = {0: failure(tmp_path, 0, 2), 1: failure(tmp_path, 1, STOPPED, GLOO)}
    assert report(failures, 2, str(tmp_path)) == ([], 2)


def test_another_ranks_error_is_shown_from_its_file_once(tmp_path):
    """Rank 1 failed (its error in its file, the same every rank would print); rank 0 lost its peer or was
    stopped by torchrun: rank 1's error, with the lines of its paragraph, is the one shown."""
    output = "[tpp] process rank 1 of world size 4 (MULTI_CPU)\nwarning: x\nerror: image 'a.png' is truncated\n  - b\n"
    for stopped in (STOPPED, 128 + signal.SIGTERM, -signal.SIGTERM):
        folder = tmp_path / str(stopped)
        folder.mkdir()
        failures = {0: failure(folder, 0, stopped), 1: failure(folder, 1, 2, output),
                    3: failure(folder, 3, 143, "")}
        shown = ["error: process rank 1 of 4: image 'a.png' is truncated", "  - b"]
        assert report(failures, 4, str(folder)) == (shown, 2)


def test_a_traceback_a_signal_and_silence_are_each_named(tmp_path):
    traceback = "noise\n[rank2]: Traceback (most recent call last):\n[rank2]:   File \"x\"\n[rank2]: ValueError: v\n"
    lines, code = report({0: failure(tmp_path, 0, STOPPED), 2: failure(tmp_path, 2, 1, traceback)}, 3, str(tmp_path))
    assert (lines, code) == (["error: process rank 2 of 3 failed (exit status 1):", "Traceback (most recent call "
                              "last):", "  File \"x\"", "ValueError: v"], 1)
    lines, code = report({1: failure(tmp_path, 1, -signal.SIGKILL, "[tpp] a line\n")}, 2, str(tmp_path))
    assert code == 128 + signal.SIGKILL and lines == [
        "error: process rank 1 of 2 was killed by SIGKILL (the system may have run out of memory); the others "
        "were stopped."]
    lines, _ = report({3: failure(tmp_path, 3, 1)}, 4, str(tmp_path))
    assert lines == ["error: process rank 3 of 4 failed (exit status 1) without output"]


def test_a_worker_that_lost_its_peers_or_was_stopped_has_no_error_of_its_own(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert stopped_status(RuntimeError(GLOO), terminated=False) == STOPPED
    assert stopped_status(KeyboardInterrupt(), terminated=True) == 128 + signal.SIGTERM
    assert stopped_status(KeyboardInterrupt(), terminated=False) == 128 + signal.SIGINT
    assert stopped_status(RuntimeError("shape mismatch"), terminated=False) is None  # its own: reported
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: everything is its own
    assert stopped_status(RuntimeError(GLOO), terminated=False) is None
    assert stopped_status(KeyboardInterrupt(), terminated=False) is None


@pytest.mark.parametrize("processes, redirects", [(2, ["--redirects", "1:3"]), (3, ["--redirects", "1:3,2:3"])])
def test_ranks_after_the_first_write_to_files(processes, redirects):
    args = torchrun_args(processes, 1234, "/tmp/logs")
    assert args[-len(redirects):] == redirects and args[args.index("--log-dir") + 1] == "/tmp/logs"


def test_a_worker_killed_after_another_failed_is_not_the_cause(tmp_path):
    """Rank 1 failed with its own error; rank 0 did not answer torchrun's SIGTERM (blocked in a collective) and was
    SIGKILLed 30 s later: rank 1's error is the cause shown, not 'rank 0 was killed ... out of memory'."""
    output = "[tpp] process rank 1 of world size 2 (MULTI_CPU)\nerror: image 'a.png' is truncated\n"
    failures = {0: failure(tmp_path, 0, -signal.SIGKILL), 1: failure(tmp_path, 1, 2, output)}
    failures[0].timestamp = failures[1].timestamp + 30
    assert report(failures, 2, str(tmp_path)) == (["error: process rank 1 of 2: image 'a.png' is truncated"], 2)
    failures[0].timestamp = failures[1].timestamp  # killed at once, with the other's failure: its own cause
    assert report(failures, 2, str(tmp_path))[0][0].startswith("error: process rank 0 of 2 was killed by SIGKILL")


def stopped_run(folder, status: str = "failed", error: str = f"RuntimeError: {GLOO}"):
    """A run folder as rank 0 leaves it when another rank's failure stopped it (``status``, ``error``)."""
    folder.mkdir()
    (folder / "status.json").write_text(json.dumps({"status": status, **({"error": error} if error else {})}))
    (folder / "log.jsonl").write_text('{"time": 0.5, "event": "start"}\n{"time": 4.25, "event": "fa')  # cut short
    return folder


def test_the_run_folder_records_the_rank_that_failed_and_its_error_not_the_lost_peer(tmp_path):
    """Rank 1 failed; rank 0, which writes status.json and log.jsonl, recorded gloo's lost peer: the folder said
    'Connection closed by peer' where the terminal said rank 1's error."""
    output = "[tpp] process rank 1 of world size 2 (MULTI_CPU)\nerror: image 'a.png' is truncated\n  - b\n"
    failures = {0: failure(tmp_path / "logs", 0, STOPPED), 1: failure(tmp_path / "logs", 1, 2, output)}
    lines, _ = report(failures, 2, str(tmp_path / "logs"))
    run = stopped_run(tmp_path / "run")
    assert record_cause(run, 1, lines, since=time.time())
    assert json.loads((run / "status.json").read_text()) == {
        "status": "failed", "error": "process rank 1 of 2: image 'a.png' is truncated\n  - b", "failed_rank": 1,
        "rank_0_error": f"RuntimeError: {GLOO}"}
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()[2:]]
    assert records == [{"time": 0.5, "event": "failed", "rank": 1,  # the last time it can read
                        "error": "process rank 1 of 2: image 'a.png' is truncated\n  - b"}]
    traceback = ["error: process rank 1 of 2 failed (exit status 1):", "Traceback (most recent call last):",
                 '  File "x"', "ValueError: v", ""]
    assert record_cause(stopped_run(tmp_path / "died", status="running", error=""), 1, traceback, time.time())
    assert json.loads((tmp_path / "died" / "status.json").read_text()) == {
        "status": "failed", "error": "process rank 1 of 2 failed (exit status 1): ValueError: v", "failed_rank": 1}


def test_a_status_of_another_run_is_left_as_it_was(tmp_path):
    """A status.json older than the launch (put back by --overwrite's restore, or never reached by this run) or
    saying succeeded (a finished run put back), a damaged one, or none: not this run's failure to rewrite."""
    lines = ["error: process rank 1 of 2: boom"]
    old = stopped_run(tmp_path / "old")
    os.utime(old / "status.json", (time.time() - 3600,) * 2)
    finished = stopped_run(tmp_path / "finished", status="succeeded", error="")
    damaged = stopped_run(tmp_path / "damaged")
    (damaged / "status.json").write_text("{")
    for folder in (old, finished, damaged, tmp_path / "none"):
        before = {p.name: p.read_bytes() for p in folder.glob("*")} if folder.exists() else None
        assert not record_cause(folder, 1, lines, since=time.time())
        assert ({p.name: p.read_bytes() for p in folder.glob("*")} if folder.exists() else None) == before


def test_the_launcher_records_another_ranks_failure_in_the_run_folder_it_is_given(tmp_path, monkeypatch):
    """``python -m tpp.launch --run-dir DIR ...`` (as ``tpp run`` starts it): torchrun's failures end in DIR."""
    import torch.distributed.run as torchrun

    logs = tmp_path / "logs"
    failures = {0: failure(logs, 0, STOPPED), 1: failure(logs, 1, 2, "error: rank 1 only\n")}
    run = stopped_run(tmp_path / "run")

    def failing(args):
        raise ChildFailedError("tpp.cli", failures)

    monkeypatch.setattr(torchrun, "run", failing)
    argv = ["--run-dir", str(run), *torchrun_args(2, 1234, str(logs)), "-m", "tpp.cli", "run", "finetune"]
    assert launch.main(argv) == 2
    assert json.loads((run / "status.json").read_text())["error"] == "process rank 1 of 2: rank 1 only"
    # every process stopped (rank 1 killed by torchrun before it said why): no cause to record, rank 0's stays
    failures = {0: failure(tmp_path / "logs2", 0, STOPPED), 1: failure(tmp_path / "logs2", 1, -signal.SIGTERM, "")}
    before = (stopped_run(tmp_path / "run2") / "status.json").read_bytes()
    argv[1] = str(tmp_path / "run2")
    assert launch.main(argv) == STOPPED and (tmp_path / "run2" / "status.json").read_bytes() == before
