"""``tpp run --num-processes N``'s launcher: torchrun (``torch.distributed.run``) in a child process of ``tpp``,
reporting a failed run as one process's error, once.

Rank 0 writes to the terminal as a single process would; the other ranks' output goes to files in a temporary
folder (torchrun's ``--redirects``/``--log-dir``), where a deterministic error every rank hits (a bad data file)
stays unrepeated. A worker that stops only because another failed (its collective lost the peer:
:data:`STOPPED`, or torchrun's SIGTERM) prints nothing (:func:`stopped_status`). When a worker fails, this
launcher prints what the user needs, in place of torchrun's traceback and log lines: nothing more when rank 0
printed its own error; else the failed rank's error from its file, or the signal that killed it. The run folder
(``--run-dir``, given by ``tpp run``) then says that error too (:func:`record_cause`): rank 0, which writes the
folder, recorded only the lost peer or the SIGTERM that stopped it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

STOPPED = 3  # a worker's exit status when a collective lost its peers: another process failed first
STOPPED_STATUSES = frozenset({STOPPED, 128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT})
LOST_PEER = ("connection closed by peer", "connection reset by peer", "broken pipe", "remote worker crashing")
SHOWN_LINES = 40  # of a failed rank's output without an error line of its own
CLOCK_SLACK_S = 2.0  # a status.json this much older than the launch may still be this run's (coarse file times)


def torchrun_args(processes: int, port: int, log_dir: str) -> list[str]:
    """torchrun's options for ``processes`` workers on this machine: ranks 1.. to files under ``log_dir``."""
    quiet = ",".join(f"{rank}:3" for rank in range(1, processes))  # 3: stdout and stderr
    return ["--nproc_per_node", str(processes), "--master_addr", "127.0.0.1", "--master_port", str(port),
            "--log-dir", log_dir, *(["--redirects", quiet] if quiet else [])]


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` says a collective operation lost its peers (gloo: the peer closed its connection; NCCL
    and the store: torch's DistError): what a worker meets when another one failed and left."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(words in str(exc).lower() for words in LOST_PEER)


def stopped_status(exc: BaseException, terminated: bool) -> int | None:
    """The exit status of a worker of a multi-process run (``WORLD_SIZE`` > 1) that stopped because of ``exc``
    without a cause of its own: a lost peer (:data:`STOPPED`), torchrun's SIGTERM after another worker failed
    or a Ctrl-C (``terminated``: SIGTERM) (128 + the signal). None: a single process, or an error to report."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    if isinstance(exc, KeyboardInterrupt):
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    return STOPPED if lost_peer(exc) else None


def report(failures: dict, world: int, log_dir: str) -> tuple[list[str], int]:
    """(lines to print, exit status) for torchrun's ``failures`` {rank: ProcessFailure}, the ranks' output under
    ``log_dir``: the cause is rank 0's failure if it has its own (it printed it: no lines), else the earliest
    other rank's that has its own (ties: the lower rank), else the earliest of all (:func:`cause`)."""
    rank = cause(failures)
    own = {r for r, f in failures.items() if f.exitcode not in STOPPED_STATUSES}
    failure = failures[rank]
    code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    if failure.exitcode < 0:
        name = signal.Signals(-failure.exitcode).name if -failure.exitcode in signal.valid_signals() else "a signal"
        memory = " (the system may have run out of memory)" if failure.exitcode == -signal.SIGKILL else ""
        return [f"error: process rank {rank} of {world} was killed by {name}{memory}; the others were stopped."], code
    if rank == 0 and rank in own:
        return [], code
    return error_lines(rank, world, failure.exitcode, log_dir), code


def cause(failures: dict) -> int:
    """The rank whose failure caused the others' (see :func:`report`). A worker killed by a signal after another's
    failure has none of its own: torchrun's SIGKILL once its SIGTERM went unanswered (30 s; a worker blocked in a
    collective), never the cause."""
    own = {rank: f for rank, f in failures.items() if f.exitcode not in STOPPED_STATUSES}
    first = min((f.timestamp for f in own.values()), default=None)
    own = {rank: f for rank, f in own.items() if f.exitcode > 0 or f.timestamp == first}
    return 0 if 0 in own else min(own or failures, key=lambda r: (failures[r].timestamp, r))


def error_lines(rank: int, world: int, exitcode: int, log_dir: str) -> list[str]:
    """The error rank ``rank`` wrote to its output file (torchrun's ``LOG_DIR/RUN_ID/attempt_N/RANK/stderr.log``):
    from its last ``error:`` line or traceback to the end, else its last :data:`SHOWN_LINES` lines."""
    lines = []
    for path in sorted(Path(log_dir).glob(f"*/attempt_*/{rank}/stderr.log"))[-1:]:
        try:
            lines = [re.sub(r"^\[rank\d+\]:\s?", "", line) for line in path.read_text(errors="replace").splitlines()]
        except OSError:
            pass
    starts = [i for i, line in enumerate(lines) if line.startswith(("error: ", "Traceback (most recent call last)"))]
    head = f"error: process rank {rank} of {world} failed (exit status {exitcode})"
    if not starts:
        return [f"{head}{', its output:' if lines else ' without output'}", *lines[-SHOWN_LINES:]]
    shown = lines[starts[-1]:]
    if shown[0].startswith("error: "):
        return [f"error: process rank {rank} of {world}: {shown[0][len('error: '):]}", *shown[1:]]
    return [f"{head}:", *shown]


def summary(lines: list[str]) -> str:
    """:func:`report`'s lines as the error a ``status.json`` records: without ``error: ``, a traceback as its last
    line (``ValueError: v``), other lines kept."""
    text = [lines[0].removeprefix("error: "), *lines[1:]]
    if len(text) > 1 and text[1].startswith("Traceback (most recent call last)"):
        last = [line for line in text[2:] if line.strip()][-1:]
        return " ".join([text[0], *last])
    return "\n".join(text)


def record_cause(run_dir: Path, rank: int, lines: list[str], since: float) -> bool:
    """Say in ``run_dir``'s ``status.json`` that rank ``rank`` failed, with its error (:func:`report`'s ``lines``),
    where rank 0 of this run (launched at ``since``, time.time()) wrote it: rank 0 recorded the lost peer or the
    SIGTERM that stopped it (kept as ``rank_0_error``), or died saying running. A ``log.jsonl`` gets a ``failed``
    line with the same error. A status of another run (older, put back, succeeded) is left alone. Returns whether
    it was rewritten; a folder that cannot be read or written is left as it is (the error is on the terminal)."""
    from tpp.safe_write import write_atomic

    path, log = Path(run_dir) / "status.json", Path(run_dir) / "log.jsonl"
    try:
        if path.stat().st_mtime < since - CLOCK_SLACK_S:
            return False
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or recorded.get("status") not in ("running", "failed"):
        return False
    error = summary(lines)
    status = {"status": "failed", "error": error, "failed_rank": rank}
    if recorded.get("error"):
        status["rank_0_error"] = recorded["error"]
    try:
        write_atomic(path, json.dumps(status, indent=2))
        if log.is_file():
            text = log.read_text(errors="replace")
            end = "\n" if text and not text.endswith("\n") else ""  # a line cut short stays a line of its own
            record = {"time": last_time(text), "event": "failed", "rank": rank, "error": error}
            with open(log, "a") as fh:
                fh.write(end + json.dumps(record) + "\n")
    except Exception:  # noqa: BLE001 - a full disk: the terminal has the error
        return False
    return True


def last_time(log: str) -> float | None:
    """The ``time`` of the last line of ``log`` (a ``log.jsonl``'s text) that has one (None: none)."""
    times = []
    for line in log.splitlines():
        try:
            times.append(json.loads(line).get("time"))
        except (ValueError, AttributeError):
            continue
    return next((t for t in reversed(times) if isinstance(t, (int, float))), None)


def main(argv: list[str]) -> int:
    """torchrun with ``argv`` (first, optionally, ``--run-dir DIR``: the run's folder, for :func:`record_cause`); a
    failed run reported by :func:`report`, an interrupt quietly (the ``tpp`` process that started this one says
    so)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    run_dir = None
    if argv[:1] == ["--run-dir"]:
        run_dir, argv = Path(argv[1]), argv[2:]
    args = parse_args(argv)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its lines on stopping workers
    started = time.time()
    try:
        run(args)
    except ChildFailedError as exc:
        lines, code = report(exc.failures, int(args.nproc_per_node), args.log_dir)
        if lines:
            print("\n".join(lines), file=sys.stderr, flush=True)
            rank = cause(exc.failures)
            if run_dir is not None and exc.failures[rank].exitcode not in STOPPED_STATUSES:  # else none is known
                record_cause(run_dir, rank, lines, started)
        return code
    except SignalException as exc:  # SIGTERM / SIGINT to torchrun: its workers were stopped
        return 128 + int(exc.sigval)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
