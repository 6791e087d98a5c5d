"""The lock a run holds on its output_dir: a POSIX record lock on a file inside it (the lock NFS carries to its
server; a flock on the folder held on one machine only), between processes (POSIX locks belong to a process, so
these tests use processes, not threads), kept through --overwrite, removed with the run, and a note where the
filesystem or the system has no locks (the run used to go on unlocked without a word)."""
import errno
import fcntl
import json
import multiprocessing
import os

import pytest

from tpp.errors import TppError
from tpp.rundir import RunDir, refuse_if_in_use

LOCK_FILE = ".tpp-lock"  # the run's lock file (tpp.run_folder.LOCK_FILE), named as users see it


def _child(path, mode, conn):
    """In another process: ``hold`` (or ``hold-overwrite``) the run folder until told to end, or ``try`` a
    resume there; sends what happened ("held", "ok" or the refusal)."""
    try:
        run = RunDir(path, overwrite=mode == "hold-overwrite", resume=mode == "try")
    except TppError as exc:
        conn.send(str(exc))
        return
    if mode == "try":
        run.release()
        conn.send("ok")
        return
    conn.send("held")
    conn.recv()  # until the test is done with it
    run.release()
    conn.send("released")


def _start(path, mode):
    """A process running :func:`_child` (spawned: a forked child would share this process's memory of the locks it
    holds) and its first answer."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(str(path), mode, theirs))
    proc.start()
    theirs.close()  # a child that dies ends recv() with EOFError, not a wait
    return proc, mine, mine.recv()


def _posix_probe(lock) -> int | None:
    """What a POSIX record lock on ``lock`` answers another process (the lock NFS carries): None when it is free."""
    fd = os.open(lock, os.O_WRONLY)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)
    return None


def write_run(path, status="succeeded"):
    path.mkdir(parents=True)
    (path / "status.json").write_text(json.dumps({"status": status}))
    (path / "log.jsonl").write_text("{}\n")
    return path


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_second_process_is_refused_by_a_lock_nfs_carries(tmp_path, overwrite):
    """The folder's flock held on one machine only on NFS; the lock is now a POSIX record lock on a file inside
    it, which another process (or machine) sees. --overwrite sets the folder's contents aside, not its lock file."""
    out = write_run(tmp_path / "out") if overwrite else tmp_path / "out"
    proc, conn, said = _start(out, "hold-overwrite" if overwrite else "hold")
    try:
        assert said == "held"
        assert _posix_probe(out / LOCK_FILE) in (errno.EACCES, errno.EAGAIN)
        with pytest.raises(TppError, match=f"output_dir '{out}' is in use by another tpp process"):
            RunDir(out, resume=True)
        with pytest.raises(TppError, match="is in use by another tpp process"):
            refuse_if_in_use(out)
        if overwrite:
            assert sorted(p.name for p in out.glob(".overwritten-*.old/*")) == ["log.jsonl", "status.json"]
        assert json.loads((out / "status.json").read_text())["status"] == "running"
    finally:
        conn.send("end")
        assert conn.recv() == "released"
        proc.join()
    assert not (out / LOCK_FILE).exists()  # removed with the run: listings of a finished run are unchanged
    run = RunDir(out, resume=True)
    assert (out / LOCK_FILE).is_file()
    run.release()


def test_a_second_rundir_of_the_same_process_neither_takes_nor_drops_the_lock(tmp_path):
    """POSIX locks belong to a process: a second lock there would succeed, and closing a second descriptor of the
    lock file would release the first one's lock. Both are refused without opening it, and the lock stays."""
    first = RunDir(tmp_path / "out")
    for attempt in (lambda: RunDir(tmp_path / "out", resume=True), lambda: refuse_if_in_use(tmp_path / "out")):
        with pytest.raises(TppError, match="is in use by another tpp process"):
            attempt()
    proc, _, said = _start(tmp_path / "out", "try")
    proc.join()
    assert "is in use by another tpp process" in said
    first.status("failed")
    first.release()
    proc, _, said = _start(tmp_path / "out", "try")
    proc.join()
    assert said == "ok"


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_filesystem_without_locks_is_said_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys, code):
    """Where locking failed (ENOLCK, EOPNOTSUPP) the run went on unlocked without a word."""
    def no_locks(fd, how, *args):
        raise OSError(code, os.strerror(code))

    out = write_run(tmp_path / "out", "failed")
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    refuse_if_in_use(out)
    run = RunDir(out)  # (a failed run without checkpoints: replaced)
    (out / LOCK_FILE).touch()  # (as a killed run leaves it: the check before a run looks at it too)
    refuse_if_in_use(out)
    run.release()
    err = capsys.readouterr().err
    note = (f"[tpp] note: run folder '{out}' cannot be locked here ({os.strerror(code)}): do not run two `tpp run` "
            "on it at once")
    assert err.count(note) == 1
    assert json.loads((out / "status.json").read_text())["status"] == "running"


def test_without_fcntl_the_note_is_given(tmp_path, monkeypatch, capsys):
    """Windows has no fcntl: there was no lock and no word."""
    monkeypatch.setitem(__import__("sys").modules, "fcntl", None)
    RunDir(tmp_path / "out").release()
    assert "cannot be locked here (this system has no fcntl locks): do not run two" in capsys.readouterr().err


def test_a_killed_runs_lock_file_is_no_content(tmp_path):
    """A run killed (-9) leaves its lock file: the folder is still empty, a failed run without checkpoints is still
    only a run's files (replaced), and refusals do not name it."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / LOCK_FILE).touch()
    RunDir(empty).release()
    failed = write_run(tmp_path / "failed", "failed")
    (failed / LOCK_FILE).touch()
    RunDir(failed).release()
    assert sorted(p.name for p in failed.iterdir()) == ["log.jsonl", "status.json"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    (mine / LOCK_FILE).touch()
    with pytest.raises(TppError, match=r"holds no tpp run \(notes.txt\)"):
        RunDir(mine)


def test_a_refused_folder_keeps_no_lock_file(tmp_path):
    """The lock is taken before the folder's checks; a folder refused (of the user's) is left as it was."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(TppError, match="holds no tpp run"):
        RunDir(mine, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
