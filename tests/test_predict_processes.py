"""Prediction with several processes streams: each process predicts its slice of each block of
``batch_size * processes`` images and the block is gathered (every process makes the same gathers), so a
process holds one block of outputs, never the split's; what it hands over is what one process computes.
Real two-process gloo groups on the CPU, tiny models built in code."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import make_medmnist
from helpers import FAST, FINETUNE_CONFIG, HANG_S, cli_command, recipe_args, run_cli, run_cli_subprocess, \
    toy_segmentation_npz

from tpp.training import block_slices

WORKER = """
import sys, torch
from accelerate import Accelerator
from tpp.training import predict_batches
count, batch, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
model, images = torch.nn.Linear(3, 2), torch.rand(count, 3, generator=torch.Generator().manual_seed(1))
calls = []
gather = accelerator.gather
accelerator.gather = lambda t: calls.append(len(t)) or gather(t)
got = [(start, rows) for start, rows in predict_batches(accelerator, model, images, batch, lambda x: x.argmax(-1))]
torch.save({"batches": got, "calls": calls, "expected": model(images).argmax(-1)}, f"{out}.{accelerator.process_index}")
torch.distributed.destroy_process_group()  # else gloo's threads may abort the exit ('terminate called ...', -6)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("count, batch", [(11, 4), (16, 4), (1, 4), (5, 1)])
def test_two_processes_hand_over_every_row_in_order_block_by_block(tmp_path, count, batch):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(count), str(batch), str(tmp_path / "out")],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    results = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in (0, 1)]
    blocks = -(-count // (2 * batch))
    for result in results:
        starts = [start for start, _ in result["batches"]]
        assert starts == list(range(0, count, batch))  # the batches one process hands over
        assert torch.equal(torch.cat([rows for _, rows in result["batches"]]), result["expected"])
        assert len(result["calls"]) == blocks  # one gather a block, on every process, of equal size
    assert results[0]["calls"] == results[1]["calls"]


def test_block_slices_cover_each_block_once_in_rank_order():
    for count, batch, world in [(11, 4, 2), (7, 2, 3), (2, 5, 4), (12, 3, 4)]:
        slices = [block_slices(count, batch, world, rank) for rank in range(world)]
        covered = []
        for k, (start, stop, _) in enumerate(slices[0]):
            sizes = {len(s[k][2]) for s in slices}
            assert len(sizes) == 1 and sizes.pop() <= batch  # the same gather size on every process
            gathered = torch.cat([s[k][2] for s in slices])[:stop - start]
            assert gathered.tolist() == list(range(start, stop))
            covered += gathered.tolist()
        assert covered == list(range(count))


def test_evaluate_with_two_processes_writes_the_metrics_and_predictions_of_one(tiny_mae, tmp_path):
    """`tpp run evaluate --num-processes 2` on a segmentation split (batches of 5: blocks of 10, the last uneven)
    writes the metrics.json numbers and predictions.csv bytes of one process."""
    data = [f"data.file={toy_segmentation_npz(tmp_path / 'toy.npz', n=60)}", "data.name=toy", "data.group_key=group",
            "backbone.input_size=16"]
    config = "breast_us/busi_seg_lora_finetune.yaml"
    assert run_cli(*recipe_args("finetune", config, tiny_mae, tmp_path, tmp_path / "ft", "train.max_steps=2", *FAST,
                                "train.batch_size=8", "segmentation.overlays=0", *data)) == 0
    args = [f"adapter.path={tmp_path / 'ft' / 'adapter'}", "data.split=test", "train.eval_batch_size=5", *data]
    assert run_cli(*recipe_args("evaluate", config, tiny_mae, tmp_path, tmp_path / "one", *args)) == 0
    proc = run_cli_subprocess(*recipe_args("evaluate", config, tiny_mae, tmp_path, tmp_path / "two", *args),
                              "--num-processes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process rank 0 of world size 2" in proc.stderr  # rank 1's output went to its file
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    assert two["test"] == one["test"] and one["test"]["n"] % 10 != 0
    assert (tmp_path / "two" / "predictions.csv").read_bytes() == (tmp_path / "one" / "predictions.csv").read_bytes()


def test_a_worker_failing_mid_evaluation_is_reported_once_without_the_others_noise(tiny_mae, tmp_path):
    """Rank 0 fails while the predictions stream into predictions.csv (a real failure: a file size limit, as a
    full disk would refuse, that rank 0 reaches and rank 1, which writes nothing, does not) with rank 1 waiting in
    a gather: rank 1 printed gloo's 'Connection closed by peer' traceback and torchrun its ChildFailedError
    traceback, and the run exited 1. Now the cause is said once, nothing else, and the exit status is rank 0's."""
    import resource

    root = make_medmnist(tmp_path / "data", n=(600, 20, 20))  # evaluated: the 600 training images (~36 KB of rows)
    assert run_cli(*recipe_args("finetune", FINETUNE_CONFIG, tiny_mae, root, tmp_path / "ft", "train.max_steps=1",
                                *FAST)) == 0
    args = recipe_args("evaluate", FINETUNE_CONFIG, tiny_mae, root, tmp_path / "ev", "data.split=train",
                       f"adapter.path={tmp_path / 'ft' / 'adapter'}", "train.eval_batch_size=64")

    def limit_file_size():  # inherited by the launcher, torchrun and both workers; Python ignores SIGXFSZ: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))

    proc = subprocess.run(cli_command(*args, "--num-processes", "2"), capture_output=True, text=True,
                          preexec_fn=limit_file_size, timeout=HANG_S)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot write '{tmp_path / 'ev' / 'predictions.csv'}': File too large."], proc.stderr
    for noise in ("Traceback", "Connection closed", "ChildFailedError", "SIGTERM", "interrupted", "[rank"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "status.json").read_text())["status"] == "failed"
    assert not (tmp_path / "ev" / "predictions.csv").exists()
